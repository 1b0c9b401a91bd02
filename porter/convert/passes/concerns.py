"""The rewrite as a list of concerns dispatched by one traversal.

A concern is a plain class (it subclasses no other concern) built with the shared scope (`scope`: where
the traversal is, ConversionContext as `scope.ctx`, report/record/mentions), naming what it reacts to:

- `TRIGGER_WORDS` (and `trigger_words()`/`trigger_state()` when they grow with what it has seen): the
  identifiers without which a statement is skipped unvisited (source_index.Prefilter);
- hooks by node type: `visit_X(node)`, `after_visit_X(node)`, `leave_X(original, updated)`,
  `after_leave_X(original, updated)`;
- hooks for every node, where a concern notes something about most node types (module structure):
  `visit_any(node)`, before the scope's visit (and every node-type hook), and `after_leave_any(original,
  result)`, after the scope's leave, returning the result; and `left(original, result)`, called once a
  node's leave is over;
- statements it replaces whole, decided when the traversal entered their parent (weight initialisation):
  `scope.replaced_unvisited[id(statement)] = function`; the statement is skipped unvisited (no hook sees
  it) and replaced by `function(statement, visitor)` at its leave (the visitor: to convert parts it keeps).

The order, stated once in pipeline.py's CONCERNS, is the order of a subclass chain: a concern wraps
the concerns after it. For a node of type X, its `visit_X` runs before theirs and its `after_visit_X`
after theirs (children are skipped when any visit hook returns False); its `leave_X` runs before theirs and
its `after_leave_X` after theirs, on their result. Each leave hook gets the node the hook before it
returned (a replacement, RemoveFromParent or a FlattenSentinel included: a hook checks the type before
touching it). A `leave_X` that returns `Final(node)` ends the leave: the hooks of the concerns after it
and their after_ hooks do not run; the after_ hooks of the concerns before it do. The hooks of the
innermost, the calls rewrite and the scope (still one class chain: passes/calls.py, passes/scope.py), run
at the end of the list. Each node type's hooks are looked up once, in a table.
"""

from __future__ import annotations

import libcst as cst

from porter.convert.traverse import hook


class Final:
    """A leave hook's result that ends the node's leave (see the module docstring)."""

    __slots__ = ("node",)

    def __init__(self, node) -> None:
        self.node = node


def hook_table(scope, concerns: list) -> tuple[dict, dict]:
    """(node type -> visit function or None, node type -> leave function or None), filled lazily."""
    return _Table(scope, concerns, "visit"), _Table(scope, concerns, "leave")


class _Table(dict):
    def __init__(self, scope, concerns: list, kind: str) -> None:
        super().__init__()
        self.scope, self.concerns, self.kind = scope, concerns, kind

    def __missing__(self, node_type: type):
        name = f"{self.kind}_{node_type.__name__}"
        own = hook(type(self.scope), name)
        own = own.__get__(self.scope) if own is not None else None
        layers = [(getattr(c, name, None), getattr(c, f"after_{name}", None)) for c in self.concerns]
        layers = [layer for layer in layers if layer != (None, None)]
        if not layers:
            function = own
        elif self.kind == "visit":
            function = _visit_function(layers, own)
        else:
            function = _leave_function(layers, own)
        self[node_type] = function
        return function


def _visit_function(layers, own):
    def visit(node) -> bool:
        go = True
        for before, _ in layers:
            if before is not None and before(node) is False:
                go = False
        if own is not None and own(node) is False:
            go = False
        for _, after in reversed(layers):
            if after is not None and after(node) is False:
                go = False
        return go
    return visit


def _leave_function(layers, own):
    def leave(original, updated):
        ended = len(layers)
        for i, (before, _) in enumerate(layers):
            if before is not None:
                updated = before(original, updated)
                if type(updated) is Final:
                    updated, ended = updated.node, i
                    break
        else:
            if own is not None:
                updated = own(original, updated)
        for _, after in reversed(layers[:ended]):
            if after is not None:
                updated = after(original, updated)
        return updated
    return leave


class Rewrite(cst.CSTTransformer):
    """The one traversal's visitor: the scope (the innermost, which dispatches the node-type hooks of every
    concern: passes/scope.py), the statements a concern replaces unvisited (`scope.replaced_unvisited`), the
    concerns' hooks for every node (`visit_any`, `after_leave_any`, `left`) and their trigger words."""

    def __init__(self, scope, concerns: list) -> None:
        super().__init__()
        self.scope = scope
        self.concerns = concerns
        scope.use_concerns(concerns)
        self._replaced = scope.replaced_unvisited
        self._scope_visit, self._scope_leave = scope.on_visit, scope.on_leave
        self._visit_any = [c.visit_any for c in concerns if hasattr(c, "visit_any")]
        self._after_leave_any = [c.after_leave_any for c in reversed(concerns) if hasattr(c, "after_leave_any")]
        self._left = [c.left for c in concerns if hasattr(c, "left")]

    def on_visit(self, node) -> bool:
        if id(node) in self._replaced:
            return False
        for visit in self._visit_any:
            visit(node)
        return self._scope_visit(node)

    def on_leave(self, original_node, updated_node):
        replace = self._replaced.get(id(original_node))
        if replace is not None:
            result = replace(original_node, self)
        else:
            result = self._scope_leave(original_node, updated_node)
            for after in self._after_leave_any:
                result = after(original_node, result)
        for left in self._left:
            left(original_node, result)
        return result

    def attach(self, index) -> None:
        self.scope.attach(index)

    def trigger_words(self):
        words = self.scope.trigger_words()
        for concern in self.concerns:
            words = words | frozenset(getattr(concern, "TRIGGER_WORDS", ()))
            if hasattr(concern, "trigger_words"):
                words = words | set(concern.trigger_words())
        return words

    def trigger_state(self):
        return self.scope.trigger_state(), tuple(c.trigger_state() for c in self.concerns
                                                 if hasattr(c, "trigger_state"))
