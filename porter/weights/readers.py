"""Read torch checkpoints safely, one tensor at a time.

`open_checkpoint(path, key=None)` returns a `Source`: every tensor's name,
shape and dtype known up front (`source.tensors`), the data read on demand
(`source.read(name)`) and released after use (`source.release(name)`), so a
conversion holds about one tensor in memory, not the checkpoint.

- `.pt`, `.pth`, `.bin`, `.ckpt` (torch.save's zip format):
  `torch.load(path, map_location="cpu", weights_only=True, mmap=True)`.
  torch's weights-only unpickler rebuilds tensors and plain containers only;
  a pickle that names any other global (a class, `os.system`, ...) is refused
  with UnsafeCheckpointError and nothing in it runs. porter never retries with
  weights_only=False. With mmap the tensors are views of the file; after each
  tensor is copied out its pages are handed back to the kernel
  (`madvise(MADV_DONTNEED)`: the mapping is private and never written, so
  this only drops cached file pages), so resident memory stays near one tensor.
  The CRC-32 the zip stores for each data record is checked on the bytes read
  (CorruptRecordError names the record and the tensor).
- legacy (pre-1.6, non-zip) torch files: torch.load reads them with
  weights_only=True, but cannot map them: they are read whole (said in the info).
- `.safetensors`: the header is read and checked by porter, each tensor
  memory-mapped on its own (see safetensors_io).
- `*.index.json` (sharded Hugging Face checkpoints): the `weight_map` names the
  shard of every key; every shard must exist, and lie in the index's directory
  (_check_shard_inside), before anything is read.

Only regular files are opened: a FIFO, socket or device is refused first
(reading one can block forever).
- a directory: the one index, else the one `.safetensors` file, else the one
  torch file in it (safetensors preferred over pickles when both are there).

Training checkpoints often nest the weights: `{"model": sd, "optimizer": ...,
"epoch": 3}`. The reader takes the one mapping of str -> tensor it finds (at
the top or one or two levels down) and says which key it used; `key=` picks
one explicitly (dotted for deeper levels, e.g. "ema.model").

Values come back as numpy arrays with the checkpoint's dtype, bfloat16 and
float8 included (ml_dtypes), bit for bit.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import pickle
import re
import stat
import sys
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from porter.weights import safetensors_io
from porter.weights.arrays import is_torch_tensor, to_numpy

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)
RESAVE_ADVICE = ("Re-save the weights where they were made with torch.save(model.state_dict(), PATH), or as "
                 "safetensors (safetensors.torch.save_file(model.state_dict(), PATH)).")


class CheckpointError(ValueError):
    """The checkpoint cannot be read as a state_dict; the message says why and what to do."""


class CorruptRecordError(CheckpointError):
    """A zip record's bytes do not match the CRC-32 the zip stores for them."""

    def __init__(self, path: str | Path, record: str | None, key: str, stored: int, read: int):
        super().__init__(f"{path}: record {record} (tensor {key!r}) is corrupt: its CRC-32 is {read:08x}, the zip "
                         f"says {stored:08x}. Re-download or re-save the checkpoint")


class UnsafeCheckpointError(CheckpointError):
    """The pickle holds code or objects other than tensors; porter refuses to unpickle it."""


@dataclass
class ReadInfo:
    path: str
    format: str  # "torch", "torch-legacy", "safetensors", "sharded"
    key: str | None = None  # where in a nested checkpoint the state_dict was found
    other_keys: list[str] = field(default_factory=list)  # what else the checkpoint held at that level
    dtypes: dict[str, int] = field(default_factory=dict)  # dtype name -> number of tensors
    files: list[str] = field(default_factory=list)  # shards read
    notes: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors __metadata__

    def describe(self) -> str:
        where = f" (state_dict under key {self.key!r})" if self.key else ""
        shards = f", {len(self.files)} shard(s)" if self.files else ""
        dtypes = ", ".join(f"{n} {d}" for d, n in self.dtypes.items())
        return f"{self.path}: {self.format} checkpoint{where}{shards}; {sum(self.dtypes.values())} tensors: {dtypes}"


@dataclass(frozen=True)
class TensorMeta:
    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    file: str
    alias_of: str | None = None  # the same tensor (same storage, offset, shape, strides) as an earlier key

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass(frozen=True)
class Extent:
    """Where a tensor's bytes lie in a file: `nbytes` from `offset`, C order, little-endian, no gaps."""

    path: str
    offset: int
    nbytes: int
    crc32: int | None = None  # the zip's CRC-32 of exactly these bytes: whoever reads them checks it
    record: str | None = None  # the zip record they are

    def check(self, crc: int, key: str) -> None:
        """Raise CheckpointError if `crc` (of the bytes read) is not the record's."""
        if self.crc32 is not None and crc != self.crc32:
            raise CorruptRecordError(self.path, self.record, key, self.crc32, crc)


class Source:
    """A checkpoint's tensors: metadata up front, data one tensor at a time."""

    info: ReadInfo
    tensors: dict[str, TensorMeta]

    def read(self, key: str) -> np.ndarray:
        """The tensor's values (the checkpoint's dtype, exact); may be a read-only view of the file."""
        raise NotImplementedError

    def extent(self, key: str) -> Extent | None:
        """The tensor's bytes as one range of a file, where the format stores them so (else None).

        A writer copies such a range file to file, or reads it into its own buffer, instead of
        touching a memory map of it.
        """
        return None

    def files(self) -> list[Path]:
        """Every file (or directory) the source reads: the checkpoint, an index and its shards."""
        return [Path(self.info.path)]

    def release(self, key: str) -> None:
        """Done with `key`: give its memory back (no-op where nothing is held)."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count_dtypes(self) -> None:
        self.info.dtypes = {}
        for meta in self.tensors.values():
            name = str(meta.dtype)
            self.info.dtypes[name] = self.info.dtypes.get(name, 0) + 1


def read_state_dict(path: str | Path, key: str | None = None) -> tuple[dict[str, np.ndarray], ReadInfo]:
    """Read `path` whole into ({torch key: numpy array}, info). Raises CheckpointError (a ValueError)."""
    with open_checkpoint(path, key) as source:
        flat = {}
        for name in source.tensors:
            flat[name] = np.array(source.read(name), copy=True)
            source.release(name)
        return flat, source.info


def open_checkpoint(path: str | Path, key: str | None = None) -> Source:
    """A Source over a checkpoint file, a sharded index or a directory. Raises CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    notes = []
    if path.is_dir():
        path, note = resolve_directory(path)
        if note:
            notes.append(note)
    require_regular_file(path)
    name = path.name.lower()
    if name.endswith(".index.json"):
        source: Source = ShardedSource(path)
    elif path.suffix.lower() in SAFETENSORS_SUFFIXES:
        source = SafetensorsSource(path)
    elif path.suffix.lower() in TORCH_SUFFIXES:
        source = TorchSource(path, key)
    else:
        raise CheckpointError(
            f"{path}: unknown checkpoint type {path.suffix or '(no extension)'!r}; expected "
            f"{', '.join(TORCH_SUFFIXES)} (torch.save), .safetensors, a sharded *.index.json, or a directory "
            f"holding one of them")
    if key is not None and not isinstance(source, TorchSource):
        source.close()
        raise CheckpointError(f"{path}: --key/key= selects inside a nested torch checkpoint; "
                              f"a {source.info.format} file is flat")
    source.info.notes[:0] = notes
    source._count_dtypes()
    return source


def resolve_directory(directory: Path) -> tuple[Path, str | None]:
    """The checkpoint a directory holds: its index, else its one safetensors file, else its one torch file."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))

    def pick(kind: str, found: list[Path]) -> Path:
        if len(found) > 1:
            raise CheckpointError(f"{directory}: several {kind} in the directory ({', '.join(p.name for p in found)});"
                                  f" name the one to convert")
        return found[0]

    indexes = [p for p in files if p.name.lower().endswith(".index.json")]
    st_indexes = [p for p in indexes if p.name.lower().endswith(".safetensors.index.json")]
    if indexes:
        chosen = pick("sharded indexes", st_indexes or indexes)
        note = (f"using {chosen.name} (safetensors preferred over pickled shards)"
                if st_indexes and len(indexes) > len(st_indexes) else f"using {chosen.name}")
        return chosen, note
    safetensors = [p for p in files if p.suffix.lower() in SAFETENSORS_SUFFIXES]
    torch_files = [p for p in files if p.suffix.lower() in TORCH_SUFFIXES]
    if safetensors:
        chosen = pick(".safetensors files and no *.index.json", safetensors)
        extra = " (safetensors preferred over the pickled " + ", ".join(p.name for p in torch_files) + ")" \
            if torch_files else ""
        return chosen, f"using {chosen.name}{extra}"
    if torch_files:
        chosen = pick("torch checkpoints", torch_files)
        return chosen, f"using {chosen.name}"
    raise CheckpointError(f"{directory}: no checkpoint in the directory (looked for *.index.json, *.safetensors, "
                          f"{', '.join('*' + s for s in TORCH_SUFFIXES)})")


# ---------------------------------------------------------------- safetensors


class SafetensorsSource(Source):
    def __init__(self, path: Path):
        self.path = path
        try:
            infos, metadata = safetensors_io.read_header(path)
        except safetensors_io.SafetensorsFormatError as exc:
            raise CheckpointError(f"{exc}. Re-download or re-save the file.") from None
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read: {exc}") from None
        self.infos = infos
        self.info = ReadInfo(str(path), "safetensors", metadata=metadata)
        self.tensors = {k: TensorMeta(k, i.shape, i.dtype, str(path)) for k, i in infos.items()}

    def read(self, key: str) -> np.ndarray:
        try:
            return safetensors_io.map_tensor(self.path, self.infos[key])
        except OSError as exc:
            raise CheckpointError(f"{self.path}: cannot read tensor {key!r}: {exc}") from None

    def extent(self, key: str) -> Extent | None:
        info = self.infos[key]
        return Extent(str(self.path), info.begin, info.nbytes) if sys.byteorder == "little" else None


# ---------------------------------------------------------------- sharded


class ShardedSource(Source):
    def __init__(self, path: Path):
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            weight_map = index["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise TypeError("weight_map must map tensor names to shard file names")
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            detail = "nested too deeply" if isinstance(exc, RecursionError) else exc
            raise CheckpointError(f"{path}: not a sharded checkpoint index (a JSON file with 'weight_map'): "
                                  f"{detail}") from None
        shards = list(dict.fromkeys(weight_map.values()))
        for shard in shards:
            _check_shard_inside(path, shard)
        missing = [s for s in shards if not (path.parent / s).exists()]
        if missing:
            raise CheckpointError(f"{path}: shard(s) missing: {', '.join(missing)} (looked in {path.parent}); "
                                  f"download every shard the index names")
        for shard in shards:
            require_regular_file(path.parent / shard)
        self.path = path
        self.info = ReadInfo(str(path), "sharded", files=shards)
        self.parts: dict[str, Source] = {}
        self.owner: dict[str, Source] = {}
        self.tensors = {}
        try:
            for shard in shards:
                shard_path = path.parent / shard
                if shard_path.suffix.lower() in SAFETENSORS_SUFFIXES:
                    part: Source = SafetensorsSource(shard_path)
                elif shard_path.suffix.lower() in TORCH_SUFFIXES:
                    part = TorchSource(shard_path, None)
                else:
                    raise CheckpointError(f"{path}: shard {shard} is neither .safetensors nor a torch file")
                self.parts[shard] = part
                wanted = [k for k, s in weight_map.items() if s == shard]
                absent = [k for k in wanted if k not in part.tensors]
                if absent:
                    raise CheckpointError(f"{path}: shard {shard} does not hold key(s) the index assigns to it: "
                                          f"{', '.join(absent[:10])}")
                for k in wanted:
                    self.tensors[k] = part.tensors[k]
                    self.owner[k] = part
        except BaseException:
            self.close()
            raise

    def files(self) -> list[Path]:
        return [self.path, *(self.path.parent / shard for shard in self.info.files)]

    def read(self, key: str) -> np.ndarray:
        return self.owner[key].read(key)

    def extent(self, key: str) -> Extent | None:
        return self.owner[key].extent(key)

    def release(self, key: str) -> None:
        self.owner[key].release(key)

    def close(self) -> None:
        for part in self.parts.values():
            part.close()


def _check_shard_inside(index: Path, shard: str) -> None:
    """A shard must be a file of the index's directory (or below it), not a path out of it.

    Resolved (symbolic links followed), it must lie under the index's directory, or under the
    directory of the file the index itself links to: Hugging Face's cache links every file of a
    snapshot (the index and its shards) to one blobs/ directory.
    """
    name = Path(shard)
    where = f"{index}: shard {shard!r}"
    if name.is_absolute() or ".." in name.parts:
        raise CheckpointError(f"{where} is {'an absolute path' if name.is_absolute() else 'a path with ..'}: "
                              f"a shard must be a file inside {index.parent}; porter reads nothing outside the "
                              f"checkpoint's directory. Fix the index's weight_map")
    resolved = (index.parent / name).resolve()
    homes = {index.parent.resolve(), index.resolve().parent}
    if not any(home == resolved or home in resolved.parents for home in homes):
        raise CheckpointError(f"{where} leads outside {index.parent} (to {resolved}, through a symbolic link): "
                              f"porter reads nothing outside the checkpoint's directory. Copy the shard into "
                              f"the directory")


def require_regular_file(path: Path) -> None:
    """Refuse a FIFO, device or socket before it is opened: reading one can block forever."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc}") from None
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise CheckpointError(f"{path}: {kind}, not a checkpoint file: porter reads only regular files "
                              f"(nothing was read from it). Give the checkpoint file itself")


# ---------------------------------------------------------------- torch.save


_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4
_libc: Any = None


def _drop_pages(address: int, nbytes: int) -> None:
    """madvise(MADV_DONTNEED) the pages of a private, read-only file mapping (Linux; elsewhere a no-op)."""
    global _libc
    if not sys.platform.startswith("linux") or nbytes <= 0:
        return
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return
    start = address - address % _PAGE
    _libc.madvise(start, address + nbytes - start, _MADV_DONTNEED)


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def _torch_np_dtype(dtype: Any) -> np.dtype:
    import torch

    return to_numpy(torch.empty(0, dtype=dtype)).dtype


class TorchSource(Source):
    def __init__(self, path: Path, key: str | None):
        self.path = path
        self.mapped = zipfile.is_zipfile(path)
        if not self.mapped and _starts_with(path, b"PK"):
            raise CheckpointError(f"{path}: a zip archive (torch.save's format) without its central directory: "
                                  f"the file is truncated or corrupt; re-save or re-download it")
        obj = _torch_load(path, mmap_file=self.mapped)
        self.state_dict, self.info = _select(obj, key, path)
        if not self.mapped:
            self.info.format = "torch-legacy"
            self.info.notes.append("legacy (pre-zip) torch file: read whole into memory (torch cannot map it); "
                                   "re-save it with torch.save or as safetensors to convert in bounded memory")
        self.tensors = {}
        seen: dict[tuple, str] = {}
        dtypes: dict[Any, np.dtype] = {}
        for k, t in self.state_dict.items():
            if is_torch_tensor(t):
                if t.dtype not in dtypes:
                    dtypes[t.dtype] = _torch_np_dtype(t.dtype)
                dtype = dtypes[t.dtype]
                identity = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(),
                            t.dtype)
            else:
                dtype = np.asarray(t).dtype
                identity = (id(t),)
            alias = seen.setdefault(identity, k)
            self.tensors[k] = TensorMeta(k, tuple(t.shape), dtype, str(path), alias if alias != k else None)
        self._records: dict[int, Record] | None = None  # storage address -> its zip record, found on demand
        self._checked: set[int] = set()  # storages whose record's CRC-32 was checked (or is checked by a reader)

    def read(self, key: str) -> np.ndarray:
        tensor = self.state_dict[key]
        if self.mapped and is_torch_tensor(tensor):
            self._check_storage(key, tensor)
        return to_numpy(tensor, copy=False)

    def extent(self, key: str) -> Extent | None:
        tensor = self.state_dict[key]
        if not self.mapped or not is_torch_tensor(tensor) or not tensor.is_contiguous() or tensor.numel() == 0:
            return None
        record = self._record(tensor)
        if record is None:
            return None
        itemsize = tensor.element_size()
        nbytes = tensor.numel() * itemsize
        address = tensor.untyped_storage().data_ptr()
        if tensor.storage_offset() == 0 and nbytes == record.nbytes and address not in self._checked:
            self._checked.add(address)  # the reader checks the CRC-32 of the bytes it reads
            return Extent(str(self.path), record.offset, nbytes, record.crc32, record.name)
        self._check_storage(key, tensor)
        return Extent(str(self.path), record.offset + tensor.storage_offset() * itemsize, nbytes)

    def _record(self, tensor: Any) -> Record | None:
        if self._records is None:
            self._records = _storage_records(self.path, self.state_dict.values())
        return self._records.get(tensor.untyped_storage().data_ptr())

    def _check_storage(self, key: str, tensor: Any) -> None:
        """Check the CRC-32 of the zip record behind `tensor`'s storage, once (read through its memory map)."""
        storage = tensor.untyped_storage()
        address = storage.data_ptr()
        if address in self._checked or not storage.nbytes():
            return
        record = self._record(tensor)
        if record is None:
            return
        self._checked.add(address)
        crc = zlib.crc32((ctypes.c_ubyte * record.nbytes).from_address(address))
        if crc != record.crc32:
            raise CorruptRecordError(self.path, record.name, key, record.crc32, crc)

    def release(self, key: str) -> None:
        if not self.mapped:
            return
        tensor = self.state_dict[key]
        if is_torch_tensor(tensor):
            storage = tensor.untyped_storage()
            _drop_pages(storage.data_ptr(), storage.nbytes())

    def close(self) -> None:
        self.state_dict = {}


@dataclass(frozen=True)
class Record:
    """A stored (uncompressed) record of a zip: where its bytes start, how many, their CRC-32."""

    name: str
    offset: int
    nbytes: int
    crc32: int


def _storage_records(path: Path, values: Any) -> dict[int, Record]:
    """{storage address: its zip record} for the tensors torch.load(mmap=True) mapped from `path`.

    Each address is located in the process's own map of the file (/proc/self/maps, Linux), and kept only
    if it starts a stored (uncompressed) `data/` record of the zip with exactly the storage's size, in a
    little-endian file: then the file holds the storage's bytes as they are. Anything else: no entry,
    and the tensor is read through its memory map (unchecked: no record to check it against).
    """
    storages = {}
    for value in values:
        if is_torch_tensor(value) and value.untyped_storage().nbytes():
            storage = value.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    if not storages or sys.byteorder != "little" or not sys.platform.startswith("linux"):
        return {}
    try:
        records = _stored_data_records(path)
        maps = _file_maps(path)
    except (OSError, ValueError, zipfile.BadZipFile):
        return {}
    found = {}
    for address, nbytes in storages.items():
        for start, end, file_offset in maps:
            if start <= address and address + nbytes <= end:
                record = records.get(address - start + file_offset)
                if record is not None and record.nbytes == nbytes:
                    found[address] = record
                break
    return found


def _stored_data_records(path: Path) -> dict[int, Record]:
    """{offset of the data: record} of the uncompressed `*/data/*` entries of a zip, if it is little-endian."""
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        infos = archive.infolist()
        for info in infos:
            if info.filename.endswith("/byteorder") and archive.read(info).strip() not in (b"little", b""):
                return {}
        records = {}
        for info in infos:
            if "/data/" not in info.filename or info.compress_type != zipfile.ZIP_STORED:
                continue
            raw.seek(info.header_offset)
            local = raw.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                continue
            name_length, extra_length = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
            offset = info.header_offset + 30 + name_length + extra_length
            records[offset] = Record(info.filename, offset, info.file_size, info.CRC)
        return records


def _file_maps(path: Path) -> list[tuple[int, int, int]]:
    """(start, end, file offset) of this process's memory maps of `path` (Linux /proc/self/maps)."""
    target = os.path.realpath(path)
    maps = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].rstrip("\n") == target:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                maps.append((start, end, int(fields[2], 16)))
    return maps


def _torch_load(path: Path, *, mmap_file: bool) -> Any:
    import torch

    try:
        with open(path, "rb") as f:
            header = f.read(2)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc}") from None
    try:
        with warnings.catch_warnings():  # torch notes pickle protocols it was not written with
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap_file)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next((line for line in lines if _REFUSED.search(line)), "")
        detail = next((line for line in reversed(lines) if "documentation" not in line
                       and not line.startswith("Weights only") and "WeightsUnpickler" not in line), "")
        if reason:
            raise UnsafeCheckpointError(
                f"{path}: refused: the file contains pickled code or objects (not only tensors), and porter "
                f"will not run them ({_without_allowlisting(reason)}). {RESAVE_ADVICE}") from None
        if (header[:1] == b"\x80" or header == b"PK") and _well_formed_pickle(path):
            raise UnsafeCheckpointError(  # e.g. protocol 4's FRAME: a pickle not written by torch.save
                f"{path}: refused: torch's weights-only unpickler cannot read this pickle ({detail}), and "
                f"porter never unpickles any other way, since a pickle can run arbitrary code. {RESAVE_ADVICE}"
            ) from None
        if header[:1] == b"\x80" or header == b"PK":
            raise CheckpointError(
                f"{path}: unreadable: its pickle is corrupt ({detail or 'no detail'}); re-download it, or "
                f"{RESAVE_ADVICE[0].lower()}{RESAVE_ADVICE[1:]}") from None
        raise CheckpointError(f"{path}: not a torch checkpoint (neither torch.save's zip format nor a pickle)") \
            from None
    except EOFError:
        raise CheckpointError(f"{path}: empty or truncated torch checkpoint; re-save or re-download it") from None
    except Exception as exc:  # a corrupt pickle trips the unpickler anywhere (KeyError, TypeError, RuntimeError ...)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, (RuntimeError, OSError)):  # KeyError: 57 says more than 57
            first = f"{type(exc).__name__}: {first}"
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({first}): the file is truncated or corrupt; "
                              f"re-save or re-download it") from None


# What torch's weights-only unpickler says when the pickle names a global (a class, a function) or builds
# an object it does not allow: porter refuses those files. Any other unpickling error is a broken file.
_REFUSED = re.compile(r"global|Can only (?:create new object|build)|call reduce", re.IGNORECASE)


def _well_formed_pickle(path: Path) -> bool:
    """Whether the pickles torch.load reads from `path` parse as pickle opcodes (pickletools decodes
    them; nothing is built or run). A corrupt one does not; one that parses but that torch's unpickler
    rejects uses opcodes torch.save does not write. Zip: its data.pkl. Legacy: the five pickles
    before the raw storage bytes (magic number, protocol, system info, the object, storage keys)."""
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
                for _ in pickletools.genops(archive.read(name)):
                    pass
            return True
        with open(path, "rb") as f:
            for _ in range(5):
                for _ in pickletools.genops(f):
                    pass
                start = f.tell()
                if f.read(1) != b"\x80":
                    break
                f.seek(start)
        return True
    except Exception:  # an unknown opcode, a truncated argument, no data.pkl: corrupt
        return False


def _without_allowlisting(reason: str) -> str:
    """torch's message without its advice to allowlist the global (porter's advice is to re-save)."""
    reason = re.sub(r"^WeightsUnpickler error:\s*", "", reason)
    sentences = re.split(r"(?<=\.)\s+(?=[A-Z])", reason)
    kept = [s for i, s in enumerate(sentences) if i == 0 or not re.search(r"safe_globals|allowlist", s, re.I)]
    text = re.sub(r",? (?:or )?(?:classes|types) allowlisted via `add_safe_globals`,?", "", " ".join(kept))
    return text.rstrip(". ")


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


def _select(obj: Any, key: str | None, path: Path) -> tuple[dict[str, Any], ReadInfo]:
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
    return dict(chosen), info
