"""Output a Flax engineer would keep: no `x = x` left where a call was removed, no `rngs` for module
classes that build nothing random."""

import textwrap

from porter import convert_source


def _convert(source: str):
    return convert_source(textwrap.dedent(source))


# ---------------------------------------------------------------------------- no-op assignments
def test_removed_placement_calls_leave_no_self_assignment():
    result = _convert("""\
        import torch

        device = torch.device("cpu")
        x = torch.ones(3)
        x = x.to(device)
        tokens, labels = x.to(device), x.cuda()
        tokens, labels = tokens.to(device), labels.to(device)
        x = x.cpu().contiguous()
        print(tokens, labels, x)
        """)
    code = result.code
    assert "x = x\n" not in code and "tokens, labels = tokens, labels" not in code
    assert "tokens, labels = x, x\n" in code  # not a self-assignment: kept
    assert "print(tokens, labels, x)" in code
    dropped = [c for c in result.changes if c.rule == "no-op-assignment"]
    assert [c.line for c in dropped] == [5, 7, 8]
    namespace = {}
    exec(code, namespace)


def test_a_block_left_empty_gets_pass_and_comments_stay():
    code = _convert("""\
        import torch


        def place(x, use_cuda):
            if use_cuda:
                x = x.cuda()
            # the model
            x = x.to("cpu")
            return x.sum(); x = x.cpu()
        """).code
    assert "if use_cuda:\n        pass\n" in code
    assert "    # the model\n    return jnp.sum(x)" in code or "    # the model\n    return x.sum()" in code
    assert "x = x" not in code


def test_a_self_assignment_the_user_wrote_stays():
    code = _convert("""\
        import torch

        x = torch.ones(2)
        x = x
        x = x.cuda(); z = 1
        """).code
    assert "\nx = x\n" in code  # the user's own
    assert code.endswith("\nx = x\nz = 1\n")  # the one porter made goes


def test_in_a_module_forward_and_a_training_loop():
    result = _convert("""\
        import torch
        import torch.nn as nn


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 2)

            def forward(self, x):
                x = x.to(self.fc.weight.device)
                return self.fc(x)


        model = Net()
        x = torch.ones(3, 4)
        out = model(x.cuda())
        """)
    code = result.code
    assert "x = x\n" not in code
    assert "        return self.fc(x)" in code
    exec(code, {})
