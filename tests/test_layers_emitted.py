"""The emitted helpers behind the layer rules, against torch, pasted standalone
(as the converter pastes them; see tests/test_emitted.py).

Each rule's own property test (tests/test_layers.py) already runs these through
the converter; here the helpers meet argument ranges a layer case does not
draw (interpolation sizes, padding modes, uneven adaptive windows, recurrent
states) and the traps that make them necessary.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from test_emitted import standalone

EXAMPLES = settings(max_examples=max(5, settings().max_examples // 2), deadline=None)


def close(actual, expected, rtol=1e-5, atol=1e-6):
    expected = expected.detach().numpy()
    actual = np.asarray(actual)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def j(t):
    return jnp.asarray(t.detach().numpy())


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- interpolate


@st.composite
def interpolate_cases(draw):
    mode = draw(st.sampled_from(["nearest", "nearest-exact", "linear", "bilinear", "trilinear"]))
    spatial = {"linear": 1, "bilinear": 2, "trilinear": 3}.get(mode) or draw(st.integers(1, 3))
    in_sizes = tuple(draw(st.integers(1, 6)) for _ in range(spatial))
    align = draw(st.booleans()) if mode not in ("nearest", "nearest-exact") else None
    if draw(st.booleans()):
        size = tuple(draw(st.integers(1, 9)) for _ in range(spatial))
        return mode, in_sizes, {"size": size if spatial > 1 or draw(st.booleans()) else size[0]}, align
    factor = draw(st.sampled_from([0.5, 1.0, 1.5, 2, 2.5, 3, 1 / 3]))
    assume(all(int(n * factor) >= 1 for n in in_sizes))  # torch refuses an empty output
    return mode, in_sizes, {"scale_factor": factor}, align


@EXAMPLES
@given(interpolate_cases(), st.integers(0, 2**16))
def test_interpolate_matches_torch(case, seed):
    mode, in_sizes, size_or_scale, align = case
    x = randn(2, 3, *in_sizes, seed=seed)
    expected = F.interpolate(x, mode=mode, align_corners=align, **size_or_scale)
    interpolate_nchw = standalone("interpolate_nchw")
    close(interpolate_nchw(j(x), mode=mode, align_corners=align, **size_or_scale), expected)


def test_interpolate_is_not_jax_image_resize():
    """The trap: jax.image.resize's nearest rounds half-pixel centres, torch floors; downsampling antialiases."""
    import jax

    x = randn(1, 1, 5, 5)
    torch_nearest = F.interpolate(x, size=(3, 3), mode="nearest")
    naive = jax.image.resize(j(x), (1, 1, 3, 3), method="nearest")
    assert not np.allclose(np.asarray(naive), torch_nearest.numpy())
    close(standalone("interpolate_nchw")(j(x), size=(3, 3)), torch_nearest)
    torch_bilinear = F.interpolate(x, size=(2, 2), mode="bilinear", align_corners=False)
    naive = jax.image.resize(j(x), (1, 1, 2, 2), method="linear")  # antialias=True by default
    assert not np.allclose(np.asarray(naive), torch_bilinear.numpy(), atol=1e-3)
    close(standalone("interpolate_nchw")(j(x), size=(2, 2), mode="bilinear"), torch_bilinear)


def test_interpolate_rejects_unsupported_modes():
    with pytest.raises(ValueError, match="bicubic"):
        standalone("interpolate_nchw")(jnp.ones((1, 1, 2, 2)), scale_factor=2, mode="bicubic")


# ---------------------------------------------------------------- padding


@EXAMPLES
@given(st.sampled_from(["constant", "reflect", "replicate", "circular"]), st.integers(1, 3), st.data())
def test_pad_matches_torch(mode, dims, data):
    shape = (2, 2) + tuple(data.draw(st.integers(3, 5)) for _ in range(dims))
    low = -1 if mode == "constant" else 0
    high = 2
    padding = tuple(data.draw(st.integers(low, high)) for _ in range(2 * dims))
    x = randn(*shape, seed=dims)
    value = 1.5 if mode == "constant" else None
    expected = F.pad(x, padding, mode=mode, value=value) if mode == "constant" else F.pad(x, padding, mode=mode)
    pad_nchw = standalone("pad_nchw")
    kwargs = {"value": value} if mode == "constant" else {}
    close(pad_nchw(j(x), padding, mode=mode, **kwargs), expected)


def test_pad_pairs_start_from_the_last_dim():
    """The trap: torch's padding tuple starts at the last dim; jnp.pad's pad_width at the first."""
    x = randn(1, 1, 2, 3)
    expected = F.pad(x, (1, 0, 0, 2))
    naive = jnp.pad(j(x), ((0, 0), (0, 0), (1, 0), (0, 2)))
    assert naive.shape != tuple(expected.shape)
    close(standalone("pad_nchw")(j(x), (1, 0, 0, 2)), expected)


# ---------------------------------------------------------------- pixel shuffle, unflatten, adaptive max


@EXAMPLES
@given(st.integers(1, 3), st.integers(1, 2), st.sampled_from([(), (2,), (1, 2)]))
def test_pixel_shuffle_round_trip_matches_torch(r, c, lead):
    x = randn(*lead, c * r * r, 2, 3)
    close(standalone("pixel_shuffle")(j(x), r), F.pixel_shuffle(x, r))
    y = randn(*lead, c, 2 * r, 3 * r)
    close(standalone("pixel_unshuffle")(j(y), r), F.pixel_unshuffle(y, r))


def test_unflatten_matches_torch():
    x = randn(2, 12, 3)
    unflatten = standalone("unflatten")
    for dim, sizes in [(1, (3, 4)), (-2, (2, -1)), (0, (1, 2)), (-1, (3,))]:
        close(unflatten(j(x), dim, sizes), x.unflatten(dim, sizes))


@EXAMPLES
@given(st.lists(st.tuples(st.integers(1, 7), st.one_of(st.none(), st.integers(1, 7))), min_size=1, max_size=3),
       st.integers(0, 2**16))
def test_adaptive_max_pool_matches_torch_with_uneven_windows(dims, seed):
    sizes = tuple(n for n, _ in dims)
    output = tuple(out if out is None else min(out, n) for n, out in dims)
    if len(sizes) == 1:  # torch's 1-d form takes an int only
        output = (output[0] or sizes[0],)
    x = randn(2, 2, *sizes, seed=seed)
    pool = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}[len(sizes)]
    close(standalone("adaptive_max_pool_nchw")(j(x), output), pool(x, output))


# ---------------------------------------------------------------- layers with their own parameters


def test_conv_transpose_padding_is_not_torchs_padding():
    """The trap: flax's padding for ConvTranspose is on the dilated input, d*(k-1)-p per side (+output_padding)."""
    torch.manual_seed(0)
    conv = torch.nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1)
    x = randn(1, 2, 4, 5)
    expected = conv(x)
    ChannelsFirstConvTranspose = standalone("ChannelsFirstConvTranspose")

    def layer(padding):
        m = ChannelsFirstConvTranspose(2, 3, (3, 3), (2, 2), padding=padding, transpose_kernel=True,
                                       rngs=nnx.Rngs(0))
        m.kernel[...] = jnp.asarray(conv.weight.detach().numpy().transpose(2, 3, 1, 0))
        m.bias[...] = j(conv.bias)
        return m

    naive = layer(((1, 1), (1, 1)))(j(x))
    assert naive.shape != tuple(expected.shape)
    close(layer(((1, 2), (1, 2)))(j(x)), expected)


def test_group_norm_needs_num_groups_epsilon_and_channels_first():
    """The traps: nnx.GroupNorm defaults num_groups=32, epsilon=1e-6 and groups the last axis."""
    x = randn(2, 4, 3, 3) * 0.01  # small values: epsilon matters
    expected = F.group_norm(x, 2, eps=1e-5)
    ChannelsFirstGroupNorm = standalone("ChannelsFirstGroupNorm")
    good = ChannelsFirstGroupNorm(4, num_groups=2, epsilon=1e-5, use_fast_variance=False, rngs=nnx.Rngs(0))
    close(good(j(x)), expected)
    wrong_eps = ChannelsFirstGroupNorm(4, num_groups=2, rngs=nnx.Rngs(0))
    assert not np.allclose(np.asarray(wrong_eps(j(x))), expected.numpy(), rtol=1e-5, atol=1e-6)
    last_axis = nnx.GroupNorm(3, num_groups=3, epsilon=1e-5, rngs=nnx.Rngs(0))  # channels-last: wrong axis
    assert not np.allclose(np.asarray(last_axis(j(x))), expected.numpy(), atol=1e-3)


def test_fast_variance_trap():
    """flax's default use_fast_variance (E[x^2] - E[x]^2) loses precision when the mean is large."""
    x = randn(4, 64) + 30.0
    expected = F.layer_norm(x, (64,))
    fast = nnx.LayerNorm(64, epsilon=1e-5, rngs=nnx.Rngs(0))(j(x))
    exact = nnx.LayerNorm(64, epsilon=1e-5, use_fast_variance=False, rngs=nnx.Rngs(0))(j(x))
    def rel(y):  # norm-wise, as porter check measures
        return np.abs(np.asarray(y) - expected.numpy()).max() / np.abs(expected.numpy()).max()

    assert rel(fast) > 1e-5
    assert rel(exact) <= 1e-5


def _load_rnn(layer, torch_rnn):
    for name, tensor in torch_rnn.state_dict().items():
        getattr(layer, name)[...] = j(tensor)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_rnn_matches_torch_with_states_and_gradients(kind):
    torch.manual_seed(0)
    cls = getattr(torch.nn, kind)
    torch_rnn = cls(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    layer = standalone(f"Torch{kind}")(3, 4, num_layers=2, bidirectional=True, batch_first=True, rngs=nnx.Rngs(0))
    _load_rnn(layer, torch_rnn)
    x = randn(2, 5, 3, seed=1)
    h0 = randn(4, 2, 4, seed=2)
    hx = (h0, randn(4, 2, 4, seed=3)) if kind == "LSTM" else h0
    expected = torch_rnn(x, hx)
    jhx = tuple(j(t) for t in hx) if kind == "LSTM" else j(hx)
    actual = layer(j(x), jhx)
    close(actual[0], expected[0])
    if kind == "LSTM":
        close(actual[1][0], expected[1][0])
        close(actual[1][1], expected[1][1])
    else:
        close(actual[1], expected[1])


def test_gru_is_not_nnx_gru_cell():
    """The trap: torch's GRU has a hidden bias b_hn inside the reset product r * (W_hn h + b_hn);
    nnx.GRUCell's hidden projection has no bias, so torch's weights do not fit it."""
    torch.manual_seed(0)
    gru = torch.nn.GRU(2, 3)
    cell = nnx.GRUCell(2, 3, rngs=nnx.Rngs(0))
    w_ih, w_hh = gru.weight_ih_l0.detach().numpy(), gru.weight_hh_l0.detach().numpy()
    b_ih, b_hh = gru.bias_ih_l0.detach().numpy(), gru.bias_hh_l0.detach().numpy()
    cell.dense_i.kernel[...] = jnp.asarray(w_ih.T)
    cell.dense_i.bias[...] = jnp.asarray(b_ih + np.concatenate([b_hh[:6], np.zeros(3, np.float32)]))  # b_hn: nowhere
    cell.dense_h.kernel[...] = jnp.asarray(w_hh.T)
    x = randn(1, 1, 2, seed=4)
    h0 = randn(1, 1, 3, seed=5)
    expected = gru(x, h0)[1][0]
    naive, _ = cell(j(h0[0]), j(x[0]))
    assert not np.allclose(np.asarray(naive), expected.detach().numpy(), atol=1e-4)
    ours = standalone("TorchGRU")(2, 3, rngs=nnx.Rngs(0))
    _load_rnn(ours, gru)
    close(ours(j(x), j(h0))[1][0], expected)


def test_multihead_attention_mask_polarity_and_packed_projection():
    """The traps: torch's boolean masks are True where attention is *blocked* (flax's: where it is
    allowed), and torch packs q/k/v into one (3E, E) in_proj_weight."""
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(4, 2, batch_first=True)
    q = randn(2, 3, 4, seed=6)
    mask = torch.tensor([[False, True, True], [False, False, True], [False, False, False]])  # causal
    expected = mha(q, q, q, attn_mask=mask)
    ours = standalone("TorchMultiheadAttention")(4, 2, batch_first=True, rngs=nnx.Rngs(0))
    ours.in_proj_weight[...] = j(mha.in_proj_weight)
    ours.in_proj_bias[...] = j(mha.in_proj_bias)
    ours.out_proj.kernel[...] = j(mha.out_proj.weight).T
    ours.out_proj.bias[...] = j(mha.out_proj.bias)
    out, weights = ours(j(q), j(q), j(q), attn_mask=j(mask))
    close(out, expected[0])
    close(weights, expected[1])
    flipped, _ = ours(j(q), j(q), j(q), attn_mask=~j(mask))  # flax's polarity: attends to the future
    assert not np.allclose(np.asarray(flipped), expected[0].detach().numpy(), atol=1e-3)
    # nnx.MultiHeadAttention takes the same weights as q/k/v kernels W[i].T.reshape(E, H, D)
    # and an out kernel W_o.T.reshape(H, D, E), with the mask inverted
    flax_mha = nnx.MultiHeadAttention(2, 4, decode=False, rngs=nnx.Rngs(0))
    w = mha.in_proj_weight.detach().numpy()
    b = mha.in_proj_bias.detach().numpy()
    for i, name in enumerate(["query", "key", "value"]):
        getattr(flax_mha, name).kernel[...] = jnp.asarray(w[4 * i:4 * i + 4].T.reshape(4, 2, 2))
        getattr(flax_mha, name).bias[...] = jnp.asarray(b[4 * i:4 * i + 4].reshape(2, 2))
    flax_mha.out.kernel[...] = jnp.asarray(mha.out_proj.weight.detach().numpy().T.reshape(2, 2, 4))
    flax_mha.out.bias[...] = j(mha.out_proj.bias)
    close(flax_mha(j(q), mask=~j(mask)), expected[0])


def test_adaptive_max_pool_gradient_under_jit():
    """Fuzzing bug 1 (regression): jnp.max's gradient marks the inputs equal to the result; under jit
    XLA computed the pooled input in two fusions with different rounding, the comparison failed and the
    gradient of `pool(x + norm(x))` was wrong (off by 100% in 191 of 300 draws). argmax + gather fixes it."""
    import jax

    pool = standalone("adaptive_max_pool_nchw")
    for seed in range(20):
        x = randn(2, 2, 3, seed=seed)
        c = randn(2, 2, 2, seed=seed + 100)
        xt = x.clone().requires_grad_(True)
        norm = torch.nn.functional.layer_norm(xt, (3,))
        (F.adaptive_max_pool1d(xt + 0.7 * norm, 2) * c).sum().backward()

        def loss(a):
            mean = a.mean(-1, keepdims=True)
            normed = (a - mean) / jnp.sqrt(((a - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
            return (pool(a + 0.7 * normed, (2,)) * j(c)).sum()

        close(jax.jit(jax.grad(loss))(j(x)), xt.grad, rtol=1e-4, atol=1e-5)


def test_adaptive_max_pool_ties_pick_the_first_maximum_like_torch():
    """torch's saved index is the first maximum of a window: the whole gradient goes there (jnp.max
    would split it between tied elements)."""
    import jax

    x = torch.tensor([[[0.0, 0.0, 1.0, 1.0, -1.0]]], requires_grad=True)
    F.adaptive_max_pool1d(x, 2).sum().backward()
    grad = jax.grad(lambda a: standalone("adaptive_max_pool_nchw")(a, (2,)).sum())(j(x))
    close(grad, x.grad)
