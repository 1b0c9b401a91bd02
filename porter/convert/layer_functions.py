"""A layer rule as a function with torch's signature, for layers built from arguments porter cannot see.

`nn.Conv2d(cin, cout, bias=False, **kwargs)`: which arguments `kwargs` holds
is known only when the model is built, so the rule's mapping (rules/*.toml:
`args`, `drop`, `emit`, the `affine_norm` builder) cannot be applied to the
call. It is applied inside an emitted function instead, generated from the
same rule, which takes torch's arguments and translates them when it runs:

    def torch_conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                     bias=True, padding_mode='zeros', device=None, dtype=None, *, rngs):
        if padding_mode != 'zeros':
            raise NotImplementedError(...)  # an argument the rule converts only at its default
        return ChannelsFirstConv(in_channels, out_channels, kernel_size=ntuple(kernel_size, 2), ...)

and the call becomes `torch_conv2d(cin, cout, bias=False, **kwargs, rngs=rngs)`. A layer class used as a
value (`norm_layer=nn.BatchNorm2d`) becomes the same function, so that `norm_layer(c, **dd)` takes
what torch's class takes (timm passes `device=None, dtype=None` to every layer). torch's `dtype` is the
parameters' dtype (flax's `param_dtype`); `device` is dropped. A rule whose mapping has no runtime form
here (a transform not in RUNTIME_TRANSFORMS, another builder) gets no function: the call stays reported.
"""

from __future__ import annotations

import functools
import inspect

import libcst as cst

from porter.convert.transforms import Unsupported

PREFIX = "torch_"
AFFINE_NORM = "porter.convert.layer_builders.affine_norm"


def _tuple(n: int) -> tuple[str, tuple[str, ...]]:
    return f"ntuple({{v}}, {n})", ("ntuple",)


def _conv_padding(n: int) -> tuple[str, tuple[str, ...]]:
    return f"conv_padding({{v}}, {n})", ("conv_padding",)


# transform name (rules' `transform`) -> (its runtime expression of the torch value {v}, helpers it uses);
# the same meaning as porter/convert/transforms.py's, decided when the model is built
RUNTIME_TRANSFORMS: dict[str, tuple[str, tuple[str, ...]]] = {
    **{f"tuple{n}": _tuple(n) for n in (1, 2, 3)},
    **{f"conv_padding{n}": _conv_padding(n) for n in (1, 2, 3)},
    "one_minus": ("1 - {v}", ()),
    "last_dim": ("last_dim({v})", ("last_dim",)),
    "rms_epsilon": ("1.1920928955078125e-07 if {v} is None else {v}", ()),
}
# values a runtime transform cannot take: (test on {v}, what to say)
_REFUSED = {
    "one_minus": ("{v} is None", "momentum=None (a cumulative moving average) has no flax equivalent"),
}


def function_name(rule) -> str:
    return PREFIX + rule.source[0].rsplit(".", 1)[-1].lower()


def rule_of(name: str):
    """The layer rule whose function `name` is, or None."""
    if not name.startswith(PREFIX):
        return None
    from porter.rules.loader import load_rules
    for rule in load_rules().rules:
        if rule.kind == "layer" and function_name(rule) == name:
            return rule
    return None


@functools.cache
def generated(name: str) -> tuple[str, tuple[str, ...]] | None:
    """(source, helpers it needs) of the function `name`, or None when no rule has one."""
    rule = rule_of(name)
    return None if rule is None else _generate(rule)


def has_function(rule) -> bool:
    return rule.kind == "layer" and generated(function_name(rule)) is not None


def call(rule, site) -> cst.Call:
    """`nn.Conv2d(cin, cout, **kwargs)` -> `torch_conv2d(cin, cout, **kwargs, rngs=rngs)`."""
    name = function_name(rule)
    if generated(name) is None:
        raise Unsupported("star arguments cannot be matched to torch's signature, and this layer's conversion "
                          "has no form that reads them when the model is built")
    site.ctx.need_helper(name)
    args = list(site.call.args)
    if rule.uses_rngs:
        if site.rngs is None:
            raise Unsupported("no rngs here to build the layer with")
        args.append(cst.Arg(site.rngs, keyword=cst.Name("rngs"), equal=_EQUAL))
    return cst.Call(cst.Name(name), _commas(args))


_EQUAL = cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace(""))


def _commas(args: list[cst.Arg]) -> list[cst.Arg]:
    """Each argument but the last followed by ', ' (the last's own comma dropped)."""
    comma = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
    return [a.with_changes(comma=comma if i < len(args) - 1 else cst.MaybeSentinel.DEFAULT)
            for i, a in enumerate(args)]


def _generate(rule) -> tuple[str, tuple[str, ...]] | None:
    if rule.builder not in (None, AFFINE_NORM) or rule.templates or any(p.var_positional for p in rule.signature):
        return None
    target_name, helpers = _target(rule)
    if target_name is None:
        return None
    takes = target_parameters(rule)
    checks: list[str] = []
    positional: dict[int, str] = {}
    keywords: dict[str, str] = {}
    handled = set(rule.drop)
    if rule.builder == AFFINE_NORM:
        handled |= _affine_keywords(rule, keywords)
    for name, mapping in rule.args.items():
        value = name
        if mapping.transform is not None:
            if mapping.transform not in RUNTIME_TRANSFORMS:
                return None
            template, uses = RUNTIME_TRANSFORMS[mapping.transform]
            if mapping.transform in _REFUSED:
                test, why = _REFUSED[mapping.transform]
                checks.append(f"if {test.format(v=name)}:\n        raise NotImplementedError({why!r})")
            value = template.format(v=name)
            helpers += uses
        if mapping.position is not None:
            positional[mapping.position] = value
        else:
            keywords[mapping.keyword] = value
        handled.add(name)
    for name, code in rule.emit.items():
        if name != "rngs":
            keywords[name] = code
    torch_name = rule.source[0]
    for param in rule.signature:
        if param.name in handled:
            continue
        if param.name == "dtype" and param.default == "None" and "param_dtype" in takes:
            keywords["param_dtype"] = "dtype or jnp.float32"  # torch's None: the default dtype, float32
            continue
        test = f"is not {param.default}" if param.default in ("None", "True", "False") else f"!= {param.default}"
        checks.append(f"if {param.name} {test}:\n        raise NotImplementedError(\n            "
                      f"f\"{torch_name}({param.name}={{{param.name}!r}}): converted only at {param.default}\")")
    if sorted(positional) != list(range(len(positional))):
        return None
    arguments = [positional[i] for i in sorted(positional)] + [f"{k}={v}" for k, v in keywords.items()]
    if rule.uses_rngs:
        arguments.append("rngs=rngs")
    params = [p.name if p.default is None else f"{p.name}={p.default}" for p in rule.signature
              if not p.keyword_only]
    kwonly = [f"{p.name}={p.default}" for p in rule.signature if p.keyword_only]
    if rule.uses_rngs:
        kwonly.append("rngs")
    if kwonly:
        params += ["*", *kwonly]
    name = function_name(rule)
    source = _wrapped(f"def {name}(", params, "):", "") + "\n"
    source += (f'    """{torch_name}(...) converted as rule {rule.id} converts it, from torch\'s arguments as they '
               f'arrive\n    when the model is built (a call passing **kwargs, the class passed as a value)."""\n')
    source += "".join(f"    {check}\n" for check in checks)
    source += _wrapped(f"    return {target_name}(", arguments, ")", "    ") + "\n"
    return source, tuple(dict.fromkeys(helpers))


def _target(rule) -> tuple[str | None, tuple[str, ...]]:
    root, _, rest = rule.target.partition(".")
    if root == "emitted":
        return rest, tuple(rule.helpers)
    if root == "nnx":
        return rule.target, tuple(rule.helpers)
    return None, ()


def target_parameters(rule) -> set[str]:
    """The keyword names the rule's target class takes (its __init__'s)."""
    root, _, rest = rule.target.partition(".")
    if root == "emitted":
        from porter import emitted as module
    else:
        from flax import nnx as module
    target = getattr(module, rest, None)
    try:
        return set(inspect.signature(target.__init__ if isinstance(target, type) else target).parameters)
    except (TypeError, ValueError):
        return set()


def _affine_keywords(rule, keywords: dict[str, str]) -> set[str]:
    """layer_builders.affine_norm's mapping, as values: torch's affine (and bias) flags -> use_scale / use_bias."""
    flag = "affine" if rule.param("affine") is not None else "elementwise_affine"
    handled = {name for name in (flag, "bias") if rule.param(name) is not None}
    keywords["use_scale"] = flag
    if any(w.flax_name == "bias" for w in rule.layout.values()):
        keywords["use_bias"] = " and ".join(name for name in (flag, "bias") if name in handled)
    return handled


def _wrapped(head: str, items: list[str], tail: str, indent: str, width: int = 110) -> str:
    """`head` + items joined by ', ' + `tail`, continued under the first item where a line grows too long."""
    lines, line = [], head
    hang = " " * len(head)
    for i, item in enumerate(items):
        piece = item + (", " if i < len(items) - 1 else tail)
        if len(line) + len(piece.rstrip()) > width and line.strip() not in (head.strip(),):
            lines.append(line.rstrip())
            line = hang
        line += piece
    if not items:
        line += tail
    lines.append(line)
    return "\n".join(lines)
