"""Map a torch state_dict without the converted model: by key names and shapes, with the rules' layouts.

Keys are grouped by module (`encoder.layers.0.fc.weight` -> module
`encoder.layers.0.fc`, name `weight`). A layer rule with a weight layout
(rules/torch_nn.toml) fits a module when the rule names every one of the
module's keys (its `layout` names plus its `ignored_weights`), every array
has the rank torch gives that parameter (read off the torch layers built from
the rule's own examples, e.g. `nn.Linear(784, 128)`: weight 2-D, bias 1-D)
and can take its layout, and every vector is as long as the weight's first
dimension (bias, running statistics).

- one outcome (the rules that fit all give the same flax names and layouts,
  as BatchNorm1d and BatchNorm2d do): "pattern";
- several (a lone 2-D `weight`: Linear without bias, transposed, or
  Embedding, kept): "guess": an embedding-like module name (`embed`, `wte`,
  `wpe`, `tok`, `vocab`, `word`, `position`) picks Embedding, anything else
  the most common layer (Linear, then convolutions, then norms); the report
  lists these keys and the alternatives;
- none (plain parameters and buffers, or a layer without a rule): "kept",
  same name and layout.

The flax path is the torch path with the rule's flax names (`fc.weight` ->
`fc.kernel`). What cannot be known without the model is said in the report:
an `nn.Sequential` is `nnx.Sequential` in the converted model, whose layers
live under `layers` (`features.0.weight` is `features.layers.0.kernel` there).
Pass `--model` for the exact mapping.
"""

from __future__ import annotations

import ast
import functools
import re
from typing import Any

from porter.rules.loader import Rule, load_rules
from porter.weights.layouts import LAYOUTS
from porter.weights.plan import KeyMeta, Target

LAYOUT_RANKS = {"matrix_transpose": lambda n: n == 2, "conv_kernel": lambda n: n >= 3, "same": lambda n: True}
EMBEDDING_NAME = re.compile(r"(emb|wte|wpe|tok|vocab|word|position)", re.IGNORECASE)
# Which layer a guess prefers when several fit (lower first): the common ones.
PREFERENCE = {"nnx.Linear": 0, "emitted.ChannelsFirstConv": 1, "nnx.LayerNorm": 2, "nnx.BatchNorm": 2,
              "nnx.RMSNorm": 3, "nnx.Embed": 4}


@functools.cache
def example_ranks(rule_id: str) -> dict[str, int]:
    """{torch parameter name: rank} of the torch layers built from the rule's examples ({} if none builds)."""
    import torch

    rule = next(r for r in load_rules().rules if r.id == rule_id)
    ranks: dict[str, int] = {}
    for example in rule.examples:
        try:
            call = ast.parse(example.before.strip(), mode="eval").body
            if not isinstance(call, ast.Call):
                continue
            name = ast.unparse(call.func).split(".")[-1]
            args = [ast.literal_eval(a) for a in call.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
            layer = getattr(torch.nn, name)(*args, **kwargs)
        except Exception:  # an example with names (nn.Conv2d(c, c, k)) or not a layer: skip it
            continue
        for key, tensor in layer.state_dict().items():
            if "." not in key:
                ranks[key] = tensor.dim()
    return ranks


@functools.cache
def target_ranks(target: str) -> dict[str, int]:
    """example_ranks of every rule with this target: the fallback for names a rule's own examples lack
    (InstanceNorm1d's example has no affine weights; InstanceNorm2d's does)."""
    ranks: dict[str, int] = {}
    for rule in load_rules().rules:
        if rule.target == target and rule.layout:
            for name, rank in example_ranks(rule.id).items():
                ranks.setdefault(name, rank)
    return ranks


def _flax_path(module: str, name: str) -> tuple[Any, ...]:
    parts = [*module.split("."), name] if module else [name]
    return tuple(int(p) if p.isdigit() else p for p in parts)


def _fits(rule: Rule, names: dict[str, tuple[int, ...]]) -> bool:
    allowed = set(rule.layout) | set(rule.ignored_weights)
    if not set(names) <= allowed or not set(names) & set(rule.layout):
        return False
    ranks = {**target_ranks(rule.target), **example_ranks(rule.id)}
    lead = names["weight"][:1] if "weight" in names else None
    for torch_name, shape in names.items():
        weight_map = rule.layout.get(torch_name)
        if weight_map is None:
            continue
        if not LAYOUT_RANKS.get(weight_map.layout, lambda n: True)(len(shape)):
            return False
        if torch_name in ranks and ranks[torch_name] != len(shape):
            return False
        if torch_name != "weight" and len(shape) == 1 and lead and shape != lead:
            return False
    return True


def guess_targets(metas: dict[str, KeyMeta]) -> tuple[dict[str, Target], dict[str, str]]:
    """({torch key: Target}, {ignored key: rule id}) guessed from names and shapes (see module docstring)."""
    rules = [rule for rule in load_rules().rules if rule.layout]
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, meta in metas.items():
        module, _, name = key.rpartition(".")
        modules.setdefault(module, {})[name] = meta.shape
    targets: dict[str, Target] = {}
    ignored: dict[str, str] = {}
    for module, names in modules.items():
        fitting = [rule for rule in rules if _fits(rule, names)]
        outcomes: dict[tuple, list[Rule]] = {}
        for rule in fitting:
            outcome = tuple(sorted((n, rule.layout[n].flax_name, rule.layout[n].layout)
                                   for n in names if n in rule.layout))
            outcomes.setdefault(outcome, []).append(rule)
        if not outcomes:
            for name in names:
                key = f"{module}.{name}" if module else name
                targets[key] = Target(key, _flax_path(module, name), LAYOUTS["same"], None, how="kept",
                                      note="no layer rule fits; name and layout kept")
            continue
        if len(outcomes) == 1:
            (outcome, chosen_rules), = outcomes.items()
            how = "pattern"
            note = "/".join(sorted({r.source[0].rsplit(".", 1)[-1] for r in chosen_rules}))
        else:
            embedding_like = bool(EMBEDDING_NAME.search(module.rsplit(".", 1)[-1] if module else ""))

            def preference(rules_: list[Rule]) -> int:
                return min(-1 if embedding_like and r.target == "nnx.Embed" else PREFERENCE.get(r.target, 9)
                           for r in rules_)

            ranked = sorted(outcomes.items(), key=lambda kv: (preference(kv[1]), kv[0]))
            outcome, chosen_rules = ranked[0]
            how = "guess"
            chosen = "/".join(sorted({r.source[0].rsplit(".", 1)[-1] for r in chosen_rules}))
            others = "/".join(sorted({r.source[0].rsplit(".", 1)[-1] for _, rs in ranked[1:] for r in rs}))
            note = f"{chosen}, could also be {others}"
        rule = chosen_rules[0]
        for name, flax_name, layout_name in outcome:
            key = f"{module}.{name}" if module else name
            targets[key] = Target(key, _flax_path(module, flax_name), LAYOUTS[layout_name], None,
                                  rule_id=rule.id, how=how, note=note)
        for name in names:
            if name in rule.ignored_weights:
                ignored[f"{module}.{name}" if module else name] = rule.id
    return targets, ignored


def sequential_note(targets: dict[str, Target]) -> str | None:
    """A reminder when paths have numeric parts (nn.Sequential -> nnx.Sequential adds `layers`)."""
    numeric = [t.torch_key for t in targets.values() if any(isinstance(p, int) for p in t.flax_path)]
    if not numeric:
        return None
    return (f"{len(numeric)} key(s) have list indices (e.g. {numeric[0]}): an nn.Sequential becomes an "
            f"nnx.Sequential whose layers live under 'layers' (features.0.kernel is features.layers.0.kernel "
            f"there); pass --model to map them exactly")

