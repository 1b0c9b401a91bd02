"""Value transforms named by rules (`args.x = { transform = "..." }`).

Each takes the torch argument's expression and returns the target's, or
raises Unsupported with a reason the report shows.
"""

from __future__ import annotations

import ast
import functools
from typing import Callable

import libcst as cst

from porter.convert.context import ConversionContext, code_of


class Unsupported(Exception):
    """The rule cannot convert this argument value exactly."""


NO_VALUE = object()


def literal(node: cst.BaseExpression):
    """The Python value of a literal expression, or NO_VALUE."""
    try:
        return ast.literal_eval(code_of(node))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return NO_VALUE


def expr(source: str) -> cst.BaseExpression:
    """The expression `source` spells. Code built from a chain the user spread over lines inside parentheses
    (`code_of(receiver)` is `m\n .T`) keeps its line breaks: then it comes in parentheses, where they are valid."""
    try:
        return cst.parse_expression(source)
    except cst.ParserSyntaxError:
        if "\n" not in source:
            raise
        return cst.parse_expression(f"({source})")


@functools.cache
def rule_expr(source: str) -> cst.BaseExpression:
    """expr() of text of the rules (a target, a default, a template) or of a literal value (its repr): parsed
    once, not at every use (the same few dozen texts make most of a conversion's parses). libcst's nodes are
    immutable, so the converted trees share it, as they share the imports and helpers porter adds
    (passes/imports.py); what porter keys by id are the user's nodes, never these."""
    return expr(source)


_NO_SPACE = cst.SimpleWhitespace("")


def atom(source: str) -> str:
    """`source` as an operand of an arithmetic operator: a name, a dotted name or a number as it is, anything
    else in parentheses."""
    try:
        float(source)
        return source
    except ValueError:
        return source if all(part.isidentifier() for part in source.split(".")) else f"({source})"


def keyword_arg(name: str, value: cst.BaseExpression) -> cst.Arg:
    """`name=value`, spelled the way PEP 8 spells keyword arguments."""
    return cst.Arg(value, keyword=cst.Name(name),
                   equal=cst.AssignEqual(whitespace_before=_NO_SPACE, whitespace_after=_NO_SPACE))


def with_keyword_param(function: cst.FunctionDef, param: cst.Param) -> cst.Parameters:
    """`function`'s parameters with `param` keyword-only after the others (before `**kwargs`). Parameters one per
    line keep that layout: the new one gets a line of its own and the old trailing comma."""
    params = function.params
    had_star = isinstance(params.star_arg, (cst.Param, cst.ParamStar))
    star = params.star_arg if had_star else cst.ParamStar()
    between = function.whitespace_before_params
    kwonly = list(params.kwonly_params)
    last = kwonly[-1] if kwonly else star if had_star else params.params[-1] if params.params else None
    if params.star_kwarg is not None or last is None or not isinstance(between, cst.ParenthesizedWhitespace):
        return params.with_changes(star_arg=star, kwonly_params=[*kwonly, param])
    line_break = cst.Comma(whitespace_after=between)
    before_close = last.whitespace_after_param  # the line break before `)` where there is no trailing comma
    ended = last.with_changes(comma=line_break, whitespace_after_param=cst.SimpleWhitespace(""))
    if kwonly:
        kwonly[-1] = ended
    elif had_star:
        star = ended
    else:
        params = params.with_changes(params=[*params.params[:-1], ended])
    if not had_star:
        star = star.with_changes(comma=line_break)
    added = param.with_changes(comma=last.comma, whitespace_after_param=before_close)
    return params.with_changes(star_arg=star, kwonly_params=[*kwonly, added])


def _ntuple(n: int) -> Callable:
    def transform(node: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
        value = literal(node)
        if isinstance(value, int) and not isinstance(value, bool):
            return rule_expr(repr((value,) * n))
        if isinstance(value, (tuple, list)) and len(value) == n:
            return rule_expr(repr(tuple(value)))
        if value is not NO_VALUE:
            raise Unsupported(f"expected an int or {n} ints, got {code_of(node)}")
        if isinstance(node, (cst.Tuple, cst.List)):
            return cst.Tuple([e.with_changes(comma=cst.MaybeSentinel.DEFAULT) for e in node.elements])
        # A name or expression: torch accepts an int or a tuple; an int is what real code passes.
        code = code_of(node)
        return expr(f"({', '.join([code] * n)},)" if n == 1 else f"({', '.join([code] * n)})")
    return transform


def _conv_padding(n: int) -> Callable:
    def transform(node: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
        value = literal(node)
        if isinstance(value, str):
            if value in ("same", "valid"):
                return expr(repr(value.upper()))
            raise Unsupported(f"padding={value!r}")
        pairs = _padding_pairs(node, value, n)
        return expr(pairs)
    return transform


def _pool_padding(n: int) -> Callable:
    def transform(node: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
        return expr(_padding_pairs(node, literal(node), n))
    return transform


def _padding_pairs(node: cst.BaseExpression, value, n: int) -> str:
    """torch's symmetric padding (int or one int per dim) as explicit (low, high) pairs."""
    if isinstance(value, int) and not isinstance(value, bool):
        per_dim = [repr(value)] * n
    elif isinstance(value, (tuple, list)) and len(value) == n and all(isinstance(v, int) for v in value):
        per_dim = [repr(v) for v in value]
    elif value is NO_VALUE and not isinstance(node, (cst.Tuple, cst.List)):
        per_dim = [code_of(node)] * n
    elif value is NO_VALUE and _plain_elements(node, n):  # (padding, 0): one expression per spatial dim
        per_dim = [code_of(e.value) for e in node.elements]
    else:
        raise Unsupported(f"padding={code_of(node)}")
    pairs = ", ".join(f"({p}, {p})" for p in per_dim)
    return f"({pairs},)" if n == 1 else f"({pairs})"


def _plain_elements(node: cst.Tuple | cst.List, n: int) -> bool:
    return len(node.elements) == n and not any(isinstance(e, (cst.StarredElement,)) for e in node.elements)


def one_minus(node: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
    value = literal(node)
    if value is None:
        raise Unsupported("momentum=None (a cumulative moving average) has no flax equivalent")
    if isinstance(value, (int, float)):
        return rule_expr(repr(round(1 - value, 12)))
    return expr(f"1 - {code_of(node)}")


def gelu_approximate(node: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
    value = literal(node)
    if value == "none":
        return cst.Name("False")
    if value == "tanh":
        return cst.Name("True")
    raise Unsupported(f"approximate={code_of(node)} (must be the literal 'none' or 'tanh')")


def last_dim(node: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
    value = literal(node)
    if isinstance(value, int):
        return node
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            return expr(repr(value[0]))
        raise Unsupported(f"normalized_shape={code_of(node)} normalises over {len(value)} dimensions")
    if isinstance(node, (cst.Tuple, cst.List)):
        if len(node.elements) == 1:
            return node.elements[0].value
        raise Unsupported(f"normalized_shape={code_of(node)} normalises over several dimensions")
    return node


def inclusive_end(node: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
    """torch's end_dim is inclusive, lax.collapse's stop_dimension exclusive."""
    value = literal(node)
    if value == -1:
        return cst.Name("None")
    if isinstance(value, int):
        return expr(repr(value + 1))
    return expr(f"{code_of(node)} + 1 or None")


def required_dim(node: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
    if literal(node) is None:
        raise Unsupported("dim is not given: torch picks it from the input rank (deprecated); pass dim")
    return node


def axis(node: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
    """jnp reductions take an int or a tuple of axes, not a list."""
    if isinstance(node, cst.List):
        return cst.Tuple(node.elements if len(node.elements) != 1 else
                         [node.elements[0].with_changes(comma=cst.Comma())])
    return node


TORCH_DTYPES = {
    "float32": "jnp.float32", "float": "jnp.float32", "float16": "jnp.float16", "half": "jnp.float16",
    "bfloat16": "jnp.bfloat16", "float64": "jnp.float64", "double": "jnp.float64",
    "int8": "jnp.int8", "uint8": "jnp.uint8", "int16": "jnp.int16", "short": "jnp.int16",
    "int32": "jnp.int32", "int": "jnp.int32", "bool": "jnp.bool_",
    # JAX computes in 32 bits unless jax_enable_x64 is set; int64 would be truncated with a warning.
    "int64": "jnp.int32", "long": "jnp.int32",
}


def dtype(node: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
    qualified = ctx.qualified_name(node)
    if qualified and qualified.startswith("torch."):
        name = qualified.removeprefix("torch.")
        if name in TORCH_DTYPES:
            return expr(TORCH_DTYPES[name])
        raise Unsupported(f"dtype {qualified}")
    return node


def not_dtype(node: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
    """view(dtype) reinterprets bits; only view(*shape) is a reshape."""
    qualified = ctx.qualified_name(node)
    if qualified and qualified.removeprefix("torch.") in TORCH_DTYPES:
        raise Unsupported("view(dtype) reinterprets memory; use jax.lax.bitcast_convert_type by hand")
    return node


def empty_list_default(node: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
    return expr("[]") if literal(node) is None else node


def empty_dict_default(node: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
    return expr("{}") if literal(node) is None else node


def vector_ord(node: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
    """torch.norm's p as jnp.linalg.vector_norm's ord: 'fro' is the 2-norm of the elements; 'nuc' has none."""
    value = literal(node)
    if value == "fro":
        return cst.Integer("2")
    if isinstance(value, str):
        raise Unsupported(f"p={value!r}: only numbers and 'fro' (a vector norm of the elements)")
    return node


def side_from_right(node: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
    """bucketize/searchsorted's right=True as jnp.searchsorted's side='right'."""
    value = literal(node)
    if value in (True, False):
        return cst.SimpleString("'right'" if value else "'left'")
    return expr(f"'right' if {code_of(node)} else 'left'")


VALUE_TRANSFORMS: dict[str, Callable[[cst.BaseExpression, ConversionContext], cst.BaseExpression]] = {
    "tuple1": _ntuple(1),
    "tuple2": _ntuple(2),
    "tuple3": _ntuple(3),
    "conv_padding1": _conv_padding(1),
    "conv_padding2": _conv_padding(2),
    "pool_padding2": _pool_padding(2),
    "one_minus": one_minus,
    "gelu_approximate": gelu_approximate,
    "last_dim": last_dim,
    "inclusive_end": inclusive_end,
    "required_dim": required_dim,
    "axis": axis,
    "dtype": dtype,
    "not_dtype": not_dtype,
    "empty_list_default": empty_list_default,
    "empty_dict_default": empty_dict_default,
    "vector_ord": vector_ord,
    "side_from_right": side_from_right,
}


# Layer rules' transforms live in their own module (conv3d padding, padding layers, interpolation modes, ...).
from porter.convert.layer_transforms import LAYER_TRANSFORMS  # noqa: E402

VALUE_TRANSFORMS.update(LAYER_TRANSFORMS)
