"""The module structure concern (passes/concerns.py): nn.Module subclasses -> nnx.Module: bases, constructor
signature (plus keyword-only rngs), super().__init__(), forward -> __call__, register_buffer, state
assignments outside the constructor, self.training, buffers read as arrays, and module and parameter queries
(`self.modules()`, porter/convert/module_queries.py)."""

from __future__ import annotations

import re

import libcst as cst
import libcst.matchers as m

from porter.convert import module_queries
from porter.convert.tying import sublayer_parameter
from porter.convert.context import code_of
from porter.convert.replaced_variables import buffer_names, buffer_update, replaced_parameter, \
    replaces_own_parameter
from porter.convert.passes.analyze import LAYER_PARAMETER_NAMES, MODULE_BASES, MODULE_LIST_BASES, SEQUENTIAL_BASES, TORCH_LAYER_BASES
from porter.convert.passes.concerns import Final
from porter.convert.weight_init import is_init_statement
from porter.weights.layouts import LAYOUTS
from porter.convert.transforms import keyword_arg, expr, rule_expr, with_keyword_param
from porter.convert.traverse import find_all

RNGS_PARAM = cst.Param(cst.Name("rngs"), annotation=cst.Annotation(expr("nnx.Rngs")))
SUPER_INIT = m.Call(func=m.Attribute(value=m.Call(func=m.Name("super")), attr=m.Name("__init__")))
REGISTER_BUFFER = m.Call(func=m.Attribute(value=m.Name("self"), attr=m.Name("register_buffer")))
# self.add_module(name, layer): a submodule under a name known when it runs (timm's self.add_module(*stage));
# in a Sequential, ModuleList or ModuleDict subclass it is also an entry of the container, left reported
CONTAINERS = {f"torch.nn.{name}" for name in ("Sequential", "ModuleList", "ModuleDict")} | {
    f"torch.nn.modules.container.{name}" for name in ("Sequential", "ModuleList", "ModuleDict")}
ADD_MODULE = m.Call(func=m.Attribute(value=m.Name("self"), attr=m.Name("add_module") | m.Name("register_module")),
                    args=m.OneOf([m.Arg(keyword=None, star="*")], [m.Arg(keyword=None, star=""), m.Arg(keyword=None, star="")]))
ADD_MODULE_OF_ATTRIBUTE = m.Call(func=m.Attribute(value=m.Attribute(value=m.Name("self")), attr=m.Name("add_module")),
                                 args=[m.Arg(keyword=None, star=""), m.Arg(keyword=None, star="")])
SELF_TRAINING = m.Attribute(value=m.Name("self"), attr=m.Name("training"))
SELF_ASSIGN = m.Assign(targets=[m.AssignTarget(m.Attribute(value=m.Name("self")))])
FORWARD_OF_SELF = m.Attribute(value=m.Name("self") | m.Call(func=m.Name("super")), attr=m.Name("forward"))
RNGS_ONLY_CONSTRUCTOR = """def __init__(self, *, rngs: nnx.Rngs):
    del rngs  # builds no layers; takes rngs as every converted module does
"""
TRAINING_MODE_ATTRIBUTE = "deterministic = False  # torch's self.training is not self.deterministic: model.eval() sets it"
# where `not self.deterministic` needs no parentheses (self.training as an if's test, an argument ...)
_TEST_POSITIONS = {cst.If: ("test",), cst.While: ("test",), cst.IfExp: ("test",), cst.BooleanOperation: ("left", "right"),
                   cst.Arg: ("value",), cst.Return: ("value",), cst.Assign: ("value",)}
# where a value's truth is tested: `if self.initted:` needs the array, `self.initted[...]`
_TRUTH_TESTS = {cst.If: ("test",), cst.While: ("test",), cst.IfExp: ("test",), cst.Assert: ("test",),
                cst.BooleanOperation: ("left", "right"), cst.UnaryOperation: ("expression",)}
_ORDERING = (cst.LessThan, cst.LessThanEqual, cst.GreaterThan, cst.GreaterThanEqual, cst.Equal, cst.NotEqual)
# `self.fc.weight`: a torch parameter of a layer the class built, read in torch's layout from the flax variable
LAYER_PARAMETER = m.Attribute(value=m.Attribute(value=m.Name("self")))


# (type(...) is: libcst's node classes have no subclasses; these run for most nodes of a module class, where the
# matchers they stand for cost a few percent of a conversion)
def _is_self_attribute(node) -> bool:
    """`self.x`: m.matches(node, m.Attribute(value=m.Name("self")))."""
    return type(node) is cst.Attribute and type(node.value) is cst.Name and node.value.value == "self"


def _is_self_training(node) -> bool:
    """`self.training`: m.matches(node, SELF_TRAINING)."""
    return _is_self_attribute(node) and node.attr.value == "training"


class ModuleStructure:
    """Next to the calls concern in the pipeline's list: its hooks run right around the calls concern's."""

    # statements without these (or the torch names etc., passes/scope.py) are skipped unvisited
    TRIGGER_WORDS = frozenset({"super", "register_buffer", "add_module", "register_module", "training", "forward", "__init__", "modules", "named_modules",
                               *module_queries.MODULE_ITERATORS, *module_queries.PARAMETER_ITERATORS,
                               *LAYER_PARAMETER_NAMES})

    def __init__(self, scope) -> None:
        self.scope = scope
        self.ctx, self.report, self.record = scope.ctx, scope.report, scope.record
        # a buffer replaced from its own value (`model.mask = model.mask[:n]`) may be in a script, with no torch word
        self.TRIGGER_WORDS = ModuleStructure.TRIGGER_WORDS | buffer_names(scope.ctx) \
            | scope.ctx.sequence_words  # (`for m in self.features`: no other word of the statement may be one)
        self._understood_training: set[int] = set()  # self.training nodes a rule consumes
        self._bare_training: set[int] = set()  # self.training where `not self.deterministic` needs no parentheses
        self._not_training: set[int] = set()  # `not self.training` nodes: `self.deterministic`
        self._training_classes: set[str] = set()  # module classes that read self.training
        self._training_stores: set[int] = set()
        # module and parameter queries (porter/convert/module_queries.py)
        self._queries: dict[int, tuple[str, cst.CSTNode]] = {}  # id of `R.modules()` -> (method, its loop)
        self._order_free: set[int] = set()  # generators whose consumer ignores order (sum, any)
        self._parameter_loops: dict[int, str] = {}  # id of `for p in R.parameters()` (CompFor) -> p
        self._unpacked_loops: set[int] = set()  # `for m in R.modules()` (For, CompFor): `for _, m in ...` will do
        # buffers and parameters as arrays: `if not self.initted:`, `self.initted.data.copy_(v)`
        self._buffer_tests: set[int] = set()  # `self.<buffer>` nodes whose truth is tested
        self._variable_reads: set[int] = set()  # `self.<buffer>` compared (`self.calls > 5`), given to einops: an array
        self._buffer_writes: dict[int, str] = {}  # id of `self.<buffer>[.data].copy_(v)` -> copy_ / fill_ / zero_
        self._file_functions: set[str] = set()  # the file's top-level functions
        self._containers: set[str] = set()  # the file's classes subclassing a torch container
        self._classes: dict[str, cst.ClassDef] = {}  # the classes met, by name

    def visit_any(self, node: cst.CSTNode) -> None:
        kind = type(node)
        if kind is cst.Module:
            self._file_functions = {s.name.value for s in node.body if type(s) is cst.FunctionDef}
            self._containers = {s.name.value for s in node.body if type(s) is cst.ClassDef and any(  # add_module
                self.ctx.qualified_name(b.value) in CONTAINERS for b in s.bases)}  # appends to these: no setattr
        elif kind is cst.ClassDef:
            self._classes[node.name.value] = node
        module_class = self.scope.module_class
        if module_class:
            self._note_training_context(node)
            if kind in _TRUTH_TESTS or kind is cst.Comparison:
                self._note_buffer_tests(node)
            if kind is cst.Expr:
                self._note_buffer_write(node.value)
        if kind is cst.Assign and self.scope.in_module_method:
            self._note_variable_bindings(node)
        if kind is cst.Call:
            if module_class:
                self._note_einops_arguments(node)
            generator = module_queries.order_free(node)
            if generator is not None:
                self._order_free.add(id(generator))
        elif kind in module_queries.COMPREHENSIONS or kind is cst.For:
            self._note_query(node)

    def after_leave_any(self, original_node, updated_node):
        if type(original_node) is cst.For and type(updated_node) is cst.For:  # (the training pass's leave_For is its own)
            updated_node = self._unpack_query(original_node, updated_node)
        if id(original_node) in self._not_training and m.matches(updated_node.expression, m.UnaryOperation(m.Not())):
            return updated_node.expression.expression.with_changes(lpar=original_node.lpar, rpar=original_node.rpar)
        return updated_node

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.BaseExpression:
        if id(original_node) in self._buffer_writes:
            return Final(updated_node)  # leave_Expr makes it an item assignment
        if id(original_node) in self._queries:
            method, loop = self._queries.pop(id(original_node))
            new = module_queries.replacement(method, updated_node.func.value, self.ctx)
            for warning in module_queries.warnings(method, loop, id(loop) not in self._order_free):
                self.report("PT005", original_node, f"{code_of(original_node.func)}(): {warning}")
            self.record(f"module-{method}", original_node, new)
            return Final(new)
        return updated_node

    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.BaseExpression:
        if id(original_node) in self.ctx.sequence_reads:  # `for mod in self` in an nnx.Sequential subclass
            return self._layers_of(original_node, updated_node)
        return updated_node

    def leave_Subscript(self, original_node: cst.Subscript, updated_node: cst.Subscript) -> cst.BaseExpression:
        if id(original_node) in self.ctx.sequence_slices:  # `self.features[:4]`: torch's slice is a Sequential
            new = cst.Call(expr("nnx.Sequential"), [cst.Arg(updated_node, star="*")])
            self.record("module-sequence", original_node, new)
            return new
        return updated_node

    def _layers_of(self, original: cst.BaseExpression, updated: cst.BaseExpression) -> cst.BaseExpression:
        new = cst.Attribute(updated, cst.Name("layers"))
        self.record("module-sequence", original, new)
        return Final(new)

    def leave_CompFor(self, original_node: cst.CompFor, updated_node: cst.CompFor) -> cst.CompFor:
        """`if p.requires_grad` on a parameter query goes: every flax Param is trained."""
        updated_node = self._unpack_query(original_node, updated_node)
        variable = self._parameter_loops.pop(id(original_node), None)
        if variable is None:
            return updated_node
        ifs = [i for i in updated_node.ifs if not module_queries.requires_grad_test(i.test, variable)]
        return updated_node.with_changes(ifs=ifs)

    def _unpack_query(self, original, updated):
        """`for m in (m for _, m in nnx.iter_modules(self))` -> `for _, m in nnx.iter_modules(self)`."""
        if id(original) not in self._unpacked_loops or not isinstance(updated.iter, cst.GeneratorExp):
            return updated
        self._unpacked_loops.discard(id(original))
        inner = updated.iter.for_in
        return updated.with_changes(target=inner.target.with_changes(lpar=[], rpar=[]).deep_replace(
            inner.target.elements[1].value, updated.target), iter=inner.iter)

    def _query_type_test(self, original, updated) -> cst.BaseExpression:
        """`isinstance(m, nn.Linear)` on a module query's variable: the class porter builds for nn.Linear (the
        calls rewrite hands it over: scope.replaced_references)."""
        qualified = self.ctx.qualified_name(original)
        if not qualified or qualified.split(".")[0] != "torch":
            return updated  # a module class of this code: the converted class has its name
        converted = module_queries.converted_class(qualified, self.ctx)
        if converted is None:
            self.report("PT006", original, f"isinstance test against {qualified}: no one class of the converted "
                                           "code stands for it (several torch layers convert to the same class, or "
                                           "it converts to a function); left unchanged")
            return updated
        new = expr(converted)
        self.record("module-isinstance", original, new)
        return new

    def _note_query(self, loop: cst.CSTNode) -> None:
        """`for m in self.modules()` / `[... for p in model.parameters() ...]`: the query is rewritten in
        leave_Call, isinstance tests on its variable by _query_type_test."""
        comprehension = type(loop) is not cst.For
        if not comprehension and self._initialises(loop):
            return  # weight initialisation mixed with other work: kept whole, its init calls reported
        for_in = loop.for_in if comprehension else loop
        method = module_queries.query(for_in.iter, self.scope.module_class is not None,
                                      comprehension and id(loop) in self._order_free)
        if method is None:
            return
        self._queries[id(for_in.iter)] = (method, loop)
        variable = module_queries.loop_variable(for_in.target, method)
        if variable is None:
            return
        if method in ("modules", "children") and isinstance(for_in.target, cst.Name) \
                and not m.findall(loop, m.Name("_")):
            self._unpacked_loops.add(id(for_in))
        if method in module_queries.PARAMETER_ITERATORS:
            self._parameter_loops[id(for_in)] = variable
        else:
            for test in module_queries.type_tests(loop, variable):
                self.scope.replaced_references[test] = self._query_type_test

    def _note_buffer_tests(self, node: cst.CSTNode) -> None:
        """`if self.initted:`, `not self.initted`, `self.initted and ...`: an nnx Variable has no truth value."""
        if type(node) is cst.Comparison:  # `self.calls > 5`: an nnx Variable has no ordering either
            if all(isinstance(c.operator, _ORDERING) for c in node.comparisons):
                operands = [node.left, *(c.comparator for c in node.comparisons)]
                self._variable_reads |= {id(o) for o in operands if self._is_buffer(o)}
            return
        if type(node) is cst.UnaryOperation and not isinstance(node.operator, cst.Not):
            return
        for child in _TRUTH_TESTS[type(node)]:
            value = getattr(node, child)
            if self._is_buffer(value):
                self._buffer_tests.add(id(value))

    def _note_einops_arguments(self, call: cst.Call) -> None:
        """`repeat(self.latents, 'n d -> b n d', b=b)`: einops takes the array, not the nnx Variable; so do the
        file's own functions, and partials, that a traced method hands a buffer to (performer's
        `partial(softmax_kernel, projection_matrix=self.projection_matrix)`, whose body calls einops)."""
        head = call.func.value if isinstance(call.func, cst.Attribute) else call.func
        if not isinstance(head, cst.Name):
            return
        traced = self.scope.in_module_method \
            and self.scope.method not in self.ctx.methods_needing_rngs.get(self.scope.module_class, ())
        if head.value in self.ctx.einops_names or traced and call.func is head \
                and (head.value == "partial" or head.value in self._file_functions):
            self._variable_reads |= {id(a.value) for a in call.args if self._is_buffer(a.value)}

    def _note_variable_bindings(self, assign: cst.Assign) -> None:
        """`weight, bias = self.weight, self.bias` in forward: the names hold arrays (einops, jnp read them)."""
        value = assign.value
        values = [e.value for e in value.elements] if type(value) is cst.Tuple else [value]
        self._variable_reads |= {id(v) for v in values if self._is_buffer(v)}

    def _is_buffer(self, node: cst.BaseExpression) -> bool:
        return _is_self_attribute(node) and node.attr.value in self._buffers()

    def _read_variable(self, original: cst.Attribute, updated: cst.Attribute) -> cst.BaseExpression:
        new = cst.Subscript(updated.with_changes(lpar=[], rpar=[]), [cst.SubscriptElement(cst.Index(cst.Ellipsis()))],
                            lpar=updated.lpar, rpar=updated.rpar)
        if self.scope.in_module_method and id(original) in self._buffer_tests:
            self.report("PT005", original, f"the truth of {code_of(original)} (an array) is read in Python: this runs "
                                           "eagerly, and fails under jax.jit (a traced value has no truth); "
                                           "branch with jnp.where or jax.lax.cond to jit it")
        self.record("module-buffer-truth", original, new)
        return new

    def _note_buffer_write(self, value: cst.BaseExpression) -> None:
        """`self.initted.data.copy_(v)`, `self.initted.fill_(True)`, `self.count.zero_()` as a statement."""
        if not m.matches(value, m.Call(func=m.Attribute(attr=m.Name("copy_") | m.Name("fill_") | m.Name("zero_")))):
            return
        target = value.func.value
        if m.matches(target, m.Attribute(attr=m.Name("data"))):
            target = target.value
        if _is_self_attribute(target) and target.attr.value in self._buffers() \
                and len(value.args) == (0 if value.func.attr.value == "zero_" else 1) \
                and not any(a.keyword or a.star for a in value.args):
            self._buffer_writes[id(value)] = target.attr.value

    def _write_buffer(self, original: cst.Expr, updated: cst.Expr) -> cst.BaseSmallStatement:
        """-> `self.initted[...] = v` (an nnx Variable's item assignment broadcasts and casts as copy_ does)."""
        name = self._buffer_writes.pop(id(original.value))
        call = updated.value
        value = call.args[0].value if call.args else cst.Integer("0")
        target = cst.Subscript(cst.Attribute(cst.Name("self"), cst.Name(name)),
                               [cst.SubscriptElement(cst.Index(cst.Ellipsis()))])
        new = cst.Assign([cst.AssignTarget(target)], value)
        self.record("module-buffer-write", original, new)
        return new

    def _initialises(self, loop: cst.For) -> bool:
        methods = self.ctx.init_methods.get(self.scope.module_class, set()) if self.scope.module_class else set()
        return any(is_init_statement(s, self.ctx, methods) for s in find_all(loop.body, cst.SimpleStatementLine))

    def after_visit_Call(self, node: cst.Call) -> None:
        """Marks `self.training` in arguments a rule consumes (F.dropout's training=...)."""
        qualified = self.ctx.qualified_name(node.func)
        rule = self.ctx.rules.lookup(qualified) if qualified else None
        if rule is None:
            return
        for arg in node.args:
            name = arg.keyword.value if arg.keyword else None
            if name == "training" or name in rule.drop or name in rule.warn:
                self._understood_training |= {id(n) for n in m.findall(arg, SELF_TRAINING)}

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        name = original_node.name.value
        if name in self.ctx.module_classes:
            bases = [self._convert_base(o, u, name) for o, u in zip(original_node.bases, updated_node.bases)]
            updated_node = updated_node.with_changes(bases=bases)
            if name in self._training_classes:
                updated_node = self._add_training_mode(name, updated_node)
            updated_node = self._add_constructor_taking_rngs(original_node, updated_node)
            updated_node = self._inject_init_statements(name, updated_node)
        return updated_node

    def leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef) -> cst.FunctionDef:
        scope = self.scope  # (before the scope leaves the function)
        cls, method = scope.module_class, scope.method
        if not scope.class_stack and len(scope.function_stack) == 1 \
                and original_node.name.value in self.ctx.rngs_functions:  # a layer factory
            return self._add_rngs_param(original_node, updated_node)
        if cls is None or len(scope.function_stack) != 1:
            return updated_node
        if (method == "__init__" and cls not in self.ctx.rngs_free_classes) \
                or method in self.ctx.methods_needing_rngs.get(cls, ()):
            updated_node = self._add_rngs_param(original_node, updated_node)
        if method == "forward":
            updated_node = updated_node.with_changes(name=cst.Name("__call__"))
            self.record("module-forward", original_node.name, updated_node.name)
        return updated_node

    def leave_SimpleStatementLine(self, original_node, updated_node):
        """super().__init__(): dropped under nn.Module (an nnx.Module needs no base constructor call), kept
        under nn.Sequential (it takes the layers), and given rngs under a module class of this code base
        or a torch layer (its constructor builds the layers or parameters the subclass inherits)."""
        if self.scope.module_class and len(updated_node.body) == 1:
            statement = updated_node.body[0]
            if isinstance(statement, cst.Expr) and m.matches(statement.value, SUPER_INIT):
                call = statement.value
                if self.scope.module_class in self.ctx.layer_inheriting_classes:
                    if any(a.keyword and a.keyword.value == "rngs" for a in call.args) \
                            or self.scope.module_class in self.ctx.rngs_free_bases:
                        return updated_node  # (a base that takes no rngs: porter/convert/rngs_free.py)
                    new = call.with_changes(args=[*call.args, keyword_arg("rngs", cst.Name("rngs"))])
                    self.record("module-super", original_node.body[0], new)
                    return updated_node.with_changes(body=[statement.with_changes(value=new)])
                if not (self.scope.module_class in self.ctx.sequential_classes and call.args
                        or self.scope.module_class in self.ctx.list_classes):
                    self.record("module-super", original_node, cst.Pass())
                    return cst.RemoveFromParent()
        return updated_node

    def leave_IndentedBlock(self, original_node, updated_node):
        if not updated_node.body:  # the block held only super().__init__()
            return updated_node.with_changes(body=[cst.SimpleStatementLine([cst.Pass()])])
        return updated_node

    def leave_Expr(self, original_node: cst.Expr, updated_node: cst.Expr):
        if id(original_node.value) in self._buffer_writes:
            return self._write_buffer(original_node, updated_node)
        if self.scope.module_class and m.matches(updated_node.value, REGISTER_BUFFER):
            return self._register_buffer(original_node, updated_node)
        if self.scope.module_class and m.matches(updated_node.value, ADD_MODULE) \
                and (self.scope.module_class not in self.ctx.sequential_classes | self._containers
                     or self.scope.module_class in self.ctx.named_containers):  # TorchSequential keeps the order
            new = updated_node.with_changes(value=updated_node.value.with_changes(
                func=cst.Name("setattr"), args=[cst.Arg(cst.Name("self")), *updated_node.value.args]))
            self.record("module-add-module", original_node, new)
            return new
        if self.scope.module_class and m.matches(updated_node.value, ADD_MODULE_OF_ATTRIBUTE) \
                and updated_node.value.func.value.attr.value in self._named_sequence_attributes(self.scope.module_class):
            call = updated_node.value  # self.features.add_module(name, layer): densenet
            new = updated_node.with_changes(value=call.with_changes(
                func=cst.Name("setattr"), args=[cst.Arg(call.func.value), *call.args]))
            self.record("module-add-module", original_node, new)
            return new
        return updated_node

    def _named_sequence_attributes(self, name: str) -> set[str]:
        """`self.features = nn.Sequential(OrderedDict(...))`: a TorchSequential (the emitted sequential()), which
        takes more named layers as attributes, in order."""
        found = set()
        for assign in find_all(self._classes[name].body, cst.Assign) if name in self._classes else ():
            value = assign.value
            if type(value) is cst.Call and len(value.args) == 1 and not value.args[0].keyword \
                    and not value.args[0].star and self.ctx.qualified_name(value.func) in SEQUENTIAL_BASES \
                    and (type(value.args[0].value) is cst.Dict or type(value.args[0].value) is cst.Call
                         and code_of(value.args[0].value.func).rsplit(".", 1)[-1] in ("OrderedDict", "dict")):
                found |= {t.target.attr.value for t in assign.targets
                          if m.matches(t.target, m.Attribute(value=m.Name("self")))}
        return found

    def leave_Attribute(self, original_node: cst.Attribute, updated_node: cst.Attribute):
        if id(original_node) in self.ctx.sequence_reads:  # `enumerate(self.features)`, an nnx.Sequential
            return self._layers_of(original_node, updated_node)
        if id(original_node) in self.ctx.inherited_sequence_reads:  # what a base class built: maybe one
            self.ctx.need_helper("layers_of")
            new = cst.Call(cst.Name("layers_of"), [cst.Arg(updated_node)])
            self.record("module-sequence", original_node, new)
            return Final(new)
        if id(original_node) in self._buffer_tests or id(original_node) in self._variable_reads:
            return Final(self._read_variable(original_node, updated_node))
        parameter = self._layer_parameter(original_node) or sublayer_parameter(self.scope, original_node)
        if parameter is not None:
            return Final(self._read_layer_parameter(original_node, *parameter))
        transposed = self._layer_parameter(original_node.value) if original_node.attr.value == "T" else None
        if transposed is not None and transposed[2].layout == "matrix_transpose":  # `self.fc.weight.T`: the kernel
            new = expr(f"{code_of(original_node.value.value)}.{transposed[2].flax_name}[...]")
            self.record("layer-parameter", original_node, new)
            return Final(new)
        if self.scope.module_class and original_node.attr.value == "forward" \
                and m.matches(original_node, FORWARD_OF_SELF):  # forward is __call__ now
            new = updated_node.with_changes(attr=cst.Name("__call__"))
            self.record("module-forward", original_node, new)
            return Final(new)
        if self.scope.module_class and _is_self_training(original_node) \
                and id(original_node) not in self._understood_training | self._training_stores:
            return Final(self._training_mode(original_node))
        return updated_node

    def leave_Assign(self, original_node: cst.Assign, updated_node: cst.Assign):
        """self.buf = expr outside __init__ updates the variable in place (nnx state); in __init__, an
        attribute set to None and later to a layer (`self.proj = None; if ...: self.proj = Conv(...)`)
        starts as nnx.data(None): nnx treats an attribute first set to None as static and refuses the layer.
        A layer's torch parameter assigned (`self.head.weight = self.embed.weight`, tying) stays as it was."""
        for target in original_node.targets:
            if self.scope.module_class and _is_self_training(target.target):
                self.report("PT006", target.target, "assigning self.training is not converted: switch modes with "
                                                    "model.train() / model.eval() (they set self.deterministic)")
                return original_node
            parameter = self._layer_parameter(target.target) or sublayer_parameter(self.scope, target.target)
            replaced = parameter and replaced_parameter(self.ctx, original_node, updated_node, parameter)
            if replaced:  # `self.transformer.wpe.weight = nn.Parameter(...)`: porter/convert/replaced_variables.py
                self.record("layer-parameter", original_node, replaced)
                return replaced
            if self._layer_parameter(target.target) or self._sublayer_parameter(target.target):
                self.report("PT006", target.target,
                            f"assigning {code_of(target.target)} (a converted layer's parameter: its flax variable "
                            "has another name and layout) is not converted. To tie an output head to an embedding, "
                            "call the embedding's attend (`self.embed.attend(x)`, nnx.Embed) instead of the head")
                return original_node
        if self.scope.method == "__init__" and m.matches(original_node, SELF_ASSIGN) \
                and m.matches(original_node.value, m.Name("None")) \
                and original_node.targets[0].target.attr.value in self.ctx.none_first_attributes.get(self.scope.module_class, ()):
            new = updated_node.with_changes(value=expr("nnx.data(None)"))
            self.record("module-data-attribute", original_node, new)
            return new
        update = None if self.scope.method == "__init__" else buffer_update(self.ctx, original_node, updated_node)
        if update is not None:  # `block.attn.bias = block.attn.bias[...]`: porter/convert/replaced_variables.py
            self.record("module-state-update", original_node, update)
            return update
        if not self.scope.module_class or self.scope.method in (None, "__init__") or len(updated_node.targets) != 1:
            return updated_node
        target = updated_node.targets[0].target
        if _is_self_attribute(target) and target.attr.value in self._buffers() \
                and not replaces_own_parameter(self.ctx, original_node):  # (a new Param replaces the Variable)
            new = updated_node.with_changes(targets=[cst.AssignTarget(cst.Subscript(
                target, [cst.SubscriptElement(cst.Index(cst.Ellipsis()))]))])
            self.record("module-state-update", original_node, new)
            return new
        return updated_node

    # --------------------------------------------------------------------
    def _note_training_context(self, node: cst.CSTNode) -> None:
        """Where `not self.deterministic` can stand for self.training as it is, and `not self.training`."""
        if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Not) \
                and _is_self_training(node.expression):
            self._not_training.add(id(node))
        if isinstance(node, cst.Assign):  # `self.training = ...`: reported by leave_Assign, not read
            self._training_stores |= {id(t.target) for t in node.targets if _is_self_training(t.target)}
        for child in _TEST_POSITIONS.get(type(node), ()):
            value = getattr(node, child)
            if _is_self_training(value) and not value.lpar:
                self._bare_training.add(id(value))

    def _training_mode(self, original: cst.Attribute) -> cst.BaseExpression:
        """self.training -> not self.deterministic, an attribute the class gets (False: torch modules start in
        training mode), which model.eval() / model.train() set on every module that has one, as torch's do."""
        self._training_classes.add(self.scope.module_class)
        new = expr("not self.deterministic")
        if id(original) not in self._bare_training:
            new = new.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
        self.record("module-training", original, new)
        return new

    def _add_constructor_taking_rngs(self, original: cst.ClassDef, node: cst.ClassDef) -> cst.ClassDef:
        """A class right under nn.Module without a constructor gets one taking rngs: every call of a converted
        module class passes rngs (`self.act = Act(rngs=rngs)`, `act_layer(rngs=rngs)`)."""
        if any(isinstance(item, cst.FunctionDef) and item.name.value == "__init__" for item in node.body.body) \
                or original.name.value in self.ctx.rngs_free_classes or not original.bases \
                or not all(self.ctx.qualified_name(base.value) in MODULE_BASES for base in original.bases):
            return node
        body = list(node.body.body)
        at = next((i for i, item in enumerate(body) if isinstance(item, cst.FunctionDef)), len(body))
        constructor = cst.parse_statement(RNGS_ONLY_CONSTRUCTOR)
        if at < len(body):  # where the first method was, with its blank lines; the method one line below
            constructor = constructor.with_changes(leading_lines=body[at].leading_lines)
            body[at] = body[at].with_changes(leading_lines=[cst.EmptyLine()])
        else:
            constructor = constructor.with_changes(leading_lines=[cst.EmptyLine()])
        body.insert(at, constructor)
        self.record("module-rngs", original.name, constructor)
        return node.with_changes(body=node.body.with_changes(body=body))

    def _add_training_mode(self, name: str, node: cst.ClassDef) -> cst.ClassDef:
        """`self.deterministic = False` in the constructor, or as a class attribute in a class without one."""
        if any(isinstance(item, cst.FunctionDef) and item.name.value == "__init__" for item in node.body.body):
            self.ctx.injected_init_statements.setdefault(name, []).append(f"self.{TRAINING_MODE_ATTRIBUTE}")
            return node
        body = list(node.body.body)
        docstring = 1 if body and m.matches(body[0], m.SimpleStatementLine([m.Expr(m.SimpleString())])) else 0
        body.insert(docstring, cst.parse_statement(TRAINING_MODE_ATTRIBUTE + "\n"))
        return node.with_changes(body=node.body.with_changes(body=body))

    def _layer_parameter(self, node: cst.BaseExpression):
        """(layer qualified name, torch parameter, its WeightMap) for `self.<layer>.<parameter>` of a layer this
        class built with a rule that maps that parameter; else None."""
        if not self.scope.module_class or not isinstance(node, cst.Attribute) or node.attr.value not in LAYER_PARAMETER_NAMES \
                or not m.matches(node, LAYER_PARAMETER):
            return None
        qualified = self.ctx.layer_attributes.get(self.scope.module_class, {}).get(node.value.attr.value)
        rule = self.ctx.rules.lookup(qualified) if qualified and qualified != "buffer" else None
        if rule is None or rule.kind != "layer" or node.attr.value not in rule.layout:
            return None
        return qualified, node.attr.value, rule.layout[node.attr.value]

    def _sublayer_parameter(self, node: cst.BaseExpression) -> bool:
        """`self.transformer.wte.weight`: a parameter of a layer somewhere below this class (nanoGPT ties
        its embedding so), whatever the layer is."""
        if not self.scope.module_class or not isinstance(node, cst.Attribute) or node.attr.value not in LAYER_PARAMETER_NAMES:
            return False
        inner = node.value
        while isinstance(inner, cst.Attribute):
            inner = inner.value
        return m.matches(inner, m.Name("self")) and isinstance(node.value, cst.Attribute)

    def _read_layer_parameter(self, original: cst.Attribute, qualified: str, parameter: str, weight_map):
        spatial = int(qualified[-2]) if qualified[-2:-1].isdigit() else 2  # Conv1d/2d/3d
        new = expr(LAYOUTS[weight_map.layout].torch_code(f"{code_of(original.value)}.{weight_map.flax_name}", spatial))
        self.record("layer-parameter", original, new)
        return new

    def _add_rngs_param(self, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.FunctionDef:
        new = updated.with_changes(params=_with_rngs(updated))
        self.record("module-rngs", original.params, new.params)
        return new

    def _convert_base(self, original: cst.Arg, updated: cst.Arg, name: str) -> cst.Arg:
        qualified = self.ctx.qualified_name(original.value)
        if qualified in SEQUENTIAL_BASES and name in self.ctx.named_containers:
            self.ctx.need_helper("TorchSequential")
            new = updated.with_changes(value=cst.Name("TorchSequential"))
            self.record("module-base", original, new)
            return new
        if qualified in MODULE_BASES or qualified in SEQUENTIAL_BASES:
            new = updated.with_changes(value=rule_expr("nnx.Module" if qualified in MODULE_BASES else "nnx.Sequential"))
            self.record("module-base", original, new)
            return new
        if qualified in MODULE_LIST_BASES:
            new = updated.with_changes(value=rule_expr("nnx.List"))
            self.record("module-base", original, new)
            return new
        if qualified in TORCH_LAYER_BASES:
            self.ctx.need_helper(TORCH_LAYER_BASES[qualified])
            new = updated.with_changes(value=cst.Name(TORCH_LAYER_BASES[qualified]))
            self.record("module-base", original, new)
            return new
        return updated

    def _register_buffer(self, original: cst.Expr, updated: cst.Expr):
        call = updated.value
        args = {a.keyword.value: a.value for a in call.args if a.keyword}
        positional = [a.value for a in call.args if not a.keyword]
        name = positional[0] if positional else args.get("name")
        value = positional[1] if len(positional) > 1 else args.get("tensor")
        persistent = positional[2] if len(positional) > 2 else args.get("persistent")
        if not isinstance(name, cst.SimpleString) or value is None:
            self.report("PT006", original, "register_buffer needs a literal name and a tensor to be converted")
            return updated
        attribute = name.evaluated_value
        if code_of(value) == "None":
            wrapped = value
        else:
            wrapped_args = [cst.Arg(value)]
            if persistent is not None and code_of(persistent) != "True":
                wrapped_args.append(keyword_arg("persistent", persistent))
            self.ctx.need_helper("Buffer")
            wrapped = cst.Call(cst.Name("Buffer"), wrapped_args)
        self.ctx.layer_attributes.setdefault(self.scope.module_class, {})[attribute] = "buffer"
        new = cst.Assign([cst.AssignTarget(cst.Attribute(cst.Name("self"), cst.Name(attribute)))], wrapped)
        self.record("module-buffer", original, new)
        return new

    def _buffers(self) -> set[str]:
        attributes = self.ctx.layer_attributes.get(self.scope.module_class, {})
        return {n for n, kind in attributes.items() if kind in ("buffer", "torch.nn.Parameter")}

    def _inject_init_statements(self, name: str, node: cst.ClassDef) -> cst.ClassDef:
        statements = self.ctx.injected_init_statements.get(name)
        if not statements:
            return node
        body = list(node.body.body)
        for i, item in enumerate(body):
            if isinstance(item, cst.FunctionDef) and item.name.value == "__init__":
                extra = [cst.parse_statement(s) for s in statements]
                block = item.body.visit(_BeforeReturns(extra))  # an early return skips the end
                # `del rngs` (the constructor porter added) goes where an injected statement keeps rngs
                uses_rngs = any(re.search(r"\brngs\b", s) for s in statements)
                kept = [s for s in block.body if not m.matches(s, m.SimpleStatementLine([m.Pass()]))
                        and not (uses_rngs and m.matches(s, m.SimpleStatementLine([m.Del(m.Name("rngs"))])))]
                body[i] = item.with_changes(body=block.with_changes(body=[*kept, *extra]))
                return node.with_changes(body=node.body.with_changes(body=body))
        self.ctx.report("PT006", 0, 0, f"class {name} needs {statements} in an __init__ it does not define")
        return node


class _BeforeReturns(cst.CSTTransformer):
    """Puts `extra` before each return of a constructor's body (`if not affine: return`), not of
    functions defined in it."""

    def __init__(self, extra: list[cst.BaseStatement]) -> None:
        super().__init__()
        self.extra = extra

    def visit_FunctionDef(self, node) -> bool:
        return False

    def visit_ClassDef(self, node) -> bool:
        return False

    def leave_IndentedBlock(self, original_node, updated_node):
        body = []
        for statement in updated_node.body:
            if _returns(statement):
                body.extend(self.extra)
            body.append(statement)
        return updated_node.with_changes(body=body)

    def leave_SimpleStatementSuite(self, original_node, updated_node):  # `if not affine: return`
        if not any(isinstance(s, cst.Return) for s in updated_node.body):
            return updated_node
        return cst.IndentedBlock([*self.extra, cst.SimpleStatementLine(updated_node.body)])


def _returns(statement: cst.BaseStatement) -> bool:
    return isinstance(statement, cst.SimpleStatementLine) and any(isinstance(s, cst.Return) for s in statement.body)


def _with_rngs(function: cst.FunctionDef) -> cst.Parameters:
    params = function.params
    if any(p.name.value == "rngs" for p in [*params.params, *params.kwonly_params]):
        return params
    return with_keyword_param(function, RNGS_PARAM)
