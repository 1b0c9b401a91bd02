"""The rewrite as a list of concerns dispatched by one traversal.

A concern is a plain class (it subclasses no other concern) built with the shared scope (`scope`: where
the traversal is, ConversionContext as `scope.ctx`, report/record/mentions), naming what it reacts to:

- `TRIGGER_WORDS` (and `trigger_words()`/`trigger_state()` when they grow with what it has seen): the
  identifiers without which a statement is skipped unvisited (source_index.Prefilter);
- hooks by node type: `visit_X(node)`, `after_visit_X(node)`, `leave_X(original, updated)`,
  `after_leave_X(original, updated)`;
- hooks for every node, where a concern notes something about most node types (module structure):
  `visit_any(node)` before the scope's visit (and every node-type hook), `after_visit_any(node)` after it
  (False: the children are skipped), and `after_leave_any(original, result)`, after the scope's leave,
  returning the result; and `left(original, result)`, called once a
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
and their after_ hooks do not run; the after_ hooks of the concerns before it do. The scope
(passes/scope.py) is the traversal's innermost layer: its own hooks (entering and leaving classes and
functions) run after every concern's visit_X and leave_X, before their after_ hooks. Each node type's hooks are looked up once, in a table.
"""

from __future__ import annotations

import libcst as cst

from porter.convert.source_index import WordSets
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
        self.classes = (type(scope), *map(type, concerns))

    def __missing__(self, node_type: type):
        name = f"{self.kind}_{node_type.__name__}"
        own = hook(type(self.scope), name)
        own = own.__get__(self.scope) if own is not None else None
        concerns = self.concerns
        layers = [(getattr(concerns[i], name) if before else None, getattr(concerns[i], f"after_{name}") if after
                   else None) for i, before, after in _hooked(self.classes, name)]
        if not layers:
            function = own
        elif own is None and len(layers) == 1 and None in layers[0]:  # one hook: called as it is (one call less
            function = layers[0][0] or layers[0][1]  # per node; the scope unwraps a Final it returns)
        elif self.kind == "visit":
            function = _visit_function(layers, own)
        else:
            function = _leave_function(layers, own)
        self[node_type] = function
        return function


_HOOKED: dict[tuple, tuple[tuple[int, bool, bool], ...]] = {}


def _hooked(classes: tuple[type, ...], name: str) -> tuple[tuple[int, bool, bool], ...]:
    """(index of the concern, has `name`, has `after_name`) for each concern with either: looked up once per
    list of concern classes, not once per file (the hooks are the classes' methods)."""
    key = (classes, name)
    found = _HOOKED.get(key)
    if found is None:
        found = _HOOKED[key] = tuple(
            (i, hasattr(cls, name), hasattr(cls, f"after_{name}")) for i, cls in enumerate(classes[1:])
            if hasattr(cls, name) or hasattr(cls, f"after_{name}"))
    return found


def _visit_function(layers, own):
    befores = [before for before, _ in layers if before is not None]
    if own is not None:
        befores.append(own)
    afters = [after for _, after in reversed(layers) if after is not None]
    hooks = befores + afters

    def visit(node) -> bool:
        go = True
        for hook in hooks:
            if hook(node) is False:
                go = False
        return go
    return visit


def _leave_function(layers, own):
    # (index of the layer, hook): an after_ hook runs when the leave did not end at or before its layer
    befores = [(i, before) for i, (before, _) in enumerate(layers) if before is not None]
    afters = [(i, after) for i, (_, after) in reversed(list(enumerate(layers))) if after is not None]
    everything = len(layers)

    def leave(original, updated):
        ended = everything
        for i, before in befores:
            updated = before(original, updated)
            if type(updated) is Final:
                updated, ended = updated.node, i
                break
        else:
            if own is not None:
                updated = own(original, updated)
        for i, after in afters:
            if i < ended:
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
        self._after_visit_any = [c.after_visit_any for c in reversed(concerns) if hasattr(c, "after_visit_any")]
        self._after_leave_any = [c.after_leave_any for c in reversed(concerns) if hasattr(c, "after_leave_any")]
        self._left = [c.left for c in concerns if hasattr(c, "left")]
        self._words = None  # (the scope's words, those and every concern's TRIGGER_WORDS)
        self._trigger_words = [c.trigger_words for c in concerns if hasattr(c, "trigger_words")]
        self._trigger_states = [c.trigger_state for c in concerns if hasattr(c, "trigger_state")]

    def on_visit(self, node) -> bool:
        if id(node) in self._replaced:
            return False
        for visit in self._visit_any:
            visit(node)
        go = self._scope_visit(node)
        for after in self._after_visit_any:
            if after(node) is False:
                go = False
        return go

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

    def close(self) -> None:
        """The traversal is over: the scope and the concerns drop what they hold (using them again fails).
        They refer to each other in cycles (the scope's hook tables hold the concerns' methods, a concern holds
        the scope), which reference counting never frees; the cyclic collector would, walking every node
        of both trees they hold (a tenth of a conversion). Emptied, they hold no node."""
        for part in (self.scope, *self.concerns):
            vars(part).clear()

    def trigger_words(self):
        base = self.scope.trigger_words()  # the same object while the scope's words do not change
        if self._words is None or self._words[0] is not base:
            self._words = (base, base.union(*(getattr(c, "TRIGGER_WORDS", ()) for c in self.concerns)))
        return WordSets((self._words[1], *(concern_words() for concern_words in self._trigger_words)))

    def trigger_state(self):
        return self.scope.trigger_state(), [state() for state in self._trigger_states]
