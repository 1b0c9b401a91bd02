"""The data side of a script stays torch's (issue 18): what feeds torch.utils.data is left as torch, drawn
from torch's own generator, and every loop over a loader converts its batches where they meet the model.

Each script runs twice: as torch, and converted with the torch model's weights loaded into the converted
one; the data must be the very same tensors, the results the same numbers."""

import textwrap

import numpy as np
import torch

from porter import convert_source, load_torch_state_dict

MODEL = "model = nn.Linear(4, 3)"
CONVERTED_MODEL = "model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))"


def run_both(source: str):
    """(torch's namespace, the converted one's, the conversion)."""
    source = textwrap.dedent(source)
    torch_ns: dict = {}
    assert MODEL in source
    noted = source.replace(MODEL, f"{MODEL}\ninitial = {{k: v.clone() for k, v in model.state_dict().items()}}")
    exec(compile(noted, "original.py", "exec"), torch_ns)
    conversion = convert_source(source, filename="train.py")
    assert CONVERTED_MODEL in conversion.code
    code = conversion.code.replace(CONVERTED_MODEL, f"{CONVERTED_MODEL}\nload_torch_state_dict(model, initial)")
    jax_ns = {"load_torch_state_dict": load_torch_state_dict, "initial": torch_ns["initial"]}
    exec(compile(code, "converted.py", "exec"), jax_ns)
    return torch_ns, jax_ns, conversion


def errors(conversion):
    return [f"{d.code} {d.line}: {d.message}" for d in conversion.diagnostics if d.severity == "error"]


def test_data_given_to_a_loader_stays_torch_with_the_original_numbers():
    torch_ns, jax_ns, conversion = run_both("""\
        import torch
        import torch.nn as nn
        from torch.utils.data import DataLoader, TensorDataset

        torch.manual_seed(0)
        x = torch.randn(8, 3)
        y = torch.randint(0, 2, (8,))
        loader = DataLoader(TensorDataset(x, y), batch_size=4)
        model = nn.Linear(4, 3)
        """)
    assert "x = torch.randn(8, 3)\ny = torch.randint(0, 2, (8,))\n" in conversion.code
    for name in ("x", "y"):
        assert torch.equal(jax_ns[name], torch_ns[name])
    assert [len(b) for b, _ in jax_ns["loader"]] == [4, 4]
    info = next(d.message for d in conversion.diagnostics if d.code == "PT011")
    assert "(x, y) stays torch's, drawn from torch's global generator: the very same numbers" in info
    assert errors(conversion) == []


def test_validation_loop_under_no_grad_converts_its_batches_at_the_model():
    torch_ns, jax_ns, conversion = run_both("""\
        import torch
        import torch.nn as nn
        from torch.utils.data import DataLoader, TensorDataset

        torch.manual_seed(0)
        x = torch.randn(40, 4)
        y = torch.randint(0, 3, (40,))
        loader = DataLoader(TensorDataset(x, y), batch_size=8)
        model = nn.Linear(4, 3)
        correct = []
        model.eval()
        with torch.no_grad():
            for xb, yb in loader:
                correct.append(model(xb).argmax(1).eq(yb).sum().item())
        """)
    assert "model(jnp.asarray(xb))" in conversion.code and "jnp.asarray(yb)" in conversion.code
    assert jax_ns["correct"] == torch_ns["correct"]
    assert errors(conversion) == []


SCRIPT = """\
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
images = torch.randn(56, 4)
labels = torch.randint(0, 3, (56,))
images[labels == 2] += 0.5
images[:, 0] = images[:, 0].clamp(-1.0, 1.0)
tokens = torch.randint(1, 50, (56, 6))
lengths = torch.randint(2, 7, (56,))
for i in range(tokens.shape[0]):
    tokens[i, lengths[i]:] = 0
targets = (tokens[:, 0] > 25).long()
train_loader = DataLoader(TensorDataset(images[:40], labels[:40]), batch_size=8)
val_loader = DataLoader(TensorDataset(images[40:], labels[40:]), batch_size=8)
token_loader = DataLoader(TensorDataset(tokens, targets), batch_size=16)
model = nn.Linear(4, 3)
results = []


def evaluate(loader):
    correct, total = 0, 0
    with torch.no_grad():
        for x, y in loader:
            logits = model(x)
            correct += logits.argmax(1).eq(y).sum().item()
            total += y.shape[0]
    return correct / total


model.eval()
results.append(evaluate(val_loader))
results.append(sum(F.cross_entropy(model(t), y).item() for t, y in val_loader) / len(val_loader))
for i, (x, y) in enumerate(train_loader):
    x = x.view(x.size(0), -1)
    results.append(F.cross_entropy(model(x), y, reduction="sum").item())
for batch in train_loader:
    x, y = batch
    results.append((model(x).argmax(dim=1) == y).float().mean().item())
for t, y in token_loader:
    results.append(model(t[:, :4].float()).sum().item() + y.sum().item())
test_logits = model(images[40:])
results.append((test_logits.argmax(1) == labels[40:]).float().mean().item())
"""


def test_data_edited_in_place_and_every_loop_over_its_loaders_match_torch():
    torch_ns, jax_ns, conversion = run_both(SCRIPT)
    code = conversion.code
    # the data preparation is torch's, as written
    for line in ("images[labels == 2] += 0.5\n", "images[:, 0] = images[:, 0].clamp(-1.0, 1.0)\n",
                 "    tokens[i, lengths[i]:] = 0\n", "targets = (tokens[:, 0] > 25).long()\n"):
        assert line in code
    assert ".at[" not in code
    for name in ("images", "labels", "tokens", "targets"):
        assert torch.equal(jax_ns[name], torch_ns[name]), name
    # where the torch tensors meet the converted code
    for boundary in ("model(jnp.asarray(t))", "jnp.asarray(labels[40:])", "model(jnp.asarray(images[40:]))",
                     "total += y.shape[0]"):
        assert boundary in code, boundary
    np.testing.assert_allclose(jax_ns["results"], torch_ns["results"], rtol=1e-5, atol=1e-5)
    assert errors(conversion) == []


def test_item_assignment_is_reported_on_the_jax_side_only():
    conversion = convert_source(textwrap.dedent("""\
        import torch
        import torch.nn as nn
        from torch.utils.data import DataLoader, TensorDataset

        tokens = torch.randint(1, 50, (8, 6))
        for i in range(8):
            tokens[i, i % 6:] = 0
        loader = DataLoader(TensorDataset(tokens), batch_size=4)
        model = nn.Linear(6, 2)
        out = model(tokens.float())
        out[out < 0] = 0
        """))
    pt040 = [d.line for d in conversion.diagnostics if d.code == "PT040"]
    assert pt040 == [11]  # out, the model's output: a jax array; not tokens, torch's
    assert "    tokens[i, i % 6:] = 0\n" in conversion.code
    assert "out = model(jnp.asarray(tokens).astype(jnp.float32))" in conversion.code


def test_data_built_by_functions_and_a_dataset_class_stays_torch():
    torch_ns, jax_ns, conversion = run_both("""\
        import torch
        import torch.nn as nn
        import torch.nn.functional as F
        from torch.utils.data import DataLoader, Dataset, TensorDataset


        class Doubled(Dataset):
            def __init__(self, n):
                self.x = torch.randn(n, 4)
                self.y = (self.x.sum(1) > 0).long()

            def __len__(self):
                return len(self.x)

            def __getitem__(self, i):
                return self.x[i] * 2, self.y[i]


        def make_data(n):
            x = torch.randn(n, 4)
            x[x.abs() > 1.5] = 0
            return x, torch.randint(0, 3, (n,))


        def make_loader(x, y, shuffle=False):
            return DataLoader(TensorDataset(x.float(), y), batch_size=8, shuffle=shuffle)


        torch.manual_seed(0)
        images, labels = make_data(24)
        loader = make_loader(images, labels)
        doubled = DataLoader(Doubled(16), batch_size=8)
        model = nn.Linear(4, 3)
        results = [F.cross_entropy(model(x), y).item() for x, y in loader]
        results += [model(x).sum().item() for x, _ in doubled]
        results.append(model(images).sum().item())
        """)
    assert "TensorDataset(x.float(), y)" in conversion.code and "x[x.abs() > 1.5] = 0" in conversion.code
    assert "self.x = torch.randn(n, 4)" in conversion.code
    assert torch.equal(jax_ns["images"], torch_ns["images"])
    np.testing.assert_allclose(jax_ns["results"], torch_ns["results"], rtol=1e-5, atol=1e-5)
    assert [d.code for d in conversion.diagnostics if d.code != "PT007"] == ["PT011"]


def test_train_step_takes_its_batches_as_they_are_and_steps_as_torch():
    torch_ns, jax_ns, conversion = run_both("""\
        import torch
        import torch.nn as nn
        import torch.nn.functional as F
        from torch.utils.data import DataLoader, TensorDataset

        torch.manual_seed(0)
        x = torch.randn(48, 4)
        y = torch.randint(0, 3, (48,))
        loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True,
                            generator=torch.Generator().manual_seed(1))
        model = nn.Linear(4, 3)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = []
        for epoch in range(2):
            for xb, yb in loader:
                optimizer.zero_grad()
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        """)
    code = conversion.code
    assert "        logits = model(xb)\n        loss = cross_entropy_loss(logits, yb)\n" in code
    assert "train_step_fast(jnp.asarray(xb), jnp.asarray(yb))" in code
    np.testing.assert_allclose(jax_ns["losses"], torch_ns["losses"], rtol=1e-5, atol=1e-6)
    assert errors(conversion) == []


def test_a_rank_given_to_a_sampler_is_the_converted_code_s():
    conversion = convert_source(textwrap.dedent("""\
        import torch
        import torch.distributed as dist
        from torch.utils.data import DataLoader, TensorDataset
        from torch.utils.data.distributed import DistributedSampler

        rank = dist.get_rank()
        data = torch.randn(16, 4)
        sampler = DistributedSampler(TensorDataset(data), rank=rank)
        loader = DataLoader(TensorDataset(data), sampler=sampler)
        """))
    assert "rank = jax.process_index()" in conversion.code
    assert "data = torch.randn(16, 4)" in conversion.code


def test_batches_moved_to_a_device_cast_or_taken_with_next_match_torch():
    torch_ns, jax_ns, conversion = run_both("""\
        import torch
        import torch.nn as nn
        from torch.utils.data import DataLoader, TensorDataset

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(0)
        images = torch.randn(32, 4).to(device)
        labels = torch.randint(0, 3, (32,), device=device)
        loader = DataLoader(TensorDataset(images, labels), batch_size=8)
        model = nn.Linear(4, 3)
        results = []
        with torch.no_grad():
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                if (y == 0).any():
                    results.append((model(x).argmax(1) == y).float().sum().item())
                results.append(model(x.to(torch.float64).float()).sum().item())
            first, _ = next(iter(loader))
            results.append(model(first).sum().item())
        """)
    code = conversion.code
    assert 'device = torch.device("cuda" if torch.cuda.is_available() else "cpu")' in code  # the data's device
    assert "model(jnp.asarray(first))" in code and "(jnp.asarray(y) == 0)" in code
    np.testing.assert_allclose(jax_ns["results"], torch_ns["results"], rtol=1e-5, atol=1e-5)
    assert errors(conversion) == []


def test_data_computed_by_the_converted_model_is_an_error():
    conversion = convert_source(textwrap.dedent("""\
        import torch
        import torch.nn as nn
        from torch.utils.data import DataLoader, TensorDataset

        teacher = nn.Linear(4, 3)
        x = torch.randn(16, 4)
        with torch.no_grad():
            soft = teacher(x).softmax(-1)
        loader = DataLoader(TensorDataset(x, soft), batch_size=8)
        """))
    assert [(d.code, d.line) for d in conversion.diagnostics if d.severity == "error"] == [("PT043", 8)]
    assert "x = torch.randn(16, 4)" in conversion.code


def test_a_loader_made_and_read_by_functions_matches_torch():
    torch_ns, jax_ns, conversion = run_both("""\
        import torch
        import torch.nn as nn
        from torch.utils.data import DataLoader, TensorDataset


        def make_loader(x, y):
            return DataLoader(TensorDataset(x, y), batch_size=8)


        def evaluate(model, loader):
            return sum((model(x).argmax(1) == y).sum().item() for x, y in loader)


        torch.manual_seed(0)
        images = torch.randn(32, 4)
        labels = torch.randint(0, 3, (32,))
        model = nn.Linear(4, 3)
        correct = evaluate(model, make_loader(images.double().float(), labels))
        """)
    assert "make_loader(images.double().float(), labels)" in conversion.code  # torch's, for the loader
    assert jax_ns["correct"] == torch_ns["correct"]
    assert errors(conversion) == []


def test_a_dataset_of_one_line_methods_and_dict_batches_matches_torch():
    torch_ns, jax_ns, conversion = run_both("""\
        import torch
        import torch.nn as nn
        from torch.utils import data as tud


        def loader_of(*args, **kwargs): return tud.DataLoader(*args, **kwargs)


        class Pairs(tud.Dataset):
            def __len__(self): return 6
            def __getitem__(self, i): return {"x": torch.ones(4) * i, "y": torch.tensor(i % 3)}


        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        results = []
        for step, batch in enumerate(loader_of(Pairs(), batch_size=2)):
            results.append(model(batch["x"]).argmax(-1).eq(batch["y"]).sum().item())
        results += [model(b["x"]).sum().item() for b in loader_of(Pairs(), batch_size=3)]
        """)
    assert 'def __getitem__(self, i): return {"x": torch.ones(4) * i, "y": torch.tensor(i % 3)}' in conversion.code
    np.testing.assert_allclose(jax_ns["results"], torch_ns["results"], rtol=1e-5, atol=1e-5)
    assert errors(conversion) == []
