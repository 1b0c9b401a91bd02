"""Helpers that porter copies, as source text, into converted files.

Each helper is a self-contained top-level definition that reproduces one piece
of torch behaviour with jax / flax.  Converted code must never import porter,
so the converter pastes the helpers it needs (plus those named in ``DEPENDS``)
into the file it writes.  A helper may use only the module-level imports below.
"""

import inspect
import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx


class Buffer(nnx.Variable):
    """A torch buffer (``register_buffer``): saved and loaded with the model, never trained.

    ``Buffer(value, persistent=False)`` marks a buffer that torch leaves out of
    the state_dict; read the flag as ``getattr(var, "persistent", True)``.
    """


class ChannelsFirstConv(nnx.Conv):
    """nnx.Conv that takes and returns torch's channels-first (N, C, *spatial) arrays."""

    def __call__(self, x):
        # The channels sit just before the spatial dims, so an unbatched
        # (C, *spatial) input works too, as it does in torch.
        channel_axis = -1 - len(self.kernel_size)
        y = super().__call__(jnp.moveaxis(x, channel_axis, -1))
        return jnp.moveaxis(y, -1, channel_axis)


def max_pool_nchw(x, window_shape, strides=None, padding=None, ceil_mode=False):
    """torch max pooling (``F.max_pool{1,2,3}d``) on (N, C, *spatial) arrays.

    ``padding`` is None or one (low, high) pair per spatial dim, filled with -inf
    (the lowest integer for integer arrays) as in torch. ``ceil_mode`` rounds the
    output size up as torch does (a last window must start inside the input or
    its left padding).
    """
    strides = window_shape if strides is None else strides
    padding = ((0, 0),) * len(window_shape) if padding is None else padding
    lead = (1,) * (x.ndim - len(window_shape))
    if ceil_mode:
        padding = list(padding)
        for i, (size, k, s) in enumerate(zip(x.shape[len(lead):], window_shape, strides)):
            low, high = padding[i]
            out = -(-(size + low + high - k) // s) + 1
            if (out - 1) * s >= size + low:
                out -= 1
            padding[i] = (low, high + max((out - 1) * s + k - (size + low + high), 0))
    floating = jnp.issubdtype(x.dtype, jnp.floating)
    if floating and tuple(strides) == tuple(window_shape) and not any(map(any, padding)):
        return max_pool_tiles(x, tuple(window_shape))  # the common 2x2/2 pooling: a cheaper gradient
    lowest = -jnp.inf if floating else jnp.iinfo(x.dtype).min
    return jax.lax.reduce_window(
        x,
        lowest,  # a Python scalar: a traced init value has no gradient rule under jit
        jax.lax.max,
        lead + tuple(window_shape),
        lead + tuple(strides),
        ((0, 0),) * len(lead) + tuple(padding),
    )


def max_pool_tiles(x, window_shape):
    """Max pooling of a float array over windows that tile its trailing dims (stride = window, no
    padding; a remainder no window covers is dropped, as in torch's floor mode).

    The maximum is reduce_window's; the derivative rule is cheaper than the one jax derives for it
    (select-and-scatter, which XLA:CPU runs as index arrays and a scatter: about 3x slower for
    LeNet's pools). The derivative goes to the first maximum of each window in row-major order,
    as torch's saved index does.
    """
    nd = len(window_shape)
    lead = x.ndim - nd
    out = tuple(size // k for size, k in zip(x.shape[lead:], window_shape))

    def windows(a):  # (..., *out, window size): each window's elements, row-major
        a = a[(...,) + tuple(slice(0, o * k) for o, k in zip(out, window_shape))]
        a = a.reshape(a.shape[:lead] + tuple(d for pair in zip(out, window_shape) for d in pair))
        a = jnp.moveaxis(a, [lead + 2 * i + 1 for i in range(nd)], list(range(-nd, 0)))
        return a.reshape(a.shape[:lead + nd] + (-1,))

    @jax.custom_jvp
    def pool(a):
        window = (1,) * lead + window_shape
        return jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, window, window, "VALID")

    @pool.defjvp
    def pool_jvp(primals, tangents):
        (a,), (da,) = primals, tangents
        first_max = jnp.argmax(windows(a), axis=-1, keepdims=True)
        return pool(a), jnp.take_along_axis(windows(da), first_max, axis=-1)[..., 0]

    return pool(x)


def avg_pool_nchw(x, window_shape, strides=None, padding=None, count_include_pad=True, ceil_mode=False):
    """torch average pooling (``F.avg_pool{1,2,3}d``) on (N, C, *spatial) arrays.

    With ``count_include_pad=False`` each window is divided by its number of real
    (unpadded) elements instead of the full window size, as in torch. With
    ``ceil_mode`` the output size rounds up; a window reaching past the padding
    is divided by the part of it inside the (padded) input, as in torch.
    """
    strides = window_shape if strides is None else strides
    padding = ((0, 0),) * len(window_shape) if padding is None else tuple(padding)
    lead = (1,) * (x.ndim - len(window_shape))
    extra = [0] * len(window_shape)
    if ceil_mode:
        for i, (size, k, s) in enumerate(zip(x.shape[len(lead):], window_shape, strides)):
            low, high = padding[i]
            out = -(-(size + low + high - k) // s) + 1
            if (out - 1) * s >= size + low:
                out -= 1
            extra[i] = max((out - 1) * s + k - (size + low + high), 0)
    window = lead + tuple(window_shape)
    strides = lead + tuple(strides)
    full = ((0, 0),) * len(lead) + tuple((low, high + e) for (low, high), e in zip(padding, extra))
    sums = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, full)
    if count_include_pad and not any(extra):
        return sums / math.prod(window_shape)
    ones = jnp.ones(lead + x.shape[len(lead):], x.dtype)
    if count_include_pad:  # the explicit padding counts, the ceil_mode overhang does not
        ones = jnp.pad(ones, ((0, 0),) * len(lead) + padding, constant_values=1)
        full = ((0, 0),) * len(lead) + tuple((0, e) for e in extra)
    counts = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, full)
    return sums / counts


def adaptive_avg_pool_nchw(x, output_size):
    """torch adaptive average pooling on (N, C, *spatial) arrays, when each output size divides its input size.

    ``output_size`` has one entry per spatial dim; None keeps that dim's size.
    """
    n_lead = x.ndim - len(output_size)
    shape = list(x.shape[:n_lead])
    for dim, (size, out) in enumerate(zip(x.shape[n_lead:], output_size)):
        out = size if out is None else out
        if out <= 0 or size % out:
            raise ValueError(
                f"adaptive_avg_pool_nchw: spatial dim {dim} has size {size}, which output "
                f"size {out} does not divide; general adaptive pooling (uneven windows) "
                "is not supported"
            )
        shape += [out, size // out]
    window_axes = tuple(range(n_lead + 1, len(shape), 2))
    return x.reshape(shape).mean(axis=window_axes)


def scaled_dot_product_attention(query, key, value, attn_mask=None, is_causal=False, scale=None, dropout=None):
    """torch's ``F.scaled_dot_product_attention`` on (..., L, E) arrays.

    A bool ``attn_mask`` is True where attention is allowed; a float one is added
    to the scores.  A query that may attend to nothing gets zeros, as in torch.
    ``dropout``: torch's ``dropout_p``, as a layer (an nnx.Dropout) applied to the
    attention weights.
    """
    if scale is None:
        scale = 1 / math.sqrt(query.shape[-1])
    scores = jnp.matmul(query, jnp.swapaxes(key, -1, -2)) * scale
    allowed = jnp.ones(scores.shape[-2:], dtype=bool)
    if is_causal:
        allowed = jnp.tril(allowed)
    if attn_mask is not None and attn_mask.dtype == jnp.bool_:
        allowed = allowed & attn_mask
    elif attn_mask is not None:
        scores = scores + attn_mask
        allowed = allowed & (scores != -jnp.inf)
    weights = jax.nn.softmax(scores, axis=-1, where=allowed)
    if dropout is not None:
        weights = dropout(weights)
    return jnp.matmul(weights, value)


def split_by_size(x, split_size, axis=0):
    """torch's ``x.split(split_size, dim)``: pieces of split_size along axis, the last one smaller if needed;
    a list of sizes cuts pieces of those sizes."""
    if isinstance(split_size, (list, tuple)):
        cuts, total = [], 0
        for size in split_size[:-1]:
            total += size
            cuts.append(total)
        return tuple(jnp.split(x, cuts, axis=axis))
    return tuple(jnp.split(x, list(range(split_size, x.shape[axis], split_size)), axis=axis))


class TorchBatchNorm(nnx.BatchNorm):
    """nnx.BatchNorm whose running variance follows torch's: updated with the unbiased batch variance.

    flax updates it with the biased one (a factor (n-1)/n, n values per channel);
    the output, normalised with the biased batch variance, is the same in both.
    """

    def __call__(self, x, use_running_average=None, *, mask=None):
        running = self.use_running_average if use_running_average is None else use_running_average
        previous = self.var[...]
        y = super().__call__(x, use_running_average=use_running_average, mask=mask)
        if not running:
            axes = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
            n = x.size // math.prod(x.shape[a] for a in axes)
            m = self.momentum
            unbiased = (self.var[...] - m * previous) * (n / max(n - 1, 1))
            self.var[...] = jax.lax.stop_gradient(m * previous + unbiased)
        return y


class ChannelsFirstConvTranspose(nnx.ConvTranspose):
    """nnx.ConvTranspose that takes and returns torch's channels-first (N, C, *spatial) arrays.

    Built with ``transpose_kernel=True``, the kernel is torch's ConvTranspose
    weight (in, out, *spatial) stored as (*spatial, out, in); torch's padding p
    and output_padding op become the pair (d*(k-1) - p, d*(k-1) - p + op) per
    spatial dim.
    """

    def __call__(self, x):
        channel_axis = -1 - len(self.kernel_size)
        y = super().__call__(jnp.moveaxis(x, channel_axis, -1))
        return jnp.moveaxis(y, -1, channel_axis)


class ChannelsFirstGroupNorm(nnx.GroupNorm):
    """nnx.GroupNorm on torch's channels-first (N, C, *spatial) arrays: the channels are axis 1."""

    def __call__(self, x):
        y = super().__call__(jnp.moveaxis(x, 1, -1))
        return jnp.moveaxis(y, -1, 1)


def pad_nchw(x, padding, mode="constant", value=0.0):
    """torch's ``F.pad(x, padding, mode, value)``: ``padding`` holds (low, high) pairs from the last dim backwards.

    Modes 'constant' (a negative padding crops, as in torch), 'reflect',
    'replicate' and 'circular'.
    """
    pairs = [(padding[i], padding[i + 1]) for i in range(0, len(padding), 2)]
    widths = [(0, 0)] * (x.ndim - len(pairs)) + pairs[::-1]
    if mode == "constant":
        return jax.lax.pad(x, jnp.asarray(value, x.dtype), [(low, high, 0) for low, high in widths])
    numpy_modes = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}
    if mode not in numpy_modes:
        raise ValueError(f"pad_nchw: unknown padding mode {mode!r}")
    return jnp.pad(x, widths, mode=numpy_modes[mode])


def interpolate_nchw(x, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """torch's ``F.interpolate`` / ``nn.Upsample`` on (N, C, *spatial) arrays, with torch's index arithmetic.

    Modes 'nearest', 'nearest-exact', 'linear', 'bilinear', 'trilinear' (one
    linear pass per spatial dim, no antialiasing). As in torch, a given
    ``scale_factor`` (not the size ratio) scales the source coordinates, and
    the output size is floor(size * scale_factor).
    """
    spatial = x.ndim - 2
    in_sizes = x.shape[2:]
    if size is not None:
        sizes = (size,) * spatial if isinstance(size, int) else tuple(size)
        factors = (None,) * spatial
    else:
        factors = (scale_factor,) * spatial if isinstance(scale_factor, (int, float)) else tuple(scale_factor)
        sizes = tuple(int(math.floor(n * float(f))) for n, f in zip(in_sizes, factors))
    linear = mode in ("linear", "bilinear", "trilinear")
    if not linear and mode not in ("nearest", "nearest-exact"):
        raise ValueError(f"interpolate_nchw: mode {mode!r} is not supported")
    for axis, (n_in, n_out, factor) in enumerate(zip(in_sizes, sizes, factors), start=2):
        if n_out == n_in:
            continue  # torch copies the axis unchanged
        out = jnp.arange(n_out, dtype=jnp.float32)
        if linear and align_corners:
            scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            scale = 1.0 / float(factor) if factor is not None and factor > 0 else n_in / n_out
        scale = jnp.float32(scale)
        if not linear:
            source = out * scale if mode == "nearest" else (out + 0.5) * scale
            index = jnp.minimum(jnp.floor(source).astype(jnp.int32), n_in - 1)
            x = jnp.take(x, index, axis=axis)
            continue
        source = out * scale if align_corners else jnp.maximum((out + 0.5) * scale - 0.5, 0.0)
        low = jnp.minimum(jnp.floor(source).astype(jnp.int32), n_in - 1)
        high = jnp.minimum(low + 1, n_in - 1)
        weight = jnp.clip(source - low, 0.0, 1.0).astype(x.dtype)
        shape = [1] * x.ndim
        shape[axis] = n_out
        weight = weight.reshape(shape)
        x = jnp.take(x, low, axis=axis) * (1 - weight) + jnp.take(x, high, axis=axis) * weight
    return x


def pixel_shuffle(x, upscale_factor):
    """torch's ``F.pixel_shuffle`` / ``nn.PixelShuffle``: (*, C*r*r, H, W) -> (*, C, H*r, W*r)."""
    r = upscale_factor
    *lead, channels, height, width = x.shape
    n = len(lead)
    x = x.reshape(*lead, channels // (r * r), r, r, height, width)
    x = x.transpose(*range(n), n, n + 3, n + 1, n + 4, n + 2)
    return x.reshape(*lead, channels // (r * r), height * r, width * r)


def pixel_unshuffle(x, downscale_factor):
    """torch's ``F.pixel_unshuffle`` / ``nn.PixelUnshuffle``: (*, C, H*r, W*r) -> (*, C*r*r, H, W)."""
    r = downscale_factor
    *lead, channels, height, width = x.shape
    n = len(lead)
    x = x.reshape(*lead, channels, height // r, r, width // r, r)
    x = x.transpose(*range(n), n, n + 2, n + 4, n + 1, n + 3)
    return x.reshape(*lead, channels * r * r, height // r, width // r)


def unflatten(x, dim, sizes):
    """torch's ``x.unflatten(dim, sizes)`` / ``nn.Unflatten``: axis ``dim`` split into ``sizes`` (one may be -1)."""
    dim = dim % x.ndim
    return x.reshape(*x.shape[:dim], *sizes, *x.shape[dim + 1:])


def adaptive_max_pool_nchw(x, output_size):
    """torch adaptive max pooling on (N, C, *spatial) arrays, with torch's windows.

    ``output_size`` has one entry per spatial dim (None keeps the size); output
    i of a dim of size n takes the max over [floor(i*n/out), ceil((i+1)*n/out)).
    The maximum is picked with argmax and gathered, so its gradient goes to that
    one element, as torch's saved index does (jnp.max's gradient compares the
    input with the result, which fails under jit when XLA recomputes the input
    in two fusions with different rounding).
    """
    n_lead = x.ndim - len(output_size)
    for axis, out in enumerate(output_size, start=n_lead):
        size = x.shape[axis]
        out = size if out is None else out
        starts = [(i * size) // out for i in range(out)]
        ends = [-((-(i + 1) * size) // out) for i in range(out)]
        width = max(e - s for s, e in zip(starts, ends))
        # each window's elements, a short window padded with its own last one (the max is unchanged)
        index = jnp.asarray([[min(s + j, e - 1) for j in range(width)] for s, e in zip(starts, ends)])
        windows = jnp.take(x, index.reshape(-1), axis=axis)
        windows = windows.reshape(x.shape[:axis] + (out, width) + x.shape[axis + 1:])
        best = jnp.argmax(windows, axis=axis + 1, keepdims=True)
        x = jnp.take_along_axis(windows, best, axis=axis + 1).squeeze(axis + 1)
    return x


def softplus(x, beta=1.0, threshold=20.0):
    """torch's ``F.softplus(x, beta, threshold)``: log(1 + exp(beta*x)) / beta, and x itself where beta*x > threshold."""
    scaled = beta * x
    return jnp.where(scaled > threshold, x, jax.nn.softplus(scaled) / beta)


class TorchPReLU(nnx.Module):
    """torch's ``nn.PReLU``: a learned negative slope, one per channel (axis 1) or one shared; parameter ``weight``."""

    def __init__(self, num_parameters=1, init=0.25, *, rngs=None):
        self.weight = nnx.Param(jnp.full((num_parameters,), init, dtype=jnp.float32))

    def __call__(self, x):
        weight = self.weight[...]
        if weight.shape[0] > 1 and x.ndim > 1:
            weight = weight.reshape((-1,) + (1,) * (x.ndim - 2))
        return jnp.where(x > 0, x, weight * x)


class TorchBilinear(nnx.Module):
    """torch's ``nn.Bilinear``: y = x1 W x2 + b, parameters ``weight`` (out, in1, in2) and ``bias`` (out,) as in torch."""

    def __init__(self, in1_features, in2_features, out_features, bias=True, *, rngs):
        bound = 1 / math.sqrt(in1_features)
        shape = (out_features, in1_features, in2_features)
        self.weight = nnx.Param(jax.random.uniform(rngs.params(), shape, minval=-bound, maxval=bound))
        bias_value = jax.random.uniform(rngs.params(), (out_features,), minval=-bound, maxval=bound)
        self.bias = nnx.Param(bias_value) if bias else None

    def __call__(self, input1, input2):
        y = jnp.einsum("...i,oij,...j->...o", input1, self.weight[...], input2)
        return y if self.bias is None else y + self.bias[...]


class TorchEmbeddingBag(nnx.Module):
    """torch's ``nn.EmbeddingBag``: the sum, mean or max of embedding rows per bag; parameter ``weight``.

    ``input`` is 2-D (one bag per row) or 1-D with ``offsets`` (where each bag
    starts). ``per_sample_weights`` scale the rows (mode 'sum'); entries equal
    to ``padding_idx`` are left out of bags and counts. Empty bags give zeros,
    as in torch.
    """

    def __init__(self, num_embeddings, embedding_dim, mode="mean", padding_idx=None, include_last_offset=False,
                 *, rngs):
        if padding_idx is not None and padding_idx < 0:
            padding_idx += num_embeddings
        weight = jax.random.normal(rngs.params(), (num_embeddings, embedding_dim))
        if padding_idx is not None:
            weight = weight.at[padding_idx].set(0.0)
        self.weight = nnx.Param(weight)
        self.mode = mode
        self.padding_idx = padding_idx
        self.include_last_offset = include_last_offset

    def __call__(self, input, offsets=None, per_sample_weights=None):
        if input.ndim == 2:
            n_bags, length = input.shape
            ids = input.reshape(-1)
            bag = jnp.repeat(jnp.arange(n_bags), length)
            if per_sample_weights is not None:
                per_sample_weights = per_sample_weights.reshape(-1)
        else:
            n_bags = offsets.shape[0] - (1 if self.include_last_offset else 0)
            ids = input
            bag = jnp.searchsorted(offsets, jnp.arange(ids.shape[0]), side="right") - 1
        rows = self.weight[...][ids]
        if per_sample_weights is not None:
            rows = rows * per_sample_weights[:, None]
        keep = jnp.ones(ids.shape, bool) if self.padding_idx is None else ids != self.padding_idx
        counts = jax.ops.segment_sum(keep.astype(rows.dtype), bag, num_segments=n_bags)[:, None]
        if self.mode == "max":
            top = jax.ops.segment_max(jnp.where(keep[:, None], rows, -jnp.inf), bag, num_segments=n_bags)
            return jnp.where(counts > 0, top, 0.0)
        sums = jax.ops.segment_sum(jnp.where(keep[:, None], rows, 0.0), bag, num_segments=n_bags)
        if self.mode == "sum":
            return sums
        return sums / jnp.maximum(counts, 1.0)


class TorchMultiheadAttention(nnx.Module):
    """torch's ``nn.MultiheadAttention``: same parameters, same call, same masks.

    Called as ``(query, key, value, key_padding_mask=None, need_weights=True,
    attn_mask=None, average_attn_weights=True, is_causal=False)``; returns
    ``(output, weights)`` (weights None unless need_weights). Inputs are
    (L, N, E), or (N, L, E) with ``batch_first``, or unbatched (L, E). A boolean
    mask is True where attention is *blocked*; a float mask is added to the
    scores. Parameters keep torch's names and layouts: ``in_proj_weight``
    (3E, E), packed q/k/v (``q_proj_weight``, ``k_proj_weight``,
    ``v_proj_weight`` when kdim/vdim differ from E), ``in_proj_bias`` and
    ``out_proj`` (an nnx.Linear). Attention dropout follows model.train()/eval().
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, kdim=None, vdim=None, batch_first=False,
                 *, rngs):
        kdim = embed_dim if kdim is None else kdim
        vdim = embed_dim if vdim is None else vdim
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.batch_first = embed_dim, num_heads, batch_first
        xavier = jax.nn.initializers.xavier_uniform()
        packed = kdim == embed_dim and vdim == embed_dim  # one (3E, E) matrix, as torch packs it

        def weight(*shape):
            return nnx.Param(xavier(rngs.params(), shape))

        self.in_proj_weight = weight(3 * embed_dim, embed_dim) if packed else None
        self.q_proj_weight = None if packed else weight(embed_dim, embed_dim)
        self.k_proj_weight = None if packed else weight(embed_dim, kdim)
        self.v_proj_weight = None if packed else weight(embed_dim, vdim)
        self.in_proj_bias = nnx.Param(jnp.zeros((3 * embed_dim,))) if bias else None
        self.out_proj = nnx.Linear(embed_dim, embed_dim, use_bias=bias, bias_init=jax.nn.initializers.zeros,
                                   rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                 average_attn_weights=True, is_causal=False):
        if is_causal and attn_mask is None:
            raise ValueError("is_causal is only a hint in torch's MultiheadAttention: pass attn_mask as well")
        unbatched = query.ndim == 2
        if unbatched:
            query, key, value = query[None], key[None], value[None]
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask[None]
        elif not self.batch_first:
            query, key, value = (jnp.swapaxes(t, 0, 1) for t in (query, key, value))
        if self.in_proj_weight is not None:
            w_q, w_k, w_v = jnp.split(self.in_proj_weight[...], 3)
        else:
            w_q, w_k, w_v = self.q_proj_weight[...], self.k_proj_weight[...], self.v_proj_weight[...]
        b_q, b_k, b_v = (0.0, 0.0, 0.0) if self.in_proj_bias is None else jnp.split(self.in_proj_bias[...], 3)
        batch, length, heads = query.shape[0], query.shape[1], self.num_heads
        head_dim = self.embed_dim // heads

        def split_heads(t):  # (N, L, E) -> (N, H, L, D)
            return t.reshape(t.shape[0], t.shape[1], heads, head_dim).transpose(0, 2, 1, 3)

        q = split_heads(query @ w_q.T + b_q)
        k = split_heads(key @ w_k.T + b_k)
        v = split_heads(value @ w_v.T + b_v)
        scores = (q * math.sqrt(1.0 / head_dim)) @ jnp.swapaxes(k, -1, -2)
        if attn_mask is not None:  # (L, S), or (N * H, L, S)
            attn_mask = attn_mask if attn_mask.ndim == 2 else attn_mask.reshape(scores.shape)
        if key_padding_mask is not None:  # (N, S): the same for every head and query
            key_padding_mask = key_padding_mask.reshape(batch, 1, 1, scores.shape[-1])
        for mask in (attn_mask, key_padding_mask):
            if mask is not None:
                scores = scores + (jnp.where(mask, -jnp.inf, 0.0) if mask.dtype == jnp.bool_ else mask)
        weights = self.dropout(jax.nn.softmax(scores, axis=-1))
        out = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, length, self.embed_dim)
        out = self.out_proj(out)
        if need_weights:
            weights = weights.mean(axis=1) if average_attn_weights else weights
            weights = weights[0] if unbatched else weights
        else:
            weights = None
        if unbatched:
            out = out[0]
        elif not self.batch_first:
            out = jnp.swapaxes(out, 0, 1)
        return out, weights


class TorchTransformerEncoderLayer(nnx.Module):
    """torch's ``nn.TransformerEncoderLayer``: self-attention, then a feed-forward block, each added back
    and layer-normed (after, or before with ``norm_first``); torch's parameter names.

    Called as ``(src, src_mask=None, src_key_padding_mask=None, is_causal=False)`` with
    torch's masks (see TorchMultiheadAttention). ``activation`` is 'relu', 'gelu' (exact)
    or a function. Dropout follows model.train()/eval().
    """

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu", layer_norm_eps=1e-5,
                 batch_first=False, norm_first=False, bias=True, *, rngs):
        self.self_attn = TorchMultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first,
                                                 rngs=rngs)
        self.linear1 = nnx.Linear(d_model, dim_feedforward, use_bias=bias, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.linear2 = nnx.Linear(dim_feedforward, d_model, use_bias=bias, rngs=rngs)
        self.norm1 = nnx.LayerNorm(d_model, epsilon=layer_norm_eps, use_bias=bias, use_fast_variance=False,
                                   rngs=rngs)
        self.norm2 = nnx.LayerNorm(d_model, epsilon=layer_norm_eps, use_bias=bias, use_fast_variance=False,
                                   rngs=rngs)
        self.dropout1 = nnx.Dropout(dropout, rngs=rngs)
        self.dropout2 = nnx.Dropout(dropout, rngs=rngs)
        self.norm_first = norm_first
        if activation == "relu":
            activation = jax.nn.relu
        elif activation == "gelu":
            activation = lambda x: jax.nn.gelu(x, approximate=False)  # noqa: E731 - torch's exact gelu
        elif isinstance(activation, str):
            raise ValueError(f"activation should be relu/gelu, not {activation}")
        self.activation = activation

    def __call__(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        if self.norm_first:
            x = x + self._self_attention(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._feed_forward(self.norm2(x))
        x = self.norm1(x + self._self_attention(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._feed_forward(x))

    def _self_attention(self, x, mask, key_padding_mask, is_causal):
        out, _ = self.self_attn(x, x, x, attn_mask=mask, key_padding_mask=key_padding_mask, need_weights=False,
                                is_causal=is_causal)
        return self.dropout1(out)

    def _feed_forward(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class TorchTransformerEncoder(nnx.Module):
    """torch's ``nn.TransformerEncoder``: ``num_layers`` copies of ``encoder_layer`` (identical at first, as
    torch's deep copies are) under ``layers``, then ``norm`` if given; ``(src, mask=None,
    src_key_padding_mask=None, is_causal=None)``."""

    def __init__(self, encoder_layer, num_layers, norm=None):
        self.layers = nnx.List([nnx.clone(encoder_layer) for _ in range(num_layers)])
        self.norm = norm

    def __call__(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
        return x if self.norm is None else self.norm(x)


class TorchRNNBase(nnx.Module):
    """torch's recurrent layers (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``): same parameters, same call.

    Parameters keep torch's names and layouts (``weight_ih_l{k}``
    (gates*H, in), ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``,
    ``_reverse`` for the backward direction) and torch's gate order (LSTM
    i, f, g, o; GRU r, z, n). Inputs are (L, N, H_in), (N, L, H_in) with
    ``batch_first``, or unbatched (L, H_in). Dropout between layers follows
    model.train()/eval().
    """

    mode = "RNN_TANH"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, *, rngs):
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        gates = {"LSTM": 4, "GRU": 3}.get(self.mode, 1) * hidden_size
        directions = 2 if bidirectional else 1
        bound = 1 / math.sqrt(hidden_size)

        def uniform(*shape):
            return nnx.Param(jax.random.uniform(rngs.params(), shape, minval=-bound, maxval=bound))

        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * directions
            for suffix in ("", "_reverse")[:directions]:
                setattr(self, f"weight_ih_l{layer}{suffix}", uniform(gates, layer_input))
                setattr(self, f"weight_hh_l{layer}{suffix}", uniform(gates, hidden_size))
                if bias:
                    setattr(self, f"bias_ih_l{layer}{suffix}", uniform(gates))
                    setattr(self, f"bias_hh_l{layer}{suffix}", uniform(gates))
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def _cell(self, xw, hw, h, c):
        """One step from the input and hidden projections (biases included): the new (h, c)."""
        if self.mode == "LSTM":
            i, f, g, o = jnp.split(xw + hw, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            return jax.nn.sigmoid(o) * jnp.tanh(c), c
        if self.mode == "GRU":
            x_r, x_z, x_n = jnp.split(xw, 3, axis=-1)
            h_r, h_z, h_n = jnp.split(hw, 3, axis=-1)
            r = jax.nn.sigmoid(x_r + h_r)
            z = jax.nn.sigmoid(x_z + h_z)
            n = jnp.tanh(x_n + r * h_n)
            return (1 - z) * n + z * h, c
        activation = jax.nn.relu if self.mode == "RNN_RELU" else jnp.tanh
        return activation(xw + hw), c

    def __call__(self, input, hx=None):
        unbatched = input.ndim == 2
        x = input[:, None] if unbatched else (jnp.swapaxes(input, 0, 1) if self.batch_first else input)
        directions = 2 if self.bidirectional else 1
        shape = (self.num_layers * directions, x.shape[1], self.hidden_size)
        h0 = c0 = jnp.zeros(shape, x.dtype)
        if hx is not None and self.mode == "LSTM":
            h0, c0 = (hx[0][:, None], hx[1][:, None]) if unbatched else hx
        elif hx is not None:
            h0 = hx[:, None] if unbatched else hx
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction, suffix in enumerate(("", "_reverse")[:directions]):
                w_ih = getattr(self, f"weight_ih_l{layer}{suffix}")[...]
                w_hh = getattr(self, f"weight_hh_l{layer}{suffix}")[...]
                b_ih = getattr(self, f"bias_ih_l{layer}{suffix}")[...] if self.bias else 0.0
                b_hh = getattr(self, f"bias_hh_l{layer}{suffix}")[...] if self.bias else 0.0
                sequence = x[::-1] if direction else x
                projected = sequence @ w_ih.T + b_ih  # all time steps at once

                def step(carry, xw, w_hh=w_hh, b_hh=b_hh):
                    h, c = self._cell(xw, carry[0] @ w_hh.T + b_hh, *carry)
                    return (h, c), h

                index = layer * directions + direction
                (h, c), ys = jax.lax.scan(step, (h0[index], c0[index]), projected)
                outputs.append(ys[::-1] if direction else ys)
                h_n.append(h)
                c_n.append(c)
            x = jnp.concatenate(outputs, axis=-1) if directions == 2 else outputs[0]
            if layer < self.num_layers - 1:
                x = self.dropout(x)
        output = x[:, 0] if unbatched else (jnp.swapaxes(x, 0, 1) if self.batch_first else x)
        h_n, c_n = jnp.stack(h_n), jnp.stack(c_n)
        if unbatched:
            h_n, c_n = h_n[:, 0], c_n[:, 0]
        return (output, (h_n, c_n)) if self.mode == "LSTM" else (output, h_n)


class TorchRNN(TorchRNNBase):
    """torch's ``nn.RNN`` (an Elman RNN, ``nonlinearity`` 'tanh' or 'relu'); see TorchRNNBase."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, rngs):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}")
        self.mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, rngs=rngs)


class TorchLSTM(TorchRNNBase):
    """torch's ``nn.LSTM`` (gates i, f, g, o; returns ``(output, (h_n, c_n))``); see TorchRNNBase."""

    mode = "LSTM"


class TorchGRU(TorchRNNBase):
    """torch's ``nn.GRU`` (gates r, z, n; returns ``(output, h_n)``); see TorchRNNBase."""

    mode = "GRU"


def squeeze_dims(x, dim):
    """torch's ``x.squeeze(dim)``: removes the given dims that have size 1; a dim of another size stays
    (``jnp.squeeze`` raises there)."""
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return jnp.squeeze(x, tuple(d for d in dims if x.shape[d] == 1))


def expand_to(x, sizes):
    """torch's ``x.expand(*sizes)`` with sizes known only when it runs: a -1 keeps x's size there (the sizes
    line up with x's dims from the end; new leading dims take no -1)."""
    sizes = tuple(sizes)
    lead = len(sizes) - x.ndim
    if any(s == -1 for s in sizes[:max(lead, 0)]):
        raise ValueError(f"expand{sizes}: -1 is not allowed in a new leading dimension")
    return jnp.broadcast_to(x, tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes)))


def tensor_to(x, *args, dtype=None, **placement):
    """torch's ``x.to(...)`` where the source did not show whether an argument is a dtype or a device: a
    dtype (or a tensor, whose dtype it takes) casts; devices and flags are ignored, JAX places arrays itself."""
    for arg in args:
        if hasattr(arg, "dtype") and hasattr(arg, "shape"):
            dtype = arg.dtype
        elif arg is not None and not isinstance(arg, (str, bool, int)):
            try:
                dtype = jnp.dtype(arg)
            except TypeError:  # a device
                pass
    other = placement.get("other")
    if other is not None:
        dtype = other.dtype
    return x if dtype is None else x.astype(dtype)


def no_grad(value):
    """What torch computes under ``torch.no_grad()`` in a model: the value, with no gradient flowing back
    through it (arrays in a tuple or list too; ints and other values pass unchanged)."""
    return jax.tree.map(lambda v: jax.lax.stop_gradient(v) if isinstance(v, jax.Array) else v, value)


def div_trunc(a, b):
    """torch's ``torch.div(a, b, rounding_mode='trunc')``: the quotient rounded toward zero, in a and b's dtype."""
    if jnp.issubdtype(jnp.result_type(a, b), jnp.integer):
        quotient = jnp.abs(a) // jnp.abs(b)
        return jnp.where((a < 0) != (b < 0), -quotient, quotient)
    return jnp.trunc(a / b)


def gather(x, dim, index):
    """torch's ``torch.gather(x, dim, index)``: out[i][j] = x[i][index[i][j]] along dim.

    ``index`` may be smaller than ``x`` in the other dims (torch reads only that
    corner of ``x``). Indices must be in range: torch raises, JAX does not check.
    """
    dim = dim % x.ndim
    x = x[tuple(slice(None) if d == dim else slice(0, n) for d, n in enumerate(index.shape))]
    return jnp.take_along_axis(x, index, axis=dim)


def scatter(x, dim, index, src, reduce=None):
    """torch's ``x.scatter(dim, index, src)`` and ``scatter_add`` / ``scatter_reduce`` (out of place).

    ``reduce`` is None (write; with repeated indices torch keeps an unspecified
    one), 'sum', 'prod', 'amax', 'amin' or 'mean' (include_self=True). ``src`` may
    be a scalar or larger than ``index`` (torch reads only that corner).
    """
    dim = dim % x.ndim
    grid = list(jnp.indices(index.shape, sparse=True))
    grid[dim] = index
    position = tuple(grid)
    if jnp.ndim(src) > 0:
        src = src[tuple(slice(0, n) for n in index.shape)]
    at = x.at[position]
    if reduce is None:
        return at.set(src)
    if reduce == "sum":
        return at.add(src)
    if reduce == "prod":
        return at.multiply(src)
    if reduce == "amax":
        return at.max(src)
    if reduce == "amin":
        return at.min(src)
    if reduce == "mean":
        counts = jnp.ones(x.shape, x.dtype).at[position].add(jnp.ones(index.shape, x.dtype))
        return at.add(src) / counts
    raise ValueError(f"scatter: reduce={reduce!r}")


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """torch's ``F.layer_norm``: normalises over the last len(normalized_shape) dims (biased variance)."""
    count = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    axes = tuple(range(x.ndim - count, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = jnp.square(x - mean).mean(axis=axes, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """torch's ``F.group_norm`` on (N, C, *) arrays: statistics per sample over each group of C // num_groups
    channels (biased variance), then a per-channel scale and shift."""
    n, c = x.shape[0], x.shape[1]
    grouped = x.reshape((n, num_groups, -1))
    mean = grouped.mean(axis=-1, keepdims=True)
    var = jnp.square(grouped - mean).mean(axis=-1, keepdims=True)
    y = ((grouped - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)
    channel = (c,) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = y * weight.reshape(channel)
    if bias is not None:
        y = y + bias.reshape(channel)
    return y


def rms_norm(x, normalized_shape, weight=None, eps=None):
    """torch's ``F.rms_norm``: x / sqrt(mean(x**2) + eps) over the last len(normalized_shape) dims; eps None
    means the dtype's machine epsilon, as in torch."""
    count = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    axes = tuple(range(x.ndim - count, x.ndim))
    eps = jnp.finfo(x.dtype).eps if eps is None else eps
    y = x * jax.lax.rsqrt(jnp.square(x).mean(axis=axes, keepdims=True) + eps)
    return y if weight is None else y * weight


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, eps=1e-5):
    """torch's ``F.batch_norm`` on (N, C, *) arrays: the running statistics (training=False) or the batch's
    (training=True, biased variance); it does not update running statistics."""
    axes = (0,) + tuple(range(2, x.ndim))
    channel = (-1,) + (1,) * (x.ndim - 2)
    if training:
        mean = x.mean(axis=axes)
        var = jnp.square(x - x.mean(axis=axes, keepdims=True)).mean(axis=axes)
    else:
        mean, var = running_mean, running_var
    y = (x - mean.reshape(channel)) * jax.lax.rsqrt(var.reshape(channel) + eps)
    if weight is not None:
        y = y * weight.reshape(channel)
    if bias is not None:
        y = y + bias.reshape(channel)
    return y


def sequential(*layers):
    """torch's ``nn.Sequential``: layers in order (an nnx.Sequential), or one OrderedDict of named layers
    (a TorchSequential, which keeps the names, and takes more: ``setattr(seq, name, layer)``)."""
    if len(layers) == 1 and isinstance(layers[0], dict):
        return TorchSequential(layers[0])
    return nnx.Sequential(*layers)


def ntuple(value, n):
    """torch's int-or-tuple arguments (stride=2, stride=(2, 1)) as a tuple of n ints."""
    return (value,) * n if isinstance(value, int) else tuple(value)


def last_dim(normalized_shape):
    """torch's LayerNorm/RMSNorm ``normalized_shape`` (an int or a 1-sequence) as flax's feature count: flax
    normalises over the last axis only."""
    if isinstance(normalized_shape, int):
        return normalized_shape
    if len(normalized_shape) != 1:
        raise NotImplementedError(f"normalized_shape={normalized_shape!r}: porter converts a norm over the "
                                  "last dimension only")
    return normalized_shape[0]


def conv_padding(padding, n):
    """torch's convolution padding (an int, one int per spatial dim, 'same' or 'valid') as lax's: a string or
    (low, high) pairs."""
    if isinstance(padding, str):
        return padding.upper()
    return tuple((p, p) for p in ntuple(padding, n))


class TorchLayerNorm(nnx.Module):
    """torch's ``nn.LayerNorm`` with torch's attributes (``normalized_shape``, ``eps``, ``weight``, ``bias``): the
    base a subclass of nn.LayerNorm gets, so that its own forward reads them as it did."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None, dtype=None,
                 *, rngs=None):
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        dtype = dtype or jnp.float32
        self.weight = nnx.Param(jnp.ones(self.normalized_shape, dtype)) if elementwise_affine else None
        self.bias = nnx.Param(jnp.zeros(self.normalized_shape, dtype)) if elementwise_affine and bias else None

    def __call__(self, x):
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class TorchGroupNorm(nnx.Module):
    """torch's ``nn.GroupNorm`` with torch's attributes (``num_groups``, ``eps``, ``weight``, ``bias``): the base a
    subclass of nn.GroupNorm gets."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None, *, rngs=None):
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        dtype = dtype or jnp.float32
        self.weight = nnx.Param(jnp.ones((num_channels,), dtype)) if affine else None
        self.bias = nnx.Param(jnp.zeros((num_channels,), dtype)) if affine else None

    def __call__(self, x):
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class TorchConv2d(nnx.Module):
    """torch's ``nn.Conv2d`` with torch's attributes and layout (``weight`` (out, in / groups, kh, kw), ``bias``,
    ``stride``, ``padding``, ...) on NCHW arrays: the base a subclass of nn.Conv2d gets, so that its own forward
    (``F.conv2d(x, self.weight, ...)``) reads them as it did. Parameters start as torch's do."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None, *, rngs: nnx.Rngs):
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride, self.dilation = pair(kernel_size), pair(stride), pair(dilation)
        self.padding = padding if isinstance(padding, str) else pair(padding)
        self.padding_mode = padding_mode
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        bound = 1 / math.sqrt(shape[1] * shape[2] * shape[3])  # kaiming_uniform_(a=sqrt(5)), torch's default
        dtype = dtype or jnp.float32
        self.weight = nnx.Param(jax.random.uniform(rngs.params(), shape, dtype, -bound, bound))
        self.bias = nnx.Param(jax.random.uniform(rngs.params(), (out_channels,), dtype, -bound, bound)) \
            if bias else None

    def __call__(self, x):
        padding = self.padding
        if self.padding_mode != "zeros" and not isinstance(padding, str):
            mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[self.padding_mode]
            x = jnp.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2), mode=mode)
            padding = (0, 0)
        if not isinstance(padding, str):
            padding = ((padding[0], padding[0]), (padding[1], padding[1]))
        y = jax.lax.conv_general_dilated(x, self.weight[...], self.stride, padding.upper() if isinstance(padding, str)
                                         else padding, rhs_dilation=self.dilation, feature_group_count=self.groups,
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y if self.bias is None else y + self.bias[...][:, None, None]


def unfold_nchw(x, kernel_size, dilation=1, padding=0, stride=1):
    """torch's ``F.unfold`` (im2col) on (N, C, H, W): (N, C * kh * kw, L) in torch's (channel, kh, kw) order."""
    kernel, dilation, padding, stride = (
        tuple(v) if isinstance(v, (tuple, list)) else (v, v) for v in (kernel_size, dilation, padding, stride))
    patches = jax.lax.conv_general_dilated_patches(
        x, kernel, stride, [(p, p) for p in padding], rhs_dilation=dilation,
        dimension_numbers=("NCHW", "OIHW", "NCHW"), precision=jax.lax.Precision.HIGHEST)
    return patches.reshape(x.shape[0], patches.shape[1], -1)


def fold_nchw(x, output_size, kernel_size, dilation=1, padding=0, stride=1):
    """torch's ``F.fold`` (col2im): sums (N, C * kh * kw, L) blocks into (N, C, H, W), overlaps added."""
    (oh, ow), (kh, kw), (dh, dw), (ph, pw), (sh, sw) = (
        tuple(v) if isinstance(v, (tuple, list)) else (v, v)
        for v in (output_size, kernel_size, dilation, padding, stride))
    bh = (oh + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    bw = (ow + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    n, c = x.shape[0], x.shape[1] // (kh * kw)
    blocks = x.reshape(n, c, kh, kw, bh, bw)
    out = jnp.zeros((n, c, oh + 2 * ph, ow + 2 * pw), x.dtype)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (bh - 1) + 1, sh)
            cols = slice(j * dw, j * dw + sw * (bw - 1) + 1, sw)
            out = out.at[:, :, rows, cols].add(blocks[:, :, i, j])
    return out[:, :, ph:ph + oh, pw:pw + ow]


def layers_of(container):
    """What torch iterates, indexes and counts in a container: an nnx.Sequential's layers (it is no sequence
    itself), anything else as it is (a TorchSequential, an nnx.List, a list). For an attribute a base class
    built (smp's VGG encoder: ``enumerate(self.features)``, features torchvision's), whose kind the converting
    file cannot see."""
    return container.layers if type(container) is nnx.Sequential else container


def named_children(module):
    """torch's ``module.named_children()``: the direct submodules with their attribute names (a list's
    index as a string), each module once (nnx.iter_children yields an alias again)."""
    seen = set()
    for name, child in nnx.iter_children(module):
        if id(child) not in seen:
            seen.add(id(child))
            yield str(name), child


def parameters_of(module):
    """torch's ``module.parameters()`` where the order does not matter (counted, summed, tested): each
    nnx.Param's value under ``module`` once, a Variable shared by two attributes (tied weights) once, as
    torch counts a tied parameter once. The walk nnx's graph makes, without building a State: nnx.state is
    ~5x slower, felt where a training loop counts parameters every logged iteration (nanoGPT's estimate_mfu)."""
    seen, found, stack = set(), [], [module]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind in (int, float, str, bool, type(None)) or id(node) in seen:
            continue
        seen.add(id(node))
        if issubclass(kind, nnx.Variable):  # issubclass: flax's isinstance check on Variables is slow
            if issubclass(kind, nnx.Param):
                found.append(node.get_value())
        elif issubclass(kind, nnx.Pytree):
            stack.extend(vars(node).values())
        else:  # a list, dict, tuple or any other jax pytree nnx's graph looks into
            children = jax.tree_util.tree_flatten(node, is_leaf=lambda child: child is not node)[0]
            if len(children) != 1 or children[0] is not node:  # a leaf flattens to itself
                stack.extend(children)
    return found


class TorchSequential(nnx.Module):
    """torch's ``nn.Sequential`` as the base of a class that names its layers: given to the constructor (in
    order, or one OrderedDict), added with ``add_module`` (``setattr``) or assigned in the subclass's constructor
    (``self.norm = ...``). Each layer is an attribute under its torch name (the state keys are torch's), kept in
    the order torch registers it; called, it runs them in that order."""

    _torch_names = ()

    def __init__(self, *layers, rngs=None):
        named = layers[0].items() if len(layers) == 1 and isinstance(layers[0], dict) else \
            ((str(i), layer) for i, layer in enumerate(layers))
        for name, layer in named:
            setattr(self, name, layer)

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if not name.startswith("_") and callable(value) and not isinstance(value, type) \
                and name not in self._torch_names:
            super().__setattr__("_torch_names", (*self._torch_names, name))

    def __call__(self, x):
        for layer in self:
            x = layer(x)
        return x

    def __getitem__(self, index):
        return getattr(self, index if isinstance(index, str) else self._torch_names[index])

    def __len__(self):
        return len(self._torch_names)

    def __iter__(self):
        return (getattr(self, name) for name in self._torch_names)


class TorchModuleDict(TorchSequential):
    """torch's ``nn.ModuleDict`` as a base class (densenet's ``_DenseBlock``): its layers by name, in the order
    they were added, read as a dict (``items()``, ``keys()``, ``values()``, ``[name]``)."""

    def __init__(self, modules=None, *, rngs=None):
        for name, layer in (modules.items() if isinstance(modules, dict) else modules or ()):
            setattr(self, name, layer)

    def __iter__(self):
        return iter(self._torch_names)

    def keys(self):
        return self._torch_names

    def values(self):
        return [getattr(self, name) for name in self._torch_names]

    def items(self):
        return [(name, getattr(self, name)) for name in self._torch_names]

    def __contains__(self, name):
        return name in self._torch_names


def with_rngs_if_taken(constructor, rngs):
    """``constructor`` with ``rngs=rngs`` bound where it takes an ``rngs`` argument (a converted module
    class, a layer factory), else ``constructor`` itself (a module class that builds nothing random, a
    plain function). porter writes ``with_rngs_if_taken(block, rngs)(c)`` where the code does not say
    what ``block`` is: a class picked from a registry that also holds other values, or handed to a
    module's constructor. nnx module classes are asked through ``__init__`` (calling the class goes
    through nnx's metaclass, whose signature says nothing)."""
    target = constructor
    while isinstance(target, partial):
        if "rngs" in target.keywords:
            return constructor
        target = target.func
    try:
        parameters = inspect.signature(target.__init__ if isinstance(target, type) else target).parameters
    except (TypeError, ValueError):  # a builtin without a signature: takes no rngs of porter's
        return constructor
    return partial(constructor, rngs=rngs) if "rngs" in parameters else constructor


def token_buffer(idx, extra):
    """``idx`` (batch, time) with room for ``extra`` more tokens on the right (zeros): a decoding loop
    writes one token a step into it at one shape, where torch's grows ``idx`` with ``torch.cat``. Its
    dtype is at least int32, the sampled tokens' (what torch.cat's type promotion gives)."""
    idx = jnp.asarray(idx)
    return jnp.pad(idx.astype(jnp.promote_types(idx.dtype, jnp.int32)), ((0, 0), (0, extra)))


DEPENDS: dict[str, tuple[str, ...]] = {
    "Buffer": (),
    "ChannelsFirstConv": (),
    "max_pool_nchw": ("max_pool_tiles",),
    "max_pool_tiles": (),
    "avg_pool_nchw": (),
    "adaptive_avg_pool_nchw": (),
    "scaled_dot_product_attention": (),
    "split_by_size": (),
    "tensor_to": (),
    "no_grad": (),
    "TorchBatchNorm": (),
    "ChannelsFirstConvTranspose": (),
    "ChannelsFirstGroupNorm": (),
    "pad_nchw": (),
    "interpolate_nchw": (),
    "pixel_shuffle": (),
    "pixel_unshuffle": (),
    "unflatten": (),
    "adaptive_max_pool_nchw": (),
    "softplus": (),
    "TorchPReLU": (),
    "TorchBilinear": (),
    "TorchEmbeddingBag": (),
    "TorchMultiheadAttention": (),
    "TorchTransformerEncoderLayer": ("TorchMultiheadAttention",),
    "TorchTransformerEncoder": (),
    "TorchRNNBase": (),
    "TorchRNN": ("TorchRNNBase",),
    "TorchLSTM": ("TorchRNNBase",),
    "TorchGRU": ("TorchRNNBase",),
    "squeeze_dims": (),
    "expand_to": (),
    "div_trunc": (),
    "gather": (),
    "scatter": (),
    "layer_norm": (),
    "group_norm": (),
    "rms_norm": (),
    "batch_norm": (),
    "unfold_nchw": (),
    "fold_nchw": (),
    "sequential": ("TorchSequential",),
    "ntuple": (),
    "conv_padding": ("ntuple",),
    "last_dim": (),
    "TorchLayerNorm": ("layer_norm",),
    "TorchGroupNorm": ("group_norm",),
    "TorchConv2d": (),
    "named_children": (),
    "layers_of": (),
    "parameters_of": (),
    "with_rngs_if_taken": (),
    "TorchSequential": (),
    "TorchModuleDict": ("TorchSequential",),
    "token_buffer": (),
}

# Training helpers (losses, optimizers, gradient clipping, learning-rate schedulers) live in
# porter/emitted_training.py, under the same contract; they are emitted from here like the rest.
from porter.emitted_training import *  # noqa: E402,F401,F403
from porter.emitted_training import DEPENDS as _TRAINING_DEPENDS  # noqa: E402

DEPENDS.update(_TRAINING_DEPENDS)
