"""Losses: each torch loss (module and functional form), converted by porter and
run, agrees with torch across reductions and options, values and gradients.

Every case converts a small torch function with porter.convert_source and
executes the result: what is tested is what porter emits. Inputs are float32;
values and input gradients must agree to 1e-5 relative to the largest torch
magnitude (plus 1e-6 absolute).
"""

import functools
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from porter import convert_source

PRELUDE = textwrap.dedent("""\
    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    """)
RTOL, ATOL = 1e-5, 1e-6
REDUCTIONS = st.sampled_from(["mean", "sum", "none"])
seeds = st.integers(0, 2**32 - 1)


@functools.cache
def converted(body: str):
    """(torch function, converted function) for `def loss(...)` in torch source."""
    source = PRELUDE + textwrap.dedent(body)
    conversion = convert_source(source)
    errors = [d for d in conversion.diagnostics if d.severity.value == "error"]
    assert not errors, (errors, conversion.code)
    assert "import torch" not in conversion.code and "from torch" not in conversion.code, conversion.code
    torch_namespace, jax_namespace = {}, {}
    exec(compile(source, "<torch>", "exec"), torch_namespace)
    exec(compile(conversion.code, "<converted>", "exec"), jax_namespace)
    return torch_namespace["loss"], jax_namespace["loss"]


def check(body: str, inputs: dict, differentiate: tuple[str, ...] = ("input",), seed: int = 0):
    """Runs both versions of `loss(**inputs)`; compares the value and the gradients of sum(value * cotangent)."""
    torch_fn, jax_fn = converted(body)
    inputs = {k: (np.asarray(v) if isinstance(v, np.generic) else v) for k, v in inputs.items()}
    torch_inputs = {k: (torch.tensor(v, requires_grad=k in differentiate) if isinstance(v, np.ndarray) else v)
                    for k, v in inputs.items()}
    expected = torch_fn(**torch_inputs)
    cotangent = np.random.default_rng(seed).standard_normal(tuple(expected.shape)).astype(np.float32)
    (expected * torch.tensor(cotangent)).sum().backward()

    def objective(diff, rest):
        out = jax_fn(**diff, **rest)
        return jnp.sum(out * cotangent), out

    diff = {k: jnp.asarray(inputs[k]) for k in differentiate}
    rest = {k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in inputs.items() if k not in differentiate}
    grads, actual = jax.jit(jax.grad(objective, has_aux=True))(diff, rest)  # one compilation, not one per op
    _close(np.asarray(actual), expected.detach().numpy(), "value")
    for name in differentiate:
        _close(np.asarray(grads[name]), torch_inputs[name].grad.numpy(), f"d/d{name}")


def _close(actual, expected, what):
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = np.nanmax(np.abs(expected), initial=0.0) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=0, atol=RTOL * scale + ATOL, equal_nan=True, err_msg=what)


def _normal(rng, shape, scale=1.0):
    return np.asarray(rng.standard_normal(shape) * scale, np.float32)


# ----------------------------------------------------------------------------
# Cross entropy and NLL: class-index targets (with ignore_index, weights,
# label smoothing), class-probability targets, (N, C), (N, C, d1, ...), (C,)

@st.composite
def class_shapes(draw):
    unbatched = draw(st.booleans()) and draw(st.booleans())
    classes = draw(st.integers(2, 5))
    if unbatched:
        return (classes,), ()
    batch = draw(st.integers(1, 5))
    extra = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    return (batch, classes, *extra), (batch, *extra)


@given(shapes=class_shapes(), reduction=REDUCTIONS, smoothing=st.sampled_from([0.0, 0.1, 0.35]),
       ignore=st.sampled_from([None, -100, 1]), weighted=st.booleans(), module=st.booleans(), seed=seeds)
def test_cross_entropy_with_class_indices(shapes, reduction, smoothing, ignore, weighted, module, seed):
    input_shape, target_shape = shapes
    rng = np.random.default_rng(seed)
    classes = input_shape[0] if len(input_shape) == 1 else input_shape[1]
    target = rng.integers(0, classes, target_shape)
    if ignore is not None:
        target = np.where(rng.random(target_shape) < 0.3, ignore, target)
    options = f"reduction={reduction!r}, label_smoothing={smoothing}"
    options += f", ignore_index={ignore}" if ignore is not None else ""
    options += ", weight=weight" if weighted else ""
    call = f"nn.CrossEntropyLoss({options})(input, target)" if module else f"F.cross_entropy(input, target, {options})"
    inputs = {"input": _normal(rng, input_shape, 2.0), "target": target.astype(np.int64),
              "weight": rng.uniform(0.2, 2.0, classes).astype(np.float32)}
    check(f"def loss(input, target, weight):\n    return {call}\n", inputs, seed=seed)


@given(shapes=class_shapes(), reduction=REDUCTIONS, smoothing=st.sampled_from([0.0, 0.2]), weighted=st.booleans(),
       seed=seeds)
def test_cross_entropy_with_class_probabilities(shapes, reduction, smoothing, weighted, seed):
    input_shape, _ = shapes
    rng = np.random.default_rng(seed)
    axis = 0 if len(input_shape) == 1 else 1
    logits = _normal(rng, input_shape)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=axis, keepdims=True)
    options = f"reduction={reduction!r}, label_smoothing={smoothing}" + (", weight=weight" if weighted else "")
    inputs = {"input": _normal(rng, input_shape, 2.0), "target": probabilities.astype(np.float32),
              "weight": rng.uniform(0.2, 2.0, input_shape[axis]).astype(np.float32)}
    check(f"def loss(input, target, weight):\n    return F.cross_entropy(input, target, {options})\n", inputs,
          differentiate=("input", "target"), seed=seed)


@given(shapes=class_shapes(), reduction=REDUCTIONS, ignore=st.sampled_from([None, 0]), weighted=st.booleans(),
       module=st.booleans(), seed=seeds)
def test_nll_loss(shapes, reduction, ignore, weighted, module, seed):
    input_shape, target_shape = shapes
    rng = np.random.default_rng(seed)
    classes = input_shape[0] if len(input_shape) == 1 else input_shape[1]
    target = rng.integers(0, classes, target_shape)
    options = f"reduction={reduction!r}" + (f", ignore_index={ignore}" if ignore is not None else "")
    options += ", weight=weight" if weighted else ""
    call = f"nn.NLLLoss({options})(input, target)" if module else f"F.nll_loss(input, target, {options})"
    axis = 0 if len(input_shape) == 1 else 1
    inputs = {"input": _normal(rng, input_shape), "target": target.astype(np.int64),
              "weight": rng.uniform(0.2, 2.0, classes).astype(np.float32)}
    check(f"def loss(input, target, weight):\n    return {call}\n", inputs, seed=seed)
    del axis


def test_cross_entropy_all_targets_ignored_is_nan_like_torch():
    inputs = {"input": np.ones((2, 3), np.float32), "target": np.array([-100, -100])}
    check("def loss(input, target):\n    return F.cross_entropy(input, target)\n", inputs)


# ----------------------------------------------------------------------------
# Regression losses

shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)


@given(shape=shapes, reduction=REDUCTIONS, name=st.sampled_from(["mse_loss", "l1_loss"]), form=st.sampled_from(
    ["functional", "module", "weighted"]), broadcast=st.booleans(), seed=seeds)
def test_mse_and_l1(shape, reduction, name, form, broadcast, seed):
    rng = np.random.default_rng(seed)
    module = {"mse_loss": "nn.MSELoss", "l1_loss": "nn.L1Loss"}[name]
    if form == "module":
        call = f"{module}(reduction={reduction!r})(input, target)"
    elif form == "weighted":
        call = f"F.{name}(input, target, reduction={reduction!r}, weight=weight)"
        broadcast = False
    else:
        call = f"F.{name}(input, target, reduction={reduction!r})"
    target_shape = shape[1:] if broadcast and shape else shape
    inputs = {"input": _normal(rng, shape), "target": _normal(rng, target_shape),
              "weight": rng.uniform(0.1, 2.0, shape).astype(np.float32)}
    check(f"def loss(input, target, weight):\n    return {call}\n", inputs, differentiate=("input", "target"),
          seed=seed)


@given(shape=shapes, reduction=REDUCTIONS, beta=st.sampled_from([0.0, 0.5, 1.0, 2.0]), module=st.booleans(),
       seed=seeds)
def test_smooth_l1(shape, reduction, beta, module, seed):
    rng = np.random.default_rng(seed)
    options = f"reduction={reduction!r}, beta={beta}"
    call = f"nn.SmoothL1Loss({options})(input, target)" if module else f"F.smooth_l1_loss(input, target, {options})"
    inputs = {"input": _normal(rng, shape, 2.0), "target": _normal(rng, shape)}
    check(f"def loss(input, target):\n    return {call}\n", inputs, differentiate=("input", "target"), seed=seed)


@given(shape=shapes, reduction=REDUCTIONS, delta=st.sampled_from([0.3, 1.0, 2.5]),
       form=st.sampled_from(["functional", "module", "weighted"]), seed=seeds)
def test_huber(shape, reduction, delta, form, seed):
    rng = np.random.default_rng(seed)
    options = f"reduction={reduction!r}, delta={delta}"
    call = {"functional": f"F.huber_loss(input, target, {options})",
            "module": f"nn.HuberLoss({options})(input, target)",
            "weighted": f"F.huber_loss(input, target, {options}, weight=weight)"}[form]
    inputs = {"input": _normal(rng, shape, 2.0), "target": _normal(rng, shape),
              "weight": rng.uniform(0.1, 2.0, shape).astype(np.float32)}
    check(f"def loss(input, target, weight):\n    return {call}\n", inputs, differentiate=("input", "target"),
          seed=seed)


# ----------------------------------------------------------------------------
# Binary cross entropy, KL divergence, cosine embedding

@given(shape=shapes, reduction=REDUCTIONS, weighted=st.booleans(), module=st.booleans(), seed=seeds)
def test_binary_cross_entropy(shape, reduction, weighted, module, seed):
    rng = np.random.default_rng(seed)
    options = f"reduction={reduction!r}" + (", weight=weight" if weighted else "")
    call = f"nn.BCELoss({options})(input, target)" if module else f"F.binary_cross_entropy(input, target, {options})"
    inputs = {"input": rng.uniform(0.02, 0.98, shape).astype(np.float32),
              "target": rng.uniform(0, 1, shape).astype(np.float32),
              "weight": rng.uniform(0.1, 2.0, shape).astype(np.float32)}
    check(f"def loss(input, target, weight):\n    return {call}\n", inputs, seed=seed)


def test_binary_cross_entropy_clamps_log_at_minus_100():
    inputs = {"input": np.array([0.0, 1.0, 0.5], np.float32), "target": np.array([1.0, 0.0, 1.0], np.float32)}
    torch_fn, jax_fn = converted("def loss(input, target):\n    return F.binary_cross_entropy(input, target, "
                                 "reduction='none')\n")
    expected = torch_fn(torch.tensor(inputs["input"]), torch.tensor(inputs["target"])).numpy()
    np.testing.assert_allclose(np.asarray(jax_fn(**{k: jnp.asarray(v) for k, v in inputs.items()})), expected,
                               rtol=1e-6)
    assert expected[0] == 100.0


@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), reduction=REDUCTIONS,
       weighted=st.booleans(), pos_weighted=st.booleans(), module=st.booleans(), seed=seeds)
def test_binary_cross_entropy_with_logits(shape, reduction, weighted, pos_weighted, module, seed):
    rng = np.random.default_rng(seed)
    options = f"reduction={reduction!r}" + (", weight=weight" if weighted else "")
    options += ", pos_weight=pos_weight" if pos_weighted else ""
    call = (f"nn.BCEWithLogitsLoss({options})(input, target)" if module
            else f"F.binary_cross_entropy_with_logits(input, target, {options})")
    inputs = {"input": _normal(rng, shape, 3.0), "target": rng.uniform(0, 1, shape).astype(np.float32),
              "weight": rng.uniform(0.1, 2.0, shape).astype(np.float32),
              "pos_weight": rng.uniform(0.1, 3.0, shape[-1:]).astype(np.float32)}
    check(f"def loss(input, target, weight, pos_weight):\n    return {call}\n", inputs,
          differentiate=("input", "target"), seed=seed)


@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
       reduction=st.sampled_from(["mean", "sum", "none", "batchmean"]), log_target=st.booleans(),
       module=st.booleans(), zeros=st.booleans(), seed=seeds)
def test_kl_div(shape, reduction, log_target, module, zeros, seed):
    rng = np.random.default_rng(seed)
    options = f"reduction={reduction!r}, log_target={log_target}"
    call = f"nn.KLDivLoss({options})(input, target)" if module else f"F.kl_div(input, target, {options})"
    target = rng.uniform(0, 1, shape).astype(np.float32)
    if zeros and not log_target:
        target = np.where(rng.random(shape) < 0.3, 0.0, target).astype(np.float32)
    if log_target:
        target = np.log(target + 0.05).astype(np.float32)
    inputs = {"input": np.log(rng.uniform(0.05, 1, shape)).astype(np.float32), "target": target}
    check(f"def loss(input, target):\n    return {call}\n", inputs, seed=seed)


# dim >= 2: with D = 1 the cosine is exactly +-1 and its gradient exactly 0, so both frameworks return
# rounding noise of order eps / |x| (hypothesis found 3.5e-6 in JAX against torch's 0 at |x1| ~ 0.03)
@given(batch=st.one_of(st.none(), st.integers(1, 5)), dim=st.integers(2, 5), reduction=REDUCTIONS,
       margin=st.sampled_from([0.0, -0.2, 0.5]), module=st.booleans(), seed=seeds)
def test_cosine_embedding_loss(batch, dim, reduction, margin, module, seed):
    rng = np.random.default_rng(seed)
    options = f"margin={margin}, reduction={reduction!r}"
    call = (f"nn.CosineEmbeddingLoss({options})(input1, input2, target)" if module
            else f"F.cosine_embedding_loss(input1, input2, target, {options})")
    shape = (dim,) if batch is None else (batch, dim)
    target = rng.choice([-1, 1], () if batch is None else (batch,))
    inputs = {"input1": _normal(rng, shape), "input2": _normal(rng, shape), "target": np.asarray(target, np.int64)}
    check(f"def loss(input1, input2, target):\n    return {call}\n", inputs, differentiate=("input1", "input2"),
          seed=seed)


# ----------------------------------------------------------------------------
# The forms porter emits

@pytest.mark.parametrize("torch_source,expected", [
    ("criterion = nn.CrossEntropyLoss()", "criterion = cross_entropy_loss"),
    ("criterion = nn.CrossEntropyLoss(label_smoothing=0.1)", "criterion = partial(cross_entropy_loss, label_smoothing=0.1)"),
    ("loss = F.cross_entropy(out, y, ignore_index=0)", "loss = cross_entropy_loss(out, y, ignore_index=0)"),
    ("criterion = nn.MSELoss(reduction='sum')", "criterion = partial(mse_loss, reduction='sum')"),
    ("criterion = nn.BCEWithLogitsLoss(pos_weight=torch.ones(3))",
     "criterion = partial(binary_cross_entropy_with_logits, pos_weight=jnp.ones(3))"),
])
def test_emitted_forms(torch_source, expected):
    conversion = convert_source(PRELUDE + torch_source + "\n")
    assert expected in conversion.code.splitlines()
    assert "import torch" not in conversion.code


@pytest.mark.parametrize("torch_source,message", [
    ("criterion = nn.CrossEntropyLoss(size_average=False)", "size_average"),
    ("loss = F.mse_loss(a, b, reduce=False)", "reduce"),
])
def test_deprecated_arguments_are_reported(torch_source, message):
    conversion = convert_source(PRELUDE + torch_source + "\n")
    errors = [d for d in conversion.diagnostics if d.code == "PT004"]
    assert errors and message in errors[0].message
    assert torch_source in conversion.code
