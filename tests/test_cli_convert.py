"""`porter convert` as a user runs it: outputs, exit codes, bad input."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from porter.cli import main
from terminal_signals import as_from_a_terminal

GOOD = textwrap.dedent("""\
    import torch.nn as nn

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)
    """)


def test_converts_a_file_to_the_output(tmp_path, capsys):
    src = tmp_path / "m.py"
    src.write_text(GOOD)
    assert main(["convert", str(src), "-o", str(tmp_path / "out.py")]) == 0
    assert "nnx.Linear(2, 2, rngs=rngs)" in (tmp_path / "out.py").read_text()
    assert src.read_text() == GOOD


def test_without_output_prints_the_code(tmp_path, capsys):
    src = tmp_path / "m.py"
    src.write_text(GOOD)
    assert main(["convert", str(src)]) == 0
    assert "class M(nnx.Module):" in capsys.readouterr().out


def test_syntax_error_names_file_and_line_writes_nothing(tmp_path, capsys):
    src = tmp_path / "bad.py"
    text = "import torch\n\ndef f(x:\n    return x\n"
    src.write_text(text)
    out = tmp_path / "out.py"
    assert main(["convert", str(src), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{src}:3:" in err and "PT001" in err and "syntax error" in err
    assert not out.exists()
    assert src.read_text() == text


def test_error_diagnostics_give_exit_code_1_and_still_write(tmp_path, capsys):
    src = tmp_path / "m.py"
    src.write_text("import torch\n\ny = torch.special.erfcx(torch.zeros(2))\n")
    out = tmp_path / "out.py"
    assert main(["convert", str(src), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{src}:3:5 PT003 error torch.special.erfcx" in err
    assert "hint:" in err
    assert "torch.special.erfcx" in out.read_text()


def test_existing_output_is_not_overwritten_without_force(tmp_path, capsys):
    src = tmp_path / "m.py"
    src.write_text(GOOD)
    out = tmp_path / "out.py"
    out.write_text("mine")
    assert main(["convert", str(src), "-o", str(out)]) == 2
    assert out.read_text() == "mine"
    assert main(["convert", str(src), "-o", str(out), "--force"]) == 0
    assert "nnx" in out.read_text()


def test_missing_input_is_a_usage_error(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.py")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_tree_keeps_going_past_a_bad_file(tmp_path, capsys):
    tree = tmp_path / "pkg"
    tree.mkdir()
    (tree / "__init__.py").write_text("")
    (tree / "model.py").write_text(GOOD)
    (tree / "broken.py").write_text("def f(:\n")
    (tree / "notes.txt").write_text("data")
    out = tmp_path / "out"
    assert main(["convert", str(tree), "-o", str(out)]) == 1
    assert "nnx.Linear" in (out / "model.py").read_text()
    assert (out / "notes.txt").read_text() == "data"
    assert not (out / "broken.py").exists()
    assert "broken.py:1:" in capsys.readouterr().err


def test_log_lists_every_change(tmp_path, capsys):
    src = tmp_path / "m.py"
    src.write_text(GOOD)
    main(["convert", str(src), "--log", "-o", str(tmp_path / "o.py")])
    err = capsys.readouterr().err
    assert f"{src}:6:19 PT101 'nn.Linear(2, 2)' -> 'nnx.Linear(2, 2, rngs=rngs)'" in err


@pytest.mark.parametrize("args", [["-m", "porter", "--help"], ["-m", "porter", "convert", "--help"]])
def test_python_dash_m_porter(args):
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=Path(__file__).parent)
    assert result.returncode == 0 and "porter" in result.stdout


@pytest.mark.parametrize("command", [["rules"], ["convert", "m.py"]])
def test_a_reader_that_stops_early_ends_porter_quietly(tmp_path, command):
    """`porter ... | head -1`: stdout's pipe closed under porter; no BrokenPipeError traceback, exit 141."""
    (tmp_path / "m.py").write_text(GOOD)
    proc = subprocess.Popen([sys.executable, "-m", "porter", *command], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before porter writes anything: its first write to stdout fails with EPIPE
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141  # 128 + SIGPIPE
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err


@pytest.mark.parametrize("command", ["check", "bench"])
def test_check_and_bench_say_they_run_the_users_model_files(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    description = " ".join(capsys.readouterr().out.split())
    assert "imports and runs both model files" in description and "code you trust" in description


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_ctrl_c_ends_porter_with_one_line_and_exit_130(tmp_path, jobs):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while files convert."""
    tree = tmp_path / "pkg"
    tree.mkdir()
    for name in ("a.py", "b.py", "c.py"):
        (tree / name).write_text(GOOD)
    started = tmp_path / "started"
    script = textwrap.dedent(f"""\
        import pathlib, sys, time
        import porter.convert.tree as tree
        def slow(text, filename, **options):
            pathlib.Path({str(started)!r}).touch()
            time.sleep(60)
        tree.convert_python = slow
        sys.argv = ["porter", "convert", {str(tree)!r}, "-o", {str(tmp_path / "out")!r}, "-j", {jobs!r}]
        from porter.cli import run
        run()
        """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=as_from_a_terminal,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    deadline = time.monotonic() + 120
    while not started.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "porter: interrupted" and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_crlf_file_keeps_crlf_in_the_helpers_porter_inserts(tmp_path):
    from porter.convert.pipeline import convert_source
    source = ("import torch.nn as nn\n\nclass M(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
              "        self.pool = nn.AdaptiveAvgPool2d(3)\n\n    def forward(self, x):\n        return self.pool(x)\n")
    code = convert_source(source.replace("\n", "\r\n")).code
    assert "def adaptive_avg_pool_nchw(" in code  # an emitted helper, with a docstring of several lines
    assert code.count("\n") == code.count("\r\n")
    assert convert_source(source).code == code.replace("\r\n", "\n")


@pytest.mark.parametrize("existing", [False, True])
def test_an_output_with_a_trailing_slash_is_a_directory_for_a_file_too(tmp_path, capsys, existing):
    src = tmp_path / "m.py"
    src.write_text(GOOD)
    out = tmp_path / "outdir"
    if existing:
        out.mkdir()
    assert main(["convert", str(src), "-o", f"{out}/"]) == 0
    assert out.is_dir() and "nnx.Linear(2, 2, rngs=rngs)" in (out / "m.py").read_text()
    assert main(["convert", str(src), "-o", f"{out}/"]) == 2  # the file in it is not overwritten without --force
    assert "exists" in capsys.readouterr().err


def test_a_tree_into_an_output_with_a_trailing_slash(tmp_path):
    tree = tmp_path / "pkg"
    tree.mkdir()
    (tree / "m.py").write_text(GOOD)
    out = tmp_path / "outdir"
    assert main(["convert", str(tree), "-o", f"{out}/"]) == 0
    assert (out / "m.py").is_file()


@pytest.mark.parametrize("name", ["data.csv", "notes.txt", "model.json"])
def test_a_file_that_is_not_python_is_refused(tmp_path, capsys, name):
    src = tmp_path / name
    src.write_text("a,b\n1,2\n")
    out = tmp_path / "x.py"
    assert main(["convert", str(src), "-o", str(out)]) == 2
    assert f"{src} is not Python source" in capsys.readouterr().err
    assert not out.exists()


def test_a_script_without_a_suffix_is_read_as_python(tmp_path):
    src = tmp_path / "train"
    src.write_text("#!/usr/bin/env python\n" + GOOD)
    assert main(["convert", str(src), "-o", str(tmp_path / "out.py")]) == 0
    assert "nnx.Linear" in (tmp_path / "out.py").read_text()
