"""`porter convert SRC -o OUT --with PKG` (porter/convert/closure.py): the modules of an installed package
that the tree reaches convert with it into OUT/PKG/..., shadowing the installed package."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from porter.cli import main
from porter.convert import closure, outside

ROOT = Path(__file__).resolve().parent.parent

VENDOR = {
    "__init__.py": "from . import heavy\n",  # runs on import; what it imports is not reached
    "heavy.py": "import torch\n",
    "lazy.py": "",
    "typing_only.py": "",
    "util.py": "def width(d):\n    return 2 * d\n",
    "models/__init__.py": "from .net import Net\n",
    "models/net.py": "import torch.nn as nn\n\n\nclass Net(nn.Module):\n    pass\n",
    "models/layers.py": """\
        import torch.nn as nn


        class Scale(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.fc = nn.Linear(d, d)

            def forward(self, x):
                return self.fc(x) * 0.5
        """,
    "models/blocks.py": """\
        \"\"\"Blocks.\"\"\"
        from __future__ import annotations

        from typing import TYPE_CHECKING

        import torch.nn as nn

        from ..util import width
        from . import layers

        if TYPE_CHECKING:
            from .. import typing_only


        def later():
            from .. import lazy


        class Block(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.up = nn.Linear(d, width(d))
                self.down = nn.Linear(width(d), d)
                self.scale = layers.Scale(d)

            def forward(self, x):
                return self.scale(self.down(self.up(x).relu()))
        """,
}

TREE = {
    "model.py": """\
        import os

        import torch.nn as nn
        from vendorpkg.models.blocks import Block


        class Net(Block):
            def __init__(self, d=4):
                super().__init__(d)
                self.head = nn.Linear(d, 2)

            def forward(self, x):
                return self.head(super().forward(x))
        """,
}


def write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def vendor(tmp_path, monkeypatch):
    """vendorpkg installed in a directory of sys.path (and of PYTHONPATH, for porter's worker processes)."""
    site = tmp_path / "site"
    write(site / "vendorpkg", VENDOR)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(ROOT)]))
    outside.clear_cache()
    yield site
    outside.clear_cache()


def test_the_closure_is_what_the_tree_reaches_module_by_module(vendor, tmp_path):
    src = write(tmp_path / "proj", TREE)
    found = closure.find([str(src / "model.py")], ["vendorpkg"])
    assert set(found.followed) == {"vendorpkg.models.blocks", "vendorpkg.models.layers", "vendorpkg.util"}
    # run on import, converted, their imports (heavy, models.net) not followed; a lazy or typing import neither
    assert set(found.parents) == {"vendorpkg", "vendorpkg.models"}
    assert [t.relative for t in found.tasks()] == [
        "vendorpkg/__init__.py", "vendorpkg/models/__init__.py", "vendorpkg/models/blocks.py",
        "vendorpkg/models/layers.py", "vendorpkg/util.py"]


def test_a_package_imported_by_name_is_followed(vendor, tmp_path):
    src = write(tmp_path / "proj", {"m.py": "from vendorpkg import models\n"})
    found = closure.find([str(src / "m.py")], ["vendorpkg"])
    assert set(found.followed) == {"vendorpkg.models", "vendorpkg.models.net"}
    assert set(found.parents) == {"vendorpkg"}


def test_the_package_init_extends_its_path_after_the_docstring_and_future_imports():
    code = b'"""Doc."""\nfrom __future__ import annotations\nfrom . import x\n'
    lines = closure._with_extend_path(code).decode().splitlines()
    assert lines[:2] == ['"""Doc."""', "from __future__ import annotations"]
    assert lines[3:5] == ["from pkgutil import extend_path", "__path__ = extend_path(__path__, __name__)"]
    assert lines[5] == "from . import x"


def test_without_with_the_base_is_an_error_naming_the_flag(vendor, tmp_path, capsys):
    src = write(tmp_path / "proj", TREE)
    assert main(["convert", str(src), "-o", str(tmp_path / "out"), "-j", "1"]) == 1
    errors = [d for f in json.loads((tmp_path / "out" / "porter_report.json").read_text())["files"]
              for d in f["diagnostics"] if d["code"] == "PT013"]
    assert len(errors) == 1 and "--with vendorpkg" in errors[0]["message"]
    assert not (tmp_path / "out" / "vendorpkg").exists()


def test_with_converts_the_closure_beside_the_tree_and_runs_as_the_original(vendor, tmp_path, capsys):
    src = write(tmp_path / "proj", TREE)
    out = tmp_path / "out"
    assert main(["convert", str(src), "-o", str(out), "--with", "vendorpkg"]) == 0, capsys.readouterr().err
    report = json.loads((out / "porter_report.json").read_text())
    assert report["with"]["vendorpkg"]["modules"] == [
        "vendorpkg", "vendorpkg.models", "vendorpkg.models.blocks", "vendorpkg.models.layers", "vendorpkg.util"]
    assert "PT013" not in report["summary"]["by_code"]
    assert "rngs=rngs" in (out / "vendorpkg" / "models" / "blocks.py").read_text()  # layers.Scale(d, rngs=rngs)
    assert not (out / "vendorpkg" / "heavy.py").exists()  # not reached: the installed one serves
    assert "extend_path" in (out / "vendorpkg" / "__init__.py").read_text()
    assert "PORTER_WITH" not in os.environ
    # the torch original (installed vendorpkg) against the conversion (OUT first on sys.path), in a process
    # of its own: both are named vendorpkg and model
    script = textwrap.dedent(f"""\
        import sys, numpy as np, torch
        sys.path.insert(0, {str(src)!r})
        import model
        torch.manual_seed(0)
        original = model.Net().eval()
        for name in [n for n in sys.modules if n.split(".")[0] in ("vendorpkg", "model")]:
            del sys.modules[name]
        sys.path[0] = {str(out)!r}
        import vendorpkg.models.blocks, vendorpkg.heavy
        assert vendorpkg.models.blocks.__file__.startswith({str(out)!r})
        assert vendorpkg.heavy.__file__.startswith({str(vendor)!r})
        from flax import nnx
        import model
        from porter.check.equivalence import check_equivalence
        x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
        report = check_equivalence(original, model.Net(rngs=nnx.Rngs(0)), x)
        print("PASSED" if report.passed else report)
        """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.stdout.strip().endswith("PASSED"), run.stdout[-2000:] + run.stderr[-3000:]


def test_with_a_name_the_tree_does_not_resolve_is_an_error_saying_how_to_import_it(vendor, tmp_path, capsys):
    src = write(tmp_path / "proj", {"model.py": """\
        import torch.nn as nn
        import vendorpkg
        from vendorpkg.models.blocks import Block


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = vendorpkg.models.blocks.Block(4)  # attributes porter does not follow
                self.b = Block(4)
        """})
    main(["convert", str(src), "-o", str(tmp_path / "out"), "--with", "vendorpkg", "-j", "1"])
    report = json.loads((tmp_path / "out" / "porter_report.json").read_text())
    [error] = [d for f in report["files"] if f["relative"] == "model.py" for d in f["diagnostics"]]
    assert (error["code"], error["line"]) == ("PT013", 9)
    assert "from vendorpkg.models.blocks import Block" in error["message"]
    assert "self.b = Block(4, rngs=rngs)" in (tmp_path / "out" / "model.py").read_text()


@pytest.mark.parametrize("argv, said", [
    (["--with", "torch"], "--with torch"),
    (["--with", "nosuchpackage"], "no installed package nosuchpackage"),
    (["--with", "vendorpkg.models"], "top-level package"),
    (["--with", "vendorpkg", "--inplace"], "not --inplace"),
])
def test_with_usage_errors(vendor, tmp_path, capsys, argv, said):
    src = write(tmp_path / "proj", TREE)
    out = [] if "--inplace" in argv else ["-o", str(tmp_path / "out")]
    assert main(["convert", str(src), *out, *argv]) == 2
    assert said in capsys.readouterr().err


def test_with_takes_a_tree_not_a_file(vendor, tmp_path, capsys):
    src = write(tmp_path / "proj", TREE)
    assert main(["convert", str(src / "model.py"), "-o", str(tmp_path / "m.py"), "--with", "vendorpkg"]) == 2
    assert "directory" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ real torchvision
CORPUS = Path.home() / ".cache" / "porter-corpus" / "unpacked"
FIXTURE = ROOT / "fixtures" / "outside" / "segproject"
CHECK = textwrap.dedent("""\
    import sys, numpy as np, torch
    # the PyPI torchvision wheel's operators do not load with this CPU torch (benchmarks/corpus.py SHIMS)
    _lib = torch.library.Library("torchvision", "DEF")
    for schema in ["nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                   "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"]:
        _lib.define(schema)
    fixture, out = sys.argv[1:3]
    sys.path.insert(0, fixture)
    from model import SegModel
    torch.manual_seed(0)
    original = SegModel().eval()
    for name in [n for n in sys.modules if n.split(".")[0] in ("torchvision", "model", "encoders", "modules")]:
        del sys.modules[name]
    sys.path[0] = out
    from flax import nnx
    import torchvision.models.resnet
    assert torchvision.models.resnet.__file__.startswith(out)
    from model import SegModel
    from porter.check.equivalence import check_equivalence
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    for mode in ("eval", "train"):
        report = check_equivalence(original, SegModel(rngs=nnx.Rngs(0)), x, mode=mode)
        print(mode, "PASSED" if report.passed else report)
    """)


def test_an_encoder_on_torchvisions_resnet_converts_with_torchvision_and_passes_check(tmp_path, monkeypatch):
    """fixtures/outside/segproject: `class ResNetEncoder(ResNet)` with torchvision's ResNet, and a decoder
    whose blocks are reached as `md.Conv2dReLU` (`import modules as md`)."""
    paths = [CORPUS / "torchvision-0.28.0", CORPUS / "pillow-12.0.0"]
    if not all(p.is_dir() for p in paths):
        pytest.skip("torchvision and pillow are not unpacked under ~/.cache/porter-corpus")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *map(str, paths)])}
    out = tmp_path / "out"
    convert = subprocess.run([sys.executable, "-m", "porter", "convert", str(FIXTURE), "-o", str(out),
                              "--with", "torchvision"], capture_output=True, text=True, env=env, timeout=600)
    report = json.loads((out / "porter_report.json").read_text())
    assert "torchvision.models.resnet" in report["with"]["torchvision"]["modules"]
    assert "torchvision.models.vgg" not in report["with"]["torchvision"]["modules"]  # not reached
    ours = [d for f in report["files"] if not os.path.isabs(f["path"]) or str(FIXTURE) in f["path"]
            for d in f["diagnostics"] if d["severity"] == "error"]
    assert not ours, ours
    assert "rngs=rngs" in (out / "encoders.py").read_text(), convert.stderr[-2000:]
    assert "md.Conv2dReLU(32, 32, rngs=rngs)" in (out / "model.py").read_text()
    run = subprocess.run([sys.executable, "-c", CHECK, str(FIXTURE), str(out)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.stdout.split("\n")[:2] == ["eval PASSED", "train PASSED"], run.stdout[-2000:] + run.stderr[-3000:]
