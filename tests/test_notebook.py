"""Notebooks: code cells converted as one program, magics and shell lines kept, outputs cleared."""

import json
from pathlib import Path

from porter.cli import main
from porter.convert.notebook import convert_notebook

NOTEBOOK = Path(__file__).resolve().parent.parent / "fixtures" / "notebooks" / "mlp_explore.ipynb"


def cells(text: str) -> list[dict]:
    return json.loads(text)["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def run_cells(notebook_cells: list[dict]) -> dict:
    """Runs the code cells in order the way a kernel would, minus IPython: escaped lines and
    non-Python cell magics are skipped, a %%time cell runs its body."""
    namespace: dict = {}
    for cell in notebook_cells:
        if cell["cell_type"] != "code":
            continue
        lines = source(cell).split("\n")
        if lines[0].startswith("%%"):
            if lines[0].split()[0] != "%%time":
                continue
            lines = lines[1:]
        code = "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))
        exec(compile(code, "<cell>", "exec"), namespace)
    return namespace


def test_the_fixture_notebook_converts_and_its_cells_run(capsys):
    conversion = convert_notebook(NOTEBOOK.read_text(), filename="nb.ipynb")
    assert not conversion.failed
    converted = cells(conversion.code)
    namespace = run_cells(converted)
    assert namespace["y"].shape == (4, 2)
    assert namespace["summary"] == {"rows": 4, "classes": 2}
    assert "(4, 2)" in capsys.readouterr().out


def test_magics_and_shell_lines_stay_and_outputs_of_changed_cells_go():
    original = cells(NOTEBOOK.read_text())
    converted = cells(convert_notebook(NOTEBOOK.read_text(), filename="nb.ipynb").code)
    assert [c["cell_type"] for c in converted] == [c["cell_type"] for c in original]
    assert converted[0] == original[0]  # markdown untouched
    imports = source(converted[1])
    assert imports.startswith("%matplotlib inline\n%load_ext autoreload\n") and "from flax import nnx" in imports
    assert converted[2] == original[2]  # the shell cell: unchanged, its output kept
    assert "class MLP(nnx.Module):" in source(converted[3])
    assert converted[3]["outputs"] == [] and converted[3]["execution_count"] is None
    assert source(converted[4]).startswith("%%time\nmodel = MLP(rngs=nnx.Rngs(0))")
    assert converted[4]["outputs"] == []
    assert converted[5] == original[5]  # %%bash: left alone
    assert converted[6] == original[6]  # no torch in it: outputs kept
    assert isinstance(converted[3]["source"], list)  # the notebook's own source format


def test_diagnostics_name_the_cell():
    conversion = convert_notebook(NOTEBOOK.read_text(), filename="nb.ipynb")
    found = [(d.path, d.line, d.col, d.code) for d in conversion.diagnostics]
    assert found == [("nb.ipynb#cell5", 2, 9, "PT007"), ("nb.ipynb#cell6", 1, 1, "PT033")]
    assert {where for where, _ in conversion.cell_changes} == {"nb.ipynb#cell4", "nb.ipynb#cell5"}


def test_deterministic_and_idempotent():
    text = NOTEBOOK.read_text()
    once = convert_notebook(text, filename="nb.ipynb")
    assert convert_notebook(text, filename="nb.ipynb").code == once.code
    twice = convert_notebook(once.code, filename="nb.ipynb")
    assert twice.code == once.code  # nothing left to change: the same bytes
    assert {(d.code, d.message) for d in twice.diagnostics} <= {(d.code, d.message) for d in once.diagnostics}


def notebook(*sources: str) -> str:
    return json.dumps({"cells": [{"cell_type": "code", "execution_count": 1, "metadata": {}, "outputs": [],
                                  "source": s} for s in sources],
                       "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def test_escaped_lines_of_every_kind_survive():
    text = notebook("import torch\nfiles = !ls\n!pip install \\\n    einops\nif True:\n    %timeit torch.ones(2)\n"
                    "torch.zeros?\nx = torch.zeros(3)")
    converted = source(cells(convert_notebook(text).code)[0])
    assert converted == ("import jax.numpy as jnp\nfiles = !ls\n!pip install \\\n    einops\nif True:\n"
                         "    %timeit torch.ones(2)\ntorch.zeros?\nx = jnp.zeros(3)")


def test_a_cell_that_does_not_parse_is_reported_and_the_rest_converts():
    conversion = convert_notebook(notebook("import torch", "def f(:", "y = torch.ones(2)"), filename="nb.ipynb")
    assert [(d.path, d.code) for d in conversion.diagnostics] == [("nb.ipynb#cell2", "PT001")]
    out = cells(conversion.code)
    assert source(out[1]) == "def f(:" and source(out[2]) == "y = jnp.ones(2)"


def test_not_a_notebook_fails():
    conversion = convert_notebook("{not json", filename="nb.ipynb")
    assert conversion.failed and conversion.diagnostics[0].code == "PT032"


def test_the_command_line_converts_a_notebook(tmp_path, capsys):
    out = tmp_path / "out.ipynb"
    assert main(["convert", str(NOTEBOOK), "-o", str(out)]) == 0
    assert "nnx.Module" in out.read_text()
    assert f"{NOTEBOOK}#cell5:2:9 PT007 info" in capsys.readouterr().err
