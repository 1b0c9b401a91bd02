"""The semantics traps of ../shared/DESIGN.md (functions and tensor methods), each on an input where the
naive JAX mapping gives another answer.

Every case checks both halves: the converted code matches torch, and the naive mapping (written out
here) does not, so each test would fail if the converter emitted the naive form.
"""

import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from porter import convert_source

PRELUDE = "import torch\nimport torch.nn.functional as F\n\n\n"


def _tensor(values, dtype=np.float32):
    return np.asarray(values, dtype=dtype)


A34 = _tensor(np.arange(12).reshape(3, 4) ** 1.5)  # rows of distinct values
V4 = _tensor([4.0, 1.0, 3.0, 2.0])
IMG5 = _tensor(np.random.default_rng(0).normal(size=(1, 2, 5, 5)))
IMG8 = _tensor(np.random.default_rng(1).normal(size=(1, 1, 8, 8)))
LINE3 = _tensor([[[1.0, 2.0, 3.0]]])
SMALL = _tensor(np.random.default_rng(2).normal(size=(2, 4)) * 1e-3)

# name, torch body (returns), inputs, the naive JAX body (same names, jnp/jax/F-free)
TRAPS = [
    ("std is unbiased (ddof=1)", "return torch.std(x, dim=1)", {"x": A34}, "return jnp.std(x, axis=1)"),
    ("var is unbiased (ddof=1)", "return x.var()", {"x": A34}, "return jnp.var(x)"),
    ("median is the lower median", "return torch.median(x)", {"x": V4}, "return jnp.median(x)"),
    ("median with dim is (values, indices)", "return x.median(dim=1)", {"x": A34},
     "return jnp.median(x, axis=1)"),
    ("repeat tiles", "return x.repeat(2)", {"x": V4}, "return jnp.repeat(x, 2)"),
    ("repeat_interleave repeats elements", "return x.repeat_interleave(2)", {"x": V4}, "return jnp.tile(x, 2)"),
    ("F.pad pairs start at the last dim", "return F.pad(x, (1, 0, 0, 2))", {"x": IMG5},
     "return jnp.pad(x, ((0, 0), (0, 0), (1, 0), (0, 2)))"),
    ("squeeze(d) leaves a dim of size != 1", "return x.squeeze(0)", {"x": A34}, "return jnp.squeeze(x, axis=0)"),
    ("max with dim is (values, indices)", "return torch.max(x, 1)", {"x": A34}, "return jnp.max(x, axis=1)"),
    ("min with dim is (values, indices)", "v, i = x.min(0)\nreturn i", {"x": A34},
     "v, i = jnp.min(x, axis=0)[:2]\nreturn i"),
    ("sort is (values, indices)", "return torch.sort(x, descending=True)", {"x": V4}, "return jnp.sort(x)[::-1]"),
    ("topk works along dim", "return torch.topk(x, 2, dim=0)", {"x": A34}, "return jax.lax.top_k(x, 2)"),
    ("nearest interpolation floors (no half-pixel centres)", "return F.interpolate(x, size=5)", {"x": LINE3},
     "return jax.image.resize(x, (1, 1, 5), 'nearest')"),
    ("bilinear downsampling is not antialiased",
     "return F.interpolate(x, size=(3, 3), mode='bilinear', align_corners=False)", {"x": IMG8},
     "return jax.image.resize(x, (1, 1, 3, 3), 'bilinear')"),
    ("rounding_mode='trunc' rounds toward zero", "return torch.div(a, b, rounding_mode='trunc')",
     {"a": _tensor([-7, 7, -8], np.int64), "b": _tensor([2, 2, 3], np.int64)}, "return a // b"),
    ("torch.div of ints is true division", "return torch.div(a, b)",
     {"a": _tensor([-7, 7], np.int64), "b": _tensor([2, 2], np.int64)}, "return jnp.floor_divide(a, b)"),
    ("gelu is exact (erf), not tanh", "return F.gelu(x)", {"x": A34 / 4}, "return jax.nn.gelu(x)"),
    ("ceil_mode pooling keeps the last partial window", "return F.max_pool2d(x, 2, ceil_mode=True)",
     {"x": IMG5}, "return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), 'VALID')"),
    ("ceil_mode average divides by the window's part inside the input",
     "return F.avg_pool2d(x, 2, ceil_mode=True)", {"x": IMG5},
     "s = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 1, 2, 2), (1, 1, 2, 2), ((0, 0), (0, 0), (0, 1), (0, 1)))"
     "\nreturn s / 4"),
    ("meshgrid indexes 'ij'", "return torch.meshgrid(a, b)", {"a": V4, "b": V4[:3]},
     "return jnp.meshgrid(a, b)"),
    ("gather reads only the index's corner", "return torch.gather(x, 1, i)",
     {"x": A34, "i": _tensor([[3, 0]], np.int64)}, "return jnp.take_along_axis(x, i, axis=1)"),
    ("transpose swaps two dims", "return x.transpose(0, 1)", {"x": IMG5[0]}, "return x.transpose(0, 1)"),
    ("flatten's end_dim is inclusive", "return x.flatten(0, 1)", {"x": IMG5},
     "return jax.lax.collapse(x, 0, 1)"),
    ("F.layer_norm's eps is 1e-5", "return F.layer_norm(x, (4,))", {"x": SMALL},
     "m = x.mean(-1, keepdims=True)\nreturn (x - m) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-6)"),
    ("x[i] = v updates a copy", "y = x.clone()\ny[0] = 1.0\nreturn y", {"x": A34}, "y = x\ny[0] = 1.0\nreturn y"),
    ("x.add_(y) is a new value for x", "x = x.clone()\nx.add_(y)\nreturn x", {"x": V4, "y": V4},
     "x + y\nreturn x"),
]


def _function(body: str, params) -> str:
    return f"def f({', '.join(params)}):\n" + textwrap.indent(body, "    ") + "\n"


def _jax_args(inputs: dict) -> list:
    return [jnp.asarray(v.astype(np.int32) if v.dtype == np.int64 else v) for v in inputs.values()]


def _run_torch(body: str, inputs: dict):
    namespace: dict = {}
    exec(PRELUDE + _function(body, inputs), namespace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return namespace["f"](*[torch.from_numpy(v.copy()) for v in inputs.values()])


def _run_converted(body: str, inputs: dict):
    conversion = convert_source(PRELUDE + _function(body, inputs))
    errors = [d.format() for d in conversion.diagnostics if d.severity.value == "error"]
    assert not errors, errors
    namespace: dict = {}
    exec(conversion.code, namespace)
    return namespace["f"](*_jax_args(inputs)), conversion.code


def _run_naive(body: str, inputs: dict):
    namespace: dict = {"jax": jax, "jnp": jnp}
    exec(_function(body, inputs), namespace)
    return namespace["f"](*_jax_args(inputs))


def _same(actual, expected) -> bool:
    """Same structure, shapes, integer-ness and values (float32 tolerance)."""
    if isinstance(expected, (tuple, list)):
        return isinstance(actual, (tuple, list)) and len(actual) == len(expected) and all(
            _same(a, e) for a, e in zip(actual, expected))
    if isinstance(actual, (tuple, list)):
        return False
    expected = expected.numpy()
    actual = np.asarray(actual)
    if actual.shape != expected.shape or (actual.dtype.kind in "iub") != (expected.dtype.kind in "iub"):
        return False
    return bool(np.allclose(actual, expected, rtol=1e-5, atol=1e-6))


@pytest.mark.parametrize("name,torch_body,inputs,naive", TRAPS, ids=[t[0] for t in TRAPS])
def test_converted_matches_torch_where_the_naive_mapping_does_not(name, torch_body, inputs, naive):
    expected = _run_torch(torch_body, inputs)
    converted, code = _run_converted(torch_body, inputs)
    assert _same(converted, expected), f"{name}: converted differs from torch\n{code}"
    try:
        naive_result = _run_naive(naive, inputs)
    except Exception:  # noqa: BLE001 - the naive mapping raising is one way of being wrong
        return
    assert not _same(naive_result, expected), f"{name}: the naive mapping agrees with torch on this input"


@pytest.mark.parametrize("code,diagnostic", [
    ("torch.gather(x, 1, i)", "PT007"),  # out-of-range indices: torch raises, JAX does not check
    ("x.index_select(0, i)", "PT007"),
    ("torch.scatter(x, 0, i, y)", "PT007"),
    ("torch.nonzero(x)", "PT005"),  # a value-dependent size: not jittable
    ("torch.where(x > 0)", "PT005"),
    ("x[x > 0] if False else torch.masked_select(x, x > 0)", "PT007"),
    ("torch.unique(x)", "PT007"),
    ("torch.arange(3, dtype=torch.long)", "PT005"),  # int64 becomes int32
    ("x.long()", "PT007"),
    ("torch.randn(3)", "PT007"),  # outside a module: a fixed key
])
def test_traps_that_cannot_be_exact_are_reported(code, diagnostic):
    conversion = convert_source(PRELUDE + f"def f(x, i, y):\n    return {code}\n")
    assert diagnostic in [d.code for d in conversion.diagnostics], (code, conversion.diagnostics)
