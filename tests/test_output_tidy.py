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


# ---------------------------------------------------------------------------- rngs only where drawn
LAYERS = """\
    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    class Flatten(nn.Module):
        def forward(self, x):
            return F.relu(x).reshape(x.shape[0], -1)


    class Pools(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()
            self.pool = nn.MaxPool2d(2)
            self.flat = Flatten()

        def forward(self, x):
            return self.flat(self.pool(self.act(x)))


    class Dropped(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.1)

        def forward(self, x):
            return self.drop(x)


    class Noisy(nn.Module):
        def forward(self, x):
            return x + torch.randn_like(x)


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = Pools()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.features(x))


    class Passed(nn.Module):
        def forward(self, x):
            return x


    def build(cls=Passed):
        return cls()
    """


def test_module_classes_that_draw_nothing_take_no_rngs():
    import jax.numpy as jnp
    from flax import nnx

    code = _convert(textwrap.dedent(LAYERS) + "\n\nnet = Net()\npools = Pools()\n").code
    assert "class Flatten(nnx.Module):\n    def __call__" in code  # no constructor added for rngs
    assert "    def __init__(self):\n        self.act = jax.nn.relu" in code
    assert "self.flat = Flatten()\n" in code and "self.features = Pools()\n" in code
    assert "pools = Pools()\n" in code and "net = Net(rngs=nnx.Rngs(0))\n" in code
    namespace = {}
    exec(code, namespace)
    assert namespace["net"](jnp.ones((2, 1, 4, 4))).shape == (2, 2)
    for drawing in ("Dropped", "Noisy", "Net"):  # a dropout child, a draw in forward, a layer with parameters
        namespace[drawing](rngs=nnx.Rngs(0))
    namespace["Passed"](rngs=nnx.Rngs(0))  # passed as a value: called elsewhere with rngs


def test_a_draw_the_analysis_misses_converts_again_with_rngs(monkeypatch):
    from flax import nnx
    from porter.convert import rngs_free

    monkeypatch.setattr(rngs_free, "_random_torch", lambda expression, ctx: False)
    code = _convert(LAYERS).code
    namespace = {}
    exec(code, namespace)
    namespace["Net"](rngs=nnx.Rngs(0))
    namespace["Dropped"](rngs=nnx.Rngs(0))
    namespace["Pools"]()


def test_a_tree_constructs_another_files_rngs_free_class_without_rngs(tmp_path):
    import os
    import subprocess
    import sys

    from porter.cli import main

    source = tmp_path / "src"
    source.mkdir()
    (source / "layers.py").write_text(textwrap.dedent(LAYERS))
    (source / "train.py").write_text(textwrap.dedent("""\
        import torch
        from layers import Net, Pools

        pools = Pools()
        net = Net()
        x = torch.ones(2, 1, 4, 4)
        print(net(x).shape, pools(x).shape)
        """))
    out = tmp_path / "out"
    assert main(["convert", str(source), "-o", str(out), "-j", "1"]) == 0
    train = (out / "train.py").read_text()
    assert "pools = Pools()\n" in train and "net = Net(rngs=nnx.Rngs(0))\n" in train
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "train.py"], cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_subclass_in_another_file_of_a_class_without_rngs_calls_its_constructor_without_them(tmp_path):
    from porter.cli import main

    source = tmp_path / "src"
    source.mkdir()
    (source / "base.py").write_text(textwrap.dedent("""\
        import torch.nn as nn


        class Scale(nn.Module):
            def __init__(self, s=2.0):
                super().__init__()
                self.s = s

            def forward(self, x):
                return x * self.s
        """))
    (source / "net.py").write_text(textwrap.dedent("""\
        import torch.nn as nn
        from base import Scale


        class Scaled(Scale):
            def __init__(self):
                super().__init__(3.0)
                self.fc = nn.Linear(2, 2)

            def forward(self, x):
                return self.fc(super().forward(x))
        """))
    out = tmp_path / "out"
    assert main(["convert", str(source), "-o", str(out), "-j", "1"]) == 0
    assert "class Scale(nnx.Module):\n    def __init__(self, s=2.0):\n" in (out / "base.py").read_text()
    net = (out / "net.py").read_text()
    assert "super().__init__(3.0)\n" in net and "def __init__(self, *, rngs: nnx.Rngs):" in net
    import sys

    from flax import nnx
    sys.path.insert(0, str(out))
    try:
        import net as converted
        assert converted.Scaled(rngs=nnx.Rngs(0)).s == 3.0
    finally:
        sys.path.remove(str(out))
        sys.modules.pop("net", None)
        sys.modules.pop("base", None)


def test_normalize_and_stateless_children_take_no_rngs_an_init_to_port_keeps_them():
    code = convert_source(textwrap.dedent("""\
        import torch
        import torch.nn as nn
        import torch.nn.functional as F


        class L2(nn.Module):
            def forward(self, x):
                return F.normalize(x, dim=-1)


        class W(nn.Module):
            def __init__(self):
                super().__init__()
                self.w = nn.Parameter(torch.empty(3, 3))
                nn.init.xavier_uniform_(self.w)


        class Seq(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(nn.ReLU(), nn.Flatten(), L2())
        """)).code
    assert "class L2(nnx.Module):\n    def __call__" in code
    assert "class Seq(nnx.Module):\n    def __init__(self):\n" in code and "L2())" in code
    assert "class W(nnx.Module):\n    def __init__(self, *, rngs: nnx.Rngs):\n" in code  # the init is ported by hand


def test_rngs_free_across_files_is_transitive(tmp_path):
    from porter.cli import main

    source = tmp_path / "src"
    source.mkdir()
    (source / "b.py").write_text("import torch.nn as nn\nimport torch.nn.functional as F\n\n\nclass Act(nn.Module):\n"
                                 "    def forward(self, x):\n        return F.relu(x)\n")
    (source / "a.py").write_text("import torch.nn as nn\nfrom b import Act\n\n\nclass Wrap(nn.Module):\n"
                                 "    def __init__(self):\n        super().__init__()\n        self.act = Act()\n\n"
                                 "    def forward(self, x):\n        return self.act(x)\n\n\nw = Wrap()\n")
    assert main(["convert", str(source), "-o", str(tmp_path / "out"), "-j", "1"]) == 0
    code = (tmp_path / "out" / "a.py").read_text()
    assert "    def __init__(self):\n        self.act = Act()\n" in code and "\nw = Wrap()\n" in code


def test_a_class_another_file_passes_as_a_value_keeps_its_rngs(tmp_path):
    """`Block(8, act_layer=Act)` in b.py: Block calls act_layer() with rngs=, so a.py's Act, which draws
    nothing, still takes rngs (the tree's text scan sees the value use before a.py converts); the converted
    tree runs."""
    import subprocess
    import sys

    from porter.cli import main

    source = tmp_path / "src"
    source.mkdir()
    (source / "a.py").write_text("import torch.nn as nn\nimport torch.nn.functional as F\n\n\nclass Act(nn.Module):\n"
                                 "    def forward(self, x):\n        return F.relu(x)\n")
    (source / "b.py").write_text(
        "import torch\nimport torch.nn as nn\nfrom a import Act\n\n\nclass Block(nn.Module):\n"
        "    def __init__(self, d, act_layer=nn.ReLU):\n        super().__init__()\n"
        "        self.fc = nn.Linear(d, d)\n        self.act = act_layer()\n\n"
        "    def forward(self, x):\n        return self.act(self.fc(x))\n\n\n"
        "block = Block(8, act_layer=Act)\nprint(tuple(block(torch.ones(2, 8)).shape))\n")
    main(["convert", str(source), "-o", str(tmp_path / "out"), "-j", "1"])
    assert "rngs" in (tmp_path / "out" / "a.py").read_text()
    done = subprocess.run([sys.executable, "b.py"], cwd=tmp_path / "out", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(2, 8)" in done.stdout
