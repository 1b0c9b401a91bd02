"""Builders for layer rules whose arguments interact (rules/torch_nn.toml,
rules/einops.toml): `builder = "porter.convert.layer_builders.NAME"`.

Each maps what it must by hand and leaves every other argument to the rule's
data (`args`, `drop`, `emit`), so a torch argument the rule does not name is
still accepted only at its default.
"""

from __future__ import annotations

import dataclasses

import libcst as cst

from porter.convert.apply import Application, Site, _apply_mapping, bind
from porter.convert.context import code_of
from porter.convert.transforms import NO_VALUE, Unsupported, atom, expr, keyword_arg, literal, rule_expr
from porter.rules.loader import Rule


def _map_rest(rule: Rule, site: Site, handled: tuple[str, ...], extra: dict[str, str]) -> Application:
    """The rule's data mapping for every argument but `handled`, with `extra` keywords (source) before rngs."""
    plain = dataclasses.replace(rule, builder=None, drop=(*rule.drop, *handled), emit={**extra, **rule.emit})
    return _apply_mapping(plain, site)


def _given(rule: Rule, bound: dict, name: str) -> cst.BaseExpression:
    """The argument's expression, or its default's."""
    return bound[name] if name in bound else rule_expr(rule.param(name).default)


def _per_dim(node: cst.BaseExpression, n: int, what: str) -> list[str]:
    """An int-or-n-tuple argument as n Python source strings."""
    value = literal(node)
    if isinstance(value, int) and not isinstance(value, bool):
        return [repr(value)] * n
    if isinstance(value, (tuple, list)) and len(value) == n and all(isinstance(v, int) for v in value):
        return [repr(v) for v in value]
    if value is NO_VALUE and isinstance(node, (cst.Tuple, cst.List)) and len(node.elements) == n:
        return [code_of(e.value) for e in node.elements]
    if value is NO_VALUE and not isinstance(node, (cst.Tuple, cst.List)):
        return [code_of(node)] * n  # a name: an int, as real code passes
    raise Unsupported(f"{what}={code_of(node)}: expected an int or {n} ints")


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _transpose_padding(k: str, p: str, op: str, d: str) -> tuple[str, str]:
    """flax's (low, high) for torch's kernel k, padding p, output_padding op, dilation d: d*(k-1)-p, +op."""
    if all(_is_int(v) for v in (k, p, op, d)):
        low = int(d) * (int(k) - 1) - int(p)
        return repr(low), repr(low + int(op))
    low = f"{atom(k)} - 1" if d == "1" else f"{atom(d)} * ({atom(k)} - 1)"
    if p != "0":
        low += f" - {atom(p)}"
    high = low if op == "0" else f"{low} + {atom(op)}"
    return low, high


def conv_transpose_layer(rule: Rule, site: Site) -> Application:
    """nn.ConvTranspose{1,2,3}d -> ChannelsFirstConvTranspose(..., transpose_kernel=True).

    torch's padding p and output_padding op become flax's explicit
    (d*(k-1) - p, d*(k-1) - p + op) per spatial dim, which needs kernel_size
    and dilation too, so this cannot be a one-argument transform.
    """
    bound = bind(rule, site.call)
    n = int(rule.source[0][-2])  # torch.nn.ConvTranspose2d -> 2
    kernel = _per_dim(bound["kernel_size"], n, "kernel_size")
    padding = _per_dim(_given(rule, bound, "padding"), n, "padding")
    output_padding = _per_dim(_given(rule, bound, "output_padding"), n, "output_padding")
    dilation = _per_dim(_given(rule, bound, "dilation"), n, "dilation")
    pairs = []
    for k, p, op, d in zip(kernel, padding, output_padding, dilation):
        pairs.append("({}, {})".format(*_transpose_padding(k, p, op, d)))
    padding_source = f"({', '.join(pairs)},)" if n == 1 else f"({', '.join(pairs)})"
    return _map_rest(rule, site, ("padding", "output_padding"),
                     {"padding": padding_source, "transpose_kernel": "True"})


def affine_norm(rule: Rule, site: Site) -> Application:
    """Norm layers: torch's `affine` / `elementwise_affine` (and LayerNorm's `bias`) -> use_scale / use_bias.

    One torch flag sets two flax flags, and flax's defaults (both True) differ
    from InstanceNorm's (affine=False), so the effective value decides.
    """
    bound = bind(rule, site.call)
    flag = "affine" if rule.param("affine") is not None else "elementwise_affine"
    has_bias = any(w.flax_name == "bias" for w in rule.layout.values())
    handled = tuple(name for name in (flag, "bias") if rule.param(name) is not None)
    scale_parts = [_given(rule, bound, flag)]
    bias_parts = [_given(rule, bound, name) for name in handled]
    extra: dict[str, str] = {}
    for keyword, parts in (("use_scale", scale_parts), ("use_bias", bias_parts if has_bias else [])):
        values = [literal(p) for p in parts]
        if any(v is False for v in values):
            extra[keyword] = "False"
        elif any(v is not True for v in values):  # a name: decided when the model is built
            extra[keyword] = " and ".join(code_of(p) for p, v in zip(parts, values) if v is not True)
    return _map_rest(rule, site, handled, extra)


def einops_layer(rule: Rule, site: Site) -> Application:
    """einops.layers.torch.Rearrange / Reduce -> partial(einops.rearrange / einops.reduce, pattern=..., ...).

    einops' functions take JAX arrays, so the layer becomes the function with
    its arguments bound; axis lengths pass through as keywords.
    """
    function = "einops.reduce" if rule.source[0].endswith("Reduce") else "einops.rearrange"
    args = [cst.Arg(expr(function))]
    names = ["pattern", "reduction"] if function == "einops.reduce" else ["pattern"]
    positional = [a for a in site.call.args if a.keyword is None]
    if any(a.star for a in site.call.args):
        raise Unsupported("star arguments cannot be checked against einops' signature")
    if len(positional) > len(names):
        raise Unsupported("more positional arguments than einops' layer takes")
    given = {name: a.value for name, a in zip(names, positional)}
    given.update({a.keyword.value: a.value for a in site.call.args if a.keyword is not None})
    for name in names:
        if name not in given:
            raise Unsupported(f"missing argument '{name}'")
    for name, value in given.items():
        args.append(keyword_arg(name, value))
    return Application(cst.Call(cst.Name("partial"), args))


def sequential(rule: Rule, site: Site) -> Application:
    """nn.Sequential(*layers) -> nnx.Sequential; a single argument that may be an OrderedDict of named
    layers (a variable, or OrderedDict(...)) -> the emitted sequential(), which keeps their names as
    torch's state keys (`features.conv0.weight`) and their order."""
    args = site.call.args
    if may_be_named_layers(args):
        site.ctx.need_helper("sequential")
        return Application(cst.Call(cst.Name("sequential"), [cst.Arg(args[0].value)]))
    return _apply_mapping(dataclasses.replace(rule, builder=None), site)


def may_be_named_layers(args) -> bool:
    """nn.Sequential's arguments: one that may be an OrderedDict of named layers (emitted sequential())."""
    if len(args) != 1 or args[0].keyword or args[0].star:
        return False
    value = args[0].value
    if isinstance(value, (cst.Name, cst.Attribute, cst.Subscript)):
        return True
    return isinstance(value, cst.Call) and code_of(value.func).rsplit(".", 1)[-1] in ("OrderedDict", "dict")
