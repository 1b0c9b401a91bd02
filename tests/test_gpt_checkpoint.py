"""nanoGPT's checkpoint, converted (porter/convert/checkpoints.py): in a DDP script, run as one process, the
dict {'model': raw_model.state_dict(), 'optimizer': ..., 'model_args': ..., 'iter_num': ..., 'config': ...}
is written through Orbax (save_checkpoint) and read back (load_checkpoint), the `_orig_mod.` loop and
load_state_dict included; resuming takes the steps of the run that was never interrupted."""

import textwrap

import numpy as np

from porter import convert_source

SCRIPT = textwrap.dedent('''\
    import os
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.distributed import init_process_group
    from torch.nn.parallel import DistributedDataParallel as DDP


    class Net(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, width), nn.Linear(width, 3)])

        def forward(self, x):
            return self.layers[1](F.relu(self.layers[0](x)))


    config = {'name': 'tiny', 'lr': 1e-2, 'bias': True}
    ddp = int(os.environ.get('RANK', -1)) != -1
    if ddp:
        init_process_group(backend='gloo')
    torch.manual_seed(seed)
    model_args = dict(width=8, extra=None)
    iter_num = 0
    if init_from == 'scratch':
        model = Net(model_args['width'])
    else:
        checkpoint = torch.load(ckpt_path, map_location='cpu')
        model_args['width'] = checkpoint['model_args']['width']
        model = Net(model_args['width'])
        state_dict = checkpoint['model']
        unwanted_prefix = '_orig_mod.'
        for k, v in list(state_dict.items()):
            if k.startswith(unwanted_prefix):
                state_dict[k[len(unwanted_prefix):]] = state_dict.pop(k)
        model.load_state_dict(state_dict)
        iter_num = checkpoint['iter_num']
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    if init_from == 'resume':
        optimizer.load_state_dict(checkpoint['optimizer'])
    checkpoint = None
    if ddp:
        model = DDP(model)
    raw_model = model.module if ddp else model
    losses = []
    for x, y in batches[iter_num:]:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        iter_num += 1
        if iter_num == 3 and init_from == 'scratch':
            checkpoint = {
                'model': raw_model.state_dict(),
                'optimizer': optimizer.state_dict(),
                'model_args': model_args,
                'iter_num': iter_num,
                'config': config,
            }
            print(f"saving checkpoint to {ckpt_path}")
            torch.save(checkpoint, ckpt_path)
    ''')


def batches():
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((8, 4)).astype(np.float32) for _ in range(6)]
    return [(x, x[:, :3].argmax(1)) for x in inputs]


def test_resume_from_orbax_checkpoint_takes_the_uninterrupted_steps(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    conversion = convert_source(SCRIPT, filename="train.py")
    errors = [d.format() for d in conversion.diagnostics if d.severity == "error"]
    assert errors == []
    code = conversion.code
    assert "save_checkpoint(ckpt_path, checkpoint)" in code and "checkpoint = load_checkpoint(ckpt_path)" in code
    path = str(tmp_path / "ckpt.pt")
    whole = {"batches": batches(), "ckpt_path": path, "init_from": "scratch", "seed": 0}
    exec(compile(code, "train.py", "exec"), whole)
    resumed = {"batches": batches(), "ckpt_path": path, "init_from": "resume", "seed": 1}
    exec(compile(code, "train.py", "exec"), resumed)
    assert whole["ddp"] is False  # RANK unset: the single-process branch, as torch's script takes
    assert len(whole["losses"]) == 6 and len(resumed["losses"]) == 3
    np.testing.assert_array_equal(resumed["losses"], whole["losses"][3:])
    assert resumed["model_args"] == {"width": 8, "extra": None}
    # without the optimizer's state the steps differ: the check above is not vacuous
    cold = {"batches": batches(), "ckpt_path": path, "init_from": "resume", "seed": 1}
    exec(compile(code.replace("load_numpy_state(optimizer, checkpoint['optimizer'])", "pass"), "train.py", "exec"),
         cold)
    assert cold["losses"][0] == whole["losses"][3] and cold["losses"][1:] != whole["losses"][4:]


SET_RATE = "    for param_group in optimizer.param_groups:\n        param_group['lr'] = 1e-2 / (1 + iter_num)\n"
SCHEDULER = "scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)\n"


def scheduler_notes(script: str) -> list[str]:
    conversion = convert_source(script, filename="train.py")
    return [d.message for d in conversion.diagnostics if "learning-rate scheduler" in d.message]


def test_a_rate_written_from_the_restored_step_count_is_not_called_a_scheduler():
    """nanoGPT's `param_group['lr'] = get_lr(iter_num)` at each step: the rate follows iter_num, which the
    checkpoint restores, so resuming needs no check of the rates (an lr_scheduler's own step count would)."""
    hand_written = SCRIPT.replace("    loss = F.cross_entropy", SET_RATE + "    loss = F.cross_entropy")
    assert "param_group['lr']" in hand_written and scheduler_notes(hand_written) == []
    with_scheduler = SCRIPT.replace("if init_from == 'resume':\n", SCHEDULER + "if init_from == 'resume':\n")
    assert len(scheduler_notes(with_scheduler)) == 1
