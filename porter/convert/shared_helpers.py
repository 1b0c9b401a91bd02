"""A tree's emitted helpers in one module of the output, imported by the files that use them.

Converting a single file pastes the helpers it needs into it (the output stands alone). Converting a
directory writes them once, as `porter_helpers.py` (`porter_helpers_2.py`, ... where the tree already has
that name in the place it goes), and each converted file imports what it uses. Where the module goes,
and how a file imports it, follows how the file is found by Python:

- a file of a package (its directory holds an `__init__.py`): in the package's top directory (the
  outermost of the chain of `__init__.py` directories above the file), imported relatively
  (`from ..porter_helpers import ...`): it works under `python -m pkg.mod`, from an installed package
  and from a script importing the package; a package's own files, run as `python pkg/mod.py`, are not
  served (a relative import needs the package);
- a file at the top of the tree that is not in a package (`cd OUT && python train.py`): at the top,
  imported as `from porter_helpers import ...`;
- a file in a plain directory below the top (no `__init__.py`): the helpers stay pasted into it, since
  it may run as a script from its own directory (`python tools/train.py`) or be imported from the top
  (`from tools.train import ...`), and no one import serves both.

Notebooks keep their helpers pasted in, as before.

The module holds the helpers its files use (their dependencies included) and the imports those need:
jax, flax and the like, never torch or porter. A new helper in porter/emitted*.py (with its DEPENDS row)
reaches it the way it reaches a single file: through ConversionContext.need_helper.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import PurePosixPath

from porter.convert.passes.imports import helpers_module_source

MODULE_NAME = "porter_helpers"


def place(tasks, occupied) -> tuple[list, dict[str, str]]:
    """The tasks with `helpers_from` set where their helpers go to a module of the output, and
    {task's relative path: the relative path of the helpers module it imports from}. `occupied`: the
    relative paths the tree holds (converted, copied or not read), whose names the module must not take."""
    packages = {str(PurePosixPath(t.relative).parent) for t in tasks
                if PurePosixPath(t.relative).name == "__init__.py"}
    taken = _names_by_directory(occupied)
    names: dict[str, str] = {}  # directory of a helpers module -> its module name
    placed, modules = [], {}
    for task in tasks:
        found = _module_directory(task.relative, packages) if task.kind == "python" else None
        if found is None:
            placed.append(task)
            continue
        directory, depth = found
        if directory not in names:
            names[directory] = _free_name(taken.get(directory, set()))
        name = names[directory]
        spelling = name if depth is None else "." * (depth + 1) + name
        placed.append(replace(task, helpers_from=spelling))
        modules[task.relative] = f"{directory}/{name}.py" if directory != "." else f"{name}.py"
    return placed, modules


def modules(results, placement: dict[str, str]) -> list[tuple[str, bytes]]:
    """(relative path, text) of each helpers module that a converted file imports from, holding the
    helpers its files import."""
    wanted: dict[str, set[str]] = {}
    for result in results:
        if result.code is not None and result.helpers and result.relative in placement:
            wanted.setdefault(placement[result.relative], set()).update(result.helpers)
    return [(path, helpers_module_source(sorted(names)).encode("utf-8")) for path, names in sorted(wanted.items())]


def _module_directory(relative: str, packages: set[str]) -> tuple[str, int | None] | None:
    """(directory of the helpers module, how many package levels the file sits below it: None for an
    absolute import), or None where the helpers stay in the file."""
    directory = PurePosixPath(relative).parent
    if str(directory) not in packages:
        return (".", None) if str(directory) == "." else None
    top, depth = directory, 0
    while str(top) != "." and str(top.parent) in packages:
        top, depth = top.parent, depth + 1
    return str(top), depth


def _names_by_directory(relatives) -> dict[str, set[str]]:
    """directory -> the names of the entries the tree holds in it (files and directories)."""
    found: dict[str, set[str]] = {}
    for relative in relatives:
        path = PurePosixPath(relative)
        for parent, child in zip(path.parents, (path, *path.parents)):
            found.setdefault(str(parent), set()).add(child.name)
    return found


def _free_name(entries: set[str]) -> str:
    """porter_helpers, or porter_helpers_2, ... : the first whose module (a file, a package, an
    extension module) is not in `entries`."""
    n = 1
    while True:
        name = MODULE_NAME if n == 1 else f"{MODULE_NAME}_{n}"
        if not any(entry == name or entry.startswith(name + ".") for entry in entries):
            return name
        n += 1
