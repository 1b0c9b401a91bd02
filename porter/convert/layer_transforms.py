"""Value transforms for layer rules (rules/torch_nn.toml), registered in
porter.convert.transforms.VALUE_TRANSFORMS. Same contract: the torch
argument's expression in, the target's out, or Unsupported."""

from __future__ import annotations

from typing import Callable

import libcst as cst

from porter.convert.context import ConversionContext, code_of
from porter.convert.transforms import NO_VALUE, Unsupported, _conv_padding, _ntuple, _pool_padding, expr, literal

FLOAT32_EPS = "1.1920928955078125e-07"  # torch.finfo(torch.float32).eps


def _torch_pad(n: int) -> Callable:
    """A padding layer's `padding` (an int, or 2n ints from the last dim backwards) as torch's flat 2n-tuple."""

    def transform(node: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
        value = literal(node)
        if isinstance(value, int) and not isinstance(value, bool):
            return expr(repr((value,) * (2 * n)))
        if isinstance(value, (tuple, list)) and len(value) == 2 * n and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            return expr(repr(tuple(value)))
        if value is not NO_VALUE or isinstance(node, (cst.Tuple, cst.List)):
            if isinstance(node, (cst.Tuple, cst.List)) and len(node.elements) == 2 * n:
                return cst.Tuple([e.with_changes(comma=cst.MaybeSentinel.DEFAULT) for e in node.elements])
            raise Unsupported(f"padding={code_of(node)}: expected an int or {2 * n} ints")
        code = code_of(node)  # a name: torch takes an int or a 2n-sequence, so decide when the model is built
        return expr(f"({code},) * {2 * n} if isinstance({code}, int) else tuple({code})")

    return transform


INTERPOLATION_MODES = ("nearest", "nearest-exact", "linear", "bilinear", "trilinear")


def interpolation_mode(node: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
    value = literal(node)
    if value is NO_VALUE and not isinstance(node, cst.SimpleString):
        raise Unsupported(f"mode={code_of(node)}: the mode must be a literal to check it is supported")
    if value not in INTERPOLATION_MODES:
        raise Unsupported(f"mode={code_of(node)} (supported: {', '.join(INTERPOLATION_MODES)})")
    return node


def rms_epsilon(node: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
    """torch's RMSNorm eps=None means the input dtype's machine epsilon: float32's is emitted."""
    return expr(FLOAT32_EPS) if literal(node) is None else node


def _pool_stride(n: int) -> Callable:
    """A pooling stride: None (torch's "the kernel size") stays None, anything else becomes n ints."""
    tuple_n = _ntuple(n)

    def transform(node: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
        return node if literal(node) is None else tuple_n(node, ctx)

    return transform


LAYER_TRANSFORMS: dict[str, Callable[[cst.BaseExpression, ConversionContext], cst.BaseExpression]] = {
    "conv_padding3": _conv_padding(3),
    "pool_padding1": _pool_padding(1),
    "pool_padding3": _pool_padding(3),
    "torch_pad1": _torch_pad(1),
    "torch_pad2": _torch_pad(2),
    "torch_pad3": _torch_pad(3),
    "pool_stride1": _pool_stride(1),
    "pool_stride2": _pool_stride(2),
    "pool_stride3": _pool_stride(3),
    "interpolation_mode": interpolation_mode,
    "rms_epsilon": rms_epsilon,
}
