"""The attribute tables of the residual check (rules/residual.toml), recomputed from the installed libraries.

    python -m porter.rules.residual_tables          # what changed against the reviewed table
    python -m porter.rules.residual_tables --draft  # the computed names as TOML lists, to review

What the check reads is the reviewed table; this module says which names it
has to cover, so that an upgrade of torch, jax or flax shows up as names that
appeared or vanished (tests/test_residual.py runs `changes()`):

- tensor: public names of `torch.Tensor` that a jax array lacks. "A jax array"
  is `jax.Array` plus what both a concrete array and a tracer have (`tolist`,
  `devices`, ...): a name only a concrete array has (`clone`) fails under jit.
- tensor_shared: names both have (`view`, `repeat`, `device`, ...): the table
  says per name whether the meaning differs and what the check does about it.
- module: public names of `torch.nn.Module` that `flax.nnx.Module` lacks.

Each is split into methods (flagged where called) and attributes (flagged
where read or written), as torch defines them.
"""

from __future__ import annotations

import argparse
import inspect
import sys

from porter.rules.loader import ResidualTables, load_residual

_DESCRIPTORS = (property, type(int.real), type(type.__dict__["__dict__"]))  # property, member, getset


def _public(names) -> set[str]:
    return {n for n in names if not n.startswith("_")}


def _split(cls: type, names: set[str]) -> dict[str, set[str]]:
    """{"methods": ..., "attributes": ...}: a method is a callable that is not a descriptor of data."""
    methods = {n for n in names if callable(inspect.getattr_static(cls, n))
               and not isinstance(inspect.getattr_static(cls, n), _DESCRIPTORS)
               and not isinstance(inspect.getattr_static(cls, n), type)}
    return {"methods": methods, "attributes": names - methods}


def computed() -> dict[str, dict[str, set[str]]]:
    """The names each table must cover, from the installed torch, jax and flax."""
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx
    from jax.core import Tracer

    array = _public(dir(jax.Array)) | (_public(dir(type(jnp.zeros(1)))) & _public(dir(Tracer)))
    tensor = _public(dir(torch.Tensor))
    module = _public(dir(torch.nn.Module))
    return {
        "tensor": _split(torch.Tensor, tensor - array),
        "tensor_shared": _split(torch.Tensor, tensor & array),
        "module": _split(torch.nn.Module, module - _public(dir(nnx.Module))),
    }


def reviewed(tables: ResidualTables | None = None) -> dict[str, dict[str, set[str]]]:
    """The same split, as rules/residual.toml lists it."""
    tables = tables or load_residual()
    return {table: {"methods": {n for g in groups for n in g.methods},
                    "attributes": {n for g in groups for n in g.attributes}}
            for table, groups in tables.groups.items()}


def changes(tables: ResidualTables | None = None) -> list[str]:
    """One line per name that the installed libraries and the reviewed table disagree on."""
    now, table = computed(), reviewed(tables)
    lines = []
    for name in sorted(now):
        for kind in ("methods", "attributes"):
            have, want = table.get(name, {}).get(kind, set()), now[name][kind]
            lines += [f"{name}.{kind}: {n} appeared (review it into a group of rules/residual.toml)"
                      for n in sorted(want - have)]
            lines += [f"{name}.{kind}: {n} vanished (remove it from rules/residual.toml)" for n in sorted(have - want)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draft", action="store_true", help="print the computed names as TOML lists")
    args = parser.parse_args(argv)
    if args.draft:
        for name, kinds in computed().items():
            for kind, names in kinds.items():
                print(f"# {name} {kind}\n{kind} = {sorted(names)!r}\n".replace("'", '"'))
        return 0
    lines = changes()
    print("\n".join(lines) if lines else "rules/residual.toml covers exactly the installed libraries' differences")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
