"""Read a torch checkpoint into a flat {key: numpy array} state_dict, safely.

- `.pt`, `.pth`, `.bin`, `.ckpt`: `torch.load(path, map_location="cpu", weights_only=True)`.
  torch's weights-only unpickler rebuilds tensors and plain containers only;
  a pickle that names any other global (a class, `os.system`, ...) is refused
  with UnsafeCheckpointError. porter never retries with weights_only=False:
  that would run whatever code the file carries.
- `.safetensors`: the safetensors library (no code, just arrays).
- `*.index.json` (sharded Hugging Face checkpoints): the `weight_map` names the
  shard of every key; each shard is read as above.

Training checkpoints often nest the weights: `{"model": sd, "optimizer": ...,
"epoch": 3}`. The reader takes the one mapping of str -> tensor it finds (at
the top or one or two levels down) and says which key it used; `key=` picks
one explicitly (dotted for deeper levels, e.g. "ema.model").

Values come back as numpy arrays with the checkpoint's dtype, bfloat16 and
float8 included (ml_dtypes), bit for bit.
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from porter.weights.arrays import is_torch_tensor, to_numpy

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)


class CheckpointError(ValueError):
    """The checkpoint cannot be read as a state_dict; the message says why and what to do."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle holds code or objects other than tensors; porter refuses to unpickle it."""


@dataclass
class ReadInfo:
    path: str
    format: str  # "torch", "safetensors", "sharded"
    key: str | None = None  # where in a nested checkpoint the state_dict was found
    other_keys: list[str] = field(default_factory=list)  # what else the checkpoint held at that level
    dtypes: dict[str, int] = field(default_factory=dict)  # dtype name -> number of tensors
    files: list[str] = field(default_factory=list)  # shards read

    def describe(self) -> str:
        where = f" (state_dict under key {self.key!r})" if self.key else ""
        dtypes = ", ".join(f"{n} {d}" for d, n in self.dtypes.items())
        return f"{self.path}: {self.format} checkpoint{where}; {sum(self.dtypes.values())} tensors: {dtypes}"


def read_state_dict(path: str | Path, key: str | None = None) -> tuple[dict[str, np.ndarray], ReadInfo]:
    """Read `path` into ({torch key: numpy array}, info). Raises CheckpointError (a ValueError)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file "
                              f"({', '.join(TORCH_SUFFIXES + SAFETENSORS_SUFFIXES)} or *.index.json)")
    name = path.name.lower()
    if name.endswith(".index.json"):
        flat, info = _read_sharded(path)
    elif path.suffix.lower() in SAFETENSORS_SUFFIXES:
        flat, info = _read_safetensors(path), ReadInfo(str(path), "safetensors")
    elif path.suffix.lower() in TORCH_SUFFIXES:
        flat, info = _read_torch(path, key)
    else:
        raise CheckpointError(
            f"{path}: unknown checkpoint type {path.suffix or '(no extension)'!r}; expected "
            f"{', '.join(TORCH_SUFFIXES)} (torch.save), .safetensors, or a sharded *.index.json")
    if key is not None and info.format != "torch":
        raise CheckpointError(f"{path}: --key/key= selects inside a nested torch checkpoint; "
                              f"a {info.format} file is flat")
    for array in flat.values():
        info.dtypes[str(array.dtype)] = info.dtypes.get(str(array.dtype), 0) + 1
    return flat, info


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except Exception as exc:  # safetensors raises its own SafetensorError, or OSError
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from exc


def _read_sharded(path: Path) -> tuple[dict[str, np.ndarray], ReadInfo]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a sharded checkpoint index (a JSON file with 'weight_map'): {exc}") \
            from exc
    shards = sorted(set(weight_map.values()))
    flat: dict[str, np.ndarray] = {}
    for shard in shards:
        shard_path = path.parent / shard
        if shard_path.suffix.lower() in SAFETENSORS_SUFFIXES:
            part = _read_safetensors(shard_path) if shard_path.exists() else None
        else:
            part = _read_torch(shard_path, None)[0] if shard_path.exists() else None
        if part is None:
            raise CheckpointError(f"{path}: shard {shard} is missing (looked for {shard_path})")
        flat.update({k: v for k, v in part.items() if weight_map.get(k) == shard})
    absent = sorted(set(weight_map) - set(flat))
    if absent:
        raise CheckpointError(f"{path}: the index names key(s) its shards do not hold: {', '.join(absent[:10])}")
    return flat, ReadInfo(str(path), "sharded", files=shards)


def _read_torch(path: Path, key: str | None) -> tuple[dict[str, np.ndarray], ReadInfo]:
    import torch

    advice = ("Re-save the weights where they were made with torch.save(model.state_dict(), PATH), or as "
              "safetensors (safetensors.torch.save_file(model.state_dict(), PATH)).")
    try:
        with open(path, "rb") as f:
            header = f.read(2)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc}") from None
    try:
        with warnings.catch_warnings():  # torch notes pickle protocols it was not written with
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next((line for line in lines if "global" in line.lower()), "")
        detail = next((line for line in reversed(lines) if "documentation" not in line
                       and not line.startswith("Weights only") and "WeightsUnpickler" not in line), "")
        if reason:
            raise UnsafeCheckpointError(
                f"{path}: refused: the file contains pickled code or objects (not only tensors), and porter "
                f"will not run them ({reason}). {advice}") from None
        if header[:1] == b"\x80" or header == b"PK":
            raise UnsafeCheckpointError(
                f"{path}: refused: torch's weights-only unpickler cannot read this pickle ({detail}), and "
                f"porter never unpickles any other way, since a pickle can run arbitrary code. {advice}"
            ) from None
        raise CheckpointError(f"{path}: not a torch checkpoint (neither torch.save's zip format nor a pickle)") \
            from None
    except EOFError:
        raise CheckpointError(f"{path}: empty or truncated torch checkpoint") from None
    except (RuntimeError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable torch checkpoint: {first}") from None
    return _select(obj, key, path)


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) for k in obj)
            and all(is_torch_tensor(v) or isinstance(v, np.ndarray) for v in obj.values()))


def _candidates(obj: Any, prefix: str = "", depth: int = 2) -> list[str]:
    """Dotted keys of every nested str -> tensor mapping, shallowest first."""
    if not isinstance(obj, Mapping) or depth == 0:
        return []
    found, deeper = [], []
    for k, v in obj.items():
        if not isinstance(k, str):
            continue
        name = f"{prefix}{k}"
        if _is_state_dict(v):
            found.append(name)
        elif isinstance(v, Mapping):
            deeper += _candidates(v, name + ".", depth - 1)
    return found or deeper


def _lookup(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, Mapping) or part not in obj:
            raise KeyError(part)
        obj = obj[part]
    return obj


def _select(obj: Any, key: str | None, path: Path) -> tuple[dict[str, np.ndarray], ReadInfo]:
    info = ReadInfo(str(path), "torch")
    if key is not None:
        try:
            chosen = obj[key] if isinstance(obj, Mapping) and key in obj else _lookup(obj, key)
        except KeyError:
            top = sorted(str(k) for k in obj) if isinstance(obj, Mapping) else []
            raise CheckpointError(f"{path}: no key {key!r} in the checkpoint (top-level keys: "
                                  f"{', '.join(top) or 'none'})") from None
        if not _is_state_dict(chosen):
            raise CheckpointError(f"{path}: {key!r} is not a mapping of names to tensors "
                                  f"(candidates: {', '.join(_candidates(obj)) or 'none'})")
        info.key = key
    elif _is_state_dict(obj):
        chosen = obj
    else:
        candidates = _candidates(obj)
        if not candidates:
            what = (f"a mapping with keys {', '.join(sorted(map(str, obj))[:12])}" if isinstance(obj, Mapping)
                    else f"a {type(obj).__name__}")
            raise CheckpointError(f"{path}: holds {what}, and no mapping of names to tensors in it; "
                                  f"save model.state_dict()")
        if len(candidates) > 1:
            raise CheckpointError(f"{path}: several state_dicts in the checkpoint: {', '.join(candidates)}; "
                                  f"choose one with --key (key=)")
        info.key = candidates[0]
        chosen = _lookup(obj, candidates[0])
    if info.key is not None and isinstance(obj, Mapping):
        info.other_keys = sorted(str(k) for k in obj if str(k) != info.key.split(".")[0])
    return {k: to_numpy(v) for k, v in chosen.items()}, info
