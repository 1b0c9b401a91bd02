"""The GPT fixtures (fixtures/gpt: model, prepare, train, sample in nanoGPT's style) run under torch.

These are the originals issue 16 converts; here they only have to work as PyTorch code: the model's
idioms do what they say (tied head, flash and manual attention agree, parameter groups, cropping,
greedy generation), the training script trains, checkpoints, resumes, and sampling reads its checkpoint.
The scripts run in this process (runpy) from a temporary directory, so torch is imported once.
"""

import math
import runpy
import sys
from pathlib import Path

import pytest
import torch

GPT_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "gpt"
TINY = ["--max_iters=10", "--eval_interval=5", "--lr_decay_iters=10", "--warmup_iters=2"]


@pytest.fixture
def gpt_module(monkeypatch):
    monkeypatch.syspath_prepend(str(GPT_DIR))
    monkeypatch.delitem(sys.modules, "model", raising=False)
    import model

    return model


def tiny_gpt(model, **overrides):
    torch.manual_seed(0)
    config = model.GPTConfig(**{"block_size": 8, "vocab_size": 11, "n_layer": 2, "n_head": 2, "n_embd": 16,
                                **overrides})
    return model.GPT(config)


def test_head_is_tied_to_the_embedding(gpt_module):
    gpt = tiny_gpt(gpt_module)
    assert gpt.lm_head.weight is gpt.transformer.wte.weight
    sd = gpt.state_dict()
    assert {"lm_head.weight", "transformer.wte.weight"} <= set(sd)
    assert sd["lm_head.weight"].data_ptr() == sd["transformer.wte.weight"].data_ptr()
    names = [n for n, _ in gpt.named_parameters()]
    assert "transformer.wte.weight" in names and "lm_head.weight" not in names  # listed once
    # the tied matrix's gradient is the sum of both uses: compare with an untied copy
    idx = torch.randint(11, (2, 8), generator=torch.Generator().manual_seed(1))
    _, loss = gpt(idx, idx)
    loss.backward()
    untied = tiny_gpt(gpt_module)
    untied.lm_head.weight = torch.nn.Parameter(untied.transformer.wte.weight.detach().clone())
    _, loss2 = untied(idx, idx)
    loss2.backward()
    assert torch.allclose(loss, loss2)
    total = untied.lm_head.weight.grad + untied.transformer.wte.weight.grad
    assert torch.allclose(gpt.transformer.wte.weight.grad, total, atol=1e-7)


def test_flash_and_manual_attention_agree(gpt_module):
    flash, manual = tiny_gpt(gpt_module), tiny_gpt(gpt_module, flash=False)
    manual.load_state_dict(flash.state_dict(), strict=False)  # manual has the mask buffer on top
    idx = torch.randint(11, (3, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, _ = flash(idx, idx)
        b, _ = manual(idx, idx)
    assert torch.allclose(a, b, atol=1e-5)
    assert [k for k in manual.state_dict() if k not in flash.state_dict()] == \
        [f"transformer.h.{i}.attn.bias" for i in range(2)]


def test_init_counts_and_crop(gpt_module):
    gpt = tiny_gpt(gpt_module)
    std = gpt.transformer.h[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(4)) < 0.004  # the scaled c_proj init by name
    assert gpt.transformer.h[0].attn.c_attn.bias.abs().max() == 0
    every = sum(p.numel() for p in gpt.parameters())  # the tied matrix counted once
    assert gpt.get_num_params(non_embedding=False) == every
    assert gpt.get_num_params() == every - 8 * 16
    assert gpt.estimate_mfu(4, 0.5) > 0
    gpt.crop_block_size(5)
    assert gpt.transformer.wpe.weight.shape == (5, 16) and gpt.config.block_size == 5
    logits, loss = gpt(torch.zeros(1, 5, dtype=torch.long))
    assert logits.shape == (1, 1, 11) and loss is None


def test_optimizer_groups_by_dimension(gpt_module):
    gpt = tiny_gpt(gpt_module)
    optimizer = gpt.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(gpt.parameters()))


def test_generate_greedy_with_top_k_1(gpt_module):
    gpt = tiny_gpt(gpt_module).eval()
    idx = torch.tensor([[1, 2, 3]])
    torch.manual_seed(5)
    out = gpt.generate(idx, 9, temperature=0.7, top_k=1)  # longer than block_size: the context is cropped
    assert out.shape == (1, 12) and torch.equal(out[:, :3], idx)
    expected = idx
    with torch.no_grad():
        for _ in range(9):
            logits, _ = gpt(expected[:, -8:])
            expected = torch.cat((expected, logits[:, -1, :].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(out, expected)


def run_script(name, monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", [name, *args])
    return runpy.run_path(str(GPT_DIR / name), run_name="__main__")


def test_train_resume_and_sample(tmp_path, monkeypatch, gpt_module):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RANK", raising=False)
    run_script("prepare.py", monkeypatch)
    assert {p.name for p in (tmp_path / "data" / "chars").iterdir()} == {"train.bin", "val.bin", "meta.pkl"}

    first = run_script("train.py", monkeypatch, *TINY)
    assert not first["ddp"] and first["gradient_accumulation_steps"] == 4 and not first["scaler"].is_enabled()
    losses = first["train_losses"]
    assert len(losses) == 11 and losses[0] > math.log(first["meta_vocab_size"]) - 0.2
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3  # it learns
    assert first["optimizer"].param_groups[0]["lr"] == pytest.approx(first["get_lr"](10))
    checkpoint = torch.load(tmp_path / "out" / "ckpt.pt")
    assert set(checkpoint) == {"model", "optimizer", "model_args", "iter_num", "best_val_loss", "config"}
    assert checkpoint["iter_num"] == 10 and "lm_head.weight" in checkpoint["model"]

    resumed = run_script("train.py", monkeypatch, *TINY, "--init_from=resume", "--max_iters=14")
    assert resumed["iter_num"] == 15 and len(resumed["train_losses"]) == 5
    assert max(resumed["train_losses"]) < losses[0] - 0.3  # continues from the trained weights

    greedy = run_script("sample.py", monkeypatch, "--top_k=1", "--num_samples=2", "--max_new_tokens=12")
    assert len(greedy["samples"]) == 2 and greedy["samples"][0] == greedy["samples"][1]  # top-k 1 is greedy
    assert all(len(s) == 13 for s in greedy["samples"])
    sampled = run_script("sample.py", monkeypatch, "--top_k=5")
    assert all(len(s) == 41 for s in sampled["samples"])
