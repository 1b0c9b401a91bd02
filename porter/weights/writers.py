"""Write a converted model's state: safetensors (Flax dotted keys) or Orbax.

Both hold every variable except RNG state (`nnx.Not(nnx.RngState)`): params,
batch statistics, buffers. Both are written under a temporary name next to
the target and renamed into place, so OUT is either the old file or the
complete new one, never half written.

Restoring needs no porter, only the converted model (here `Net`):

Orbax (OUT must be an absolute path for Orbax)::

    import orbax.checkpoint as ocp
    model = Net(rngs=nnx.Rngs(0))
    state = ocp.StandardCheckpointer().restore("/abs/OUT", nnx.state(model, nnx.Not(nnx.RngState)))
    nnx.update(model, state)

safetensors (keys are the variables' dotted NNX paths, e.g. `fc1.kernel`,
`features.layers.0.kernel`)::

    from safetensors.numpy import load_file
    model, arrays = Net(rngs=nnx.Rngs(0)), load_file("OUT.safetensors")
    paths = [p for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Not(nnx.RngState)))]
    nnx.update(model, nnx.from_flat_state({p: arrays[".".join(map(str, p))] for p in paths}))

The safetensors recipe looks each key up by the model's own paths, so a list
index (`layers.0`, an int in the NNX path) and a dict key stay what they are.

Dtypes: both files keep the dtypes of the loaded model (with `porter weights`,
the checkpoint's: a bfloat16 checkpoint gives bfloat16 arrays). Restoring,
Orbax casts each array into the dtype of the target variable (a model built
with float32 params gets exactly widened float32 values), while the
safetensors recipe's `nnx.update` puts the file's arrays in as they are.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from flax import nnx

from porter.weights.outputs import check_output, replace_into, temp_sibling

STATE_FILTER = nnx.Not(nnx.RngState)


def model_state(model: nnx.Module) -> nnx.State:
    """What porter writes: every variable but RNG state."""
    return nnx.state(model, STATE_FILTER)


def flat_arrays(model: nnx.Module) -> dict[str, np.ndarray]:
    """{dotted NNX path: numpy array} of model_state(model), dtypes kept."""
    return {".".join(map(str, path)): np.require(np.asarray(var.get_raw_value()), requirements="C")
            for path, var in nnx.to_flat_state(model_state(model))}


def write_safetensors(model: nnx.Module, path: str | Path, *, force: bool = False,
                      metadata: dict[str, str] | None = None) -> Path:
    """Write the model's state to `path` as safetensors keyed by dotted NNX paths."""
    from safetensors.numpy import save_file

    path = Path(path)
    check_output(path, "safetensors", [], force=force)
    temp = temp_sibling(path)
    try:
        save_file(flat_arrays(model), str(temp), metadata={"format": "flax-nnx", **(metadata or {})})
        replace_into(temp, path, force=force)
    finally:
        if temp.exists():
            temp.unlink()
    return path


def write_orbax(model: nnx.Module, path: str | Path, *, force: bool = False) -> Path:
    """Write the model's state to the directory `path` as an Orbax checkpoint; returns when written."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    check_output(path, "orbax", [], force=force)
    temp = temp_sibling(path)
    try:
        checkpointer = ocp.StandardCheckpointer()
        try:
            checkpointer.save(temp, model_state(model))
            checkpointer.wait_until_finished()
        finally:
            checkpointer.close()
        replace_into(temp, path, force=force)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
    return path


def restore_orbax(model: nnx.Module, path: str | Path) -> nnx.Module:
    """The Orbax restore recipe of the module docstring, as a function (for tests and scripts)."""
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    try:
        state = checkpointer.restore(Path(path).absolute(), model_state(model))
    finally:
        checkpointer.close()
    nnx.update(model, state)
    return model


def restore_safetensors(model: nnx.Module, path: str | Path) -> nnx.Module:
    """The safetensors restore recipe of the module docstring, as a function."""
    from safetensors.numpy import load_file

    arrays = load_file(str(path))
    paths = [p for p, _ in nnx.to_flat_state(model_state(model))]
    nnx.update(model, nnx.from_flat_state({p: arrays[".".join(map(str, p))] for p in paths}))
    return model


def model_import(path: str | Path | None, name: str) -> str:
    """The line that imports the converted model's class `name` from the file `path` (None: not given,
    a placeholder the user fills in), for restore_snippet."""
    if path is None:
        return f"from YOUR_MODULE import {name}  # fill in: the module of your converted model and its class"
    path = Path(path).absolute()
    if not path.stem.isidentifier():
        return f"from YOUR_MODULE import {name}  # fill in: {path.name} is not importable by that name"
    return f"from {path.stem} import {name}  # {path}: run from {path.parent} or put it on PYTHONPATH"


def restore_snippet(fmt: str, out: str | Path, constructor: str, import_line: str = "") -> str:
    """The lines a user runs to load `out` into the converted model built by `constructor` (its class
    imported by `import_line`, see model_import)."""
    imports = [import_line] if import_line else []
    if fmt == "orbax":
        return "\n".join([
            "import orbax.checkpoint as ocp",
            "from flax import nnx",
            *imports,
            f"model = {constructor}",
            f"state = ocp.StandardCheckpointer().restore({str(Path(out).absolute())!r}, "
            "nnx.state(model, nnx.Not(nnx.RngState)))",
            "nnx.update(model, state)",
        ])
    return "\n".join([
        "from safetensors.numpy import load_file",
        "from flax import nnx",
        *imports,
        f"model, arrays = {constructor}, load_file({str(out)!r})",
        "paths = [p for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Not(nnx.RngState)))]",
        "nnx.update(model, nnx.from_flat_state({p: arrays['.'.join(map(str, p))] for p in paths}))",
    ])
