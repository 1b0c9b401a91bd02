"""porter weights under bad input (issue 13): nothing lost, nothing read from outside the checkpoint,
nothing hangs, invalid files refused with the reason, temporaries cleaned, Ctrl-C and SIGTERM quiet."""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from porter.weights.cli import add_weights_parser
from terminal_signals import as_from_a_terminal

ROOT = Path(__file__).resolve().parent.parent


def run_weights(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="porter")
    add_weights_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["weights", *map(str, argv), "--no-progress"])
    return args.run(args)


def state_dict() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"fc.weight": torch.randn(4, 3, generator=gen), "fc.bias": torch.randn(4, generator=gen)}


def checkpoint(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state_dict(), str(path))
    else:
        torch.save(state_dict(), path)
    return path


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its bytes (None for directories): what must survive a refusal."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def refused(capsys, *argv, words: tuple[str, ...]) -> str:
    assert run_weights(*argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err
    return err


# ---------------------------------------------------------------- 1. nothing lost


def test_output_dot_holding_the_input_is_refused(tmp_path, capsys, monkeypatch):
    checkpoint(tmp_path / "in.safetensors")
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    refused(capsys, "in.safetensors", "-o", ".", "--force", words=("contains the checkpoint file", "-o elsewhere"))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("force", [("--force",), ()])
@pytest.mark.parametrize("layout", ["dir-is-output", "parent-is-output", "output-is-input"])
def test_output_equal_to_or_containing_the_input_is_refused_even_with_force(tmp_path, capsys, layout, force):
    if layout == "dir-is-output":  # porter weights ckptdir -o ckptdir --force
        checkpoint(tmp_path / "ckpt" / "model.safetensors")
        (tmp_path / "ckpt" / "notes.txt").write_text("mine")
        argv = (tmp_path / "ckpt", "-o", tmp_path / "ckpt")
    elif layout == "parent-is-output":  # parent/sub/model.safetensors -o parent --force
        checkpoint(tmp_path / "parent" / "sub" / "model.safetensors")
        argv = (tmp_path / "parent" / "sub" / "model.safetensors", "-o", tmp_path / "parent")
    else:  # -o in.safetensors --force: its own input
        checkpoint(tmp_path / "in.safetensors")
        argv = (tmp_path / "in.safetensors", "-o", tmp_path / "in.safetensors")
    before = snapshot(tmp_path)
    refused(capsys, *argv, *force, words=("the checkpoint file", "would replace the input"))
    assert snapshot(tmp_path) == before


def test_a_shard_of_a_sharded_index_is_an_input_too(tmp_path, capsys):
    sd = state_dict()
    save_file({"fc.weight": sd["fc.weight"]}, str(tmp_path / "a.safetensors"))
    save_file({"fc.bias": sd["fc.bias"]}, str(tmp_path / "b.safetensors"))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"fc.weight": "a.safetensors", "fc.bias": "b.safetensors"}}))
    before = snapshot(tmp_path)
    refused(capsys, index, "-o", tmp_path / "b.safetensors", "--force", words=("is the checkpoint file",))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("fmt", ["safetensors", "orbax"])
def test_force_never_replaces_a_directory_of_other_files(tmp_path, capsys, fmt):
    checkpoint(tmp_path / "in.safetensors")
    (tmp_path / "existing" / "deep").mkdir(parents=True)
    (tmp_path / "existing" / "deep" / "thesis.tex").write_text("years of work")
    before = snapshot(tmp_path)
    refused(capsys, tmp_path / "in.safetensors", "-o", tmp_path / "existing", "--format", fmt, "--force",
            words=("exists and is", "--force replaces only what porter writes", "Remove it yourself"))
    assert snapshot(tmp_path) == before


def test_force_never_replaces_a_file_of_another_kind(tmp_path, capsys):
    checkpoint(tmp_path / "in.safetensors")
    (tmp_path / "out.safetensors").write_text("not a checkpoint")
    refused(capsys, tmp_path / "in.safetensors", "-o", tmp_path / "out.safetensors", "--force",
            words=("not a safetensors file",))
    assert (tmp_path / "out.safetensors").read_text() == "not a checkpoint"
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "in.safetensors")
    refused(capsys, tmp_path / "in.safetensors", "-o", tmp_path / "link.safetensors", "--force",
            words=("the checkpoint file",))


@pytest.mark.parametrize("fmt", ["safetensors", "orbax"])
def test_force_replaces_porters_own_earlier_output(tmp_path, capsys, fmt):
    checkpoint(tmp_path / "in.safetensors")
    out = tmp_path / ("out.safetensors" if fmt == "safetensors" else "out")
    assert run_weights(tmp_path / "in.safetensors", "-o", out) == 0
    assert run_weights(tmp_path / "in.safetensors", "-o", out, "--force") == 0
    if fmt == "orbax":  # an Orbax checkpoint with a file of the user's in it is not porter's alone
        (out / "README").write_text("mine")
        refused(capsys, tmp_path / "in.safetensors", "-o", out, "--force", words=("also holds other files", "README"))
        assert (out / "README").read_text() == "mine"


def test_to_torch_refuses_its_own_input_and_files_of_another_kind(tmp_path, capsys):
    checkpoint(tmp_path / "in.safetensors")
    flax = tmp_path / "flax.safetensors"
    assert run_weights(tmp_path / "in.safetensors", "-o", flax) == 0
    before = flax.read_bytes()
    refused(capsys, flax, "-o", flax, "--to-torch", "--force", words=("is the checkpoint file",))
    assert flax.read_bytes() == before
    (tmp_path / "notes.pt").write_text("mine")
    refused(capsys, flax, "-o", tmp_path / "notes.pt", "--to-torch", "--force", words=("not a torch.save file",))
    assert (tmp_path / "notes.pt").read_text() == "mine"
    assert run_weights(flax, "-o", tmp_path / "back.pt", "--to-torch") == 0
    assert run_weights(flax, "-o", tmp_path / "back.pt", "--to-torch", "--force") == 0  # porter's own: replaced


# ---------------------------------------------------------------- 2. nothing read from outside


def _index(directory: Path, shard: str) -> Path:
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"fc.weight": shard, "fc.bias": shard}}))
    return index


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_shards_outside_the_index_directory_are_refused(tmp_path, capsys, how):
    outside = checkpoint(tmp_path / "private" / "x.safetensors")
    ckpt = tmp_path / "a" / "b"
    ckpt.mkdir(parents=True)
    if how == "dotdot":
        shard = "../../private/x.safetensors"
    elif how == "absolute":
        shard = str(outside)
    else:
        (ckpt / "shard.safetensors").symlink_to(outside)
        shard = "shard.safetensors"
    refused(capsys, _index(ckpt, shard), "-o", tmp_path / "out.safetensors",
            words=(f"shard {shard!r}", "outside" if how != "dotdot" else "..", "reads nothing outside"))
    assert not (tmp_path / "out.safetensors").exists()


def test_an_index_nested_too_deeply_is_refused(tmp_path, capsys):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text("[" * 100_000 + "]" * 100_000)
    refused(capsys, index, "-o", tmp_path / "out.safetensors", words=("not a sharded checkpoint index", "nested too"))


def test_a_hugging_face_cache_snapshot_of_links_into_blobs_still_reads(tmp_path):
    blobs, snapshot_dir = tmp_path / "blobs", tmp_path / "snapshots" / "abc123"
    snapshot_dir.mkdir(parents=True)
    blobs.mkdir()
    save_file(state_dict(), str(blobs / "f00d"))
    index_blob = blobs / "beef"
    index_blob.write_text(json.dumps({"weight_map": {"fc.weight": "model-1.safetensors",
                                                     "fc.bias": "model-1.safetensors"}}))
    (snapshot_dir / "model-1.safetensors").symlink_to("../../blobs/f00d")
    (snapshot_dir / "model.safetensors.index.json").symlink_to("../../blobs/beef")
    assert run_weights(snapshot_dir, "-o", tmp_path / "out.safetensors") == 0


# ---------------------------------------------------------------- 3. nothing hangs


def _finishes(fifo: Path, *argv) -> int | None:
    """run_weights(*argv) in a thread; None if it blocks (then the FIFO is opened for writing to free it)."""
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run_weights(*argv)), daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        with open(fifo, "wb"):
            pass
        thread.join(20)
        return None
    return result[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("where", ["checkpoint", "shard"])
def test_a_fifo_is_refused_without_being_opened(tmp_path, capsys, where):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    given = fifo if where == "checkpoint" else _index(tmp_path, fifo.name)
    assert _finishes(fifo, given, "-o", tmp_path / "out.safetensors") == 2
    assert "a FIFO (named pipe), not a checkpoint file" in capsys.readouterr().err


# ---------------------------------------------------------------- 4. invalid safetensors refused, as the library does


def _safetensors(header: bytes | dict, data: bytes) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _f32(begin: int, end: int, shape=None) -> dict:
    return {"dtype": "F32", "shape": shape if shape is not None else [(end - begin) // 4],
            "data_offsets": [begin, end]}


DATA = bytes(range(64))
PROBES = {  # name: (file bytes, what porter's error says)
    "overlapping offsets": (_safetensors({"a": _f32(0, 8), "b": _f32(4, 12)}, DATA[:12]), "overlaps the tensor"),
    "a gap": (_safetensors({"a": _f32(0, 8), "b": _f32(12, 20)}, DATA[:20]), "gap of 4 bytes"),
    "not from 0": (_safetensors({"a": _f32(4, 12)}, DATA[:12]), "gap of 4 bytes"),
    "duplicate keys": (_safetensors(b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                                    b'"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}', DATA[:16]),
                       "names 'a' twice"),
    "trailing bytes": (_safetensors({"a": _f32(0, 8)}, DATA[:12]), "4 bytes after the last tensor"),
    "float shape": (_safetensors({"a": _f32(0, 16, [4.7])}, DATA[:16]), "shape [4.7] is not a list"),
    "bool shape": (_safetensors({"a": _f32(0, 16, [True, 4])}, DATA[:16]), "shape [True, 4] is not a list"),
    "1e30 shape": (_safetensors(b'{"a": {"dtype": "F32", "shape": [1e30], "data_offsets": [0, 16]}}', DATA[:16]),
                   "shape [1e+30] is not a list"),
    "Infinity shape": (_safetensors(b'{"a": {"dtype": "F32", "shape": [Infinity], "data_offsets": [0, 16]}}',
                                    DATA[:16]), "holds Infinity, which is not JSON"),
    "deep header": (_safetensors(b"[" * 100_000 + b"]" * 100_000, b""), "nests too deeply"),
    "deep object": (_safetensors(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, b""), "nests too deeply"),
    "size overflow": (_safetensors({"a": _f32(0, 16, [2 ** 62, 2 ** 62])}, DATA[:16]), "more bytes than a file"),
    "wrong size": (_safetensors({"a": _f32(0, 16, [3])}, DATA[:16]), "hold 16 bytes, but shape [3] F32 takes 12"),
    "float offset": (_safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8]}}, DATA[:8]),
                     "data_offsets [0.0, 8] are not two"),
    "unknown dtype": (_safetensors({"a": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}, DATA[:8]),
                      "dtype 'F99'"),
    "header too large": (struct.pack("<Q", 1 << 40) + b"{}", "the header claims"),
    "truncated": (_safetensors({"a": _f32(0, 16)}, DATA[:8]), "the file is truncated"),
    "metadata not strings": (_safetensors({"__metadata__": {"k": 1}, "a": _f32(0, 8)}, DATA[:8]),
                             "__metadata__ must map strings"),
}
VALID = {  # what the library reads, and porter too
    "two tensors": _safetensors({"a": _f32(0, 8), "b": _f32(8, 16)}, DATA[:16]),
    "empty tensors anywhere": _safetensors({"z": _f32(0, 0, [0]), "a": _f32(0, 8), "y": _f32(8, 8, [0, 3])},
                                           DATA[:8]),
    "null metadata, extra field, padding": _safetensors(b'{"__metadata__": null, "a": {"dtype": "F32", "shape": [2],'
                                                        b' "data_offsets": [0, 8], "extra": 1}}   ', DATA[:8]),
}


def _library_reads(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as f:
            for key in f.keys():
                f.get_tensor(key)
        return True
    except Exception:
        return False


@pytest.mark.parametrize("probe", list(PROBES))
def test_invalid_safetensors_are_refused_as_the_library_refuses_them(tmp_path, capsys, probe):
    data, says = PROBES[probe]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    assert not _library_reads(path)
    err = refused(capsys, path, "-o", tmp_path / "out.safetensors",
                  words=(f"{path}: not a valid safetensors file", says, "Re-download or re-save"))
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("probe", list(VALID))
def test_valid_corner_cases_read_as_the_library_reads_them(tmp_path, probe):
    from safetensors.numpy import load_file

    from porter.weights.readers import read_state_dict

    path = tmp_path / "ok.safetensors"
    path.write_bytes(VALID[probe])
    assert _library_reads(path)
    ours, _ = read_state_dict(path)
    theirs = load_file(str(path))
    assert ours.keys() == theirs.keys()
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key])


# ---------------------------------------------------------------- 6. --to-torch with malformed metadata


TORCH_KEYS = '{"fc.bias":["fc.bias","same"],"fc.kernel":["fc.weight","matrix_transpose"]}'
METADATA_PROBES = {  # porter's metadata edited: what the error says
    "torch_keys a list": ({"porter.torch_keys": "[1, 2]"}, "porter.torch_keys is a JSON list, not an object"),
    "torch_keys not JSON": ({"porter.torch_keys": "{oops"}, "porter.torch_keys is not JSON"),
    "entry not a pair": ({"porter.torch_keys": '{"fc.bias": "fc.bias", "fc.kernel": ["fc.weight", "same"]}'},
                         "porter.torch_keys['fc.bias'] is 'fc.bias', not [torch key, layout]"),
    "unknown layout": ({"porter.torch_keys": '{"fc.bias": ["fc.bias", "sideways"], '
                                             '"fc.kernel": ["fc.weight", "same"]}'}, "the layout 'sideways'"),
    "two tensors, one torch key": ({"porter.torch_keys": '{"fc.bias": ["fc.weight", "same"], '
                                                         '"fc.kernel": ["fc.weight", "matrix_transpose"]}'},
                                   "the torch key 'fc.weight' comes from both 'fc.bias' and 'fc.kernel'"),
    "tied to nothing": ({"porter.torch_keys": TORCH_KEYS, "porter.tied": '{"head.weight": "nowhere"}'},
                        "ties 'head.weight' to 'nowhere'"),
    "tied over a loaded key": ({"porter.torch_keys": TORCH_KEYS, "porter.tied": '{"fc.bias": "fc.weight"}'},
                               "the torch key 'fc.bias' comes from both"),
    "initial a string": ({"porter.torch_keys": TORCH_KEYS, "porter.initial": '"fc.bias"'},
                         "porter.initial is a JSON str, not a list"),
}


@pytest.mark.parametrize("probe", list(METADATA_PROBES))
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_to_torch_with_malformed_metadata_is_a_clear_error_never_a_dropped_tensor(tmp_path, capsys, probe, suffix):
    from safetensors.numpy import load_file
    from safetensors.numpy import save_file as save_np

    checkpoint(tmp_path / "in.safetensors")
    flax = tmp_path / "flax.safetensors"
    assert run_weights(tmp_path / "in.safetensors", "-o", flax) == 0
    metadata, says = METADATA_PROBES[probe]
    save_np(load_file(str(flax)), str(flax), metadata={"format": "flax-nnx", **metadata})
    capsys.readouterr()
    refused(capsys, flax, "-o", tmp_path / f"back{suffix}", "--to-torch",
            words=(f"{flax}: ", says, "nothing is written" if "comes from" in says else "Convert the torch checkpoint"))
    assert not (tmp_path / f"back{suffix}").exists()


# ---------------------------------------------------------------- 5. a corrupt zip record is named


def _flip_a_bit_of(path: Path, record_of) -> str:
    """Flip one bit in the data of the zip record holding the tensor `record_of` picks; its name."""
    with zipfile.ZipFile(path) as archive:
        records = [i for i in archive.infolist() if "/data/" in i.filename]
        info = record_of(records)
    with open(path, "r+b") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        name_length, extra_length = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        start = info.header_offset + 30 + name_length + extra_length
        f.seek(start + info.file_size // 2)
        byte = f.read(1)[0]
        f.seek(start + info.file_size // 2)
        f.write(bytes([byte ^ 0x10]))
    return info.filename


@pytest.mark.parametrize("out", ["out.safetensors", "out_orbax"])
@pytest.mark.parametrize("which", ["fc.weight", "fc.bias", "a view"])
def test_a_flipped_bit_in_a_zip_record_is_reported_with_the_record(tmp_path, capsys, out, which):
    sd = state_dict()
    if which == "a view":  # two tensors sharing one storage: neither covers the record alone
        joint = torch.randn(7)
        sd = {"fc.weight": sd["fc.weight"], "fc.bias": joint[:4], "other.bias": joint[4:]}
    torch.save(sd, tmp_path / "in.pt")
    size = {"fc.weight": 48, "fc.bias": 16, "a view": 28}[which]
    record = _flip_a_bit_of(tmp_path / "in.pt", lambda records: next(r for r in records if r.file_size == size))
    refused(capsys, tmp_path / "in.pt", "-o", tmp_path / out, "--force",
            words=(f"record {record} (tensor", "is corrupt: its CRC-32 is", "Re-download or re-save"))
    assert not (tmp_path / out).exists() and not [p for p in tmp_path.iterdir() if "tmp" in p.name]


def test_an_intact_pt_converts_with_every_record_checked(tmp_path):
    from safetensors.numpy import load_file

    torch.save(state_dict(), tmp_path / "in.pt")
    assert run_weights(tmp_path / "in.pt", "-o", tmp_path / "out.safetensors") == 0
    np.testing.assert_array_equal(load_file(str(tmp_path / "out.safetensors"))["fc.bias"], state_dict()["fc.bias"])


# ---------------------------------------------------------------- 7. temporaries, SIGTERM, Ctrl-C


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("out", ["out.safetensors", "out"])
def test_stale_temporaries_of_killed_runs_are_removed_and_nothing_else(tmp_path, capsys, out):
    checkpoint(tmp_path / "in.safetensors")
    dead, alive = _dead_pid(), os.getppid()
    stale = [f".{out}.tmp-{dead}-0123abcd", f"{out}.porter-tmp-{dead}-89abcdef",
             f"{out}.porter-tmp-{dead}-89abcdef.partial_save"]
    kept = [f".{out}.tmp-{alive}-0123abcd",  # a run still going
            f".other.safetensors.tmp-{dead}-0123abcd",  # another output's
            f"{out}.tmp-{dead}-0123abcd", f".{out}.tmp-{dead}-notmine", f"{out}.bak"]  # not porter's naming
    for i, name in enumerate(stale + kept):
        if i % 2:
            (tmp_path / name).mkdir()
            (tmp_path / name / "data").write_bytes(b"x" * 100)
        else:
            (tmp_path / name).write_bytes(b"x" * 100)
    assert run_weights(tmp_path / "in.safetensors", "-o", tmp_path / out) == 0
    assert "removed 3 temporary file(s) an interrupted earlier run left" in capsys.readouterr().out
    left = {p.name for p in tmp_path.iterdir()}
    assert not left & set(stale)
    assert set(kept) <= left


KILLABLE = """
import sys, time
from pathlib import Path
import porter.weights.convert as convert

def stalled(*args, **kwargs):  # every temporary is written: stop before the rename
    Path(FLAG).touch()
    time.sleep(120)

convert.replace_into = stalled
sys.argv = ["porter", "weights", *sys.argv[1:], "--no-progress"]
from porter.cli import run
run()
"""


@pytest.mark.parametrize("signum, code, says, out", [(15, 143, "porter: terminated (SIGTERM)", "out.safetensors"),
                                                     (15, 143, "porter: terminated (SIGTERM)", "out"),
                                                     (2, 130, "porter: interrupted", "out.safetensors")])
def test_sigterm_and_ctrl_c_remove_the_temporaries_and_say_one_line(tmp_path, signum, code, says, out):
    import signal
    import time

    checkpoint(tmp_path / "in.safetensors")
    flag = tmp_path.parent / f"{tmp_path.name}.flag"
    script = KILLABLE.replace("FLAG", repr(str(flag)))
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "in.safetensors"), "-o",
                                str(tmp_path / out)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               preexec_fn=as_from_a_terminal)
    deadline = time.monotonic() + 120
    while not flag.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flag.exists(), process.communicate()
    assert [p for p in tmp_path.iterdir() if "tmp" in p.name]  # the temporaries are there ...
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert err.strip().splitlines() == [says]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors"]  # ... and gone
