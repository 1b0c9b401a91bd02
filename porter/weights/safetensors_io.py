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
then each tensor as it comes, laid out (transposed, cast) straight into one
page-aligned buffer that goes to disk with O_DIRECT where the filesystem
takes it: Linux's copy into the page cache costs more than the conversion. The files are plain safetensors: the library
reads what porter writes (tests check both directions).
"""

from __future__ import annotations

import errno
import io
import json
import math
import mmap
import os
import struct
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import ml_dtypes
import numpy as np

try:
    import fcntl
except ImportError:  # not a Unix: no O_DIRECT either
    fcntl = None  # type: ignore[assignment]

from porter.weights.arrays import copy_into

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
    """({name: TensorInfo} in file order, metadata) of a safetensors file, every field checked.

    What the safetensors library checks, checked the same way: a bounded header that is strict JSON
    (no repeated key, no NaN/Infinity, nesting bounded), each tensor a known dtype, a shape of
    non-negative integers and two integer offsets; the tensors' byte ranges, in offset order, start
    at 0, follow one another with no gap or overlap, each exactly prod(shape) * itemsize bytes, and
    end exactly at the end of the file.
    """
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
    header = _parse_header(raw, bad)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("__metadata__ must map strings to strings")
    infos = sorted((_tensor_info(name, spec, bad) for name, spec in header.items()), key=lambda i: (i.begin, i.end))
    data_size = size - 8 - length
    position = 0
    for info in infos:
        if info.begin != position:
            what = "overlaps the tensor before it" if info.begin < position else \
                f"leaves a gap of {info.begin - position} bytes before it"
            raise bad(f"tensor {info.name!r} starts at data byte {info.begin} and {what} (the tensors' bytes must "
                      f"follow one another from 0)")
        if info.end > data_size:
            raise bad(f"tensor {info.name!r} ends at byte {8 + length + info.end}, past the end of the file "
                      f"({size} bytes): the file is truncated")
        position = info.end
    if position != data_size:
        raise bad(f"{data_size - position} bytes after the last tensor (the tensors cover {position} of the "
                  f"{data_size} data bytes)")
    start = 8 + length
    return {i.name: TensorInfo(i.name, i.dtype, i.shape, start + i.begin, start + i.end) for i in infos}, metadata


def _parse_header(raw: bytes, bad) -> dict:
    def no_repeats(pairs: list[tuple[str, object]]) -> dict:
        seen: dict[str, object] = {}
        for key, value in pairs:
            if key in seen:
                raise bad(f"the header names {key!r} twice")
            seen[key] = value
        return seen

    def no_constant(name: str) -> None:
        raise bad(f"the header holds {name}, which is not JSON")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"the header is not UTF-8 ({exc})") from None
    try:
        header = json.loads(text, object_pairs_hook=no_repeats, parse_constant=no_constant)
    except RecursionError:
        raise bad("the header nests too deeply to be one (a safetensors header is two levels deep)") from None
    except ValueError as exc:
        if isinstance(exc, SafetensorsFormatError):
            raise
        raise bad(f"the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    return header


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def _tensor_info(name: str, spec: object, bad) -> TensorInfo:
    """One header entry checked (offsets relative to the data, as in the file)."""
    if not isinstance(spec, dict):
        raise bad(f"tensor {name!r}: {spec!r} is not an object with dtype, shape and data_offsets")
    missing = [field for field in ("dtype", "shape", "data_offsets") if field not in spec]
    if missing:
        raise bad(f"tensor {name!r}: missing field {', '.join(missing)}")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise bad(f"tensor {name!r} has dtype {dtype!r}, which porter cannot read")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise bad(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise bad(f"tensor {name!r}: data_offsets {offsets!r} are not two non-negative integers")
    begin, end = offsets
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if end < begin or end - begin != expected:
        takes = f"{expected} bytes" if expected < 1 << 64 else "more bytes than a file can hold"
        raise bad(f"tensor {name!r}: offsets {offsets} hold {end - begin} bytes, but shape {shape} {dtype} takes "
                  f"{takes}")
    return TensorInfo(name, DTYPES[dtype], tuple(shape), begin, end)


def map_tensor(path: str | Path, info: TensorInfo) -> np.ndarray:
    """A read-only memory map of one tensor (a view of the file; freed when dropped)."""
    if info.nbytes == 0:
        return np.zeros(info.shape, info.dtype)
    return np.memmap(path, dtype=info.dtype, mode="r", offset=info.begin, shape=info.shape)


def write_all(file: BinaryIO, data: bytes | memoryview) -> None:
    """file.write until every byte is written (an unbuffered file may take part of a large write)."""
    view = memoryview(data).cast("B")
    while view.nbytes:
        view = view[file.write(view):]


def read_exactly(source: BinaryIO, offset: int, view: memoryview) -> None:
    """Fill `view` with the bytes of `source` from `offset` (EOFError if the file ends first)."""
    source.seek(offset)
    done = 0
    while done < view.nbytes:
        got = source.readinto(view[done:])
        if not got:
            raise EOFError(f"{getattr(source, 'name', 'the input')} ends {view.nbytes - done} bytes early")
        done += got


_DIRECT = getattr(os, "O_DIRECT", 0)
_ALIGN = 4096  # O_DIRECT wants block-aligned memory, file offsets and lengths; 4 KiB covers 512-byte devices too


def open_output(path: str | Path) -> BinaryIO:
    """A new file for SafetensorsWriter: unbuffered, with O_DIRECT where the OS and filesystem take it.

    Direct writes go from the writer's buffer to the disk without a copy into the page cache,
    which on Linux can cost more than the conversion itself (and they leave the final fsync
    little to do).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | _DIRECT, 0o644)
    except OSError as exc:
        if not _DIRECT or exc.errno != errno.EINVAL:  # EINVAL: no O_DIRECT on this filesystem (tmpfs)
            raise
        fd = os.open(path, flags, 0o644)
    return os.fdopen(fd, "wb", buffering=0)


def _crc_into(crc: list[int], data: memoryview) -> None:
    crc[0] = zlib.crc32(data, crc[0])


class Checks:
    """Checksums computed in one worker thread, in the order submitted, while the caller goes on.

    zlib.crc32 releases the GIL, so a CRC-32 of the bytes just read costs the conversion little
    wall time where a core is free. settle() waits for every pending one and raises the first
    error; whoever reuses the memory being checked settles first.
    """

    def __init__(self) -> None:
        self.pool: ThreadPoolExecutor | None = None
        self.pending: list[Future] = []

    def submit(self, fn: Callable, *args: object) -> None:
        if self.pool is None:
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="porter-checks")
        self.pending.append(self.pool.submit(fn, *args))

    def settle(self) -> None:
        pending, self.pending = self.pending, []
        errors = [f.exception() for f in pending]
        for error in errors:
            if error is not None:
                raise error

    def close(self) -> None:
        """Wait for what is pending (its errors dropped: the caller is already failing) and stop the thread."""
        for future in self.pending:
            future.exception()
        self.pending = []
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


class _Window:
    """The bytes of the file being written, gathered in one page-aligned buffer and written in large blocks.

    Tensors are laid out (transposed, cast) straight into the buffer, so each byte is copied once
    before it leaves; with O_DIRECT only whole aligned blocks are written, and the last partial
    block after O_DIRECT is turned off. A full buffer is written by a thread while the next tensors
    are laid out in a second one (the disk and the CPU work at the same time).
    """

    def __init__(self, file: BinaryIO, capacity: int):
        self.file = file
        self.capacity = capacity + (-capacity % _ALIGN)
        self.buffer = np.frombuffer(mmap.mmap(-1, self.capacity + _ALIGN), np.uint8)
        self.spare: np.ndarray | None = None  # the other buffer, made at the first flush
        self.filled = 0
        self.writing: threading.Thread | None = None
        self.error: BaseException | None = None
        self.checks = Checks()
        try:
            self.direct = bool(_DIRECT and fcntl and fcntl.fcntl(file.fileno(), fcntl.F_GETFL) & _DIRECT)
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            self.direct = False

    @property
    def free(self) -> int:
        return self.buffer.nbytes - self.filled  # after a flush, at least the capacity

    def put_bytes(self, data: bytes) -> None:
        self.put_array(np.frombuffer(data, np.uint8), np.dtype(np.uint8))

    def put_array(self, array: np.ndarray, dtype: np.dtype) -> None:
        """`array` (any strides) in C order as `dtype`, a block of leading-axis rows at a time."""
        if array.size == 0:
            return
        if array.ndim == 0:
            array = array.reshape(1)
        nbytes = array.size * dtype.itemsize
        if self.free < nbytes <= self.capacity:
            self.flush()  # whole: one tiled copy of the matrix, not two slabs with half-empty tiles
        row = array.size // array.shape[0] * dtype.itemsize
        if row > self.capacity:  # one row does not fit: row by row, each split further
            for i in range(array.shape[0]):
                self.put_array(array[i], dtype)
            return
        start = 0
        while start < array.shape[0]:
            if self.free < row:
                self.flush()
            piece = array[start:start + self.free // row]
            out = self.buffer[self.filled:self.filled + piece.size * dtype.itemsize].view(dtype).reshape(piece.shape)
            copy_into(piece, out)
            self.filled += out.nbytes
            start += piece.shape[0]

    def put_file(self, source: BinaryIO, offset: int, nbytes: int, *,
                 check: Callable[[int], None] | None = None) -> None:
        """`nbytes` of `source` from `offset`, read straight into the buffer; with `check`, check(their CRC-32)
        runs in the checksum thread (Checks) while the next bytes are read."""
        crc = [0]
        while nbytes:
            if not self.free:
                self.flush()
            step = min(self.free, nbytes)
            view = memoryview(self.buffer[self.filled:self.filled + step])
            read_exactly(source, offset, view)
            if check is not None:
                self.checks.submit(_crc_into, crc, view)
            self.filled += step
            offset += step
            nbytes -= step
        if check is not None:
            self.checks.submit(lambda: check(crc[0]))

    def flush(self, *, final: bool = False) -> None:
        """Start writing the whole blocks (in a thread; final: everything, and wait for it)."""
        self.checks.settle()  # the bytes being checked stay in place until they are checked
        self.wait()
        ready = self.filled - self.filled % _ALIGN if self.direct and not final else self.filled
        if final:
            if self.filled % _ALIGN:
                self._buffered()
            self._write(self.buffer[:self.filled])
            self.filled = 0
            return
        if not ready:
            return
        if self.spare is None:
            self.spare = np.frombuffer(mmap.mmap(-1, self.buffer.nbytes), np.uint8)
        tail = self.filled - ready
        self.spare[:tail] = self.buffer[ready:self.filled]  # less than a block: carried to the other buffer
        full, self.buffer, self.spare = self.buffer[:ready], self.spare, self.buffer
        self.filled = tail
        self.writing = threading.Thread(target=self._write_in_thread, args=(full,), daemon=True)
        self.writing.start()

    def wait(self) -> None:
        """Wait for the write in flight; its error, if any, is raised here."""
        if self.writing is not None:
            self.writing.join()
            self.writing = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _write_in_thread(self, block: np.ndarray) -> None:
        try:
            self._write(block)
        except BaseException as exc:  # handed to the caller by wait()
            self.error = exc

    def _write(self, block: np.ndarray) -> None:
        try:
            write_all(self.file, memoryview(block))
        except OSError as exc:
            if not self.direct or exc.errno != errno.EINVAL:
                raise
            self._buffered()  # the filesystem took O_DIRECT at open but not for this write: plain writes
            write_all(self.file, memoryview(block))

    def _buffered(self) -> None:
        if self.direct:
            fd = self.file.fileno()
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_DIRECT)
            self.direct = False


class SafetensorsWriter:
    """Writes a safetensors file whose tensors are declared up front and then written in that order.

        writer = SafetensorsWriter(f, {"a": (dtype, shape), ...}, metadata)
        writer.write("a", array)   # in the declared order, each exactly its declared dtype and shape
        writer.close()             # checks that every declared tensor was written

    `f` is best unbuffered: open_output gives a file that skips the page cache where it can.
    `buffer_bytes` is best at least the largest tensor: a tensor that fits is laid out whole.
    """

    def __init__(self, file: BinaryIO, tensors: dict[str, tuple[np.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None, *, buffer_bytes: int = 16 << 20):
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
        self.window = _Window(file, min(buffer_bytes, 8 + len(raw) + offset))
        self.window.put_bytes(struct.pack("<Q", len(raw)) + raw)
        self.total = offset
        self.next = 0

    def write(self, name: str, array: np.ndarray, *, dtype: np.dtype | None = None) -> None:
        """Write `name` (cast to `dtype` if given), laid out straight into the output buffer."""
        want, shape = self._next(name)
        got = np.dtype(dtype) if dtype is not None else np.dtype(array.dtype)
        if got != want or tuple(array.shape) != shape:
            raise ValueError(f"safetensors writer: {name!r} is {got}{list(array.shape)}, "
                             f"declared {want}{list(shape)}")
        self.window.put_array(array, got.newbyteorder("<") if got.byteorder == ">" else got)
        self.next += 1

    def copy(self, name: str, source: BinaryIO, offset: int, nbytes: int, *,
             check: Callable[[int], None] | None = None) -> None:
        """Write `name` as the `nbytes` bytes at `offset` of the open file `source` (its exact bytes).

        With `check`, check(their CRC-32) runs in the writer's checksum thread; what it raises is raised
        by a later write, copy or close (or settle()).
        """
        want, shape = self._next(name)
        expected = int(np.prod(shape, dtype=np.int64)) * want.itemsize
        if nbytes != expected:
            raise ValueError(f"safetensors writer: {name!r} is {nbytes} bytes, declared {expected}")
        self.window.put_file(source, offset, nbytes, check=check)
        self.next += 1

    @property
    def checks(self) -> Checks:
        return self.window.checks

    def _next(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        if self.next >= len(self.order) or self.order[self.next] != name:
            expected = self.order[self.next] if self.next < len(self.order) else "nothing"
            raise ValueError(f"safetensors writer: got {name!r}, expected {expected!r}")
        return self.specs[name]

    def abort(self) -> None:
        """Stop: wait for the checks and the write in flight (so the file can be closed), ignoring their errors."""
        self.window.checks.close()
        try:
            self.window.wait()
        except OSError:
            pass

    def close(self) -> None:
        if self.next != len(self.order):
            raise ValueError(f"safetensors writer: {len(self.order) - self.next} declared tensor(s) not written "
                             f"(next: {self.order[self.next]!r})")
        self.window.flush(final=True)
        self.window.checks.close()
        self.file.flush()
        os.fsync(self.file.fileno())
