"""`porter convert DIR`: the emitted helpers go once into a module of the output (porter_helpers.py),
which the converted files import; the converted files run (porter/convert/shared_helpers.py)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from porter.cli import main

MODEL = textwrap.dedent("""\
    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            x = F.max_pool2d(x, 2)
            return self.fc(x.flatten(1))
    """)

SCRIPT = textwrap.dedent("""\
    import torch
    import torch.nn.functional as F

    from {module} import Net

    model = Net()
    x = torch.ones(2, 1, 4, 4)
    y = torch.zeros(2, dtype=torch.long)
    loss = F.cross_entropy(model(x), y)
    print("loss", float(loss))
    """)


def _write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _convert(tmp_path: Path, files: dict[str, str], *extra: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    source, out = tmp_path / "src", tmp_path / "out"
    _write(source, files)
    assert main(["convert", str(source), "-o", str(out), "-j", "1", *extra]) == 0
    return out


def _run(cwd: Path, *args: str) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("PYTHONPATH", None)  # the converted code needs no porter
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_flat_tree_files_import_the_helpers_from_one_module_and_run(tmp_path):
    out = _convert(tmp_path, {"net.py": MODEL, "train.py": SCRIPT.format(module="net")})
    helpers = (out / "porter_helpers.py").read_text()
    assert [p.name for p in out.rglob("porter_helpers*.py")] == ["porter_helpers.py"]
    net, train = (out / "net.py").read_text(), (out / "train.py").read_text()
    assert "from porter_helpers import max_pool_nchw\n" in net
    assert "from porter_helpers import cross_entropy_loss\n" in train
    for converted in (net, train):
        assert "def max_pool_nchw" not in converted and "def cross_entropy_loss" not in converted
    # only the helpers the tree uses (and theirs), torch-free and porter-free
    for name in ("def max_pool_nchw", "def max_pool_tiles", "def cross_entropy_loss", "def reduce_loss"):
        assert name in helpers
    assert "def avg_pool_nchw" not in helpers and "class TorchBatchNorm" not in helpers
    assert "import torch" not in helpers and "porter." not in helpers
    assert "loss" in _run(out, "train.py")


def test_single_file_keeps_its_helpers_inline(tmp_path):
    (tmp_path / "net.py").write_text(MODEL)
    assert main(["convert", str(tmp_path / "net.py"), "-o", str(tmp_path / "net_jax.py")]) == 0
    code = (tmp_path / "net_jax.py").read_text()
    assert "def max_pool_nchw" in code and "porter_helpers" not in code
    assert not (tmp_path / "porter_helpers.py").exists()


def test_package_files_import_the_helpers_relatively_from_the_top_package(tmp_path):
    out = _convert(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/models/__init__.py": "",
        "pkg/models/net.py": MODEL,
        "main.py": SCRIPT.format(module="pkg.models.net"),
    })
    assert (out / "pkg" / "porter_helpers.py").is_file()
    assert "from ..porter_helpers import max_pool_nchw\n" in (out / "pkg/models/net.py").read_text()
    assert "def max_pool_nchw" not in (out / "porter_helpers.py").read_text()  # main.py's: the loss only
    assert "from porter_helpers import cross_entropy_loss\n" in (out / "main.py").read_text()
    assert "loss" in _run(out, "main.py")
    _run(out, "-c", "import pkg.models.net as m; m.Net(rngs=__import__('flax').nnx.Rngs(0))")


def test_a_user_file_named_porter_helpers_keeps_its_name(tmp_path):
    mine = "def porter_thing():\n    return 1\n"
    out = _convert(tmp_path, {"net.py": MODEL, "porter_helpers.py": mine})
    assert (out / "porter_helpers.py").read_text() == mine
    assert (out / "porter_helpers_2.py").is_file()
    assert "from porter_helpers_2 import max_pool_nchw\n" in (out / "net.py").read_text()


def test_a_plain_subdirectory_keeps_its_helpers_inline(tmp_path):
    out = _convert(tmp_path, {"tools/net.py": MODEL})
    assert "def max_pool_nchw" in (out / "tools/net.py").read_text()
    assert not list(out.rglob("porter_helpers*.py"))


def test_no_helpers_used_no_module(tmp_path):
    plain = "import torch.nn as nn\n\n\nclass Lin(nn.Module):\n    def __init__(self):\n        super().__init__()\n" \
            "        self.fc = nn.Linear(2, 2)\n\n    def forward(self, x):\n        return self.fc(x)\n"
    out = _convert(tmp_path, {"lin.py": plain})
    assert not list(out.rglob("porter_helpers*.py"))


def test_inplace_writes_the_helpers_module_into_the_tree(tmp_path):
    source = tmp_path / "src"
    _write(source, {"net.py": MODEL, "train.py": SCRIPT.format(module="net")})
    assert main(["convert", str(source), "--inplace", "-j", "1"]) == 0
    assert (source / "porter_helpers.py").is_file()
    assert "from porter_helpers import max_pool_nchw\n" in (source / "net.py").read_text()
    assert "loss" in _run(source, "train.py")


def test_diff_shows_the_helpers_module_as_a_new_file(tmp_path, capsys):
    source = tmp_path / "src"
    _write(source, {"net.py": MODEL})
    main(["convert", str(source), "--diff", "-j", "1"])
    shown = capsys.readouterr().out
    assert "+++ b/porter_helpers.py" in shown and "+def max_pool_nchw" in shown
    assert not (source / "porter_helpers.py").exists()


def test_porter_check_imports_each_trees_own_helpers_module(tmp_path):
    from porter.check.modelspec import import_file

    first = _convert(tmp_path / "a", {"net.py": MODEL})
    second = _convert(tmp_path / "b", {"net.py": MODEL, "train.py": SCRIPT.format(module="net")})
    import_file(first / "net.py")  # imports first/porter_helpers.py (max_pool_nchw only)
    module = import_file(second / "train.py")  # needs cross_entropy_loss, from second/porter_helpers.py
    assert module.loss is not None
