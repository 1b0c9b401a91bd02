"""A faster `module.visit(visitor)`: the same callbacks in the same order, less machinery.

libcst's traversal rebuilds every node it enters (even for a read-only
visitor), runs a generator and two attribute hooks per field, and looks each
`visit_X`/`leave_X` up by name per node. `visit(module, visitor, skip=...)`
calls `on_visit`/`on_leave` exactly as libcst does, in the order libcst's own
`_visit_and_replace_children` visits the fields (read from libcst's source
once), with the same handling of RemovalSentinel and FlattenSentinel, but:

- a node whose children all came back unchanged is kept as it is (libcst
  builds an equal copy); only nodes with a changed child are rebuilt;
- attribute hooks (`visit_Call_func`, ...) are called only when the visitor
  defines one;
- `skip(node)` may say that a node needs no visit: it is neither visited nor
  left, its subtree untouched, as if `on_visit` had returned False and
  `on_leave` had returned it unchanged.

A node type whose `_visit_and_replace_children` is not the plain
`Node(field=visit_x(self, "field", self.field, visitor), ...)` shape falls back
to libcst's own method (its subtree is then visited the libcst way, without
`skip`).
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
import typing
from typing import Callable

import libcst as cst
from libcst import CSTNode, CSTTransformer, FlattenSentinel, MaybeSentinel, RemovalSentinel

REQUIRED, OPTIONAL, SENTINEL, SEQUENCE, BODY = "required", "optional", "sentinel", "sequence", "body"
AUTO = "auto"  # by the value: None stays None, a sequence is a sequence, a node is required
_KINDS = {"visit_required": REQUIRED, "visit_optional": OPTIONAL, "visit_sentinel": SENTINEL,
          "visit_sequence": SEQUENCE, "visit_body_sequence": BODY}
_NODE_MODULES = ("module", "statement", "expression", "whitespace", "op", "base")
_FALLBACK = None  # spec of a node type visited through libcst's own method
_ATTRIBUTE_HOOK = re.compile(r"^(visit|leave)_[A-Z]\w*?_[a-z]\w*$")


@functools.cache
def _own_specs() -> dict[type, tuple[tuple[str, str], ...] | None]:
    """Node class -> ((field, kind), ...) in visiting order, from its own _visit_and_replace_children."""
    specs: dict[type, tuple[tuple[str, str], ...] | None] = {}
    for stem in _NODE_MODULES:
        module = importlib.import_module(f"libcst._nodes.{stem}")
        try:
            tree = ast.parse(inspect.getsource(module))
        except (OSError, TypeError, SyntaxError):  # pragma: no cover - no source installed
            continue
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            cls = getattr(module, node.name, None)
            if not isinstance(cls, type):
                continue
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "_visit_and_replace_children":
                    specs[cls] = _spec_of(item)
    return specs


def _spec_of(function: ast.FunctionDef) -> tuple[tuple[str, str], ...] | None:
    """The fields visited, in order. Understood shapes: `return Node(field=visit_x(self, "field",
    self.field, visitor), other=self.other, ...)`, with local aliases (`names = self.names`), a
    `ret = Node(...); return ret`, and `visit_a(...) if test else visit_b(...)/None` (AUTO)."""
    aliases: dict[str, str] = {}
    built: dict[str, ast.expr] = {}
    result = None
    for statement in function.body:
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue  # docstring
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1 \
                and isinstance(statement.targets[0], ast.Name):
            value, name = statement.value, statement.targets[0].id
            if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) and value.value.id == "self":
                aliases[name] = value.attr
            else:
                built[name] = value
            continue
        if isinstance(statement, ast.Return) and result is None:
            result = statement.value
            continue
        return _FALLBACK
    if isinstance(result, ast.Name) and result.id in built:
        result = built[result.id]
    if isinstance(result, ast.Name) and result.id == "self":
        return ()  # a leaf
    if not isinstance(result, ast.Call) or result.args:
        return _FALLBACK

    def visited(field: str, v: ast.expr) -> str | None:
        if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id in _KINDS and len(v.args) == 4 \
                and isinstance(v.args[1], ast.Constant) and v.args[1].value == field \
                and (ast.unparse(v.args[2]) == f"self.{field}" or aliases.get(ast.unparse(v.args[2])) == field):
            return _KINDS[v.func.id]
        return None

    spec = []
    for keyword in result.keywords:
        field, v = keyword.arg, keyword.value
        if (isinstance(v, ast.Attribute) and isinstance(v.value, ast.Name) and v.value.id == "self"
                and v.attr == field) or (isinstance(v, ast.Name) and aliases.get(v.id) == field):
            continue  # copied as it is
        kind = visited(field, v)
        if kind is None and isinstance(v, ast.IfExp):
            branches = [b for b in (v.body, v.orelse) if not (isinstance(b, ast.Constant) and b.value is None)]
            if branches and all(visited(field, b) is not None for b in branches):
                kind = AUTO
        if kind is None:
            return _FALLBACK
        spec.append((field, kind))
    return tuple(spec)


@functools.cache
@functools.cache
def spec(cls: type) -> tuple[tuple[str, str], ...] | None:
    own = _own_specs()
    for base in cls.__mro__:
        if base in own:
            return own[base]
    return _FALLBACK


@functools.cache
def _has_attribute_hooks(cls: type) -> bool:
    if cls.on_visit_attribute is not cst.CSTVisitor.on_visit_attribute and \
            cls.on_visit_attribute is not CSTTransformer.on_visit_attribute:
        return True
    if cls.on_leave_attribute is not cst.CSTVisitor.on_leave_attribute and \
            cls.on_leave_attribute is not CSTTransformer.on_leave_attribute:
        return True
    # libcst's typed stubs (visit_Call_func ...) are in every visitor's dir(): only a visitor's own count
    return any(_ATTRIBUTE_HOOK.match(name) and hook(cls, name) is not None for name in dir(cls))


@functools.cache
def hook(cls: type, name: str):
    """The visitor class's `visit_X`/`leave_X` function, or None when it has none of its own
    (libcst's typed stubs, marked `_is_no_op`, do nothing)."""
    fn = getattr(cls, name, None)
    if fn is None or getattr(fn, "_is_no_op", False):
        return None
    return fn


_VISIT: dict[tuple[type, type], object] = {}
_LEAVE: dict[tuple[type, type], object] = {}


class FastDispatch:
    """on_visit/on_leave as libcst's, with the hook looked up once per (visitor class, node type)
    and libcst's no-op stubs not called. Put it before CSTVisitor/CSTTransformer in the bases."""

    def on_visit(self, node: CSTNode) -> bool:
        key = (type(self), type(node))
        fn = _VISIT.get(key, _VISIT)
        if fn is _VISIT:
            fn = _VISIT[key] = hook(key[0], f"visit_{key[1].__name__}")
        if fn is None:
            return True
        return fn(self, node) is not False

    def on_leave(self, original_node: CSTNode, *updated):
        key = (type(self), type(original_node))
        fn = _LEAVE.get(key, _LEAVE)
        if fn is _LEAVE:
            fn = _LEAVE[key] = hook(key[0], f"leave_{key[1].__name__}")
        if updated:  # a transformer
            if fn is None:
                return updated[0]
            return fn(self, original_node, updated[0])
        if fn is not None:
            fn(self, original_node)
        return None


def visit(module: cst.Module, visitor, skip: Callable[[CSTNode], bool] | None = None):
    """`module.visit(visitor)`, faster; see the module docstring."""
    walker = _Walker(visitor, skip)
    result = walker.walk(module)
    if isinstance(visitor, CSTTransformer) and isinstance(result, RemovalSentinel):
        return module.with_changes(body=(), header=(), footer=())
    return result if isinstance(visitor, CSTTransformer) else module


class _Walker:
    def __init__(self, visitor, skip, never: frozenset[type] = frozenset()) -> None:
        self.visitor = visitor
        self.skip = skip
        # node types `skip` always skips (whitespace, punctuation), and `never`: not even walked to
        self.never = frozenset(getattr(skip, "never", ())) | never
        self.transformer = isinstance(visitor, CSTTransformer)
        self.hooks = _has_attribute_hooks(type(visitor))
        # node type -> its fields to walk: without those that can hold only `never` types (an attribute hook
        # is called for every field: then all)
        self.specs: dict[type, tuple[tuple[str, str], ...] | None] = {}
        self.pruned = frozenset() if self.hooks else self.never

    def walk(self, node: CSTNode):
        skip = self.skip
        if skip is not None and skip(node):
            return node
        visitor = self.visitor
        updated = node
        if visitor.on_visit(node):
            kind = type(node)
            kinds = self.specs.get(kind, _UNKNOWN)
            if kinds is _UNKNOWN:
                kinds = self.specs[kind] = _walked_fields(kind, self.pruned)
            if kinds is _FALLBACK:
                updated = node._visit_and_replace_children(visitor)
            elif kinds:
                updated = self._children(node, kinds)
        if self.transformer:
            result = visitor.on_leave(node, updated)
            if result is not updated and result is not node \
                    and not isinstance(result, (CSTNode, RemovalSentinel, FlattenSentinel)):
                raise cst.CSTValidationError(
                    f"Expected a node of type CSTNode or a RemovalSentinel, but got a return value of "
                    f"{type(result).__name__}")
            return result
        visitor.on_leave(node)
        return node

    def _children(self, node: CSTNode, kinds) -> CSTNode:
        changes = None
        hooks = self.hooks
        visitor = self.visitor
        never = self.never
        for field, kind in kinds:
            old = getattr(node, field)
            if type(old) in never and not hooks:
                continue
            if hooks:
                visitor.on_visit_attribute(node, field)
            if kind is AUTO:
                kind = SEQUENCE if isinstance(old, (list, tuple)) else OPTIONAL if old is None else REQUIRED
            if kind is SEQUENCE or kind is BODY:
                new = self._sequence(old, kind is BODY)
            elif kind is REQUIRED:
                new = self.walk(old)
                # (a node that came back unchanged is no sentinel: the checks, through ABCMeta, are skipped)
                if new is not old and isinstance(new, RemovalSentinel):
                    raise TypeError(f"We got a RemovalSentinel while visiting a {type(old).__name__}. This "
                                    "node's parent does not allow it to be removed.")
                if new is not old and isinstance(new, FlattenSentinel):
                    raise TypeError(f"We got a FlattenSentinel while visiting a {type(old).__name__}. This "
                                    "node's parent does not allow for it to be it to be replaced with a sequence.")
            elif kind is OPTIONAL:
                if old is None:
                    new = None
                else:
                    new = self.walk(old)
                    if new is not old and isinstance(new, FlattenSentinel):
                        raise TypeError(f"We got a FlattenSentinel while visiting a {type(old).__name__}. This "
                                        "node's parent does not allow for it to be it to be replaced with a "
                                        "sequence.")
                    if new is not old and isinstance(new, RemovalSentinel):
                        new = None
            else:  # SENTINEL
                if isinstance(old, MaybeSentinel):
                    new = old  # MaybeSentinel.DEFAULT, its only value
                else:
                    new = self.walk(old)
                    if new is not old and isinstance(new, FlattenSentinel):
                        raise TypeError(f"We got a FlattenSentinel while visiting a {type(old).__name__}. This "
                                        "node's parent does not allow for it to be it to be replaced with a "
                                        "sequence.")
                    if new is not old and isinstance(new, RemovalSentinel):
                        new = MaybeSentinel.DEFAULT
            if hooks:
                visitor.on_leave_attribute(node, field)
            if new is not old:
                if changes is None:
                    changes = {}
                changes[field] = new
        if changes is None or not self.transformer:
            return node
        return node.with_changes(**changes)

    def _sequence(self, children, body: bool):
        out = None  # built only once something changed
        walk = self.walk
        never = self.never
        for i, child in enumerate(children):
            if type(child) in never:
                if out is not None:
                    out.append(child)
                continue
            new = walk(child)
            if new is child:
                if out is not None:
                    out.append(child)
                continue
            if out is None:
                out = list(children[:i])
            if isinstance(new, RemovalSentinel):
                continue
            if isinstance(new, FlattenSentinel):
                for item in new:
                    if body and not child._is_removable() and item._is_removable():
                        continue
                    out.append(item)
            else:
                if body and not child._is_removable() and new._is_removable():
                    continue
                out.append(new)
        return children if out is None else tuple(out)


def find_all(node: CSTNode, kinds: type | tuple[type, ...]) -> list[CSTNode]:
    """The nodes of the given types in `node`'s subtree (`node` included), in source order: what
    `libcst.matchers.findall(node, m.TypeName())` returns, without running a matcher visitor over it.
    (Exact types: libcst's node classes have no subclasses, and isinstance on them goes through ABCMeta.)
    Subtrees that cannot hold such a node are not entered (see _search_plan), nor are the fields that can
    hold only such subtrees (see _search_fields)."""
    wanted = frozenset(kinds) if isinstance(kinds, tuple) else frozenset((kinds,))
    only, skip = _search_plan(wanted)
    past_trivia = bool(skip)
    found: list[CSTNode] = []
    stack = [node]
    pop, push, extend, keep = stack.pop, stack.append, stack.extend, found.append
    while stack:
        current = pop()
        kind = type(current)
        if kind in wanted:
            keep(current)
        if kind in skip or (only is not None and kind not in only):
            continue
        fields = _search_fields(kind, past_trivia)
        if fields is None:
            extend(reversed(current.children))
            continue
        for field in fields:  # last first: the stack pops them in order
            value = getattr(current, field)
            value_type = type(value)
            if value_type is tuple or value_type is list:
                extend(reversed(value))
            elif value is not None and value_type is not MaybeSentinel:
                push(value)
    return found


@functools.cache
def _search_fields(cls: type, past_trivia: bool) -> tuple[str, ...] | None:
    """The fields of `cls` that find_all walks into, last first; None: it reads `node.children`. Past trivia (a
    search that does not enter whitespace and punctuation, and finds none): without the fields whose type
    allows only those (`whitespace_after_func`; not `lpar`: a LeftParen is an expression node)."""
    fields = _walked_fields(cls, trivia() if past_trivia else frozenset())
    return None if fields is _FALLBACK else tuple(field for field, _ in reversed(fields))


_UNKNOWN = object()


@functools.cache
def _walked_fields(cls: type, left_out: frozenset[type]) -> tuple[tuple[str, str], ...] | None:
    """spec(cls) without the fields whose annotation allows only nodes of the `left_out` types: a walk that
    neither visits nor enters those has nothing to do there."""
    fields = spec(cls)
    if fields is _FALLBACK or not left_out:
        return fields
    hints = _field_hints(cls)
    return tuple((field, kind) for field, kind in fields if not _only_of(hints.get(field), left_out))


@functools.cache
def _field_hints(cls: type) -> dict[str, object]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # pragma: no cover - an annotation that does not resolve: every field is walked
        return {}


def _only_of(hint: object, kinds: frozenset[type]) -> bool:
    """The annotation allows only nodes of `kinds` (besides None and MaybeSentinel)."""
    if hint is None:
        return False
    classes = [c for c in _classes_of(hint) if c is not MaybeSentinel and c is not type(None)]
    return bool(classes) and all(_concrete(c) and _concrete(c) <= kinds for c in classes)


def _classes_of(hint: object) -> list[type]:
    """The classes an annotation names (Optional, Union, Sequence: their arguments); object for anything else."""
    arguments = typing.get_args(hint)
    if arguments:
        return [c for argument in arguments for c in _classes_of(argument)]
    return [hint] if isinstance(hint, type) else [object]


@functools.cache
def _concrete(cls: type) -> frozenset[type]:
    """`cls` and its subclasses that are not abstract."""
    found = {cls} if not inspect.isabstract(cls) else set()
    for sub in cls.__subclasses__():
        found |= _concrete(sub)
    return frozenset(found)


_TRIVIA_MODULES = ("libcst._nodes.whitespace", "libcst._nodes.op")  # whitespace, comments, punctuation, operators


def trivia() -> frozenset[type]:
    """libcst's whitespace, comment and punctuation nodes (operators included): they hold nothing else."""
    return _node_kinds()[0]


@functools.cache
def _node_kinds() -> tuple[frozenset[type], frozenset[type], frozenset[type]]:
    """(whitespace and punctuation, small statements, what holds statements: compound statements, their
    blocks and clauses, a statement line, the module) among libcst's node classes."""
    classes = {cls for stem in _NODE_MODULES for cls in vars(importlib.import_module(f"libcst._nodes.{stem}")).values()
               if isinstance(cls, type) and issubclass(cls, CSTNode) and not inspect.isabstract(cls)}
    spacing = frozenset(cls for cls in classes if cls.__module__ in _TRIVIA_MODULES)
    small = frozenset(cls for cls in classes if issubclass(cls, cst.BaseSmallStatement))
    holders = frozenset(cls for cls in classes if issubclass(cls, (cst.BaseCompoundStatement, cst.BaseSuite))) \
        | {cst.Module, cst.SimpleStatementLine, cst.Else, cst.ExceptHandler, cst.ExceptStarHandler, cst.Finally,
           cst.MatchCase}
    return spacing, small, holders


@functools.cache
def _search_plan(wanted: frozenset[type]) -> tuple[frozenset[type] | None, frozenset[type]]:
    """(the only node types worth entering, or None for any; node types never worth entering) for a search
    of `wanted`: statements are found within statements and their blocks alone, and nothing but whitespace
    and punctuation is found within whitespace and punctuation (operators included)."""
    spacing, small, holders = _node_kinds()
    skip = frozenset() if wanted & spacing else spacing
    only = holders if wanted <= holders | small else None
    return only, skip


def child_nodes(node: CSTNode) -> list[CSTNode]:
    """`node.children`, in the same order, without libcst's visitor (read from the fields the traversal visits)."""
    fields = spec(type(node))
    if fields is _FALLBACK:
        return list(node.children)
    children: list[CSTNode] = []
    for field, _ in fields:
        value = getattr(node, field)
        if value is None or type(value) is MaybeSentinel:
            continue
        if type(value) in (list, tuple):
            children.extend(value)
        else:
            children.append(value)
    return children

