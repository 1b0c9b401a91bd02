"""First pass: read-only. Resolves torch import aliases, finds nn.Module
subclasses and the layers their constructors create."""

from __future__ import annotations

from typing import Iterable

import libcst as cst
import libcst.matchers as m

from porter.convert import data_side, registries
from porter.convert.layer_builders import may_be_named_layers
from porter.convert.traverse import find_all
from porter.convert.weight_init import init_only_methods
from porter.convert.tying import note_sublayers
from porter.convert.context import CONVENTIONAL_ALIASES, ConversionContext
from porter.convert.passes.scope import FunctionBodies, enter_function
from porter.convert.source_index import SourceIndex
from porter.convert.traverse import FastDispatch


def dotted(node: cst.BaseExpression) -> str:
    # (type(...) is: libcst's node classes have no subclasses, and isinstance on them goes through ABCMeta)
    if type(node) is cst.Attribute:
        return f"{dotted(node.value)}.{node.attr.value}"
    if type(node) is cst.Name:
        return node.value
    return ""


def _is_self_attribute(node: cst.CSTNode | None) -> bool:
    """`self.x` (a libcst matcher, run for every assignment and call of a constructor, cost more than the test)."""
    return type(node) is cst.Attribute and type(node.value) is cst.Name and node.value.value == "self"


def _is_name(node: cst.CSTNode | None, value: str) -> bool:
    return type(node) is cst.Name and node.value == value


class Analyze(FastDispatch, cst.CSTVisitor):
    """Reacts only to imports, torch names, module classes and layer factories: the pipeline skips
    the code without any of them (the prefilter of porter/convert/source_index.py)."""

    def __init__(self, ctx: ConversionContext, index: SourceIndex) -> None:
        super().__init__()
        self.ctx = ctx
        self._index = index
        self.bound_names: set[str] = set()
        self.used_names: dict[str, cst.Name] = {}
        self.class_stack: list[str] = []
        self.function_stack: list[str] = []
        self._constructor_attributes: list[set[str]] = []  # per class: self attributes holding layer constructors
        self._constructor_names: list[set[str]] = []  # per function: names holding layer constructors
        self._constructor_words: set[str] = set()
        self._functions: list[cst.FunctionDef] = []
        self._bodies = FunctionBodies(ctx)
        self._plain_sequentials: set[str] = set()  # module classes that become nnx.Sequential subclasses

    def trigger_words(self) -> Iterable[str]:
        # (__init__: a module's constructor calling only what it is handed, `self.one = self.block_cls(c)`)
        return {"import", "__init__", *CONVENTIONAL_ALIASES, *self.ctx.imports, *self.ctx.class_words, *self.ctx.rngs_functions,
                *self._constructor_words, *self.ctx.constructor_globals, *self.ctx.registries, *IN_PLACE_DRAWS}

    def trigger_state(self) -> object:
        return len(self.ctx.imports), len(self.ctx.module_classes), len(self.ctx.rngs_functions), \
            len(self._constructor_words), len(self.ctx.constructor_globals), len(self.ctx.registries)

    def visit_Module(self, node: cst.Module) -> None:
        registries.note(node, self.ctx)  # ENCODERS = {"a": {"encoder": A, "params": {}}}, before any function reads it

    # imports ---------------------------------------------------------------
    def visit_Import(self, node: cst.Import) -> bool:
        for alias in node.names:
            name = dotted(alias.name)
            if alias.asname:
                local = alias.asname.name.value
                self.bound_names.add(local)
                self.ctx.bound_imports.add(local)
                if name.split(".")[0] == "torch":
                    self.ctx.imports[local] = name
                if name == "einops":
                    self.ctx.einops_names.add(local)
            else:
                head = name.split(".")[0]
                self.bound_names.add(head)
                self.ctx.bound_imports.add(head)
                if head == "torch":
                    self.ctx.imports["torch"] = "torch"
                if name == "einops":
                    self.ctx.einops_names.add(head)
        return False

    def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
        if isinstance(node.names, cst.ImportStar):
            return False
        module = "" if node.relative or node.module is None else dotted(node.module)
        for alias in node.names:  # `from . import functional as F`: a local F, not torch's
            name = alias.name.value
            local = alias.asname.name.value if alias.asname else name
            self.bound_names.add(local)
            self.ctx.bound_imports.add(local)
            if module.split(".")[0] == "torch" or module == "einops.layers.torch":  # einops: rules/einops.toml
                self.ctx.imports[local] = f"{module}.{name}"
            elif module == "einops":
                self.ctx.einops_names.add(local)
        return False

    # bindings and uses, to find conventional aliases used without an import --
    def visit_Attribute(self, node: cst.Attribute) -> bool:
        node.value.visit(self)  # the attribute's own name (x.F) is not a use of F
        return False

    def visit_Name(self, node: cst.Name) -> None:
        if node.value in CONVENTIONAL_ALIASES and node.value not in self.used_names:
            self.used_names[node.value] = node

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        if type(node.target) is cst.Name:
            self.bound_names.add(node.target.value)

    def visit_Param(self, node: cst.Param) -> None:
        self.bound_names.add(node.name.value)

    # module classes ---------------------------------------------------------
    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.class_stack.append(node.name.value)
        self._note_constructor_fields(node)
        bases = [dotted(b.value) for b in node.bases]
        if any(self._is_module_base(b) for b in bases):
            if any(b in self.ctx.list_classes or self._qualified_base(b) in MODULE_LIST_BASES for b in bases):
                self.ctx.list_classes.add(node.name.value)  # (and a sequential class: its super().__init__ stays)
            if any(b in self.ctx.sequential_classes or self._qualified_base(b) in SEQUENTIAL_BASES + MODULE_LIST_BASES
                   for b in bases):
                self.ctx.sequential_classes.add(node.name.value)
                if any(self._qualified_base(b) in SEQUENTIAL_BASES for b in bases) and names_its_layers(node):
                    self.ctx.named_containers.add(node.name.value)
                elif not any(b in self.ctx.list_classes | self.ctx.named_containers
                             or self._qualified_base(b) in MODULE_LIST_BASES for b in bases):
                    self._plain_sequentials.add(node.name.value)  # `for m in self`: its nnx.Sequential's layers
            if any(self._qualified_base(b) in MODULE_DICT_BASES for b in bases):
                self.ctx.named_containers.add(node.name.value)
            if any(b in self.ctx.module_classes or self._qualified_base(b) in TORCH_LAYER_BASES for b in bases):
                self.ctx.layer_inheriting_classes.add(node.name.value)
            self.ctx.module_classes.add(node.name.value)
            self.ctx.layer_attributes.setdefault(node.name.value, {})
            self.ctx.module_class_nodes[node.name.value] = node
            self.ctx.init_methods[node.name.value] = init_only_methods(node, self.ctx)
            self.ctx.none_first_attributes[node.name.value] = none_first_attributes(node)
        self.bound_names.add(node.name.value)
        attributes = layer_constructor_attributes(node, self.ctx) if node.name.value in self.ctx.module_classes \
            else set()
        self._constructor_attributes.append(attributes)
        self._constructor_words |= attributes
        if node.name.value in self.ctx.module_classes:  # `self.block_cls(c)` in a method the constructor calls
            self._constructor_words |= registries.constructor_held_attributes(node)

    def _not_plainly_sequential(self, node: cst.ClassDef, attributes: set[str]) -> set[str]:
        """Those of `attributes` some assignment of the class binds to anything but `nn.Sequential(a, b, ...)`
        (`nn.Sequential(layers)` may be an OrderedDict's TorchSequential)."""
        found = set()
        for assign in find_all(node.body, cst.Assign):
            for target in assign.targets:
                if _is_self_attribute(target.target) and target.target.attr.value in attributes:
                    value = assign.value
                    if type(value) is not cst.Call or self._qualified(value.func) not in SEQUENTIAL_BASES \
                            or may_be_named_layers(value.args):
                        found.add(target.target.attr.value)
        return found

    def _note_inherited_sequence_reads(self, node: cst.ClassDef, found: list[cst.BaseExpression]) -> None:
        """`enumerate(self.features)` in a module class deriving from another module class (not nn.Module
        itself), `self.features` assigned nowhere in it: what the base built, maybe an nnx.Sequential."""
        if all(self._qualified(base.value) in MODULE_BASES for base in node.bases if base.keyword is None):
            return
        assigned = assigned_self_attributes(node)
        # an item read but not called (`self.patch_size[0]`, `self.pos[:, 0]`) is a tuple's or a tensor's
        indexed = {id(subscript.value) for subscript in find_all(node.body, cst.Subscript)}
        called = {id(call.func.value) for call in find_all(node.body, cst.Call) if type(call.func) is cst.Subscript
                  and len(call.func.slice) == 1 and type(call.func.slice[0].slice) is not cst.Slice}
        reads = [read for read in found
                 if _is_self_attribute(read) and read.attr.value not in assigned | LAYER_PARAMETER_NAMES
                 and id(read) not in self.ctx.sequence_reads and (id(read) not in indexed or id(read) in called)]
        if reads:
            self.ctx.inherited_sequence_reads.update(id(read) for read in reads)
            self.ctx.sequence_words.update(read.attr.value for read in reads)

    def _note_sequence_reads(self, node: cst.ClassDef, found: list[cst.BaseExpression], is_sequence,
                             *words: str) -> None:
        reads = [read for read in found if is_sequence(read)]
        if reads:
            self.ctx.sequence_reads.update(id(read) for read in reads)
            self.ctx.sequence_words.update(words)
            self.ctx.sequence_slices.update(id(subscript) for subscript in find_all(node.body, cst.Subscript)
                                            if subscript.value in reads and type(subscript.slice[0].slice) is cst.Slice)

    def _note_constructor_fields(self, node: cst.ClassDef) -> None:
        """`block: Callable[..., nn.Module]` in a class body (a config): ConversionContext.constructor_fields."""
        for statement in node.body.body:
            for small in statement.body if type(statement) is cst.SimpleStatementLine else ():
                if type(small) is cst.AnnAssign and type(small.target) is cst.Name \
                        and _constructor_annotation(small.annotation, self.ctx):
                    self.ctx.constructor_fields.add(small.target.value)
                    self._constructor_words.add(small.target.value)

    def leave_ClassDef(self, original_node: cst.ClassDef) -> None:
        sequences = {attribute for attribute, qualified in self.ctx.layer_attributes.get(original_node.name.value,
                                                                                        {}).items()
                     if qualified in SEQUENTIAL_BASES}
        if sequences:  # `self.features = nn.Sequential(a, b)`, an nnx.Sequential wherever it is assigned
            sequences -= self._not_plainly_sequential(original_node, sequences)
        if original_node.name.value in self.ctx.module_classes:
            found = sequence_reads(original_node)
            if original_node.name.value in self._plain_sequentials:
                self._note_sequence_reads(original_node, found, lambda read: _is_name(read, "self"), "self")
            self._note_inherited_sequence_reads(original_node, found)
            self._note_sequence_reads(original_node, found, lambda read: _is_self_attribute(read)
                                      and read.attr.value in sequences, *sequences)
        self.class_stack.pop()
        self._constructor_attributes.pop()

    def on_visit(self, node: cst.CSTNode) -> bool:
        self._bodies.reached(node)
        return super().on_visit(node)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.function_stack.append(node.name.value)
        enter_function(self.ctx)
        self._bodies.expect(node)
        self._functions.append(node)
        self.bound_names.add(node.name.value)
        attributes = self._constructor_attributes[-1] if self.class_stack else set()
        outer = self._constructor_names[-1] if self._constructor_names else self.ctx.constructor_globals
        names = layer_constructor_names(node, self.ctx, attributes, outer)
        self._constructor_names.append(names)
        self._constructor_words |= names
        module_init = self.function_stack == ["__init__"] and bool(set(self.class_stack[-1:]) & self.ctx.module_classes)
        returns_module = not self.class_stack and len(self.function_stack) == 1 and node.returns is not None \
            and _names_a_module(node.returns.annotation, self.ctx)
        registries.note_unknown_constructions(node, self.ctx, lambda v: is_layer_constructor(v, self.ctx, names, attributes),
                                              module_init, lambda n, text: self.ctx.report("PT006", *self._index.start(n), text),
                                              returns_module, self._method_of_module_class(node))

    def _method_of_module_class(self, node: cst.FunctionDef) -> cst.ClassDef | None:
        """The module class `node` is a method of (None for a function or a nested one)."""
        if len(self.function_stack) != 1 or not self.class_stack:
            return None
        return self.ctx.module_class_nodes.get(self.class_stack[-1])

    def leave_FunctionDef(self, original_node: cst.FunctionDef) -> None:
        self._bodies.forget(original_node)
        self.function_stack.pop()
        self.ctx.shadowed.pop()
        self._functions.pop()
        self._constructor_names.pop()

    def visit_Assign(self, node: cst.Assign) -> None:
        """self.x = nn.Something(...) inside a module class: remember the layer type. A module-level
        `Linear = partial(nn.Linear, bias=False)`: a layer constructor (ConversionContext.constructor_globals)."""
        if not self.class_stack and not self.function_stack and len(node.targets) == 1 \
                and type(node.targets[0].target) is cst.Name \
                and is_layer_constructor(node.value, self.ctx, self.ctx.constructor_globals):
            self.ctx.constructor_globals.add(node.targets[0].target.value)
        if not self.class_stack or self.class_stack[-1] not in self.ctx.module_classes:
            return
        if not isinstance(node.value, cst.Call):
            return
        for target in node.targets:
            t = target.target
            if type(t) is cst.Attribute and type(t.value) is cst.Name and t.value.value == "self":
                qualified = self._qualified(node.value.func)
                if qualified:
                    self.ctx.layer_attributes[self.class_stack[-1]][t.attr.value] = qualified
                    note_sublayers(self.ctx, self.class_stack[-1], t.attr.value, node.value, self._qualified)

    def visit_Call(self, node: cst.Call) -> None:
        """Functions that build layers need an rngs argument: module methods other than
        __init__ (which has it) and module-level factories like `def conv_bn(...)`."""
        if self.ctx.handed_out is not None and node.args:  # a file of a tree: make(Block, 3), make from another file
            registries.note_handing(node, self.ctx)
        if not self.function_stack or not self._builds_layer(node):
            return
        if not self.class_stack:
            self.ctx.rngs_functions.add(self.function_stack[0])
            if self._draws_in_place(node):
                self.ctx.draw_helpers.add(self.function_stack[0])
        elif self.class_stack[-1] in self.ctx.module_classes and self.function_stack[-1] not in ("__init__", "forward"):
            self.ctx.methods_needing_rngs.setdefault(self.class_stack[-1], set()).add(self.function_stack[-1])

    def _draws_in_place(self, node: cst.Call) -> bool:
        """`t.uniform_(-s, s)`, `nn.init.normal_(t, std=0.02)` on an argument of the function that the function
        returns (lucidrains' `def init_(t): ...; return t`): converted, it draws new values and returns them
        (ConversionContext.in_place_draws). On another name (a loop's `for w in m.parameters()`) rebinding the
        name would change nothing: not this."""
        func = node.func
        if type(func) is cst.Attribute and type(func.value) is cst.Name and func.attr.value in IN_PLACE_DRAWS \
                and self.ctx.qualified_name(func) is None:
            target = node.func.value.value
        elif self.ctx.qualified_name(node.func) in IN_PLACE_INIT_DRAWS and node.args \
                and type(node.args[0].value) is cst.Name:  # nn.init.normal_(t, std=0.02)
            target = node.args[0].value.value
        else:
            return False
        function = self._functions[-1]
        params = function.params
        names = [p.name.value for p in [*params.posonly_params, *params.params, *params.kwonly_params]]
        if target not in names:
            return False
        returns = find_all(function.body, cst.Return)
        if not any(_is_name(r.value, target) for r in returns) \
                and not (not returns and self._note_hand_back(names, target)):
            return False
        self.ctx.in_place_draws.add(id(node))
        return True

    def _note_hand_back(self, names: list[str], target: str) -> bool:
        """A module's method (not its constructor or forward) that returns nothing draws into its argument:
        converted, it hands the new values back (ConversionContext.hand_back_methods)."""
        if len(self.function_stack) != 1 or not self.class_stack or self.class_stack[-1] not in self.ctx.module_classes \
                or self.function_stack[0] in ("__init__", "forward") or not names or names[0] != "self":
            return False
        _, filled = self.ctx.hand_back_methods.setdefault((self.class_stack[-1], self.function_stack[0]),
                                                          (names[1:], set()))
        filled.add(target)
        return True

    def _builds_layer(self, node: cst.Call) -> bool:
        """Builds a layer, or draws a tensor's values in place: needs rngs."""
        if self._draws_in_place(node) or id(node) in self.ctx.unknown_constructions:
            return True
        if dotted(node.func) in self.ctx.module_classes | self.ctx.rngs_functions:  # Net(...), models.Net(...)
            return True
        if self._constructor_names and calls_layer_constructor(
                node, self._constructor_names[-1], self._constructor_attributes[-1] if self.class_stack else set(),
                self.ctx.constructor_fields):
            return True
        qualified = self._qualified(node.func)
        rule = self.ctx.rules.lookup(qualified) if qualified else None
        return rule is not None and rule.uses_rngs

    def _qualified(self, node: cst.BaseExpression) -> str | None:
        name = dotted(node)
        head, _, rest = name.partition(".")
        module = self.ctx.imports.get(head) or CONVENTIONAL_ALIASES.get(head)
        if module is None:
            return None
        return f"{module}.{rest}" if rest else module

    def _is_module_base(self, base: str) -> bool:
        if base in self.ctx.module_classes:
            return True
        full = self._qualified_base(base)
        return full in MODULE_BASES or full in SEQUENTIAL_BASES or full in TORCH_LAYER_BASES or full in MODULE_LIST_BASES

    def _qualified_base(self, base: str) -> str | None:
        head, _, rest = base.partition(".")
        module = self.ctx.imports.get(head) or CONVENTIONAL_ALIASES.get(head)
        return f"{module}.{rest}" if rest and module else module

    def leave_Module(self, original_node: cst.Module) -> None:
        self._note_data_side(original_node)
        for name, node in self.used_names.items():
            if name in self.bound_names:
                continue
            qualified = CONVENTIONAL_ALIASES[name]
            self.ctx.assumed_imports[name] = qualified
            line, col = self._index.start(node)
            self.ctx.report(
                "PT002", line, col,
                f"'{name}' is used but never imported; assumed `import {qualified} as {name}`"
                if name != "torch" else "'torch' is used but never imported; assumed `import torch`",
            )

    def _note_data_side(self, module: cst.Module) -> None:
        """What feeds torch.utils.data stays torch (porter/convert/data_side.py): PT011 says so once."""
        if not any(q.startswith("torch.utils.data") for q in self.ctx.imports.values()) \
                and "utils.data" not in self._index.code_text \
                and not any(w in self._index.code_text for w in ("randint", "randperm")):  # (a batch-index draw)
            return
        data = self.ctx.data_side = data_side.analyse(module, self.ctx)
        if data is None:
            return
        where = [data.first, *data.seeds] if data.first is not None else data.index_draws
        self.ctx.report("PT011", *min(self._index.start(node) for node in where), data_side.message(data))
        for statement, model in data.conflicts.values():
            self.ctx.report("PT043", *self._index.start(statement),
                            f"this statement computes data for torch's data loading (kept as torch) with the "
                            f"converted {model}: the loader would get a jax array; give it "
                            f"torch.from_numpy(np.asarray(...)) of the value, or compute it with the torch model")


# in-place random fills of a tensor (`t.uniform_(-s, s)`): a function doing one on a name needs rngs
IN_PLACE_DRAWS = ("normal_", "uniform_")
IN_PLACE_INIT_DRAWS = ("torch.nn.init.normal_", "torch.nn.init.uniform_")
# Layer constructors held by names: `norm_layer = nn.BatchNorm2d`, `block: type[BasicBlock]`,
# `norm_layer: Callable[..., nn.Module]`, `self._norm_layer = norm_layer`. Calling one in a
# constructor builds a layer: the call needs rngs like `nn.BatchNorm2d(c)` itself.
_CONSTRUCTOR_ANNOTATIONS = ("Callable", "type", "Type")
MODULE_BASES = ("torch.nn.Module", "torch.nn.modules.module.Module")
# a subclass of nn.Sequential (torchvision's Conv2dNormActivation) becomes one of nnx.Sequential, and its
# super().__init__(*layers) stays
SEQUENTIAL_BASES = ("torch.nn.Sequential", "torch.nn.modules.container.Sequential")
SEQUENTIAL_TARGETS = ("nnx.Sequential", "nnx.List", "nnx.Dict")
# a subclass of nn.ModuleList with methods of its own (`for block in self`) becomes one of nnx.List, its
# super().__init__(...) kept (nnx.List's sets the list up, even with no layers)
MODULE_LIST_BASES = ("torch.nn.ModuleList", "torch.nn.modules.container.ModuleList")
# a subclass of these torch layers (convnext's LayerNorm2d, timm's StdConv2d) reads the layer's torch
# attributes in its own forward: it becomes a subclass of the emitted class that keeps them (porter/emitted.py)
TORCH_LAYER_BASES = {"torch.nn.LayerNorm": "TorchLayerNorm", "torch.nn.GroupNorm": "TorchGroupNorm",
                     "torch.nn.Conv2d": "TorchConv2d"}
# a subclass of nn.ModuleDict (densenet's _DenseBlock, filled with add_module, read with self.items()) derives
# from the emitted TorchModuleDict: its layers attributes under their torch names
MODULE_DICT_BASES = ("torch.nn.ModuleDict", "torch.nn.modules.container.ModuleDict")
TORCH_LAYER_BASES.update(dict.fromkeys(MODULE_DICT_BASES, "TorchModuleDict"))
_SUPER_INIT_ONE_ARGUMENT = m.Call(func=m.Attribute(value=m.Call(func=m.Name("super")), attr=m.Name("__init__")),
                                  args=[m.Arg(keyword=None, star="")])


_SEQUENCE_READERS = ("len", "enumerate", "reversed", "list", "tuple", "iter", "zip", "next")
LAYER_PARAMETER_NAMES = frozenset({"weight", "bias", "running_mean", "running_var"})  # a layer's tensors


def assigned_self_attributes(node: cst.ClassDef) -> set[str]:
    """The `self.X` the class's methods assign (`=`, `: T =`, `+=`); one a module class reads and never assigns
    is its base class's."""
    found = set()
    for assign in find_all(node.body, (cst.Assign, cst.AnnAssign, cst.AugAssign)):
        for target in assign.targets if type(assign) is cst.Assign else [assign]:
            if _is_self_attribute(target.target):
                found.add(target.target.attr.value)
    return found


def sequence_reads(node: cst.ClassDef) -> list[cst.BaseExpression]:
    """What the methods of the class read as a sequence: `for m in X`, `X[i]`, `len(X)`, `enumerate(X)`
    (smp's ASPPPooling runs its layers itself: `for mod in self: x = mod(x)`; its VGG encoder
    `enumerate(self.features)`)."""
    found = [loop.iter for loop in find_all(node.body, (cst.For, cst.CompFor))]
    found += [subscript.value for subscript in find_all(node.body, cst.Subscript)]
    for call in find_all(node.body, cst.Call):
        if type(call.func) is cst.Name and call.func.value in _SEQUENCE_READERS:
            found += [arg.value for arg in call.args if not arg.keyword and not arg.star]
    return found


def names_its_layers(node: cst.ClassDef) -> bool:
    """A subclass of nn.Sequential whose constructor names its layers: `self.add_module(name, layer)`,
    `self.norm = nn.BatchNorm2d(c)`, or `super().__init__(layers)` with one argument (an OrderedDict): it derives
    from the emitted TorchSequential, which keeps them under those names, in order (nnx.Sequential takes
    positional layers only)."""
    init = next((s for s in node.body.body if type(s) is cst.FunctionDef and s.name.value == "__init__"), None)
    if init is None:
        return False
    for found in find_all(init.body, (cst.Call, cst.Assign)):
        if type(found) is cst.Assign and type(found.value) is cst.Call and any(
                m.matches(t.target, m.Attribute(value=m.Name("self"))) for t in found.targets):
            return True
        if type(found) is cst.Call and (m.matches(found, _SUPER_INIT_ONE_ARGUMENT) or m.matches(
                found.func, m.Attribute(value=m.Name("self"), attr=m.Name("add_module") | m.Name("register_module")))):
            return True
    return False


def layer_value_rule(node: cst.BaseExpression, ctx: ConversionContext):
    """The rule of a torch layer class (nn.BatchNorm2d, nn.ReLU) that `node` names, else None.
    Containers (nn.Sequential) and classes taking *args are not layer constructors here."""
    qualified = ctx.qualified_name(node)
    rule = ctx.rules.lookup(qualified) if qualified else None
    if rule is None or rule.kind not in ("layer", "activation") or rule.target in SEQUENTIAL_TARGETS \
            or any(p.var_positional for p in rule.signature):
        return None
    return rule


def _mentions_module(node: cst.CSTNode, ctx: ConversionContext) -> bool:
    for n in find_all(node, (cst.Name, cst.Attribute)):
        if type(n) is cst.Name and n.value in ctx.module_classes:
            return True
        if ctx.qualified_name(n) in MODULE_BASES or layer_value_rule(n, ctx) is not None:
            return True
    return False


def _names_a_module(annotation: cst.BaseExpression, ctx: ConversionContext) -> bool:
    """`nn.Module`, `ResNet` (a module class), `ModelT` (a TypeVar bound to nn.Module): a module, not a class."""
    if type(annotation) is cst.Name and annotation.value in ctx.module_classes | ctx.module_typevars:
        return True
    return type(annotation) in (cst.Name, cst.Attribute) and ctx.qualified_name(annotation) in MODULE_BASES


def _constructor_annotation(annotation: cst.Annotation | None, ctx: ConversionContext) -> bool:
    """Callable[..., nn.Module], type[Block], Optional[type[Union[A, B]]]: a class or factory of modules."""
    if annotation is None:
        return False
    for sub in find_all(annotation.annotation, cst.Subscript):
        if dotted(sub.value).rsplit(".", 1)[-1] in _CONSTRUCTOR_ANNOTATIONS \
                and any(_mentions_module(e, ctx) for e in sub.slice):
            return True
    return False


def is_layer_constructor(value: cst.BaseExpression, ctx: ConversionContext, names: set[str] = frozenset(),
                         attributes: set[str] = frozenset()) -> bool:
    """nn.BatchNorm2d, a module class or a layer factory (`def FeedForward(...): return nn.Sequential(...)`),
    partial(either, ...), a name or self attribute known to hold one, `a if c else b` of two of them."""
    kind = type(value)
    if kind is cst.IfExp:
        return is_layer_constructor(value.body, ctx, names, attributes) \
            and is_layer_constructor(value.orelse, ctx, names, attributes)
    if kind is cst.Call and dotted(value.func).rsplit(".", 1)[-1] == "partial" and value.args:
        return is_layer_constructor(value.args[0].value, ctx, names, attributes)  # partial(A if c else B, ...) too
    if kind in (cst.List, cst.Tuple, cst.Dict, cst.Subscript):  # [A, B], blocks[0]: porter/convert/registries.py
        return registries.constructs(value, ctx, lambda v: is_layer_constructor(v, ctx, names, attributes))
    if kind is cst.Name and (value.value in names or value.value in ctx.module_classes
                             or value.value in ctx.rngs_functions):
        return True
    if _is_self_attribute(value) and value.attr.value in attributes:
        return True
    return layer_value_rule(value, ctx) is not None


def layer_constructor_names(function: cst.FunctionDef, ctx: ConversionContext,
                            attributes: set[str] = frozenset(), outer: set[str] = frozenset()) -> set[str]:
    """The names that hold layer constructors in `function` (parameters and locals)."""
    key = (id(function), frozenset(attributes), frozenset(outer))  # the analysis and the rewrite both ask
    if key not in ctx.constructor_names:
        ctx.constructor_names[key] = _layer_constructor_names(function, ctx, attributes, outer)
    return set(ctx.constructor_names[key])


def _layer_constructor_names(function: cst.FunctionDef, ctx: ConversionContext,
                             attributes: set[str], outer: set[str]) -> set[str]:
    names = set(outer)
    params = function.params
    for param in [*params.posonly_params, *params.params, *params.kwonly_params]:
        if _constructor_annotation(param.annotation, ctx) \
                or (param.default is not None and is_layer_constructor(param.default, ctx, names, attributes)):
            names.add(param.name.value)
    if function.returns is not None and _mentions_module(function.returns, ctx):
        # `def make(attn_layer, ...) -> nn.Module: return attn_layer(...)`: what it calls for the module it returns
        own = {p.name.value for p in [*params.posonly_params, *params.params, *params.kwonly_params]}
        names |= {r.value.func.value for r in find_all(function.body, cst.Return)
                  if type(r.value) is cst.Call and type(r.value.func) is cst.Name and r.value.func.value in own}
    assigns = [a for a in find_all(function.body, cst.Assign) if len(a.targets) == 1
               and type(a.targets[0].target) is cst.Name]
    for _ in range(2):  # `a = nn.BatchNorm2d; b = a`
        for assign in assigns:
            if is_layer_constructor(assign.value, ctx, names, attributes):
                names.add(assign.targets[0].target.value)
    return names


def torch_layer_holders(function: cst.FunctionDef, ctx: ConversionContext) -> dict[str, set[str]]:
    """Names in `function` that may hold a torch layer class (`norm_layer=nn.BatchNorm2d`, `act = act or
    nn.ReLU`) -> the qualified names of those classes: converted, such a class is a function taking only the
    arguments porter converts."""
    params = function.params
    values = [(p.name.value, p.default) for p in [*params.posonly_params, *params.params, *params.kwonly_params]
              if p.default is not None]
    values += [(a.targets[0].target.value, a.value) for a in _single_name_assigns(function)]
    holders: dict[str, set[str]] = {}
    for name, value in values:
        for node in find_all(value, (cst.Name, cst.Attribute)):
            if layer_value_rule(node, ctx) is not None:
                holders.setdefault(name, set()).add(ctx.qualified_name(node))
    return holders


def dict_keys_bound(function: cst.FunctionDef, name: str) -> set[str] | None:
    """The keys `**name` may pass when every binding of `name` in `function` is a dict display with string keys
    (`dd = {'device': device, 'dtype': dtype}`, `{} if c else {'inplace': c}`); None when not known."""
    bindings = [a.value for a in _single_name_assigns(function) if a.targets[0].target.value == name]
    keys: set[str] = set()
    for value in bindings:
        displays = [value.body, value.orelse] if type(value) is cst.IfExp else [value]
        for display in displays:
            if not isinstance(display, cst.Dict):
                return None
            for element in display.elements:
                if not (type(element) is cst.DictElement and type(element.key) is cst.SimpleString):
                    return None
                keys.add(element.key.evaluated_value)
    return keys if bindings else None


def _single_name_assigns(function: cst.FunctionDef) -> list[cst.Assign]:
    return [a for a in find_all(function.body, cst.Assign) if len(a.targets) == 1
            and type(a.targets[0].target) is cst.Name]


def layer_constructor_attributes(cls: cst.ClassDef, ctx: ConversionContext) -> set[str]:
    """`self.x = <layer constructor>` in the class's __init__: the attributes that hold one."""
    init = next((s for s in cls.body.body if type(s) is cst.FunctionDef and s.name.value == "__init__"), None)
    if init is None:
        return set()
    names = layer_constructor_names(init, ctx)
    attributes: set[str] = set()
    for assign in find_all(init.body, cst.Assign):
        for target in assign.targets:
            t = target.target
            if _is_self_attribute(t) and is_layer_constructor(assign.value, ctx, names):
                attributes.add(t.attr.value)
    return attributes


def calls_layer_constructor(call: cst.Call, names: set[str], attributes: set[str],
                            fields: set[str] = frozenset()) -> bool:
    """`norm_layer(c)` (a name holding a layer constructor), `self._norm_layer(c)` (such an attribute) or
    `cnf.block(cnf)` (a field declared as one, ConversionContext.constructor_fields)."""
    func = registries.picked(call.func)[0] if type(call.func) is cst.Subscript else call.func  # blocks[0](c)
    if type(func) is cst.Name:
        return func.value in names
    if type(func) is cst.Attribute and func.attr.value in fields:
        return True
    return _is_self_attribute(func) and func.attr.value in attributes


def none_first_attributes(cls: cst.ClassDef) -> set[str]:
    """Attributes the constructor sets to None and also to something else (`self.proj = None`, then
    `if ...: self.proj = Conv(...)`): nnx would take them as static and refuse the layer."""
    init = next((s for s in cls.body.body if type(s) is cst.FunctionDef and s.name.value == "__init__"), None)
    if init is None:
        return set()
    nones, valued = set(), set()
    for assign in find_all(init, cst.Assign):
        if not _is_self_attribute(assign.targets[0].target):
            continue
        (nones if _is_name(assign.value, "None") else valued).add(assign.targets[0].target.attr.value)
    return nones & valued
