"""Numerical verification of rules against torch, driven by the rules' data.

Each rule may carry `[[rule.verify]]` cases:

    [[rule.verify]]
    code = "torch.std(x, dim={dim}, keepdim={keepdim})"   # torch code: an expression, or a body with `return`
    x = "floats(rank=(1, 4))"                              # values to draw, in order: strategy expressions
    dim = "dim(x)"                                         #   (they may use the values drawn before them)
    keepdim = "booleans()"
    # options: rtol, atol (defaults 1e-5), compare = "values" | "shape" (random ops), check = "expression on
    # out" (random ops), jit = true (also run the converted function under jax.jit), expect = "PT004" (the
    # conversion must report this code instead: a domain boundary)

`{name}` in the code is replaced by the drawn value's literal (the form real code
passes); arrays are passed as the function's arguments. The case converts
`def f(<arrays and values>): return <code>` with porter.convert_source, runs the
torch original and the converted JAX code on the same inputs, and compares
structure, shape, dtype (torch int64 is JAX int32) and values.

Only the tests import this module (it needs torch and hypothesis).
"""

from __future__ import annotations

import functools
import textwrap
import warnings

import numpy as np
from hypothesis import strategies as st

from porter.rules.loader import Rule, VerifyCase

PRELUDE = "import math\nimport torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n\n"
RTOL, ATOL = 1e-5, 1e-5
# JAX compiles each operation once per shape and argument set (about 0.1 s on a CPU), so shapes come from a
# small pool (sizes 1 included: broadcasting and squeeze need them) and repeat across examples and rules.
SHAPES = {
    0: [()],
    1: [(3,), (4,), (1,)],
    2: [(2, 3), (3, 1), (4, 4)],
    3: [(2, 3, 4), (2, 1, 3)],
    4: [(2, 3, 4, 4), (1, 2, 3, 2)],
    5: [(2, 1, 2, 3, 2)],
}


# ------------------------------------------------------------------ strategies (the names a case may use)
def _shape_strategy(shape, rank, side):
    if shape is not None:
        return shape if isinstance(shape, st.SearchStrategy) else st.just(tuple(shape))
    low, high = (rank, rank) if isinstance(rank, int) else rank
    pool = [s for n in range(low, high + 1) for s in SHAPES.get(n, []) if all(side[0] <= d <= side[1] for d in s)]
    if pool:
        return st.sampled_from(pool)
    sides = st.sampled_from([d for d in (1, 2, 3, 4) if side[0] <= d <= side[1]])
    return st.integers(low, high).flatmap(lambda n: st.tuples(*[sides] * n))


def floats(shape=None, rank=(1, 3), side=(1, 4), low=-2.0, high=2.0, dtype="float32", distinct=False,
           away=0.0):
    """A float array. distinct: no two elements equal (no ties for argmax/sort); away: |x| >= away."""
    def make(args):
        shape, seed = args
        rng = np.random.default_rng(seed)
        size = int(np.prod(shape))
        if distinct:
            values = rng.permutation(np.linspace(low, high, max(size, 2)))[:size] if size else np.zeros(0)
        else:
            values = rng.uniform(low, high, size)
        if away:
            values = np.where(np.abs(values) < away, np.copysign(away, values) + values, values)
        return np.asarray(values.reshape(shape).astype(dtype))
    return st.tuples(_shape_strategy(shape, rank, side), st.integers(0, 2**32 - 1)).map(make)


def ints(shape=None, rank=(1, 3), side=(1, 4), low=-5, high=5, dtype="int64"):
    """An integer array with values in [low, high] (torch gets int64 by default, JAX int32)."""
    def make(args):
        shape, seed = args
        return np.asarray(np.random.default_rng(seed).integers(low, high + 1, shape).astype(dtype))
    return st.tuples(_shape_strategy(shape, rank, side), st.integers(0, 2**32 - 1)).map(make)


def bools(shape=None, rank=(1, 3), side=(1, 4)):
    def make(args):
        shape, seed = args
        return np.asarray(np.random.default_rng(seed).random(shape) < 0.5)
    return st.tuples(_shape_strategy(shape, rank, side), st.integers(0, 2**32 - 1)).map(make)


def shapes(rank=(1, 3), side=(1, 4)):
    return _shape_strategy(None, rank, side)


def broadcastable(x, **kwargs):
    """An array whose shape broadcasts against x's (trailing dims kept or set to 1, leading ones dropped):
    floats unless told (broadcastable(x, kind=ints, low=1, high=4))."""
    kind = kwargs.pop("kind", floats)

    def shape_of(args):
        keep, ones = args
        shape = list(x.shape[len(x.shape) - keep:])
        return tuple(1 if i in ones else s for i, s in enumerate(shape))
    shape = st.tuples(st.integers(0, x.ndim), st.sets(st.integers(0, max(x.ndim - 1, 0)))).map(shape_of)
    return kind(shape=shape, **kwargs)


def like(x, **kwargs):
    """An array of x's shape (floats unless told: like(x, kind=ints, low=0, high=3))."""
    kind = kwargs.pop("kind", floats)
    return kind(shape=tuple(x.shape), **kwargs)


def dim(x, none=False):
    """An axis of x (negative or not); with none=True, possibly None."""
    axes = st.integers(-x.ndim, x.ndim - 1) if x.ndim else st.sampled_from([0, -1])
    return st.one_of(st.none(), axes) if none else axes


def dims(x, min_size=1):
    """A tuple of distinct axes of x."""
    return st.lists(st.integers(0, max(x.ndim - 1, 0)), min_size=min_size, max_size=max(x.ndim, min_size),
                    unique=True).map(tuple)


def perm(x):
    return st.permutations(list(range(x.ndim))).map(tuple)


def index(x, axis, low=0, size=None, unique=False):
    """An int64 index array for gather/scatter along axis: shape <= x's, values in [0, x.shape[axis]).
    unique: no value repeats along axis (scatter writes then have one winner, as torch needs)."""
    axis = axis % x.ndim

    def make(args):
        shape, seed = args
        rng = np.random.default_rng(seed)
        if not unique:
            return rng.integers(low, x.shape[axis], shape).astype("int64")
        moved = (shape[axis],) + shape[:axis] + shape[axis + 1:]
        fibres = [rng.permutation(x.shape[axis])[:shape[axis]] for _ in range(int(np.prod(moved[1:])))]
        values = np.stack(fibres, axis=-1).reshape(moved) if fibres else np.zeros(moved)
        return np.moveaxis(values, 0, axis).astype("int64")
    limit = x.shape[axis] if unique else (size or 4)
    sides = [st.integers(1, s) if i != axis else st.integers(1, limit) for i, s in enumerate(x.shape)]
    return st.tuples(st.tuples(*sides), st.integers(0, 2**32 - 1)).map(make)


def indices(n, size=(1, 4), unique=False):
    """A 1-D int64 array of indices into a dim of size n."""
    elements = st.integers(0, n - 1)
    return st.lists(elements, min_size=size[0], max_size=size[1] if not unique else min(size[1], n),
                    unique=unique).map(lambda v: np.asarray(v, dtype="int64"))


class Code(str):
    """A drawn value written into the code as is (torch.float16, not 'torch.float16')."""


def raw(*options):
    """One of the given code snippets, inserted verbatim: dtype = "raw('torch.float16', 'torch.bool')"."""
    return st.sampled_from([Code(o) for o in options])


def ints_in(low, high):
    return st.integers(low, high)


def booleans():
    return st.booleans()


def sampled(*values):
    return st.sampled_from(values)


NAMESPACE = {
    "st": st, "np": np, "floats": floats, "ints": ints, "bools": bools, "shapes": shapes, "like": like,
    "broadcastable": broadcastable, "dim": dim, "dims": dims, "perm": perm, "index": index, "indices": indices,
    "integers": ints_in, "booleans": booleans, "sampled": sampled, "math": __import__("math"), "raw": raw,
}


def draw_values(case: VerifyCase, data) -> dict:
    values: dict = {}
    for name, spec in case.draws:
        value = eval(spec, {**NAMESPACE, **values}) if isinstance(spec, str) else spec  # noqa: S307 (rule data)
        if isinstance(value, st.SearchStrategy):
            value = data.draw(value, label=name)
        values[name] = value
    return values


# ------------------------------------------------------------------ source
def _literal(value) -> str:
    if isinstance(value, Code):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, tuple):
        return "(" + ", ".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, float) and not np.isfinite(value):
        return f"float('{value}')"
    return repr(value)


def torch_source(case: VerifyCase, values: dict) -> str:
    code = case.code
    for name, value in values.items():
        if not isinstance(value, np.ndarray):
            code = code.replace("{" + name + "}", _literal(value))
    if "return" not in code:
        code = f"return {code}"
    params = ", ".join(name for name, value in values.items() if not isinstance(value, Code))
    return PRELUDE + f"def f({params}):\n" + textwrap.indent(textwrap.dedent(code).strip() + "\n", "    ")


@functools.lru_cache(maxsize=4096)
def convert(source: str):
    from porter import convert_source
    return convert_source(source)


# ------------------------------------------------------------------ running and comparing
def run_case(rule: Rule, case: VerifyCase, data) -> None:
    import jax
    import jax.numpy as jnp
    import torch

    values = draw_values(case, data)
    source = torch_source(case, values)
    conversion = convert(source)
    codes = [d.code for d in conversion.diagnostics]
    if "expect" in case.options:
        assert case.options["expect"] in codes, f"{rule.id}: expected {case.options['expect']}\n{source}\n{codes}"
        return
    problems = [d.format() for d in conversion.diagnostics if d.severity.value == "error"]
    assert not problems, f"{rule.id}: conversion reported errors\n{source}\n{problems}"
    applied = {c.rule for c in conversion.changes}
    assert rule.id in applied, f"{rule.id} was not applied\n{source}\n{conversion.code}"

    torch_namespace: dict = {}
    exec(compile(source, f"<torch {rule.id}>", "exec"), torch_namespace)
    jax_namespace: dict = {}
    exec(compile(conversion.code, f"<converted {rule.id}>", "exec"), jax_namespace)

    passed = [v for v in values.values() if not isinstance(v, Code)]
    torch_args = [torch.from_numpy(v.copy()) if isinstance(v, np.ndarray) else v for v in passed]
    jax_args = [_jax_array(v, jnp) if isinstance(v, np.ndarray) else v for v in passed]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notes (torch.cholesky, F.upsample, ...)
        expected = torch_namespace["f"](*torch_args)
    context = f"{rule.id}\n--- torch\n{source}\n--- converted\n{conversion.code}\n--- values\n{values}"
    actual = jax_namespace["f"](*jax_args)
    compare(actual, expected, case, values, context)
    if case.options.get("jit"):
        arrays = [i for i, v in enumerate(passed) if isinstance(v, np.ndarray)]

        def traced(*array_args):
            args = list(jax_args)
            for i, a in zip(arrays, array_args):
                args[i] = a
            return jax_namespace["f"](*args)
        compare(jax.jit(traced)(*[jax_args[i] for i in arrays]), expected, case, values, context + "\n(under jit)")


def _jax_array(value: np.ndarray, jnp):
    if value.dtype == np.int64:
        value = value.astype(np.int32)  # JAX's default integer (no x64)
    return jnp.asarray(value)


JAX_DTYPE_OF_TORCH = {
    "torch.float32": "float32", "torch.float16": "float16", "torch.bfloat16": "bfloat16",
    "torch.int64": "int32", "torch.int32": "int32", "torch.int16": "int16", "torch.int8": "int8",
    "torch.uint8": "uint8", "torch.bool": "bool", "torch.complex64": "complex64",
}


def compare(actual, expected, case: VerifyCase, values: dict, context: str, path: str = "out") -> None:
    import torch

    if isinstance(expected, (tuple, list)) and not isinstance(expected, torch.Size):
        assert isinstance(actual, (tuple, list)), f"{path}: expected a sequence, got {type(actual)}\n{context}"
        assert len(actual) == len(expected), f"{path}: {len(actual)} items, torch has {len(expected)}\n{context}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            compare(a, e, case, values, context, f"{path}[{i}]")
        return
    if isinstance(expected, np.ndarray):  # x.numpy(): a numpy array on both sides, not a jax.Array
        assert type(actual) is np.ndarray, f"{path}: expected a numpy array, got {type(actual)}\n{context}"
        expected = torch.from_numpy(expected)
    if isinstance(expected, torch.Size):
        assert tuple(actual) == tuple(expected), f"{path}: {tuple(actual)} != {tuple(expected)}\n{context}"
        return
    if not isinstance(expected, torch.Tensor):
        assert not hasattr(actual, "shape") or getattr(actual, "ndim", 0) == 0, f"{path}: {actual!r}\n{context}"
        if isinstance(expected, float):
            np.testing.assert_allclose(float(actual), expected, rtol=case.options.get("rtol", RTOL),
                                       atol=case.options.get("atol", ATOL), err_msg=f"{path}\n{context}")
        else:
            assert isinstance(actual, type(expected)) and actual == expected, \
                f"{path}: {actual!r} ({type(actual).__name__}) != {expected!r}\n{context}"
        return
    actual_np = np.asarray(actual)
    expected_np = expected.detach().resolve_conj().numpy() if expected.dtype != torch.bfloat16 \
        else expected.detach().float().numpy()
    want_dtype = JAX_DTYPE_OF_TORCH.get(str(expected.dtype), str(expected.dtype))
    assert str(actual_np.dtype) == want_dtype, \
        f"{path}: dtype {actual_np.dtype}, torch {expected.dtype} (JAX {want_dtype})\n{context}"
    assert actual_np.shape == tuple(expected.shape), f"{path}: shape {actual_np.shape} != {tuple(expected.shape)}\n{context}"
    if case.options.get("compare", "values") == "shape":
        check = case.options.get("check")
        if check:
            assert eval(check, {"np": np, **values, "out": actual_np}), f"{path}: check {check!r} failed\n{context}"
        return
    if want_dtype in ("bool",) or want_dtype.startswith(("int", "uint")):
        np.testing.assert_array_equal(actual_np, expected_np, err_msg=f"{path}\n{context}")
    else:
        np.testing.assert_allclose(actual_np.astype(np.complex128 if "complex" in want_dtype else np.float64),
                                   expected_np, rtol=case.options.get("rtol", RTOL),
                                   atol=case.options.get("atol", ATOL), equal_nan=True, err_msg=f"{path}\n{context}")
