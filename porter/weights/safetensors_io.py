"""The safetensors format, read and written one tensor at a time.

A safetensors file is an 8-byte little-endian header length N, N bytes of
JSON (`{name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
"__metadata__": {str: str}}`, offsets relative to the byte after the header),
then the tensors' bytes, row-major, little-endian, with no gaps.

The safetensors library reads and writes whole dicts (its numpy `save_file`
holds every tensor's bytes at once). porter converts checkpoints larger than
memory, so it reads the header itself, memory-maps each tensor on its own
(`np.memmap` of exactly that byte range, unmapped when dropped), and writes
the header first (every shape and dtype is known before any data is read),
then each tensor as it comes. The files are plain safetensors: the library
reads what porter writes (tests check both directions).
"""

from __future__ import annotations

import errno
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import ml_dtypes
import numpy as np

from porter.weights.arrays import Scratch, contiguous

# safetensors dtype name <-> numpy dtype (ml_dtypes for bfloat16 and float8).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "F32": np.dtype(np.float32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    "F64": np.dtype(np.float64),
    "C64": np.dtype(np.complex64),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz),
}
NAMES: dict[np.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}

MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


class SafetensorsFormatError(ValueError):
    """The file is not a valid safetensors file; the message names the file and what is wrong."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def dtype_name(dtype: np.dtype) -> str:
    try:
        return NAMES[np.dtype(dtype)]
    except KeyError:
        raise SafetensorsFormatError(f"dtype {dtype} has no safetensors name") from None


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """({name: TensorInfo} in file order, metadata) of a safetensors file, every field checked."""
    path = Path(path)

    def bad(what: str) -> SafetensorsFormatError:
        return SafetensorsFormatError(f"{path}: not a valid safetensors file: {what}")

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length (empty or truncated)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER or 8 + length > size:
            raise bad(f"the header claims {length} bytes but the file has {size} (truncated, or not safetensors)")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("__metadata__ must map strings to strings")
    start = 8 + length
    infos: list[TensorInfo] = []
    for name, spec in header.items():
        try:
            dtype = DTYPES[spec["dtype"]]
            shape = tuple(int(d) for d in spec["shape"])
            begin, end = (int(o) for o in spec["data_offsets"])
        except KeyError as exc:
            if isinstance(spec, dict) and "dtype" in spec and exc.args[0] == spec["dtype"]:
                raise bad(f"tensor {name!r} has dtype {spec['dtype']!r}, which porter cannot read") from None
            raise bad(f"tensor {name!r}: missing field {exc}") from None
        except (TypeError, ValueError):
            raise bad(f"tensor {name!r}: malformed entry {spec!r}") from None
        if any(d < 0 for d in shape) or begin < 0 or end < begin:
            raise bad(f"tensor {name!r}: negative size or offsets {spec!r}")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - begin != expected:
            raise bad(f"tensor {name!r}: {end - begin} bytes for shape {list(shape)} {spec['dtype']} "
                      f"({expected} expected)")
        if start + end > size:
            raise bad(f"tensor {name!r} ends at byte {start + end}, past the end of the file ({size} bytes): "
                      f"the file is truncated")
        infos.append(TensorInfo(name, dtype, shape, start + begin, start + end))
    return {info.name: info for info in sorted(infos, key=lambda i: (i.begin, i.end))}, metadata


def map_tensor(path: str | Path, info: TensorInfo) -> np.ndarray:
    """A read-only memory map of one tensor (a view of the file; freed when dropped)."""
    if info.nbytes == 0:
        return np.zeros(info.shape, info.dtype)
    return np.memmap(path, dtype=info.dtype, mode="r", offset=info.begin, shape=info.shape)


def iter_blocks(array: np.ndarray, *, dtype: np.dtype | None = None, block_bytes: int = 16 << 20,
                scratch: Scratch | None = None):
    """C-ordered, little-endian, contiguous pieces of `array` (cast to `dtype`), in order.

    A contiguous array with the right dtype comes back whole (no copy); a strided view is
    copied once (arrays.contiguous), into `scratch` if given; a cast is done a block of
    leading-axis rows at a time. A block is valid until the next one is asked for.
    """
    target = np.dtype(dtype) if dtype is not None else np.dtype(array.dtype)
    if target.byteorder == ">":
        target = target.newbyteorder("<")
    if array.ndim == 0:
        yield np.ascontiguousarray(array, dtype=target).reshape(1)
        return
    if not array.flags.c_contiguous:  # a transposed view: one copy, by torch's fast blocked transpose
        out = scratch.take(array.shape, array.dtype) if scratch is not None else None
        array = contiguous(array, out=out)
    if np.dtype(array.dtype) == target:
        yield array
        return
    row = max(1, int(np.prod(array.shape[1:], dtype=np.int64)) * max(target.itemsize, array.dtype.itemsize))
    step = max(1, block_bytes // row)
    for start in range(0, array.shape[0], step):
        yield array[start:start + step].astype(target)


def write_all(file: BinaryIO, data: bytes | memoryview) -> None:
    """file.write until every byte is written (an unbuffered file may take part of a large write)."""
    view = memoryview(data).cast("B")
    while view.nbytes:
        view = view[file.write(view):]


def copy_range(source: BinaryIO, target: BinaryIO, offset: int, nbytes: int, *, chunk: int = 64 << 20) -> None:
    """Append `nbytes` of `source` from `offset` to `target` (at its position), file to file.

    os.copy_file_range copies inside the kernel (no trip through this process's memory); where it
    is missing or refuses the pair of files, the bytes go through a bounded buffer instead.
    """
    target.flush()
    done = 0
    if hasattr(os, "copy_file_range"):
        try:
            while done < nbytes:
                step = os.copy_file_range(source.fileno(), target.fileno(), min(nbytes - done, 1 << 30),
                                          offset + done)
                if step == 0:
                    raise EOFError(f"{getattr(source, 'name', 'the input')} ends {nbytes - done} bytes early")
                done += step
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                raise
    buffer = bytearray(min(chunk, max(nbytes - done, 1)))
    while done < nbytes:
        view = memoryview(buffer)[:min(len(buffer), nbytes - done)]
        source.seek(offset + done)
        got = source.readinto(view)
        if got == 0:
            raise EOFError(f"{getattr(source, 'name', 'the input')} ends {nbytes - done} bytes early")
        write_all(target, view[:got])
        done += got


def read_exactly(source: BinaryIO, offset: int, view: memoryview) -> None:
    """Fill `view` with the bytes of `source` from `offset` (EOFError if the file ends first)."""
    source.seek(offset)
    done = 0
    while done < view.nbytes:
        got = source.readinto(view[done:])
        if not got:
            raise EOFError(f"{getattr(source, 'name', 'the input')} ends {view.nbytes - done} bytes early")
        done += got


class SafetensorsWriter:
    """Writes a safetensors file whose tensors are declared up front and then written in that order.

        writer = SafetensorsWriter(f, {"a": (dtype, shape), ...}, metadata)
        writer.write("a", array)   # in the declared order, each exactly its declared dtype and shape
        writer.close()             # checks that every declared tensor was written
    """

    def __init__(self, file: BinaryIO, tensors: dict[str, tuple[np.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        self.file = file
        self.order = list(tensors)
        self.specs = {k: (np.dtype(d), tuple(int(x) for x in s)) for k, (d, s) in tensors.items()}
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        offset = 0
        for name in self.order:
            dtype, shape = self.specs[name]
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            header[name] = {"dtype": dtype_name(dtype), "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-(len(raw) + 8) % 8)  # data starts 8-byte aligned, as the library writes it
        write_all(file, struct.pack("<Q", len(raw)) + raw)
        self.total = offset
        self.next = 0
        self.scratch = Scratch()  # every transposed tensor is laid out in the same memory

    def write(self, name: str, array: np.ndarray, *, dtype: np.dtype | None = None,
              block_bytes: int = 16 << 20) -> None:
        """Write `name` (cast to `dtype` if given); a transposed view is copied once, a cast done by blocks."""
        want, shape = self._next(name)
        got = np.dtype(dtype) if dtype is not None else np.dtype(array.dtype)
        if got != want or tuple(array.shape) != shape:
            raise ValueError(f"safetensors writer: {name!r} is {got}{list(array.shape)}, "
                             f"declared {want}{list(shape)}")
        for block in iter_blocks(array, dtype=dtype, block_bytes=block_bytes, scratch=self.scratch):
            write_all(self.file, memoryview(block.reshape(-1).view(np.uint8)))
        self.next += 1

    def copy(self, name: str, source: BinaryIO, offset: int, nbytes: int) -> None:
        """Write `name` as the `nbytes` bytes at `offset` of the open file `source` (its exact bytes)."""
        want, shape = self._next(name)
        expected = int(np.prod(shape, dtype=np.int64)) * want.itemsize
        if nbytes != expected:
            raise ValueError(f"safetensors writer: {name!r} is {nbytes} bytes, declared {expected}")
        copy_range(source, self.file, offset, nbytes)
        self.next += 1

    def _next(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        if self.next >= len(self.order) or self.order[self.next] != name:
            expected = self.order[self.next] if self.next < len(self.order) else "nothing"
            raise ValueError(f"safetensors writer: got {name!r}, expected {expected!r}")
        return self.specs[name]

    def close(self) -> None:
        if self.next != len(self.order):
            raise ValueError(f"safetensors writer: {len(self.order) - self.next} declared tensor(s) not written "
                             f"(next: {self.order[self.next]!r})")
        self.file.flush()
        os.fsync(self.file.fileno())
