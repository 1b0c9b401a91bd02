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


@pytest.mark.parametrize("single", [False, True], ids=["tree", "file"])
def test_with_converts_the_closure_beside_the_tree_and_runs_as_the_original(vendor, tmp_path, capsys, single):
    """A directory, or one file of it (its imports reach the package): OUT/model.py beside OUT/vendorpkg/."""
    src = write(tmp_path / "proj", TREE)
    out = tmp_path / "out"
    given = src / "model.py" if single else src
    assert main(["convert", str(given), "-o", str(out), "--with", "vendorpkg"]) == 0, capsys.readouterr().err
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


def test_with_a_name_the_tree_does_not_resolve_gets_rngs_in_a_constructor_and_is_an_error_elsewhere(
        vendor, tmp_path, capsys):
    """Reached through attributes: read from the package's source, a module class built in a constructor gets
    rngs (PT007 says what porter read); elsewhere (no rngs there), an error saying which module to import it
    from."""
    src = write(tmp_path / "proj", {"model.py": """\
        import torch.nn as nn
        import vendorpkg
        from vendorpkg.models.blocks import Block


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = vendorpkg.models.blocks.Block(4)  # attributes the tree's analysis does not follow
                self.b = Block(4)

            def widen(self):
                self.c = vendorpkg.models.blocks.Block(8)
        """})
    main(["convert", str(src), "-o", str(tmp_path / "out"), "--with", "vendorpkg", "-j", "1"])
    report = json.loads((tmp_path / "out" / "porter_report.json").read_text())
    found = [d for f in report["files"] if f["relative"] == "model.py" for d in f["diagnostics"]
             if d["code"] in ("PT007", "PT013")]
    assert [(d["code"], d["line"]) for d in found] == [("PT007", 9), ("PT013", 13)], found
    assert found[0]["message"].startswith(
        "vendorpkg.models.blocks.Block is vendorpkg.models.blocks.Block, an nn.Module")
    assert "from vendorpkg.models.blocks import Block" in found[1]["message"]
    code = (tmp_path / "out" / "model.py").read_text()
    assert "self.a = vendorpkg.models.blocks.Block(4, rngs=rngs)" in code and "self.b = Block(4, rngs=rngs)" in code


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


def test_with_a_file_writes_into_a_directory(vendor, tmp_path, capsys):
    src = write(tmp_path / "proj", TREE)
    assert main(["convert", str(src / "model.py"), "-o", str(tmp_path / "m.py"), "--with", "vendorpkg"]) == 2
    assert "-o OUT_DIR" in capsys.readouterr().err
    (src / "notes.txt").write_text("")
    assert main(["convert", str(src / "notes.txt"), "-o", str(tmp_path / "o"), "--with", "vendorpkg"]) == 2
    assert "name a .py file or a directory" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ real torchvision and timm
CORPUS = Path.home() / ".cache" / "porter-corpus" / "unpacked"
FIXTURE = ROOT / "fixtures" / "outside" / "segproject"
PACKAGES = [CORPUS / "torchvision-0.28.0", CORPUS / "timm-1.0.31", CORPUS / "pillow-12.0.0"]
CHECK = textwrap.dedent("""\
    import sys, numpy as np, torch
    # the PyPI torchvision wheel's operators do not load with this CPU torch (benchmarks/corpus.py SHIMS)
    _lib = torch.library.Library("torchvision", "DEF")
    for schema in ["nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                   "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"]:
        _lib.define(schema)
    fixture, out, encoder = sys.argv[1:4]
    sys.path.insert(0, fixture)
    from model import SegModel
    torch.manual_seed(0)
    original = SegModel(encoder=encoder).eval()
    for name in [n for n in sys.modules if n.split(".")[0] in ("torchvision", "timm", "model", "encoders", "modules",
                                                                 "hub")]:
        del sys.modules[name]
    sys.path[0] = out
    from flax import nnx
    import torchvision.models.resnet, timm.models.resnet
    assert torchvision.models.resnet.__file__.startswith(out) and timm.models.resnet.__file__.startswith(out)
    from model import SegModel
    from porter.check.equivalence import check_equivalence
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for mode in ("eval", "train"):
        report = check_equivalence(original, SegModel(encoder=encoder, rngs=nnx.Rngs(0)), x, mode=mode)
        print(mode, "PASSED" if report.passed else report)
    """)


def _environment():
    if not all(p.is_dir() for p in PACKAGES):
        pytest.skip("torchvision, timm and pillow are not unpacked under ~/.cache/porter-corpus")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *map(str, PACKAGES)])}


def _convert(out: Path, *flags: str, env) -> dict:
    run = subprocess.run([sys.executable, "-m", "porter", "convert", str(FIXTURE), "-o", str(out), *flags],
                         capture_output=True, text=True, env=env, timeout=900)
    assert (out / "porter_report.json").exists(), run.stderr[-3000:]
    return json.loads((out / "porter_report.json").read_text())


def _tree_diagnostics(report: dict, severity: str) -> list[tuple[str, int, str, str]]:
    """(file, line, code, message) of the fixture's own files (not the --with packages')."""
    return [(Path(f["path"]).name, d["line"], d["code"], d["message"]) for f in report["files"]
            if Path(f["path"]).parent == FIXTURE for d in f["diagnostics"] if d["severity"] == severity]


@pytest.fixture(scope="module")
def segmentation(tmp_path_factory):
    """fixtures/outside/segproject converted --with torchvision --with timm, once for the tests below."""
    env = _environment()
    out = tmp_path_factory.mktemp("segproject") / "out"
    return out, env, _convert(out, "--with", "torchvision", "--with", "timm", env=env)


def test_the_segmentation_fixture_names_each_outside_class_and_the_flag_without_with(tmp_path):
    """Without --with: the encoder on torchvision's ResNet and the one from timm.create_model are errors, each
    naming its class and the flag that converts it; the hub mixin is dropped with what is lost."""
    report = _convert(tmp_path / "out", env=_environment())
    errors = {(file, line): message for file, line, code, message in _tree_diagnostics(report, "error")
              if code == "PT013"}
    assert set(errors) == {("encoders.py", 9), ("encoders.py", 29)}, errors
    assert "ResNetEncoder derives from ResNet (torchvision.models.resnet.ResNet)" in errors["encoders.py", 9]
    assert "--with torchvision" in errors["encoders.py", 9]
    assert "calls timm.create_model (timm.models._factory.create_model)" in errors["encoders.py", 29]
    assert "--with timm" in errors["encoders.py", 29]
    assert "with" not in report or not report["with"]


def test_the_segmentation_fixture_converts_with_torchvision_and_timm(segmentation):
    """The shape of the issue: an encoder subclassing torchvision's ResNet, one from timm.create_model, a registry
    dict of encoders picked by name, a decoder reaching its blocks as md.X, a hub mixin with its own __new__."""
    out, _, report = segmentation
    torchvision, timm = report["with"]["torchvision"]["modules"], report["with"]["timm"]["modules"]
    assert "torchvision.models.resnet" in torchvision and "torchvision.models.vgg" in torchvision  # timm reaches it
    assert "timm.models.resnet" in timm and "timm.models._factory" in timm
    assert len(timm) < 304  # reached module by module, not the whole package
    # the only errors of the tree: the hub mixin's torch calls (the mixin itself is dropped from SegModel's bases)
    errors = sorted((file, line, code) for file, line, code, _ in _tree_diagnostics(report, "error"))
    assert errors == [("hub.py", 20, "PT003"), ("hub.py", 26, "PT003")], errors
    # timm.create_model, reached as an attribute of `import timm`, is read from timm's source: it gets rngs
    [passed] = [m for file, line, code, m in _tree_diagnostics(report, "info") if (file, line) == ("encoders.py", 29)]
    assert passed.startswith("timm.create_model is timm.models._factory.create_model, a function returning")
    [dropped] = [m for file, _, code, m in _tree_diagnostics(report, "warning") if code == "PT014"]
    assert dropped.endswith("Dropped from the converted SegModel's bases: it loses save_pretrained/from_pretrained "
                            "of HubMixin")
    model = (out / "model.py").read_text()
    assert "class SegModel(nnx.Module):" in model and "md.Conv2dReLU(32, 32, rngs=rngs)" in model
    encoders = (out / "encoders.py").read_text()
    assert "def get_encoder(name: str, *, rngs: nnx.Rngs):" in encoders
    assert "return Encoder(**params, rngs=rngs)" in encoders
    assert "super().__init__(BasicBlock, list(layers), rngs=rngs)" in encoders
    assert "timm.create_model(name, pretrained=False, num_classes=0, layers=layers, rngs=rngs)" in encoders
    # timm's builder is handed the model class (`model_cls: Callable[..., ModelT]`, ModelT bound to nn.Module)
    assert "model = with_rngs_if_taken(model_cls, rngs)(**kwargs)" in (out / "timm/models/_builder.py").read_text()
    # create_model (`-> nn.Module`) takes rngs of its own, out of the **kwargs it stores on the model
    factory = (out / "timm/models/_factory.py").read_text()
    assert "*, rngs: nnx.Rngs, **kwargs: Any," in factory
    assert "model = with_rngs_if_taken(create_fn, rngs)(" in factory


@pytest.mark.parametrize("encoder", [
    "resnet",
    "timm-resnet",  # (was a strict xfail: create_model got rngs inside the **kwargs it stores on the model)
])
def test_the_segmentation_fixture_passes_check_against_torch(segmentation, encoder):
    out, env, _ = segmentation
    run = subprocess.run([sys.executable, "-c", CHECK, str(FIXTURE), str(out), encoder], capture_output=True,
                         text=True, env=env, timeout=900)
    assert run.stdout.split("\n")[:2] == ["eval PASSED", "train PASSED"], run.stdout[-2000:] + run.stderr[-3000:]
