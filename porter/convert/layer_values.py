"""Layer classes used as values (`norm_layer=nn.BatchNorm2d`, `act_layer = nn.GELU`).

Such a reference is left unchanged and reported (PT003): the class reaches a
call site (`norm_layer(planes)`) that cannot be converted without knowing
which layer arrives there, and the same name is also what `isinstance(m,
nn.BatchNorm2d)` needs. The report shows what a call of the class converts to,
computed from the rule itself, so the person converting sees exactly the
constructor to pass instead (a function with torch's signature building it).
"""

from __future__ import annotations

import copy

import libcst as cst

from porter.convert.apply import Site, apply_rule
from porter.convert.context import ConversionContext, code_of
from porter.convert.transforms import Unsupported
from porter.rules.loader import Rule


def example_call(rule: Rule, qualified: str, helpers: list[str] | None = None) -> str | None:
    """What `Class(<its required arguments>)` converts to under the rule, or None if nothing sensible."""
    required = [p.name for p in rule.signature if p.default is None and not p.var_positional and not p.keyword_only]
    call = cst.parse_expression(f"{qualified}({', '.join(required)})")
    scratch = copy.copy(_SCRATCH_CONTEXT)
    scratch.rules = None
    scratch.helpers = []
    site = Site(call, None, cst.Name("rngs") if rule.uses_rngs else None, scratch)
    try:
        node = apply_rule(rule, site).node
    except (Unsupported, AttributeError, KeyError, TypeError):
        return None
    if helpers is not None:
        helpers.extend(scratch.helpers)
    return code_of(node)


def value_message(rule: Rule, qualified: str) -> str:
    """The PT003 message for a layer class used as a value."""
    if rule.kind == "annotation":
        return (f"{qualified} converts in type annotations only (to {rule.target}, rule {rule.id}); here it is a "
                "value with torch's meaning, a tensor type of one dtype: test or cast the dtype instead "
                "(x.dtype == jnp.int64, x.astype(...)); left unchanged")
    message = (f"{qualified} is used as a value (passed or stored, not called); rule {rule.id} converts calls "
               f"only; left unchanged")
    if rule.kind not in ("layer", "activation") or rule.target in ("nnx.Sequential", "nnx.List", "nnx.Dict"):
        return message
    helpers: list[str] = []
    example = example_call(rule, qualified, helpers)
    if example is None:
        return message
    required = [p.name for p in rule.signature if p.default is None and not p.var_positional and not p.keyword_only]
    call = f"{qualified.rsplit('.', 1)[-1]}({', '.join(required)})"
    pasted = (f" ({', '.join(helpers)}: porter/emitted.py, pasted into files that call the class)"
              if helpers else "")
    what = "a function, not a layer" if rule.kind == "activation" else "a layer"
    rngs = " (and rngs)" if rule.uses_rngs else ""
    sites = ", and give its call sites rngs=rngs" if rule.uses_rngs else ""
    return (f"{message}. `{call}` converts to `{example}`{pasted}, {what}: where the class is passed, pass a "
            f"function taking the arguments its call sites give{rngs} that returns the converted form{sites}")


_SCRATCH_CONTEXT = ConversionContext(rules=None)  # type: ignore[arg-type]  # only helpers are touched

