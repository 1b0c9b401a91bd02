"""Builders for training code: torch optimizers -> nnx.Optimizer over an optax
transformation, and the gradient-clipping transform the training pass chains
in front of it.

Rules in rules/torch_optim.toml name `optimizer` as their builder. A rule's
`args` map torch's hyperparameters to the optax factory's keywords (`always`
emits torch's default where optax's differs), `emit` adds fixed keywords, and
anything else the torch call sets must be at its default, as for every rule.
The structure (which factory, weight decay, betas, parameter groups,
inject_hyperparams for a scheduled optimizer, clipping) is here.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from porter.convert.apply import Application, Site, bind
from porter.convert.context import ConversionContext, code_of
from porter.convert.transforms import NO_VALUE, Unsupported, expr, literal
from porter.rules.loader import Rule


@dataclass(frozen=True)
class Optimizer:
    factory: str  # the optax factory (or emitted helper) with torch's update rule
    decoupled: str | None = None  # the factory taking weight_decay when torch's decoupled_weight_decay=True


# A weight_decay the rule's args do not map is torch's L2 form: optax.add_decayed_weights chained before.
OPTIMIZERS = {
    "SGD": Optimizer("optax.sgd"),
    "Adam": Optimizer("optax.adam", decoupled="optax.adamw"),
    "AdamW": Optimizer("optax.adamw"),
    "RMSprop": Optimizer("optax.rmsprop"),
    "Adagrad": Optimizer("adagrad_torch"),
    "Adadelta": Optimizer("optax.adadelta"),
    "Adamax": Optimizer("optax.adamax"),
    "NAdam": Optimizer("nadam_torch", decoupled="nadam_torch"),
    "RAdam": Optimizer("radam_torch", decoupled="radam_torch"),
}
HELPER_FACTORIES = ("adagrad_torch", "nadam_torch", "radam_torch")
OPTIMIZER_FACTORIES = ("configure_optimizers",)  # methods whose optimizer's rate the caller writes (nanoGPT)
# torch arguments the builder maps itself (the rest follow the rule's args)
STRUCTURAL = ("params", "weight_decay", "betas", "decoupled_weight_decay")


def optimizer(rule: Rule, site: Site) -> Application:
    """optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    -> nnx.Optimizer(net, optax.sgd(learning_rate=0.1, momentum=0.9), wrt=nnx.Param)."""
    bound = bind(rule, site.call)
    torch_name = rule.source[0].rsplit(".", 1)[1]
    model, groups, overrides = parameters_of(bound["params"])
    info = site.ctx.optimizers.get(id(site.original))
    # built by a model's configure_optimizers: its caller sets the rate each step (nanoGPT's train.py)
    scheduled = (info is not None and info.scheduled) or site.method in OPTIMIZER_FACTORIES
    if groups is None:
        parts = _transform(rule, torch_name, {**bound, **overrides}, scheduled, site.ctx)
    else:
        width = len(str(len(groups) - 1))
        transforms = []
        for index, (_, overrides) in enumerate(groups):
            group_parts = _transform(rule, torch_name, {**bound, **overrides}, scheduled, site.ctx)
            transforms.append(f'"{str(index).zfill(width)}": {_chain(group_parts)}')
        transforms.append('"frozen": optax.set_to_zero()')
        site.ctx.need_helper("param_group_labels")
        prefixes = ", ".join(f'"{prefix}"' for prefix, _ in groups)
        parts = [f"optax.multi_transform({{{', '.join(transforms)}}}, param_group_labels({prefixes}))"]
    if info is not None and info.clip:
        parts.insert(0, info.clip)
    tx = _chain(parts)
    if info is not None and info.scaler:  # a GradScaler steps it: unscale, skip non-finite steps, adapt the scale
        site.ctx.need_helper("grad_scaler")
        tx = f"grad_scaler({tx}, {info.scaler})"
    return Application(expr(f"nnx.Optimizer({model}, {tx}, wrt=nnx.Param)"))


def _chain(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else f"optax.chain({', '.join(parts)})"


def _transform(rule: Rule, torch_name: str, values: dict, scheduled: bool, ctx: ConversionContext) -> list[str]:
    """The optax transformations, in order, for one parameter group's hyperparameters."""
    spec = OPTIMIZERS[torch_name]
    keywords: list[tuple[str, str]] = []
    for param in rule.signature:
        name = param.name
        if (name in STRUCTURAL and name not in rule.args) or name in rule.drop:
            continue
        given = name in values
        if name not in rule.args:
            if given and not _is_default(param.default, values[name]):
                raise Unsupported(f"{name}={code_of(values[name])} is not supported (only the default {param.default})")
            continue
        mapping = rule.args[name]
        if not given and not mapping.always:
            continue
        if name == "momentum" and given and literal(values[name]) == 0:
            continue  # torch's momentum=0 is no momentum: optax's None
        keywords.append((mapping.keyword, code_of(values[name]) if given else param.default))
    keywords.extend(rule.emit.items())
    if "betas" in values:
        keywords[1:1] = _betas(values["betas"])
    factory = spec.factory
    decay = values.get("weight_decay")
    decay_value = None if decay is None else literal(decay)
    prefix = []
    decoupled = "decoupled_weight_decay" in values and literal(values["decoupled_weight_decay"])
    if decoupled not in (True, False, None):
        raise Unsupported(f"decoupled_weight_decay={code_of(values['decoupled_weight_decay'])} must be a literal")
    if "weight_decay" in rule.args:
        pass  # the factory's own weight_decay (AdamW's decoupled one, Adadelta's L2 one)
    elif decay is not None and decay_value != 0:
        if decoupled:
            factory = spec.decoupled
            keywords.append(("weight_decay", code_of(decay)))
        else:
            prefix.append(f"optax.add_decayed_weights({code_of(decay)})")
    if torch_name == "RMSprop" and scheduled:
        momentum = values.get("momentum")
        if momentum is not None and literal(momentum) != 0:
            raise Unsupported("RMSprop with momentum and a learning-rate scheduler: torch applies the current "
                              "learning rate to the whole momentum buffer, optax.rmsprop to each step's update")
    if factory in HELPER_FACTORIES:
        ctx.need_helper(factory)
    arguments = ", ".join(f"{k}={v}" for k, v in keywords)
    if scheduled:
        return [*prefix, f"optax.inject_hyperparams({factory})({arguments})"]
    return [*prefix, f"{factory}({arguments})"]


def _betas(node: cst.BaseExpression) -> list[tuple[str, str]]:
    value = literal(node)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        pairs = [("b1", value[0]), ("b2", value[1])]
        return [(k, repr(v)) for k, v in pairs if v != {"b1": 0.9, "b2": 0.999}[k]]
    if isinstance(node, (cst.Tuple, cst.List)) and len(node.elements) == 2:
        return [("b1", code_of(node.elements[0].value)), ("b2", code_of(node.elements[1].value))]
    if value is not NO_VALUE:
        raise Unsupported(f"betas={code_of(node)} must be two numbers")
    source = code_of(node)
    return [("b1", f"{source}[0]"), ("b2", f"{source}[1]")]


def _is_default(default: str | None, node: cst.BaseExpression) -> bool:
    if default is None:
        return False
    given = literal(node)
    if given is NO_VALUE:
        return code_of(node) == default
    return given == literal(cst.parse_expression(default))


# ----------------------------------------------------------------------------
# Which model an optimizer trains


def _parameters_call(node: cst.BaseExpression) -> str | None:
    """`net.parameters()` or `list(net.parameters())` -> 'net'."""
    if isinstance(node, cst.Call) and isinstance(node.func, cst.Name) and node.func.value == "list" \
            and len(node.args) == 1 and not node.args[0].keyword:
        node = node.args[0].value
    if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and node.func.attr.value == "parameters" \
            and not node.args:
        return code_of(node.func.value)
    return None


def _dotted(source: str) -> list[str] | None:
    parts = source.split(".")
    return parts if all(p.isidentifier() for p in parts) else None


def parameters_of(node: cst.BaseExpression) -> tuple[str, list[tuple[str, dict]] | None, dict]:
    """The model an optimizer's params argument comes from, its parameter groups, and the
    hyperparameters of a lone group.

    `net.parameters()` -> ('net', None, {}). Groups, `[{'params': net.features.parameters(), 'lr': 0.01},
    {'params': net.classifier.parameters()}]` -> ('net', [('features', {'lr': <node>}), ('classifier', {})], {}):
    the model is the groups' common owner, each group a distinct submodule path below it. A single
    group [{'params': net.parameters(), 'lr': 0.01}] -> ('net', None, {'lr': <node>}).
    Raises Unsupported for anything else.
    """
    model = _parameters_call(node)
    if model is not None:
        return model, None, {}
    if not isinstance(node, (cst.List, cst.Tuple)) or not node.elements:
        raise Unsupported(f"the parameters ({code_of(node)}) must be MODEL.parameters() or a list of parameter "
                          "groups {'params': MODEL.SUBMODULE.parameters(), ...}")
    groups = []
    for element in node.elements:
        group = element.value
        if not isinstance(group, cst.Dict) or isinstance(element, cst.StarredElement):
            raise Unsupported(f"parameter group {code_of(group)} must be a dict literal")
        entries = {}
        for item in group.elements:
            key = literal(item.key) if isinstance(item, cst.DictElement) else NO_VALUE
            if not isinstance(key, str):
                raise Unsupported(f"parameter group {code_of(group)} must have string keys")
            entries[key] = item.value
        owner = _parameters_call(entries.pop("params", cst.Name("None")))
        path = _dotted(owner) if owner else None
        if not path:
            raise Unsupported(f"parameter group {code_of(group)}: 'params' must be MODEL.SUBMODULE.parameters()")
        if "initial_lr" in entries:
            raise Unsupported("a parameter group with 'initial_lr' (a resumed scheduler)")
        groups.append((path, entries))
    if len(groups) == 1:
        return ".".join(groups[0][0]), None, groups[0][1]
    paths = [path for path, _ in groups]
    common = []
    for parts in zip(*paths):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    if not common or any(len(path) == len(common) for path in paths):
        raise Unsupported("parameter groups must be distinct submodules of one model "
                          "(MODEL.a.parameters(), MODEL.b.parameters(), ...)")
    prefixes = [".".join(path[len(common):]) for path in paths]
    for i, a in enumerate(prefixes):
        for b in prefixes[i + 1:]:
            if (a + ".").startswith(b + ".") or (b + ".").startswith(a + "."):
                raise Unsupported(f"parameter groups {a} and {b} overlap (torch rejects a parameter in two groups)")
    return ".".join(common), [(prefix, overrides) for prefix, (_, overrides) in zip(prefixes, groups)], {}


def model_of_params(call: cst.Call) -> str | None:
    """The model `optim.X(params, ...)` trains ('net'), for the training analysis; None if not understood."""
    if not call.args:
        return None
    try:
        return parameters_of(call.args[0].value)[0]
    except Unsupported:
        return None


# ----------------------------------------------------------------------------
# Gradient clipping


CLIP_SIGNATURES = {
    "clip_grad_norm_": ["parameters", "max_norm", "norm_type=2.0", "error_if_nonfinite=False", "foreach=None"],
    "clip_grad_value_": ["parameters", "clip_value", "foreach=None"],
}
CLIP_FUNCTIONS = ("torch.nn.utils.clip_grad_norm_", "torch.nn.utils.clip_grad_value_",
                  "torch.nn.utils.clip_grad.clip_grad_norm_", "torch.nn.utils.clip_grad.clip_grad_value_")


def clip_transform(call: cst.Call, ctx: ConversionContext) -> str | None:
    """The optax transform for `torch.nn.utils.clip_grad_norm_(...)` / `clip_grad_value_(...)`, or None.

    clip_grad_value_(params, v) is optax.clip(v) exactly. clip_grad_norm_(params, m) scales by
    min(1, m / (norm + 1e-6)); optax.clip_by_global_norm(m) by m / norm when norm >= m, which differs
    by at most 1e-6 / m relative: for a literal m >= 1 (at most 1e-6, float32 noise for a norm) porter
    emits optax.clip_by_global_norm, otherwise the emitted clip_by_global_norm_torch with torch's
    formula. Only the 2-norm over MODEL.parameters() is converted; None for anything else.
    """
    qualified = ctx.qualified_name(call.func) or ""
    if qualified not in CLIP_FUNCTIONS:
        return None
    name = qualified.rsplit(".", 1)[1]
    signature = dict(p.partition("=")[::2] for p in CLIP_SIGNATURES[name])  # name -> default source
    bound = _bind_simple(list(signature), call)
    if bound is None or any(p not in bound for p, default in signature.items() if not default):
        return None
    if _parameters_call(bound["parameters"]) is None:
        return None
    for param in ("norm_type", "error_if_nonfinite"):
        if param in bound and not _is_default(signature[param], bound[param]):
            return None
    if name == "clip_grad_value_":
        return f"optax.clip({code_of(bound['clip_value'])})"
    max_norm = bound["max_norm"]
    value = literal(max_norm)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1:
        return f"optax.clip_by_global_norm({code_of(max_norm)})"
    ctx.need_helper("clip_by_global_norm_torch")
    return f"clip_by_global_norm_torch({code_of(max_norm)})"


def _bind_simple(names: list[str], call: cst.Call) -> dict | None:
    """Python's binding of the call's arguments to `names` (all positional-or-keyword); None if it fails."""
    bound = {}
    for index, arg in enumerate(call.args):
        if arg.star:
            return None
        name = arg.keyword.value if arg.keyword else (names[index] if index < len(names) else None)
        if name not in names or name in bound:
            return None
        bound[name] = arg.value
    return bound
