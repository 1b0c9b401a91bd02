"""Which torch state_dict key is which variable of a converted Flax NNX model.

`build_mapping(model)` walks the NNX graph (`nnx.graph.get_node_impl(node)
.node_dict(node)`, the same children `nnx.iter_graph` and `nnx.state` see) and
names every variable the way torch's `state_dict()` would name the original:

- attribute names are kept; `nnx.List` items are `name.0`, `nnx.Dict` items
  `name.key`;
- `nnx.Sequential` hides its `layers` attribute: torch `seq.0.weight` is the
  NNX path `('seq', 'layers', 0, 'kernel')`;
- a module whose class (or a base class) has a layer rule with a weight layout
  (`load_rules().layouts_by_target()`) names its variables by the torch names
  in the rule and converts them with the rule's layout (`weight` -> `kernel`,
  transposed); a variable the layout names but the module lacks (`bias` with
  `use_bias=False`) is simply absent, as in torch; the rule's
  `ignored_weights` (`num_batches_tracked`) are accepted and dropped;
- any other variable (`nnx.Param`, a converted `register_buffer`'s `Buffer`,
  `nnx.BatchStat`, ...) keeps its attribute name and layout ("same").

RNG state (`nnx.Rngs`, `nnx.RngStream`, `nnx.RngState` variables) and
per-call variables (`nnx.Cache`, `nnx.Intermediate`) have no torch
counterpart and are skipped. Like torch's `state_dict()`, a variable shared
between two places appears under both names.

A class maps to a rule target by walking its MRO: a class defined in flax is
`"nnx." + name`, any other `"emitted." + name` (the helpers porter writes into
the converted file, e.g. `ChannelsFirstConv`); the first class with a rule
wins, so a user subclass of a converted layer keeps its layer's layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flax import nnx
from flax.nnx import graph

from porter.rules.loader import Rule, load_rules
from porter.weights.layouts import LAYOUTS, Layout

# Variable types that never correspond to a torch parameter or buffer.
SKIPPED_VARIABLES: tuple[type, ...] = (nnx.RngState, nnx.Cache, nnx.Intermediate)
SKIPPED_NODES: tuple[type, ...] = (nnx.Rngs, nnx.RngStream)

NnxPath = tuple[Any, ...]


class MappingError(ValueError):
    """The model cannot be named like a torch state_dict (two variables, one key)."""


@dataclass(frozen=True, eq=False)
class WeightEntry:
    """One torch state_dict key and the NNX variable it loads into."""

    torch_key: str
    nnx_path: NnxPath
    layout: Layout
    variable: nnx.Variable
    rule_id: str | None = None  # the layer rule that named it, None for plain attributes

    @property
    def persistent(self) -> bool:
        """False for `Buffer(..., persistent=False)`: not expected in a state_dict."""
        return bool(getattr(self.variable, "persistent", True))

    @property
    def transposed(self) -> bool:
        return self.layout.name != "same"

    @property
    def flax_shape(self) -> tuple[int, ...]:
        return tuple(self.variable.shape)

    @property
    def torch_shape(self) -> tuple[int, ...]:
        """The shape torch has for this key (the variable's shape through layout.to_torch)."""
        return torch_shape_of(self.layout, self.flax_shape)

    @property
    def nnx_name(self) -> str:
        return dotted(self.nnx_path)


@dataclass
class WeightMapping:
    entries: dict[str, WeightEntry] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)  # torch key -> rule id that ignores it

    def __iter__(self):
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key: str) -> WeightEntry:
        return self.entries[key]

    def __contains__(self, key: object) -> bool:
        return key in self.entries


def dotted(path: NnxPath) -> str:
    return ".".join(str(part) for part in path)


def torch_shape_of(layout: Layout, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(layout.to_torch(np.empty(flax_shape, dtype=np.int8)).shape)


def rule_target(cls: type) -> str:
    """'nnx.Linear' for flax classes, 'emitted.ChannelsFirstConv' for everything else."""
    module = getattr(cls, "__module__", "") or ""
    prefix = "nnx." if module == "flax" or module.startswith("flax.") else "emitted."
    return prefix + cls.__name__


def rule_for(cls: type, rules: dict[str, Rule] | None = None) -> Rule | None:
    """The layout rule of the first class in cls's MRO that has one."""
    rules = load_rules().layouts_by_target() if rules is None else rules
    for klass in cls.__mro__:
        if klass is nnx.Module or klass is object:
            break
        rule = rules.get(rule_target(klass))
        if rule is not None:
            return rule
    return None


def _children(node: Any) -> dict[Any, Any]:
    impl = graph.get_node_impl(node)
    if impl is None:
        return {}
    return {
        key: value
        for key, value in impl.node_dict(node).items()
        if not (isinstance(key, str) and key.startswith("_pytree__"))
    }


def _is_array_variable(var: nnx.Variable) -> bool:
    if isinstance(var, SKIPPED_VARIABLES):
        return False
    return hasattr(var.get_raw_value(), "shape")


def build_mapping(model: nnx.Module) -> WeightMapping:
    """torch state_dict key -> WeightEntry(torch_key, nnx_path, layout, variable) for `model`."""
    rules = load_rules().layouts_by_target()
    mapping = WeightMapping()

    def add(torch_parts: tuple[str, ...], nnx_path: NnxPath, layout: Layout, var: nnx.Variable,
            rule_id: str | None) -> None:
        key = ".".join(torch_parts)
        previous = mapping.entries.get(key)
        if previous is not None and previous.variable is not var:
            raise MappingError(
                f"two variables of the model would both be torch key {key!r}: "
                f"{previous.nnx_name} and {dotted(nnx_path)}"
            )
        mapping.entries[key] = WeightEntry(key, nnx_path, layout, var, rule_id)

    def walk(node: Any, torch_parts: tuple[str, ...], nnx_path: NnxPath, stack: tuple[int, ...]) -> None:
        if node is None or isinstance(node, SKIPPED_NODES) or id(node) in stack:
            return
        stack = (*stack, id(node))
        children = _children(node)
        covered: set[Any] = set()
        rule = rule_for(type(node), rules) if isinstance(node, nnx.Module) else None
        if rule is not None:
            for torch_name, weight_map in rule.layout.items():
                covered.add(weight_map.flax_name)
                var = children.get(weight_map.flax_name)
                if isinstance(var, nnx.Variable) and _is_array_variable(var):
                    add((*torch_parts, torch_name), (*nnx_path, weight_map.flax_name),
                        LAYOUTS[weight_map.layout], var, rule.id)
            for ignored in rule.ignored_weights:
                mapping.ignored[".".join((*torch_parts, ignored))] = rule.id
        hide = isinstance(node, nnx.Sequential)
        for key, child in children.items():
            if key in covered:
                continue
            if isinstance(child, nnx.Variable):
                if _is_array_variable(child):
                    add((*torch_parts, str(key)), (*nnx_path, key), LAYOUTS["same"], child, None)
            elif child is not None and graph.is_node(child):
                sub_parts = torch_parts if (hide and key == "layers") else (*torch_parts, str(key))
                walk(child, sub_parts, (*nnx_path, key), stack)

    walk(model, (), (), ())
    return mapping
