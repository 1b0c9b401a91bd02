"""Checkpoints as training scripts write them: torch.save / torch.load of state dicts, converted to the
emitted save_pickle / load_pickle / numpy_state / load_numpy_state, and what stays an error."""

import pickle
import textwrap

import numpy as np
import pytest
import torch

from porter import convert_source, load_torch_state_dict

NET = """\
import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


"""

TRAIN = """\
torch.manual_seed(seed)
model = Net()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
losses = []
"""

EPOCHS = """\
for epoch in range(start, 4):
    model.train()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    if epoch == 1:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, path)
"""

RESUME = """\
ckpt = torch.load(path, map_location="cpu", weights_only=True)
model.load_state_dict(ckpt["model"])
optimizer.load_state_dict(ckpt["optimizer"])
start = ckpt["epoch"] + 1
"""


def batches():
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((8, 4)).astype(np.float32) for _ in range(5)]
    return [(x, x[:, :3].argmax(1)) for x in inputs]


def run(source: str, **names) -> dict:
    conversion = convert_source(source, filename="train.py")
    assert [d.format() for d in conversion.diagnostics if d.severity == "error"] == []
    namespace = {"batches": batches(), **names}
    exec(compile(conversion.code, "train.py", "exec"), namespace)
    return namespace


def test_dict_checkpoint_converts_to_the_pickle_helpers():
    conversion = convert_source(NET + TRAIN + "start = 0\n" + EPOCHS + RESUME, filename="train.py")
    code = conversion.code
    assert 'save_pickle({"model": numpy_state(model), "optimizer": numpy_state(optimizer), "epoch": epoch}, path)' \
        in code
    assert 'ckpt = load_pickle(path)\nload_numpy_state(model, ckpt["model"])\n' \
           'load_numpy_state(optimizer, ckpt["optimizer"])\nstart = ckpt["epoch"] + 1\n' in code
    script = code[code.index("class Net"):]
    assert "torch.save" not in script and "torch.load" not in script and "state_dict" not in script
    assert "import pickle\n" in code and "def load_pickle(" in code and "class NumpyUnpickler(" in code
    assert not any(d.severity == "error" for d in conversion.diagnostics)
    [note] = [d for d in conversion.diagnostics if "torch.save -> save_pickle" in d.message]
    assert note.code == "PT007" and "not a torch checkpoint" in note.message and "porter weights" in note.message
    assert "import porter" not in code and "from porter" not in code  # the emitted helpers stand alone


def test_saved_model_loads_into_a_fresh_model_with_the_same_outputs(tmp_path):
    path = str(tmp_path / "model.ckpt")
    source = NET + TRAIN + "start = 0\n" + EPOCHS + textwrap.dedent("""\
        torch.save(model.state_dict(), path)
        torch.manual_seed(seed + 1)
        restored = Net()
        restored.load_state_dict(torch.load(path))
        model.eval()
        restored.eval()
        """)
    ns = run(source, path=path, seed=0)
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    fresh = ns["Net"](rngs=ns["nnx"].Rngs(1))
    fresh.eval()
    assert not np.allclose(np.asarray(fresh(x)), np.asarray(ns["model"](x)))  # a different model before loading
    np.testing.assert_array_equal(np.asarray(ns["restored"](x)), np.asarray(ns["model"](x)))
    np.testing.assert_array_equal(np.asarray(ns["restored"].bn.mean[...]), np.asarray(ns["model"].bn.mean[...]))


def test_resumed_training_takes_the_uninterrupted_steps(tmp_path):
    """Saved after epoch 1 of 4; a fresh model and optimizer (another seed) resume from the file: epochs 2 and
    3 give the losses of the run that was never interrupted, bit for bit (AdamW's moments and step count
    come back with the optimizer's state)."""
    path = str(tmp_path / "ckpt.pkl")
    whole = run(NET + TRAIN + "start = 0\n" + EPOCHS, path=path, seed=0)
    resumed = run(NET + TRAIN + RESUME + EPOCHS, path=path, seed=1)
    assert resumed["start"] == 2
    assert len(resumed["losses"]) == 10
    assert resumed["losses"] == whole["losses"][10:]
    # without the optimizer's state the steps differ: the check above is not vacuous
    cold = run(NET + TRAIN + RESUME.replace('optimizer.load_state_dict(ckpt["optimizer"])\n', "") + EPOCHS,
               path=path, seed=1)
    assert cold["losses"][0] == whole["losses"][10] and cold["losses"][1:] != whole["losses"][11:]


def test_resume_matches_torch_losses(tmp_path):
    """The converted run (saved, resumed) against torch's own save and resume, from the same weights."""
    torch_ns = {"batches": [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches()],
                "path": str(tmp_path / "torch.pt"), "seed": 0}
    exec(compile(NET + TRAIN + "start = 0\n" + EPOCHS, "torch.py", "exec"), torch_ns)
    resumed_torch = {**torch_ns, "seed": 1}
    exec(compile(NET + TRAIN + RESUME + EPOCHS, "torch.py", "exec"), resumed_torch)
    path = str(tmp_path / "converted.pkl")
    source = NET + TRAIN + "start = 0\n" + EPOCHS
    conversion = convert_source(source, filename="train.py")
    torch.manual_seed(0)
    start_weights = type(torch_ns["model"])().state_dict()
    code = conversion.code.replace("optimizer = nnx.Optimizer(", "load_torch_state_dict(model, start_weights)\n"
                                                                 "optimizer = nnx.Optimizer(")
    ns = {"batches": batches(), "path": path, "seed": 0, "load_torch_state_dict": load_torch_state_dict,
          "start_weights": start_weights}
    exec(compile(code, "train.py", "exec"), ns)
    np.testing.assert_allclose(ns["losses"], torch_ns["losses"], rtol=1e-4)
    resumed = run(NET + TRAIN + RESUME + EPOCHS, path=path, seed=1)
    np.testing.assert_allclose(resumed["losses"], resumed_torch["losses"], rtol=1e-4)


def test_weights_only_load_refuses_other_objects_as_torch_does(tmp_path):
    path = str(tmp_path / "ckpt.pkl")
    source = "import argparse\n" + NET + "model = Net()\n" + textwrap.dedent("""\
        torch.save({"model": model.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
        ckpt = torch.load(path, weights_only=trusted)
        model.load_state_dict(ckpt["model"])
        """)
    code = convert_source(source, filename="save.py").code
    assert "ckpt = load_pickle(path, weights_only=trusted)" in code
    with pytest.raises(pickle.UnpicklingError, match="argparse.Namespace is not loaded with weights_only=True"):
        exec(compile(code, "save.py", "exec"), {"path": path, "trusted": True})
    namespace = {"path": path, "trusted": False}
    exec(compile(code, "save.py", "exec"), namespace)
    assert namespace["ckpt"]["args"].lr == 0.1


def test_torch_checkpoint_read_by_load_checkpoint_says_what_to_do(tmp_path):
    path = tmp_path / "torch.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    source = NET + "model = Net()\nmodel.load_state_dict(torch.load(path))\n"
    conversion = convert_source(source, filename="load.py")
    assert "load_numpy_state(model, load_checkpoint(path))" in conversion.code  # no save here: either format
    [note] = [d for d in conversion.diagnostics if "load_checkpoint" in d.message]
    assert note.code == "PT005" and "porter weights" in note.message  # no save in this file: a warning
    with pytest.raises(ValueError, match="torch checkpoint.*porter weights"):
        exec(compile(conversion.code, "load.py", "exec"), {"path": str(path)})


def test_state_dict_of_another_shape_fails_loudly(tmp_path):
    source = NET + "model = Net()\nmodel.load_state_dict(state)\n"
    code = convert_source(source, filename="load.py").code
    state = {"fc1": {"kernel": np.zeros((4, 8), np.float32)}}
    with pytest.raises(ValueError, match="missing"):
        exec(compile(code, "load.py", "exec"), {"state": state})


@pytest.mark.parametrize("line,why", [
    ("torch.save(model, path)", "pickles the whole object"),
    ("torch.save(model.state_dict(), path, pickle_protocol=4)", "pickle_protocol"),
    ("model.load_state_dict(torch.load(path), strict=False)", "strict=True"),
    ("model.load_state_dict(torch.load(path, mmap=True))", "mmap"),
])
def test_what_cannot_convert_exactly_stays_an_error(line, why):
    conversion = convert_source(NET + "model = Net()\n" + line + "\n", filename="c.py")
    errors = [d for d in conversion.diagnostics if d.severity == "error"]
    assert errors and any(why in d.message for d in errors), [d.format() for d in conversion.diagnostics]
    assert line.split("(")[0] in conversion.code


def test_torch_save_of_data_and_other_state_dicts_are_left_as_before():
    conversion = convert_source(NET + textwrap.dedent("""\
        model = Net()
        scheduler = torch.optim.lr_scheduler.StepLR(torch.optim.SGD(model.parameters(), lr=0.1), 2)
        data = torch.load("dataset.pt")
        torch.save(data, "copy.pt")
        torch.save({"model": model.state_dict(), "scheduler": scheduler.state_dict()}, "ckpt.pt")
        """), filename="c.py")
    code = conversion.code
    assert 'data = torch.load("dataset.pt")' in code and 'torch.save(data, "copy.pt")' in code
    assert '"scheduler": scheduler.state_dict()' in code and "save_pickle" not in code
    assert sum(d.severity == "error" for d in conversion.diagnostics) >= 3


def test_best_weights_snapshot_with_deepcopy_restores():
    """`copy.deepcopy(model.state_dict())` is a snapshot (numpy_state), restored by load_state_dict."""
    source = "import copy\n" + NET + TRAIN + textwrap.dedent("""\
        for epoch in range(3):
            for x, y in batches:
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if epoch == 1:
                best = copy.deepcopy(model.state_dict())
        model.eval()
        trained = model(x)
        model.load_state_dict(best)
        restored = model(x)
        """)
    conversion = convert_source(source, filename="best.py")
    assert "best = numpy_state(model)" in conversion.code and "load_numpy_state(model, best)" in conversion.code
    namespace = run(source, seed=0)
    kernel = np.asarray(namespace["model"].fc1.kernel[...])
    assert np.array_equal(kernel, namespace["best"]["fc1"]["kernel"])
    # epoch 2 trained on, and the model went back
    assert not np.allclose(np.asarray(namespace["trained"]), np.asarray(namespace["restored"]))


def test_fast_path_converts_checkpoints_as_the_plain_path():
    # `best = copy.deepcopy(model.state_dict())` and `model.load_state_dict(ckpt["model"])` name no torch
    # API: the prefilter must not skip them
    from porter.convert.pipeline import _convert
    source = "import copy\n" + NET + TRAIN + "start = 0\n" + EPOCHS + RESUME + "best = copy.deepcopy(model.state_dict())\n"
    fast, plain = _convert(source, "c.py", fast=True), _convert(source, "c.py", fast=False)
    assert "best = numpy_state(model)" in fast.code
    assert (fast.code, fast.diagnostics) == (plain.code, plain.diagnostics)


def test_state_dict_built_just_before_the_save_is_saved():
    source = NET + TRAIN + "start = 0\n" + EPOCHS.replace(
        '        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, path)',
        '        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}\n'
        '        torch.save(state, path)') + RESUME
    conversion = convert_source(source, filename="c.py")
    assert 'state = {"model": numpy_state(model), "optimizer": numpy_state(optimizer), "epoch": epoch}\n' \
           '        save_pickle(state, path)' in conversion.code
    assert not any(d.severity == "error" for d in conversion.diagnostics)


def test_state_dict_built_long_before_the_save_stays_an_error():
    # torch's state_dict() aliases the parameters: saved after more training, it holds the trained values
    source = NET + TRAIN + textwrap.dedent("""\
        state = {"model": model.state_dict()}
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        torch.save(state, path)
        """)
    conversion = convert_source(source, filename="c.py")
    assert "torch.save(state, path)" in conversion.code and 'state = {"model": model.state_dict()}' in conversion.code
    assert {"PT003", "PT040"} <= {d.code for d in conversion.diagnostics}


def test_resuming_a_scheduled_optimizer_warns_about_the_scheduler():
    source = NET + TRAIN + "scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2)\n" + RESUME
    conversion = convert_source(source, filename="c.py")
    assert 'load_numpy_state(optimizer, ckpt["optimizer"])' in conversion.code
    [warning] = [d for d in conversion.diagnostics if d.code == "PT005" and "scheduler" in d.message]
    assert warning.line == source.splitlines().index('optimizer.load_state_dict(ckpt["optimizer"])') + 1
