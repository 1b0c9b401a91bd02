"""Exact conversion of torch tensors (and numpy/jax arrays) to numpy arrays.

numpy has no bfloat16 or float8; ml_dtypes (a jax dependency) provides them
and jax understands them. torch's `Tensor.numpy()` refuses those dtypes, and
going through float32 and back would be exact for bfloat16 but is easy to get
wrong elsewhere, so these dtypes are reinterpreted bit for bit: the tensor is
viewed as an integer of the same width, handed to numpy, and viewed back as
the ml_dtypes type. No value ever passes through another float type.
"""

from __future__ import annotations

import mmap
import sys
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



def contiguous(array: np.ndarray, *, use_torch: bool = True) -> np.ndarray:
    """A C-contiguous copy of a strided view (a transposed kernel), or the array itself if it is one."""
    if array.flags.c_contiguous:
        return array
    out = np.empty(array.shape, array.dtype)
    copy_into(array, out, use_torch=use_torch)
    return out


def copy_into(array: np.ndarray, out: np.ndarray, *, use_torch: bool = True) -> None:
    """out[...] = array (cast to out's dtype as astype would), for any strides of `array`.

    numpy copies a transposed view element by element (about 150 MB/s for 2-byte types here);
    torch's blocked copy is several times faster, so it does same-dtype strided copies when
    use_torch is set (use_torch=False uses torch only if it is already imported). Values move bit
    for bit (bfloat16/float8 as same-width integers).
    """
    if array.flags.c_contiguous or array.dtype != out.dtype or not _torch_can_copy(array, use_torch):
        np.copyto(out, array, casting="unsafe")
        return
    import torch
    import warnings

    bits = _SAME_WIDTH_INT[array.dtype.itemsize]
    with warnings.catch_warnings():  # a read-only memory map: torch only reads it here
        warnings.simplefilter("ignore", UserWarning)
        source = torch.from_numpy(array.view(bits))
    torch.from_numpy(out.view(bits)).copy_(source)


_SAME_WIDTH_INT = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}


def _torch_can_copy(array: np.ndarray, use_torch: bool) -> bool:
    if array.ndim == 0 or array.size == 0 or any(s < 0 for s in array.strides):
        return False
    if array.dtype.itemsize not in _SAME_WIDTH_INT or array.dtype.kind not in "biufV" or array.dtype.byteorder == ">":
        return False
    if not use_torch and "torch" not in sys.modules:
        return False
    try:
        import torch  # noqa: F401
    except ImportError:  # pragma: no cover - torch is a dependency of porter
        return False
    return True


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
