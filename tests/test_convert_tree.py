"""`porter convert DIR`: a package converted as a whole, the report, --inplace, --diff, --annotate."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from porter.cli import main
from porter.convert.tree import Task, convert_paths, convert_task

MODEL = textwrap.dedent("""\
    import torch
    import torch.nn as nn

    from .utils import hidden_size
    from .layers import Block
    from pkg.layers import make_head, scale


    class Net(nn.Module):
        def __init__(self, d=4):
            super().__init__()
            self.fc = nn.Linear(d, hidden_size(d))
            self.block = Block(hidden_size(d))
            self.head = make_head(hidden_size(d))

        def forward(self, x):
            x = torch.relu(self.fc(x))
            return scale(self.head(self.block(x)))


    def unconvertible(x):
        return torch.special.erfcx(x)
    """)
LAYERS = textwrap.dedent("""\
    import torch.nn as nn


    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.fc = nn.Linear(d, d)

        def forward(self, x):
            return self.fc(x)


    def make_head(d):
        return nn.Linear(d, 2)


    def scale(x):
        return 2 * x
    """)
UTILS = "def hidden_size(d):\n    return 2 * d\n"
INIT = "from .model import Net\nfrom pkg.layers import Block, scale\n"
BROKEN = "import torch\n\ndef f(x:\n    return x\n"


@pytest.fixture
def project(tmp_path):
    """proj/pkg: __init__.py, relative and absolute imports, a syntax error, a no-torch file, data."""
    pkg = tmp_path / "proj" / "pkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text(INIT)
    (pkg / "model.py").write_text(MODEL)
    (pkg / "layers.py").write_text(LAYERS)
    (pkg / "utils.py").write_text(UTILS)
    (pkg / "broken.py").write_text(BROKEN)
    (pkg / "data" / "config.json").write_bytes(b'{"lr": 0.1}\n')
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0junk")
    return tmp_path / "proj"


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_acceptance_a_package_converts_with_its_layout_report_and_exit_code(project, tmp_path, capsys):
    before = snapshot(project)
    out = tmp_path / "out"
    assert main(["convert", str(project), "-o", str(out), "-j", "2"]) == 1  # the syntax error fails
    err = capsys.readouterr().err

    # layout kept; the failed file not written; data copied; caches not copied; no torch: unchanged
    written = snapshot(out)
    assert set(written) == {"pkg/__init__.py", "pkg/model.py", "pkg/layers.py", "pkg/utils.py",
                            "pkg/data/config.json", "porter_report.txt", "porter_report.json"}
    assert written["pkg/data/config.json"] == b'{"lr": 0.1}\n'
    assert written["pkg/utils.py"] == UTILS.encode()
    assert written["pkg/__init__.py"] == INIT.encode()
    assert b"nnx.Linear(d, hidden_size(d), rngs=rngs)" in written["pkg/model.py"]
    assert b"class Block(nnx.Module):" in written["pkg/layers.py"]
    # what other files of the tree define is known where it is used: Block and make_head get rngs
    assert b"self.block = Block(hidden_size(d), rngs=rngs)" in written["pkg/model.py"]
    assert b"self.head = make_head(hidden_size(d), rngs=rngs)" in written["pkg/model.py"]
    assert b"def make_head(d, *, rngs: nnx.Rngs):" in written["pkg/layers.py"]
    assert snapshot(project) == before  # the input is never modified

    # the report lists exactly the expected diagnostics
    report = json.loads(written["porter_report.json"])
    found = [(d["path"], d["line"], d["col"], d["code"]) for f in report["files"] for d in f["diagnostics"]]
    pkg = project / "pkg"
    assert found == [(str(pkg / "broken.py"), 3, 6, "PT001"), (str(pkg / "model.py"), 22, 12, "PT003")]
    assert report["summary"] | {} == report["summary"]
    summary = report["summary"]
    assert (summary["files"], summary["clean"], summary["issues"], summary["skipped"], summary["failed"],
            summary["copied"]) == (5, 1, 1, 2, 1, 1)
    assert summary["by_code"] == {"PT001": 1, "PT003": 1}
    statuses = {f["relative"]: f["status"] for f in report["files"]}
    assert statuses == {"pkg/__init__.py": "skipped", "pkg/broken.py": "failed", "pkg/layers.py": "clean",
                        "pkg/model.py": "issues", "pkg/utils.py": "skipped"}
    text = written["porter_report.txt"].decode()
    assert text.index("Summary") < text.index("Warnings and errors") < text.index("Changes")
    assert f"{pkg / 'model.py'}:22:12 PT003 error torch.special.erfcx has no conversion rule" in text
    assert "    hint: Left unchanged." in text
    assert f"{pkg / 'broken.py'}:3:6 PT001 error" in err

    # relative and absolute intra-package imports keep working: the converted package runs
    result = subprocess.run(
        [sys.executable, "-c",
         "import jax.numpy as jnp\nfrom flax import nnx\nimport pkg\n"
         "net = pkg.Net(rngs=nnx.Rngs(0))\nprint(net(jnp.ones((3, 4))).shape, pkg.Block, pkg.scale(1))"],
        cwd=out, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(out)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("(3, 2) <class 'pkg.layers.Block'> 2")


def test_an_existing_output_is_refused_without_force(project, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["convert", str(project), "-o", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert main(["convert", str(project), "-o", str(out), "--force"]) == 1
    assert (out / "mine.txt").read_text() == "keep" and (out / "pkg" / "model.py").exists()


def test_an_output_inside_the_source_is_refused(project, capsys):
    assert main(["convert", str(project), "-o", str(project / "jax")]) == 2
    assert "overlap" in capsys.readouterr().err


def test_undecodable_bytes_and_a_crashing_pass_are_reported_and_skipped(project, tmp_path, monkeypatch, capsys):
    (project / "pkg" / "latin.py").write_bytes(b"import torch\nname = 'caf\xe9'\n")
    import porter.convert.tree as tree

    real = tree.convert_python

    def crash_on_layers(text, filename, **options):
        if filename.endswith("layers.py"):
            raise IndexError("list index out of range")
        return real(text, filename, **options)

    monkeypatch.setattr(tree, "convert_python", crash_on_layers)
    out = tmp_path / "out"
    assert main(["convert", str(project), "-o", str(out), "-j", "1"]) == 1
    report = json.loads((out / "porter_report.json").read_text())
    by_file = {f["relative"]: f for f in report["files"]}
    assert [(d["code"], d["line"], d["col"]) for d in by_file["pkg/latin.py"]["diagnostics"]] == [("PT030", 2, 12)]
    crash = by_file["pkg/layers.py"]
    assert crash["status"] == "failed" and [d["code"] for d in crash["diagnostics"]] == ["PT031"]
    assert "IndexError: list index out of range" in crash["error"] and "crash_on_layers" in crash["error"]
    assert not (out / "pkg" / "layers.py").exists() and not (out / "pkg" / "latin.py").exists()
    assert (out / "pkg" / "model.py").exists()  # the rest converted
    assert report["summary"]["failed"] == 3


def test_inplace_rewrites_the_sources_after_backing_them_up(project, capsys):
    original = (project / "pkg" / "model.py").read_text()
    assert main(["convert", str(project), "--inplace"]) == 1
    err = capsys.readouterr().err
    backup = project.parent / "proj.porter-backup"
    assert "--inplace rewrites the files" in err and str(backup) in err
    assert "nnx.Module" in (project / "pkg" / "model.py").read_text()
    assert (backup / "pkg" / "model.py").read_text() == original
    assert (project / "pkg" / "utils.py").read_text() == UTILS  # unchanged files untouched, not backed up
    assert not (backup / "pkg" / "utils.py").exists()
    assert (project / "pkg" / "broken.py").read_text() == BROKEN
    assert (backup / "porter_report.json").exists()
    # a second run never overwrites the first backup
    assert main(["convert", str(project), "--inplace"]) == 1
    assert (backup / "pkg" / "model.py").read_text() == original
    assert (project.parent / "proj.porter-backup-2" / "porter_report.txt").exists()


def test_diff_prints_a_unified_diff_and_writes_nothing(project, capsys):
    before = snapshot(project)
    assert main(["convert", str(project), "--diff"]) == 1
    out = capsys.readouterr().out
    assert "--- a/pkg/model.py\n+++ b/pkg/model.py\n" in out
    assert "-class Net(nn.Module):\n" in out and "+class Net(nnx.Module):\n" in out
    assert "utils.py" not in out
    assert snapshot(project) == before


def test_annotate_comments_each_spot_once(project, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["convert", str(project), "-o", str(out), "--annotate"]) == 1
    converted = (out / "pkg" / "model.py").read_text()
    comment = "    # porter: PT003 torch.special.erfcx has no conversion rule; left unchanged\n"
    assert comment + "    return torch.special.erfcx(x)\n" in converted
    again = tmp_path / "again"
    assert main(["convert", str(out / "pkg" / "model.py"), "-o", str(again), "--annotate"]) == 1
    assert again.read_text() == converted  # porter on its own annotated output: nothing added


def test_single_file_report_diff_and_inplace(tmp_path, capsys):
    src = tmp_path / "m.py"
    src.write_text("import torch.nn as nn\n\nlayer = nn.Linear(2, 2)\n")
    assert main(["convert", str(src), "--diff"]) == 0
    assert "+layer = nnx.Linear(2, 2, rngs=nnx.Rngs(0))" in capsys.readouterr().out
    assert main(["convert", str(src), "-o", str(tmp_path / "o.py"), "--report", str(tmp_path / "rep")]) == 0
    report = json.loads((tmp_path / "rep" / "porter_report.json").read_text())
    assert report["schema"] == "porter-report/1" and report["mode"] == "file"
    assert [d["code"] for d in report["files"][0]["diagnostics"]] == ["PT007"]
    assert main(["convert", str(src), "--inplace"]) == 0
    assert "nnx.Linear" in src.read_text()
    assert "nn.Linear(2, 2)" in (tmp_path / "m.py.porter-backup").read_text()


def test_force_deletes_the_stale_output_of_a_file_that_fails_now(project, tmp_path, capsys):
    broken = project / "pkg" / "broken.py"
    broken.write_text("import torch.nn as nn\n\nlayer = nn.Linear(2, 2)\n")
    out = tmp_path / "out"
    assert main(["convert", str(project), "-o", str(out)]) == 1  # model.py's PT003
    assert "nnx.Linear" in (out / "pkg" / "broken.py").read_text()
    (out / "mine.txt").write_text("keep")
    broken.write_text(BROKEN)  # fails this time
    capsys.readouterr()
    assert main(["convert", str(project), "-o", str(out), "--force"]) == 1
    err = capsys.readouterr().err
    assert not (out / "pkg" / "broken.py").exists()  # OUT says what the report says: not converted
    assert "removed" in err and "pkg/broken.py" in err
    report = json.loads((out / "porter_report.json").read_text())
    assert report["removed"] == ["pkg/broken.py"]
    assert {f["relative"]: f["status"] for f in report["files"]}["pkg/broken.py"] == "failed"
    text = (out / "porter_report.txt").read_text()
    assert "1 output(s) of an earlier run removed" in text and "  pkg/broken.py\n" in text
    assert (out / "mine.txt").read_text() == "keep" and (out / "pkg" / "model.py").exists()


def test_single_file_inplace_warns_first(tmp_path, capsys):
    src = tmp_path / "m.py"
    src.write_text("import torch.nn as nn\n\nlayer = nn.Linear(2, 2)\n")
    assert main(["convert", str(src), "--inplace"]) == 0
    err = capsys.readouterr().err
    backup = tmp_path / "m.py.porter-backup"
    assert err.startswith(f"porter: warning: --inplace rewrites {src}") and str(backup) in err.splitlines()[0]
    assert backup.exists()


def test_report_lists_files_and_copies_sorted_by_relative_path(project, tmp_path):
    pkg = project / "pkg"
    (pkg / "sub").mkdir()
    (pkg / "sub" / "__init__.py").write_text(BROKEN)
    (pkg / "sub" / "table.csv").write_text("a,b\n")
    (pkg / "zz.py").write_text(BROKEN)
    (pkg / "zz.txt").write_text("z\n")
    out = tmp_path / "out"
    assert main(["convert", str(project), "-o", str(out), "-j", "1"]) == 1
    report = json.loads((out / "porter_report.json").read_text())
    relatives = [f["relative"] for f in report["files"]]
    assert relatives == sorted(relatives) and relatives.index("pkg/sub/__init__.py") < relatives.index("pkg/utils.py")
    assert report["copied"] == ["pkg/data/config.json", "pkg/sub/table.csv", "pkg/zz.txt"]
    text = (out / "porter_report.txt").read_text()  # the text report in the same order
    assert text.index(f"{pkg / 'model.py'}:22:12") < text.index(f"{pkg / 'sub' / '__init__.py'}:3:6") \
        < text.index(f"{pkg / 'zz.py'}:3:6")


def test_a_previous_outputs_report_is_not_copied(project, tmp_path, capsys):
    out, again = tmp_path / "out", tmp_path / "again"
    main(["convert", str(project), "-o", str(out)])
    capsys.readouterr()
    main(["convert", str(out), "-o", str(again)])
    err = capsys.readouterr().err
    report = json.loads((again / "porter_report.json").read_text())
    assert report["copied"] == ["pkg/data/config.json"] and report["source"] == str(out)
    assert "not copied" in err and str(out / "porter_report.json") in err


def test_parallel_and_sequential_runs_agree(project):
    tasks = [Task(str(p), str(p), p.name, "python") for p in sorted((project / "pkg").glob("*.py"))]
    one = convert_paths(tasks, jobs=1)
    two = convert_paths(tasks, jobs=2)
    strip = lambda rs: [(r.relative, r.status, r.code, r.diagnostics, r.changes) for r in rs]  # noqa: E731
    assert strip(one) == strip(two)


def test_a_file_that_cannot_be_read_is_a_failed_result(tmp_path):
    result = convert_task(Task(str(tmp_path / "gone.py"), "gone.py", "gone.py", "python"))
    assert result.status == "failed" and result.diagnostics[0].code == "PT030"


def test_explain_prints_a_codes_and_a_rules_documentation(capsys):
    assert main(["explain", "PT003"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PT003 (error): torch API without a conversion rule") and "What to do:" in out
    assert main(["explain", "pt031"]) == 0
    assert "internal error" in capsys.readouterr().out
    assert main(["explain", "PT101"]) == 0
    out = capsys.readouterr().out
    assert "torch.nn.Linear" in out and "nnx.Linear" in out and "example:" in out
    assert main(["explain"]) == 0
    assert "PT030" in capsys.readouterr().out
    assert main(["explain", "PT999"]) == 2


class _Stream:
    def __init__(self, tty):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_the_progress_bar_shows_on_a_terminal_only():
    from porter.convert.tree import ProgressBar

    quiet, shown = _Stream(False), _Stream(True)
    for stream in (quiet, shown):
        bar = ProgressBar(stream, width=10)
        for done in range(3):
            bar(done, 2)
        bar.close()
    assert quiet.text == ""
    assert "\rporter: [#####-----] 1/2 files" in shown.text and shown.text.endswith("\r")


# ---------------------------------------------------------------- the order files convert in

BASE = textwrap.dedent("""\
    import torch.nn as nn


    class Base(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.fc = nn.Linear(d, d)
    """)
DERIVED = textwrap.dedent("""\
    from .base import Base


    class Derived(Base):  # a module class only once Base is known to be one
        pass
    """)
USER = textwrap.dedent("""\
    import torch.nn as nn
    from pkg import (  # through the package's re-export
        Derived as D,
        VERSION,
    )


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.d = D(4)
    """)


def _convert_counting(root: Path, monkeypatch) -> tuple[dict[str, bytes], dict[str, int]]:
    import porter.convert.tree as tree

    counts: dict[str, int] = {}
    convert = tree.convert_task

    def counting(task):
        counts[task.relative] = counts.get(task.relative, 0) + 1
        return convert(task)

    monkeypatch.setattr(tree, "convert_task", counting)
    tasks = tree.plan(root).tasks
    results = tree.convert_tree(tasks, root_name=root.name, jobs=1)
    return {r.relative: r.code for r in results}, counts


def test_each_file_converts_once_after_the_files_it_learns_from(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .derived import Derived\nfrom .user import Net\nVERSION = '1'\n")
    (pkg / "base.py").write_text(BASE)
    (pkg / "derived.py").write_text(DERIVED)
    (pkg / "user.py").write_text(USER)
    code, counts = _convert_counting(pkg, monkeypatch)
    # user.py imports Derived through __init__.py, which imports user.py: a cycle of files, not of
    # the names that matter (VERSION is a constant), so each file converts once, knowing what it uses
    assert counts == {"__init__.py": 1, "base.py": 1, "derived.py": 1, "user.py": 1}
    assert code["derived.py"] == DERIVED.encode()  # no torch in it, but what it defines is learnt
    assert b"self.d = D(4, rngs=rngs)" in code["user.py"]


def test_an_import_cycle_converts_again_until_both_files_know(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text(textwrap.dedent("""\
        import torch.nn as nn
        from .b import Head


        class Body(nn.Module):
            def __init__(self):
                super().__init__()
                self.head = Head()
        """))
    (pkg / "b.py").write_text(textwrap.dedent("""\
        import torch.nn as nn
        from .a import Body


        class Head(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(2, 2)


        def build():
            return Body()
        """))
    code, counts = _convert_counting(pkg, monkeypatch)
    assert sorted(counts.values()) == [1, 2]  # one of the two starts without knowing the other
    assert b"self.head = Head(rngs=rngs)" in code["a.py"]
    assert b"def build(*, rngs: nnx.Rngs):" in code["b.py"] and b"return Body(rngs=rngs)" in code["b.py"]


def test_the_text_scan_reads_imports_in_every_spelling(tmp_path):
    from porter.convert.tree import TextScan

    source = tmp_path / "m.py"
    source.write_text(textwrap.dedent("""\
        from .a import X, Y as Z  # comment
        from ..b.c import (
            P,  # why
            Q as R,
        )
        from pkg.d import \\
            S
        def f():
            from .e import inner
        class K(Base):
            pass
        async def g():
            pass
        text = '''
        from .fake import Nothing
        '''
        """))
    scan = TextScan.of(str(source))
    assert scan.defined == {"f", "K", "g"}
    assert scan.imports[:6] == [(1, "a", "X", "X"), (1, "a", "Y", "Z"), (2, "b.c", "P", "P"), (2, "b.c", "Q", "R"),
                                (0, "pkg.d", "S", "S"), (1, "fake", "Nothing", "Nothing")]


def test_a_file_without_torch_subclassing_a_module_class_of_the_tree_converts(tmp_path, monkeypatch):
    # issue 12: `from .a import Base; class Child(Base): ...` with no torch word came out unchanged
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(BASE + "\n    def forward(self, x):\n        return self.fc(x)\n")
    (pkg / "b.py").write_text(textwrap.dedent("""\
        from .a import Base


        class Child(Base):
            def __init__(self, d):
                super().__init__(d)
                self.extra = Base(d)

            def forward(self, x):
                return self.extra(super().forward(x))


        def make(d):
            return Base(d)
        """))
    code, _ = _convert_counting(pkg, monkeypatch)
    b = code["b.py"].decode()
    for line in ("def __init__(self, d, *, rngs: nnx.Rngs):", "super().__init__(d, rngs=rngs)",
                 "self.extra = Base(d, rngs=rngs)", "def __call__(self, x):", "super().__call__(x)",
                 "def make(d, *, rngs: nnx.Rngs):"):
        assert line in b, b
    import numpy as np
    from flax import nnx

    namespace: dict = {}
    exec(code["a.py"].decode() + b.replace("from .a import Base", ""), namespace)
    child = namespace["Child"](3, rngs=nnx.Rngs(0))
    assert np.asarray(child(np.ones((2, 3), np.float32))).shape == (2, 3)


def test_the_report_gets_the_mode_the_umask_gives(project, tmp_path):
    old = os.umask(0o027)
    try:
        main(["convert", str(project), "-o", str(tmp_path / "out")])
    finally:
        os.umask(old)
    for name in ("porter_report.txt", "porter_report.json"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600


# ---------------------------------------------------------------------------- nesting, crashed workers
DEEP = "import torch\n\nx = " + "(" * 2000 + "torch.ones(2)" + ")" * 2000 + "\n"  # segfaults libcst's parser


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_nesting_too_deep_for_the_parser_is_pt034_and_the_rest_converts(project, tmp_path, jobs):
    (project / "pkg" / "deep.py").write_text(DEEP)
    out = tmp_path / "out"
    assert main(["convert", str(project), "-o", str(out), "-j", jobs]) == 1
    report = json.loads((out / "porter_report.json").read_text())
    deep = {f["relative"]: f for f in report["files"]}["pkg/deep.py"]
    assert deep["status"] == "failed"
    assert [(d["code"], d["line"], d["col"]) for d in deep["diagnostics"]] == [("PT034", 3, 205)]
    assert "more than 200 nested brackets" in deep["diagnostics"][0]["message"]
    assert not (out / "pkg" / "deep.py").exists() and (out / "pkg" / "model.py").exists()


@pytest.mark.parametrize("source, where", [
    ("x = " + "f(" * 1000 + "1" + ")" * 1000 + "\n", (1, 406)),  # nested calls: the 201st bracket
    ("x = " + " + ".join(["a"] * 5000) + "\n", (1, 4003)),  # a long sum: its 1,001st operator, = counted
    ("y = [" + ", ".join(["a + b"] * 5000) + "]\n", None),  # long, but shallow
    ("s = '" + "(" * 5000 + "'  # " + "[" * 5000 + "\n", None),  # brackets in a string and a comment
    ("x = " + "(" * 200 + "1" + ")" * 200 + "\n", None),  # Python's own limit, just
    ("x = 1 + \\\n" + "1 + \\\n" * 1200 + "1\n", (1000, 3)),  # one statement over many lines
    ("".join(" " * i + "if x:\n" for i in range(101)) + " " * 101 + "pass\n", (102, 1)),  # level 101
    ("".join(" " * i + "if x:\n" for i in range(99)) + " " * 99 + "pass\n", None),
])
def test_too_deep_finds_what_would_crash_the_parser_and_nothing_else(source, where):
    from porter.convert.nesting import too_deep
    found = too_deep(source)
    assert (found[:2] if found else None) == where


def test_the_nesting_limits_are_well_below_where_libcst_crashes(tmp_path):
    """What the check lets through parses: 200 nested brackets holding a 790-term sum (the check's
    1,000 levels), in a process of its own (a crash would be its exit code, -11)."""
    from porter.convert.nesting import too_deep
    source = "x = " + "f(" * 200 + " + ".join(["a"] * 790) + ")" * 200 + "\n"
    assert too_deep(source) is None
    (tmp_path / "m.py").write_text(source)
    parsed = subprocess.run([sys.executable, "-c", "import libcst, sys; libcst.parse_module(open(sys.argv[1]).read())",
                             str(tmp_path / "m.py")], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr[-500:]


def test_a_worker_that_dies_loses_only_its_own_file(project, tmp_path):
    """A file that kills its worker process (a crash in native code) is PT031; the files that were
    converting beside it in other workers are converted again, alone, and the rest goes on."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""\
        import os, sys
        import porter.convert.tree as tree
        real = tree.convert_python
        def crash_on_layers(text, filename, **options):
            if filename.endswith("layers.py"):
                os._exit(139)  # as a segfault in libcst's parser would
            return real(text, filename, **options)
        tree.convert_python = crash_on_layers
        from porter.cli import main
        sys.exit(main(["convert", {str(project)!r}, "-o", {str(out)!r}, "-j", "2"]))
        """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    report = json.loads((out / "porter_report.json").read_text())
    statuses = {f["relative"]: f["status"] for f in report["files"]}
    assert statuses == {"pkg/__init__.py": "skipped", "pkg/broken.py": "failed", "pkg/layers.py": "failed",
                        "pkg/model.py": "issues", "pkg/utils.py": "skipped"}
    layers = {f["relative"]: f for f in report["files"]}["pkg/layers.py"]
    assert [d["code"] for d in layers["diagnostics"]] == ["PT031"] and "died" in layers["error"]
    assert (out / "pkg" / "model.py").exists() and not (out / "pkg" / "layers.py").exists()


# ---------------------------------------------------------------------------- safe with the user's files
def test_inplace_on_dot_twice_keeps_the_backups_beside_the_tree_and_undo_restores(project, monkeypatch, capsys):
    """`porter convert . --inplace` used to write ./.porter-backup inside the tree; a second run then
    converted the backup too, and the undo command restored converted code."""
    original = snapshot(project)
    monkeypatch.chdir(project)
    assert main(["convert", ".", "--inplace"]) == 1
    assert main(["convert", ".", "--inplace"]) == 1
    assert not [p for p in project.rglob("*") if "porter-backup" in p.name]  # nothing of porter's inside
    first, second = project.parent / "proj.porter-backup", project.parent / "proj.porter-backup-2"
    assert (first / "pkg" / "model.py").read_text() == MODEL and (second / "porter_report.json").exists()
    assert "undo: cp -r" in capsys.readouterr().err
    subprocess.run(["cp", "-r", f"{first}/.", f"{project}/"], check=True)  # the README's undo command
    restored = snapshot(project)
    assert {k: v for k, v in restored.items() if k not in ("porter_report.txt", "porter_report.json")} == original


def test_a_tree_never_enters_porters_own_backups_and_outputs(project, tmp_path, capsys):
    pkg = project / "pkg"
    (project / "pkg.porter-backup" / "pkg").mkdir(parents=True)
    (project / "pkg.porter-backup" / "pkg" / "model.py").write_text(MODEL)
    (pkg / "model.py.porter-backup").write_text(MODEL)
    earlier = project / "jax_out"
    earlier.mkdir()
    for name in ("porter_report.txt", "porter_report.json", "model.py"):
        (earlier / name).write_text("x = 1\n")
    out = tmp_path / "out"
    assert main(["convert", str(project), "-o", str(out)]) == 1
    report = json.loads((out / "porter_report.json").read_text())
    not_read = {entry["relative"]: entry["reason"] for entry in report["not_read"]}
    assert set(not_read) == {"pkg.porter-backup", "pkg/model.py.porter-backup", "jax_out"}
    assert "porter's own backup" in not_read["pkg.porter-backup"] and "porter_report.json" in not_read["jax_out"]
    assert not (out / "pkg.porter-backup").exists() and not (out / "jax_out").exists()
    assert f"porter: not read: {project / 'jax_out'}" in capsys.readouterr().err


def test_force_into_a_directory_for_one_file_is_a_clear_error(tmp_path, capsys):
    src = tmp_path / "one.py"
    src.write_text(LAYERS)
    existing = tmp_path / "existing_dir"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep")
    assert main(["convert", str(src), "-o", str(existing), "--force"]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert snapshot(existing) == {"mine.txt": b"keep"}


def test_force_into_an_output_with_a_directory_where_a_file_goes_changes_nothing(project, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "pkg" / "model.py").mkdir(parents=True)
    (out / "pkg" / "model.py" / "mine.txt").write_text("keep")
    (out / "porter_report.txt").write_text("an old report")
    before = snapshot(out)
    assert main(["convert", str(project), "-o", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'pkg' / 'model.py'} is a directory where porter writes a file" in err
    assert snapshot(out) == before


@pytest.mark.parametrize("existing", [True, False])
def test_a_full_disk_leaves_the_output_as_it_was(project, tmp_path, monkeypatch, capsys, existing):
    import errno
    import porter.convert.tree as tree

    out = tmp_path / "out"
    if existing:
        assert main(["convert", str(project), "-o", str(out)]) == 1
        (out / "mine.txt").write_text("keep")
    before = snapshot(out) if existing else None
    real, calls = tree.write_bytes_atomically, []

    def full_at_the_third(path, data, **options):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data, **options)

    monkeypatch.setattr(tree, "write_bytes_atomically", full_at_the_third)
    capsys.readouterr()
    assert main(["convert", str(project), "-o", str(out), "--force", "-j", "1"]) == 1
    err = capsys.readouterr().err
    assert f"porter: error: cannot write {out}: No space left on device" in err
    assert (snapshot(out) == before) if existing else not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["proj"] + (["out"] if existing else []))


def test_force_updates_the_output_whole_and_keeps_the_users_files(project, tmp_path):
    out = tmp_path / "out"
    assert main(["convert", str(project), "-o", str(out)]) == 1
    (out / "mine.txt").write_text("keep")
    (out / "notes").mkdir()
    (out / "notes" / "a.md").write_text("note")
    os.symlink("mine.txt", out / "link.txt")
    (project / "pkg" / "utils.py").write_text(UTILS + "# changed\n")
    assert main(["convert", str(project), "-o", str(out), "--force"]) == 1
    assert (out / "pkg" / "utils.py").read_text().endswith("# changed\n")
    assert (out / "mine.txt").read_text() == "keep" and (out / "notes" / "a.md").read_text() == "note"
    assert os.readlink(out / "link.txt") == "mine.txt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "proj"]  # no temporary left


def test_symlinks_are_reported_not_followed_out_of_the_tree_and_loops_do_not_stop_it(project, tmp_path, capsys):
    pkg = project / "pkg"
    (tmp_path / "secret.txt").write_text("password")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "far.py").write_text(LAYERS)
    os.symlink(tmp_path / "secret.txt", pkg / "link")  # as link -> /etc/passwd
    os.symlink(tmp_path / "elsewhere", pkg / "far")
    os.symlink("layers.py", pkg / "same_layers.py")  # inside the tree
    os.symlink("loop", pkg / "loop")
    os.symlink("..", pkg / "up")  # a directory loop when followed
    out = tmp_path / "out"
    assert main(["convert", str(project), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    report = json.loads((out / "porter_report.json").read_text())
    not_read = {entry["relative"]: entry["reason"] for entry in report["not_read"]}
    assert set(not_read) == {"pkg/link", "pkg/far", "pkg/same_layers.py", "pkg/loop", "pkg/up"}
    assert "outside the tree" in not_read["pkg/link"] and "outside the tree" in not_read["pkg/far"]
    assert "symlink loop" in not_read["pkg/loop"] and "--follow-symlinks" in not_read["pkg/same_layers.py"]
    assert f"porter: not read: {pkg / 'link'}" in err
    assert sorted(p.name for p in (out / "pkg").iterdir()) == ["__init__.py", "data", "layers.py", "model.py",
                                                               "utils.py"]
    assert "pkg/link: symlink to" in (out / "porter_report.txt").read_text()

    again = tmp_path / "again"
    assert main(["convert", str(project), "-o", str(again), "--follow-symlinks"]) == 1
    report = json.loads((again / "porter_report.json").read_text())
    not_read = {entry["relative"]: entry["reason"] for entry in report["not_read"]}
    assert set(not_read) == {"pkg/link", "pkg/far", "pkg/loop", "pkg/up"} and "loop" in not_read["pkg/up"]
    assert (again / "pkg" / "same_layers.py").read_text() == (again / "pkg" / "layers.py").read_text()
    assert not (again / "pkg" / "same_layers.py").is_symlink()


def test_a_fifo_in_a_tree_is_reported_not_read(project, tmp_path):
    os.mkfifo(project / "pkg" / "pipe.py")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "porter", "convert", str(project), "-o", str(out)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    report = json.loads((out / "porter_report.json").read_text())
    assert report["not_read"] == [{"relative": "pkg/pipe.py",
                                   "reason": "not a regular file (a FIFO, socket or device): not read"}]
    assert (out / "pkg" / "model.py").exists() and not (out / "pkg" / "pipe.py").exists()
    one = subprocess.run([sys.executable, "-m", "porter", "convert", str(project / "pkg" / "pipe.py")],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert one.returncode == 2 and "not a regular file" in one.stderr
    result = convert_task(Task(str(project / "pkg" / "pipe.py"), "pipe.py", "pipe.py", "python"))
    assert result.status == "failed" and "not a regular file" in result.diagnostics[0].message


def test_the_module_analysis_does_not_run_a_matcher_visitor_over_the_whole_module(monkeypatch):
    """Each libcst.matchers.findall over the module is a full visitor run: the distributed and
    training analyses asked six of them (and one per loop, per name) of every file that mentions
    'parallel' (torch's own nn/modules do), most of the time a large file took."""
    import libcst
    import libcst.matchers as m
    from porter.convert.pipeline import convert_source

    whole, real = [], m.findall

    def counting(tree, matcher, **options):
        if isinstance(tree, libcst.Module):
            whole.append(matcher)
        return real(tree, matcher, **options)

    monkeypatch.setattr(m, "findall", counting)
    loops = "".join(f"for x in data:\n    loss = crit(model(x))\n    opt.step()\n    n{k} = 1\n" for k in range(20))
    source = ("import torch\nimport torch.nn as nn\n\n# data parallel training\nmodel = nn.Linear(2, 2)\n"
              "opt = torch.optim.SGD(model.parameters(), lr=0.1)\ncrit = nn.MSELoss(reduction='sum')\n" + loops)
    assert "optax" in convert_source(source).code
    assert whole == []


def test_a_sum_of_thousands_of_terms_is_pt034_at_once():
    from porter.convert.pipeline import convert_source

    start = time.process_time()
    conversion = convert_source("import torch\nx = " + " + ".join(["torch.ones(2)"] * 5000) + "\n")
    assert conversion.failed and [d.code for d in conversion.diagnostics] == ["PT034"]
    assert time.process_time() - start < 5  # it took 70-260 s to fail with a RecursionError


def test_a_killed_runs_temporaries_are_removed_by_the_next_run(project, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended
    stale = [tmp_path / f".out.porter-tmp-{pid}-x1y2", tmp_path / f".out.porter-old-{pid}-123"]
    live = tmp_path / f".out.porter-tmp-{os.getpid()}-abcd"  # a run still going (this process)
    for path in (*stale, live):
        (path / "pkg").mkdir(parents=True)
    assert main(["convert", str(project), "-o", str(tmp_path / "out")]) == 1
    assert not any(path.exists() for path in stale) and live.exists()


def test_inplace_following_symlinks_rewrites_the_file_not_the_link(project):
    pkg = project / "pkg"
    os.symlink("layers.py", pkg / "same_layers.py")
    assert main(["convert", str(project), "--inplace", "--follow-symlinks"]) == 1
    assert os.readlink(pkg / "same_layers.py") == "layers.py"
    assert "class Block(nnx.Module):" in (pkg / "layers.py").read_text()


def test_a_module_class_of_a_module_imported_whole(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "nets").mkdir(parents=True)
    (src / "base.py").write_text(BASE)
    (src / "nets" / "__init__.py").write_text("")
    (src / "nets" / "more.py").write_text(BASE.replace("Base", "More"))
    (src / "train.py").write_text(textwrap.dedent("""\
        import torch
        import base
        import nets.more as nm

        model = base.Base(4)
        other = nm.More(4)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        """))
    code, _ = _convert_counting(src, monkeypatch)
    assert b"model = base.Base(4, rngs=nnx.Rngs(0))" in code["train.py"]
    assert b"other = nm.More(4, rngs=nnx.Rngs(0))" in code["train.py"]


def test_a_module_class_of_a_submodule_imported_from_its_package(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text(BASE)
    (pkg / "train.py").write_text("import torch\nfrom . import base\n\nmodel = base.Base(4)\n"
                                  "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n")
    code, _ = _convert_counting(pkg, monkeypatch)
    assert b"model = base.Base(4, rngs=nnx.Rngs(0))" in code["train.py"]
