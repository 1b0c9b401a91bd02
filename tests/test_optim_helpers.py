"""porter/emitted_training.py: each helper stands alone as pasted into a converted
file (its source, the helpers DEPENDS names, and only the allowed imports), and
porter/emitted.py re-exports every one. Their numbers are checked against torch
in tests/test_losses.py and tests/test_optim.py.
"""

import ast
import functools
import inspect
from pathlib import Path

import pytest

import porter.emitted as emitted
import porter.emitted_training as training

SOURCE = Path(training.__file__).read_text()
TREE = ast.parse(SOURCE)
ALLOWED_IMPORTS = "import functools\nimport math\nimport pickle\nimport weakref\n\nimport jax\nimport jax.numpy as jnp\n" \
                  "import numpy as np\nimport optax\nfrom flax import nnx\n"
HELPERS = [node.name for node in TREE.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]


def test_module_imports_only_the_allowed_modules():
    imports = [ast.get_source_segment(SOURCE, n) for n in TREE.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert "\n".join(imports) == ALLOWED_IMPORTS.replace("\n\n", "\n").strip()
    nested = [n for n in ast.walk(TREE) if isinstance(n, (ast.Import, ast.ImportFrom)) and n not in TREE.body]
    assert nested == []


def test_depends_names_exactly_the_helpers_and_emitted_reexports_them():
    assert set(training.DEPENDS) == set(HELPERS)
    assert set(training.__all__) == set(HELPERS)
    for name, deps in training.DEPENDS.items():
        assert set(deps) <= set(HELPERS)
        assert getattr(emitted, name) is getattr(training, name)
        assert emitted.DEPENDS[name] == deps


@functools.cache
def standalone(name: str):
    order: list[str] = []

    def visit(n: str) -> None:
        for dep in training.DEPENDS[n]:
            visit(dep)
        if n not in order:
            order.append(n)

    visit(name)
    sources = [ast.get_source_segment(SOURCE, next(n for n in TREE.body if getattr(n, "name", None) == h))
               for h in order]
    namespace: dict = {"__name__": "converted"}
    exec(compile(ALLOWED_IMPORTS + "\n\n".join(sources), f"<pasted {name}>", "exec"), namespace)
    return namespace[name]


@pytest.mark.parametrize("name", HELPERS)
def test_each_helper_has_a_docstring_and_stands_alone(name):
    assert inspect.getdoc(getattr(training, name))
    assert standalone(name).__name__ == name


def test_pasted_scheduler_steps_an_optimizer():
    """A scheduler pasted alone (with its base class) drives an injected learning rate."""
    import jax.numpy as jnp
    import optax
    from flax import nnx

    model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), wrt=nnx.Param)
    scheduler = standalone("StepLR")(optimizer, step_size=2, gamma=0.5)
    lrs = []
    for _ in range(5):
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    assert lrs == pytest.approx([0.1, 0.05, 0.05, 0.025, 0.025])
    assert float(optimizer.opt_state.hyperparams["learning_rate"][...]) == pytest.approx(0.025)
    assert jnp.asarray(scheduler.last_epoch) == 5


def test_scheduler_needs_an_injected_learning_rate():
    import optax
    from flax import nnx

    model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    with pytest.raises(ValueError, match="inject_hyperparams"):
        standalone("ExponentialLR")(optimizer, gamma=0.9)


def test_one_cycle_needs_an_injected_momentum_to_cycle():
    import optax
    from flax import nnx

    model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), wrt=nnx.Param)
    with pytest.raises(ValueError, match="cycle_momentum"):
        standalone("OneCycleLR")(optimizer, max_lr=0.1, total_steps=10)
    standalone("OneCycleLR")(optimizer, max_lr=0.1, total_steps=10, cycle_momentum=False).step()
