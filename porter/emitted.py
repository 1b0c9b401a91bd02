"""Helpers that porter copies, as source text, into converted files.

Each helper is a self-contained top-level definition that reproduces one piece
of torch behaviour with jax / flax.  Converted code must never import porter,
so the converter pastes the helpers it needs (plus those named in ``DEPENDS``)
into the file it writes.  A helper may use only the module-level imports below.
"""

import math

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


def max_pool_nchw(x, window_shape, strides=None, padding=None):
    """torch max pooling (``F.max_pool{1,2,3}d``, ceil_mode=False) on (N, C, *spatial) arrays.

    ``padding`` is None or one (low, high) pair per spatial dim, filled with -inf
    (the lowest integer for integer arrays) as in torch.
    """
    strides = window_shape if strides is None else strides
    padding = ((0, 0),) * len(window_shape) if padding is None else padding
    lead = (1,) * (x.ndim - len(window_shape))
    lowest = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
    return jax.lax.reduce_window(
        x,
        jnp.asarray(lowest, x.dtype),
        jax.lax.max,
        lead + tuple(window_shape),
        lead + tuple(strides),
        ((0, 0),) * len(lead) + tuple(padding),
    )


def avg_pool_nchw(x, window_shape, strides=None, padding=None, count_include_pad=True):
    """torch average pooling (``F.avg_pool{1,2,3}d``, ceil_mode=False) on (N, C, *spatial) arrays.

    With ``count_include_pad=False`` each window is divided by its number of real
    (unpadded) elements instead of the full window size, as in torch.
    """
    strides = window_shape if strides is None else strides
    padding = ((0, 0),) * len(window_shape) if padding is None else padding
    lead = (1,) * (x.ndim - len(window_shape))
    window = lead + tuple(window_shape)
    strides = lead + tuple(strides)
    padding = ((0, 0),) * len(lead) + tuple(padding)
    sums = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, padding)
    if count_include_pad:
        return sums / math.prod(window_shape)
    ones = jnp.ones(lead + x.shape[len(lead):], x.dtype)
    counts = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, padding)
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


def scaled_dot_product_attention(query, key, value, attn_mask=None, is_causal=False, scale=None):
    """torch's ``F.scaled_dot_product_attention`` without dropout, on (..., L, E) arrays.

    A bool ``attn_mask`` is True where attention is allowed; a float one is added
    to the scores.  A query that may attend to nothing gets zeros, as in torch.
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
    return jnp.matmul(weights, value)


def split_by_size(x, split_size, axis=0):
    """torch's ``x.split(split_size, dim)``: pieces of split_size along axis, the last one smaller if needed."""
    return tuple(jnp.split(x, list(range(split_size, x.shape[axis], split_size)), axis=axis))


DEPENDS: dict[str, tuple[str, ...]] = {
    "Buffer": (),
    "ChannelsFirstConv": (),
    "max_pool_nchw": (),
    "avg_pool_nchw": (),
    "adaptive_avg_pool_nchw": (),
    "scaled_dot_product_attention": (),
    "split_by_size": (),
}
