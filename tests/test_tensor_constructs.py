"""Tensor-level constructs of real model code that porter once kept unchanged with no error (issue 12,
item 3): each converts, checked against torch on real inputs, or is reported at error level."""

import textwrap
from pathlib import Path

import numpy as np
import torch

from porter import convert_source
from porter.convert import tree
from porter.convert.diagnostics import Severity


def convert(source: str):
    return convert_source(textwrap.dedent(source), filename="m.py")


def errors(conversion) -> list[tuple[str, int]]:
    return [(d.code, d.line) for d in conversion.diagnostics if d.severity is Severity.ERROR]


def run_both(source: str, name: str, *args):
    """`name(*args)` of the torch source and of its conversion (arrays given as numpy)."""
    c = convert(source)
    torch_space, jax_space = {}, {}
    exec(compile(textwrap.dedent(source), "torch_m.py", "exec"), torch_space)
    exec(compile(c.code, "jax_m.py", "exec"), jax_space)
    expected = torch_space[name](*(torch.tensor(a) if isinstance(a, np.ndarray) else a for a in args))
    import jax.numpy as jnp
    got = jax_space[name](*(jnp.asarray(a) if isinstance(a, np.ndarray) else a for a in args))
    return c, expected, got


# ------------------------------------------------------------------ 6: a local named like a torch import
def test_a_parameter_named_like_a_torch_import_is_the_parameter():
    source = """
        import torch
        from torch import tensor


        def eps(tensor):
            return torch.finfo(tensor.dtype).eps


        def make():
            return tensor([1.0, 2.0])
        """
    c, expected, got = run_both(source, "eps", np.ones(2, np.float32))
    assert errors(c) == []
    assert "jnp.finfo(tensor.dtype)" in c.code and "jnp.array([1.0, 2.0])" in c.code
    assert "from torch" not in c.code  # the parameter is no use of torch.tensor
    assert got == expected


def test_a_parameter_shadows_in_the_body_only():
    c = convert("""
        import torch
        from torch import device


        class Mover:
            def cuda(self, device: int | device | None = None):  # the annotation names torch.device
                return torch.zeros(2).cuda(device)
        """)
    assert errors(c) == [("PT003", 7)]  # the annotation's torch.device, nothing in the body
    assert "return jnp.zeros(2)" in c.code and "from torch import device" in c.code


# ------------------------------------------------------------------ 7: PT031 crashes
CALLED_AT_ONCE = """
    import torch
    from torch import nn


    class Net(nn.Module):
        def forward(self, x):
            return nn.GELU()(x) + nn.ReLU(inplace=True)(x)  # (torch's relu changes x: last)
    """


def test_a_stateless_activation_built_and_called_at_once_is_the_function():
    c = convert(CALLED_AT_ONCE)  # crashed: the call's func is a call, not an attribute
    assert errors(c) == [] and "jax.nn.relu(x)" in c.code
    torch_space, jax_space = {}, {}
    exec(textwrap.dedent(CALLED_AT_ONCE), torch_space)
    exec(c.code, jax_space)
    from flax import nnx
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    expected = torch_space["Net"]()(torch.tensor(x)).numpy()
    np.testing.assert_allclose(np.asarray(jax_space["Net"]()(x)), expected, rtol=1e-6, atol=1e-6)


def test_a_layer_with_weights_built_in_forward_is_an_error():
    c = convert("""
        import torch
        from torch import nn


        class Net(nn.Module):
            def forward(self, x):
                return nn.Linear(4, 4)(x) + nn.MaxPool1d(2)(x).sum()
        """)
    assert errors(c) == [("PT006", 8)]
    assert "nn.Linear(4, 4)(x)" in c.code


def test_a_local_module_named_F_is_not_torch_functional(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "functional.py").write_text("import torch\n\n\ndef relu(x):\n    return torch.clamp(x, min=0)\n")
    (pkg / "model.py").write_text(textwrap.dedent("""\
        import torch
        from torch import nn
        from . import functional as F


        class Net(nn.Module):
            def forward(self, x):
                return F.relu(x) + nn.ReLU(inplace=True)(x)
        """))
    tasks = tree.plan(pkg).tasks
    results = {r.relative: r for r in tree.convert_tree(tasks, root_name="pkg", jobs=1)}
    model = results["model.py"]
    assert model.status != "failed" and [d.code for d in model.diagnostics] == []
    code = model.code.decode()
    assert "F.relu(x) + jax.nn.relu(x)" in code and "from . import functional as F" in code


# ------------------------------------------------------------------ 4: x.device
DEVICE_MODEL = """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("inv_freq", torch.arange(1, 5).float())
            self.device_name = "cpu"

        def forward(self, x):
            n, device = x.shape[1], x.device
            t = torch.arange(n, device=device).float()
            inv = self.inv_freq.to(device=x.device, dtype=torch.float)
            return x * t + inv.sum() + torch.ones(1, device=x.device)
    """


def test_a_device_that_only_places_arrays_is_dropped_with_its_binding():
    import jax
    from flax import nnx
    c = convert(DEVICE_MODEL)
    assert errors(c) == []
    assert "n = x.shape[1]\n" in c.code and "device" not in c.code.replace("device_name", "")
    torch_space, jax_space = {}, {}
    exec(textwrap.dedent(DEVICE_MODEL), torch_space)
    exec(c.code, jax_space)
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    expected = torch_space["Net"]()(torch.tensor(x)).numpy()
    model = jax_space["Net"]()  # builds nothing random: no rngs
    np.testing.assert_allclose(np.asarray(jax.jit(lambda a: model(a))(x)), expected, rtol=1e-6)


STARRED_DEVICE_MODEL = """
    import torch
    from torch import nn


    class Net(nn.Module):
        def forward(self, data):
            b, *axis, _, device, dtype = *data.shape, data.device, data.dtype
            *rest, dev = *data.shape, data.device
            pos = torch.linspace(-1.0, 1.0, steps=axis[0], device=device, dtype=dtype)
            return data * pos[None, :, None] + torch.ones(b, 1, 1, device=dev) * len(rest)
    """


def test_a_device_unpacked_beside_a_starred_shape_is_dropped_with_its_binding():
    # issue 12 (perceiver-pytorch Perceiver, egnn-pytorch EGNN): `b, *axis, _, device = *x.shape, x.device`
    # kept its `.device` read, and the model failed under jit
    import jax
    from flax import nnx
    c = convert(STARRED_DEVICE_MODEL)
    assert errors(c) == []
    assert "b, *axis, _, dtype = *data.shape, data.dtype\n" in c.code and "*rest, = *data.shape,\n" in c.code
    assert "device" not in c.code and "dev " not in c.code
    torch_space, jax_space = {}, {}
    exec(textwrap.dedent(STARRED_DEVICE_MODEL), torch_space)
    exec(c.code, jax_space)
    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 4, 3)
    expected = torch_space["Net"]()(torch.tensor(x)).numpy()
    model = jax_space["Net"]()
    np.testing.assert_allclose(np.asarray(jax.jit(lambda a: model(a))(x)), expected, rtol=1e-6)


def test_other_reads_of_a_device_in_traced_code_are_errors():
    c = convert("""
        import torch
        from torch import nn


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.device = torch.device("cpu")  # the module's own attribute: no array's

            def forward(self, x):
                d = x.device
                if d.type == "cuda":
                    x = x * 2
                print(self.device, self.config.device)  # settings, no arrays
                dev, k = x.device, 2
                return helper(x, device=dev) * k


        def helper(x, device):
            return x.to(device)
        """)
    # line 15: `d.type` of the device kept on line 12 (a jax Device has no .type): the residual check's
    assert errors(c) == [("PT004", 12), ("PT040", 15), ("PT004", 16)]
    assert "d = x.device" in c.code and "dev, k = x.device, 2" in c.code


# ------------------------------------------------------------------ 5: masks and item assignment
MASK_MODEL = """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("buf", torch.zeros(3, 4))
            self.cache = torch.zeros(3, 4)  # no buffer: a plain tensor attribute

        def forward(self, x, v):
            self.cache[:, :2] = x[:, :2]
            y = x * 2
            y[y < 0] = 0.5
            x[:, 0] = 1
            logits = x + y
            logits[logits < v[:, [-1]]] = -float('Inf')
            self.buf[:, 0] = 3
            self.buf[self.buf < 1] = -1.0
            return y, x, logits, self.buf + 0, self.cache * 1
    """


def test_masks_and_index_assignments_on_arguments_and_buffers_match_torch_under_jit():
    import jax
    from flax import nnx
    c = convert(MASK_MODEL)
    assert errors(c) == []
    assert "y = jnp.where(y < 0, jnp.asarray(0.5, y.dtype), y)" in c.code
    assert "x = x.at[:, 0].set(1)" in c.code and "self.cache = self.cache.at[:, :2].set(x[:, :2])" in c.code
    # (the comparison reads the buffer's array, then the mask rewrite reads it again: [...][...] is the same array)
    assert "self.buf[...] = jnp.where(self.buf[...][...] < 1, jnp.asarray(-1.0, self.buf.dtype), self.buf[...])" \
        in c.code
    torch_space, jax_space = {}, {}
    exec(textwrap.dedent(MASK_MODEL), torch_space)
    exec(c.code, jax_space)
    rng = np.random.default_rng(0)
    x, v = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    expected = torch_space["Net"]()(torch.tensor(x), torch.tensor(v))
    model = jax_space["Net"]()
    got = nnx.jit(lambda m, a, b: m(a, b))(model, x, v)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(np.asarray(g), e.numpy(), rtol=1e-6)


def test_item_assignment_where_only_the_index_shows_an_array():
    c = convert("""
        import torch
        from torch import nn


        class Net(nn.Module):
            def forward(self, x, table, k):
                y = x + 1
                y[..., 0] = 0      # an index only an array takes
                table[k] = 1       # a dict or a list, as far as anyone can tell: left alone
                x[x.isnan()] = k   # a mask, the value maybe not one number: .at[], eager only
                return y, table, x


        def preprocess(image):
            image[:, :, 0] = 0     # a plain function's argument may be a numpy array: left alone
            return image
        """)
    assert "y = y.at[..., 0].set(0)" in c.code and "table[k] = 1" in c.code
    assert "x = x.at[jnp.isnan(x)].set(k)" in c.code and "image[:, :, 0] = 0" in c.code
    # x is the caller's tensor; the mask: eager only; image: the residual check cannot tell a numpy array
    # (which takes item assignment) from a tensor there, and says so
    assert [(d.code, d.line) for d in c.diagnostics] == [("PT005", 11), ("PT005", 11), ("PT040", 16)]
    assert "jax.jit" in c.diagnostics[1].message


# ------------------------------------------------------------------ a device bound next to a starred shape
DEVICE_AFTER_STAR_MODEL = """
    import torch
    from torch import nn


    class Net(nn.Module):
        def forward(self, x):
            b, c, w, k, device = *x.shape, 2, x.device
            (last, device2) = *x.shape[-1:], x.device
            mask = torch.ones((1, c, w), device=device)
            return x * mask * k + torch.arange(last, device=device2) + b
"""


def test_a_device_bound_after_a_starred_shape_is_dropped_with_its_binding():
    # issue 12: `b, c, h, w, device = *x.shape, x.device` (halonet-pytorch) kept its x.device (PT004, jit fails)
    import jax
    from flax import nnx
    c = convert(DEVICE_AFTER_STAR_MODEL)
    assert errors(c) == [], c.diagnostics
    assert "b, c, w, k = *x.shape, 2\n" in c.code and "(last,) = *x.shape[-1:]," in c.code
    torch_space, jax_space = {}, {}
    exec(textwrap.dedent(DEVICE_AFTER_STAR_MODEL), torch_space)
    exec(c.code, jax_space)
    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    expected = torch_space["Net"]()(torch.tensor(x)).numpy()
    model = jax_space["Net"]()
    np.testing.assert_allclose(np.asarray(jax.jit(lambda a: model(a))(x)), expected, rtol=1e-6)


# ------------------------------------------------------------------ keyword arguments from a helper's dict
KEYWORD_HELPER_SOURCE = """
    import torch


    def like(t):
        return {'device': t.device, 'dtype': t.dtype}


    def pad_right(x, n):
        pad = torch.zeros((x.shape[0], n), **like(x))
        return torch.cat((x, pad), dim=1) + torch.ones(1, **like(x))
"""


def test_keyword_arguments_handed_by_a_helper_returning_a_dict_are_written_out():
    # issue 12: torch.zeros(shape, **to(x)) (halonet-pytorch) could not be matched to torch's signature
    import jax
    c = convert(KEYWORD_HELPER_SOURCE)
    assert errors(c) == [], c.diagnostics
    assert "jnp.zeros((x.shape[0], n), dtype=x.dtype)" in c.code
    torch_space, jax_space = {}, {}
    exec(textwrap.dedent(KEYWORD_HELPER_SOURCE), torch_space)
    exec(c.code, jax_space)
    x = np.linspace(-1, 1, 6, dtype=np.float16).reshape(2, 3)
    expected = torch_space["pad_right"](torch.tensor(x), 2).numpy()
    got = jax.jit(jax_space["pad_right"], static_argnums=1)(x, 2)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_a_keyword_helper_not_written_out_exactly_stays_an_error():
    c = convert("""
        import torch


        def like(t, extra=None):
            return {'dtype': t.dtype}


        def opts(t):
            return {'dtype': t.dtype}


        def f(x, y):
            a = torch.zeros(2, **like(x))  # a default: not a plain helper
            b = torch.zeros(2, **opts(x + y))  # an expression would be evaluated where the entry is
            c = torch.zeros(2, dtype=x.dtype, **opts(x))  # dtype twice: torch's TypeError
            return a, b, c
    """)
    assert errors(c) == [("PT004", 14), ("PT004", 15), ("PT004", 16)], c.diagnostics


# ------------------------------------------------------------------ expand(*sizes) with a -1 in a list
EXPAND_SIZES_SOURCE = """
    import torch


    def repeat_along(t, dim, k):
        t = t.unsqueeze(dim=dim)
        sizes = [-1] * len(t.shape)
        sizes[dim] = k
        return t.expand(*sizes) + t.expand(*t.shape)
"""


def test_expand_of_star_sizes_holding_minus_one_keeps_those_dims():
    # issue 12: t.expand(*sizes) with sizes = [-1, ..., k] (halonet-pytorch) became jnp.broadcast_to(t, sizes),
    # which fails on the -1 with no diagnostic
    import jax
    c = convert(EXPAND_SIZES_SOURCE)
    assert errors(c) == [], c.diagnostics
    assert "expand_to(t, sizes)" in c.code and "jnp.broadcast_to(t, t.shape)" in c.code
    torch_space, jax_space = {}, {}
    exec(textwrap.dedent(EXPAND_SIZES_SOURCE), torch_space)
    exec(c.code, jax_space)
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    for dim in (0, 1, 2, -1):
        expected = torch_space["repeat_along"](torch.tensor(x), dim, 4).numpy()
        got = jax.jit(jax_space["repeat_along"], static_argnums=(1, 2))(x, dim, 4)
        np.testing.assert_array_equal(np.asarray(got), expected)
