"""The residual check: what the rewrite left that still means torch, as PT040 errors.

A pass of its own after the rewrite (and FinalizeImports). It reads the
rewritten tree, one traversal, and reports what will fail or differ on jax
arrays and nnx modules: torch.Tensor attributes a jax array lacks, nn.Module
methods on converted module classes, torch layers built inside an nnx module,
item assignment to arrays, the truth value of nnx Variables, einops on
Variables, and torch names no earlier diagnostic covered. The attribute tables
are data: rules/residual.toml.

Positions: the rewritten tree has none of its own, but the rewrite keeps every
node it did not change (the same object), so porter/convert/source_index.py
knows where it was. A finding on an unchanged node is reported exactly; on a
rebuilt one at its first unchanged part (an attribute at its name, `.numpy` in
`jax.lax.stop_gradient(x).numpy()`), failing that at the first unchanged part of
the enclosing statements: the line is right, the column may be approximate.

The statement prefilter (porter/convert/source_index.py) skips unchanged code
that holds none of the names the check reacts to; an item assignment has no
such name, so the places of `] =` in the code are triggers too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import libcst as cst

from porter.convert.context import ConversionContext, code_of
from porter.convert.diagnostics import Severity
from porter.convert.passes.analyze import dotted
from porter.convert.passes.calls import KEPT_TORCH
from porter.convert.passes.scope import enter_body, enter_function
from porter.convert.source_index import Prefilter, SourceIndex
from porter.convert.traverse import FastDispatch, find_all, visit
from porter.rules.loader import ResidualGroup, ResidualTables, load_residual

# receivers, from plainly not an array to surely one
NOT_ARRAY, MODULE, UNKNOWN, ARRAY, VARIABLE = "not an array", "module", "unknown", "array", "variable"
MAY_BE_ARRAY = (UNKNOWN, ARRAY, VARIABLE)
# names the converted code binds to modules (FinalizeImports adds their imports)
CONVERTED_MODULES = frozenset({"jax", "jnp", "nnx", "optax", "np", "math", "einops", "typing", "weakref", "ocp",
                               "multihost_utils", "os", "partial", "functools", "rngs"})
_NOT_ARRAY_NODES = (cst.SimpleString, cst.ConcatenatedString, cst.FormattedString, cst.Integer, cst.Float,
                    cst.Imaginary, cst.List, cst.Dict, cst.Set, cst.Tuple, cst.ListComp, cst.DictComp, cst.SetComp,
                    cst.GeneratorExp, cst.Lambda)
_CONTAINER_CALLS = frozenset({"list", "dict", "set", "tuple", "defaultdict", "OrderedDict", "deque", "Counter",
                              "str", "len", "int", "float", "bool", "range", "enumerate", "zip", "sorted", "reversed"})
_VARIABLE_CLASSES = frozenset({"Param", "Variable", "BatchStat", "Cache", "Intermediate", "Buffer"})
# nnx classes that are no module (a Variable, the optimizer, the random streams)
_NOT_MODULES = _VARIABLE_CLASSES | {"Optimizer", "Rngs", "RngStream", "Metric", "MultiMetric"}
_ARRAY_TYPES = frozenset({"jax.Array", "jnp.ndarray", "jax.numpy.ndarray", "Array"})
# `model = torch.compile(model)`, `model = replicate_params(model)` (DDP's conversion): the same object
_SAME_OBJECT_CALLS = frozenset({"torch.compile", "replicate_params"})
# methods of a module that build its layers: not traced
_TEST_FIELDS = {cst.If: "test", cst.While: "test", cst.IfExp: "test", cst.Assert: "test"}
# `x[...] = v`, `x[i] += v` (and `(x[i]) = v`): a subscript target
ITEM_ASSIGNMENT = re.compile(r"\][\s)\\]*(?:\*\*|//|>>|<<|[-+*/%@&|^])?=(?!=)")
# `.name` (an attribute's name, across spaces and line continuations)
ATTRIBUTE_NAME = re.compile(r"\.[\s\\]*(\w+)")
# attribute names that are also words of a message: an error names them as `.name`
_WORDS = frozenset({"to", "type", "data", "apply", "float", "int", "long", "bool", "half", "t", "name", "index",
                    "values", "mode", "grad", "new", "add", "put", "select", "all", "any", "forward", "double"})
# compound statements a whole-construct error leaves unchanged (a training loop porter did not convert)
_WHOLE_CONSTRUCT_CODES = frozenset({"PT010", "PT023"})


@dataclass
class _ClassInfo:
    """What a converted module class's rewritten code says about its attributes."""

    variables: set[str] = field(default_factory=set)  # nnx.Param / Buffer / Variable attributes
    layers: set[str] = field(default_factory=set)  # submodules
    defined: set[str] = field(default_factory=set)  # names the class (or a base of this file) defines
    constructor_helpers: set[str] = field(default_factory=set)  # methods its __init__ calls: not traced


def check(ctx: ConversionContext, index: SourceIndex, module: cst.Module, fast: bool,
          tables: ResidualTables | None = None) -> None:
    """Adds a PT040 diagnostic to ctx for each residual in `module`, the rewritten tree: the final one less
    the imports and helpers porter added, which are its own (FinalizeImports changes nothing else)."""
    body = [s for s in module.body if not _is_import(s)]
    if not body:
        return
    residual = ResidualCheck(ctx, index, tables or load_residual(), module)
    part = module.with_changes(body=body)
    if fast:
        prefilter = Prefilter(index, residual)
        prefilter.also_at(m.start() for m in ITEM_ASSIGNMENT.finditer(index.code_text))
        prefilter.also_at(m.start(1) for m in ATTRIBUTE_NAME.finditer(index.code_text)
                          if m.group(1) in residual.attribute_words)
        visit(part, residual, prefilter)
    else:
        visit(part, residual)
    residual.report()


def _is_import(statement: cst.CSTNode) -> bool:
    return type(statement) is cst.SimpleStatementLine and all(
        type(s) in (cst.Import, cst.ImportFrom) for s in statement.body)


class ResidualCheck(FastDispatch, cst.CSTVisitor):
    def __init__(self, ctx: ConversionContext, index: SourceIndex, tables: ResidualTables, module: cst.Module) -> None:
        super().__init__()
        self.ctx, self.index, self.tables = ctx, index, tables
        self.errors = {(d.line, d.col) for d in ctx.diagnostics if d.severity is Severity.ERROR}
        self.error_messages: dict[int, list[str]] = {}
        for d in ctx.diagnostics:
            if d.severity is Severity.ERROR:
                self.error_messages.setdefault(d.line, []).append(d.message)
        self.error_lines = set(self.error_messages)
        self.whole_errors = {d.line for d in ctx.diagnostics if d.code in _WHOLE_CONSTRUCT_CODES}
        self.found: dict[tuple[int, int, str], None] = {}
        self.classes: list[tuple[str, _ClassInfo | None]] = []  # (name, info for a converted module class)
        self.functions: list[cst.FunctionDef] = []
        self.statements: list[cst.CSTNode] = []
        self.class_nodes = {s.name.value: s for s in module.body if type(s) is cst.ClassDef}
        self.class_infos: dict[str, _ClassInfo] = {}
        self.bindings: dict[int, dict[str, str]] = {}  # id(function or module) -> name -> receiver kind
        self.module = module
        self.kept = 0  # > 0 inside a call of a torch API kept on purpose (data loading, seeding)
        self.annotations = 0
        self.not_references: set[int] = set()  # Names that are no reference: attribute names, keywords, ...
        self.calls: set[int] = set()  # ids of expressions in call position
        self.einops, self.torch_packages = self._imported_names(module)
        aliases = ctx.torch_aliases
        self.modules = (ctx.bound_imports | CONVERTED_MODULES) - set(aliases)
        names = set(aliases) | ctx.module_classes | ctx.class_words | self.einops | set(self.torch_packages)
        self.words = tables.flagged_names() | names
        # the flagged names count only as attribute names (visit_Attribute): the prefilter's triggers are their
        # `.name` places (check()), not a variable of the same name (`name`, `index`, `t`)
        self.attribute_words = tables.flagged_names() - names
        self.state = 0
        self.traced_functions = self._functions_called_when_traced(module)

    def _functions_called_when_traced(self, module: cst.Module) -> set[str]:
        """Top-level functions that the traced methods of the converted modules call by name, directly or
        through one another (token-shift's `shift_tokens(x, n)` in a forward): traced as well."""
        functions = {s.name.value: s for s in module.body if type(s) is cst.FunctionDef}
        if not functions:
            return set()
        pending = [method for name, cls in self.class_nodes.items() if name in self.ctx.module_classes
                   for method in _methods(cls) if method.name.value != "__init__"
                   and method.name.value not in self.ctx.methods_needing_rngs.get(name, ())]
        found: set[str] = set()
        while pending:
            for call in find_all(pending.pop(), cst.Call):
                name = call.func.value if type(call.func) is cst.Name else None
                if name in functions and name not in found and name not in self.ctx.rngs_functions:
                    found.add(name)
                    pending.append(functions[name])
        return found

    # the prefilter ----------------------------------------------------------------
    def trigger_words(self) -> set[str]:
        return self.words - self.attribute_words

    def trigger_state(self) -> int:
        return self.state

    def _imported_names(self, module: cst.Module) -> tuple[set[str], dict[str, tuple[str, str]]]:
        """Local names of einops functions, and of what the file imports from torch packages other than torch
        (local name -> (package, the name imported)), at the top level or in a function (nanoGPT's from_pretrained imports
        transformers' GPT2LMHeadModel in its body)."""
        einops, packages = set(), {}
        for small in find_all(module, (cst.ImportFrom, cst.Import)):
            if type(small) is cst.ImportFrom and small.module is not None and not small.relative \
                    and not isinstance(small.names, cst.ImportStar):
                source = dotted(small.module)
                for alias in small.names:
                    local = alias.evaluated_alias or alias.evaluated_name
                    if source == "einops" and alias.evaluated_name in self.tables.einops_functions:
                        einops.add(local)
                    elif self._torch_package(source):
                        packages[local] = (source.split(".")[0], alias.evaluated_name)
            elif type(small) is cst.Import:
                for alias in small.names:
                    if self._torch_package(alias.evaluated_name):
                        packages[(alias.evaluated_alias or alias.evaluated_name).split(".")[0]] = \
                            (alias.evaluated_name.split(".")[0], alias.evaluated_name)
        return einops, packages

    def _torch_package(self, name: str) -> bool:
        top = name.split(".")[0]
        return top in self.tables.torch_packages and top != "torch" and not name.startswith("einops")

    # where we are ------------------------------------------------------------------
    @property
    def module_class(self) -> _ClassInfo | None:
        """The converted module class whose methods we are in (nested functions included)."""
        return self.classes[-1][1] if self.classes else None

    @property
    def traced(self) -> bool:
        """In a converted module's method that jit traces (not its constructor or a layer-building helper), or
        in a top-level function such a method calls."""
        if not self.functions:
            return False
        if not self.classes:
            return self.functions[0].name.value in self.traced_functions
        if self.module_class is None:
            return False
        name, method = self.classes[-1][0], self._method_node()
        return method is not None and method.name.value != "__init__" \
            and method.name.value not in self.ctx.methods_needing_rngs.get(name, ()) \
            and method.name.value not in self.module_class.constructor_helpers

    def _method_node(self) -> cst.FunctionDef | None:
        cls = self.class_nodes.get(self.classes[-1][0]) if self.classes else None
        methods = {id(f) for f in _methods(cls)} if cls is not None else set()
        return next((f for f in self.functions if id(f) in methods), self.functions[0])

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        self.not_references.add(id(node.name))
        name = node.name.value
        info = self._class_info(name) if name in self.ctx.module_classes else None
        if info is not None and not info.variables <= self.words:
            self.words = self.words | info.variables
            self.state += 1
        self.classes.append((name, info))
        self.statements.append(node)
        return self._not_whole_error(node) and self._not_data(node)

    def leave_ClassDef(self, node: cst.ClassDef) -> None:
        self.classes.pop()
        self.statements.pop()

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self.not_references.add(id(node.name))
        self.functions.append(node)
        enter_function(self.ctx)  # a parameter named like a torch import (`def f(tensor)`) is the parameter
        enter_body(self.ctx, node)
        self.statements.append(node)
        return self._not_whole_error(node)

    def leave_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.ctx.shadowed.pop()
        self.functions.pop()
        self.statements.pop()

    def visit_SimpleStatementLine(self, node) -> bool:
        self.statements.append(node)
        return self._not_data(node)

    def visit_SimpleStatementSuite(self, node) -> bool:
        return self._not_data(node)

    def _not_data(self, node) -> bool:
        """False for a statement (or Dataset class) feeding torch's data loading: torch on purpose."""
        data = self.ctx.data_side
        return data is None or id(node) not in data.statements

    def leave_SimpleStatementLine(self, node) -> None:
        self.statements.pop()

    def _compound(self, node) -> bool:
        self.statements.append(node)
        return self._not_whole_error(node)

    def _leave_compound(self, node) -> None:
        self.statements.pop()

    visit_For = visit_With = visit_Try = _compound
    leave_For = leave_With = leave_Try = _leave_compound

    def visit_If(self, node: cst.If) -> bool:
        self.statements.append(node)
        self._truthiness(node.test)
        return self._not_whole_error(node)

    def visit_While(self, node: cst.While) -> bool:
        self.statements.append(node)
        self._truthiness(node.test)
        return self._not_whole_error(node)

    leave_If = leave_While = _leave_compound

    def _not_whole_error(self, node: cst.CSTNode) -> bool:
        """False for a statement that an error reported as a whole (left unchanged): its torch is known."""
        return not (self.whole_errors and self._position(node)[0] in self.whole_errors)

    def visit_Annotation(self, node: cst.Annotation) -> None:
        self.annotations += 1

    def leave_Annotation(self, node: cst.Annotation) -> None:
        self.annotations -= 1

    def visit_Import(self, node) -> bool:
        return False

    visit_ImportFrom = visit_Import

    def visit_Param(self, node: cst.Param) -> None:
        self.not_references.add(id(node.name))

    def visit_Arg(self, node: cst.Arg) -> bool:
        if node.keyword is not None:
            self.not_references.add(id(node.keyword))
        data = self.ctx.data_side  # torch's data given to a function for its loader (`make_loader(images, labels)`)
        return data is None or id(node) not in data.arguments

    # what the check reacts to ----------------------------------------------------------
    def visit_Call(self, node: cst.Call) -> None:
        func = node.func
        self.calls.add(id(func))
        if self._kept(func):
            self.kept += 1
            return
        if type(func) is cst.Name:
            if func.value in self.einops:
                self._einops(node, func.value)
            elif func.value == "TypeVar":
                self.annotations += 1  # TypeVar("M", bound=nn.Module): typing, as an annotation
        elif type(func) is cst.Attribute and type(func.value) is cst.Name and func.value.value == "einops" \
                and func.attr.value in self.tables.einops_functions:
            self._einops(node, func.attr.value)
        if self.module_class is not None and self.torch_packages and _class_name(func):
            head = func
            while type(head) is cst.Attribute:
                head = head.value
            if type(head) is cst.Name and head.value in self.torch_packages:
                self._add(head, f"`{_short(func)}(...)` is a class of a torch package, built inside the nnx module "
                                f"{self.classes[-1][0]}: it runs torch there",
                          "convert it too (porter convert the package's source with the rest of the tree), or write "
                          "the flax equivalent")
        elif self.module_class is not None and type(func) is cst.Attribute and type(func.value) is cst.Name \
                and func.value.value in self.torch_packages \
                and _class_name(cst.Name(self.torch_packages[func.value.value][1].rsplit(".", 1)[-1])):
            package = self.torch_packages[func.value.value][0]  # GPT2LMHeadModel.from_pretrained(model_type)
            self._add(func.value, f"`{_short(func)}(...)` builds {func.value.value} of {package}, a torch "
                                  f"package, inside the nnx module {self.classes[-1][0]}: it runs torch there",
                          "convert it too (porter convert the package's source with the rest of the tree), or write "
                          "the flax equivalent")

    def leave_Call(self, node: cst.Call) -> None:
        if self._kept(node.func):
            self.kept -= 1
        elif type(node.func) is cst.Name and node.func.value == "TypeVar":
            self.annotations -= 1

    def _kept(self, func: cst.BaseExpression) -> bool:
        return (self.ctx.qualified_name(func) or "").startswith(KEPT_TORCH)

    def visit_Attribute(self, node: cst.Attribute) -> None:
        self.not_references.add(id(node.attr))
        if id(node) not in self.not_references:  # the outermost attribute of a chain: a torch reference?
            self._torch_reference(node)
        self.not_references.add(id(node.value))
        name, called = node.attr.value, id(node) in self.calls
        group = self.tables.lookup("module", name, called) or self.tables.lookup("module_extra", name, called)
        tensor = self.tables.lookup("tensor", name, called) or self.tables.lookup("tensor_shared", name, called)
        if group is None and tensor is None:
            return
        kind = self._receiver(node.value)
        if group is not None and kind is MODULE:
            self._module_method(node, group, called)
        elif tensor is not None and self._flags(tensor, kind):
            what = "method" if called else "attribute"
            if tensor.flag == "traced":
                where = f"{self.classes[-1][0]}.{self._method_node().name.value}" if self.classes \
                    else f"{self.functions[0].name.value}, called from a module's forward,"
                message = (f"`{_short(node)}{'(...)' if called else ''}` inside {where}: a jax "
                           f"array has no {name} under jax.jit or nnx.grad (a tracer)")
            else:
                message = f"`{_short(node)}{'(...)' if called else ''}`: a jax array has no {name} {what} ({tensor.name})"
            self._add(node.attr, message, tensor.hint, self._position(node), name)

    def _flags(self, group: ResidualGroup, kind: str) -> bool:
        if group.flag == "value":
            return kind in MAY_BE_ARRAY
        if group.flag == "traced":
            return kind in MAY_BE_ARRAY and self.traced
        if group.flag == "likely" and self.traced:
            return kind in MAY_BE_ARRAY
        return kind is ARRAY or kind is VARIABLE  # "array", "likely" outside traced code

    def _module_method(self, node: cst.Attribute, group: ResidualGroup, called: bool) -> None:
        name = node.attr.value
        receiver = node.value
        if type(receiver) is cst.Name and receiver.value == "self" and self.module_class is not None \
                and name in self.module_class.defined:
            return  # the class's own method
        owner = f"{self.classes[-1][0]} is" if type(receiver) is cst.Name and receiver.value == "self" \
            and self.classes else f"`{_short(receiver)}` is"
        what = f"nn.Module {name} is not an nnx.Module method" if group.table == "module" else \
            f"{name} is a jax array's method, not an nnx.Module's"
        self._add(node.attr, f"`{_short(node)}{'(...)' if called else ''}`: {what} ({owner} an nnx.Module now; "
                             f"{group.name})", group.hint, self._position(node), name)

    def visit_Name(self, node: cst.Name) -> None:
        # an emitted helper named as the torch import it replaces (`StepLR`) is the helper (passes/imports.py)
        if id(node) not in self.not_references and self.ctx.torch_alias(node.value) is not None \
                and node.value not in self.ctx.helpers:
            self._torch_reference(node)

    def _torch_reference(self, node: cst.BaseExpression) -> None:
        qualified = self.ctx.qualified_name(node)
        if qualified is None or self.kept or self.annotations or qualified.startswith(KEPT_TORCH):
            return
        head = node
        while type(head) is cst.Attribute:
            head = head.value
        self.not_references.add(id(head))
        line, col = self._position(head)
        if line in self.error_lines:
            return  # the rewrite said why it left torch on this line
        called = id(node) in self.calls
        if called and self.module_class is not None and _class_name(node):
            message = f"torch layer `{qualified}` built inside the nnx module {self.classes[-1][0]}"
            hint = "build the flax layer (nnx.Linear(..., rngs=rngs) for nn.Linear; `porter rules` lists them)"
        else:
            message = f"`{_short(node)}` still refers to torch ({qualified}) and no diagnostic said why"
            hint = "write the jax/jnp/nnx equivalent; `porter rules` lists what porter converts"
        self._add_at(line, col, message, hint)

    def visit_Assign(self, node: cst.Assign) -> None:
        for target in node.targets:
            self._item_assignment(target.target, "=")

    def visit_AugAssign(self, node: cst.AugAssign) -> None:
        self._item_assignment(node.target, code_of(node.operator).strip())

    def _item_assignment(self, target: cst.BaseExpression, operator: str) -> None:
        if type(target) is not cst.Subscript:
            return
        kind = self._receiver(target.value)
        if kind is ARRAY or (kind is UNKNOWN and _array_index(target.slice)):
            name = _short(target.value)
            method = {"=": "set", "+=": "add", "-=": "subtract", "*=": "multiply", "/=": "divide"}.get(operator, "set")
            self._add(target, f"item assignment `{_short(target)} {operator} ...`: JAX arrays are immutable",
                      f"{name} = {name}.at[...].{method}(value) (jnp.where(mask, value, {name}) for a boolean mask); "
                      "an nnx.Variable takes self.v[...] = value")

    def visit_UnaryOperation(self, node: cst.UnaryOperation) -> None:
        if type(node.operator) is cst.Not:
            self._truthiness(node.expression)

    def visit_BooleanOperation(self, node: cst.BooleanOperation) -> None:
        self._truthiness(node.left)
        self._truthiness(node.right)

    def visit_IfExp(self, node: cst.IfExp) -> None:
        self._truthiness(node.test)

    def visit_Assert(self, node: cst.Assert) -> None:
        self._truthiness(node.test)

    def _truthiness(self, test: cst.BaseExpression) -> None:
        if self._self_attribute(test) is not None and self._receiver(test) is VARIABLE:
            self._add(test, f"truth value of `{_short(test)}`, an nnx Variable: bool() of a Variable fails "
                            "(len() of unsized object)",
                      f"test its value, `{_short(test)}[...]` (a Python bool outside jit only; under jit "
                      "jax.lax.cond or jnp.where)")

    def _einops(self, call: cst.Call, function: str) -> None:
        values = [a.value for a in call.args if a.keyword is None][:1]
        if values and type(values[0]) in (cst.List, cst.Tuple):
            values = [e.value for e in values[0].elements]
        for value in values:
            if self._self_attribute(value) is not None and self._receiver(value) is VARIABLE:
                self._add(value, f"einops {function} of `{_short(value)}`, an nnx Variable: einops cannot read its "
                                 "shape", f"pass its array: {_short(value)}[...]")

    # receivers -------------------------------------------------------------------------
    def _receiver(self, node: cst.BaseExpression) -> str:
        kind = type(node)
        if kind is cst.Name:
            return self._name_kind(node.value)
        if kind is cst.Attribute:
            attribute = self._self_attribute(node)
            if attribute is not None:
                return self._self_attribute_kind(attribute)
            head = node
            while type(head) is cst.Attribute:
                head = head.value
            if type(head) is cst.Name and (head.value in self.modules or self.ctx.torch_alias(head.value) is not None):
                return NOT_ARRAY
            return UNKNOWN
        if kind is cst.Call:
            func = dotted(node.func)
            if func.startswith("jnp."):
                return ARRAY
            if func == "super" or func in self.ctx.module_classes:
                return MODULE
            if func in _CONTAINER_CALLS:
                return NOT_ARRAY
            return UNKNOWN
        if kind is cst.Subscript:
            return ARRAY if self._receiver(node.value) in (ARRAY, VARIABLE) else UNKNOWN
        if kind is cst.BinaryOperation:
            sides = (self._receiver(node.left), self._receiver(node.right))
            return ARRAY if ARRAY in sides or VARIABLE in sides else UNKNOWN
        if isinstance(node, _NOT_ARRAY_NODES):
            return NOT_ARRAY
        return UNKNOWN

    def _self_attribute(self, node: cst.BaseExpression) -> str | None:
        if type(node) is cst.Attribute and type(node.value) is cst.Name and node.value.value == "self":
            return node.attr.value
        return None

    def _self_attribute_kind(self, attribute: str) -> str:
        info = self.module_class
        if info is None:
            return UNKNOWN
        if attribute in info.variables:
            return VARIABLE
        if attribute in info.layers:
            return MODULE
        if attribute in ("rngs", "deterministic", "training", "use_running_average"):
            return NOT_ARRAY
        return UNKNOWN

    def _name_kind(self, name: str) -> str:
        if name == "self":
            return MODULE if self.module_class is not None else NOT_ARRAY
        if name in self.modules or self.ctx.torch_alias(name) is not None or name in self.ctx.module_classes:
            return NOT_ARRAY
        scope = self.functions[-1] if self.functions else self.module
        kind = self._bindings(scope).get(name)
        if kind is None and self.functions:
            kind = self._bindings(self.module).get(name)
        return kind or UNKNOWN

    def _bindings(self, scope: cst.CSTNode) -> dict[str, str]:
        """Name -> receiver kind, from the scope's assignments (flow-insensitive: one kind for every binding)."""
        found = self.bindings.get(id(scope))
        if found is not None:
            return found
        kinds: dict[str, set[str]] = {}
        if type(scope) is cst.FunctionDef:
            for param in [*scope.params.params, *scope.params.kwonly_params, *scope.params.posonly_params]:
                annotated = param.annotation is not None and dotted(param.annotation.annotation) in _ARRAY_TYPES
                kinds.setdefault(param.name.value, set()).add(ARRAY if annotated else UNKNOWN)
        aliases: dict[str, list[str]] = {}  # `raw_model = model if ddp else model`: the kind of model
        for target, value in _assignments(scope):
            if _same_object(value) == target:
                continue  # `model = torch.compile(model)` keeps model's kind
            alias = _alias(value)
            if alias is not None:
                aliases.setdefault(target, []).append(alias)
            else:
                kinds.setdefault(target, set()).add(self._value_kind(value))
        found = {name: next(iter(k)) if len(k) == 1 else UNKNOWN for name, k in kinds.items()}
        for target, names in aliases.items():  # one round: an alias of an alias stays unknown
            known = {found.get(name, UNKNOWN) for name in names} | kinds.get(target, set())
            found[target] = next(iter(known)) if len(known) == 1 else UNKNOWN
        self.bindings[id(scope)] = found
        return found

    def _value_kind(self, value: cst.BaseExpression | None) -> str:
        if value is None:
            return UNKNOWN
        kind = type(value)
        if kind is cst.Call:
            func = dotted(value.func)
            if func.startswith(("jnp.", "jax.numpy.")) or func in ("jax.random.normal", "jax.random.uniform"):
                return ARRAY
            if func in self.ctx.module_classes or (func.startswith("nnx.") and func[4:5].isupper()
                                                    and func[4:] not in _NOT_MODULES):
                return MODULE
            owner, _, method = func.rpartition(".")
            if method == "from_pretrained" and owner in self.ctx.module_classes:  # `GPT.from_pretrained(name)`
                return MODULE
            if func in _CONTAINER_CALLS:
                return NOT_ARRAY
            return UNKNOWN
        if isinstance(value, _NOT_ARRAY_NODES):
            return NOT_ARRAY
        return UNKNOWN

    def _class_info(self, name: str, seen: frozenset[str] = frozenset()) -> _ClassInfo:
        found = self.class_infos.get(name)
        if found is not None:
            return found
        info = _ClassInfo()
        node = self.class_nodes.get(name)
        if node is not None and name not in seen:
            for base in node.bases:
                base_name = dotted(base.value)
                if base_name in self.ctx.module_classes and base_name in self.class_nodes:
                    inherited = self._class_info(base_name, seen | {name})
                    info.variables |= inherited.variables
                    info.layers |= inherited.layers
                    info.defined |= inherited.defined
            for statement in node.body.body:
                if type(statement) is cst.FunctionDef:
                    info.defined.add(statement.name.value)
                elif type(statement) is cst.SimpleStatementLine:
                    for small in statement.body:
                        for target in _targets(small):
                            info.defined.add(target)
            for function in _methods(node):
                for target, value in _assignments(function, self_attributes=True):
                    self._note_attribute(info, target, value)
                if function.name.value == "__init__":
                    info.constructor_helpers = {
                        call.func.attr.value for call in find_all(function.body, cst.Call)
                        if type(call.func) is cst.Attribute and type(call.func.value) is cst.Name
                        and call.func.value.value == "self"}
        layers = self.ctx.layer_attributes.get(name, {})
        for attribute, kind in layers.items():
            if kind == "buffer" or kind.endswith("Parameter"):
                info.variables.add(attribute)
            elif attribute not in info.variables:
                info.layers.add(attribute)
        self.class_infos[name] = info
        return info

    def _note_attribute(self, info: _ClassInfo, attribute: str, value: cst.BaseExpression | None) -> None:
        if type(value) is not cst.Call:
            return
        func = dotted(value.func)
        last = func.rsplit(".", 1)[-1]
        if last in _VARIABLE_CLASSES and (func == last or func.startswith("nnx.")):
            info.variables.add(attribute)
        elif func in self.ctx.module_classes or (func.startswith("nnx.") and last[:1].isupper()):
            info.layers.add(attribute)

    # positions and the report ------------------------------------------------------------
    def _position(self, node: cst.CSTNode) -> tuple[int, int]:
        """Where the node's code starts in the original: its first unchanged part (else its statements')."""
        found = _first_original(node, self.index)
        if found is not None:
            return self.index.start(found)
        for statement in reversed(self.statements):
            found = _first_original(statement, self.index)
            if found is not None:
                return self.index.start(found)
        return 1, 1

    def _add(self, node: cst.CSTNode, message: str, hint: str, construct: tuple[int, int] | None = None,
             name: str | None = None) -> None:
        line, col = self._position(node)
        if (line, col) in self.errors or construct in self.errors or (name and self._named_in_error(line, name)):
            return  # the rewrite reported this construct already
        self._add_at(line, col, message, hint)

    def _named_in_error(self, line: int, name: str) -> bool:
        """An error on the line names the attribute: the same construct, placed where the rewrite saw it (a
        rebuilt call starts elsewhere). A name that is also an English word counts only as `.name`."""
        pattern = rf"\.{name}\b" if name in _WORDS else rf"(?<!\w){re.escape(name)}(?!\w)"
        return any(re.search(pattern, message) for message in self.error_messages.get(line, ()))

    def _add_at(self, line: int, col: int, message: str, hint: str) -> None:
        self.found.setdefault((line, col, f"{message}; write instead: {hint}"), None)

    def report(self) -> None:
        for line, col, message in self.found:
            self.ctx.report("PT040", line, col, message)


def _first_original(node: cst.CSTNode, index: SourceIndex) -> cst.CSTNode | None:
    """The node itself when the rewrite kept it, else its first descendant the rewrite kept (source order), its
    comment lines aside (a statement starts at its keyword, where the rewrite's diagnostics put it)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if index.contains(current):
            return current
        stack.extend(reversed([c for c in current.children if type(c) is not cst.EmptyLine]))
    return None


def _class_name(node: cst.BaseExpression) -> bool:
    """Names a class by the convention: `Linear`, `nn.Linear`, `ops.StochasticDepth`."""
    last = node.attr.value if type(node) is cst.Attribute else node.value if type(node) is cst.Name else ""
    return last[:1].isupper()


def _short(node: cst.CSTNode, limit: int = 60) -> str:
    text = " ".join(code_of(node).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _array_index(elements) -> bool:
    """An index only an array takes: a boolean mask (`y[y < 0]`, `x[~m]`), or several dimensions with a slice,
    `...` or None among them (`x[:, 0]`); a list or a dict takes neither. `v[...]` alone is how an nnx.Variable
    is set (porter's emitted helpers do it to variables it cannot see the kind of): not counted."""
    if len(elements) == 1:
        slice_ = elements[0].slice
        if type(slice_) is not cst.Index:
            return False
        value = slice_.value
        return type(value) is cst.Comparison or (
            type(value) is cst.UnaryOperation and type(value.operator) is cst.BitInvert)
    return any(type(e.slice) is cst.Slice or (type(e.slice) is cst.Index and (
        type(e.slice.value) is cst.Ellipsis or (type(e.slice.value) is cst.Name and e.slice.value.value == "None")))
               for e in elements)


def _methods(node: cst.ClassDef) -> list[cst.FunctionDef]:
    return [s for s in node.body.body if type(s) is cst.FunctionDef]


def _targets(small: cst.CSTNode) -> list[str]:
    if type(small) is cst.Assign:
        return [t.target.value for t in small.targets if type(t.target) is cst.Name]
    if type(small) is cst.AnnAssign and type(small.target) is cst.Name:
        return [small.target.value]
    return []


# statement containers -> their fields holding statements (a nested function or class has its own scope)
_STATEMENT_FIELDS: dict[type, tuple[str, ...]] = {
    cst.Module: ("body",), cst.FunctionDef: ("body",), cst.IndentedBlock: ("body",),
    cst.SimpleStatementSuite: ("body",), cst.If: ("body", "orelse"), cst.Else: ("body",),
    cst.For: ("body", "orelse"), cst.While: ("body", "orelse"), cst.With: ("body",),
    cst.Try: ("body", "handlers", "orelse", "finalbody"), cst.ExceptHandler: ("body",), cst.Finally: ("body",),
}


def _same_object(value: cst.BaseExpression | None) -> str | None:
    """x for `torch.compile(x)` / `replicate_params(x)` (returns x itself, compiled or replicated)."""
    if type(value) is cst.Call and dotted(value.func) in _SAME_OBJECT_CALLS and value.args \
            and type(value.args[0].value) is cst.Name and value.args[0].keyword is None:
        return value.args[0].value.value
    return None


def _alias(value: cst.BaseExpression | None) -> str | None:
    """x for `x`, and for `x if c else x` (what `model.module if ddp else model` becomes)."""
    if type(value) is cst.Name and value.value not in ("None", "True", "False"):
        return value.value
    if type(value) is cst.IfExp and type(value.body) is cst.Name and type(value.orelse) is cst.Name \
            and value.body.value == value.orelse.value:
        return value.body.value
    return None


def _assignments(scope: cst.CSTNode, self_attributes: bool = False) -> list[tuple[str, cst.BaseExpression | None]]:
    """(name, value) for each `name = value` of the scope (statements only, nested scopes aside); with
    self_attributes, (attribute, value) for each `self.attribute = value` instead. Loop and with targets
    are bound to no known value."""
    found: list[tuple[str, cst.BaseExpression | None]] = []

    def target_names(target: cst.BaseExpression, value) -> None:
        if self_attributes:
            if type(target) is cst.Attribute and type(target.value) is cst.Name and target.value.value == "self":
                found.append((target.attr.value, value))
        elif type(target) is cst.Name:
            found.append((target.value, value))
        elif type(target) in (cst.Tuple, cst.List):
            for element in target.elements:
                target_names(element.value, None)

    def walk(node: cst.CSTNode, top: bool) -> None:
        kind = type(node)
        if kind is cst.SimpleStatementLine:
            for small in node.body:
                if type(small) is cst.Assign:
                    for target in small.targets:
                        target_names(target.target, small.value)
                elif type(small) is cst.AnnAssign:
                    target_names(small.target, small.value)
                elif type(small) is cst.AugAssign:
                    target_names(small.target, None)
            return
        if (kind is cst.FunctionDef or kind is cst.ClassDef) and not top:
            return
        if kind is cst.For:
            target_names(node.target, None)
        for name in _STATEMENT_FIELDS.get(kind, ()):
            child = getattr(node, name)
            if isinstance(child, (list, tuple)):
                for item in child:
                    walk(item, False)
            elif child is not None:
                walk(child, False)

    walk(scope, True)
    del walk, target_names  # recursive closures are a cycle, which would keep `found`'s nodes for the cyclic collector
    return found
