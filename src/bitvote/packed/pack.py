"""Bit packing of +/-1 values into uint64 words, channels innermost (SPEC.md "Values and bits").

Bit 1 is +1 and bit 0 is -1; a real ``x`` packs to 1 when ``x >= 0`` (so -0.0 packs to 1,
which a sign-bit packer gets wrong) and NaN is an error. Activations are laid out
``(N, H, W, Wd)`` with ``Wd = ceil(C / 64)`` words per pixel, bit ``c % 64`` of word
``c // 64`` holding channel ``c``; bits past ``C`` are 0 in activations and weights alike,
so they never count as a mismatch. Words are stored in int64 tensors (torch has no full
uint64 arithmetic); only their bits matter.
"""

from __future__ import annotations

import threading
from typing import Optional

import numpy as np
import torch

from ..errors import BitvoteError
from .build import isa_id, lib

__all__ = ["words", "pack", "pack_binary", "pack_bools", "unpack", "recycled"]

_LOCK = threading.Lock()
_PACK_BUFS: dict = {}


def _unreferenced(buf: torch.Tensor) -> bool:
    """True when nothing but ``buf`` itself holds its memory (no view handed out is alive)."""
    try:  # the buffer + the temporary storage object below = 2
        return torch._C._storage_Use_Count(buf.untyped_storage()._cdata) <= 2
    except Exception:  # noqa: BLE001 - no such API in this torch: never reuse
        return False


def recycled(cache: dict, key, shape, dtype) -> torch.Tensor:
    """An uninitialized tensor of ``shape``, reusing the memory of the one handed out under
    ``key`` last time once no tensor refers to it any more (results a caller keeps are never
    overwritten). Fresh pages cost the kernel's page faults: ~2 ms per 8 MB on a 2-core x86 CPU,
    as much as the 64-channel convs themselves."""
    with _LOCK:
        buf = cache.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype or not _unreferenced(buf):
            if len(cache) > 32:
                cache.clear()
            buf = torch.empty(shape, dtype=dtype)
            cache[key] = buf
        return buf.detach()  # a new tensor on the same memory: a reference until the caller drops it


def words(channels: int) -> int:
    """Words per pixel for ``channels`` bits."""
    return (int(channels) + 63) // 64


def _pack(x: torch.Tensor, shift: Optional[torch.Tensor], threads: int, isa) -> "tuple[torch.Tensor, int]":
    """The words and the packer's flags: bit 0 a NaN, bit 1 a value other than +1 / -1."""
    if x.dim() != 4:
        raise BitvoteError(f"pack expects an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if x.dtype != torch.float32:
        x = x.float()
    N, C, H, W = x.shape
    Wd = words(C)
    out = recycled(_PACK_BUFS, (N, H, W, Wd), (N, H, W, Wd), torch.int64)
    sh = None
    if shift is not None:
        sh = shift.detach().to(torch.float32).reshape(-1).contiguous()
        if sh.numel() != C:
            raise BitvoteError(f"pack: shift has {sh.numel()} entries for {C} channels")
    sN, sC, sH, sW = x.stride()
    flags = lib().bv_pack(x.data_ptr(), N, C, H, W, sN, sC, sH, sW,
                          None if sh is None else sh.data_ptr(), out.data_ptr(), Wd, int(threads), isa_id(isa))
    if flags & 1:
        raise BitvoteError("NaN in the input of a binarizer: NaN is not a bit (SPEC.md)")
    return out, flags


def pack(x: torch.Tensor, shift: Optional[torch.Tensor] = None, threads: int = 1, isa=None) -> torch.Tensor:
    """Pack real activations ``(N, C, H, W)`` into ``(N, H, W, Wd)`` words, in C.

    ``shift`` (per channel) is added before the sign, exactly as RSign's ``x + b`` does in
    float32, so ReActNet's binarizer costs nothing extra. Any memory layout works; NCHW and
    channels-last (what the engine's float epilogues emit) have vector packers (``isa``: as
    for the conv, default the best).
    """
    return _pack(x, shift, threads, isa)[0]


def pack_binary(x: torch.Tensor, threads: int = 1, isa=None) -> Optional[torch.Tensor]:
    """The words of ``x`` when every value is +1 or -1, else ``None``: for callers that hold
    a tensor declared binary and must not treat real values as their signs."""
    out, flags = _pack(x, None, threads, isa)
    return None if flags & 2 else out


def pack_bools(bits: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor ``(..., C)`` (True = +1) into int64 words ``(..., Wd)``."""
    b = bits.detach().cpu().numpy().astype(np.uint8)
    C = b.shape[-1]
    pad = words(C) * 64 - C
    if pad:
        b = np.concatenate([b, np.zeros(b.shape[:-1] + (pad,), np.uint8)], -1)
    by = np.packbits(b, axis=-1, bitorder="little")
    w = np.ascontiguousarray(by).view("<u8").view(np.int64)
    return torch.from_numpy(w.copy())


def unpack(w: torch.Tensor, channels: int) -> torch.Tensor:
    """Inverse of :func:`pack_bools`: int64 words ``(..., Wd)`` -> bools ``(..., channels)``."""
    a = np.ascontiguousarray(w.detach().cpu().numpy().astype(np.int64)).view("<u8").view(np.uint8)
    bits = np.unpackbits(a, axis=-1, bitorder="little")[..., :channels]
    return torch.from_numpy(bits.astype(bool))
