"""`porter convert train.py` on its own, where train.py imports its model from a file beside it
(porter/convert/siblings.py): the model class is read, not imported, so building it passes rngs as in
a tree; a model porter cannot see is PT012."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from porter.cli import main

MODEL = textwrap.dedent("""\
    import torch
    import torch.nn as nn


    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.fc = nn.Linear(d, d)

        def forward(self, x):
            return torch.relu(self.fc(x))


    class Net(nn.Module):
        def __init__(self, d=4, classes=3):
            super().__init__()
            self.block = Block(d)
            self.head = nn.Linear(d, classes)

        def forward(self, x):
            return self.head(self.block(x))
    """)

SCRIPT = textwrap.dedent("""\
    import torch
    import torch.nn.functional as F
    {import_line}

    torch.manual_seed(0)
    model = {build}(d=4, classes=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    y = torch.randint(0, 3, (8,))
    for step in range(3):
        optimizer.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
    print("done", float(loss))
    """)


def project(tmp_path: Path, import_line: str, build: str, model_file: str = "models.py") -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / model_file).write_text(MODEL)
    script = tmp_path / "src" / "train.py"
    script.write_text(SCRIPT.format(import_line=import_line, build=build))
    return script


def convert(args: list[str], capsys) -> tuple[int, str]:
    code = main(["convert", *args])
    return code, capsys.readouterr().err


def test_a_model_class_from_a_sibling_file_gets_rngs_and_the_note_says_how_to_convert_the_sibling(tmp_path, capsys):
    script = project(tmp_path, "from models import Net", "Net")
    out = tmp_path / "out" / "train.py"
    code, err = convert([str(script), "-o", str(out)], capsys)
    assert code == 0, err
    assert "model = Net(d=4, classes=3, rngs=nnx.Rngs(0))" in out.read_text()
    assert "from models import Net" in out.read_text()
    sibling_command = f"porter convert {script.parent / 'models.py'} -o {out.parent / 'models.py'}"
    assert f"{script}:3:1 PT007 info Net: nn.Module subclass(es) or layer factories of {script.parent / 'models.py'}, " \
           f"read (not converted in this run)" in err
    assert sibling_command in err
    assert f"porter: train.py imports from {script.parent / 'models.py'}, read but not converted: {sibling_command}" \
        in err.splitlines()
    # the command the note gives, then the converted script runs to the end beside the converted model
    assert main(sibling_command.split()[1:]) == 0
    run = subprocess.run([sys.executable, "train.py"], cwd=out.parent, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("done")


def test_the_same_output_as_converting_the_directory(tmp_path, capsys):
    script = project(tmp_path, "from models import Net", "Net")
    assert main(["convert", str(script), "-o", str(tmp_path / "one.py")]) == 0
    assert main(["convert", str(script.parent), "-o", str(tmp_path / "tree")]) == 0
    # the same code, the emitted helpers aside (pasted into a single file, imported from porter_helpers in a tree)
    one, tree = (tmp_path / "one.py").read_text(), (tmp_path / "tree" / "train.py").read_text()
    assert "from porter_helpers import cross_entropy_loss, fast_partial\n" in tree and "def cross_entropy_loss(" in one
    assert one[one.index("_rngs = nnx.Rngs(0)"):] == tree[tree.index("_rngs = nnx.Rngs(0)"):]


def test_a_module_imported_under_an_alias(tmp_path, capsys):
    script = project(tmp_path, "import models as m", "m.Net")
    code, err = convert([str(script), "-o", str(tmp_path / "out.py")], capsys)
    assert code == 0, err
    assert "model = m.Net(d=4, classes=3, rngs=nnx.Rngs(0))" in (tmp_path / "out.py").read_text()
    assert "PT007 info Block, Net: nn.Module subclass(es) or layer factories of" in err


def test_a_relative_import_in_a_package(tmp_path, capsys):
    script = project(tmp_path, "from .models import Net", "Net")
    (script.parent / "__init__.py").write_text("")
    code, err = convert([str(script), "-o", str(tmp_path / "out.py")], capsys)
    assert code == 0, err
    assert "model = Net(d=4, classes=3, rngs=nnx.Rngs(0))" in (tmp_path / "out.py").read_text()


def test_a_class_a_package_re_exports(tmp_path, capsys):
    script = project(tmp_path, "from nets import Net", "Net")
    (script.parent / "nets").mkdir()
    (script.parent / "models.py").rename(script.parent / "nets" / "resnet.py")
    (script.parent / "nets" / "__init__.py").write_text("from .resnet import Net\n")
    code, err = convert([str(script), "-o", str(tmp_path / "out.py")], capsys)
    assert code == 0, err
    assert "model = Net(d=4, classes=3, rngs=nnx.Rngs(0))" in (tmp_path / "out.py").read_text()


def test_a_submodule_imported_from_a_package(tmp_path, capsys):
    script = project(tmp_path, "from nets import resnet", "resnet.Net")
    (script.parent / "nets").mkdir()
    (script.parent / "models.py").rename(script.parent / "nets" / "resnet.py")
    (script.parent / "nets" / "__init__.py").write_text("")
    code, err = convert([str(script), "-o", str(tmp_path / "out.py")], capsys)
    assert code == 0, err
    assert "model = resnet.Net(d=4, classes=3, rngs=nnx.Rngs(0))" in (tmp_path / "out.py").read_text()


@pytest.mark.parametrize("import_line, build, why", [
    ("from models import Net", "Net", "no {src}/models.py or {src}/models/__init__.py"),
    ("import models as m", "m.Net", "no {src}/models.py"),
    ("import importlib\nm = importlib.import_module('models')", "m.Net",
     "importlib.import_module('models') (porter reads imports, it does not run them)"),
])
def test_a_model_porter_cannot_see_is_an_error_naming_the_file_and_the_fix(tmp_path, capsys, import_line, build, why):
    script = project(tmp_path, import_line, build, model_file="elsewhere.py")
    code, err = convert([str(script), "-o", str(tmp_path / "out.py")], capsys)
    assert code == 1
    (line,) = [line for line in err.splitlines() if " PT012 " in line]
    assert line.startswith(f"{script}:") and f"{build} comes from" in line
    assert why.format(src=script.parent) in line
    assert "porter convert DIR -o OUT_DIR" in line


def test_a_sibling_that_does_not_parse_is_an_error_too(tmp_path, capsys):
    script = project(tmp_path, "from models import Net", "Net")
    (script.parent / "models.py").write_text("class Net(:\n")
    code, err = convert([str(script), "-o", str(tmp_path / "out.py")], capsys)
    assert code == 1 and f"{script.parent / 'models.py'} does not parse" in err


def test_imports_that_are_no_model_say_nothing(tmp_path, capsys):
    script = project(tmp_path, "from models import Net\nfrom helpers import seed_all\nimport argparse", "Net")
    (script.parent / "helpers.py").write_text("import random\n\ndef seed_all(s):\n    random.seed(s)\n")
    code, err = convert([str(script), "-o", str(tmp_path / "out.py")], capsys)
    assert code == 0, err
    assert "helpers" not in err and "argparse" not in err and "PT012" not in err


def test_a_sibling_whose_classes_come_from_a_module_it_imports(tmp_path, capsys):
    script = project(tmp_path, "from models import Net", "Net")
    (script.parent / "blocks.py").write_text(MODEL)
    (script.parent / "models.py").write_text("import blocks as b\n\n\nclass Net(b.Net):\n    pass\n")
    code, err = convert([str(script), "-o", str(tmp_path / "out.py")], capsys)
    assert code == 0, err
    assert "model = Net(d=4, classes=3, rngs=nnx.Rngs(0))" in (tmp_path / "out.py").read_text()


def test_a_name_the_sibling_defines_that_is_no_module_class_but_is_trained_as_a_model(tmp_path, capsys):
    script = project(tmp_path, "from models import build", "build")
    (script.parent / "models.py").write_text("import torchvision\n\n\ndef build(d, classes):\n"
                                             "    return torchvision.models.resnet18(num_classes=classes)\n")
    code, err = convert([str(script), "-o", str(tmp_path / "out.py")], capsys)
    assert code == 1
    assert f"PT012 error build comes from models ({script.parent / 'models.py'} defines no nn.Module subclass " \
           f"or layer factory named build)" in err


def test_a_layer_factory_and_a_star_import_from_siblings(tmp_path, capsys):
    script = project(tmp_path, "from models import *\nfrom heads import make_head", "Net")
    (script.parent / "heads.py").write_text("import torch.nn as nn\n\n\ndef make_head(d, n):\n"
                                            "    return nn.Linear(d, n)\n")
    with open(script, "a") as f:
        f.write("head = make_head(4, 2)\n")
    out = tmp_path / "out" / "train.py"
    code, err = convert([str(script), "-o", str(out)], capsys)
    assert code == 0, err
    text = out.read_text()
    assert "model = Net(d=4, classes=3, rngs=nnx.Rngs(0))" in text and "head = make_head(4, 2, rngs=nnx.Rngs(0))" in text
    assert f"PT007 info Block, Net: nn.Module subclass(es) or layer factories of {script.parent / 'models.py'}" in err
    assert f"porter convert {script.parent / 'heads.py'} -o {out.parent / 'heads.py'}" in err


def test_skipping_statements_never_changes_a_dotted_module_class_s_conversion():
    from porter.convert.pipeline import _convert

    source = SCRIPT.format(import_line="import models as m", build="m.Net") \
        + "state = m.Net(d=2).state_dict()\nmodel.train()\n"
    known = {"m.Net": "module", "m.Block": "module"}
    fast, reference = _convert(source, "t.py", fast=True, known=known), _convert(source, "t.py", fast=False, known=known)
    assert "m.Net(d=4, classes=3, rngs=nnx.Rngs(0))" in fast.code
    assert fast.code == reference.code
    assert [d.format() for d in fast.diagnostics] == [d.format() for d in reference.diagnostics]
    assert any(d.code == "PT040" and "state_dict" in d.message for d in fast.diagnostics)


def test_a_sibling_module_imported_from_the_package_itself(tmp_path, capsys):
    script = project(tmp_path, "from . import models", "models.Net")
    (script.parent / "__init__.py").write_text("")
    code, err = convert([str(script), "-o", str(tmp_path / "out.py")], capsys)
    assert code == 0, err
    assert "model = models.Net(d=4, classes=3, rngs=nnx.Rngs(0))" in (tmp_path / "out.py").read_text()


def test_a_sibling_class_that_draws_nothing_is_built_without_rngs_as_its_own_conversion_defines_it(tmp_path, capsys):
    """layers.Act draws nothing: converted on its own it takes no rngs, so the script converted on its own
    must build it without (and Net, which has a Linear, with)."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "layers.py").write_text(textwrap.dedent("""\
        import torch.nn as nn
        import torch.nn.functional as F


        class Act(nn.Module):
            def forward(self, x):
                return F.relu(x)


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 4)
                self.act = Act()

            def forward(self, x):
                return self.act(self.fc(x))
        """))
    (source / "run.py").write_text("import torch\nfrom layers import Act, Net\n\nact = Act()\nnet = Net()\n"
                                   "print(tuple(net(act(torch.ones(2, 4))).shape))\n")
    out = tmp_path / "out"
    for name in ("run.py", "layers.py"):
        assert main(["convert", str(source / name), "-o", str(out / name)]) == 0
    code = (out / "run.py").read_text()
    assert "act = Act()\n" in code and "net = Net(rngs=nnx.Rngs(0))\n" in code
    run = subprocess.run([sys.executable, "run.py"], cwd=out, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "(2, 4)"
