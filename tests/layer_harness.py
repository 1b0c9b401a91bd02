"""Runs a layer rule's `[[rule.verify]]` case the way a user meets the rule:
inside an nn.Module, converted by porter, with the torch weights loaded.

A layer case's `code` is a torch expression that builds a layer and calls it,
`nn.Conv2d({cin}, {cout}, {k})(x)` (or indexes a container first,
`nn.ModuleList([...])[0](x)`). Values drawn for `{name}` become literals in the
source; drawn arrays are the forward's arguments. The case becomes

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Conv2d(3, 4, 2)

        def forward(self, x):
            return self.layer(x)

which porter converts; the torch layer's parameters and float buffers are
drawn at random (so a wrong layout cannot hide behind ones and zeros), its
state_dict is loaded into the converted layer with
porter.load_torch_state_dict (strict), and porter.check_equivalence compares
outputs and the gradients w.r.t. every float input and parameter, in eval
mode, at the default float32 tolerances (outputs 1e-5, gradients 1e-4).
"""

from __future__ import annotations

import ast
import textwrap

import numpy as np

from porter import convert_source
from porter.check.equivalence import check_equivalence
from porter.check.modelspec import takes_keyword
from porter.weights.loader import load_torch_state_dict
from porter.rules.verify import _literal, draw_values

PRELUDE = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"
EINOPS = "from einops.layers.torch import Rearrange, Reduce\n"


def substitute(code: str, values: dict) -> str:
    for name, value in values.items():
        if not isinstance(value, np.ndarray):
            code = code.replace("{" + name + "}", _literal(value))
    return code


def split_layer(code: str) -> tuple[str, str]:
    """`nn.X(a)(x, y)` -> ('nn.X(a)', 'self.layer(x, y)'): the layer's constructor and the forward expression."""
    tree = ast.parse(code, mode="eval").body
    node = tree
    while True:
        inner = node.func if isinstance(node, ast.Call) else node.value if isinstance(node, ast.Subscript) else None
        if inner is None:
            raise ValueError(f"layer case {code!r}: expected nn.Layer(...)(inputs)")
        if isinstance(inner, ast.Call) and not isinstance(inner.func, (ast.Call, ast.Subscript)):
            constructor = ast.get_source_segment(code, inner)
            start = _offset(code, inner.lineno, inner.col_offset)
            end = _offset(code, inner.end_lineno, inner.end_col_offset)
            return constructor, code[:start] + "self.layer" + code[end:]
        node = inner


def _offset(code: str, line: int, col: int) -> int:
    lines = code.splitlines(keepends=True)
    return sum(len(l) for l in lines[: line - 1]) + len(lines[line - 1].encode()[:col].decode())


def module_source(code: str, values: dict) -> str:
    constructor, call = split_layer(substitute(code, values))
    arrays = [name for name, value in values.items() if isinstance(value, np.ndarray)]
    prelude = PRELUDE + (EINOPS if "Rearrange(" in code or "Reduce(" in code else "")
    return prelude + textwrap.dedent(f"""\


        class Layer(nn.Module):
            def __init__(self):
                super().__init__()
                self.layer = {constructor}

            def forward(self, {", ".join(arrays)}):
                return {call}
        """)


def randomize(model, seed: int) -> None:
    """Every float parameter and buffer drawn at random; variances positive.

    Matrices and kernels are N(0, 1/fan_in), like torch's own initialisation, so activations stay of
    order one through a stack of layers (N(0, 1) weights grow them by sqrt(fan_in) per layer until
    softmaxes saturate and rounding differences are amplified past any tolerance); vectors (biases,
    norm scales, running statistics) are N(0, 1).
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            values = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
            if tensor.dim() >= 2:
                values = values / max(1, tensor[0].numel()) ** 0.5
            if name.endswith("running_var"):
                values = values.abs() + 0.5
            tensor.copy_(values)


def convert_layer(source: str, rule_id: str):
    conversion = convert_source(source)
    errors = [d.format() for d in conversion.diagnostics if d.severity.value == "error"]
    assert not errors, f"{rule_id}: conversion reported errors\n{source}\n" + "\n".join(errors)
    applied = {change.rule for change in conversion.changes}
    assert rule_id in applied, f"{rule_id} was not applied\n{source}\n{conversion.code}"
    return conversion


def build(source: str, code: str, rule_id: str, seed: int = 0, *, abstract: bool = False, cls: str = "Layer"):
    """(torch model, flax model) for one module source.

    abstract=True builds the flax model under nnx.eval_shape and loads the torch weights into it: the
    constructor runs (so its code is exercised) but no initialiser is compiled, which is most of the
    cost of a small check; state no weight fills (dropout RNG streams) is then made concrete.
    """
    import torch
    from flax import nnx

    namespace: dict = {}
    exec(compile(source, f"<torch {rule_id}>", "exec"), namespace)
    torch.manual_seed(seed)
    torch_model = namespace[cls]()
    randomize(torch_model, seed)
    converted: dict = {}
    exec(compile(code, f"<converted {rule_id}>", "exec"), converted)
    # a converted module that builds nothing random takes no rngs (porter/convert/rngs_free.py)
    takes_rngs = takes_keyword(converted[cls], "rngs")

    def construct():  # the Rngs made where the model is (under eval_shape, inside its trace)
        return converted[cls](**({"rngs": nnx.Rngs(seed)} if takes_rngs else {}))

    if not abstract:
        return torch_model, construct()
    flax_model = nnx.eval_shape(construct)
    load_torch_state_dict(flax_model, torch_model.state_dict())
    concretize(flax_model, seed)
    return torch_model, flax_model


def concretize(model, seed: int) -> None:
    """Gives every still-abstract variable (RNG keys and counts) a concrete value."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    for _, variable in nnx.iter_graph(model):
        if not isinstance(variable, nnx.Variable):
            continue
        value = variable.get_raw_value()
        if not isinstance(value, jax.ShapeDtypeStruct):
            continue
        if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
            concrete = jax.random.split(jax.random.key(seed), value.shape) if value.shape else jax.random.key(seed)
        else:
            concrete = jnp.zeros(value.shape, value.dtype)
        variable.set_value(concrete)


_BUILT_FOR_REAL: set[tuple[str, str]] = set()


def run_layer_case(rule, case, data, **check_options) -> None:
    values = draw_values(case, data)
    source = module_source(case.code, values)
    conversion = convert_layer(source, rule.id)
    # the first example of a case builds the flax model as a user would (initialisers included), the
    # others abstractly (see build): the weights are loaded from torch either way
    abstract = (rule.id, case.code) in _BUILT_FOR_REAL
    _BUILT_FOR_REAL.add((rule.id, case.code))
    torch_model, flax_model = build(source, conversion.code, rule.id, abstract=abstract)
    inputs = [value for value in values.values() if isinstance(value, np.ndarray)]
    report = check_equivalence(torch_model, flax_model, *inputs, rtol=case.options.get("rtol"),
                               atol=case.options.get("atol"), layers=False, **check_options)
    assert report.passed, f"{rule.id}\n--- torch\n{source}\n--- converted\n{conversion.code}\n{report.format()}"
