"""Plan a load before touching any data: which checkpoint key goes where, and what does not fit.

Both the in-memory loader (`load_torch_state_dict`) and the streaming
converter (`porter weights`) plan from shapes and dtypes alone, so strict mode
fails before anything is loaded or written.

Targets (what a torch key may load into) come from a model
(`targets_from_model`: exact, through `build_mapping`) or, without one, from
the key names and shapes (`porter.weights.guess.guess_targets`).

Prefixes: checkpoints of wrapped models carry the wrapper's name (`module.`
from DataParallel/DDP, `_orig_mod.` from torch.compile, `model.` from
training frameworks). With `strip`/`add` given, exactly those are applied
(strip first, each prefix at most once, in the order given). Otherwise
("auto"), with a model porter strips or adds one of the known prefixes when
that makes more keys match (repeatedly, so `module._orig_mod.` goes too);
without a model it strips `module.` and `_orig_mod.` when every key has them.
The report says what was done.

Tied weights:
- in the model, one variable reachable under two torch names (say
  `self.head.weight = self.embed.weight` kept as one shared `nnx.Param`): it
  is loaded once, from the first of its keys in the checkpoint; the others
  must hold the same values (checked when read) and are reported as tied; a
  key absent from the checkpoint is not missing when its variable is loaded
  through another (safetensors files store a tied tensor once).
- in the checkpoint, a key that is the same tensor as another (torch.save
  keeps the sharing) and has no variable of its own in the model (a converted
  model that computes the head from the embedding, `embed.attend(h)`): it is
  tied, not unexpected; the one variable is loaded once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from porter.weights.layouts import Layout
from porter.weights.report import LoadReport, ShapeMismatch

KNOWN_PREFIXES = ("module.", "_orig_mod.", "model.")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # never part of a model: stripped even without one


@dataclass(frozen=True)
class Target:
    """A torch key and the flax variable it loads into."""

    torch_key: str
    flax_path: tuple[Any, ...]
    layout: Layout
    flax_shape: tuple[int, ...] | None  # None: whatever the checkpoint's shape becomes (no model)
    dtype: np.dtype | None = None  # the model variable's dtype; None without a model
    persistent: bool = True
    group: Any = None  # the variable's identity: targets with one group are tied in the model
    rule_id: str | None = None
    how: str = "model"  # "model" | "pattern" | "guess" | "kept"
    note: str = ""
    variable: Any = None  # the nnx.Variable (model mode)

    @property
    def flax_key(self) -> str:
        return ".".join(str(p) for p in self.flax_path)

    @property
    def torch_shape(self) -> tuple[int, ...] | None:
        if self.flax_shape is None:
            return None
        return tuple(self.layout.to_torch(np.empty(self.flax_shape, dtype=np.int8)).shape)


@dataclass(frozen=True)
class KeyMeta:
    shape: tuple[int, ...]
    dtype: np.dtype
    alias_of: str | None = None  # same tensor as this earlier checkpoint key

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass
class PlanItem:
    source_key: str  # as in the checkpoint
    key: str  # after prefix handling
    target: Target
    meta: KeyMeta
    tied_keys: list[str] = field(default_factory=list)  # checkpoint keys of the same model variable to compare

    @property
    def flax_shape(self) -> tuple[int, ...]:
        return self.target.flax_shape if self.target.flax_shape is not None else \
            self.target.layout.flax_shape(self.meta.shape)

    def out_dtype(self, policy: str) -> np.dtype:
        if policy == "model" and self.target.dtype is not None:
            return np.dtype(self.target.dtype)
        return np.dtype(self.meta.dtype)


@dataclass
class Plan:
    items: list[PlanItem]
    report: LoadReport
    renamed: dict[str, str] = field(default_factory=dict)  # checkpoint key -> key after prefix handling


def targets_from_model(model: Any) -> tuple[dict[str, Target], dict[str, str]]:
    """({torch key: Target}, {ignored torch key: rule id}) through the model's structure."""
    from flax import nnx

    from porter.weights.mapping import build_mapping
    from porter.weights.writers import STATE_FILTER

    mapping = build_mapping(model)
    canonical = {id(var): path for path, var in nnx.to_flat_state(nnx.state(model, STATE_FILTER))}
    targets = {}
    for key, entry in mapping.entries.items():
        raw = entry.variable.get_raw_value()
        targets[key] = Target(
            torch_key=key, flax_path=tuple(canonical.get(id(entry.variable), entry.nnx_path)),
            layout=entry.layout, flax_shape=entry.flax_shape, dtype=np.dtype(raw.dtype),
            persistent=entry.persistent, group=id(entry.variable), rule_id=entry.rule_id, how="model",
            variable=entry.variable)
    return targets, dict(mapping.ignored)


def meta_of(value: Any) -> KeyMeta:
    """KeyMeta of a torch tensor or numpy array (dtype as porter reads it)."""
    from porter.weights.arrays import is_torch_tensor

    if is_torch_tensor(value):
        from porter.weights.readers import _torch_np_dtype

        return KeyMeta(tuple(value.shape), _torch_np_dtype(value.dtype))
    array = np.asarray(value)
    return KeyMeta(tuple(array.shape), array.dtype)


def identity_of(value: Any) -> tuple | None:
    """Two values with the same identity are the same tensor (torch tensors sharing storage, or one array)."""
    from porter.weights.arrays import is_torch_tensor

    if is_torch_tensor(value):
        return (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), value.stride(),
                value.dtype)
    if isinstance(value, np.ndarray):
        return ("np", value.__array_interface__["data"][0], value.shape, value.strides, value.dtype.str)
    return None


def rename_keys(keys: Iterable[str], *, strip: Iterable[str] | None, add: str | None,
                targets: dict[str, Target] | None) -> tuple[dict[str, str], list[str]]:
    """({checkpoint key: key}, notes) after prefix handling (see the module docstring)."""
    keys = list(keys)
    names = {k: k for k in keys}
    notes: list[str] = []

    def strip_prefix(prefix: str, current: dict[str, str]) -> dict[str, str]:
        return {k: (v[len(prefix):] if v.startswith(prefix) else v) for k, v in current.items()}

    if strip is not None or add:
        for prefix in strip or ():
            count = sum(v.startswith(prefix) for v in names.values())
            names = strip_prefix(prefix, names)
            notes.append(f"stripped prefix {prefix!r} from {count} key(s)" if count
                         else f"no key starts with {prefix!r} (nothing stripped)")
        if add:
            names = {k: add + v for k, v in names.items()}
            notes.append(f"added prefix {add!r} to {len(names)} key(s)")
    elif targets is not None:
        wanted = set(targets)
        best = (sum(v in wanted for v in names.values()), 0, (), None)
        for strips in itertools.chain.from_iterable(
                itertools.product(KNOWN_PREFIXES, repeat=n) for n in range(0, 4)):
            stripped, useless = names, False
            for prefix in strips:
                if not any(v.startswith(prefix) for v in stripped.values()):
                    useless = True  # a step that strips nothing: a shorter sequence covers it
                    break
                stripped = strip_prefix(prefix, stripped)
            if useless:
                continue
            for added in (None, *KNOWN_PREFIXES):
                candidate = {k: added + v for k, v in stripped.items()} if added else stripped
                score = sum(v in wanted for v in candidate.values())
                cost = len(strips) + (added is not None)
                if score > best[0] or (score == best[0] and cost < best[1]):
                    best = (score, cost, strips, added)
        _, _, strips, added = best
        auto = "(automatic: the keys match the model then; --strip-prefix/--add-prefix to choose)"
        for prefix in strips:
            count = sum(v.startswith(prefix) for v in names.values())
            names = strip_prefix(prefix, names)
            notes.append(f"stripped prefix {prefix!r} from {count} key(s) {auto}")
        if added:
            names = {k: added + v for k, v in names.items()}
            notes.append(f"added prefix {added!r} to {len(names)} key(s) {auto}")
    else:
        for prefix in WRAPPER_PREFIXES:
            if keys and all(v.startswith(prefix) for v in names.values()):
                names = strip_prefix(prefix, names)
                notes.append(f"stripped prefix {prefix!r} from {len(names)} key(s) (automatic: a wrapper's name)")
    clashes: dict[str, list[str]] = {}
    for k, v in names.items():
        clashes.setdefault(v, []).append(k)
    clashes = {v: ks for v, ks in clashes.items() if len(ks) > 1}
    if clashes:
        v, ks = next(iter(clashes.items()))
        raise ValueError(f"after prefix handling, checkpoint keys {', '.join(ks)} would all be {v!r}; "
                         f"choose the prefixes with --strip-prefix/--add-prefix (strip_prefix=/add_prefix=)")
    return names, notes


def plan_load(targets: dict[str, Target], ignored: dict[str, str], metas: dict[str, KeyMeta], *,
              model_name: str, strip: Iterable[str] | None = None, add: str | None = None,
              with_model: bool = True) -> Plan:
    """Match checkpoint keys (with their shapes) to targets; the report lists every problem."""
    renamed, notes = rename_keys(metas, strip=strip, add=add, targets=targets if with_model else None)
    report = LoadReport(model=model_name, prefix=notes, mapped_by="model" if with_model else "names and shapes")
    by_key = {renamed[k]: k for k in metas}
    items: list[PlanItem] = []
    loaded_group: dict[Any, PlanItem] = {}
    pending_alias: list[tuple[str, str]] = []
    for source_key, meta in metas.items():
        key = renamed[source_key]
        target = targets.get(key)
        if target is None:
            if key in ignored:
                report.ignored.append(key)
            elif meta.alias_of is not None:
                pending_alias.append((key, renamed[meta.alias_of]))
            else:
                report.unexpected.append(key)
                report.unexpected_shapes[key] = meta.shape
            continue
        if target.flax_shape is not None:
            after = _after_layout(target.layout, meta.shape)
            if after != target.flax_shape:
                report.mismatched.append(ShapeMismatch(
                    key, meta.shape, after if after is not None else (), target.flax_shape,
                    target.torch_shape or (), target.layout.name, target.flax_key))
                continue
        elif _after_layout(target.layout, meta.shape) is None:
            report.mismatched.append(ShapeMismatch(key, meta.shape, (), (), (), target.layout.name, target.flax_key))
            continue
        first = loaded_group.get(target.group) if target.group is not None else None
        if first is not None:
            report.tied[key] = first.key
            if meta.alias_of is None or renamed[meta.alias_of] != first.key:
                first.tied_keys.append(source_key)
            continue
        item = PlanItem(source_key, key, target, meta)
        if target.group is not None:
            loaded_group[target.group] = item
        items.append(item)
    loaded_keys = {item.key for item in items}
    for key, alias in pending_alias:
        if alias in loaded_keys or alias in report.tied:
            report.tied[key] = alias
        else:
            report.unexpected.append(key)
            report.unexpected_shapes[key] = metas[by_key[key]].shape
    for key, target in targets.items():
        if key in by_key or not target.persistent:
            continue
        if target.group is not None and target.group in loaded_group:
            report.tied[key] = loaded_group[target.group].key
            continue
        report.missing.append(key)
        report.missing_info[key] = f"-> {target.flax_key}, torch shape {target.torch_shape}"
    for item in items:
        if item.meta.alias_of is not None and renamed[item.meta.alias_of] in loaded_keys:
            report.untied[item.key] = renamed[item.meta.alias_of]
        report.loaded.append(item.key)
        if item.target.layout.name != "same":
            report.transposed[item.key] = item.target.layout.name
        if item.target.how in ("guess", "kept", "pattern"):
            report.guessed[item.key] = f"{item.target.how}: -> {item.target.flax_key}" + \
                (f" ({item.target.note})" if item.target.note else "")
    return Plan(items, report, renamed)


def _after_layout(layout: Layout, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    try:
        return tuple(layout.flax_shape(shape))
    except (ValueError, IndexError, np.exceptions.AxisError):
        return None

