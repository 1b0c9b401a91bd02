"""Differential fuzzing: random small nn.Module programs, as source text.

`programs()` is a hypothesis strategy drawing a `Program`: the source of a
torch model (`class Net(nn.Module)`, optionally with a helper block class), its
input shape, and the layers it uses. The generator tracks the shape of the one
tensor flowing through `forward`, so every program runs: it picks, for the
current kind of tensor, a layer or op that accepts it (a stack of layers, a
residual `x = x + f(x)`, a reshape between kinds, a submodule class used
twice, an `nn.Sequential`, an `nn.ModuleList` loop, a two-output layer).

Kinds of tensor: "vec" (N, F), "seq" (N, L, F), "sig" (N, C, L),
"img" (N, C, H, W). Sizes stay small (CPU, many programs).

`run_program` converts the source with porter, builds both models, draws the
torch parameters and buffers at random, and checks equivalence with
porter.check_equivalence (weights loaded strictly; outputs and gradients of
inputs and parameters; eval mode, every third program train mode with the
running statistics compared after a step). Any conversion error, any
exception and any difference is a failure, unless the check's float64 verdict
finds it is float32 rounding (porter/check/conditioning.py).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

# Normalising over fewer elements is degenerate: over 1 the output is the bias and the gradient pure rounding
# noise; over 2 the output is +-1 and the gradient ~eps/|x|^3. Both frameworks are right and disagree in
# the noise, so the generator normalises over at least 3.
MIN_NORMALIZED = 3
N = MIN_NORMALIZED  # batch: BatchNorm1d on (N, F) normalises over the batch in train mode


@dataclass
class Shape:
    kind: str  # vec | seq | sig | img
    dims: tuple[int, ...]  # without the batch

    @property
    def full(self) -> tuple[int, ...]:
        return (N, *self.dims)


@dataclass
class Builder:
    """The program being drawn: attributes for __init__, statements for forward."""

    draw: object
    init: list[str] = field(default_factory=list)
    forward: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    used: set[str] = field(default_factory=set)
    count: int = 0
    transposed: bool = False  # a transpose/permute happened: torch's .view may refuse the strides

    def attr(self, source: str, used: str) -> str:
        name = f"l{self.count}"
        self.count += 1
        self.init.append(f"self.{name} = {source}")
        self.used.add(used)
        return f"self.{name}"

    def pick(self, options):
        return self.draw(st.sampled_from(options))

    def int(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))

    def bool(self) -> bool:
        return self.draw(st.booleans())


@dataclass
class Program:
    source: str
    input_shape: tuple[int, ...]
    used: frozenset[str]

    def __repr__(self) -> str:  # hypothesis prints this for a failing example
        return f"Program(input_shape={self.input_shape}, used={sorted(self.used)}, source=\n{self.source})"


# --------------------------------------------------------------------------- shape-preserving layers
ACTIVATION_LAYERS = ["nn.ReLU()", "nn.GELU()", "nn.GELU(approximate='tanh')", "nn.SiLU()", "nn.Tanh()",
                     "nn.Sigmoid()", "nn.LeakyReLU(0.1)", "nn.ELU()", "nn.Mish()", "nn.Hardswish()",
                     "nn.Hardsigmoid()", "nn.ReLU6()", "nn.Softplus()", "nn.SELU()", "nn.CELU(0.5)",
                     "nn.Softsign()", "nn.Identity()", "nn.Dropout(0.1)", "nn.Hardtanh(-0.5, 0.5)",
                     "nn.LogSigmoid()"]
ACTIVATION_FUNCTIONS = ["F.relu({x})", "F.gelu({x})", "torch.sigmoid({x})", "torch.tanh({x})", "F.silu({x})",
                        "{x} * 0.5 + 1.0", "F.leaky_relu({x}, 0.2)", "{x}.relu()", "torch.relu({x})"]


def activation(b: Builder, x: str) -> str:
    if b.bool():
        layer = b.pick(ACTIVATION_LAYERS)
        return f"{b.attr(layer, layer.split('(')[0])}({x})"
    return b.pick(ACTIVATION_FUNCTIONS).format(x=x)


def same_shape_layer(b: Builder, s: Shape) -> str | None:
    """A layer source that keeps shape s (None when none fits)."""
    if s.kind == "vec":
        f = s.dims[0]
        options = [f"nn.Linear({f}, {f})", f"nn.BatchNorm1d({f})", "nn.PReLU()"] + (
            [f"nn.RMSNorm({f})"] if f >= 2 else [])  # RMS over one value is its sign: degenerate as above
        if f >= MIN_NORMALIZED:
            options += [f"nn.LayerNorm({f})", f"nn.LayerNorm({f}, elementwise_affine=False)"]
    elif s.kind == "seq":
        f = s.dims[1]
        options = [f"nn.Linear({f}, {f})"] + ([f"nn.RMSNorm({f}, eps=1e-6)"] if f >= 2 else [])
        if f >= MIN_NORMALIZED:
            options += [f"nn.LayerNorm({f}, eps=1e-6)", f"nn.LayerNorm({f}, bias=False)"]
    elif s.kind == "sig":
        c = s.dims[0]
        length = s.dims[1]
        groups = [g for g in (1, 2, c) if c % g == 0 and c // g * length >= MIN_NORMALIZED]
        options = [f"nn.Conv1d({c}, {c}, 3, padding=1)", f"nn.BatchNorm1d({c})",
                   f"nn.Conv1d({c}, {c}, 3, padding='same', bias=False)", f"nn.PReLU({c})", f"nn.Dropout1d(0.2)"]
        if groups:
            options.append(f"nn.GroupNorm({b.pick(groups)}, {c})")
        if length >= MIN_NORMALIZED:
            options.append(f"nn.InstanceNorm1d({c}, affine=True)")
        if s.dims[1] >= 3:
            options.append(f"nn.ReflectionPad1d(1)")  # paired with a conv below
    else:
        c, h, w = s.dims
        divisors = [g for g in (1, 2, c) if c % g == 0]
        groups = [g for g in divisors if c // g * h * w >= MIN_NORMALIZED]
        options = [f"nn.Conv2d({c}, {c}, 3, padding=1)", f"nn.BatchNorm2d({c})",
                   f"nn.Conv2d({c}, {c}, (1, 3), padding=(0, 1), groups={b.pick(divisors)})",
                   f"nn.Dropout2d(0.1)", f"nn.Conv2d({c}, {c}, 1)", f"nn.PReLU({c})"]
        if groups:
            options.append(f"nn.GroupNorm({b.pick(groups)}, {c})")
        if h * w >= MIN_NORMALIZED:
            options.append(f"nn.InstanceNorm2d({c})")
    choice = b.pick(options)
    if choice == "nn.ReflectionPad1d(1)":
        c = s.dims[0]
        return f"nn.Sequential(nn.ReflectionPad1d(1), nn.Conv1d({c}, {c}, 3))"
    return choice


# --------------------------------------------------------------------------- shape-changing steps
def step(b: Builder, s: Shape, x: str = "x") -> Shape:
    """Appends forward statements transforming x; returns the new shape."""
    kind = s.kind
    moves = ["layer", "activation", "residual", "sequential"]
    moves += {"vec": ["linear", "to_seq", "bilinear", "block"],
              "seq": ["linear", "attention", "rnn", "to_sig", "to_vec", "block", "transformer"],
              "sig": ["conv", "pool", "upsample", "to_seq", "to_vec", "conv_transpose", "modulelist"],
              "img": ["conv", "pool", "upsample", "to_vec", "pad", "pixel_shuffle", "conv_transpose",
                      "channels_last_norm", "modulelist", "to_sig"]}[kind]
    move = b.pick(moves)
    if move == "layer":
        layer = same_shape_layer(b, s)
        b.forward.append(f"{x} = {b.attr(layer, layer.split('(')[0])}({x})")
        return s
    if move == "activation":
        b.forward.append(f"{x} = {activation(b, x)}")
        return s
    if move == "residual":
        layer = same_shape_layer(b, s)
        b.forward.append(f"{x} = {x} + {b.attr(layer, layer.split('(')[0])}({x})")
        return s
    if move == "sequential":
        first, second = same_shape_layer(b, s), same_shape_layer(b, s)
        act = b.pick(ACTIVATION_LAYERS)
        seq = b.attr(f"nn.Sequential({first}, {act}, {second})", "nn.Sequential")
        b.used |= {first.split("(")[0], act.split("(")[0], second.split("(")[0]}
        b.forward.append(f"{x} = {seq}({x})")
        return s
    if move == "linear":
        f_in = s.dims[-1]
        f_out = b.int(1, 8)
        bias = b.bool()
        layer = b.attr(f"nn.Linear({f_in}, {f_out}, bias={bias})", "nn.Linear")
        b.forward.append(f"{x} = {layer}({x})")
        return Shape(kind, (*s.dims[:-1], f_out))
    if move == "to_seq":
        if kind == "vec":  # (N, F) -> (N, L, F/L)
            f = s.dims[0]
            splits = [l for l in (1, 2, 3, 4) if f % l == 0]
            length = b.pick(splits)
            b.forward.append(f"{x} = {x}.view({x}.shape[0], {length}, {f // length})" if not b.transposed
                             else f"{x} = {x}.reshape({x}.shape[0], {length}, {f // length})")
            return Shape("seq", (length, f // length))
        # sig (N, C, L) -> seq (N, L, C)
        b.forward.append(b.pick([f"{x} = {x}.transpose(1, 2)", f"{x} = {x}.permute(0, 2, 1)"]))
        b.transposed = True
        return Shape("seq", (s.dims[1], s.dims[0]))
    if move == "to_sig":
        if kind == "seq":
            b.forward.append(f"{x} = {x}.transpose(1, 2)")
            b.transposed = True
            return Shape("sig", (s.dims[1], s.dims[0]))
        c, h, w = s.dims  # img -> sig: merge H, W
        b.forward.append(b.pick([f"{x} = {x}.flatten(2)", f"{x} = {x}.reshape({x}.shape[0], {c}, {h * w})"]))
        b.transposed = True  # flatten of a permuted tensor copies; keep it simple: no .view after this
        return Shape("sig", (c, h * w))
    if move == "to_vec":
        size = int(np.prod(s.dims))
        if kind == "img" and b.bool():
            pool = b.attr("nn.AdaptiveAvgPool2d((1, 1))", "nn.AdaptiveAvgPool2d")
            b.forward.append(f"{x} = torch.flatten({pool}({x}), 1)")
            return Shape("vec", (s.dims[0],))
        ways = [f"{x} = torch.flatten({x}, 1)", f"{x} = {x}.reshape({x}.shape[0], {size})", "flatten_layer"]
        if not b.transposed:
            ways.append(f"{x} = {x}.view({x}.size(0), -1)")
        how = b.pick(ways)
        if how == "flatten_layer":
            layer = b.attr("nn.Flatten()", "nn.Flatten")
            how = f"{x} = {layer}({x})"
        b.forward.append(how)
        return Shape("vec", (size,))
    if move == "bilinear":
        f = s.dims[0]
        out = b.int(1, 6)
        layer = b.attr(f"nn.Bilinear({f}, {f}, {out})", "nn.Bilinear")
        b.forward.append(f"{x} = {layer}({x}, torch.tanh({x}))")
        return Shape("vec", (out,))
    if move == "attention":
        length, f = s.dims
        heads = b.pick([h for h in (1, 2, 4) if f % h == 0])
        layer = b.attr(f"nn.MultiheadAttention({f}, {heads}, batch_first=True)", "nn.MultiheadAttention")
        if b.bool():
            b.forward.append(f"{x} = {x} + {layer}({x}, {x}, {x}, need_weights=False)[0]")
        else:
            b.forward.append(f"attended, weights = {layer}({x}, {x}, {x})")
            b.forward.append(f"{x} = attended + weights.sum(-1, keepdim=True)")
        return s
    if move == "transformer":
        length, f = s.dims
        if f < MIN_NORMALIZED:
            return s
        heads = b.pick([h for h in (1, 2) if f % h == 0])
        layer = (f"nn.TransformerEncoderLayer({f}, {heads}, dim_feedforward={b.int(1, 8)}, batch_first=True, "
                 f"norm_first={b.bool()}, activation={b.pick(['relu', 'gelu'])!r})")
        if b.bool():
            encoder = b.attr(f"nn.TransformerEncoder({layer}, {b.int(1, 2)})", "nn.TransformerEncoder")
        else:
            encoder = b.attr(layer, "nn.TransformerEncoderLayer")
        b.used.add("nn.TransformerEncoderLayer")
        b.forward.append(f"{x} = {encoder}({x})")
        return s
    if move == "rnn":
        length, f = s.dims
        hidden = b.int(1, 6)
        cls = b.pick(["LSTM", "GRU", "RNN"])
        bidirectional = b.bool()
        layers = b.int(1, 2)
        layer = b.attr(f"nn.{cls}({f}, {hidden}, num_layers={layers}, batch_first=True, "
                       f"bidirectional={bidirectional})", f"nn.{cls}")
        b.forward.append(f"{x}, _ = {layer}({x})")
        return Shape("seq", (length, hidden * (2 if bidirectional else 1)))
    if move == "conv":
        c_in = s.dims[0]
        c_out = b.int(1, 6)
        k = b.int(1, 3)
        stride = b.int(1, 2)
        padding = b.int(0, k // 2)
        spatial = s.dims[1:]
        n = len(spatial)
        out = tuple((d + 2 * padding - k) // stride + 1 for d in spatial)
        if min(out) < 1:
            return s
        layer = b.attr(f"nn.Conv{n}d({c_in}, {c_out}, {k}, stride={stride}, padding={padding})", f"nn.Conv{n}d")
        b.forward.append(f"{x} = {layer}({x})")
        return Shape(kind, (c_out, *out))
    if move == "conv_transpose":
        c_in = s.dims[0]
        c_out = b.int(1, 4)
        k = b.int(1, 3)
        stride = b.int(1, 2)
        padding = b.int(0, (k - 1) // 2)
        output_padding = b.int(0, stride - 1)
        spatial = s.dims[1:]
        n = len(spatial)
        out = tuple((d - 1) * stride - 2 * padding + k + output_padding for d in spatial)
        if min(out) < 1 or max(out) > 12:
            return s
        layer = b.attr(f"nn.ConvTranspose{n}d({c_in}, {c_out}, {k}, stride={stride}, padding={padding}, "
                       f"output_padding={output_padding})", f"nn.ConvTranspose{n}d")
        b.forward.append(f"{x} = {layer}({x})")
        return Shape(kind, (c_out, *out))
    if move == "pool":
        spatial = s.dims[1:]
        n = len(spatial)
        if min(spatial) < 2:
            return s
        how = b.pick(["max", "avg", "adaptive_avg", "adaptive_max", "functional"])
        if how == "adaptive_avg":
            out = tuple(b.pick([o for o in range(1, d + 1) if d % o == 0]) for d in spatial)
            layer = b.attr(f"nn.AdaptiveAvgPool{n}d({out if n > 1 else out[0]})", f"nn.AdaptiveAvgPool{n}d")
        elif how == "adaptive_max":
            out = tuple(b.int(1, d) for d in spatial)
            layer = b.attr(f"nn.AdaptiveMaxPool{n}d({out if n > 1 else out[0]})", f"nn.AdaptiveMaxPool{n}d")
        elif how == "functional":
            b.forward.append(f"{x} = F.max_pool{n}d({x}, 2)" if b.bool() else f"{x} = F.avg_pool{n}d({x}, 2)")
            return Shape(kind, (s.dims[0], *(d // 2 for d in spatial)))
        else:
            k = b.int(2, min(3, min(spatial)))
            stride = b.pick([None, 1, 2])
            padding = b.int(0, k // 2)
            cls = "MaxPool" if how == "max" else "AvgPool"
            args = f"{k}" + (f", stride={stride}" if stride else "") + (f", padding={padding}" if padding else "")
            layer = b.attr(f"nn.{cls}{n}d({args})", f"nn.{cls}{n}d")
            stride = stride or k
            out = tuple((d + 2 * padding - k) // stride + 1 for d in spatial)
        b.forward.append(f"{x} = {layer}({x})")
        return Shape(kind, (s.dims[0], *out))
    if move == "upsample":
        spatial = s.dims[1:]
        n = len(spatial)
        if max(spatial) > 6:
            return s
        mode = b.pick(["nearest", "linear" if n == 1 else "bilinear"])
        align = "" if mode == "nearest" else f", align_corners={b.bool()}"
        layer = b.attr(f"nn.Upsample(scale_factor=2, mode='{mode}'{align})", "nn.Upsample")
        b.forward.append(f"{x} = {layer}({x})")
        return Shape(kind, (s.dims[0], *(2 * d for d in spatial)))
    if move == "pad":
        cls = b.pick(["ZeroPad2d", "ReflectionPad2d", "ReplicationPad2d"])
        c, h, w = s.dims
        p = b.int(1, 1) if cls == "ReflectionPad2d" and min(h, w) < 3 else b.int(1, 2)
        if cls == "ReflectionPad2d" and p >= min(h, w):
            return s
        layer = b.attr(f"nn.{cls}({p})", f"nn.{cls}")
        b.forward.append(f"{x} = {layer}({x})")
        return Shape(kind, (c, h + 2 * p, w + 2 * p))
    if move == "pixel_shuffle":
        c, h, w = s.dims
        if c % 4:
            conv = b.attr(f"nn.Conv2d({c}, 4, 1)", "nn.Conv2d")
            b.forward.append(f"{x} = {conv}({x})")
            c = 4
        layer = b.attr("nn.PixelShuffle(2)", "nn.PixelShuffle")
        b.forward.append(f"{x} = {layer}({x})")
        return Shape(kind, (c // 4, 2 * h, 2 * w))
    if move == "channels_last_norm":  # ConvNeXt's LayerNorm over channels
        c = s.dims[0]
        if c < MIN_NORMALIZED:
            return s
        norm = b.attr(f"nn.LayerNorm({c}, eps=1e-6)", "nn.LayerNorm")
        b.forward.append(f"{x} = {norm}({x}.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)")
        b.transposed = True
        return s
    if move == "modulelist":
        depth = b.int(1, 3)
        layers = [same_shape_layer(b, s) for _ in range(depth)]
        b.used |= {layer.split("(")[0] for layer in layers} | {"nn.ModuleList"}
        name = b.attr(f"nn.ModuleList([{', '.join(layers)}])", "nn.ModuleList")
        b.forward.append(f"for layer in {name}:")
        b.forward.append(f"    {x} = {x} + layer({x})")
        return s
    if move == "block":
        return block(b, s, x)
    raise AssertionError(move)


def block(b: Builder, s: Shape, x: str) -> Shape:
    """A helper nn.Module class (a pre-norm MLP block) built twice and applied in turn."""
    f = s.dims[-1]
    hidden = b.int(1, 8)
    name = f"Block{len(b.classes)}"
    norm = b.pick(["nn.LayerNorm(dim)", "nn.RMSNorm(dim)", "nn.Identity()"] if f >= MIN_NORMALIZED
                  else ["nn.RMSNorm(dim)", "nn.Identity()"] if f >= 2 else ["nn.Identity()"])
    act = b.pick(["nn.GELU()", "nn.ReLU()", "nn.SiLU()"])
    b.classes.append(textwrap.dedent(f"""\
        class {name}(nn.Module):
            def __init__(self, dim, hidden):
                super().__init__()
                self.norm = {norm}
                self.fc1 = nn.Linear(dim, hidden)
                self.act = {act}
                self.fc2 = nn.Linear(hidden, dim)

            def forward(self, x):
                return x + self.fc2(self.act(self.fc1(self.norm(x))))
        """))
    b.used |= {norm.split("(")[0], act.split("(")[0], "nn.Linear", "class"}
    blocks = b.attr(f"nn.Sequential({name}({f}, {hidden}), {name}({f}, {hidden}))", "nn.Sequential")
    b.forward.append(f"{x} = {blocks}({x})")
    return s


START = {
    "vec": lambda b: Shape("vec", (b.int(1, 8),)),
    "seq": lambda b: Shape("seq", (b.int(1, 4), b.pick([2, 4, 6, 8]))),
    "sig": lambda b: Shape("sig", (b.int(1, 4), b.int(3, 8))),
    "img": lambda b: Shape("img", (b.int(1, 4), b.int(3, 6), b.int(3, 6))),
}


@st.composite
def programs(draw, min_steps: int = 1, max_steps: int = 5) -> Program:
    b = Builder(draw)
    kind = b.pick(list(START))
    shape = START[kind](b)
    input_shape = shape.full
    for _ in range(b.int(min_steps, max_steps)):
        shape = step(b, shape)
    output = "x"
    if b.bool() and shape.kind != "vec":  # a second output: the mean over the last axis
        b.forward.append("y = x.mean(-1)")
        output = "x, y"
    init = "\n".join(f"        {line}" for line in b.init) or "        pass"
    forward = "\n".join(f"        {line}" for line in b.forward)
    classes = "\n\n".join(b.classes)
    source = (
        "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n\n"
        + (classes + "\n\n" if classes else "")
        + "class Net(nn.Module):\n"
        + "    def __init__(self):\n        super().__init__()\n" + init + "\n\n"
        + "    def forward(self, x):\n" + forward + f"\n        return {output}\n"
    )
    return Program(source, input_shape, frozenset(b.used))


# --------------------------------------------------------------------------- running one program
class IllConditioned(Exception):
    """The check passed the program only by its float64 verdict (porter/check/conditioning.py): float32
    itself cannot decide it, so no statement about the conversion is made at float32 tolerances."""


def run_program(program: Program, seed: int = 0, *, jit: bool = True):
    """Converts, builds, loads and compares; returns the EquivalenceReport.

    Raises AssertionError on any conversion error or difference the check does not pass, IllConditioned
    when it passes only by its float64 verdict (porter/check/conditioning.py).
    """
    import copy

    from flax import nnx

    from layer_harness import build
    from porter import convert_source
    from porter.check.equivalence import check_equivalence

    conversion = convert_source(program.source)
    errors = [d.format() for d in conversion.diagnostics if d.severity.value == "error"]
    assert not errors, "conversion reported errors:\n" + "\n".join(errors)
    torch_model, flax_model = build(program.source, conversion.code, "fuzz", seed, abstract=seed % 4 != 0, cls="Net")
    original = copy.deepcopy(torch_model)
    x = np.random.default_rng(seed).standard_normal(program.input_shape).astype(np.float32)
    # every third program in train mode: batch statistics in the outputs, running statistics after a step
    options = {"mode": "train", "train_steps": 1 if any(True for _ in torch_model.parameters()) else 0} \
        if seed % 3 == 1 else {}
    report = check_equivalence(torch_model, flax_model, x, jit=jit, layers=False, **options)
    if report.passed and any(row.note.startswith("float32 rounding") for row in report.rows):
        raise IllConditioned(report.format())
    if report.passed:
        return report
    failing = ", ".join(row.name for row in report.failures)
    if options:
        raise AssertionError(f"not equivalent in train mode (seed {seed}; {failing}):\n{report.format()}\n"
                             f"--- converted\n{conversion.code}")
    flax_model = converted_model(conversion.code, seed)  # again, with the per-layer report for the reader
    report = check_equivalence(copy.deepcopy(original), flax_model, x, jit=jit)
    raise AssertionError(f"not equivalent (seed {seed}; {failing}):\n{report.format()}\n--- converted\n"
                         f"{conversion.code}")


def converted_model(code: str, seed: int):
    from flax import nnx

    namespace: dict = {}
    exec(compile(code, "<converted program>", "exec"), namespace)
    from porter.check.modelspec import takes_keyword  # a Net that builds nothing random takes no rngs
    return namespace["Net"](**({"rngs": nnx.Rngs(seed)} if takes_keyword(namespace["Net"], "rngs") else {}))
