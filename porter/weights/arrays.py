"""Exact conversion of torch tensors (and numpy/jax arrays) to numpy arrays.

numpy has no bfloat16 or float8; ml_dtypes (a jax dependency) provides them
and jax understands them. torch's `Tensor.numpy()` refuses those dtypes, and
going through float32 and back would be exact for bfloat16 but is easy to get
wrong elsewhere, so these dtypes are reinterpreted bit for bit: the tensor is
viewed as an integer of the same width, handed to numpy, and viewed back as
the ml_dtypes type. No value ever passes through another float type.
"""

from __future__ import annotations

import functools
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ml_dtypes
import numpy as np


def _bit_views() -> dict[Any, tuple[Any, Any]]:
    import torch

    views = {torch.bfloat16: (torch.int16, ml_dtypes.bfloat16)}
    for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu"):
        if hasattr(torch, name) and hasattr(ml_dtypes, name):
            views[getattr(torch, name)] = (torch.uint8, getattr(ml_dtypes, name))
    return views


_VIEWS: dict[Any, tuple[Any, Any]] | None = None


def is_torch_tensor(value: Any) -> bool:
    module = type(value).__module__ or ""
    if not module.startswith("torch"):
        return False
    import torch

    return isinstance(value, torch.Tensor)


def to_numpy(value: Any, *, copy: bool = True) -> np.ndarray:
    """A numpy array with exactly the values and dtype of `value` (torch, numpy, jax, scalar).

    copy=False returns a view of a contiguous CPU torch tensor's memory where it can (the
    streaming converter reads memory-mapped checkpoints that way, without a copy).
    """
    global _VIEWS
    if is_torch_tensor(value):
        tensor = value.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        tensor = tensor.contiguous()
        if _VIEWS is None:
            _VIEWS = _bit_views()
        if tensor.dtype in _VIEWS:
            int_type, np_type = _VIEWS[tensor.dtype]
            array = tensor.view(int_type).numpy().view(np_type)
        else:
            array = tensor.numpy()
        return array.copy() if copy else array
    return np.asarray(value)



def copy_into(array: np.ndarray, out: np.ndarray) -> None:
    """out[...] = array (cast to out's dtype as astype would), for any strides of `array`.

    numpy copies a transposed matrix element by element, jumping a whole row in memory at each
    step (about 0.6 GB/s here). Copied in tall, narrow tiles (each one reads a few source rows
    and writes a few output columns, all within the cache) on all cores it moves 4-7 GB/s, as
    fast as torch's blocked copy without importing torch. Values move bit for bit (bfloat16 and
    float8 as same-width integers).
    """
    if array.dtype != out.dtype or not _transposed_matrices(array):
        np.copyto(out, array, casting="unsafe")
        return
    bits = _SAME_WIDTH_INT[array.dtype.itemsize]
    source, target = array.view(bits), out.view(bits)
    tiles = [(lead, rows) for lead in np.ndindex(array.shape[:-2])
             for rows in range(0, array.shape[-2], _TILE_ROWS)]
    if array.nbytes < _THREADED_BYTES:
        _copy_tiles(source, target, tiles)
        return
    share = -(-len(tiles) // _WORKERS)
    list(_pool().map(lambda i: _copy_tiles(source, target, tiles[i:i + share]), range(0, len(tiles), share)))


_SAME_WIDTH_INT = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}
_TILE_ROWS, _TILE_COLUMNS = 1024, 16  # measured best for 1-, 2- and 4-byte types on this machine's caches
_THREADED_BYTES = 4 << 20
_WORKERS = max(1, min(8, os.cpu_count() or 1))


def _transposed_matrices(array: np.ndarray) -> bool:
    """Whether `array` is a stack of matrices whose columns, not rows, are contiguous (a transposed kernel)."""
    itemsize = array.dtype.itemsize
    return (array.ndim >= 2 and array.size > 0 and itemsize in _SAME_WIDTH_INT and array.dtype.kind in "biufV"
            and array.strides[-2] == itemsize and array.strides[-1] != itemsize and array.shape[-1] > 1)


def _copy_tiles(source: np.ndarray, target: np.ndarray, tiles: list[tuple[tuple[int, ...], int]]) -> None:
    columns = source.shape[-1]
    for lead, row in tiles:
        rows_in, rows_out = source[lead][row:row + _TILE_ROWS], target[lead][row:row + _TILE_ROWS]
        for col in range(0, columns, _TILE_COLUMNS):
            rows_out[:, col:col + _TILE_COLUMNS] = rows_in[:, col:col + _TILE_COLUMNS]


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """Threads for tiled copies: numpy lets go of the GIL while it copies a tile."""
    return ThreadPoolExecutor(_WORKERS, thread_name_prefix="porter-copy")


class Scratch:
    """One growing buffer that successive tensors are laid out into (`take` returns a view of it).

    Only the latest view is valid: the next `take` may reuse (or replace) the memory. The buffer
    is an anonymous memory map, not numpy's allocation: Linux copies out of it into the page cache
    (a file write) several times faster than out of numpy's large, huge-page-advised blocks.
    """

    def __init__(self) -> None:
        self.buffer = np.empty(0, np.uint8)

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes > self.buffer.nbytes:
            self.buffer = np.empty(0, np.uint8)  # the old buffer goes first: never two at once
            self.buffer = np.frombuffer(mmap.mmap(-1, nbytes), np.uint8)
        return self.buffer[:nbytes].view(dtype).reshape(shape)
