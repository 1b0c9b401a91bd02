"""State shared by the passes converting one file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import libcst as cst

from porter.convert.diagnostics import Change, Diagnostic, diagnostic
from porter.convert.source_index import code_for_node
from porter.convert.traverse import find_all
from porter.rules.loader import RuleSet

if TYPE_CHECKING:
    from porter.convert.data_side import DataSide

# Names the seed document (and much real code) uses without always importing.
CONVENTIONAL_ALIASES = {
    "torch": "torch",
    "nn": "torch.nn",
    "F": "torch.nn.functional",
    "optim": "torch.optim",
}

_EMPTY_MODULE = cst.Module(body=[])


def code_of(node: cst.CSTNode) -> str:
    """`cst.Module([]).code_for_node(node)`: the node's code at the default indentation and newline."""
    return code_for_node(_EMPTY_MODULE, node)


@dataclass
class OptimizerInfo:
    """A torch optimizer found in a training script (filled by the training analysis)."""

    name: str  # the variable it is assigned to ("optimizer")
    model: str  # source of the model whose parameters it trains ("net")
    scheduled: bool = False  # an lr_scheduler or param_groups writes set its rate: optax.inject_hyperparams
    lr_scheduler: bool = False  # a torch.optim.lr_scheduler steps it (with a step count of its own)
    clip: str | None = None  # e.g. "optax.clip_by_global_norm(1.0)", from clip_grad_norm_ before step()
    scaler: str | None = None  # a GradScaler steps it: grad_scaler's keywords ("enabled=(dtype == 'float16')")
    factory: bool = False  # built by a call porter does not see (model.configure_optimizers(...)): rebuilt to wrap


@dataclass
class ConversionContext:
    rules: RuleSet
    filename: str | None = None
    # local name -> qualified name, for names bound by imports ("nn" -> "torch.nn")
    imports: dict[str, str] = field(default_factory=dict)
    # every name an import binds, torch or not (np, os, ...): such receivers are not tensors
    bound_imports: set[str] = field(default_factory=set)
    # conventional torch aliases used without an import; the file is converted as if imported
    assumed_imports: dict[str, str] = field(default_factory=dict)
    # classes in this file that subclass nn.Module (directly or through each other)
    module_classes: set[str] = field(default_factory=set)
    # class name -> attribute -> qualified torch name of the layer assigned in __init__
    layer_attributes: dict[str, dict[str, str]] = field(default_factory=dict)
    # class name -> its ClassDef, as parsed: the names an injected attribute must not take (inject_attribute)
    module_class_nodes: dict[str, cst.ClassDef] = field(default_factory=dict)
    # class name -> 'dict.key' -> qualified torch name of a layer in an nn.ModuleDict attribute (tying.py)
    sublayers: dict[str, dict[str, str]] = field(default_factory=dict)
    # class name -> statements (source) to append to __init__, e.g. injected dropout layers
    injected_init_statements: dict[str, list[str]] = field(default_factory=dict)
    # class name -> methods other than __init__ that construct layers and so need rngs
    methods_needing_rngs: dict[str, set[str]] = field(default_factory=dict)
    # module classes whose base constructor builds layers or parameters they inherit (a module class of
    # this code base, a torch layer): their super().__init__(...) stays and gets rngs
    layer_inheriting_classes: set[str] = field(default_factory=set)
    # module classes deriving from nn.Sequential (they become nnx.Sequential subclasses)
    sequential_classes: set[str] = field(default_factory=set)
    list_classes: set[str] = field(default_factory=set)  # and from nn.ModuleList (nnx.List subclasses; among those)
    # those, deriving from nn.Sequential itself, and nn.ModuleDict subclasses, that name their layers (add_module,
    # `self.norm = ...`, an OrderedDict): they derive from emitted TorchSequential / TorchModuleDict
    named_containers: set[str] = field(default_factory=set)
    # an nnx.Sequential read as the sequence of its layers (`for m in self` in a Sequential subclass,
    # `enumerate(self.features)`, `self.features[0]`, `len(self)`): ids of those `self` / `self.X` nodes, which
    # read `.layers` (nnx.Sequential is no sequence itself), and the words of their statements
    sequence_reads: set[int] = field(default_factory=set)
    sequence_slices: set[int] = field(default_factory=set)  # `self.features[:4]`: an nnx.Sequential of those
    inherited_sequence_reads: set[int] = field(default_factory=set)  # of an attribute a base built: layers_of()
    sequence_words: set[str] = field(default_factory=set)
    # fields a class body declares with a layer-constructor annotation (torchvision's MBConvConfig:
    # `block: Callable[..., nn.Module]`): `cnf.block(...)` in a constructor builds a layer
    constructor_fields: set[str] = field(default_factory=set)
    # module-level names bound to a layer constructor (`Linear = partial(nn.Linear, bias=False)`):
    # calls of them in constructors build layers, and the value itself becomes the converted constructor
    constructor_globals: set[str] = field(default_factory=set)
    # module-level literals holding layer constructors among other values (porter/convert/registries.py),
    # and the calls whose callee may or may not be a module class: they pass rngs where the callee takes it
    registries: dict[str, cst.BaseExpression | None] = field(default_factory=dict)  # None: filled at run time
    unknown_constructions: dict[int, str] = field(default_factory=dict)  # id of the call -> its callee's name
    handed_classes: dict[str, set[str]] = field(default_factory=dict)  # function -> its parameters handed a class
    # converting a file of a tree: (function of the file, position or keyword) other files hand a class, and
    # (callee as written, position or keyword) where this file hands one to a function of another (None: no tree)
    handed_in: frozenset[tuple[str, int | str]] = frozenset()
    handed_out: set[tuple[str, int | str]] | None = None
    file_classes: set[str] = field(default_factory=set)  # the classes defined at the file's top level
    top_level_names: set[str] = field(default_factory=set)  # and its functions
    module_typevars: set[str] = field(default_factory=set)  # ModelT = TypeVar("ModelT", bound=nn.Module)
    top_level_functions: set[int] = field(default_factory=set)  # ids of the module-level FunctionDefs
    # module class -> its bases (code) that are no nn.Module and do not work on an nnx one: dropped (mixins.py)
    dropped_bases: dict[str, set[str]] = field(default_factory=dict)
    # calls of a module class or factory of a --with package the analysis did not resolve: id -> root name
    outside_constructions: dict[int, str] = field(default_factory=dict)
    # module-level functions that draw their argument's values in place (`def init_(t): t.uniform_(-s, s); return t`):
    # converted, they return the new values instead
    draw_helpers: set[str] = field(default_factory=set)
    in_place_draws: set[int] = field(default_factory=set)  # ids of those draws (original nodes)
    # module methods with no return that draw their arguments' values in place (`def init_(self, w, b): w.uniform_(...)`):
    # (class, method) -> (its parameters after self, those it draws into); converted, it returns them and each
    # statement calling it assigns them (`w, b = self.init_(w, b, rngs=rngs)`)
    hand_back_methods: dict[tuple[str, str], tuple[list[str], set[str]]] = field(default_factory=dict)
    # local names of einops' functions (`from einops import repeat`) and of the einops module (`import einops`):
    # einops takes arrays, not nnx Variables
    einops_names: set[str] = field(default_factory=set)
    # layer_constructor_names' answers, by (id(function), attributes, outer names): asked by two passes
    constructor_names: dict[tuple, set[str]] = field(default_factory=dict)
    # class name -> attributes its constructor sets to None and to something else (nnx.data(None) first)
    none_first_attributes: dict[str, set[str]] = field(default_factory=dict)
    # class name -> methods that only initialise weights (porter/convert/weight_init.py)
    init_methods: dict[str, set[str]] = field(default_factory=dict)
    other_methods: set[str] = field(default_factory=set)  # and the names of the module classes' other methods
    # module-level functions that build layers (factories such as `def conv_bn(...)`)
    rngs_functions: set[str] = field(default_factory=set)
    # module classes that build nothing random: no rngs parameter, none passed (porter/convert/rngs_free.py)
    rngs_free_classes: set[str] = field(default_factory=set)
    rngs_free_bases: set[str] = field(default_factory=set)  # subclasses of such a class (from another file)
    # module-level functions returning a dict of keyword arguments (`def to(x): return {'dtype': x.dtype}`),
    # written out where torch calls take them as `**to(x)` (porter/convert/keyword_helpers.py)
    keyword_helpers: dict = field(default_factory=dict)
    # the argument of the last module-level torch.manual_seed(...) seen, seeding nnx.Rngs
    seed: str | None = None
    # the module-level nnx.Rngs that random draws outside modules take their keys from (torch's global
    # generator; porter/convert/passes/random_keys.py defines it and reseeds it where torch.manual_seed runs)
    global_rngs: str | None = None
    # top-level functions that draw from it, and the plain-name calls in the forward of each jitted train step
    # (name, line, col of the loop): such a call cannot advance it from inside the step (PT042)
    drawing_functions: set[str] = field(default_factory=set)
    # (class, method) -> the stored Rngs' attribute once a draw in it takes the method's own rngs argument
    # (None until then): a module's public methods other than forward (passes/method_keys.py)
    keyed_methods: dict[tuple[str, str], str | None] = field(default_factory=dict)
    step_calls: list[tuple[str, int, int]] = field(default_factory=list)
    # names of the train_step functions the training pass emitted
    training_steps: list[str] = field(default_factory=list)
    # id of each torch.optim.X(...) call (the original node) -> the optimizer it builds
    optimizers: dict[int, OptimizerInfo] = field(default_factory=dict)
    helpers: list[str] = field(default_factory=list)
    # what feeds torch's data loading and stays torch, and where its tensors meet the converted code
    # (porter/convert/data_side.py; None without torch.utils.data)
    data_side: DataSide | None = None
    # id of each statement the rewrite built -> (that statement, the original it replaces): the output gate
    # (porter/convert/output_gate.py) puts the original back where the new one does not compile
    rewritten_statements: dict[int, tuple[cst.CSTNode, cst.CSTNode]] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    _reported: set[tuple[int, int]] = field(default_factory=set)
    # per enclosing function (innermost last): the torch alias names it binds itself (`def f(tensor)` with
    # `from torch import tensor`), which there mean the local, not torch; see porter/convert/passes/scope.py
    shadowed: list[frozenset[str]] = field(default_factory=list)

    @property
    def class_words(self) -> set[str]:
        """The identifiers that name a module class or a layer factory: `Net`, and `models` of `models.Net`
        (one of a file a script imports as a module, porter/convert/siblings.py)."""
        return {name.partition(".")[0] for name in (*self.module_classes, *self.rngs_functions)}

    @property
    def torch_aliases(self) -> dict[str, str]:
        return {**self.assumed_imports, **self.imports}

    def torch_alias(self, name: str) -> str | None:
        """`torch_aliases.get(name)`, without building the dictionary (asked for every name and dotted name)."""
        found = self.imports.get(name)
        return found if found is not None else self.assumed_imports.get(name)

    def qualified_name(self, node: cst.BaseExpression) -> str | None:
        """'nn.Conv2d' -> 'torch.nn.Conv2d' when nn is torch.nn; None if not a dotted name."""
        parts: list[str] = []
        while type(node) is cst.Attribute:  # (libcst's node classes have no subclasses; isinstance goes through ABCMeta)
            parts.append(node.attr.value)
            node = node.value
        if type(node) is not cst.Name:
            return None
        if self.shadowed and node.value in self.shadowed[-1]:
            return None
        head = self.torch_alias(node.value)
        if head is None:
            return None
        if not parts:
            return head
        parts.append(head)
        return ".".join(reversed(parts))

    def report(self, code: str, line: int, col: int, message: str) -> None:
        self._reported.add((line, col))
        self.diagnostics.append(diagnostic(code, line, col, message, self.filename))

    def forget_reports(self, first: int, last: int) -> None:
        """Drops the diagnostics and changes of original lines first..last (code there was removed or put back)."""
        self.diagnostics[:] = [d for d in self.diagnostics if not first <= d.line <= last]
        self.changes[:] = [c for c in self.changes if not first <= c.line <= last]

    def already_reported(self, line: int, col: int) -> bool:
        return (line, col) in self._reported

    def record_change(self, rule: str, line: int, col: int, before: cst.CSTNode, after: cst.CSTNode) -> None:
        self.changes.append(Change(rule, line, col, code_of(before), code_of(after)))

    def inject_attribute(self, class_name: str, base: str, source: str) -> str:
        """Adds `self.NAME = source` to the class's __init__; returns the NAME chosen: one the class uses for
        nothing else (no `self.NAME` and no method of that name: nanoGPT keeps the rate in `self.dropout`)."""
        taken = set(self.layer_attributes.get(class_name, {})) | self._names_of_class(class_name)
        statements = self.injected_init_statements.setdefault(class_name, [])
        taken |= {s.split("=")[0].strip().removeprefix("self.") for s in statements}
        name = base if base not in taken else next(f"{base}{i}" for i in range(1, 1000) if f"{base}{i}" not in taken)
        statements.append(f"self.{name} = {source}")
        return name

    def _names_of_class(self, class_name: str) -> set[str]:
        node = self.module_class_nodes.get(class_name)
        if node is None:
            return set()
        attributes = {a.attr.value for a in find_all(node, cst.Attribute)
                      if type(a.value) is cst.Name and a.value.value == "self"}
        return attributes | {item.name.value for item in node.body.body if type(item) is cst.FunctionDef}

    def use_global_rngs(self) -> str:
        """The name of the module-level nnx.Rngs for draws outside modules (defined once the file is rewritten)."""
        self.global_rngs = self.global_rngs or "_rngs"
        return self.global_rngs

    def release(self) -> None:
        """The conversion is over: the context drops what it holds (using it again fails). What refers to it
        may be in a cycle (a recursive closure that reads it) which reference counting never frees; the
        cyclic collector would, walking every node the context holds (Rewrite.close says why that costs)."""
        vars(self).clear()

    def need_helper(self, name: str) -> None:
        if name not in self.helpers:
            self.helpers.append(name)
