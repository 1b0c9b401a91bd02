"""Builders for torch functions and tensor methods whose conversion depends on
the arguments' form (rules point here with `builder = "porter.convert.op_builders.NAME"`).

Each takes (rule, site) and returns an Application or raises Unsupported. A
method call under a rule whose signature starts with `input` arrives here as
the function call (`x.max(1)` as `torch.max(x, 1)`: see apply.as_function_call).
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from porter.convert.apply import Application, Site, bind
from porter.convert.context import code_of
from porter.convert.transforms import NO_VALUE, Unsupported, VALUE_TRANSFORMS, expr, keyword_arg, literal
from porter.rules.loader import Rule


def _call(func: str, *args: cst.BaseExpression, **keywords: cst.BaseExpression) -> cst.Call:
    return cst.Call(expr(func), [*(cst.Arg(a) for a in args), *(keyword_arg(k, v) for k, v in keywords.items())])


def _simple(node: cst.BaseExpression) -> bool:
    """A name or attribute chain: cheap and safe to write twice."""
    while isinstance(node, cst.Attribute):
        node = node.value
    return isinstance(node, cst.Name)


def _pure(node: cst.BaseExpression) -> bool:
    """Names, attributes and subscripts (no calls): cheap and safe to write twice."""
    return not m.findall(node, m.Call())


def _called(site: Site) -> str:
    """The name the call used: `torch.rand_like(x)` -> 'rand_like'."""
    func = site.call.func
    return func.attr.value if isinstance(func, cst.Attribute) else code_of(func)


def _int(node: cst.BaseExpression | None) -> int | None:
    value = literal(node) if node is not None else NO_VALUE
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _given(bound: dict, name: str, default=None):
    """The bound expression, or None when absent or spelled as the literal default."""
    node = bound.get(name)
    if node is None:
        return None
    value = literal(node)
    if value is not NO_VALUE and value == default:
        return None
    return node


def _pair(first: cst.BaseExpression, second: cst.BaseExpression) -> cst.Tuple:
    return cst.Tuple([cst.Element(first), cst.Element(second)])


def _axis_args(dim: cst.BaseExpression | None, keepdim: cst.BaseExpression | None) -> dict:
    out = {}
    if dim is not None:
        out["axis"] = dim
    if keepdim is not None:
        out["keepdims"] = keepdim
    return out


def _dtype(node: cst.BaseExpression, site: Site) -> cst.BaseExpression:
    return VALUE_TRANSFORMS["dtype"](node, site.ctx)


# ---------------------------------------------------------------- reductions returning (values, indices)
def max_min(rule: Rule, site: Site) -> Application:
    """torch.max(x) -> jnp.max(x); torch.max(x, dim) -> (values, indices); torch.max(x, other) -> jnp.maximum."""
    fn = "max" if rule.source[0].endswith("max") else "min"
    args = site.call.args
    if any(a.star for a in args):
        raise Unsupported("star arguments")
    positional = [a.value for a in args if a.keyword is None]
    keywords = {a.keyword.value: a.value for a in args if a.keyword is not None}
    if set(keywords) - {"input", "dim", "keepdim", "other"}:
        raise Unsupported(f"keyword(s) {sorted(set(keywords) - {'input', 'dim', 'keepdim', 'other'})}")
    x = keywords.get("input") or (positional.pop(0) if positional else None)
    if x is None:
        raise Unsupported("no input")
    second = positional[0] if positional else None
    if "other" in keywords or (second is not None and "dim" not in keywords and _int(second) is None
                               and literal(second) is NO_VALUE and len(positional) == 1 and "keepdim" not in keywords):
        other = keywords.get("other", second)
        if _looks_like_dim(other):
            raise Unsupported(f"torch.{fn}(x, {code_of(other)}): a dim or a tensor? write dim= or torch.{fn}imum")
        return Application(_call(f"jnp.{fn}imum", x, other))
    dim = keywords.get("dim", second)
    keepdim = keywords.get("keepdim", positional[1] if len(positional) > 1 else None)
    if dim is None:
        if keepdim is not None:
            raise Unsupported("keepdim without dim")
        return Application(_call(f"jnp.{fn}", x))
    if not _simple(x):
        raise Unsupported(f"(values, indices) of {code_of(x)}: assign it to a name first")
    keep = _given({"k": keepdim}, "k", False) if keepdim is not None else None
    values = _call(f"jnp.{fn}", x, **_axis_args(dim, keep))
    indices = _call(f"jnp.arg{fn}", x, **_axis_args(dim, keep))
    return Application(_pair(values, indices))


def _looks_like_dim(node: cst.BaseExpression) -> bool:
    code = code_of(node)
    return code in ("dim", "axis") or code.endswith((".dim", "_dim", ".axis"))


def std_var(rule: Rule, site: Site) -> Application:
    """torch.std/var (and std_mean/var_mean): ddof from correction or unbiased (default 1), always written."""
    name = _called(site)
    args = site.call.args
    if any(a.star for a in args):
        raise Unsupported("star arguments")
    positional = [a.value for a in args if a.keyword is None]
    keywords = {a.keyword.value: a.value for a in args if a.keyword is not None}
    if set(keywords) - {"input", "dim", "unbiased", "keepdim", "correction"}:
        raise Unsupported(f"keyword(s) {sorted(set(keywords) - {'input', 'dim', 'unbiased', 'keepdim', 'correction'})}")
    x = keywords.get("input") or (positional.pop(0) if positional else None)
    if x is None:
        raise Unsupported("no input")
    names = ["unbiased"] if positional and isinstance(literal(positional[0]), bool) else ["dim", "unbiased", "keepdim"]
    if len(positional) > len(names):
        raise Unsupported("more positional arguments than torch's signature takes")
    values = dict(zip(names, positional))
    for key, value in keywords.items():
        if key in values:
            raise Unsupported(f"{key} given twice")
        values[key] = value
    if "correction" in values and "unbiased" in values:
        raise Unsupported("both unbiased and correction")
    if "correction" in values:
        ddof = values["correction"]
        if literal(ddof) is None:
            ddof = cst.Integer("1")
    elif "unbiased" in values:
        unbiased = literal(values["unbiased"])
        if unbiased not in (True, False):
            raise Unsupported(f"unbiased={code_of(values['unbiased'])} must be a literal")
        ddof = cst.Integer("1" if unbiased else "0")
    else:
        ddof = cst.Integer("1")
    dim = values.get("dim")
    if dim is not None and literal(dim) is None:
        dim = None
    if isinstance(dim, cst.List):
        dim = cst.Tuple(dim.elements)
    keep = _given(values, "keepdim", False)
    fn = "std" if name.startswith("std") else "var"
    keywords_out = {"axis": dim} if dim is not None else {}
    keywords_out["ddof"] = ddof
    if keep is not None:
        keywords_out["keepdims"] = keep
    spread = _call(f"jnp.{fn}", x, **keywords_out)
    if not name.endswith("_mean"):
        return Application(spread)
    if not _simple(x):
        raise Unsupported(f"({fn}, mean) of {code_of(x)}: assign it to a name first")
    return Application(_pair(spread, _call("jnp.mean", x, **_axis_args(dim, keep))))


def sort(rule: Rule, site: Site) -> Application:
    """torch.sort(x, dim=-1, descending=False) -> (jnp.sort(...), jnp.argsort(...))."""
    bound = bind(rule, site.call)
    x = bound["input"]
    if not _simple(x):
        raise Unsupported(f"(values, indices) of {code_of(x)}: assign it to a name first")
    keywords = {"axis": bound["dim"]} if "dim" in bound and literal(bound["dim"]) != -1 else {}
    descending = _given(bound, "descending", False)
    if descending is not None:
        keywords["descending"] = descending
    stable = _given(bound, "stable", False)
    del stable  # jnp sorts are stable; torch's unstable sort may order ties either way
    return Application(_pair(_call("jnp.sort", x, **keywords), _call("jnp.argsort", x, **keywords)))


def argsort(rule: Rule, site: Site) -> Application:
    bound = bind(rule, site.call)
    keywords = {"axis": bound["dim"]} if "dim" in bound and literal(bound["dim"]) != -1 else {}
    descending = _given(bound, "descending", False)
    if descending is not None:
        keywords["descending"] = descending
    return Application(_call("jnp.argsort", bound["input"], **keywords))


def topk(rule: Rule, site: Site) -> Application:
    """torch.topk(x, k, dim=-1, largest=True, sorted=True) -> jax.lax.top_k (values, indices)."""
    bound = bind(rule, site.call)
    x, k = bound["input"], bound["k"]
    axis = {"axis": bound["dim"]} if "dim" in bound and literal(bound["dim"]) != -1 else {}
    if literal(bound.get("sorted", cst.Name("True"))) is not True:
        raise Unsupported("sorted=False: torch leaves the order unspecified; pass sorted=True")
    largest = literal(bound.get("largest", cst.Name("True")))
    if largest is True:
        return Application(_call("jax.lax.top_k", x, k, **axis))
    if largest is False:
        if not _simple(x):
            raise Unsupported(f"largest=False on {code_of(x)}: assign it to a name first")
        call = _call("jax.lax.top_k", cst.UnaryOperation(cst.Minus(), x), k, **axis)
        values = cst.Subscript(call, [cst.SubscriptElement(cst.Index(cst.Integer("0")))])
        indices = cst.Subscript(call, [cst.SubscriptElement(cst.Index(cst.Integer("1")))])
        return Application(_pair(cst.UnaryOperation(cst.Minus(), values), indices))
    raise Unsupported(f"largest={code_of(bound['largest'])} must be a literal")


def median(rule: Rule, site: Site) -> Application:
    """torch's median is the lower median (no averaging); with dim, (values, indices)."""
    bound = bind(rule, site.call)
    x = bound["input"]
    keep = _given(bound, "keepdim", False)
    if "dim" not in bound or literal(bound["dim"]) is None:
        return Application(_call("jnp.quantile", x, cst.Float("0.5"), method=cst.SimpleString("'lower'")))
    if not _simple(x):
        raise Unsupported(f"(values, indices) of {code_of(x)}: assign it to a name first")
    dim = bound["dim"]
    values = _call("jnp.quantile", x, cst.Float("0.5"), **_axis_args(dim, keep), method=cst.SimpleString("'lower'"))
    middle = expr(f"({code_of(x)}.shape[{code_of(dim)}] - 1) // 2")
    order = _call("jnp.argsort", x, axis=dim)
    index = _call("jnp.take", order, middle, axis=dim)
    if keep is not None:
        index = _call("jnp.expand_dims", index, dim) if literal(keep) is True else index
        if literal(keep) not in (True, False):
            raise Unsupported("keepdim must be a literal")
    return Application(_pair(values, index))


def kthvalue(rule: Rule, site: Site) -> Application:
    """torch.kthvalue(x, k, dim=-1, keepdim=False): the k-th smallest (1-based) and its index."""
    bound = bind(rule, site.call)
    x, k = bound["input"], bound["k"]
    if not _simple(x):
        raise Unsupported(f"(values, indices) of {code_of(x)}: assign it to a name first")
    dim = bound.get("dim", expr("-1"))
    keep = literal(bound.get("keepdim", cst.Name("False")))
    if keep not in (True, False):
        raise Unsupported("keepdim must be a literal")
    k_index = expr(f"{code_of(k)} - 1") if _int(k) is None else cst.Integer(str(_int(k) - 1))
    values = _call("jnp.take", _call("jnp.sort", x, axis=dim), k_index, axis=dim)
    indices = _call("jnp.take", _call("jnp.argsort", x, axis=dim), k_index, axis=dim)
    if keep:
        values, indices = _call("jnp.expand_dims", values, dim), _call("jnp.expand_dims", indices, dim)
    return Application(_pair(values, indices))


# ---------------------------------------------------------------- shapes
def expand(rule: Rule, site: Site) -> Application:
    """x.expand(b, -1, n) -> jnp.broadcast_to(x, (b, x.shape[1], n)): -1 keeps the size."""
    if site.receiver is None:
        raise Unsupported("expand is a tensor method")
    args = site.call.args
    if len(args) == 1 and args[0].star == "*":
        sizes = args[0].value
        if m.matches(sizes, m.Attribute(attr=m.Name("shape"))):  # x.expand(*y.shape): no -1 there
            return Application(_call("jnp.broadcast_to", site.receiver, sizes))
        site.ctx.need_helper("expand_to")  # x.expand(*sizes): a -1 in them is known only when it runs
        return Application(_call("expand_to", site.receiver, sizes))
    sizes = [a.value for a in args if a.keyword is None and not a.star]
    if any(a.keyword is not None or a.star for a in args):
        raise Unsupported("expand(*sizes) mixing star arguments with sizes (a -1 must be written out)")
    if len(sizes) == 1 and isinstance(sizes[0], (cst.Tuple, cst.List)):
        sizes = [e.value for e in sizes[0].elements]  # x.expand((b, -1))
    x = site.receiver
    needs_shape = [i for i, s in enumerate(sizes) if literal(s) == -1]
    if needs_shape and not _pure(x):
        raise Unsupported(f"expand(-1, ...) of {code_of(x)}: assign it to a name first")
    lead = len(sizes)
    elements = []
    for i, size in enumerate(sizes):
        if literal(size) == -1:
            offset = i - lead  # negative: counts from the end, whatever x's rank
            elements.append(expr(f"{code_of(x)}.shape[{offset}]"))
        else:
            elements.append(size)
    shape = cst.Tuple([cst.Element(e) for e in elements]) if len(elements) != 1 else \
        cst.Tuple([cst.Element(elements[0], comma=cst.Comma())])
    return Application(_call("jnp.broadcast_to", x, shape))


def unflatten(rule: Rule, site: Site) -> Application:
    """x.unflatten(dim, sizes) -> x.reshape(x.shape[:dim] + sizes + x.shape[dim + 1:])."""
    bound = bind(rule, site.call)
    x, dim, sizes = bound["input"], bound["dim"], bound["sizes"]
    if not _simple(x):
        raise Unsupported(f"unflatten of {code_of(x)}: assign it to a name first")
    d = _int(dim)
    if d is None:
        raise Unsupported("dim must be a literal int")
    if isinstance(sizes, cst.List):
        sizes = cst.Tuple(sizes.elements)
    sizes_code = code_of(sizes) if isinstance(sizes, cst.Tuple) else f"tuple({code_of(sizes)})"
    if isinstance(sizes, cst.Tuple) and len(sizes.elements) == 1:
        sizes_code = f"({code_of(sizes.elements[0].value)},)"
    name = code_of(x)
    prefix = f"{name}.shape[:{d}] + " if d != 0 else ""
    suffix = "" if d == -1 else f" + {name}.shape[{d + 1}:]"
    return Application(expr(f"{name}.reshape({prefix}{sizes_code}{suffix})"))


def narrow(rule: Rule, site: Site) -> Application:
    """x.narrow(dim, start, length) -> jax.lax.slice_in_dim(x, start, start + length, axis=dim)."""
    bound = bind(rule, site.call)
    x, dim, start, length = bound["input"], bound["dim"], bound["start"], bound["length"]
    s, n = _int(start), _int(length)
    if s is not None and n is not None:
        end = s + n
        stop = cst.Name("None") if end == 0 and s < 0 else cst.Integer(str(end)) if end >= 0 else expr(str(end))
        return Application(_call("jax.lax.slice_in_dim", x, start, stop, axis=dim))
    if s is not None and s < 0:
        raise Unsupported("a negative start with a non-literal length")
    application = Application(_call("jax.lax.dynamic_slice_in_dim", x, start, length, axis=dim))
    if s is None:
        application.infos.append("start is taken to be >= 0 (torch counts a negative start from the end)")
    return application


def squeeze(rule: Rule, site: Site) -> Application:
    """x.squeeze() -> jnp.squeeze(x); x.squeeze(d) -> squeeze_dims(x, d): torch leaves a dim of size != 1 alone."""
    bound = bind(rule, site.call)
    x = bound["input"]
    dim = bound.get("dim")
    if dim is None or literal(dim) is None:
        return Application(_call("jnp.squeeze", x))
    site.ctx.need_helper("squeeze_dims")
    if isinstance(dim, cst.List):
        dim = cst.Tuple(dim.elements)
    return Application(_call("squeeze_dims", x, dim))


def unbind(rule: Rule, site: Site) -> Application:
    bound = bind(rule, site.call)
    dim = bound.get("dim")
    keywords = {"axis": dim} if dim is not None and literal(dim) != 0 else {}
    return Application(_call("jnp.unstack", bound["input"], **keywords))


def split(rule: Rule, site: Site) -> Application:
    """torch.split(x, n | [sizes], dim) -> split_by_size / jnp.split at the cut points."""
    bound = bind(rule, site.call)
    x, sizes = bound["input"], bound["split_size_or_sections"]
    axis = keyword_arg("axis", bound.get("dim", cst.Integer("0")))
    value = literal(sizes)
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, int) for v in value):
            raise Unsupported(f"split sizes {code_of(sizes)} must be ints")
        cuts = [sum(value[: i + 1]) for i in range(len(value) - 1)]
        return Application(cst.Call(expr("jnp.split"), [cst.Arg(x), cst.Arg(expr(repr(cuts))), axis]))
    if isinstance(sizes, (cst.List, cst.Tuple)):
        parts = [code_of(e.value) for e in sizes.elements]
        cuts = [" + ".join(parts[: i + 1]) for i in range(len(parts) - 1)]
        return Application(cst.Call(expr("jnp.split"), [cst.Arg(x), cst.Arg(expr(f"[{', '.join(cuts)}]")), axis]))
    site.ctx.need_helper("split_by_size")
    return Application(cst.Call(cst.Name("split_by_size"), [cst.Arg(x), cst.Arg(sizes), axis]))


def batch_norm(rule: Rule, site: Site) -> Application:
    """F.batch_norm -> the emitted batch_norm: with the running statistics (training=False), or with the batch's
    when there are none to update (training=True, running_mean and running_var None: weight
    standardisation's use). training=True with running statistics updates them in place: not converted."""
    bound = bind(rule, site.call)
    training = bound.get("training")
    batch_statistics = training is not None and code_of(training) != "False"
    if batch_statistics and not all(code_of(bound[name]) == "None" for name in ("running_mean", "running_var")):
        raise Unsupported("training=True updates running_mean/running_var in place; only None statistics convert")
    args = [cst.Arg(bound[name]) for name in ("input", "running_mean", "running_var")]
    args += [keyword_arg(name, bound[name]) for name in ("weight", "bias") if name in bound]
    if batch_statistics:
        args.append(keyword_arg("training", training))
    if "eps" in bound:
        args.append(keyword_arg("eps", bound["eps"]))
    site.ctx.need_helper("batch_norm")
    return Application(cst.Call(cst.Name("batch_norm"), args))


def einsum(rule: Rule, site: Site) -> Application:
    """torch.einsum(eq, a, b) and torch.einsum(eq, [a, b]) -> jnp.einsum(eq, a, b)."""
    args = site.call.args
    if not args or any(a.keyword is not None for a in args):
        raise Unsupported("einsum with keywords")
    operands = [a for a in args[1:]]
    if len(operands) == 1 and isinstance(operands[0].value, (cst.List, cst.Tuple)) and not operands[0].star:
        operands = [cst.Arg(e.value) for e in operands[0].value.elements]
    return Application(cst.Call(expr("jnp.einsum"), [cst.Arg(args[0].value), *[
        cst.Arg(a.value, star=a.star) for a in operands]]))


def stack(rule: Rule, site: Site) -> Application:
    """torch.stack(tensors, dim) -> jnp.stack(tensors, axis=dim). Rows that each become a jax array
    (`torch.stack([torch.from_numpy(data[i:i + n]) for i in ix])`, a batch read from a memmap) are stacked on
    the host and moved once: `jnp.asarray(np.stack([data[i:i + n] for i in ix]))`, the same values and dtype
    with one transfer instead of one per row (each costs about 0.1 ms on a CPU)."""
    bound = bind(rule, site.call)
    if "out" in bound and literal(bound["out"]) is not None:
        raise Unsupported("out=")
    tensors = bound["tensors"]
    axis = [keyword_arg("axis", bound["dim"])] if "dim" in bound else []
    if isinstance(tensors, cst.ListComp) and m.matches(tensors.elt, m.Call(
            func=m.Attribute(value=m.Name("jnp"), attr=m.Name("asarray")), args=[m.Arg(keyword=None, star="")])):
        rows = tensors.with_changes(elt=tensors.elt.args[0].value)
        return Application(cst.Call(expr("jnp.asarray"), [cst.Arg(cst.Call(expr("np.stack"), [cst.Arg(rows), *axis]))]))
    return Application(cst.Call(expr("jnp.stack"), [cst.Arg(tensors), *axis]))


def variadic_tensors(rule: Rule, site: Site) -> Application:
    """torch.meshgrid(a, b, indexing='ij') / torch.broadcast_tensors(a, b): tensors as positional args or one list."""
    args = site.call.args
    keywords = {a.keyword.value: a.value for a in args if a.keyword is not None}
    tensors = [a for a in args if a.keyword is None]
    if len(tensors) == 1 and isinstance(tensors[0].value, (cst.List, cst.Tuple)) and not tensors[0].star:
        tensors = [cst.Arg(e.value) for e in tensors[0].value.elements]
    out_keywords = []
    if rule.source[0] == "torch.meshgrid":
        if set(keywords) - {"indexing"}:
            raise Unsupported(f"keyword(s) {sorted(set(keywords) - {'indexing'})}")
        indexing = keywords.get("indexing", cst.SimpleString("'ij'"))
        if literal(indexing) not in ("ij", "xy"):
            raise Unsupported("indexing must be the literal 'ij' or 'xy'")
        out_keywords.append(keyword_arg("indexing", indexing))  # torch's default is 'ij', numpy's 'xy'
    elif keywords:
        raise Unsupported(f"keyword(s) {sorted(keywords)}")
    target = rule.target if rule.target != "builder" else {"torch.meshgrid": "jnp.meshgrid"}.get(
        rule.source[0], "jnp.broadcast_arrays")
    return Application(cst.Call(expr(target), [cst.Arg(a.value, star=a.star) for a in tensors] + out_keywords))


def pad(rule: Rule, site: Site) -> Application:
    """F.pad(x, (l, r, t, b), mode, value): torch pads from the last dim backwards, jnp.pad per axis from the first."""
    bound = bind(rule, site.call)
    x, widths = bound["input"], bound["pad"]
    mode = literal(bound.get("mode", cst.SimpleString("'constant'")))
    modes = {"constant": None, "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
    if mode not in modes:
        raise Unsupported(f"mode={code_of(bound['mode'])}")
    value = bound.get("value")
    if value is not None and literal(value) in (None, 0, 0.0):
        value = None
    if value is not None and mode != "constant":
        raise Unsupported("value with a mode other than 'constant'")
    if not isinstance(widths, (cst.Tuple, cst.List)) or _pad_widths_need_helper(widths, mode):
        # F.pad(x, self.padding), F.pad(x, (*pairs, l, r)) or a crop: the helper reads the pairs at run time
        site.ctx.need_helper("pad_nchw")
        keywords = {"mode": bound["mode"]} if mode != "constant" else {}
        if value is not None:
            keywords["value"] = value
        return Application(_call("pad_nchw", x, widths, **keywords))
    items = [e.value for e in widths.elements]
    if len(items) % 2 or any(isinstance(e, cst.StarredElement) for e in widths.elements):
        raise Unsupported("pad needs an even number of widths")
    if any((_int(v) is not None and _int(v) < 0) for v in items):
        raise Unsupported("negative padding (cropping)")
    pairs = [(items[i], items[i + 1]) for i in range(0, len(items), 2)][::-1]  # the last dim's pair comes first
    pairs_code = ", ".join(f"({code_of(a)}, {code_of(b)})" for a, b in pairs)
    n = len(pairs)
    if not _simple(x):
        raise Unsupported(f"F.pad of {code_of(x)}: assign it to a name first")
    widths_code = f"[(0, 0)] * ({code_of(x)}.ndim - {n}) + [{pairs_code}]"
    keywords = {}
    if modes[mode]:
        keywords["mode"] = cst.SimpleString(repr(modes[mode]))
    if value is not None:
        keywords["constant_values"] = value
    return Application(_call("jnp.pad", x, expr(widths_code), **keywords))


def _pad_widths_need_helper(widths: cst.Tuple | cst.List, mode: str) -> bool:
    """Widths whose count is known only at run time (a starred element), or a constant-mode crop
    (a negative width: jax.lax.pad crops, jnp.pad cannot)."""
    if any(isinstance(e, cst.StarredElement) for e in widths.elements):
        return True
    negative = any(_int(e.value) is not None and _int(e.value) < 0 or isinstance(e.value, cst.UnaryOperation)
                   and isinstance(e.value.operator, cst.Minus) for e in widths.elements)
    return negative and mode == "constant"


def conv(rule: Rule, site: Site) -> Application:
    """F.conv{1,2,3}d -> jax.lax.conv_general_dilated with torch's NC*/OI* layouts (+ bias)."""
    bound = bind(rule, site.call)
    n = int(rule.source[0][-2])
    spatial = "DHW"[-n:]
    numbers = f"('NC{spatial}', 'OI{spatial}', 'NC{spatial}')"
    keywords = {"window_strides": _conv_tuple(bound.get("stride", cst.Integer("1")), n, site)}
    padding = bound.get("padding", cst.Integer("0"))
    if _held(padding):
        site.ctx.need_helper("conv_padding")
        keywords["padding"] = _call("conv_padding", padding, cst.Integer(str(n)))
    else:
        keywords["padding"] = VALUE_TRANSFORMS[f"conv_padding{n}"](padding, site.ctx) if n != 3 else \
            _conv_padding3(padding, site)
    if literal(bound.get("dilation", cst.Integer("1"))) != 1:
        keywords["rhs_dilation"] = _conv_tuple(bound["dilation"], n, site)
    keywords["dimension_numbers"] = expr(numbers)
    if literal(bound.get("groups", cst.Integer("1"))) != 1:
        keywords["feature_group_count"] = bound["groups"]
    out = _call("jax.lax.conv_general_dilated", bound["input"], bound["weight"], **keywords)
    bias = bound.get("bias")
    if bias is not None and literal(bias) is not None:
        index = ", ".join([":"] + ["None"] * n)
        atom = isinstance(bias, (cst.Name, cst.Attribute, cst.Call, cst.Subscript))
        bias_code = code_of(bias) if atom else f"({code_of(bias)})"
        if isinstance(bias, (cst.Name, cst.Attribute)):  # self.bias may be None (a layer without bias)
            added = expr(f"({bias_code}[{index}] if {bias_code} is not None else 0)")
        else:
            added = expr(f"{bias_code}[{index}]")
        out = cst.BinaryOperation(out, cst.Add(), added)
    return Application(out)


def _held(node: cst.BaseExpression) -> bool:
    """A value held by a name or attribute (`self.stride` of a Conv2d subclass): an int or a tuple, whichever
    it holds at run time."""
    return literal(node) is NO_VALUE and not isinstance(node, (cst.Tuple, cst.List))


def _conv_tuple(node: cst.BaseExpression, n: int, site: Site) -> cst.BaseExpression:
    if _held(node):
        site.ctx.need_helper("ntuple")
        return _call("ntuple", node, cst.Integer(str(n)))
    return VALUE_TRANSFORMS[f"tuple{n}"](node, site.ctx)


def _conv_padding3(node: cst.BaseExpression, site: Site) -> cst.BaseExpression:
    value = literal(node)
    if isinstance(value, str):
        if value in ("same", "valid"):
            return expr(repr(value.upper()))
        raise Unsupported(f"padding={value!r}")
    if isinstance(value, int):
        return expr(repr(((value, value),) * 3))
    if isinstance(value, (tuple, list)) and len(value) == 3:
        return expr(repr(tuple((v, v) for v in value)))
    raise Unsupported(f"padding={code_of(node)}")


def pool(rule: Rule, site: Site) -> Application:
    """F.max_pool{1,2,3}d / F.avg_pool{1,2,3}d -> max_pool_nchw / avg_pool_nchw (ceil_mode included)."""
    bound = bind(rule, site.call)
    n = int(rule.source[0][-2])
    kind = "max" if "max_pool" in rule.source[0] else "avg"
    helper = f"{kind}_pool_nchw"
    site.ctx.need_helper(helper)
    tuple_n = VALUE_TRANSFORMS[f"tuple{n}"]
    keywords = {"window_shape": tuple_n(bound["kernel_size"], site.ctx)}
    stride = bound.get("stride")
    if stride is not None and literal(stride) not in (None, [], ()):
        keywords["strides"] = tuple_n(stride, site.ctx)
    padding = bound.get("padding")
    if padding is not None and literal(padding) != 0:
        keywords["padding"] = _pool_pairs(padding, n)
    if kind == "max":
        if literal(bound.get("dilation", cst.Integer("1"))) not in (1, (1,) * n, [1] * n):
            raise Unsupported("dilation != 1")
        if literal(bound.get("return_indices", cst.Name("False"))) is not False:
            raise Unsupported("return_indices=True")
    else:
        if literal(bound.get("divisor_override", cst.Name("None"))) is not None:
            raise Unsupported("divisor_override")
        include = bound.get("count_include_pad")
        if include is not None and literal(include) is not True:
            keywords["count_include_pad"] = include
    ceil = bound.get("ceil_mode")
    if ceil is not None and literal(ceil) is not False:
        keywords["ceil_mode"] = ceil
    return Application(_call(helper, bound["input"], **keywords))


def _pool_pairs(node: cst.BaseExpression, n: int) -> cst.BaseExpression:
    value = literal(node)
    if isinstance(value, int) and not isinstance(value, bool):
        items = [repr(value)] * n
    elif isinstance(value, (tuple, list)) and len(value) == n and all(isinstance(v, int) for v in value):
        items = [repr(v) for v in value]
    elif value is NO_VALUE and not isinstance(node, (cst.Tuple, cst.List)):
        items = [code_of(node)] * n
    elif isinstance(node, (cst.Tuple, cst.List)) and len(node.elements) == n \
            and not any(isinstance(e, cst.StarredElement) for e in node.elements):
        items = [code_of(e.value) for e in node.elements]  # (kh // 2, kw // 2)
    else:
        raise Unsupported(f"padding={code_of(node)}")
    pairs = ", ".join(f"({p}, {p})" for p in items)
    return expr(f"({pairs},)" if n == 1 else f"({pairs})")


def interpolate(rule: Rule, site: Site) -> Application:
    """F.interpolate -> interpolate_nchw: torch's own index math (nearest floors; no antialias)."""
    bound = bind(rule, site.call)
    if literal(bound.get("antialias", cst.Name("False"))) is not False:
        raise Unsupported("antialias=True")
    mode_node = bound.get("mode", cst.SimpleString("'nearest'"))
    mode = literal(mode_node)
    modes = ("nearest", "nearest-exact", "linear", "bilinear", "trilinear")
    if mode is not NO_VALUE and mode not in modes:
        raise Unsupported(f"mode={code_of(mode_node)}: only {modes}")
    size, scale = bound.get("size"), bound.get("scale_factor")
    if (size is None or literal(size) is None) == (scale is None or literal(scale) is None):
        raise Unsupported("exactly one of size and scale_factor must be given")
    keywords = {}
    if size is not None and literal(size) is not None:
        keywords["size"] = size
    else:
        keywords["scale_factor"] = scale
    recompute = literal(bound.get("recompute_scale_factor", cst.Name("None")))
    if recompute not in (None, False, True):
        raise Unsupported("recompute_scale_factor must be a literal")
    if recompute is True and "scale_factor" in keywords:
        keywords["recompute_scale_factor"] = cst.Name("True")
    if mode != "nearest":  # a mode held in a variable goes through: the helper raises on one it lacks
        keywords["mode"] = mode_node
    align = bound.get("align_corners")
    if align is not None and literal(align) is not None:
        if mode in ("nearest", "nearest-exact"):
            raise Unsupported(f"align_corners with mode={mode!r}")
        if literal(align) is not False:
            keywords["align_corners"] = align
    site.ctx.need_helper("interpolate_nchw")
    return Application(_call("interpolate_nchw", bound["input"], **keywords))


def upsample_bilinear(rule: Rule, site: Site) -> Application:
    """F.upsample_bilinear(x, size, scale_factor) is interpolate(mode='bilinear', align_corners=True)."""
    bound = bind(rule, site.call)
    keywords = {k: bound[k] for k in ("size", "scale_factor") if k in bound and literal(bound[k]) is not None}
    if len(keywords) != 1:
        raise Unsupported("exactly one of size and scale_factor must be given")
    site.ctx.need_helper("interpolate_nchw")
    return Application(_call("interpolate_nchw", bound["input"], **keywords, mode=cst.SimpleString("'bilinear'"),
                             align_corners=cst.Name("True")))


def div(rule: Rule, site: Site) -> Application:
    """torch.div(a, b, rounding_mode=None|'trunc'|'floor')."""
    bound = bind(rule, site.call)
    a, b = bound["input"], bound["other"]
    mode = bound.get("rounding_mode")
    value = literal(mode) if mode is not None else None
    wrap = lambda n: n if isinstance(n, (cst.Name, cst.Attribute, cst.Call, cst.Subscript, cst.Integer, cst.Float)) \
        else n.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])  # noqa: E731
    if value is None:
        return Application(cst.BinaryOperation(wrap(a), cst.Divide(), wrap(b)))
    if value == "floor":
        return Application(cst.BinaryOperation(wrap(a), cst.FloorDivide(), wrap(b)))
    if value == "trunc":
        site.ctx.need_helper("div_trunc")
        return Application(_call("div_trunc", a, b))
    raise Unsupported(f"rounding_mode={code_of(mode)}")


# ---------------------------------------------------------------- creation and randomness
def _key(site: Site) -> tuple[cst.BaseExpression, list[str], list[str]]:
    """A PRNG key: the constructor's rngs, the module's stored Rngs, or the file's module-level Rngs."""
    if site.rngs_in_scope:
        return expr("rngs.params()"), [], []
    if site.owner_class is not None and site.method is not None:
        injected = site.ctx.injected_init_statements.get(site.owner_class, [])
        name = next((line.split("=")[0].strip().removeprefix("self.") for line in injected
                     if line.split("=", 1)[1].strip() == "rngs"), None) \
            or site.ctx.inject_attribute(site.owner_class, "rngs", "rngs")
        if (site.owner_class, site.method) in site.ctx.keyed_methods:  # generate(..., rngs=None)
            site.ctx.keyed_methods[(site.owner_class, site.method)] = name
            return expr("rngs()"), [f"{site.method} takes an optional rngs argument for its random numbers "
                                    f"(nnx.Rngs(seed) for the same draws every call); without it they come from "
                                    f"self.{name} = rngs, added to __init__, new ones on every call"], []
        return expr(f"self.{name}()"), [f"self.{name} = rngs is added to __init__: random numbers come from "
                                        "its default stream, new ones on every call"], []
    name = site.ctx.use_global_rngs()
    if site.function is not None:
        site.ctx.drawing_functions.add(site.function)
    return expr(f"{name}()"), [f"random numbers outside a module take fresh keys from {name}, a module-level "
                               "nnx.Rngs that stands for torch's global generator: seeded where torch.manual_seed "
                               "is called in this file (from 0 until then, or if it never is); JAX's generator, "
                               "not torch's numbers"], []


def _size(values: list) -> cst.BaseExpression:
    """torch's *size as one shape expression: (2, 3), a given tuple, or x.shape from *x.shape."""
    if len(values) == 1 and isinstance(values[0], cst.Arg):
        return values[0].value
    if any(isinstance(v, cst.Arg) for v in values):
        return cst.Tuple([cst.StarredElement(v.value) if isinstance(v, cst.Arg) else cst.Element(v) for v in values])
    if len(values) == 1 and (isinstance(values[0], (cst.Tuple, cst.List)) or _int(values[0]) is None):
        return values[0]
    return cst.Tuple([cst.Element(v) for v in values]) if len(values) != 1 else \
        cst.Tuple([cst.Element(values[0], comma=cst.Comma())])


def _random_application(site: Site, call: cst.BaseExpression) -> Application:
    generator = next((a.value for a in site.call.args if a.keyword and a.keyword.value == "generator"), None)
    if generator is not None and code_of(generator) != "None":
        # a torch.Generator's own stream (seeded, shared between draws) has no key to stand for it here
        raise Unsupported(f"generator={code_of(generator)}: draws from a torch.Generator of their own")
    key, infos, warnings = _key(site)
    node = call.visit(_ReplaceName("KEY", key))
    return Application(node, warnings, infos)


class _ReplaceName(cst.CSTTransformer):
    def __init__(self, name: str, value: cst.BaseExpression) -> None:
        super().__init__()
        self.name, self.value = name, value

    def leave_Name(self, original_node, updated_node):
        return self.value if original_node.value == self.name else updated_node


def random(rule: Rule, site: Site) -> Application:
    """torch.rand/randn(*size, dtype) -> jax.random.uniform/normal(key, size, dtype)."""
    bound = bind(rule, site.call)
    size = bound.get("size")
    if not size:
        raise Unsupported("no size")
    fn = {"torch.rand": "uniform", "torch.randn": "normal"}[rule.source[0]]
    args = [cst.Name("KEY"), _size(size)]
    if "dtype" in bound and literal(bound["dtype"]) is not None:
        args.append(_dtype(bound["dtype"], site))
    return _random_application(site, cst.Call(expr(f"jax.random.{fn}"), [cst.Arg(a) for a in args]))


def random_like(rule: Rule, site: Site) -> Application:
    """torch.rand_like/randn_like(x, dtype) -> jax.random.uniform/normal(key, x.shape, x.dtype)."""
    bound = bind(rule, site.call)
    x = bound["input"]
    if not _simple(x):
        raise Unsupported(f"{rule.source[0]} of {code_of(x)}: assign it to a name first")
    fn = {"rand_like": "uniform", "randn_like": "normal"}[_called(site)]
    dtype = _dtype(bound["dtype"], site) if "dtype" in bound and literal(bound["dtype"]) is not None \
        else expr(f"{code_of(x)}.dtype")
    call = cst.Call(expr(f"jax.random.{fn}"), [cst.Arg(cst.Name("KEY")), cst.Arg(expr(f"{code_of(x)}.shape")),
                                               cst.Arg(dtype)])
    return _random_application(site, call)


def randint(rule: Rule, site: Site) -> Application:
    """torch.randint(high, size) / randint(low, high, size) -> jax.random.randint(key, size, low, high)."""
    args = site.call.args
    positional = [a.value for a in args if a.keyword is None]
    keywords = {a.keyword.value: a.value for a in args if a.keyword is not None}
    if any(a.star for a in args) or set(keywords) - {"low", "high", "size", "dtype", "device", "requires_grad"}:
        raise Unsupported("arguments other than low, high, size, dtype")
    names = ["high", "size"] if len(positional) + len({"low", "high", "size"} & set(keywords)) == 2 \
        and "low" not in keywords else ["low", "high", "size"]
    values = dict(zip(names, positional))
    values.update({k: v for k, v in keywords.items() if k in ("low", "high", "size")})
    if "high" not in values or "size" not in values:
        raise Unsupported("randint needs high and size")
    low = values.get("low", cst.Integer("0"))
    call_args = [cst.Arg(cst.Name("KEY")), cst.Arg(values["size"]), cst.Arg(low), cst.Arg(values["high"])]
    if "dtype" in keywords:
        dtype = _dtype(keywords["dtype"], site)
        if not code_of(dtype).startswith(("jnp.int", "jnp.uint")):
            raise Unsupported(f"dtype={code_of(keywords['dtype'])}: jax.random.randint draws integers")
        call_args.append(cst.Arg(dtype))
    return _random_application(site, cst.Call(expr("jax.random.randint"), call_args))


def randperm(rule: Rule, site: Site) -> Application:
    bound = bind(rule, site.call)
    return _random_application(site, _call("jax.random.permutation", cst.Name("KEY"), bound["n"]))


def multinomial(rule: Rule, site: Site) -> Application:
    """torch.multinomial(probs, n) -> jax.random.categorical(key, jnp.log(probs), axis=-1), the samples on a
    new last axis: the same distribution (torch takes non-negative weights, not necessarily normalised; the
    log-weights normalise the same way under categorical's softmax). n draws with replacement are n
    categorical draws; without replacement only one converts."""
    bound = bind(rule, site.call)
    probs, n = bound["input"], bound["num_samples"]
    replacement = bound.get("replacement")
    log_probs = f"jnp.log({code_of(probs)})"
    if _int(n) == 1:
        return _random_application(site, expr(f"jax.random.categorical(KEY, {log_probs}, axis=-1)[..., None]"))
    if replacement is None or literal(replacement) is not True:
        raise Unsupported("more than one sample without replacement (jax.random.categorical draws with "
                          "replacement; jax.random.choice(key, n, (k,), replace=False, p=p) per row does not)")
    if not _simple(probs):
        raise Unsupported(f"multinomial of {code_of(probs)}: assign it to a name first")
    return _random_application(site, expr(
        f"jnp.moveaxis(jax.random.categorical(KEY, {log_probs}, axis=-1, shape=({code_of(n)},) + "
        f"{code_of(probs)}.shape[:-1]), 0, -1)"))


def normal(rule: Rule, site: Site) -> Application:
    """torch.normal(mean, std, size=None) -> mean + std * jax.random.normal(key, shape)."""
    bound = bind(rule, site.call)
    mean, std = bound["mean"], bound.get("std", cst.Float("1.0"))
    size = bound.get("size")
    if size is not None and literal(size) is not None:
        shape = size
    elif _simple(mean) and _simple(std):
        shape = expr(f"jnp.broadcast_shapes(jnp.shape({code_of(mean)}), jnp.shape({code_of(std)}))")
    else:
        raise Unsupported("mean and std must be names (their shapes give the output's)")
    wrap = lambda n: code_of(n) if _simple(n) or _int(n) is not None or isinstance(n, cst.Float) else f"({code_of(n)})"  # noqa: E731
    call = expr(f"{wrap(mean)} + {wrap(std)} * jax.random.normal(KEY, {code_of(shape)})")
    return _random_application(site, call)


def bernoulli(rule: Rule, site: Site) -> Application:
    """torch.bernoulli(p) -> jax.random.bernoulli(key, p).astype(p.dtype); x.bernoulli_(p) fills x."""
    bound = bind(rule, site.call)
    x = bound["input"]
    p = bound.get("p")
    creation = _creation_parts(x)
    if p is not None and creation is not None:  # x.new_empty(shape).bernoulli_(p): only x's shape and dtype count
        shape, dtype = creation
        return _random_application(site, expr(f"jax.random.bernoulli(KEY, {code_of(p)}, {code_of(shape)})"
                                              f".astype({code_of(dtype)})"))
    if not _simple(x):
        raise Unsupported(f"bernoulli of {code_of(x)}: assign it to a name first")
    if p is None:
        call = expr(f"jax.random.bernoulli(KEY, {code_of(x)}).astype({code_of(x)}.dtype)")
    else:
        call = expr(f"jax.random.bernoulli(KEY, {code_of(p)}, {code_of(x)}.shape).astype({code_of(x)}.dtype)")
    return _random_application(site, call)


def _creation_parts(node: cst.BaseExpression):
    """(shape, dtype) of a converted jnp.zeros/ones(shape, dtype=...) call, else None."""
    if not isinstance(node, cst.Call) or code_of(node.func) not in ("jnp.zeros", "jnp.ones") or not node.args \
            or node.args[0].keyword is not None or node.args[0].star:
        return None
    dtype = next((a.value for a in node.args if a.keyword is not None and a.keyword.value == "dtype"), None)
    return node.args[0].value, dtype if dtype is not None else expr("jnp.float32")


def new_tensor(rule: Rule, site: Site) -> Application:
    """x.new_zeros(size) -> jnp.zeros(size, dtype=x.dtype) (likewise new_ones, new_full, new_empty)."""
    if site.receiver is None:
        raise Unsupported("a tensor method")
    name = site.call.func.attr.value if isinstance(site.call.func, cst.Attribute) else ""
    target = {"new_zeros": "jnp.zeros", "new_ones": "jnp.ones", "new_empty": "jnp.zeros", "new_full": "jnp.full"}[name]
    args = site.call.args
    keywords = {a.keyword.value: a.value for a in args if a.keyword is not None}
    positional = [a if a.star == "*" else a.value for a in args if a.keyword is None]
    if any(a.star == "**" for a in args) or set(keywords) - {"size", "fill_value", "dtype", "device", "requires_grad"}:
        raise Unsupported(f"keyword(s) {sorted(keywords)}")
    fill = None
    if name == "new_full":
        fill = keywords.get("fill_value") or (positional.pop() if len(positional) == 2
                                              and not isinstance(positional[1], cst.Arg) else None)
        if fill is None:
            raise Unsupported("new_full needs a fill value")
    size = keywords.get("size") or _size(positional) if positional or "size" in keywords else None
    if size is None:
        raise Unsupported("no size")
    if not _simple(site.receiver) and "dtype" not in keywords:
        raise Unsupported(f"{name} of {code_of(site.receiver)}: assign it to a name first")
    dtype = _dtype(keywords["dtype"], site) if "dtype" in keywords else expr(f"{code_of(site.receiver)}.dtype")
    call_args = [size] + ([fill] if fill is not None else [])
    return Application(cst.Call(expr(target), [cst.Arg(a) for a in call_args] + [keyword_arg("dtype", dtype)]))


# ---------------------------------------------------------------- indexing
def _index_at(x: cst.BaseExpression, dim: cst.BaseExpression, index: cst.BaseExpression) -> str:
    """x.at[:, index] for dim 1, x.at[..., index, :] for dim -2."""
    d = _int(dim)
    if d is None:
        raise Unsupported("dim must be a literal int")
    if d >= 0:
        parts = [":"] * d + [code_of(index)]
    else:
        parts = ["..."] + [code_of(index)] + [":"] * (-d - 1)
    return f"{code_of(x)}.at[{', '.join(parts)}]"


def index_update(rule: Rule, site: Site) -> Application:
    """index_add/index_copy/index_fill(dim, index, source|value) -> x.at[..., index].add/set(...)."""
    bound = bind(rule, site.call)
    x, dim, index = bound["input"], bound["dim"], bound["index"]
    name = rule.source[0].rsplit(".", 1)[-1].rstrip("_")
    at = _index_at(x, dim, index)
    if name == "index_add":
        source = code_of(bound["source"])
        alpha = bound.get("alpha")
        if alpha is not None and literal(alpha) != 1:
            source = f"{code_of(alpha)} * {source if _simple(bound['source']) else '(' + source + ')'}"
        return Application(expr(f"{at}.add({source})"))
    value = bound["source"] if name == "index_copy" else bound["value"]
    return Application(expr(f"{at}.set({code_of(value)})"))


def gather(rule: Rule, site: Site) -> Application:
    bound = bind(rule, site.call)
    if literal(bound.get("sparse_grad", cst.Name("False"))) is not False:
        raise Unsupported("sparse_grad")
    site.ctx.need_helper("gather")
    return Application(_call("gather", bound["input"], bound["dim"], bound["index"]))


def scatter(rule: Rule, site: Site) -> Application:
    """scatter/scatter_add/scatter_reduce -> scatter(x, dim, index, src, reduce) (an emitted helper)."""
    bound = bind(rule, site.call)
    name = rule.source[0].rsplit(".", 1)[-1].rstrip("_")
    src = bound.get("src", bound.get("value"))
    if src is None:
        raise Unsupported("scatter needs src or value")
    reduce = {"scatter": None, "scatter_add": "'sum'"}.get(name)
    if name == "scatter" and "reduce" in bound and literal(bound["reduce"]) is not None:
        mode = literal(bound["reduce"])
        if mode not in ("add", "multiply"):
            raise Unsupported(f"reduce={code_of(bound['reduce'])}")
        reduce = {"add": "'sum'", "multiply": "'prod'"}[mode]
    if name == "scatter_reduce":
        mode = literal(bound["reduce"])
        if mode not in ("sum", "prod", "amax", "amin", "mean"):
            raise Unsupported(f"reduce={code_of(bound['reduce'])}")
        reduce = repr(mode)
        if literal(bound.get("include_self", cst.Name("True"))) is not True:
            raise Unsupported("include_self=False")
    site.ctx.need_helper("scatter")
    args = [bound["input"], bound["dim"], bound["index"], src]
    keywords = {"reduce": expr(reduce)} if reduce else {}
    return Application(_call("scatter", *args, **keywords))


def where(rule: Rule, site: Site) -> Application:
    """torch.where(c, x, y) -> jnp.where(c, x, y); torch.where(c) -> jnp.nonzero(c) (not jittable: reported)."""
    bound = bind(rule, site.call)
    if "input" in bound and "other" in bound:
        return Application(_call("jnp.where", bound["condition"], bound["input"], bound["other"]))
    if "input" in bound or "other" in bound:
        raise Unsupported("torch.where needs both x and y, or neither")
    return Application(_call("jnp.nonzero", bound["condition"]), [NOT_JITTABLE])


NOT_JITTABLE = "the result's size depends on the values: it runs eagerly but not under jit (pass size= there)"


def nonzero(rule: Rule, site: Site) -> Application:
    """torch.nonzero(x) -> jnp.argwhere(x) ((n, ndim) indices); as_tuple=True -> jnp.nonzero(x)."""
    bound = bind(rule, site.call)
    as_tuple = literal(bound.get("as_tuple", cst.Name("False")))
    if as_tuple not in (True, False):
        raise Unsupported("as_tuple must be a literal")
    return Application(_call("jnp.nonzero" if as_tuple else "jnp.argwhere", bound["input"]), [NOT_JITTABLE])


def same_name(rule: Rule, site: Site) -> Application:
    """torch.NAME(*args) -> jnp.NAME(*args) for functions numpy spells the same way."""
    name = site.call.func.attr.value if isinstance(site.call.func, cst.Attribute) else code_of(site.call.func)
    if any(a.keyword is not None for a in site.call.args):
        raise Unsupported("keyword arguments")
    return Application(cst.Call(expr(f"jnp.{name}"), [cst.Arg(a.value, star=a.star) for a in site.call.args]))


def setitem_statement(rule: Rule, site: Site) -> Application:
    raise Unsupported("x.__setitem__(i, v) called explicitly: write x[i] = v")



def softmax(rule: Rule, site: Site) -> Application:
    """F.softmax / F.log_softmax (x.softmax(dim)): torch's dtype= casts the input first (x-transformers'
    `partial(F.softmax, dtype=torch.float32)`); jax.nn's functions take no dtype."""
    call = site.call
    if site.receiver is not None:
        call = call.with_changes(args=[cst.Arg(site.receiver), *call.args])
    bound = bind(rule, call)
    x = bound["input"]
    axis = VALUE_TRANSFORMS["required_dim"](bound.get("dim", cst.Name("None")), site.ctx)
    dtype = bound.get("dtype")
    if dtype is not None and literal(dtype) is not None:
        x = _call("jnp.asarray", x, dtype=VALUE_TRANSFORMS["dtype"](dtype, site.ctx))
    target = "jax.nn.log_softmax" if rule.source[0].endswith("log_softmax") else "jax.nn.softmax"
    return Application(_call(target, x, axis=axis))
