"""porter weights at scale: every reader format, streaming writers, mapping without a model, ties,
prefixes, the reverse direction, bad input, and bounded memory (a subprocess, small scale)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file as load_np
from safetensors.torch import load_file as load_torch_file
from safetensors.torch import save_file as save_torch_file

from porter.check.modelspec import import_file
from porter.weights import safetensors_io
from porter.weights.cli import add_weights_parser
from porter.weights.convert import convert_to_torch
from porter.weights.guess import guess_targets
from porter.weights.loader import StateDictMismatch, load_torch_state_dict
from porter.weights.plan import KeyMeta
from porter.weights.progress import Progress
from porter.weights.readers import CheckpointError, open_checkpoint, read_state_dict
from porter.weights.writers import restore_orbax, restore_safetensors

MODELS = Path(__file__).with_name("test_weights_models.py")
M = import_file(MODELS)


def run_weights(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="porter")
    add_weights_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["weights", *argv])
    return args.run(args)


def rel_err(got, ref) -> float:
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(np.asarray(got, dtype=np.float64) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def torch_net():
    torch.manual_seed(0)
    return M.randomize(M.TNet()).eval()


def net_outputs_match(model, torch_net) -> None:
    model.eval()
    x = M.net_input()
    with torch.no_grad():
        expected = torch_net(torch.from_numpy(x))
    got = model(x)
    for name in ("cls", "reg"):
        assert rel_err(got[name], expected[name].numpy()) <= 1e-5, name


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if ".tmp-" in p.name or "porter-tmp" in p.name
                or "partial_save" in p.name]


# ---------------------------------------------------------------- readers


def test_every_torch_and_safetensors_reader_is_bit_exact(tmp_path):
    gen = torch.Generator().manual_seed(1)
    sd = {
        "f32": torch.randn(3, 5, generator=gen),
        "f16": torch.randn(4, generator=gen).half(),
        "bf16": torch.randn(2, 7, generator=gen).to(torch.bfloat16),
        "i8": torch.randint(-128, 127, (6,), generator=gen, dtype=torch.int8),
        "b": torch.rand(5, generator=gen) > 0.5,
        "scalar": torch.tensor(2.5),
    }
    bits = {k: (v.view(torch.int16) if v.dtype == torch.bfloat16 else v).numpy().copy() for k, v in sd.items()}
    torch.save(sd, tmp_path / "zip.pt")
    torch.save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    save_torch_file(sd, str(tmp_path / "st.safetensors"))
    for name, fmt in [("zip.pt", "torch"), ("legacy.pt", "torch-legacy"), ("st.safetensors", "safetensors")]:
        flat, info = read_state_dict(tmp_path / name)
        assert info.format == fmt, name
        assert set(flat) == set(sd)
        for key, value in flat.items():
            array = value.view(np.int16) if value.dtype == ml_dtypes.bfloat16 else value
            assert array.dtype == bits[key].dtype, (name, key)
            np.testing.assert_array_equal(array, bits[key], err_msg=f"{name}:{key}")
        assert flat["bf16"].dtype == ml_dtypes.bfloat16
    assert "legacy" in read_state_dict(tmp_path / "legacy.pt")[1].notes[0]
    # porter's own safetensors writer is read by the safetensors library, bit for bit
    flat, _ = read_state_dict(tmp_path / "zip.pt")
    with open(tmp_path / "mine.safetensors", "wb") as f:
        writer = safetensors_io.SafetensorsWriter(f, {k: (v.dtype, v.shape) for k, v in flat.items()}, {"a": "b"})
        for k, v in flat.items():
            writer.write(k, v)
        writer.close()
    back = load_torch_file(str(tmp_path / "mine.safetensors"))
    for key, value in sd.items():
        assert back[key].dtype == value.dtype
        assert torch.equal(back[key].view(torch.int16) if value.dtype == torch.bfloat16 else back[key],
                           value.view(torch.int16) if value.dtype == torch.bfloat16 else value), key


def test_directory_and_sharded_inputs(tmp_path, torch_net):
    sd = {k: v.contiguous() for k, v in torch_net.state_dict().items()}
    keys = sorted(sd)
    first, second = keys[: len(keys) // 2], keys[len(keys) // 2:]
    hf = tmp_path / "hf"
    hf.mkdir()
    save_torch_file({k: sd[k] for k in first}, str(hf / "model-00001-of-00002.safetensors"))
    save_torch_file({k: sd[k] for k in second}, str(hf / "model-00002-of-00002.safetensors"))
    index = {"metadata": {}, "weight_map": {**{k: "model-00001-of-00002.safetensors" for k in first},
                                            **{k: "model-00002-of-00002.safetensors" for k in second}}}
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    torch.save(sd, hf / "pytorch_model.bin")  # a pickle beside it: the safetensors index wins
    with open_checkpoint(hf) as source:
        assert source.info.format == "sharded" and len(source.info.files) == 2
        assert "model.safetensors.index.json" in source.info.notes[0]
        assert set(source.tensors) == set(sd)
    out = tmp_path / "net.safetensors"
    assert run_weights(str(hf), "-o", str(out), "--model", f"{MODELS}:FNet") == 0
    model = restore_safetensors(M.FNet(rngs=nnx.Rngs(3)), out)
    net_outputs_match(model, torch_net)

    single = tmp_path / "single"
    single.mkdir()
    torch.save(sd, single / "a.pt")
    with open_checkpoint(single) as source:
        assert source.info.format == "torch"
    torch.save(sd, single / "b.pt")
    with pytest.raises(CheckpointError, match="several torch checkpoints.*a.pt, b.pt"):
        open_checkpoint(single)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in the directory"):
        open_checkpoint(tmp_path / "empty")


def test_missing_shard_truncated_and_corrupt_files(tmp_path, capsys, torch_net):
    sd = {k: v.contiguous() for k, v in torch_net.state_dict().items()}
    keys = sorted(sd)
    save_torch_file({k: sd[k] for k in keys[:5]}, str(tmp_path / "s-1.safetensors"))
    index = {"weight_map": {**{k: "s-1.safetensors" for k in keys[:5]}, **{k: "s-2.safetensors" for k in keys[5:]}}}
    (tmp_path / "s.safetensors.index.json").write_text(json.dumps(index))
    save_torch_file(sd, str(tmp_path / "full.safetensors"))
    torch.save(sd, tmp_path / "full.pt")
    raw_st = (tmp_path / "full.safetensors").read_bytes()
    raw_pt = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw_st[: len(raw_st) - 100])
    (tmp_path / "trunc.pt").write_bytes(raw_pt[: len(raw_pt) // 2])
    (tmp_path / "header.safetensors").write_bytes(raw_st[:8] + b"{not json" + raw_st[17:])
    (tmp_path / "tiny.safetensors").write_bytes(b"\x01\x02")
    cases = {
        "s.safetensors.index.json": "s-2.safetensors",
        "trunc.safetensors": "truncated",
        "trunc.pt": "truncated or corrupt",
        "header.safetensors": "not JSON",
        "tiny.safetensors": "shorter than the 8-byte header",
    }
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            open_checkpoint(tmp_path / name)
        out = tmp_path / f"out-{name}.safetensors"
        assert run_weights(str(tmp_path / name), "-o", str(out), "--model", f"{MODELS}:FNet") == 2, name
        err = capsys.readouterr().err
        assert name in err and message in err and "Traceback" not in err, err
        assert not out.exists()
    assert no_temp_files(tmp_path)


# ---------------------------------------------------------------- writers: round trips through the CLI


@pytest.mark.parametrize("fmt", ["safetensors", "orbax"])
def test_cli_round_trip_outputs_equal_torch(tmp_path, capsys, torch_net, fmt, monkeypatch):
    sd = {f"module.{k}": v for k, v in torch_net.state_dict().items()}  # DataParallel prefix
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}, tmp_path / "ckpt.pth")
    out = tmp_path / ("net.safetensors" if fmt == "safetensors" else "net_orbax")
    assert run_weights(str(tmp_path / "ckpt.pth"), "-o", str(out), "--model", f"{MODELS}:FNet", "--key", "model",
                       "--no-progress") == 0
    printed = capsys.readouterr().out
    assert "stripped prefix 'module.'" in printed and "7 transposed" in printed and "0 missing" in printed
    restore = restore_safetensors if fmt == "safetensors" else restore_orbax
    model = restore(M.FNet(rngs=nnx.Rngs(7)), out)
    net_outputs_match(model, torch_net)
    # the printed lines do the same, the model's class imported from its file as they say
    snippet = printed[printed.index("restore it into"):].splitlines()[1:]
    assert snippet[2].strip().startswith(f"from {MODELS.stem} import FNet  # {MODELS}: run from {MODELS.parent}")
    monkeypatch.syspath_prepend(str(MODELS.parent))
    namespace = {}
    exec("\n".join(line.strip() for line in snippet), namespace)
    net_outputs_match(namespace["model"], torch_net)
    assert no_temp_files(tmp_path)


def test_orbax_saved_in_many_partial_batches_restores_exactly(tmp_path, torch_net):
    from porter.weights.convert import convert_checkpoint

    torch.save(torch_net.state_dict(), tmp_path / "net.pt")
    out = tmp_path / "net_orbax"
    # one byte per batch: every tensor is its own partial save, as in a checkpoint larger than a batch
    convert_checkpoint(tmp_path / "net.pt", out, model=lambda: M.FNet(rngs=nnx.Rngs(0)), progress=False,
                       batch_bytes=1)
    net_outputs_match(restore_orbax(M.FNet(rngs=nnx.Rngs(7)), out), torch_net)
    assert no_temp_files(tmp_path)


def test_bf16_streams_bit_exact_into_both_writers(tmp_path):
    torch.manual_seed(0)
    tok = M.randomize(M.TTok(vocab=30, d=8)).to(torch.bfloat16)
    sd = tok.state_dict()
    save_torch_file(dict(sd), str(tmp_path / "tok.safetensors"))
    out = tmp_path / "tok_flax.safetensors"
    assert run_weights(str(tmp_path / "tok.safetensors"), "-o", str(out), "--model", f"{MODELS}:FTok(30, d=8)") == 0
    arrays = load_np(str(out))
    assert arrays["out.kernel"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(arrays["out.kernel"].view(np.int16), sd["out.weight"].view(torch.int16).numpy().T)
    np.testing.assert_array_equal(arrays["embed.embedding"].view(np.int16),
                                  sd["embed.weight"].view(torch.int16).numpy())
    orbax_out = tmp_path / "tok_orbax"
    assert run_weights(str(tmp_path / "tok.safetensors"), "-o", str(orbax_out), "--model",
                       f"{MODELS}:FTok(30, d=8)") == 0
    bf16_model = nnx.eval_shape(lambda: M.FTok(30, d=8, rngs=nnx.Rngs(0)))
    fresh = M.FTok(30, d=8, rngs=nnx.Rngs(0))
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jax.numpy.bfloat16),
                         nnx.state(bf16_model, nnx.Not(nnx.RngState)))
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(orbax_out.absolute(), state)
    nnx.update(fresh, restored)
    assert fresh.out.kernel[...].dtype == jax.numpy.bfloat16
    np.testing.assert_array_equal(np.asarray(fresh.out.kernel[...]).view(np.int16),
                                  sd["out.weight"].view(torch.int16).numpy().T)


def test_reverse_direction_back_to_torch(tmp_path, torch_net):
    torch.save(torch_net.state_dict(), tmp_path / "net.pt")
    flax_st = tmp_path / "net.safetensors"
    assert run_weights(str(tmp_path / "net.pt"), "-o", str(flax_st), "--model", f"{MODELS}:FNet") == 0
    # porter's safetensors names the torch keys itself: no model needed
    assert run_weights(str(flax_st), "-o", str(tmp_path / "back.pt"), "--to-torch") == 0
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    original = torch_net.state_dict()
    assert set(back) == set(original) - {"features.1.num_batches_tracked"}
    for key, value in back.items():
        assert torch.equal(value, original[key]), key
    fresh = M.TNet().eval()
    fresh.load_state_dict(back, strict=True)  # BatchNorm fills in num_batches_tracked itself
    x = torch.from_numpy(M.net_input())
    with torch.no_grad():
        assert torch.equal(fresh(x)["cls"], torch_net(x)["cls"])
    # from Orbax, with the model, into a torch-keyed safetensors file
    orbax_out = tmp_path / "net_orbax"
    assert run_weights(str(tmp_path / "net.pt"), "-o", str(orbax_out), "--model", f"{MODELS}:FNet") == 0
    assert run_weights(str(orbax_out), "-o", str(tmp_path / "back.safetensors"), "--to-torch",
                       "--model", f"{MODELS}:FNet") == 0
    back2 = load_torch_file(str(tmp_path / "back.safetensors"))
    for key, value in back2.items():
        assert torch.equal(value, original[key]), key
    # a flax file without porter's metadata needs the model
    from safetensors.numpy import save_file

    save_file(load_np(str(flax_st)), str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="--model"):
        convert_to_torch(tmp_path / "plain.safetensors", tmp_path / "x.pt")
    convert_to_torch(tmp_path / "plain.safetensors", tmp_path / "x.pt",
                     model=nnx.eval_shape(lambda: M.FNet(rngs=nnx.Rngs(0))))
    assert torch.equal(torch.load(tmp_path / "x.pt", weights_only=True)["proj.weight"], original["proj.weight"])


# ---------------------------------------------------------------- mapping without a model


def test_mapping_without_a_model_says_what_it_guessed(tmp_path, capsys):
    torch.manual_seed(0)
    tok = M.randomize(M.TTok(vocab=30, d=8)).eval()
    sd = dict(tok.state_dict())
    targets, _ = guess_targets({k: KeyMeta(tuple(v.shape), np.dtype(np.float32)) for k, v in sd.items()})
    assert targets["embed.weight"].flax_key == "embed.embedding" and targets["embed.weight"].how == "guess"
    assert "Linear" in targets["embed.weight"].note  # the alternative is named
    assert targets["out.weight"].flax_key == "out.kernel" and targets["out.weight"].how == "pattern"
    assert targets["out.weight"].layout.name == "matrix_transpose"
    assert targets["norm.weight"].flax_key == "norm.scale"
    lone = guess_targets({"proj.weight": KeyMeta((4, 3), np.dtype(np.float32)),
                          "bn.running_mean": KeyMeta((4,), np.dtype(np.float32)),
                          "bn.running_var": KeyMeta((4,), np.dtype(np.float32)),
                          "bn.num_batches_tracked": KeyMeta((), np.dtype(np.int64)),
                          "conv.weight": KeyMeta((8, 3, 3, 3), np.dtype(np.float32)),
                          "cls_token": KeyMeta((1, 1, 4), np.dtype(np.float32))})
    targets, ignored = lone
    assert targets["proj.weight"].how == "guess" and targets["proj.weight"].flax_key == "proj.kernel"
    assert targets["bn.running_var"].flax_key == "bn.var" and list(ignored) == ["bn.num_batches_tracked"]
    assert targets["conv.weight"].layout.name == "conv_kernel" and targets["cls_token"].how == "kept"

    torch.save(sd, tmp_path / "tok.pt")
    out = tmp_path / "tok.safetensors"
    assert run_weights(str(tmp_path / "tok.pt"), "-o", str(out)) == 0
    printed = capsys.readouterr().out
    assert "mapped without a model" in printed and "embed.weight  guess: -> embed.embedding" in printed
    model = restore_safetensors(M.FTok(30, d=8, rngs=nnx.Rngs(1)), out)
    ids = np.array([[1, 4, 29, 0]])
    with torch.no_grad():
        expected = tok(torch.from_numpy(ids))[0].numpy()
    assert rel_err(model(ids)[0], expected) <= 1e-5


# ---------------------------------------------------------------- tied weights


def test_tied_embedding_head_loads_once(tmp_path, capsys):
    torch.manual_seed(0)
    tied = M.randomize(M.TTied()).eval()
    sd = tied.state_dict()
    assert sd["head.weight"].data_ptr() == sd["embed.weight"].data_ptr()
    ids = np.array([[3, 1, 39]])
    with torch.no_grad():
        expected = tied(torch.from_numpy(ids)).numpy()
    # library: the checkpoint's second name for the one tensor is tied, not unexpected
    model = M.FTied(rngs=nnx.Rngs(0))
    report = load_torch_state_dict(model, sd)
    assert report.ok and report.tied == {"head.weight": "embed.weight"} and "head.weight" not in report.unexpected
    assert rel_err(model(ids), expected) <= 1e-5
    # CLI, from torch.save (sharing kept) and from safetensors (save_model stores it once)
    torch.save(sd, tmp_path / "tied.pt")
    out = tmp_path / "tied.safetensors"
    assert run_weights(str(tmp_path / "tied.pt"), "-o", str(out), "--model", f"{MODELS}:FTied") == 0
    assert "tied (one variable, loaded once): head.weight = embed.weight" in capsys.readouterr().out
    assert set(load_np(str(out))) == {"embed.embedding", "norm.scale", "norm.bias"}
    assert rel_err(restore_safetensors(M.FTied(rngs=nnx.Rngs(1)), out)(ids), expected) <= 1e-5
    # a copy (not the same tensor) under the head's name is unexpected: the model has no such variable
    untied = {k: v.clone() for k, v in sd.items()}
    with pytest.raises(StateDictMismatch, match="head.weight"):
        load_torch_state_dict(M.FTied(rngs=nnx.Rngs(0)), untied)


def test_variable_shared_in_the_model_stays_shared(tmp_path):
    torch.manual_seed(0)
    shared = M.randomize(M.TShared()).eval()
    sd = shared.state_dict()
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    with torch.no_grad():
        expected = shared(torch.from_numpy(x)).numpy()
    model = M.FShared(rngs=nnx.Rngs(0))
    report = load_torch_state_dict(model, sd)
    assert report.ok and report.tied == {"dec.weight": "enc.weight"} and model.dec.kernel is model.enc.kernel
    assert rel_err(model(x), expected) <= 1e-5
    # stored once (safetensors.torch.save_model drops the duplicate): not missing
    only_enc = {k: v.clone() for k, v in sd.items() if k != "dec.weight"}
    report = load_torch_state_dict(M.FShared(rngs=nnx.Rngs(0)), only_enc)
    assert report.ok and report.tied == {"dec.weight": "enc.weight"}
    # two different values for one variable: an error naming both
    conflict = {k: v.clone() for k, v in sd.items()}
    conflict["dec.weight"] += 1
    with pytest.raises(StateDictMismatch, match="dec.weight differs from enc.weight"):
        load_torch_state_dict(M.FShared(rngs=nnx.Rngs(0)), conflict)
    torch.save(conflict, tmp_path / "conflict.pt")
    assert run_weights(str(tmp_path / "conflict.pt"), "-o", str(tmp_path / "c.safetensors"),
                       "--model", f"{MODELS}:FShared") == 2
    assert not (tmp_path / "c.safetensors").exists() and no_temp_files(tmp_path)
    # written once, restored once, still one variable
    torch.save(sd, tmp_path / "shared.pt")
    for out in (tmp_path / "s.safetensors", tmp_path / "s_orbax"):
        assert run_weights(str(tmp_path / "shared.pt"), "-o", str(out), "--model", f"{MODELS}:FShared") == 0
        fresh = (restore_safetensors if out.suffix else restore_orbax)(M.FShared(rngs=nnx.Rngs(5)), out)
        assert fresh.dec.kernel is fresh.enc.kernel
        assert rel_err(fresh(x), expected) <= 1e-5


# ---------------------------------------------------------------- prefixes, strictness, wrong model


def test_prefix_flags_and_wrong_model(tmp_path, capsys, torch_net):
    sd = {f"net.{k}": v for k, v in torch_net.state_dict().items()}
    torch.save(sd, tmp_path / "net.pt")
    out = tmp_path / "o.safetensors"
    assert run_weights(str(tmp_path / "net.pt"), "-o", str(out), "--model", f"{MODELS}:FNet") == 2
    err = capsys.readouterr().err
    assert "unexpected" in err and "net.proj.weight" in err and "--strip-prefix net." in err and not out.exists()
    assert run_weights(str(tmp_path / "net.pt"), "-o", str(out), "--model", f"{MODELS}:FNet",
                       "--strip-prefix", "net.") == 0
    assert "stripped prefix 'net.' from 24 key(s)" in capsys.readouterr().out
    # add: a checkpoint of an inner model loaded into a wrapper whose attribute is `inner`
    wrapper = tmp_path / "wrap.py"
    wrapper.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(MODELS.parent)!r})
        from flax import nnx
        from porter.check.modelspec import import_file
        M = import_file({str(MODELS)!r})

        class Wrap(nnx.Module):
            def __init__(self, *, rngs):
                self.inner = M.FNet(rngs=rngs)
        """))
    torch.save(torch_net.state_dict(), tmp_path / "plain.pt")
    out2 = tmp_path / "w.safetensors"
    assert run_weights(str(tmp_path / "plain.pt"), "-o", str(out2), "--model", f"{wrapper}:Wrap",
                       "--add-prefix", "inner.") == 0
    assert "inner.proj.kernel" in load_np(str(out2))
    capsys.readouterr()
    # the wrong model: every problem named, nothing written; --non-strict writes what fits
    out3 = tmp_path / "wrong.safetensors"
    assert run_weights(str(tmp_path / "plain.pt"), "-o", str(out3), "--model", f"{MODELS}:FTok") == 2
    err = capsys.readouterr().err
    assert "missing" in err and "embed.weight" in err and "unexpected" in err and "proj.weight" in err
    assert not out3.exists()
    torch.save({k: (torch.zeros(3, 3) if k == "proj.weight" else v) for k, v in torch_net.state_dict().items()},
               tmp_path / "shape.pt")
    assert run_weights(str(tmp_path / "shape.pt"), "-o", str(out3), "--model", f"{MODELS}:FNet") == 2
    assert "mis-shaped" in capsys.readouterr().err and not out3.exists()
    assert run_weights(str(tmp_path / "shape.pt"), "-o", str(out3), "--model", f"{MODELS}:FNet",
                       "--non-strict") == 0
    printed = capsys.readouterr().out
    assert "1 mis-shaped" in printed and "written with the model's initial values: mask, proj.kernel" in printed
    initial = np.asarray(M.FNet(rngs=nnx.Rngs(0)).proj.kernel[...])  # the CLI builds with nnx.Rngs(0)
    np.testing.assert_array_equal(load_np(str(out3))["proj.kernel"], initial)
    assert no_temp_files(tmp_path)


def test_non_strict_counts_the_tensors_filled_with_initial_values(tmp_path, capsys, monkeypatch, torch_net):
    monkeypatch.chdir(tmp_path)
    sd = {k: v for k, v in torch_net.state_dict().items() if k != "heads.reg.bias"}
    sd["proj.weight"] = torch.zeros(3, 3)
    torch.save(sd, "bad.pt")
    assert run_weights("bad.pt", "-o", "out.safetensors", "--model", f"{MODELS}:FNet", "--non-strict") == 0
    printed = capsys.readouterr().out
    written = load_np(str(tmp_path / "out.safetensors"))
    assert "written with the model's initial values: heads.reg.bias, mask, proj.kernel" in printed
    wrote = next(line for line in printed.splitlines() if line.startswith("wrote "))
    assert f": {len(written)} tensor(s) (3 of them the model's initial values" in wrote, wrote


def test_the_safetensors_restore_snippet_names_the_output_by_its_absolute_path(tmp_path, capsys, monkeypatch,
                                                                             torch_net):
    monkeypatch.chdir(tmp_path)  # OUT given relative, as typed
    torch.save(torch_net.state_dict(), "net.pt")
    assert run_weights("net.pt", "-o", "out.safetensors") == 0
    printed = capsys.readouterr().out
    assert f"load_file({str(tmp_path / 'out.safetensors')!r})" in printed, printed  # as Orbax's snippet


def test_progress_bar_only_on_a_terminal():
    with Progress(3, 100) as bar:  # pytest's stderr is no terminal
        assert not bar.enabled
        bar.advance(10)
    assert Progress(3, 100, enabled=True).enabled


# ---------------------------------------------------------------- bounded memory


MEMORY_SCRIPT = """
import re, sys
from porter.weights.convert import convert_checkpoint
import flax.nnx, torch, jax.numpy  # every library the conversion may load, before measuring


def status(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024


for ckpt, out in zip(sys.argv[1::2], sys.argv[2::2]):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    before = status("VmRSS")
    convert_checkpoint(ckpt, out, progress=False)
    print(before, status("VmHWM"))
"""


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "VmHWM" in Path("/proc/self/status").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_reset_peak(),
                    reason="needs Linux's resettable peak RSS (/proc/self/clear_refs)")
def test_conversion_memory_stays_near_one_tensor(tmp_path):
    # 32 tensors of 3.1 MB (100 MB): the peak may grow by a few tensors (the allocator keeps freed copies
    # around; CI measured up to four), never by the checkpoint, which would be a growth of 100% or more
    gen = torch.Generator().manual_seed(0)
    sd = {f"layers.{i}.weight": torch.randn(1024, 768, generator=gen) for i in range(32)}
    torch.save(sd, tmp_path / "big.pt")
    save_torch_file(sd, str(tmp_path / "big.safetensors"))
    size = (tmp_path / "big.pt").stat().st_size
    del sd
    argv = [str(tmp_path / "big.pt"), str(tmp_path / "from_pt.safetensors"),
            str(tmp_path / "big.safetensors"), str(tmp_path / "from_st.safetensors")]
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, *argv], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr
    for line, name in zip(proc.stdout.split("\n")[-3:], ("big.pt", "big.safetensors")):
        before, peak = map(int, line.split())
        growth = peak - before
        assert growth < 0.5 * size, f"{name}: peak RSS grew by {growth / 1e6:.0f} MB for a {size / 1e6:.0f} MB file"
    for out in ("from_pt.safetensors", "from_st.safetensors"):
        arrays = load_np(str(tmp_path / out))
        assert arrays["layers.31.kernel"].shape == (768, 1024)


# ---------------------------------------------------------------- the fast paths (file reads, staging, window)


def _mixed_state_dict() -> dict[str, torch.Tensor]:
    """Tensors that take every path: read as they are, transposed, bf16, a view into a shared storage,
    a non-contiguous one, and an empty one."""
    gen = torch.Generator().manual_seed(3)
    shared = torch.randn(40, generator=gen)
    return {
        "fc.weight": torch.randn(6, 5, generator=gen),
        "fc.bias": torch.randn(6, generator=gen),
        "head.weight": torch.randn(4, 3, generator=gen).to(torch.bfloat16),
        "head.bias": torch.randn(4, generator=gen).to(torch.bfloat16),
        "slice.weight": shared[8:20].view(3, 4),
        "slice.bias": shared[30:33],
        "strided.weight": torch.randn(5, 2, generator=gen).t(),
        "strided.bias": torch.randn(2, generator=gen),
        "empty.weight": torch.zeros(0, 3),
        "empty.bias": torch.zeros(0),
    }


def _expected_flax(sd: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    from porter.weights.arrays import to_numpy

    out = {}
    for key, tensor in sd.items():
        layer, name = key.split(".")
        array = to_numpy(tensor)
        out[f"{layer}.kernel" if name == "weight" else key] = array.T if name == "weight" else array
    return out


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_file_reads_and_staged_layouts_are_bit_exact(tmp_path, suffix):
    sd = _mixed_state_dict()
    src = tmp_path / f"mixed{suffix}"
    if suffix == ".pt":
        torch.save(sd, src)
    else:
        save_torch_file({k: v.contiguous() for k, v in sd.items()}, str(src))
    out = tmp_path / "out.safetensors"
    assert run_weights(str(src), "-o", str(out), "--no-progress") == 0
    arrays = load_np(str(out))
    for key, expected in _expected_flax(sd).items():
        assert arrays[key].dtype == expected.dtype, key
        np.testing.assert_array_equal(arrays[key].view(np.uint8), np.ascontiguousarray(expected).view(np.uint8),
                                      err_msg=key)
    assert no_temp_files(tmp_path)


def test_torch_extents_are_the_tensors_own_bytes(tmp_path):
    # two state_dicts of identical shapes in one file: an offset found by matching sizes alone could
    # name the other one's bytes; the extent must be the selected state_dict's own
    gen = torch.Generator().manual_seed(4)
    ema = {f"l{i}.weight": torch.randn(8, 8, generator=gen) for i in range(3)}
    model = {f"l{i}.weight": torch.randn(8, 8, generator=gen) for i in range(3)}
    sd = _mixed_state_dict()
    torch.save({"ema": ema, "model": model, "other": sd}, tmp_path / "ckpt.pt")
    raw = (tmp_path / "ckpt.pt").read_bytes()
    for key, tensors in (("model", model), ("ema", ema), ("other", sd)):
        with open_checkpoint(tmp_path / "ckpt.pt", key=key) as source:
            for name, tensor in tensors.items():
                extent = source.extent(name)
                if not tensor.is_contiguous() or tensor.numel() == 0:
                    assert extent is None, name
                    continue
                assert extent is not None, name
                expected = tensor.contiguous().view(torch.uint8).numpy().tobytes()
                assert raw[extent.offset:extent.offset + extent.nbytes] == expected, name


def test_write_all_finishes_partial_writes():
    class Trickle:
        def __init__(self):
            self.data = bytearray()

        def write(self, view):
            self.data += bytes(view[:3])
            return min(3, len(view))

    sink = Trickle()
    safetensors_io.write_all(sink, memoryview(np.arange(10, dtype=np.int32)))
    assert bytes(sink.data) == np.arange(10, dtype=np.int32).tobytes()


def test_scratch_reuses_one_buffer_and_grows():
    from porter.weights.arrays import Scratch

    scratch = Scratch()
    a = scratch.take((4, 5), np.float32)
    b = scratch.take((3,), np.int16)
    assert np.shares_memory(a, b) and a.flags.c_contiguous and b.shape == (3,)
    big = scratch.take((100, 100), np.float64)
    assert big.shape == (100, 100) and big.dtype == np.float64 and big.flags.writeable


def test_input_truncated_during_conversion_names_the_tensor_and_leaves_nothing(tmp_path, capsys):
    sd = {"fc.weight": torch.randn(64, 32), "fc.bias": torch.randn(64)}
    src = tmp_path / "in.safetensors"
    save_torch_file(sd, str(src))
    with open_checkpoint(src) as source:
        size = src.stat().st_size
        os.truncate(src, size - 100)  # after the header was checked: the data ends early
        from porter.weights.convert import convert_checkpoint

        with pytest.raises(CheckpointError, match="fc.weight"):
            convert_checkpoint(source, tmp_path / "out.safetensors", progress=False)
    assert not (tmp_path / "out.safetensors").exists()
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize("buffer_bytes", [1, 5000, 1 << 20])
def test_writer_window_lays_out_any_size_exactly(tmp_path, buffer_bytes):
    # windows smaller than a tensor, than one row of it, and larger than the file; casts, bf16, a
    # transposed view, a file copy, an empty and a 0-d tensor: the library reads back every byte
    gen = np.random.default_rng(5)
    big = gen.standard_normal((300, 70)).astype(np.float32)
    bf16 = gen.standard_normal((33, 17)).astype(ml_dtypes.bfloat16)
    raw = gen.integers(0, 255, 12345, dtype=np.uint8)
    (tmp_path / "raw.bin").write_bytes(b"xyz" + raw.tobytes())
    tensors = {"big_t": (big.T, None), "cast": (big, np.float16), "bf16_t": (bf16.T, None),
               "empty": (np.zeros((0, 4), np.float32), None), "scalar": (np.array(3.5, np.float32), None)}
    declared = {name: (np.dtype(dtype or a.dtype), a.shape) for name, (a, dtype) in tensors.items()}
    declared["copied"] = (np.dtype(np.uint8), (12345,))
    out = tmp_path / "out.safetensors"
    with safetensors_io.open_output(out) as f, open(tmp_path / "raw.bin", "rb") as source:
        writer = safetensors_io.SafetensorsWriter(f, declared, {"k": "v"}, buffer_bytes=buffer_bytes)
        for name, (array, dtype) in tensors.items():
            writer.write(name, array, dtype=dtype)
        writer.copy("copied", source, 3, 12345)
        writer.close()
    arrays = load_np(str(out))
    np.testing.assert_array_equal(arrays["big_t"], big.T)
    np.testing.assert_array_equal(arrays["cast"], big.astype(np.float16))
    np.testing.assert_array_equal(arrays["bf16_t"].view(np.int16), bf16.T.view(np.int16))
    np.testing.assert_array_equal(arrays["copied"], raw)
    assert arrays["empty"].shape == (0, 4) and float(arrays["scalar"]) == 3.5
    assert safetensors_io.read_header(out)[1] == {"k": "v"}


def test_writer_falls_back_to_plain_writes(tmp_path, monkeypatch):
    # a filesystem that takes O_DIRECT at open but refuses a direct write: the writer carries on without it
    real_write_all, calls = safetensors_io.write_all, []

    def refuse_first(file, view):
        calls.append(len(view))
        if len(calls) == 1:
            raise OSError(errno.EINVAL, "Invalid argument")
        real_write_all(file, view)

    monkeypatch.setattr(safetensors_io, "write_all", refuse_first)
    out = tmp_path / "out.safetensors"
    data = np.arange(5000, dtype=np.float32)
    with safetensors_io.open_output(out) as f:
        writer = safetensors_io.SafetensorsWriter(f, {"x": (data.dtype, data.shape)}, buffer_bytes=8192)
        writer.window.direct = True  # as open_output sets it where the filesystem takes O_DIRECT
        writer.write("x", data)
        writer.close()
    assert len(calls) >= 2 and not writer.window.direct
    np.testing.assert_array_equal(load_np(str(out))["x"], data)


def test_writer_error_in_the_write_thread_reaches_the_caller(tmp_path, monkeypatch):
    real_write_all = safetensors_io.write_all

    def disk_full(file, view):
        if len(view) > 8192:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write_all(file, view)

    monkeypatch.setattr(safetensors_io, "write_all", disk_full)
    data = np.zeros((64, 1024), np.float32)  # 256 KiB in a 64 KiB window: flushed by the thread
    declared = {f"t{i}": (data.dtype, data.shape) for i in range(3)}
    with safetensors_io.open_output(tmp_path / "out.safetensors") as f:
        writer = safetensors_io.SafetensorsWriter(f, declared, buffer_bytes=64 << 10)
        with pytest.raises(OSError, match="No space"):
            for name in declared:
                writer.write(name, data)
            writer.close()
        writer.abort()
        assert writer.window.writing is None


@pytest.mark.parametrize("dtype", [np.float32, np.int8, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, np.float64, np.bool_])
@pytest.mark.parametrize("shape", [(3, 5), (1, 7), (1500, 40), (2, 3, 1030, 17), (3, 3, 600, 900)])
def test_copy_into_lays_out_transposed_views_bit_for_bit(dtype, shape):
    from porter.weights.arrays import copy_into

    rng = np.random.default_rng(len(shape) * 100 + shape[-1])
    bits = rng.integers(0, 256, size=(*shape[:-2], shape[-1], shape[-2], np.dtype(dtype).itemsize), dtype=np.uint8)
    source = bits.view(dtype)[..., 0] if np.dtype(dtype) != np.bool_ else bits[..., 0] % 2 == 1
    view = np.swapaxes(source, -1, -2)  # a transposed kernel, as the layouts stage it
    out = np.empty(view.shape, view.dtype)
    copy_into(view, out)
    width = np.uint8 if view.dtype.itemsize == 1 else f"u{view.dtype.itemsize}"
    np.testing.assert_array_equal(out.view(width), np.ascontiguousarray(view).view(width))


def test_without_a_model_the_restore_snippet_says_which_import_to_fill_in(tmp_path, capsys, torch_net):
    torch.save(torch_net.state_dict(), tmp_path / "net.pt")
    assert run_weights(str(tmp_path / "net.pt"), "-o", str(tmp_path / "out.safetensors")) == 0
    printed = capsys.readouterr().out
    assert "from YOUR_MODULE import Net  # fill in: the module of your converted model and its class" in printed
