"""Structural rewrites that a rule's data cannot express, referenced by
`builder = "porter.convert.builders.NAME"`. Each takes (rule, site) and
returns an Application or raises Unsupported."""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from porter.convert.apply import Application, Site, bind
from porter.convert.context import code_of
from porter.convert.transforms import dtype as dtype_of, keyword_arg, NO_VALUE, Unsupported, expr, literal
from porter.rules.loader import Rule


def identity_layer(rule: Rule, site: Site) -> Application:
    return Application(expr("(lambda x: x)"))


def tensor_size(rule: Rule, site: Site) -> Application:
    """x.size() -> x.shape; x.size(d) -> x.shape[d]."""
    bound = bind(rule, site.call)
    shape = cst.Attribute(site.receiver, cst.Name("shape"))
    if "dim" not in bound:
        return Application(shape)
    return Application(cst.Subscript(shape, [cst.SubscriptElement(cst.Index(bound["dim"]))]))


def receiver_unchanged(rule: Rule, site: Site) -> Application:
    """x.contiguous() -> x: JAX arrays have no memory layout to fix."""
    bind(rule, site.call)
    return Application(site.receiver)


def compiled_unchanged(rule: Rule, site: Site) -> Application:
    """torch.compile(fn, **options) -> fn: compiling changes no result, whatever the options say."""
    first = site.call.args[0] if site.call.args else None
    if first is None or first.star or first.keyword is not None:
        raise Unsupported("torch.compile without the function or model as its first argument")
    return Application(first.value)


def tensor_split(rule: Rule, site: Site) -> Application:
    """x.split(n, dim) cuts chunks of n; x.split([a, b], dim) cuts those sizes."""
    bound = bind(rule, site.call)
    sizes = bound["split_size_or_sections"]
    axis = bound.get("dim", cst.Integer("0"))
    axis_arg = keyword_arg("axis", axis)
    value = literal(sizes)
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, int) for v in value):
            raise Unsupported(f"split sizes {code_of(sizes)} must be ints")
        cuts = [sum(value[: i + 1]) for i in range(len(value) - 1)]
        return Application(cst.Call(expr("jnp.split"), [cst.Arg(site.receiver), cst.Arg(expr(repr(cuts))), axis_arg]))
    if value is NO_VALUE and isinstance(sizes, (cst.List, cst.Tuple)):
        raise Unsupported(f"split sizes {code_of(sizes)} must be literal ints")
    site.ctx.need_helper("split_by_size")
    return Application(cst.Call(cst.Name("split_by_size"), [cst.Arg(site.receiver), cst.Arg(sizes), axis_arg]))


def functional_dropout(rule: Rule, site: Site) -> Application:
    """F.dropout(x, p, training=self.training) -> an nnx.Dropout layer added to __init__.

    NNX dropout needs an RNG stream and a train/eval flag, which a layer owns;
    model.train()/model.eval() then switch it as torch's self.training does.
    """
    bound = bind(rule, site.call)
    if site.owner_class is None:
        raise Unsupported("F.dropout outside an nn.Module method needs an nnx.Dropout layer; convert by hand")
    training = bound.get("training")
    warnings = []
    if training is not None and literal(training) is False:
        return Application(bound["input"])
    if training is None or literal(training) is True:
        warnings.append("F.dropout without training=self.training is always active in torch; the converted "
                        "layer follows model.train()/model.eval()")
    elif code_of(training) != "self.training":
        raise Unsupported(f"training={code_of(training)}: only self.training or a literal is understood")
    rate = code_of(bound.get("p", cst.Float("0.5")))
    if literal(bound.get("p", cst.Float("0.5"))) is NO_VALUE and not rate.startswith("self."):
        raise Unsupported(f"p={rate}: the rate must be a literal or a self attribute to move it into __init__")
    name = site.ctx.inject_attribute(site.owner_class, "dropout", f"nnx.Dropout({rate}, rngs=rngs)")
    layer = cst.Attribute(cst.Name("self"), cst.Name(name))
    return Application(cst.Call(layer, [cst.Arg(bound["input"])]), warnings)


def attention(rule: Rule, site: Site) -> Application:
    """F.scaled_dot_product_attention -> the emitted scaled_dot_product_attention; its dropout_p, written as
    `RATE if self.training else 0` (nanoGPT, timm), becomes an nnx.Dropout the module owns, applied to the
    attention weights as torch does and switched by model.train()/model.eval(): timm's `self.attn_drop.p`
    hands over the layer attn_drop itself, another RATE (a literal or a self attribute) a layer added to
    __init__. A literal rate drops in every mode in torch (the function has no eval mode): not converted."""
    bound = bind(rule, site.call)
    if literal(bound.get("enable_gqa", cst.Name("False"))) is not False:
        raise Unsupported("enable_gqa: only the default False is supported")
    args = [cst.Arg(bound[name]) for name in ("query", "key", "value")]
    args += [keyword_arg(name, bound[name]) for name in ("attn_mask", "is_causal", "scale") if name in bound]
    site.ctx.need_helper("scaled_dot_product_attention")
    written = bind(rule, site.original or site.call).get("dropout_p")
    if written is None or literal(written) in (0, 0.0):
        return Application(cst.Call(cst.Name("scaled_dot_product_attention"), args))
    if literal(written) is not NO_VALUE:
        raise Unsupported(f"dropout_p={code_of(written)}: torch drops attention weights in every mode here "
                          "(scaled_dot_product_attention has no eval mode); write `RATE if self.training else 0`")
    layer = _attention_dropout(written, site)
    if layer is None:
        return Application(cst.Call(cst.Name("scaled_dot_product_attention"), args), [
            f"dropout_p={code_of(written)}: attention dropout is not applied (exact where the rate is 0, as in "
            "eval mode); written `RATE if self.training else 0` it would become the module's nnx.Dropout"])
    return Application(cst.Call(cst.Name("scaled_dot_product_attention"), [*args, keyword_arg("dropout", layer)]))


def _attention_dropout(rate: cst.BaseExpression, site: Site) -> cst.BaseExpression | None:
    """The module's dropout layer for `RATE if self.training else 0`, or None."""
    if site.owner_class is None or not m.matches(rate, m.IfExp(
            test=m.Attribute(value=m.Name("self"), attr=m.Name("training")))) \
            or literal(rate.orelse) not in (0, 0.0):
        return None
    body = rate.body
    if m.matches(body, m.Attribute(value=m.Attribute(value=m.Name("self"), attr=m.Name()), attr=m.Name("p"))):
        attribute = body.value.attr.value  # timm: self.attn_drop.p
        kind = site.ctx.layer_attributes.get(site.owner_class, {}).get(attribute)
        return cst.Attribute(cst.Name("self"), cst.Name(attribute)) if kind == "torch.nn.Dropout" else None
    if literal(body) is NO_VALUE and not m.matches(body, m.Attribute(value=m.Name("self"), attr=m.Name())):
        return None
    name = site.ctx.inject_attribute(site.owner_class, "attention_dropout", f"nnx.Dropout({code_of(body)}, rngs=rngs)")
    return cst.Attribute(cst.Name("self"), cst.Name(name))


_PLACEMENT_KEYWORDS = ("device", "non_blocking", "copy", "memory_format")


def tensor_to(rule: Rule, site: Site) -> Application:
    """x.to(device) -> x (JAX places arrays itself); x.to(dtype) -> x.astype(dtype).

    Whether a positional argument is a dtype or a device shows in the source
    for dtype constants (converted to jnp.* before this runs), `.dtype` and
    `.device` attributes, device strings and names such as `device`; anything
    else goes through the emitted `tensor_to`, which decides at run time, so a
    dtype held in a variable is never dropped.
    """
    dtype: cst.BaseExpression | None = None
    for arg in site.call.args:
        name = arg.keyword.value if arg.keyword else None
        if arg.star or (name is None and role_of(arg.value) == "unknown"):
            site.ctx.need_helper("tensor_to")
            args = [cst.Arg(site.receiver), *(a.with_changes(comma=cst.MaybeSentinel.DEFAULT) for a in site.call.args)]
            return Application(cst.Call(cst.Name("tensor_to"), args))
        if name == "dtype" or (name is None and role_of(arg.value) == "dtype"):
            dtype = arg.value
        elif name == "other":
            dtype = cst.Attribute(arg.value, cst.Name("dtype"))
        elif name is not None and name not in _PLACEMENT_KEYWORDS:
            raise Unsupported(f"x.to({name}=...): not an argument of torch.Tensor.to")
    if dtype is None:
        return Application(site.receiver)
    return Application(cst.Call(cst.Attribute(site.receiver, cst.Name("astype")), [cst.Arg(dtype)]))


def role_of(value: cst.BaseExpression) -> str:
    """What a positional argument of x.to(...) is, as far as its source shows: dtype, device, flag, unknown."""
    code = code_of(value)
    if code.startswith("jnp.") or code.endswith(".dtype"):
        return "dtype"
    if isinstance(value, (cst.SimpleString, cst.FormattedString)) or code.startswith("jax.devices("):
        return "device"
    last = code.rsplit(".", 1)[-1]
    if "dtype" in last:  # dtype, self.dtype, compute_dtype
        return "dtype"
    if "device" in last or last in ("dev", "rank", "local_rank"):  # device, x.device, target_device
        return "device"
    if code in ("True", "False") or isinstance(value, cst.Integer):  # non_blocking/copy flags; an int is a GPU index
        return "device"
    return "unknown"


def tensor_type(rule: Rule, site: Site) -> Application:
    """x.type(dtype) -> x.astype(dtype). x.type() (torch's type name, a string) and a tensor type
    (x.type(torch.LongTensor), x.type('torch.IntTensor')) have no JAX counterpart: reported."""
    bound = bind(rule, site.call)
    dtype = bound.get("dtype")
    if dtype is None:
        raise Unsupported("x.type() gives torch's type name ('torch.FloatTensor'); compare x.dtype instead")
    code = code_of(dtype)
    if isinstance(dtype, (cst.SimpleString, cst.FormattedString, cst.ConcatenatedString)) or code.endswith("Tensor"):
        raise Unsupported(f"x.type({code}) names a tensor type; write x.astype(jnp.DTYPE) with its dtype")
    return Application(cst.Call(cst.Attribute(site.receiver, cst.Name("astype")), [cst.Arg(dtype_of(dtype, site.ctx))]))


def default_device(rule: Rule, site: Site) -> Application:
    return Application(expr("jax.devices()[0]"))


GPU_AVAILABLE = "jax.default_backend() == 'gpu'"  # torch.cuda.is_available(), and where torch asks it itself


def gpu_available(rule: Rule, site: Site) -> Application:
    return Application(expr(GPU_AVAILABLE))
