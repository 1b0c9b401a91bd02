"""Calls, tensor methods and constants, converted with the rules in rules/ (the calls concern: passes/concerns.py)."""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from porter.convert import apply, data_side, device_dicts, devices, inplace, keyword_helpers, layer_functions, no_ops, registries
from porter.convert.layer_values import value_message
from porter.convert.apply import Site, apply_rule, torch_would_refuse
from porter.convert.passes.analyze import (IN_PLACE_INIT_DRAWS, LAYER_PARAMETER_NAMES, MODULE_BASES, MODULE_LIST_BASES, SEQUENTIAL_BASES, SEQUENTIAL_TARGETS, TORCH_LAYER_BASES, assigned_self_attributes, calls_layer_constructor, layer_constructor_attributes,
                                           layer_constructor_names, layer_value_rule, torch_layer_holders,
                                           dict_keys_bound, dotted)
from porter.convert.context import code_of
from porter.convert.precedence import without_added_parentheses
from porter.convert.transforms import atom, keyword_arg, Unsupported, expr, rule_expr

_STRINGS = (cst.SimpleString, cst.FormattedString, cst.ConcatenatedString)
# attributes that hold tensors under a module (`self.fc.weight.norm()` is a tensor's method)
_TENSOR_ATTRIBUTES = LAYER_PARAMETER_NAMES | {"data", "grad", "T", "mT"}
# node type -> the field holding an expression that stands alone there (a lambda needs no parentheses)
_WHOLE_VALUE = {cst.Arg: "value", cst.Assign: "value", cst.AnnAssign: "value", cst.Param: "default",
                cst.Element: "value", cst.DictElement: "value", cst.Return: "value"}
# torch APIs the converted code keeps on purpose, arguments and all
KEPT_TORCH = ("torch.utils.data.", "torch.manual_seed", "torch.random.manual_seed")
# torch.utils.data calls that draw from torch's global generator unless given a generator of their own
# (qualified name, index of `shuffle` when only shuffle=True draws)
GLOBAL_DRAWING_DATA = {"torch.utils.data.DataLoader": 2, "torch.utils.data.dataloader.DataLoader": 2,
                       "torch.utils.data.RandomSampler": None, "torch.utils.data.SubsetRandomSampler": None,
                       "torch.utils.data.WeightedRandomSampler": None, "torch.utils.data.random_split": None}


# `torch.empty(shape).normal_(...)`: a new tensor filled in place, a parameter's initial value
NEW_TENSORS = ("torch.empty", "torch.zeros", "torch.ones")
NEW_TENSOR_INITIALISERS = ("normal_", "uniform_")  # fill_ and zero_ are any fresh value's (convert/inplace.py)
# their arguments, by position: torch.Tensor's methods and torch.nn.init's functions (after the tensor)
_DRAW_ARGUMENTS = {"normal_": ("mean", "std"), "uniform_": ("from", "to")}
VARIABLE_KINDS = ("buffer", "torch.nn.Parameter", "torch.nn.parameter.Parameter")  # analysis' layer_attributes kinds
_INIT_DRAW_ARGUMENTS = {"normal_": ("mean", "std"), "uniform_": ("a", "b")}


class Calls:
    """Innermost in the pipeline's list: its hooks run right around the scope's."""

    # `device = x.device` bindings dropped (porter/convert/devices.py); `t.uniform_(-s, s)` in an init helper
    TRIGGER_WORDS = frozenset({"device"}) | frozenset(NEW_TENSOR_INITIALISERS)

    def __init__(self, scope) -> None:
        self.scope = scope
        ctx = self.ctx = scope.ctx
        self.report, self.record, self.position = scope.report, scope.record, scope.position
        self.mentions, self.mentions_within = scope.mentions, scope.mentions_within
        self.class_stack, self.function_stack = scope.class_stack, scope.function_stack  # (the same lists)
        self.statement_calls = scope.statement_calls
        self._device_reads: list[devices.DeviceReads] = []  # per enclosing function
        self._call_funcs: set[int] = set()  # ids of original nodes in call position
        self._inner: set[int] = set()  # ids of attribute chains inside a longer chain
        self._inplace_rebinds: dict[int, cst.Name] = {}  # in-place method calls converted: id -> the name to rebind
        self._tensor_names: list[inplace.TensorNames] = []  # per enclosing function
        self._decorators: set[int] = set()  # ids of decorator expressions a decorator rule removes
        self._class_bases: set[int] = set()  # ids of class base expressions
        self._whole_values: set[int] = set()  # ids of expressions that are a whole argument, value or default
        # id of a torch layer class converted as a value -> (its rule, qualified name, the arguments it takes)
        self._constructor_arguments: dict[int, tuple] = {}
        self._global_constructors: set[int] = set()  # ids of the parts of `Linear = partial(nn.Linear, ...)` values
        # layer constructors held by names (porter/convert/passes/analyze.py): per class, per function
        self._constructor_attributes: list[set[str]] = []
        self._constructor_names: list[set[str]] = []
        self._constructor_words: set[str] = set()
        # per function: the function, and its names that may hold a torch layer class -> those classes
        self._torch_layer_holders: list[tuple[cst.FunctionDef, set[str], dict[str, set[str]] | None]] = []
        self._annotation_depth = 0  # > 0 inside a type annotation
        self._compared: set[int] = set()  # ids of comparison operands (`fn is F.relu`: a lambda would never match)
        self._type_tests: set[int] = set()  # ids of names and attributes in isinstance/issubclass class arguments
        self._data = ctx.data_side  # the statements left as torch, and where their tensors meet converted code
        # names called where the callee may be a module class (registries.py), known once the analysis is done
        self._unknown_callees = frozenset(ctx.unknown_constructions.values())
        self._class_bodies: set[int] = set()  # ids of class bodies (`w = w` there copies an outer name: kept)

    # in-place updates and (values, indices) pairs: porter/convert/inplace.py. Hooks for every node, so
    # the other concerns' own leave_Assign/leave_Expr stay as they are.
    # (type(...) is: libcst's node classes have no subclasses, and isinstance on them goes through
    # ABCMeta, which these hooks, run for every node visited, made a tenth of the conversion)
    def visit_any(self, node: cst.CSTNode) -> None:
        kind = type(node)
        if kind is cst.FunctionDef:
            method = self.scope.module_class is not None  # (this function is not on the scope's stack yet)
            self._tensor_names.append(inplace.analyse_function(node, self.ctx, method=method))
            attributes = self._constructor_attributes[-1] if self._constructor_attributes else set()
            outer = self._constructor_names[-1] if self._constructor_names else self.ctx.constructor_globals
            names = layer_constructor_names(node, self.ctx, attributes, outer)
            self._constructor_names.append(names)
            self._constructor_words |= names
            self._torch_layer_holders.append((node, names, None))  # computed at its first `**` splat: a walk of
            # every function body cost about 5% of a conversion
        elif kind is cst.ClassDef:
            self._class_bases.update(id(base.value) for base in node.bases)
            self._class_bodies.add(id(node.body))
            attributes = layer_constructor_attributes(node, self.ctx) \
                if node.name.value in self.ctx.module_classes else set()
            self._constructor_attributes.append(attributes)
            self._constructor_words |= attributes
        elif kind is cst.Annotation:
            self._annotation_depth += 1
        elif kind is cst.Expr:
            self.statement_calls.add(id(node.value))
        elif kind is cst.Comparison:
            self._compared.update(id(operand) for operand in (node.left, *(c.comparator for c in node.comparisons)))
        elif kind in _WHOLE_VALUE:  # a lambda put here needs no parentheses
            self._whole_values.add(id(getattr(node, _WHOLE_VALUE[kind])))
            if kind is cst.Assign and not self.function_stack and not self.class_stack \
                    and m.matches(node.targets[0].target, m.Name()) \
                    and node.targets[0].target.value in self.ctx.constructor_globals:
                self._global_constructors.update(id(n) for n in m.findall(node.value, m.Name() | m.Attribute()))
        if kind is cst.Param:
            self._inner.add(id(node.name))  # `def f(tensor)` binds a name: no use of torch.tensor

    def after_visit_any(self, node: cst.CSTNode) -> bool:
        kind = type(node)
        if kind is cst.FunctionDef:  # after the scope's visit: self.scope.method names this function
            self._device_reads.append(self._analyse_devices(node))
        elif self._data is not None and (id(node) in self._data.statements if kind in data_side.KEPT_NODES
                                         else kind is cst.Arg and id(node) in self._data.arguments):
            return False  # it feeds torch's data loading: left as torch (porter/convert/data_side.py)
        return True

    def _hand_back(self, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.FunctionDef:
        """A method drawing into its arguments in place (ConversionContext.hand_back_methods) returns them."""
        found = self.ctx.hand_back_methods.get((self.scope.module_class, original.name.value))
        if found is None or self.function_stack:
            return updated
        params, filled = found
        values = [p for p in params if p in filled]
        returned = cst.parse_statement(f"return {', '.join(values)}{',' if len(values) == 1 else ''}\n")
        self.record("hand-back", original, returned)
        return updated.with_changes(body=updated.body.with_changes(body=[*updated.body.body, returned]))

    def _hand_back_call(self, call: cst.BaseExpression) -> tuple[list[str], set[str]] | None:
        if not self.scope.module_class or not m.matches(call, m.Call(func=m.Attribute(value=m.Name("self")))):
            return None
        return self.ctx.hand_back_methods.get((self.scope.module_class, call.func.attr.value))

    def _assign_handed_back(self, original: cst.Expr, updated: cst.Expr) -> cst.BaseSmallStatement:
        """`self.init_(w, b, c=c)` as a statement: `w, b = self.init_(w, b, c=c, rngs=rngs)`."""
        params, filled = self._hand_back_call(original.value)
        given = {a.keyword.value if a.keyword else (params[i] if i < len(params) else None): a.value
                 for i, a in enumerate(original.value.args) if not a.star}
        names = [given.get(p) for p in params if p in filled]
        if any(a.star for a in original.value.args) or not all(isinstance(n, cst.Name) for n in names):
            self.report("PT006", original.value, f"{code_of(original.value.func)}(...) fills its arguments in place in "
                                                 "torch; converted, it returns the new values: only a call given names "
                                                 "for them is rewritten to assign them; left unchanged")
            return updated
        target = ", ".join(n.value for n in names) + ("," if len(names) == 1 else "")
        new = cst.Assign([cst.AssignTarget(cst.parse_expression(target))], updated.value)
        self.record("hand-back", original, new)
        return new

    def _analyse_devices(self, node: cst.FunctionDef) -> devices.DeviceReads:
        if not self.mentions("device"):
            return devices.DeviceReads()
        variables, arrays = self._array_attributes()
        reads = devices.analyse_function(node, self.ctx, variables | arrays, self.mentions_within)
        if self.scope.in_module_method:  # a constructor runs eagerly: arrays have devices
            for read in reads.kept:
                self.report("PT004", read, f"{code_of(read)}: a traced array (under jax.jit or grad) has no "
                                           "device, and JAX places arrays itself; use it only as device= of a "
                                           "new array (dropped), or drop it; left unchanged")
        return reads

    def after_leave_any(self, original_node, updated_node):
        kind = type(original_node)
        if kind is cst.FunctionDef:
            self._tensor_names.pop()
            self._constructor_names.pop()
            self._torch_layer_holders.pop()
            self._device_reads.pop()
            updated_node = self._hand_back(original_node, updated_node)
        elif kind is cst.ClassDef:
            self._constructor_attributes.pop()
        elif kind is cst.Annotation:
            self._annotation_depth -= 1
        elif kind is cst.Expr and isinstance(updated_node, cst.Expr) and self._hand_back_call(original_node.value):
            updated_node = self._assign_handed_back(original_node, updated_node)
        elif kind is cst.Expr and isinstance(updated_node, cst.Expr) \
                and id(original_node.value) in self._inplace_rebinds:
            updated_node = inplace.rebind(updated_node, self._inplace_rebinds.pop(id(original_node.value)))
        elif kind is cst.Assign and self._device_reads and id(original_node) in self._device_reads[-1].bindings \
                and type(updated_node) is kind:
            dropped = self._device_reads[-1].bindings[id(original_node)]
            updated_node = devices.drop_bindings(updated_node, dropped)
            self.record("device-binding", original_node, updated_node if isinstance(updated_node, cst.Assign)
                        else cst.Pass())
        elif (kind is cst.Assign or kind is cst.AugAssign) and type(updated_node) is kind:
            result = inplace.setitem(original_node, updated_node,
                                     self._tensor_names[-1] if self._tensor_names else None, self.ctx,
                                     *self._array_attributes())
            if result is not None:
                updated_node, warnings = result
                for warning in warnings:
                    self.report("PT005", original_node, f"torch.Tensor.__setitem__: {warning}")
                rule = self.ctx.rules.method("__setitem__")
                self.record(rule.id if rule else "setitem", original_node, updated_node)
        elif kind is cst.Subscript or kind is cst.Attribute:
            updated_node = inplace.pick_item(updated_node)
        elif (kind is cst.IndentedBlock and id(original_node) not in self._class_bodies) or kind is cst.Module:
            updated_node = no_ops.drop_self_assignments(original_node, updated_node, self._drop_no_op)
        if (kind is cst.Name or kind is cst.Subscript or kind is cst.Call) and self._data is not None \
                and id(original_node) in self._data.boundaries:
            updated_node = data_side.to_jax(updated_node)  # a torch tensor meets the converted code
            self.record("data-boundary", original_node, updated_node)
        return updated_node

    def _drop_no_op(self, line: cst.SimpleStatementLine, rest: cst.CSTNode) -> bool:
        """A line the rewrite left with a self-assignment (`x = x` from `x = x.to(device)`): logged, and
        dropped (no_ops.py); kept where the original line is unknown."""
        built = self.ctx.rewritten_statements.get(id(line))
        if built is None or built[0] is not line:
            return False
        self.record("no-op-assignment", built[1], rest)
        return True

    def _array_attributes(self) -> tuple[frozenset[str], frozenset[str]]:
        """The module's buffers and parameters (nnx.Variables, which take item assignment themselves), and
        the attributes its constructor sets to a new tensor (`self.cache = torch.zeros(...)`: arrays)."""
        attributes = self.ctx.layer_attributes.get(self.scope.module_class, {}) if self.scope.module_class else {}
        variables = frozenset(name for name, kind in attributes.items()
                              if kind == "buffer" or kind.endswith("Parameter"))
        arrays = frozenset(name for name, kind in attributes.items()
                           if kind in apply.FRESH_FUNCTIONS)
        return variables, arrays

    def trigger_words(self):
        """Plus the current function's tensor names: `x[i] = v` needs no torch name to be converted."""
        words = self._constructor_words | self.ctx.constructor_fields \
            | self.ctx.constructor_globals | (self._data.words if self._data is not None else frozenset()) \
            | self._unknown_callees
        if not self._tensor_names:
            return words
        return words | self._tensor_names[-1].tensors | self._tensor_names[-1].maybe

    def trigger_state(self):
        return self._tensor_names[-1] if self._tensor_names else None, \
            len(self._constructor_words)

    # imports are the finalize pass's business
    def visit_Import(self, node: cst.Import) -> bool:
        return False

    def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
        return False

    def visit_Call(self, node: cst.Call) -> None:
        self._call_funcs.add(id(node.func))
        if isinstance(node.func, cst.Name) and node.func.value in ("isinstance", "issubclass") and len(node.args) == 2:
            # isinstance(m, nn.Conv2d) tests for the class itself: no constructor function stands in for it
            self._type_tests.update(id(n) for n in m.findall(node.args[1].value, m.Name() | m.Attribute()))
        if self._is_kept(node):
            self.scope.kept_depth += 1

    def _is_kept(self, call: cst.Call) -> bool:
        return (self.ctx.qualified_name(call.func) or "").startswith(KEPT_TORCH)

    def _draws_from_the_global_generator(self, call: cst.Call) -> bool:
        """A shuffling DataLoader, a random sampler or random_split without generator=."""
        name = self.ctx.qualified_name(call.func) or ""
        if name not in GLOBAL_DRAWING_DATA or any(a.keyword and a.keyword.value == "generator" for a in call.args):
            return False
        shuffle_at = GLOBAL_DRAWING_DATA[name]
        if shuffle_at is None:
            return True
        keyword = next((a for a in call.args if a.keyword and a.keyword.value in ("shuffle", "sampler",
                                                                                   "batch_sampler")), None)
        shuffle = keyword.value if keyword is not None and keyword.keyword.value == "shuffle" else \
            call.args[shuffle_at].value if len(call.args) > shuffle_at and not call.args[shuffle_at].keyword else None
        return shuffle is not None and not (isinstance(shuffle, cst.Name) and shuffle.value in ("False", "None"))

    def visit_Attribute(self, node: cst.Attribute) -> None:
        self._inner.add(id(node.value))
        self._inner.add(id(node.attr))  # the nn of torch.nn.Sequential is no use of an imported `nn`

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.BaseExpression:
        if self._is_kept(original_node):
            self.scope.kept_depth -= 1
            if self._draws_from_the_global_generator(original_node):
                self.report("PT011", original_node, "no generator= of its own: the order comes from torch's global "
                                                    "generator, which the original also draws from to initialise its "
                                                    "layers and the converted script does not, so with a model built "
                                                    "before the loop the batches come in another order; pass "
                                                    "generator=torch.Generator().manual_seed(s) for the same order in "
                                                    "both (porter check --script aligns the two runs by itself)")
            elif not any(d.code == "PT011" for d in self.ctx.diagnostics):
                self.report("PT011", original_node, data_side.KEPT)
            return updated_node
        if self.scope.kept_depth:
            return updated_node
        initialised = self._initialised_new_tensor(original_node, updated_node)
        if initialised is None:
            initialised = self._drawn_in_place(original_node, updated_node)
        if initialised is not None:
            return initialised
        bound = self._partial_binding_fixed_arguments(original_node, updated_node)
        if bound is not None:
            return bound
        func = original_node.func
        qualified = self.ctx.qualified_name(func)
        if qualified and qualified.split(".")[0] in ("torch", "einops"):
            return self._convert_torch_call(qualified, original_node, updated_node)
        if isinstance(func, cst.Name) and func.value in self.ctx.draw_helpers and id(original_node) in self.statement_calls:
            self.report("PT006", original_node, f"{func.value}(...) fills its argument in place in torch; converted, it "
                                                "returns the new values and leaves the argument as it was: assign its "
                                                "result (x = init_(x)); left unchanged")
            return updated_node
        name = dotted(func)
        if name in self.ctx.module_classes | self.ctx.rngs_functions:  # Net(...), models.Net(...)
            if name in self.ctx.rngs_free_classes:
                return updated_node  # builds nothing random: takes no rngs (porter/convert/rngs_free.py)
            return self.scope.add_rngs(original_node, updated_node)
        if id(original_node) in self.ctx.unknown_constructions:  # REG[k](c), block(c): porter/convert/registries.py
            return registries.pass_rngs_if_taken(self, original_node, updated_node)
        if self._calls_method_needing_rngs(func):
            return self.scope.add_rngs(original_node, updated_node)
        if self._constructor_names and self.scope.rngs_in_scope() and calls_layer_constructor(
                original_node, self._constructor_names[-1],
                self._constructor_attributes[-1] if self._constructor_attributes else set(),
                self.ctx.constructor_fields):
            self._report_hidden_arguments(original_node)
            return self.scope.add_rngs(original_node, updated_node)  # norm_layer(planes), block(...)
        mapped = self._map_of_layer_constructor(original_node, updated_node)
        if mapped is not None:
            return mapped
        if isinstance(updated_node.func, cst.Attribute) and isinstance(func, cst.Attribute):
            rule = self.ctx.rules.method(updated_node.func.attr.value)
            if rule and self._looks_like_tensor(original_node) and not torch_would_refuse(rule, original_node):
                return self._apply(rule, original_node, updated_node,
                                   receiver=without_added_parentheses(updated_node.func.value))
        return updated_node

    # @torch.jit.ignore and other markers without effect on eager code: removed (kind = "decorator" rules)
    def visit_Decorator(self, node: cst.Decorator) -> None:
        target = node.decorator.func if isinstance(node.decorator, cst.Call) else node.decorator
        rule = self.ctx.rules.decorators.get(self.ctx.qualified_name(target) or "")
        if rule is not None:
            self._decorators.update((id(node.decorator), id(target)))

    def leave_Decorator(self, original_node: cst.Decorator, updated_node: cst.Decorator):
        if id(original_node.decorator) not in self._decorators:
            return updated_node
        target = original_node.decorator.func if isinstance(original_node.decorator, cst.Call) \
            else original_node.decorator
        self.record(self.ctx.rules.lookup(self.ctx.qualified_name(target)).id, original_node, cst.Pass())
        return cst.RemoveFromParent()

    def leave_Attribute(self, original_node: cst.Attribute, updated_node: cst.Attribute) -> cst.BaseExpression:
        return self._convert_reference(original_node, updated_node)

    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.BaseExpression:
        if original_node.value not in self.ctx.imports:
            return updated_node
        return self._convert_reference(original_node, updated_node)

    # --------------------------------------------------------------------
    def _convert_torch_call(self, qualified: str, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        rule = self.ctx.rules.lookup(qualified)
        if id(original) in self._decorators:
            return updated
        if rule is not None and rule.kind == "decorator" and rule.target == "drop" and updated.args \
                and not updated.args[0].keyword and not updated.args[0].star:  # torch.compile(model) is model
            self.report("PT007", original, f"{qualified}({code_of(updated.args[0].value)}, ...) -> "
                        f"{code_of(updated.args[0].value)} ({rule.id}): eager code runs the same without it; "
                        "jax.jit compiles (a converted training loop's step is jitted)")
            self.record(rule.id, original, updated.args[0].value)
            return updated.args[0].value
        if rule is None or rule.kind in ("constant", "decorator", "annotation"):
            self.report("PT003", original, f"{qualified} has no conversion rule; left unchanged")
            return updated
        return self._apply(rule, original, updated, receiver=None)

    def _apply(self, rule, original: cst.Call, updated: cst.Call, receiver) -> cst.BaseExpression:
        if rule.uses_rngs and rule.kind == "layer" and self.scope.method == "forward":
            self.report("PT006", original, f"{rule.source[0]} built inside forward: torch builds a new layer "
                                           "(new weights, training mode) at every call; build the layer in __init__ "
                                           "(self.layer = ...) and call it here; left unchanged")
            return updated
        updated = keyword_helpers.expand(updated, self.ctx.keyword_helpers) or updated
        if rule.kind == "function" and self._torch_layer_holders:  # torch.zeros(n, **dd): porter/convert/device_dicts.py
            updated = device_dicts.expand(updated, self._torch_layer_holders[-1][0]) or updated
        rngs = self.scope.rngs(original) if rule.uses_rngs else None
        rngs_in_scope = self.scope.rngs_in_scope()
        site = Site(updated, receiver, rngs, self.ctx, self.scope.module_class, statement=id(original) in self.statement_calls,
                    rngs_in_scope=rngs_in_scope, method=self.scope.method, original=original,
                    function=self.function_stack[0] if self.function_stack and not self.class_stack else None)
        try:
            result = apply_rule(rule, site)
        except Unsupported as exc:
            self.report("PT004", original, f"{rule.source[0]} ({rule.id}): {exc}; left unchanged")
            return updated
        for warning in result.warnings:
            self.report("PT005", original, f"{rule.source[0]} ({rule.id}): {warning}")
        for info in result.infos:
            self.report("PT007", original, f"{rule.source[0]} ({rule.id}): {info}")
        if result.rebind is not None:
            self._inplace_rebinds[id(original)] = result.rebind
            warning = inplace.shared_warning(result.rebind.value, self._tensor_names[-1] if self._tensor_names else None)
            if warning:
                self.report("PT005", original, f"{code_of(original.func)}: {warning}")
        self.record(rule.id, original, result.node)
        return result.node

    def _initialised_new_tensor(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression | None:
        """`torch.empty(1, n, d).normal_(std=0.02)`, a new parameter's initial value (vit's position embedding):
        drawn from the module's rngs, `0.02 * jax.random.normal(rngs.params(), (1, n, d))`."""
        func = original.func
        if not isinstance(func, cst.Attribute) or func.attr.value not in NEW_TENSOR_INITIALISERS \
                or not isinstance(func.value, cst.Call) or self.ctx.qualified_name(func.value.func) not in NEW_TENSORS:
            return None
        made = updated.func.value  # the converted jnp.zeros(shape, dtype=...)
        if not isinstance(made, cst.Call) or not made.args or made.args[0].keyword:
            return None
        shape = [code_of(made.args[0].value)] + [code_of(a.value) for a in made.args if a.keyword
                                                 and a.keyword.value == "dtype"]
        given = {a.keyword.value if a.keyword else i: code_of(a.value) for i, a in enumerate(original.args)}
        method = func.attr.value
        if not self.scope.rngs_in_scope():
            self.report("PT004", original, f"{method} on a new tensor needs a random key: only a module's "
                                           "constructor (or a function given rngs) has one; left unchanged")
            return updated
        new = expr(_draw(method, ", ".join(["rngs.params()", *shape]), _drawn_arguments(given, _DRAW_ARGUMENTS[method])))
        self.record(f"new-tensor-{method}", original, new)
        return new

    def _drawn_in_place(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression | None:
        """`t.uniform_(-s, s)` / `nn.init.normal_(t, std=0.02)` as a statement on a name (an init helper's
        argument, lucidrains' `def init_(t): t.uniform_(-s, s); return t`): `t = jax.random.uniform(rngs.params(),
        t.shape, t.dtype, minval=-s, maxval=s)`, where an rngs is in scope (the analysis gives such helpers one)."""
        if id(original) not in self.statement_calls:
            return None
        func, args = original.func, list(original.args)
        if self._module_variable(func.value if isinstance(func, cst.Attribute) else None) \
                and func.attr.value in NEW_TENSOR_INITIALISERS:
            return self._draw_into_variable(original, updated)
        if id(original) not in self.ctx.in_place_draws:
            if isinstance(func, cst.Attribute) and func.attr.value in NEW_TENSOR_INITIALISERS \
                    and not self.ctx.qualified_name(func):
                self.report("PT006", original, f"{func.attr.value} fills {code_of(func.value)} in place: converted only "
                                               "on an argument that the function returns (`def init_(t): "
                                               "t.uniform_(-s, s); return t`); left unchanged")
                return updated
            return None
        qualified = self.ctx.qualified_name(func) or ""
        if qualified in IN_PLACE_INIT_DRAWS and args and not args[0].keyword:
            method, target, names = qualified.rsplit(".", 1)[-1], args[0].value, _INIT_DRAW_ARGUMENTS
            args = list(updated.args[1:])
        elif isinstance(func, cst.Attribute) and func.attr.value in NEW_TENSOR_INITIALISERS and not qualified:
            method, target, names = func.attr.value, func.value, _DRAW_ARGUMENTS
            args = list(updated.args)
        else:
            return None
        if not isinstance(target, cst.Name) or any(a.star for a in args) \
                or any(a.keyword and a.keyword.value not in names[method] for a in args):
            return None
        if not self.scope.rngs_in_scope():
            self.report("PT042", original, f"{method} draws random numbers in place: no key here to draw them with "
                                           "(a constructor's rngs, or a function that builds layers); left unchanged")
            return updated
        given = {a.keyword.value if a.keyword else i: code_of(a.value) for i, a in enumerate(args)}
        key_and_shape = f"rngs.params(), {target.value}.shape, {target.value}.dtype"
        new = expr(_draw(method, key_and_shape, _drawn_arguments(given, names[method])))
        self._inplace_rebinds[id(original)] = target
        self.record(f"in-place-{method}", original, new)
        return new

    def _partial_binding_fixed_arguments(self, call: cst.Call, updated: cst.Call) -> cst.BaseExpression | None:
        """`partial(nn.GELU, approximate='tanh')`: a keyword the converted constructor takes only at a fixed
        value goes into it (a constructor built for that value); one it cannot take at all is PT004, kept."""
        func = call.func  # (its last name first: generating the code of every call's function cost 1% of a conversion)
        last = func.value if type(func) is cst.Name else func.attr.value if type(func) is cst.Attribute else None
        if last != "partial" or code_of(func).rsplit(".", 1)[-1] != "partial" or not call.args \
                or id(call.args[0].value) not in self._constructor_arguments:
            return None
        rule, qualified, accepted = self._constructor_arguments[id(call.args[0].value)]
        fixed = {a.keyword.value: code_of(a.value) for a in call.args[1:] if a.keyword and a.keyword.value not in accepted}
        if not fixed:
            return None
        converted = None if any(a.star for a in call.args[1:]) else constructor_function(rule, qualified, self.ctx, fixed)
        if converted is None:
            self.report("PT004", call, f"{', '.join(fixed)}={', '.join(fixed.values())}: not a value the converted "
                                       f"{qualified} takes (it takes {', '.join(accepted)}); left unchanged")
            where = self.position(call.args[0].value)  # its conversion as a value is undone: no PT007 for it
            self.ctx.diagnostics[:] = [d for d in self.ctx.diagnostics if (d.code, d.line, d.col) != ("PT007", *where)]
            self.ctx.changes[:] = [c for c in self.ctx.changes if (c.line, c.col) != where]
            return call
        rest = [a for a in updated.args[1:] if not (a.keyword and a.keyword.value in fixed)]
        new = updated.with_changes(args=[cst.Arg(converted[0]), *rest]) if rest else converted[0]
        self.record(rule.id, call, new)
        return new

    def _module_variable(self, node: cst.BaseExpression | None) -> bool:
        """`self.w`: a parameter or buffer of the module class we are in."""
        return self.scope.module_class is not None and m.matches(node, m.Attribute(value=m.Name("self"))) \
            and self.ctx.layer_attributes.get(self.scope.module_class, {}).get(node.attr.value) in VARIABLE_KINDS

    def _draw_into_variable(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        """`self.learned_bias.uniform_(a, b)` in a constructor: `self.learned_bias[...] = jax.random.uniform(...)`."""
        method, variable = original.func.attr.value, code_of(original.func.value)
        if not self.scope.rngs_in_scope():
            self.report("PT042", original, f"{method} draws random numbers in place: no key here to draw them with "
                                           "(a constructor's rngs); left unchanged")
            return updated
        args = list(updated.args)
        if any(a.star or (a.keyword and a.keyword.value not in _DRAW_ARGUMENTS[method]) for a in args):
            return updated
        given = {a.keyword.value if a.keyword else i: code_of(a.value) for i, a in enumerate(args)}
        new = expr(_draw(method, f"rngs.params(), {variable}.shape, {variable}.dtype",
                         _drawn_arguments(given, _DRAW_ARGUMENTS[method])))
        self._inplace_rebinds[id(original)] = expr(f"{variable}[...]")
        self.record(f"in-place-{method}", original, new)
        return new

    def _report_hidden_arguments(self, call: cst.Call) -> None:
        """`norm_layer(c, **dd)` where norm_layer may be a torch layer class: converted, that class is a function
        taking only the arguments porter converts; reported unless the splat is a dict of known keys it takes."""
        if not isinstance(call.func, cst.Name) or not self._torch_layer_holders:
            return
        if not any(arg.star == "**" for arg in call.args):
            return
        function, names, holders = self._torch_layer_holders[-1]
        if holders is None:
            found = torch_layer_holders(function, self.ctx)
            holders = {n: found[n] for n in found.keys() & names}
            self._torch_layer_holders[-1] = (function, names, holders)
        classes = holders.get(call.func.value)
        if not classes:
            return
        for arg in call.args:
            if arg.star != "**":
                continue
            keys = dict_keys_bound(function, arg.value.value) if isinstance(arg.value, cst.Name) else None
            refused = None if keys is None else keys - self._accepted_arguments(classes)
            if keys is None or refused:
                hidden = f"**{code_of(arg.value)} passes {', '.join(sorted(refused))}" if refused else \
                    f"**{code_of(arg.value)} hides which arguments arrive"
                self.report("PT004", call, f"{call.func.value}(...) may build {', '.join(sorted(classes))}, which "
                                           f"converts to a function taking only the arguments porter converts; "
                                           f"{hidden}")

    def _accepted_arguments(self, classes: set[str]) -> set[str]:
        """The arguments every one of these torch layer classes takes once converted to a constructor function."""
        accepted = None
        for qualified in classes:
            rule = self.ctx.rules.lookup(qualified)
            converted = constructor_function(rule, qualified, self.ctx) if rule is not None else None
            names = set(converted[1]) if converted is not None else set()
            accepted = names if accepted is None else accepted & names
        return accepted or set()

    def _map_of_layer_constructor(self, original: cst.Call, updated: cst.Call) -> cst.Call | None:
        """`map(wrapper_fn, (attn, ff))` in a constructor: map calls the layer constructor, so it gets
        `partial(wrapper_fn, rngs=rngs)` (the calls map makes cannot be given rngs one by one)."""
        if not m.matches(original.func, m.Name("map")) or self.ctx.qualified_name(original.func) \
                or len(original.args) < 2 or original.args[0].keyword or original.args[0].star \
                or not self.scope.rngs_in_scope():
            return None
        constructor = cst.Call(original.args[0].value, [])
        names = self._constructor_names[-1] if self._constructor_names else set()
        attributes = self._constructor_attributes[-1] if self._constructor_attributes else set()
        if not (m.matches(constructor.func, m.Name()) and constructor.func.value in
                self.ctx.module_classes | self.ctx.rngs_functions
                or calls_layer_constructor(constructor, names, attributes, self.ctx.constructor_fields)):
            return None
        bound = cst.Call(cst.Name("partial"), [cst.Arg(updated.args[0].value),
                                               keyword_arg("rngs", self.scope.rngs(original))])
        new = updated.with_changes(args=[updated.args[0].with_changes(value=bound), *updated.args[1:]])
        self.record("module-construct", original, new)
        return new

    def _calls_method_needing_rngs(self, func: cst.BaseExpression) -> bool:
        return (self.scope.module_class is not None and isinstance(func, cst.Attribute)
                and isinstance(func.value, cst.Name) and func.value.value == "self"
                and func.attr.value in self.ctx.methods_needing_rngs.get(self.scope.module_class, ()))

    def _looks_like_tensor(self, call: cst.Call) -> bool:
        receiver = call.func.value
        positional = [a for a in call.args if a.keyword is None]
        if isinstance(receiver, _STRINGS):
            return False
        if positional and isinstance(positional[0].value, _STRINGS) and call.func.attr.value not in ("to", "type"):
            return False  # name.split(","), pattern.sub("-", s): not a tensor's method (x.to("cuda") is)
        if isinstance(receiver, cst.Name) and receiver.value == "self":
            return False  # self.norm(x), self.flatten(x): the module's own layers and methods
        if isinstance(receiver, cst.Attribute) and isinstance(receiver.value, cst.Name) \
                and receiver.value.value == "self" and self.scope.module_class \
                and self.ctx.layer_attributes.get(self.scope.module_class, {}).get(receiver.attr.value, "buffer") \
                not in ("buffer", "torch.nn.Parameter", "torch.nn.parameter.Parameter"):
            return False  # self.block.mean(...): a submodule's method
        if self._inherited_submodule_chain(receiver):
            return False  # self.features.transition1.norm(x): a layer named norm (smp's densenet encoder)
        head = receiver  # os.path.split(p), np.split(a): a function of an imported module
        while isinstance(head, cst.Attribute):
            head = head.value
        if isinstance(head, cst.Name) and head.value in self.ctx.bound_imports:
            return False
        return True

    def _inherited_submodule_chain(self, receiver: cst.BaseExpression) -> bool:
        """`self.features.transition1` in a module class that never assigns `self.features` (a base class built
        it: torchvision's DenseNet for smp's encoder): a submodule of a submodule, not a parameter or a buffer."""
        if type(receiver) is not cst.Attribute or type(receiver.value) is not cst.Attribute \
                or receiver.attr.value in _TENSOR_ATTRIBUTES or not self.scope.module_class:
            return False
        head = receiver
        while type(head.value) is cst.Attribute:
            head = head.value
        node = self.ctx.module_class_nodes.get(self.scope.module_class)
        if type(head.value) is not cst.Name or head.value.value != "self" or node is None \
                or head.attr.value in _TENSOR_ATTRIBUTES:
            return False
        return head.attr.value not in assigned_self_attributes(node)

    def _convert_reference(self, original, updated) -> cst.BaseExpression:
        replace = self.scope.replaced_references.get(id(original))
        if replace is not None and id(original) not in self._inner:
            return replace(original, updated)
        if id(original) in self._decorators:
            return updated
        if id(original) in self._inner or id(original) in self._call_funcs or self.scope.kept_depth:
            return updated
        qualified = self.ctx.qualified_name(original)
        if not qualified or qualified.split(".")[0] not in ("torch", "einops"):
            return updated
        rule = self.ctx.rules.lookup(qualified)
        if rule is not None and (rule.kind == "constant" or rule.kind == "annotation" and self._annotation_depth):
            new = rule_expr(rule.target)
            self.record(rule.id, original, new)
            for warning in rule.warn.values():
                self.report("PT005", original, f"{qualified} ({rule.id}): {warning}")
            return new
        if (qualified in SEQUENTIAL_BASES or qualified in TORCH_LAYER_BASES or qualified in MODULE_LIST_BASES) \
                and id(original) in self._class_bases:
            return updated  # the module pass makes the class a subclass of nnx.Sequential or an emitted layer
        if qualified in MODULE_BASES:
            if self._annotation_depth:  # downsample: Optional[nn.Module]
                new = rule_expr("nnx.Module")
                self.record("module-annotation", original, new)
                return new
            return updated  # the module pass converts class bases; other uses are reported there
        if rule is not None and self._annotation_depth and rule.kind == "layer":
            # `-> nn.Conv2d`: the converted layer is an nnx.Module; `-> nn.Sequential`: an nnx.Sequential
            new = rule_expr(rule.target if rule.target in SEQUENTIAL_TARGETS else "nnx.Module")
            self.record(rule.id, original, new)
            return new
        value_rule = layer_value_rule(original, self.ctx)
        if value_rule is not None and not self._annotation_depth and id(original) not in self._type_tests \
                and (self.scope.rngs_in_scope() or id(original) in self._global_constructors):
            # where layers are built (a default of such a function's parameter too), or a module-level constructor
            converted = constructor_function(value_rule, qualified, self.ctx)
            if converted is not None:
                new, accepted, warnings = converted
                self._constructor_arguments[id(original)] = (value_rule, qualified, accepted)
                for warning in warnings:
                    self.report("PT005", original, f"{qualified} ({value_rule.id}): {warning}")
                self.report("PT007", original, f"{qualified} used as a value (a layer constructor) becomes a function "
                                               f"with torch's arguments ({', '.join(accepted) or 'none'}) and rngs, "
                                               "building the converted layer; calls in constructors pass rngs")
                if id(original) not in self._whole_values and isinstance(new, cst.Lambda):  # `nn.Hardswish if hs else nn.ReLU`: the lambda
                    new = new.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])  # must not swallow it
                self.record(value_rule.id, original, new)
                return new
        if rule is not None and rule.kind == "function" and not self._annotation_depth \
                and id(original) not in self._type_tests and id(original) not in self._compared \
                and not _in_place_or_random(rule, qualified):
            converted = constructor_function(rule, qualified, self.ctx)
            if converted is not None and "rngs" not in code_of(converted[0]):  # `activation=F.gelu`, `partial(F.softmax, dim=-1)`: a function taking
                new, accepted, warnings = converted  # torch's arguments, calling the converted function
                self._constructor_arguments[id(original)] = (rule, qualified, accepted)
                for warning in warnings:
                    self.report("PT005", original, f"{qualified} ({rule.id}): {warning}")
                if id(original) not in self._whole_values:
                    new = new.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
                self.record(rule.id, original, new)
                return new
        if rule is not None:
            self.report("PT003", original, value_message(rule, qualified))  # porter/convert/layer_values.py
            return updated
        if qualified.startswith(KEPT_TORCH):  # `class Pairs(Dataset)`: torch's data loading, kept
            return updated
        self.report("PT003", original, f"{qualified} has no conversion rule; left unchanged")
        return updated


def _in_place_or_random(rule, qualified: str) -> bool:
    """`torch.Tensor.add_` (called for its effect: a function returning new values would change nothing) or
    a random draw (its key comes from where it is called): no function value."""
    name = qualified.rsplit(".", 1)[-1]
    return (name.endswith("_") and not name.startswith("_")) or rule.uses_rngs


def _drawn_arguments(given: dict, names: tuple[str, str]) -> tuple[str | None, str | None]:
    """(mean, std) of normal_ or (low, high) of uniform_, each given by position or by keyword."""
    return given.get(0, given.get(names[0])), given.get(1, given.get(names[1]))


def _draw(method: str, key_and_shape: str, arguments: tuple[str | None, str | None]) -> str:
    if method == "normal_":
        mean, std = arguments
        code = f"jax.random.normal({key_and_shape})"
        code = code if std in (None, "1", "1.0") else f"{atom(std)} * {code}"
        return code if mean in (None, "0", "0.0") else f"{code} + {atom(mean)}"
    low, high = arguments
    return f"jax.random.uniform({key_and_shape}, minval={low or '0.0'}, maxval={high or '1.0'})"


_EQUAL = cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace(""))


def constructor_function(rule, qualified: str, ctx, fixed: dict[str, str] | None = None
                         ) -> tuple[cst.BaseExpression, list[str], list[str]] | None:
    """`nn.BatchNorm2d` as a value -> `lambda num_features, eps=1e-05, ..., *, rngs: TorchBatchNorm(...)`:
    torch's arguments that the rule converts whatever their value (each tried as a variable; the others
    are left out, so passing one fails loudly), and rngs (ignored by activations, which build no layer).
    None when the rule cannot convert even the required arguments as variables. `fixed`: arguments given
    as source (a partial's `approximate='tanh'`), converted at that value and not taken by the function."""
    if not fixed and layer_functions.has_function(rule):  # the rule as a function: torch's arguments, exactly
        ctx.need_helper(layer_functions.function_name(rule))
        return cst.Name(layer_functions.function_name(rule)), [p.name for p in rule.signature], []
    fixed = fixed or {}
    required = [p.name for p in rule.signature if p.default is None and not p.keyword_only and p.name not in fixed
                and not p.var_positional]
    optional = [p for p in rule.signature if p.default is not None and p.name not in fixed]
    if any(p.var_positional for p in rule.signature):
        return None

    def attempt(names: list[str]):
        args = ", ".join([*required, *(f"{n}={v}" for n, v in fixed.items()), *(f"{n}={n}" for n in names)])
        call = cst.parse_expression(f"{qualified}({args})")
        site = Site(call, None, cst.Name("rngs") if rule.uses_rngs else None, ctx, rngs_in_scope=True)
        try:
            return apply_rule(rule, site)
        except (Unsupported, KeyError, TypeError, AttributeError):
            return None

    if attempt([]) is None and optional and not optional[0].keyword_only and rule.kind == "function":
        # F.softmax's dim: optional in torch's signature, required by the rule (torch's implicit choice is
        # legacy): the function takes it without a default, so a call without it fails loudly
        required, optional = [*required, optional[0].name], optional[1:]
    if attempt([]) is None:
        return None
    accepted = [p for p in optional if attempt([p.name]) is not None]
    result = attempt([p.name for p in accepted])
    if result is None:
        accepted, result = [], attempt([])
    def param(name: str, default: str | None = None) -> cst.Param:
        if default is None:
            return cst.Param(cst.Name(name))
        return cst.Param(cst.Name(name), default=cst.parse_expression(default), equal=_EQUAL)

    params = [param(n) for n in required]
    params += [param(p.name, p.default) for p in accepted if not p.keyword_only]
    kwonly = [param(p.name, p.default) for p in accepted if p.keyword_only]
    if rule.kind == "function":  # a function value builds no layer: no rngs
        parameters = cst.Parameters(params=params, star_arg=cst.ParamStar() if kwonly else cst.MaybeSentinel.DEFAULT,
                                    kwonly_params=kwonly)
    else:
        rngs = param("rngs") if rule.uses_rngs else param("rngs", "None")
        parameters = cst.Parameters(params=params, star_arg=cst.ParamStar(), kwonly_params=[*kwonly, rngs])
    lambda_ = cst.Lambda(parameters, result.node)
    return lambda_, [*required, *(p.name for p in accepted)], list(result.warnings)
