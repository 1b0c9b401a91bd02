"""benchmarks/corpus.py's stages and classifier on tiny fake packages written here (no network).

The passing package is converted by porter itself; the failing ones come with a converted tree and a
porter report written by the test, so that their classes do not change when porter learns more.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from benchmarks import corpus

TORCH_NET = """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.fc = nn.Linear(dim, dim)

        def forward(self, x):
            return torch.relu(self.fc(x))
"""

# what a converted Net looks like when it crashes in layers.py (a torch method left on a jax array)
FLAX_INIT = """
    from flax import nnx

    from .layers import finish


    class Net(nnx.Module):
        def __init__(self, dim, *, rngs: nnx.Rngs):
            self.fc = nnx.Linear(dim, dim, rngs=rngs)

        def __call__(self, x):
            return finish(self.fc(x))
"""
FLAX_LAYERS_CRASH = """
    import jax.numpy as jnp

    SCALE = jnp.asarray(2.0)


    def finish(x):
        return jnp.maximum(x, 0).type(jnp.float32)
"""
TORCH_LAYERS = """
    import torch

    SCALE = torch.tensor(2.0)


    def finish(x):
        return torch.relu(x).type(torch.float32)
"""
FLAX_LAYERS_EAGER_ONLY = """
    import jax.numpy as jnp


    def finish(x):
        return jnp.maximum(x, 0) if float(x.sum()) == float(x.sum()) else x
"""
FLAX_LAYERS_WRONG = """
    import jax.numpy as jnp


    def finish(x):
        return jnp.maximum(x, 0) * 2
"""


def write_package(root: Path, name: str, files: dict[str, str]) -> Path:
    package = root / name
    package.mkdir(parents=True)
    for relative, text in files.items():
        (package / relative).write_text(textwrap.dedent(text))
    return package


def report_of(name: str, diagnostics: dict[str, list[tuple]]) -> dict:
    """A porter report: per file, (code, severity[, line]) diagnostics."""
    return {"files": [{"relative": rel, "status": "issues" if found else "clean",
                       "diagnostics": [{"path": f"{name}/{rel}", "line": (line or [2])[0], "col": 11, "code": code,
                                        "severity": severity, "message": f"{code} here"}
                                       for code, severity, *line in found]}
                      for rel, found in diagnostics.items()]}


@pytest.fixture
def isolated():
    """run_model imports the fake packages and puts their roots on sys.path: undo that."""
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if name.startswith("fake"):
            del sys.modules[name]


def job(name: str, original: Path, converted: Path, tmp_path: Path, **changes) -> dict:
    return {"original": str(original), "converted": str(converted), "cls": f"{name}:Net",
            "kwargs": {"dim": 4}, "inputs": [{"shape": [2, 4]}], "seed": 0,
            "result": str(tmp_path / f"{name}.result.json"), **changes}


def run_fake(tmp_path: Path, name: str, layers: str, diagnostics: dict) -> tuple[dict, corpus.Verdict]:
    original = tmp_path / "original"
    converted = tmp_path / "converted"
    source = write_package(original, name, {"__init__.py": TORCH_NET, "layers.py": TORCH_LAYERS})
    package = write_package(converted, name, {"__init__.py": FLAX_INIT, "layers.py": layers})
    result = corpus.run_model(job(name, original, converted, tmp_path))
    return result, corpus.classify(result, report_of(name, diagnostics), package, source)


def test_converted_by_porter_and_passing(tmp_path, isolated):
    original = tmp_path / "original"
    source = write_package(original, "fake_pass", {"__init__.py": TORCH_NET})
    out = tmp_path / "converted" / "fake_pass"
    conversion = corpus.convert(source, out, tmp_path / "report", timeout=300)
    assert conversion["ok"], conversion["error"]
    result = corpus.run_model(job("fake_pass", original, out.parent, tmp_path))
    verdict = corpus.classify(result, conversion["report"], out)
    assert (result["stage"], verdict.cls) == ("done", corpus.PASS), result["failure"]
    assert result["check"]["passed"]


def test_crash_where_porter_said_error_is_reported(tmp_path, isolated):
    result, verdict = run_fake(tmp_path, "fake_reported", FLAX_LAYERS_CRASH,
                               {"__init__.py": [], "layers.py": [("PT040", "error", 8), ("PT003", "error", 4)]})
    assert result["stage"] == "eager"
    assert result["failure"]["type"] == "AttributeError"
    assert verdict.cls == corpus.REPORTED
    assert verdict.path == ["__init__.py", "layers.py"]  # the traceback's frames in the converted tree
    assert [d["code"] for d in verdict.errors] == ["PT040", "PT003"]
    assert [d["code"] for d in verdict.at_spot] == ["PT040"]  # on the failing statement (line 8)
    assert verdict.label == corpus.REPORTED
    assert verdict.innermost["file"] == "layers.py"
    assert verdict.innermost["source"] == "return jnp.maximum(x, 0).type(jnp.float32)"


def test_crash_with_only_a_note_or_an_error_elsewhere_is_silent(tmp_path, isolated):
    (tmp_path / "elsewhere").mkdir()
    write_package(tmp_path / "elsewhere", "other", {})
    result, verdict = run_fake(tmp_path, "fake_silent", FLAX_LAYERS_CRASH,
                               {"__init__.py": [("PT007", "info")], "layers.py": [("PT005", "warning")],
                                "unused.py": [("PT003", "error")]})
    assert result["stage"] == "eager"
    assert verdict.cls == corpus.SILENT
    assert verdict.errors == []


def test_a_model_that_runs_eagerly_only_stops_at_jit_and_is_still_compared_eagerly(tmp_path, isolated):
    result, verdict = run_fake(tmp_path, "fake_eager_only", FLAX_LAYERS_EAGER_ONLY, {"layers.py": []})
    assert result["stage"] == "jit" and verdict.cls == corpus.SILENT
    assert "Concretization" in result["failure"]["type"]
    eager = result["eager_check"]
    assert eager["passed"] and "outputs_only" in eager  # gradients trace the model too
    assert corpus._eager_line(eager).startswith("PASS (outputs only")


def test_numerical_difference_is_judged_on_the_imported_files(tmp_path, isolated):
    result, verdict = run_fake(tmp_path, "fake_wrong", FLAX_LAYERS_WRONG,
                               {"__init__.py": [], "layers.py": [], "unused.py": [("PT003", "error")]})
    assert result["stage"] == "check" and not result["passed"]
    assert not result["check"]["passed"]
    assert verdict.cls == corpus.SILENT
    assert verdict.path == ["__init__.py", "layers.py"]

    reported = corpus.classify(result, report_of("fake_wrong", {"layers.py": [("PT005", "warning"),
                                                                              ("PT040", "error")]}),
                               tmp_path / "converted" / "fake_wrong")
    assert reported.cls == corpus.REPORTED


def test_original_that_does_not_run_is_broken_not_counted(tmp_path, isolated):
    original = tmp_path / "original"
    converted = tmp_path / "converted"
    write_package(original, "fake_broken", {"__init__.py": TORCH_NET})
    package = write_package(converted, "fake_broken", {"__init__.py": FLAX_INIT, "layers.py": FLAX_LAYERS_WRONG})
    result = corpus.run_model(job("fake_broken", original, converted, tmp_path, inputs=[{"shape": [2, 5]}]))
    verdict = corpus.classify(result, report_of("fake_broken", {}), package)
    assert verdict.cls == corpus.BROKEN
    rows = [corpus.Row("a", "1", "a:Net", "done", corpus.PASS), corpus.Row("b", "1", "b:Net", "eager", corpus.SILENT),
            corpus.Row("c", "1", "c:Net", "original", corpus.BROKEN)]
    assert corpus.totals(rows) == {"PASS": 1, "REPORTED": 0, "SILENT": 1, "reported_elsewhere": 0, "measured": 2,
                                   "broken": 1, "pass_percent": 50.0}


def test_original_that_raises_only_under_the_checks_gradients_is_broken(tmp_path):
    # transformer-in-transformer TNT: `patches += ...` on an einops repeat of a parameter slice raises in
    # torch once gradients are on; the converted model was never at fault
    failure = {"type": "ModelRunError", "message": "the original model raised RuntimeError: a view of a leaf "
               "Variable that requires grad is being used in an in-place operation.", "frames": []}
    result = {"stage": "check", "passed": False, "failure": failure, "imported": [], "check": None}
    assert corpus.classify(result, report_of("fake_grad", {}), tmp_path).cls == corpus.BROKEN
    converted_failure = dict(failure, message="the converted model raised TypeError: x")
    assert corpus.classify(dict(result, failure=converted_failure), report_of("fake_grad", {}), tmp_path).cls \
        == corpus.SILENT


def test_import_of_a_file_porter_could_not_write_puts_it_on_the_path(tmp_path):
    package = tmp_path / "converted" / "fake_missing"
    package.mkdir(parents=True)
    result = {"stage": "import", "passed": False, "imported": [],
              "failure": {"type": "ModuleNotFoundError", "message": "No module named 'fake_missing.blocks'",
                          "frames": [{"file": str(package / "__init__.py"), "line": 1, "function": "<module>",
                                      "source": "from .blocks import Block"}],
                          "missing_module": "fake_missing.blocks"}}
    report = {"files": [{"relative": "__init__.py", "diagnostics": []},
                        {"relative": "blocks.py", "status": "failed",
                         "diagnostics": [{"path": "blocks.py", "line": 1, "col": 0, "code": "PT031",
                                          "severity": "error", "message": "internal error"}]}]}
    verdict = corpus.classify(result, report, package)
    assert verdict.cls == corpus.REPORTED
    assert verdict.path == ["__init__.py", "blocks.py", "blocks/__init__.py"]


def test_an_error_only_elsewhere_in_a_file_on_the_path_is_reported_with_a_star(tmp_path, isolated):
    result, verdict = run_fake(tmp_path, "fake_elsewhere", FLAX_LAYERS_CRASH,
                               {"__init__.py": [("PT003", "error", 8)], "layers.py": [("PT003", "error", 4)]})
    assert verdict.cls == corpus.REPORTED
    assert verdict.at_spot == []
    assert verdict.label == "REPORTED*"


def test_an_error_on_a_binding_the_failing_statement_uses_explains_it():
    index = corpus.SourceIndex(textwrap.dedent("""
        import torch
        from functools import partial
        Norm = partial(torch.nn.LayerNorm, bias=False)
        OTHER = 1

        class Block:
            def __init__(self, dim):
                norm_fn = partial(Norm, dim)
                unused = OTHER
                self.norm = norm_fn()

            def other(self, norm_fn):
                norm_fn = 3
    """))
    spans = index.explaining([index.statement_at(11)])
    assert sorted(spans) == [(2, 2), (3, 3), (4, 4), (9, 9), (11, 11)]  # not OTHER, nor other()'s norm_fn
    # a state_dict key's attribute: where it is bound, and three steps back from there
    assert sorted(index.explaining([], {"self.norm"})) == [(3, 3), (4, 4), (9, 9), (11, 11)]


def test_the_attribute_holding_a_state_dict_entry():
    assert corpus._attributes(["layers.0.0.fn.res_conv.weight", "pos_conv.bias", "0.weight"]) == ["res_conv",
                                                                                                   "pos_conv"]


def test_a_converted_line_maps_back_through_added_and_changed_lines():
    original = ["import torch", "", "def f(x):", "    y = x.type(torch.float32)", "    return y"]
    converted = ["import jax", "import jax.numpy as jnp", "", "def f(x):", "    y = x.type(jnp.float32)",
                 "    return y"]
    assert corpus._map_line(original, converted, 5) == 4
    assert corpus._map_line(original, converted, 6) == 5
    assert corpus._map_line(original, converted, 4) == 3


def test_table_names_the_first_failure_and_the_errors(tmp_path):
    row = corpus.Row("pkg", "0.1", "pkg.mod:Net", "jit", corpus.REPORTED, failure="TypeError: boom",
                     where="mod.py:3: x.type(y)", errors=["pkg/mod.py:3:4 PT040 torch left"])
    text = corpus.table([row])
    assert "pkg      0.1      Net    jit    REPORTED" in text
    assert "at mod.py:3: x.type(y)" in text and "porter error: pkg/mod.py:3:4 PT040 torch left" in text
    assert json.dumps(corpus.totals([row]))


def test_a_hang_is_located_by_the_running_thread_of_faulthandlers_dump():
    dump = textwrap.dedent("""\
        stage: eager
        Timeout (0:04:55)!
        Current thread 0x00007f01 (most recent call first):
          File "/out/pkg/layers.py", line 3 in finish
          File "/out/pkg/__init__.py", line 9 in __call__

        Thread 0x00007f02 (most recent call first):
          File "/usr/lib/python3.11/threading.py", line 320 in wait
    """)
    assert corpus._stage_from_dump(dump) == "eager"
    assert [(f["file"], f["line"]) for f in corpus._frames_from_dump(dump)] == [("/out/pkg/__init__.py", 9),
                                                                               ("/out/pkg/layers.py", 3)]


TORCH_DIVERGING = """
    import torch
    from torch import nn


    class Act(nn.Module):
        def forward(self, x):
            return torch.relu(x)


    class Net(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.fc = nn.Linear(dim, dim)
            self.act = Act()

        def forward(self, x):
            return self.act(self.fc(x))
"""
FLAX_DIVERGING = """
    import jax.numpy as jnp
    from flax import nnx


    class Act(nnx.Module):
        def __call__(self, x):
            return jnp.maximum(x, 0) * 2


    class Net(nnx.Module):
        def __init__(self, dim, *, rngs: nnx.Rngs):
            self.fc = nnx.Linear(dim, dim, rngs=rngs)
            self.act = Act()

        def __call__(self, x):
            return self.act(self.fc(x))
"""


def test_a_numerical_difference_is_explained_by_an_error_in_the_first_diverging_module(tmp_path, isolated):
    source = write_package(tmp_path / "original", "fake_div", {"__init__.py": TORCH_DIVERGING})
    package = write_package(tmp_path / "converted", "fake_div", {"__init__.py": FLAX_DIVERGING})
    result = corpus.run_model(job("fake_div", tmp_path / "original", tmp_path / "converted", tmp_path))
    assert result["stage"] == "check"
    assert (result["check"]["divergence_path"], result["check"]["divergence_class"]) == ("act", "Act")
    inside_act = corpus.classify(result, report_of("fake_div", {"__init__.py": [("PT005", "error", 8)]}),
                                 package, source)
    assert inside_act.label == corpus.REPORTED
    elsewhere = corpus.classify(result, report_of("fake_div", {"__init__.py": [("PT005", "error", 13)]}),
                                package, source)
    assert elsewhere.label == "REPORTED*"


def test_an_original_whose_own_gradient_is_wrong_is_broken_not_silent():
    """Where only gradients differ, torch's own gradient is checked (gradcheck, float64) before blaming
    the conversion: a torch bug made lambda-networks' reference gradient wrong (torch 2.13 CPU)."""
    import torch

    class WrongBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 3

        @staticmethod
        def backward(ctx, grad):
            return grad * 2  # the derivative is 3

    class Wrong(torch.nn.Module):
        def forward(self, x):
            return WrongBackward.apply(x)

    class Right(torch.nn.Module):
        def forward(self, x):
            return x * 3

    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    assert "gradcheck" in corpus.torch_gradient_wrong(Wrong(), [x], {})
    assert corpus.torch_gradient_wrong(Right(), [x], {}) is None
    failure = {"type": "StageFailed", "message": "2 of 4 arrays differ", "frames": []}
    result = {"stage": "check", "passed": False, "failure": failure, "imported": [],
              "original_gradient_wrong": "the original's own gradient fails torch.autograd.gradcheck"}
    assert corpus.classify(result, None, Path("/nowhere")).cls == corpus.BROKEN
    assert corpus.classify({**result, "original_gradient_wrong": None}, None, Path("/nowhere")).cls == corpus.SILENT
