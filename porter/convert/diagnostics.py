"""Diagnostics and the change log: what porter tells a person about a conversion.

Codes are stable: scripts and CI filters rely on them. Add new codes at the
end of CODES; never renumber or reuse one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Code:
    code: str
    severity: Severity
    title: str
    hint: str


CODES: dict[str, Code] = {
    c.code: c
    for c in [
        Code("PT001", Severity.ERROR, "syntax error",
             "Fix the Python syntax error; porter converts only files that parse."),
        Code("PT002", Severity.WARNING, "torch name used but never imported",
             "The file uses a conventional alias (torch, nn, F, optim) without importing it; "
             "porter assumed the usual meaning. Add the import to the original if it is a bug."),
        Code("PT003", Severity.ERROR, "torch API without a conversion rule",
             "Left unchanged. Rewrite it by hand with jax/jnp/nnx, or add a rule in rules/."),
        Code("PT004", Severity.ERROR, "argument value not supported by the rule",
             "Left unchanged. The rule converts this API only for the argument values it lists."),
        Code("PT005", Severity.WARNING, "converted with a semantic difference",
             "The converted code runs but differs from torch in the way the message says; check it."),
        Code("PT006", Severity.ERROR, "module construct not supported",
             "Left unchanged. Convert this part of the nn.Module by hand."),
        Code("PT007", Severity.INFO, "assumption made",
             "porter made the choice the message names; change it by hand if it does not fit."),
        Code("PT010", Severity.ERROR, "training loop not converted",
             "Left unchanged. porter converts loops with one loss.backward() followed by one optimizer.step(), "
             "the forward pass as plain assignments; write the train_step by hand for other shapes."),
        Code("PT011", Severity.INFO, "torch kept for data loading",
             "torch.utils.data (Dataset, DataLoader) is kept: the same batches in the same order as the "
             "original where each shuffle has a seeded generator= of its own (without one, the order comes from "
             "torch's global generator, which the original's layer initialisation also draws from). What feeds "
             "it stays torch too (the tensors built for it, edited in place, drawn from torch's generator: the "
             "original's numbers); batches and those tensors become jax arrays where they meet the converted "
             "code (jnp.asarray, the train_step call). Swap in a numpy or grain loader to drop torch."),
        Code("PT012", Severity.ERROR, "model class in a file porter did not read",
             "A script converted on its own builds its model from a name it imports from a file porter "
             "could not find or parse (or a dynamic import), then trains or switches it as a model: porter "
             "cannot tell whether it is an nn.Module, and the converted script treats it as an nnx one. "
             "Convert the directory holding the script and that file (porter convert DIR -o OUT_DIR)."),
        Code("PT013", Severity.ERROR, "class of an installed package in a converted module",
             "porter converts only the tree it is given (and the packages named with --with): a class of another "
             "installed package stays torch, and an "
             "nnx module deriving from it, building it or calling a function of it that returns one fails at its "
             "first call. Convert the modules of that package your tree reaches with it (porter convert SRC -o OUT "
             "--with PKG: they go to OUT/PKG/..., which shadows the installed package), or rewrite that part "
             "with flax.nnx."),
        Code("PT014", Severity.WARNING, "base that does not work on an nnx.Module dropped",
             "A base of a module class that is not an nn.Module (a mixin: model hub, config) stays a base of the "
             "converted nnx.Module where nothing in it gets in nnx's way, read from its source. One with a "
             "__new__ doing more than super().__new__(cls) (nnx sets its instance up after __new__), a metaclass "
             "or an __init_subclass__ not calling super()'s, torch calls or nn.Module methods on self "
             "(state_dict(), parameters()) is dropped from the converted class's bases: the warning names the "
             "methods the class loses (from_pretrained/save_pretrained of a hub mixin); rewrite them for nnx "
             "(nnx.state, orbax) where you need them."),
        Code("PT020", Severity.INFO, "distributed training mapped to JAX's runtime",
             "One JAX process per host drives all of that host's devices; a Mesh made current with "
             "jax.set_mesh holds them all. Ranks become jax.process_index(), the world size "
             "jax.device_count(). See the README, 'Distributed training', for the launch commands."),
        Code("PT021", Severity.INFO, "collective removed: the value is already global",
             "The converted step runs on the global batch (every process's rows), so what it returns and "
             "what is computed from the batch already covers all devices; the all_reduce has nothing to add."),
        Code("PT022", Severity.WARNING, "distributed option without a JAX counterpart, dropped",
             "XLA partitions the step and schedules its collectives itself (gradient buckets, prefetching, "
             "wrapping units); the numbers are unchanged. Tune the mesh or the shardings instead if needed."),
        Code("PT023", Severity.ERROR, "distributed construct not converted",
             "Left unchanged. Rewrite it with jax.sharding (Mesh, NamedSharding, jax.jit shardings), "
             "jax.shard_map and its collectives (jax.lax.psum, all_gather), or "
             "jax.experimental.multihost_utils for host-side exchanges."),
        Code("PT024", Severity.WARNING, "per-device semantics differ on the global batch",
             "torch's DDP/FSDP compute some things per device (BatchNorm statistics, a summed loss "
             "averaged over ranks); the converted step computes them over the global batch. Check the message."),
        Code("PT025", Severity.INFO, "checkpoint written by every process",
             "Orbax saves from every process (each writes the pieces it holds, process 0 the metadata): "
             "a save under a rank-0 test moved out of it."),
    ]
}


# Whole-file outcomes of a tree conversion (porter/convert/tree.py). Kept apart from the list above
# so the codes of the conversion passes can grow there; numbers still only ever grow.
CODES.update({
    c.code: c
    for c in [
        Code("PT030", Severity.ERROR, "file could not be read",
             "Not converted, nothing written. porter reads Python files as UTF-8 (PEP 3120): re-save the "
             "file as UTF-8 (or fix the bytes the message names), then convert it again."),
        Code("PT031", Severity.ERROR, "internal error: porter failed on this file",
             "Not converted, nothing written; the rest of the tree converted. This is a bug in porter: "
             "please report it with the traceback summary and, if you can, the smallest code that triggers "
             "it. Meanwhile convert this file by hand."),
        Code("PT032", Severity.ERROR, "notebook could not be read",
             "Not converted, nothing written. The .ipynb file is not a JSON notebook (nbformat 4) with a "
             "list of cells; open and save it in Jupyter to repair it."),
        Code("PT033", Severity.INFO, "notebook cell left alone",
             "The cell runs a cell magic whose body is not Python (%%bash, %%writefile, ...): porter "
             "leaves it as it is. Check by hand whether it refers to torch."),
        Code("PT034", Severity.ERROR, "code nested too deep to convert",
             "Not converted, nothing written; the rest of the tree converted. Split the expression the "
             "message points at (name its parts, or build a long sum or list in a loop), or un-nest the "
             "blocks, then convert the file again."),
    ]
})

# Checks on the result (passes that read the rewritten code, after the rewrite).
CODES.update({
    c.code: c
    for c in [
        Code("PT040", Severity.ERROR, "torch meaning left in the converted code",
             "The converted file still holds something that works on torch tensors or nn.Modules but not on "
             "jax arrays or nnx modules (an attribute jax.Array lacks, an nn.Module method, a torch layer "
             "built inside an nnx module, item assignment to an array, ...). It will fail or differ when it "
             "runs: rewrite it by hand as the message says."),
        Code("PT041", Severity.ERROR, "rewrite would not compile: statement kept as it was",
             "porter's rewrite of this statement did not compile, so the statement was written as it was in "
             "the original (still torch). Convert it by hand, and please report the statement: it is a bug."),
        Code("PT042", Severity.ERROR, "random draw with no key to thread",
             "A torch random draw outside a module whose key porter cannot thread (no seed or key in reach). "
             "Left unchanged: pass a jax.random key into the function and split it per draw."),
        Code("PT043", Severity.ERROR, "data for torch's data loading computed by converted code",
             "What a Dataset or DataLoader is given stays torch (PT011), but this value comes from the converted "
             "model: the loader would get a jax array. Hand the loader torch.from_numpy(np.asarray(value)), or "
             "compute the value with the original torch model."),
    ]
})

# Longer documentation for `porter explain CODE` (the title and hint above are always shown).
DOCS: dict[str, str] = {
    "PT001": "Python could not parse the file. porter converts only files that parse: the file is not "
             "converted and nothing is written for it (in a tree, the other files still convert).\n\n"
             "Example:\n    def f(x:\n        return x\n    -> PT001 error syntax error: '(' was never closed",
    "PT002": "The file uses torch, nn, F or optim without importing it (common in snippets and notebooks "
             "that import elsewhere). porter converts as if `import torch`, `import torch.nn as nn`, "
             "`import torch.nn.functional as F` or `import torch.optim as optim` were there.",
    "PT003": "A torch function, layer or attribute porter has no rule for, or a layer class used as a value "
             "(passed around instead of called). The code is left exactly as it was, so the converted file "
             "still mentions torch there.\n\nExample:\n    y = torch.special.erfcx(x)\n"
             "    -> PT003 error torch.special.erfcx has no conversion rule; left unchanged\n\n"
             "`porter rules` lists what is converted.",
    "PT004": "A rule exists for the API, but not for an argument value this call passes: the rule would "
             "change the meaning, so the call is left unchanged.\n\nExample:\n"
             "    nn.Conv2d(3, 8, 3, padding_mode='reflect')\n"
             "    -> PT004 error torch.nn.Conv2d (PT103): padding_mode='reflect' is not supported",
    "PT005": "Converted, but the result differs from torch in a way the message states (for example a "
             "dropout inside attention that nnx does not apply). Read the message and check that the "
             "difference does not matter to you.",
    "PT006": "A part of an nn.Module porter does not convert (for example assigning `self.training`, or "
             "assigning a layer's weight to tie it to another's: `self.head.weight = self.embed.weight`; flax "
             "ties an output head with `self.embed.attend(x)`). Left unchanged; convert it by hand.",
    "PT007": "porter made a choice the message names (for example: a layer built outside any module is "
             "initialised from nnx.Rngs(0)). Nothing to do unless the choice does not fit.",
    "PT012": "`porter convert train.py` reads the files train.py imports from (beside it, the root of the "
             "package it is in, the package for `from .models import Net`) to learn which names are nn.Module "
             "subclasses, as converting the directory would. Where the file is not there, does not parse, or "
             "the module is imported with importlib, and the name built from it is then used as a model "
             "(`optimizer = SGD(model.parameters())`, `model.train()`), porter cannot know what it is.\n\n"
             "Example:\n    from nowhere import Net\n    model = Net()\n"
             "    -> PT012 error Net comes from nowhere (no ./nowhere.py or ./nowhere/__init__.py): ...",
    "PT013": "porter reads the source of the installed packages a file imports from (found the way `import` "
             "finds them, never imported) to learn what each name is: an nn.Module class (its bases lead to "
             "torch.nn.Module), a function that returns one (annotated so, or returning such a class built), "
             "another class, or unknown (then nothing is said). A module class of the tree deriving from such an "
             "nn.Module, or building one or calling such a function in its body, is reported: that class stays "
             "torch in the converted code.\n\nExample:\n    from torchvision.models.resnet import ResNet\n"
             "    class Encoder(ResNet): ...\n    -> PT013 error Encoder derives from ResNet "
             "(torchvision.models.resnet.ResNet), an nn.Module of the installed package torchvision, ...",
    "PT040": "Reported by the residual check, a pass that reads the converted code after the rewrite: a torch "
             "meaning porter left in place with no other error on that line. The message names the construct and "
             "what to write instead; the tables of attributes live in rules/residual.toml.\n\nExample:\n"
             "    preds = model(x).argmax(1).numpy()\n"
             "    -> PT040 error `jnp.argmax(model(x), axis=1).numpy(...)`: a jax array has no numpy method; "
             "write instead: np.asarray(x) outside jit ...",
    "PT030": "The file's bytes are not valid UTF-8 (or it could not be read at all). Python source is UTF-8 "
             "unless it declares another encoding; porter reads UTF-8 only.",
    "PT031": "A conversion pass raised an exception on this file. The report carries a traceback summary "
             "(the innermost frames and the exception). The file is not written; every other file is "
             "converted as usual and the exit code is 1.",
    "PT032": "A .ipynb file that is not valid JSON, or whose JSON has no list of cells. Nothing is written "
             "for it.",
    "PT033": "Cells that start with a cell magic whose body is another language (%%bash, %%sh, %%writefile, "
             "%%html, %%javascript, ...) are kept as they are. Cells under %%time, %%timeit, %%capture and "
             "%%prun are Python and are converted; line magics (%...) and shell lines (!...) inside Python "
             "cells are kept as they are.",
    "PT034": "The file nests deeper than porter's parser (libcst) can take: more than 200 nested "
             "brackets or 100 levels of indentation (CPython's own limits: Python itself refuses such a file"
             "), or an expression more than 1,000 levels deep counting brackets and operators chained "
             "between two commas (a sum of thousands of terms). libcst's native parser would crash on it "
             "and take the process down, so porter checks the nesting first and reports the file instead. "
             "Nothing is written for it.",
}


@dataclass(frozen=True)
class Diagnostic:
    code: str
    severity: Severity
    line: int
    col: int
    message: str
    path: str | None = None

    @property
    def hint(self) -> str:
        return CODES[self.code].hint

    def format(self) -> str:
        where = f"{self.path or '<string>'}:{self.line}:{self.col}"
        return f"{where} {self.code} {self.severity.value} {self.message}"

    def to_json(self) -> dict:
        data = asdict(self)
        data["severity"] = self.severity.value
        data["hint"] = self.hint
        return data


@dataclass(frozen=True)
class Change:
    """One rewrite porter made: which rule, where, and the code before and after."""

    rule: str
    line: int
    col: int
    before: str
    after: str

    def format(self, path: str | None = None) -> str:
        return f"{path or '<string>'}:{self.line}:{self.col} {self.rule} {self.before!r} -> {self.after!r}"


def diagnostic(code: str, line: int, col: int, message: str, path: str | None = None) -> Diagnostic:
    """A Diagnostic whose severity is the code's own."""
    return Diagnostic(code, CODES[code].severity, line, col, message, path)
