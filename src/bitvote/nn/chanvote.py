"""The backward of voter trees whose voters below the root lie inside one channel or one tap.

Channel-major: ``cm:M(M3(M3))`` (majority of three kernel-row majorities per channel, then a
majority over channels), ``cm:M(M9)``, ``cm:M(M3)``, ``cgroups=C`` and their counted (``P``)
roots: every voter below the root sees the taps of one input channel only. Tap-major: ``tap``,
``tap,leaf=L``, ``tap,groups=G``, ``M18(M4)`` ...: every voter below the root sees channels of
one tap, one or two levels deep. vote.c keeps a vector per voter, which costs it several
popcount layer backwards. ``csrc/chanvote.c`` instead puts 64 output channels in the bits of
a word: a term's XNOR for those outputs is one weight word, inverted where the input is -1,
so each vote, tie and surrogate factor below the root is a few word operations, and both
gradients are tiled sums over the root's dL/ds on masks of outputs (docs/training.md,
"Bit-sliced trees").

Votes are unchanged (the forward stays on the packed kernels); gradients equal the chain rule
of :func:`bitvote.voter.reduce_votes` up to fp32 summation order. It runs where the CPU has
AVX-512 (``BITVOTE_CHANNEL_VOTE=all``: everywhere); ``BITVOTE_CHANNEL_VOTE=0`` sends these
trees back to vote.c, and a missing compiler does the same, with one line.
"""

from __future__ import annotations

import ctypes
import math
import os
from pathlib import Path
from typing import Optional

import torch

from .. import native
from ..io import cache_root
from ..voter import CM, Hierarchy
from .kernelargs import SLACK, surrogate_code, tap_offsets, zero_padded

__all__ = ["wanted", "takes", "available", "backward"]

_HERE = Path(__file__).parent / "csrc"
_FLAGS = ["-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-Wno-psabi"]

#: limits of the kernel: levels below the root, fan-in of a voter below it, taps per channel
#: (channel-major trees); fan-in of a voter below the root of a tap-major tree
_MAX_LEVELS, _MAX_FAN, _MAX_TAPS, _MAX_TAP_FAN = 8, 15, 64, 2047

_P, _I, _F = ctypes.c_void_p, ctypes.c_int32, ctypes.c_float

_LIB = None
_WIDE = False  # built with AVX-512
_broken: Optional[str] = None


class _Args(ctypes.Structure):
    """Mirror of ``cv_args`` in chanvote.c (same field order)."""

    _fields_ = [
        ("x", _P), ("wi", _P), ("g", _P),
        ("N", _I), ("Hp", _I), ("Wp", _I), ("C", _I), ("Co", _I), ("Cp", _I), ("OW", _I), ("kh", _I), ("kw", _I),
        ("sh", _I), ("sw", _I), ("dh", _I), ("dw", _I), ("Ho", _I), ("Wo", _I), ("H", _I), ("W", _I),
        ("ph", _I), ("pw", _I), ("zero_pad", _I),
        ("tap_off", _P), ("m", _I), ("nlev", _I), ("fan", _P), ("tie", _P), ("sigma", _P),
        ("sigma_valid", _I), ("root_p", _I), ("surrogate", _I), ("clip", _F), ("nthreads", _I),
        ("tap_major", _I),
    ]


def wanted() -> bool:
    """``BITVOTE_CHANNEL_VOTE=0`` keeps these trees on vote.c's term loop."""
    return os.environ.get("BITVOTE_CHANNEL_VOTE", "1") != "0"


def forced() -> bool:
    """``BITVOTE_CHANNEL_VOTE=all`` runs the kernel even where it was built without AVX-512."""
    return os.environ.get("BITVOTE_CHANNEL_VOTE", "1").strip().lower() == "all"


def per_channel(hier: Hierarchy, taps: int):
    """``(m, fan-ins bottom up)`` where every voter below the root of ``hier`` lies inside one
    channel's ``taps`` terms (m such voters per channel, all of one shape), else None."""
    if hier.order != CM or hier.depth < 2 or taps > _MAX_TAPS:
        return None
    below = hier.levels[:-1]
    if len(below) > _MAX_LEVELS or not all(lv.uniform for lv in below) or len(hier.levels[-1].groups) != 1:
        return None
    fans = [lv.groups[0] for lv in below]
    if max(fans) > _MAX_FAN:
        return None
    u = math.prod(fans)
    if taps % u:
        return None
    return taps // u, fans


def per_tap(hier: Hierarchy, channels: int, taps: int):
    """``(m, fan-ins bottom up)`` where ``hier`` is tap-major and every voter below its root lies
    inside one tap's ``channels`` terms, one or two levels deep (m such voters per tap, all of
    one shape), else None."""
    if hier.order == CM or hier.depth not in (2, 3) or hier.n != channels * taps or taps > _MAX_TAPS:
        return None
    below = hier.levels[:-1]
    if not all(lv.uniform for lv in below) or len(hier.levels[-1].groups) != 1:
        return None
    fans = [lv.groups[0] for lv in below]
    u = math.prod(fans)
    if channels % u or max(fans) > _MAX_TAP_FAN or hier.levels[-1].groups[0] != taps * (channels // u):
        return None
    return channels // u, fans


def shape(hier: Hierarchy, channels: int, taps: int):
    """``(tap_major, m, fan-ins)`` of a tree the kernel runs, else None."""
    got = per_channel(hier, taps)
    if got is not None:
        return (0,) + got
    got = per_tap(hier, channels, taps)
    return None if got is None else (1,) + got


def takes(hier: Hierarchy, channels: int, taps: int) -> bool:
    """Whether :func:`backward` runs this tree: the library builds, with AVX-512 (its 512-bit
    vectors split into four or eight registers elsewhere, where it runs several times slower
    than the term loop) unless forced."""
    return (wanted() and shape(hier, channels, taps) is not None and available()
            and (_WIDE or forced()))


def _flags():
    arch = native.arch_flags()
    if arch and {"avx512f", "avx512bw", "avx512vl"} <= native.cpu_flags():  # 16-lane masked adds
        return [arch + ["-mavx512f", "-mavx512bw", "-mavx512vl"], arch]
    return [arch]


def available() -> bool:
    """Whether the kernel library is loaded, building it at the first call."""
    global _LIB, _WIDE, _broken
    if _broken is not None:
        return False
    if _LIB is None:
        try:
            sets = [_FLAGS + ["-fopenmp"] + a for a in _flags()] + [_FLAGS + ["-fopenmp-simd"], _FLAGS]
            so, flags = native.build([_HERE / "chanvote.c"], sets, "bitvote_chanvote", cache_root() / "native",
                                     "the channel-major vote kernel")
            lib = ctypes.CDLL(str(so))
            lib.cv_struct_size.restype = ctypes.c_int
            if lib.cv_struct_size() != ctypes.sizeof(_Args):  # pragma: no cover - a build mismatch
                raise RuntimeError("chanvote.c and chanvote._Args disagree on the argument struct")
            lib.cv_backward.argtypes = [ctypes.POINTER(_Args), _P, _P]
            lib.cv_backward.restype = ctypes.c_int
            _LIB, _WIDE = lib, "-mavx512f" in flags
        except Exception as e:  # noqa: BLE001 - no compiler, a failing one: the term loop runs
            _broken = native.unavailable("channel-major vote kernel", e, "the term loop")
            return False
    return True


def backward(plan, xcl, wshape, wi, stride, padding, dilation, Ho, Wo, surrogate, pad_value, g):
    """``(gx (N, C, H, W), gw (Co, C, kh, kw))`` fp32, or None where the tree's factors take
    too many values for the kernel (the caller then runs vote.c).

    ``xcl``: the padded channels-last int8 input of the forward (copied where it lacks 8 bytes of
    storage after its end); ``wi``: its +/-1 weights,
    term-major (n, >= Co) int16 in the tree's order (channel- or tap-major);
    ``g``: the output gradient (N, Co, Ho, Wo); ``plan``: :class:`fastvote._Plan` of the tree.
    """
    hier = plan.hier
    Co, C, kh, kw = wshape
    if not xcl.is_contiguous() or xcl.untyped_storage().nbytes() - xcl.storage_offset() < xcl.numel() + 8:
        room = torch.empty(xcl.numel() + SLACK, dtype=torch.int8)  # the kernel reads 8 bytes from a pixel
        xcl = room[:xcl.numel()].view(xcl.shape).copy_(xcl)
    T = kh * kw
    tap_major, m, fans = shape(hier, C, T)
    N, Hp, Wp, _ = xcl.shape
    OW = -(-Co // 64)
    OL = 64 * OW
    g = g.float().contiguous()
    fan = torch.tensor(fans, dtype=torch.int32)
    tie = torch.tensor(hier.tie_codes[:-1], dtype=torch.int32)
    lev = plan.lev_first.tolist()
    sig = torch.tensor([float(plan.sigma[lev[i]]) for i in range(len(fans))] + [float(plan.sigma[-1])],
                       dtype=torch.float32)
    offs = tap_offsets(kh, kw, dilation, Wp, C)
    a = _Args()
    wi = wi.contiguous()
    a.x, a.wi, a.g = xcl.data_ptr(), wi.data_ptr(), g.data_ptr()
    a.N, a.Hp, a.Wp, a.C, a.Co, a.Cp, a.OW, a.kh, a.kw = N, Hp, Wp, C, Co, wi.shape[1], OW, kh, kw
    a.sh, a.sw, a.dh, a.dw, a.Ho, a.Wo = stride[0], stride[1], dilation[0], dilation[1], Ho, Wo
    a.H, a.W, a.ph, a.pw = Hp - 2 * padding[0], Wp - 2 * padding[1], padding[0], padding[1]
    a.zero_pad = zero_padded(pad_value, padding)
    a.tap_off, a.m, a.nlev = offs.data_ptr(), m, len(fans)
    a.fan, a.tie, a.sigma = fan.data_ptr(), tie.data_ptr(), sig.data_ptr()
    a.sigma_valid, a.root_p = plan.sigma_valid, plan.root_p
    a.surrogate, a.clip = surrogate_code(surrogate)
    a.nthreads = torch.get_num_threads()
    a.tap_major = tap_major
    gx = torch.empty((N, C, a.H, a.W), dtype=torch.float32)
    gw = torch.zeros(C * T, OL, dtype=torch.float32)
    rc = _LIB.cv_backward(ctypes.byref(a), gx.data_ptr(), gw.data_ptr())
    if rc == 2:
        return None
    if rc:
        raise MemoryError("channel-major vote kernel: out of memory")
    gw = gw[:, :Co].reshape(T, C, Co).permute(2, 1, 0) if tap_major else gw[:, :Co].reshape(C, T, Co).permute(2, 0, 1)
    gw = gw.reshape(Co, C, kh, kw)
    return gx, gw
