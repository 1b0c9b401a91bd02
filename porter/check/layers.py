"""Layer-by-layer localisation: every submodule's output, torch against the converted model.

torch side: a forward hook on every named submodule (`named_modules()`; a module
shared under two names is reported under its first) records each call's
output, in the order the calls *finish* — an inner module before the module
that contains it, the order in which a wrong value first appears.

flax side: the converted model keeps torch's attribute names, so the torch path
`stem.0` names the converted object at `stem.layers.0` (nnx.Sequential keeps
its items in `layers`), `blocks.1` the item of an nnx.List, `heads.cls` the
item of an nnx.Dict. What sits there is one of:

- an nnx.Module: the `__call__` that its class uses (the first class of its
  MRO defining `__call__`) is wrapped for the duration of the run, and
  records when called on one of the tracked instances. A re-entrancy guard
  per instance keeps `super().__call__` chains (ChannelsFirstConv ->
  nnx.Conv, whose output is still channels-last) from recording twice;
- a plain callable (a stateless torch layer — ReLU, MaxPool2d, Flatten —
  becomes a function or a `functools.partial` attribute or Sequential item in
  the converted model): the attribute is replaced by a recording wrapper for
  the duration of the run and put back afterwards;
- nothing: the torch module has no counterpart (reported, not compared).

The flax side must run eagerly (no jit) for this, which the check does.
`nnx.capture(..., method_outputs=nnx.Intermediate)` (flax 0.12) was not used:
it instruments only methods a class defines itself, records a super() chain
twice, loses the order across modules, and does not see function layers.

Calls are matched by (path, k-th call), so a module called twice (LeNet's
`pool`) gives two rows. Rows are listed in torch's completion order; the
first whose output is out of tolerance is the first divergence.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from porter.weights.arrays import to_numpy

MISSING = object()


# ---------------------------------------------------------------- captured calls


@dataclass
class Call:
    path: str
    index: int  # 0 for the first call of this module, 1 for the second, ...
    leaves: list[tuple[str, np.ndarray]]  # the outputs
    obj: Any = None
    inputs: list[tuple[str, np.ndarray]] = field(default_factory=list)
    args: tuple[tuple, dict] | None = None  # torch side: the call's (args, kwargs), arrays as numpy


@dataclass
class LayerRow:
    order: int
    path: str
    call: int
    torch_class: str
    flax_class: str
    shape: tuple[int, ...] | None
    max_abs: float
    rel: float
    status: str  # "ok", "FAIL", "not compared", "flax only"
    note: str = ""
    calls: int = 1  # how many times torch called this module (to show "call 2/2")
    input_rel: float | None = None  # worst input difference (None: not compared)
    input_ok: bool | None = None
    local_rel: float | None = None  # the converted module fed torch's own input (None: not rerun)
    local_ok: bool | None = None

    @property
    def compared(self) -> bool:
        return self.status in ("ok", "FAIL")

    @property
    def label(self) -> str:
        return self.path if self.calls == 1 else f"{self.path} (call {self.call + 1}/{self.calls})"


@dataclass
class Divergence:
    row: LayerRow
    torch_where: list[str] = field(default_factory=list)
    flax_where: list[str] = field(default_factory=list)
    explanation: str = ""

    def format(self) -> list[str]:
        r = self.row
        lines = [f"first divergence: {r.label}  max_abs {r.max_abs:.3g}  rel {r.rel:.3g}"
                 + (f"  ({r.note})" if r.note and not self.explanation else "")]
        if self.explanation:
            lines.append(f"    {self.explanation}")
        lines += [f"    original:  {w}" for w in self.torch_where]
        lines += [f"    converted: {w}" for w in self.flax_where]
        return lines


@dataclass
class LayerReport:
    rows: list[LayerRow] = field(default_factory=list)
    first: Divergence | None = None  # the first module whose output is out of tolerance
    culprit: Divergence | None = None  # the first that is out of tolerance on torch's own input
    notes: list[str] = field(default_factory=list)

    @property
    def compared(self) -> list[LayerRow]:
        return [r for r in self.rows if r.compared]

    @property
    def failures(self) -> list[LayerRow]:
        return [r for r in self.rows if r.status == "FAIL"]

    def row(self, path: str, call: int = 0) -> LayerRow:
        return next(r for r in self.rows if r.path == path and r.call == call)

    def format(self, limit: int | None = None) -> list[str]:
        n_cmp, n_fail = len(self.compared), len(self.failures)
        lines = [f"layers: {n_cmp} module calls compared in execution order, {n_fail} out of tolerance"
                 + (f", {len(self.rows) - n_cmp} not compared" if len(self.rows) > n_cmp else "")]
        lines += [f"  {note}" for note in self.notes]
        if self.first is not None:
            lines += ["  " + line for line in self.first.format()]
        elif n_cmp:
            lines.append("  no module output out of tolerance")
        if self.culprit is not None and (self.first is None or self.culprit.row is not self.first.row):
            c = self.culprit.row
            lines.append(f"  first module that differs on torch's own input: {c.label}  local rel {c.local_rel:.3g}")
            lines += [f"      original:  {w}" for w in self.culprit.torch_where]
            lines += [f"      converted: {w}" for w in self.culprit.flax_where]
        if limit == 0:
            return lines
        rows = self.rows if limit is None else self.rows[:limit]
        table = [("#", "module", "torch", "flax", "shape", "max_abs", "rel", "local", "result")]
        for r in rows:
            shape = "-" if r.shape is None else str(tuple(r.shape))
            figures = (f"{r.max_abs:.3g}", f"{r.rel:.3g}") if r.compared else ("-", "-")
            local = "-" if r.local_rel is None else f"{r.local_rel:.3g}" + ("" if r.local_ok else "!")
            verdict = r.status + (f"  {r.note}" if r.note else "")
            if self.first is not None and r is self.first.row:
                verdict += "  <- first"
            table.append((str(r.order), r.label, r.torch_class, r.flax_class, shape, *figures, local, verdict))
        widths = [max(len(t[i]) for t in table) for i in range(8)]
        for t in table:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(t[:8], widths)) + "  " + t[8])
        lines.append("  (rel: the converted model's output against torch's; local: the converted module fed "
                     "torch's own input, ! out of tolerance)")
        if limit is not None and len(self.rows) > limit:
            lines.append(f"  ... {len(self.rows) - limit} more rows")
        return lines


def flatten(obj: Any, name: str = "output") -> list[tuple[str, Any]]:
    """(name, array) leaves of a tensor or nested tuple/list/dict, in order; None and non-arrays dropped."""
    if obj is None:
        return []
    if isinstance(obj, Mapping):
        return [leaf for k, v in obj.items() for leaf in flatten(v, f"{name}[{k!r}]")]
    if isinstance(obj, (tuple, list)):
        return [leaf for i, v in enumerate(obj) for leaf in flatten(v, f"{name}[{i}]")]
    return [(name, obj)] if hasattr(obj, "shape") and hasattr(obj, "dtype") else []


def _snapshot(output: Any, name: str = "output") -> list[tuple[str, np.ndarray]]:
    # Copied now: a later in-place op (ReLU(inplace=True)) would change a torch tensor.
    return [(n, to_numpy(value)) for n, value in flatten(output, name)]


def _snapshot_inputs(args: tuple, kwargs: dict) -> list[tuple[str, np.ndarray]]:
    leaves = [(n, to_numpy(v)) for i, a in enumerate(args) for n, v in flatten(a, f"input[{i}]")]
    return leaves + [(n, to_numpy(v)) for k, a in kwargs.items() for n, v in flatten(a, f"input[{k!r}]")]


def tree_map_arrays(fn: Callable[[Any], Any], obj: Any) -> Any:
    """fn applied to every array leaf of nested tuples/lists/dicts; other leaves kept."""
    if isinstance(obj, Mapping):
        return {k: tree_map_arrays(fn, v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(tree_map_arrays(fn, v) for v in obj) if type(obj) in (tuple, list) else \
            [tree_map_arrays(fn, v) for v in obj]
    return fn(obj) if hasattr(obj, "shape") and hasattr(obj, "dtype") else obj


# ---------------------------------------------------------------- torch


@contextlib.contextmanager
def capture_torch(model: Any) -> Iterator[list[Call]]:
    """Record every submodule call's output (forward hooks) while the block runs."""
    calls: list[Call] = []
    counts: dict[str, int] = {}
    pending: dict[str, list[list[tuple[str, np.ndarray]]]] = {}
    handles = []

    def pre_hook_for(path: str):
        def pre_hook(module, args, kwargs):
            # Before forward: an in-place module would overwrite its input.
            tree = tree_map_arrays(to_numpy, (tuple(args), dict(kwargs)))
            pending.setdefault(path, []).append(tree)
        return pre_hook

    def hook_for(path: str):
        def hook(module, args, output):
            index = counts.get(path, 0)
            counts[path] = index + 1
            stack = pending.get(path)
            tree = stack.pop() if stack else ((), {})
            calls.append(Call(path, index, _snapshot(output), module, _snapshot_inputs(*tree), tree))
        return hook

    for path, module in model.named_modules():
        if path:
            handles.append(module.register_forward_pre_hook(pre_hook_for(path), with_kwargs=True))
            handles.append(module.register_forward_hook(hook_for(path)))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------- flax


def resolve(model: Any, torch_path: str) -> tuple[Any, str, Any]:
    """(parent, attribute, value) of the converted model at a torch module path, value MISSING if absent.

    Items of nnx.List / nnx.Dict are attributes named by their index / key (as
    flax stores them), so one setattr replaces any of them.
    """
    parent, attr, node = None, "", model
    for part in torch_path.split("."):
        if isinstance(node, nnx.Sequential):
            node = node.layers
        if node is MISSING or not hasattr(node, "__dict__"):
            return parent, part, MISSING
        parent, attr = node, part
        node = vars(node).get(part, MISSING)
    return parent, attr, node


def _call_owner(cls: type) -> type | None:
    for klass in cls.__mro__:
        if "__call__" in vars(klass):
            return klass
    return None


@contextlib.contextmanager
def capture_flax(model: Any, torch_paths: list[str]) -> Iterator[tuple[list[Call], dict[str, Any]]]:
    """Record the outputs of the converted model's objects at `torch_paths` while the block runs.

    Yields (calls, found): calls in completion order; found maps each torch path
    to the object there (MISSING if none).
    """
    calls: list[Call] = []
    counts: dict[str, int] = {}
    found: dict[str, Any] = {}
    tracked: dict[int, str] = {}
    active: set[int] = set()
    patched_classes: dict[type, Any] = {}
    patched_attrs: list[tuple[Any, str, Any]] = []

    def record(path: str, output: Any, obj: Any, inputs: list) -> None:
        index = counts.get(path, 0)
        counts[path] = index + 1
        calls.append(Call(path, index, _snapshot(output), obj, inputs))

    def class_wrapper(original: Callable) -> Callable:
        @functools.wraps(original)
        def __call__(self, *args, **kwargs):
            key = id(self)
            path = tracked.get(key)
            if path is None or key in active:
                return original(self, *args, **kwargs)
            inputs = _snapshot_inputs(args, kwargs)
            active.add(key)
            try:
                out = original(self, *args, **kwargs)
            finally:
                active.discard(key)
            record(path, out, self, inputs)
            return out
        return __call__

    def attr_wrapper(fn: Callable, path: str) -> Callable:
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            inputs = _snapshot_inputs(args, kwargs)
            out = fn(*args, **kwargs)
            record(path, out, fn, inputs)
            return out
        return wrapped

    try:
        for path in torch_paths:
            parent, attr, node = resolve(model, path)
            found[path] = node
            if node is MISSING:
                continue
            if isinstance(node, nnx.Module):
                if id(node) in tracked:  # shared: recorded under its first path
                    continue
                tracked[id(node)] = path
                owner = _call_owner(type(node))
                if owner is not None and owner not in patched_classes:
                    patched_classes[owner] = vars(owner)["__call__"]
                    setattr(owner, "__call__", class_wrapper(vars(owner)["__call__"]))
            elif callable(node) and parent is not None:
                patched_attrs.append((parent, attr, node))
                object.__setattr__(parent, attr, attr_wrapper(node, path))
        yield calls, found
    finally:
        for parent, attr, node in reversed(patched_attrs):
            object.__setattr__(parent, attr, node)
        for owner, original in patched_classes.items():
            setattr(owner, "__call__", original)


# ---------------------------------------------------------------- comparison


def _class_name(obj: Any) -> str:
    if obj is MISSING or obj is None:
        return "-"
    if isinstance(obj, functools.partial):
        return f"partial({getattr(obj.func, '__name__', type(obj.func).__name__)})"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return getattr(obj, "__name__", "function")
    if isinstance(obj, (nnx.Module,)) or hasattr(type(obj), "forward"):
        return type(obj).__name__
    return getattr(obj, "__name__", type(obj).__name__)


def compare_layers(torch_calls: list[Call], flax_calls: list[Call], found: dict[str, Any],
                   compare: Callable[..., Any], rtol: float, atol: float) -> LayerReport:
    """Rows in torch's completion order; `compare(kind, name, ref, got, rtol, atol)` -> a Row."""
    report = LayerReport()
    flax_by_key = {(c.path, c.index): c for c in flax_calls}
    torch_counts: dict[str, int] = {}
    for c in torch_calls:
        torch_counts[c.path] = torch_counts.get(c.path, 0) + 1
    seen: set[tuple[str, int]] = set()
    for order, tc in enumerate(torch_calls, 1):
        key = (tc.path, tc.index)
        node = found.get(tc.path, MISSING)
        fc = flax_by_key.get(key)
        base = dict(order=order, path=tc.path, call=tc.index, torch_class=type(tc.obj).__name__,
                    flax_class=_class_name(node), calls=torch_counts[tc.path])
        shape = tuple(tc.leaves[0][1].shape) if len(tc.leaves) == 1 else None
        if node is MISSING:
            report.rows.append(LayerRow(**base, shape=shape, max_abs=np.nan, rel=np.nan,
                                        status="not compared", note="no counterpart in the converted model"))
            continue
        if not callable(node):
            report.rows.append(LayerRow(**base, shape=shape, max_abs=np.nan, rel=np.nan, status="not compared",
                                        note=f"converted model has a {type(node).__name__} there"))
            continue
        if fc is None:
            flax_n = sum(1 for c in flax_calls if c.path == tc.path)
            report.rows.append(LayerRow(**base, shape=shape, max_abs=np.inf, rel=np.inf, status="FAIL",
                                        note=f"the converted model called it {flax_n} time(s)"))
            continue
        seen.add(key)
        report.rows.append(_compare_call(base, tc, fc, compare, rtol, atol))
    torch_keys = {(t.path, t.index) for t in torch_calls}
    for order, fc in enumerate(flax_calls, len(torch_calls) + 1):
        if (fc.path, fc.index) not in seen and (fc.path, fc.index) not in torch_keys:
            report.rows.append(LayerRow(order, fc.path, fc.index, "-", _class_name(found.get(fc.path)), None,
                                        np.inf, np.inf, "FAIL", "called more often in the converted model"))
    report.first = next((Divergence(r) for r in report.rows if r.status == "FAIL"), None)
    return report


def _compare_call(base: dict, tc: Call, fc: Call, compare, rtol: float, atol: float) -> LayerRow:
    t_leaves, f_leaves = tc.leaves, dict(fc.leaves)
    if [n for n, _ in t_leaves] != [n for n, _ in fc.leaves]:
        return LayerRow(**base, shape=None, max_abs=np.inf, rel=np.inf, status="FAIL",
                        note=f"output structure differs: torch {[n for n, _ in t_leaves]}, "
                             f"flax {[n for n, _ in fc.leaves]}")
    worst = None
    for name, ref in t_leaves:
        row = compare("layer", name, ref, f_leaves[name], rtol, atol)
        if worst is None or (not row.ok and worst.ok) or (row.ok == worst.ok and _key(row) > _key(worst)):
            worst = row
    if worst is None:
        return LayerRow(**base, shape=None, max_abs=np.nan, rel=np.nan, status="not compared",
                        note="no array output")
    note = worst.note
    if len(t_leaves) > 1:
        note = f"worst of {len(t_leaves)} outputs: {worst.name}" + (f"; {note}" if note else "")
    input_rel, input_ok = _compare_inputs(tc, fc, compare, rtol, atol)
    if not worst.ok and input_ok is False:
        note = (note + "; " if note else "") + f"its input already differs (rel {input_rel:.3g})"
    return LayerRow(**base, shape=worst.shape, max_abs=worst.max_abs, rel=worst.rel,
                    status="ok" if worst.ok else "FAIL", note=note, input_rel=input_rel, input_ok=input_ok)


def _compare_inputs(tc: Call, fc: Call, compare, rtol: float, atol: float) -> tuple[float | None, bool | None]:
    """Worst rel over the array inputs both sides share by name; (None, None) if none are shared."""
    theirs = dict(fc.inputs)
    rows = [compare("layer input", n, ref, theirs[n], rtol, atol) for n, ref in tc.inputs if n in theirs]
    if not rows:
        return None, None
    return max(_key(r) for r in rows), all(r.ok for r in rows)


def _key(row) -> float:
    return -1.0 if row.rel != row.rel else float(row.rel)  # NaN lowest


def rerun_locally(report: LayerReport, torch_calls: list[Call], flax_model: Any, compare,
                  rtol: float, atol: float, to_jax: Callable[[np.ndarray], Any]) -> None:
    """Feed each converted module torch's own input for that call; fill local_rel/local_ok, then culprit.

    Runs on a clone of the converted model (`nnx.clone`), so batch statistics
    a train-mode rerun updates do not touch the model under check.
    """
    by_key = {(c.path, c.index): c for c in torch_calls}
    clone = nnx.clone(flax_model)
    for row in report.rows:
        tc = by_key.get((row.path, row.call))
        if not row.compared or tc is None or tc.args is None:
            continue
        _, _, node = resolve(clone, row.path)
        if node is MISSING or not callable(node):
            continue
        args, kwargs = tree_map_arrays(to_jax, tc.args)
        try:
            out = node(*args, **kwargs)
        except Exception as exc:  # e.g. a module that needs state its parent sets up
            row.note = (row.note + "; " if row.note else "") + f"rerun on torch's input raised {type(exc).__name__}"
            continue
        got = dict(_snapshot(out))
        names = [n for n, _ in tc.leaves]
        if names != list(got):
            row.local_rel, row.local_ok = float("inf"), False
            continue
        rows = [compare("layer local", n, ref, got[n], rtol, atol) for n, ref in tc.leaves]
        if rows:
            row.local_rel, row.local_ok = max(_key(r) for r in rows), all(r.ok for r in rows)
    report.culprit = next((Divergence(r) for r in report.rows if r.local_ok is False), None)


# ---------------------------------------------------------------- where in the source


def class_site(cls: type) -> str:
    try:
        file = inspect.getsourcefile(cls)
        line = inspect.getsourcelines(cls)[1]
    except (TypeError, OSError):
        return f"class {cls.__qualname__} (source not found)"
    return f"class {cls.__qualname__} at {_short(file)}:{line}"


def _short(file: str | None) -> str:
    if not file:
        return "?"
    path = Path(file)
    parts = path.parts
    if "site-packages" in parts:
        return str(Path(*parts[parts.index("site-packages") + 1:]))
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _is_library(cls: type) -> bool:
    module = getattr(cls, "__module__", "") or ""
    return module.split(".")[0] in ("torch", "flax", "builtins")


@functools.lru_cache(maxsize=256)
def _assignments(cls: type) -> dict[str, tuple[str, int, ast.expr, int]]:
    """attribute -> (file, line, value node) of `self.attr = value` statements in cls's own methods."""
    try:
        file = inspect.getsourcefile(cls)
        lines, start = inspect.getsourcelines(cls)
    except (TypeError, OSError):
        return {}
    try:
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except SyntaxError:
        return {}
    found: dict[str, tuple[str, int, ast.expr, int]] = {}
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        value = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        for target in targets:
            if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                    and target.value.id == "self" and target.attr not in found):
                found[target.attr] = (file, start + node.lineno - 1, value, start)
    return found


def assignment_site(root: Any, path: str, child: Callable[[Any, str], Any]) -> str | None:
    """'file:line' where the module at `path` is created in the user's code, or None.

    Looks for `self.<attr> = ...` in the parent's class (user classes of its MRO);
    for an item of a container (Sequential/ModuleList/ModuleDict and their nnx
    forms) the container's own assignment, narrowed to the item's argument when
    the container is built from a literal.
    """
    parts = path.split(".")
    nodes = [root]
    for part in parts:
        nodes.append(child(nodes[-1], part))
        if nodes[-1] is MISSING:
            return None
    index_chain: list[str] = []
    for depth in range(len(parts), 0, -1):
        parent, attr = nodes[depth - 1], parts[depth - 1]
        for klass in type(parent).__mro__:
            if _is_library(klass):
                continue
            hit = _assignments(klass).get(attr)
            if hit is not None:
                file, line, value, start = hit
                line = _narrow(value, index_chain, start) or line
                return f"{_short(file)}:{line}"
        index_chain.insert(0, attr)
    return None


CONTAINERS = {"Sequential", "ModuleList", "ModuleDict", "List", "Dict"}


def _callee(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _narrow(value: ast.expr, chain: list[str], start: int) -> int | None:
    """Line of the item `chain` inside a literal container expression, if it is literal."""
    line = None
    for item in chain:
        if not (isinstance(value, ast.Call) and _callee(value) in CONTAINERS):
            return line
        args = value.args
        if len(args) == 1 and isinstance(args[0], (ast.List, ast.Tuple)):
            elements: list[ast.expr] | dict[str, ast.expr] = list(args[0].elts)
        elif len(args) == 1 and isinstance(args[0], ast.Dict):
            elements = {k.value: v for k, v in zip(args[0].keys, args[0].values)
                        if isinstance(k, ast.Constant)}
        elif any(isinstance(a, ast.Starred) for a in args):
            return line
        else:
            elements = list(args)
        if isinstance(elements, dict):
            value = elements.get(item)
        else:
            value = elements[int(item)] if item.isdigit() and int(item) < len(elements) else None
        if value is None:
            return line
        line = start + value.lineno - 1
    return line


def torch_child(node: Any, part: str) -> Any:
    modules = getattr(node, "_modules", None)
    if modules is None or part not in modules:
        return MISSING
    return modules[part]


def flax_child(node: Any, part: str) -> Any:
    if isinstance(node, nnx.Sequential):
        node = node.layers
    if not hasattr(node, "__dict__"):
        return MISSING
    return vars(node).get(part, MISSING)


def locate(report: LayerReport, torch_model: Any, flax_model: Any, found: dict[str, Any]) -> None:
    """Fill the first divergence's (and the culprit's) source locations and say what the figures mean.

    When the converted module fed torch's own input agrees but its input
    already differs, the difference arose between modules, in code of the
    enclosing module's forward (or the model's): that forward is located too.
    """
    for div in (report.first, report.culprit):
        if div is not None:
            _where(div, torch_model, flax_model, found)
    first = report.first
    if first is None:
        return
    r = first.row
    local = None if r.local_rel is None else f"local rel {r.local_rel:.3g}"
    if r.local_ok is False:
        first.explanation = (f"fed torch's own input, the converted module still differs ({local}): "
                             f"the module itself computes differently")
    elif r.input_ok is False:
        parent = r.path.rsplit(".", 1)[0] if "." in r.path else ""
        name = parent or "the model"
        first.explanation = ((f"fed torch's own input it agrees ({local}); " if local else "")
                             + f"its input already differs (rel {r.input_rel:.3g}) while every module before it "
                             f"agrees: the difference comes from code between modules, in the forward of {name}")
        t_parent = _enclosing(torch_model, parent, torch_child)
        f_parent = _enclosing(flax_model, parent, flax_child)
        first.torch_where.append(f"{name}: {method_site(type(t_parent), 'forward')}")
        if f_parent is not MISSING:
            first.flax_where.append(f"{name}: {method_site(type(f_parent), '__call__')}")
    elif r.local_ok:
        first.explanation = (f"fed torch's own input it agrees ({local}) and its input is within tolerance: "
                             f"rounding differences from earlier layers, amplified here")


def _where(div: Divergence, torch_model: Any, flax_model: Any, found: dict[str, Any]) -> None:
    path = div.row.path
    t_node = torch_model.get_submodule(path)
    t_site = assignment_site(torch_model, path, torch_child)
    div.torch_where = [f"{path}: {class_site(type(t_node))}" + (f", assigned at {t_site}" if t_site else "")]
    f_node = found.get(path, MISSING)
    if f_node is not MISSING:
        f_site = assignment_site(flax_model, path, flax_child)
        what = class_site(type(f_node)) if isinstance(f_node, nnx.Module) else _class_name(f_node)
        div.flax_where = [f"{_flax_path(flax_model, path)}: {what}" + (f", assigned at {f_site}" if f_site else "")]


def _enclosing(root: Any, path: str, child: Callable[[Any, str], Any]) -> Any:
    """The nearest module at or above `path` that has its own forward code (skips containers)."""
    parts = path.split(".") if path else []
    nodes = [root]
    for part in parts:
        nodes.append(child(nodes[-1], part))
        if nodes[-1] is MISSING:
            return MISSING
    for node in reversed(nodes):
        if not _is_library(type(node)):
            return node
    return root


def method_site(cls: type, name: str) -> str:
    for klass in cls.__mro__:
        if name in vars(klass):
            try:
                file = inspect.getsourcefile(vars(klass)[name])
                line = inspect.getsourcelines(vars(klass)[name])[1]
            except (TypeError, OSError):
                break
            return f"{klass.__qualname__}.{name} at {_short(file)}:{line}"
    return f"{cls.__qualname__}.{name} (source not found)"


def _flax_path(model: Any, torch_path: str) -> str:
    out, node = [], model
    for part in torch_path.split("."):
        if isinstance(node, nnx.Sequential):
            out.append("layers")
            node = node.layers
        out.append(part)
        node = vars(node).get(part, MISSING) if hasattr(node, "__dict__") else MISSING
    return ".".join(out)
