"""Applies one rule to one call: bind the torch arguments to the rule's
signature, map each, and build the target expression."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import libcst as cst

from porter.convert.context import ConversionContext, code_of
from porter.convert.transforms import keyword_arg, NO_VALUE, VALUE_TRANSFORMS, Unsupported, expr, literal
from porter.rules.loader import Rule

Value = cst.BaseExpression | list[cst.BaseExpression]


@dataclass
class Application:
    """What applying a rule produced: the new node and the warnings to report."""

    node: cst.BaseExpression
    warnings: list[str] = field(default_factory=list)


@dataclass
class Site:
    """Where a rule is applied: the call, the tensor a method is called on, the rngs expression."""

    call: cst.Call
    receiver: cst.BaseExpression | None
    rngs: cst.BaseExpression | None  # set when the rule emits rngs
    ctx: ConversionContext
    owner_class: str | None = None  # the nn.Module class whose method holds the call


def bind(rule: Rule, call: cst.Call) -> dict[str, Value]:
    """torch argument name -> expression(s), as Python would bind them."""
    bound: dict[str, Value] = {}
    positional = [p for p in rule.signature if not p.keyword_only or p.var_positional]
    index = 0
    for arg in call.args:
        if arg.star == "*" and index < len(positional) and positional[index].var_positional:
            bound.setdefault(positional[index].name, []).append(arg)  # *layers passes straight through
            continue
        if arg.star:
            raise Unsupported(f"star arguments ({code_of(arg).strip(', ')}) cannot be matched to torch's signature")
        if arg.keyword is not None:
            name = arg.keyword.value
            if rule.param(name) is None:
                raise Unsupported(f"unknown keyword argument '{name}'")
            bound[name] = arg.value
            continue
        if index >= len(positional):
            raise Unsupported("more positional arguments than torch's signature takes")
        param = positional[index]
        if param.var_positional:
            bound.setdefault(param.name, []).append(arg.value)
        else:
            bound[param.name] = arg.value
            index += 1
    missing = [p.name for p in rule.signature if p.default is None and not p.var_positional and p.name not in bound]
    if missing:
        raise Unsupported(f"missing argument(s) {missing}")
    return bound


def _is_default(rule: Rule, name: str, value: Value) -> bool:
    default = rule.param(name).default
    if default is None or isinstance(value, list):
        return False
    given = literal(value)
    if given is NO_VALUE:
        return code_of(value) == default
    return given == literal(cst.parse_expression(default))


def _map_value(rule: Rule, name: str, value: Value, site: Site) -> Value:
    transform = rule.args[name].transform
    if transform == "pack":  # torch.ones(2, 3) -> jnp.ones((2, 3))
        if not isinstance(value, list):
            return value
        if len(value) == 1 and not isinstance(value[0], cst.Arg):
            return value[0]
        return cst.Tuple([cst.StarredElement(v.value) if isinstance(v, cst.Arg) else cst.Element(v) for v in value])
    if transform is None:
        return value
    fn = VALUE_TRANSFORMS[transform]
    if isinstance(value, list):
        return [v if isinstance(v, cst.Arg) else fn(v, site.ctx) for v in value]
    return fn(value, site.ctx)


def target_expression(rule: Rule, site: Site) -> cst.BaseExpression:
    root, _, rest = rule.target.partition(".")
    if root == "emitted":
        for helper in rule.helpers:
            site.ctx.need_helper(helper)
        return cst.Name(rest)
    if root == "method":
        return cst.Attribute(site.receiver, cst.Name(rest))
    return expr(rule.target)


def apply_rule(rule: Rule, site: Site) -> Application:
    """The converted expression for `site.call`; raises Unsupported to leave it unchanged."""
    if rule.builder:
        module, _, function = rule.builder.rpartition(".")
        return getattr(importlib.import_module(module), function)(rule, site)
    bound = bind(rule, site.call)
    warnings = []
    positional: dict[int, Value] = {}
    keywords: list[tuple[str, cst.BaseExpression]] = []
    for param in rule.signature:
        name = param.name
        given = name in bound
        if name in rule.drop:
            continue
        if name in rule.warn:
            if given and not _is_default(rule, name, bound[name]):
                warnings.append(rule.warn[name])
            continue
        if name not in rule.args:
            if given and not _is_default(rule, name, bound[name]):
                raise Unsupported(f"{name}={code_of(bound[name]) if not isinstance(bound[name], list) else '...'} "
                                  f"is not supported (only the default {param.default})")
            continue
        mapping = rule.args[name]
        if not given and not mapping.always:
            continue
        value = bound[name] if given else cst.parse_expression(param.default)
        mapped = _map_value(rule, name, value, site)
        if mapping.position is not None:
            positional[mapping.position] = mapped
        else:
            keywords.append((mapping.keyword, mapped))
    for keyword, source in rule.emit.items():
        keywords.append((keyword, site.rngs if keyword == "rngs" else expr(source)))
    if site.receiver is not None and not rule.target.startswith("method."):
        positional[rule.receiver] = site.receiver
    return Application(_build(rule, site, positional, keywords), warnings)


def _build(rule: Rule, site: Site, positional: dict[int, Value], keywords) -> cst.BaseExpression:
    target = target_expression(rule, site)
    args = []
    for position in sorted(positional):
        value = positional[position]
        args.extend(v if isinstance(v, cst.Arg) else cst.Arg(v) for v in (value if isinstance(value, list) else [value]))
    args.extend(keyword_arg(k, value) for k, value in keywords)
    if rule.kind == "constant":
        return target
    if rule.kind == "activation":
        if not args:
            return target
        return cst.Call(cst.Name("partial"), [cst.Arg(target), *args])
    return _keep_line_breaks(site.call, cst.Call(target, args))


def _keep_line_breaks(original: cst.Call, new: cst.Call) -> cst.Call:
    """A call written one argument per line stays that way."""
    separators = [a.comma for a in original.args
                  if isinstance(a.comma, cst.Comma) and isinstance(a.comma.whitespace_after, cst.ParenthesizedWhitespace)]
    if not separators or not new.args:
        return new
    last = original.args[-1].comma
    args = [a.with_changes(comma=separators[0]) for a in new.args[:-1]]
    args.append(new.args[-1].with_changes(comma=last))
    return new.with_changes(args=args, whitespace_before_args=original.whitespace_before_args)
