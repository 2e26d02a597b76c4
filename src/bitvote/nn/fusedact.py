"""RSign and RPReLU in one pass each way on the CPU (``csrc/act.c``).

Every ReActNet block runs ``x + b -> sign`` before its binary conv and ``x + b1 -> PReLU -> + b2``
after its add. Eager PyTorch walks the tensor once per op and once more per parameter
gradient, and PReLU's backward alone costs several times its forward on the CPU; together
they are a large part of what a popcount training step adds to a float ResNet's. The C
kernels take fp32 contiguous NCHW tensors on the CPU and give the same outputs and input
gradients bit for bit (parameter gradients: the same sums in another order). Anything else
(another device or dtype, channels-last, a surrogate other than ApproxSign/STE,
``torch.compile``, ``BITVOTE_NATIVE_ACT=0``, no C compiler) takes the eager ops.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from .. import native
from ..binarize import ApproxSign, Ste, Surrogate, check_finite
from ..binarize import sign as _sign
from ..io import cache_root

__all__ = ["applies", "sign", "rsign", "rprelu"]

_HERE = Path(__file__).parent / "csrc"
_FLAGS = ["-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math"]
_P, _L, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float

_LIB = None
_broken: Optional[str] = None


def _build() -> ctypes.CDLL:
    arch = native.arch_flags()
    so, _ = native.build([_HERE / "act.c"], [_FLAGS + ["-fopenmp"] + arch, _FLAGS + arch, _FLAGS],
                         "bitvote_act", cache_root() / "native", "the fused RSign/RPReLU kernels")
    lib = ctypes.CDLL(str(so))
    lib.act_rsign_forward.argtypes = [_P, _P, _P, _L, _L, _L, _I]
    lib.act_rsign_forward.restype = ctypes.c_int
    lib.act_rsign_backward.argtypes = [_P, _P, _P, _P, _P, _L, _L, _L, _I, _F, _I]
    lib.act_rprelu_forward.argtypes = [_P, _P, _P, _P, _P, _L, _L, _L, _I]
    lib.act_rprelu_backward.argtypes = [_P, _P, _P, _P, _P, _P, _P, _P, _L, _L, _L, _I]
    lib.act_rsign_backward.restype = lib.act_rprelu_forward.restype = lib.act_rprelu_backward.restype = None
    return lib


def _available() -> bool:
    global _LIB, _broken
    if _broken is not None:
        return False
    if _LIB is None:
        try:
            _LIB = _build()
        except Exception as e:  # noqa: BLE001 - no compiler, a failing one, a bad .so: eager ops
            _broken = native.unavailable("fused activation kernels", e, "eager ops")
            return False
    return True


def applies(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether the C kernels take this call (see the module docstring)."""
    if os.environ.get("BITVOTE_NATIVE_ACT", "1") == "0" or torch.compiler.is_compiling():
        return False
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or not x.is_contiguous():
        return False
    if torch.is_autocast_enabled("cpu"):  # autocast may want the eager ops in another dtype
        return False
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params):
        return False
    return _available()


def _vec(p: torch.Tensor) -> torch.Tensor:
    """A parameter's values as a fresh (C,) vector: tiny, and never an inference-mode tensor,
    so the backward may keep it whatever mode created the parameter."""
    return p.detach().reshape(-1).clone()


def _dims(x):
    N, C, H, W = x.shape
    return N, C, H * W, torch.get_num_threads()


class _RSignFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, code, clip):
        b = _vec(bias)
        y = torch.empty_like(x)
        if _LIB.act_rsign_forward(x.data_ptr(), b.data_ptr(), y.data_ptr(), *_dims(x)):
            # a NaN: the binarizers' own check decides; switched off, the eager op's value
            v = x + b.view(1, -1, 1, 1)
            check_finite(v)
            y.copy_(_sign(v))
        ctx.save_for_backward(x, b)
        ctx.code, ctx.clip, ctx.bshape = code, clip, bias.shape
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, b = ctx.saved_tensors
        g = g.contiguous().float()
        gx, gb = torch.empty_like(x), torch.empty_like(b)
        N, C, P, nt = _dims(x)
        _LIB.act_rsign_backward(x.data_ptr(), b.data_ptr(), g.data_ptr(), gx.data_ptr(), gb.data_ptr(), N, C, P,
                                ctx.code, ctx.clip, nt)
        return gx, gb.view(ctx.bshape), None, None


def rsign(x: torch.Tensor, bias: torch.Tensor, surrogate: Surrogate) -> Optional[torch.Tensor]:
    """``sign(x + bias)`` with ``surrogate``'s derivative, or ``None`` where only the eager ops apply."""
    if type(surrogate) is ApproxSign:
        code, clip = 0, 1.0
    elif type(surrogate) is Ste:
        code, clip = 1, surrogate.clip
    else:
        return None
    if not applies(x, bias) or bias.numel() != x.shape[1]:  # applies() first: x is 4-D then
        return None
    return _RSignFn.apply(x, bias, code, clip)


def sign(x: torch.Tensor, surrogate: Surrogate) -> Optional[torch.Tensor]:
    """``sign(x)`` with ``surrogate``'s derivative (scale 1), or ``None`` for the eager ops."""
    if x.dim() != 4:
        return None
    return rsign(x, _zeros(x.shape[1]), surrogate)


_ZEROS = {}


def _zeros(c: int) -> torch.Tensor:
    z = _ZEROS.get(c)
    if z is None:
        with torch.inference_mode(False):
            z = _ZEROS[c] = torch.zeros(c)
    return z


class _RPReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b1, a, b2):
        v1, va, v2 = _vec(b1), _vec(a), _vec(b2)
        y = torch.empty_like(x)
        _LIB.act_rprelu_forward(x.data_ptr(), v1.data_ptr(), va.data_ptr(), v2.data_ptr(), y.data_ptr(), *_dims(x))
        ctx.save_for_backward(x, v1, va)
        ctx.shapes = (b1.shape, a.shape, b2.shape)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, v1, va = ctx.saved_tensors
        g = g.contiguous().float()
        gx = torch.empty_like(x)
        g1, ga, g2 = torch.empty_like(v1), torch.empty_like(va), torch.empty_like(v1)
        _LIB.act_rprelu_backward(x.data_ptr(), v1.data_ptr(), va.data_ptr(), g.data_ptr(), gx.data_ptr(),
                                 g1.data_ptr(), ga.data_ptr(), g2.data_ptr(), *_dims(x))
        s1, sa, s2 = ctx.shapes
        return gx, g1.view(s1), ga.view(sa), g2.view(s2)


def rprelu(x: torch.Tensor, b1: torch.Tensor, a: torch.Tensor, b2: torch.Tensor) -> Optional[torch.Tensor]:
    """``PReLU_a(x + b1) + b2`` per channel, or ``None`` where only the eager ops apply."""
    C = x.shape[1] if x.dim() == 4 else -1
    if not (b1.numel() == a.numel() == b2.numel() == C) or not applies(x, b1, a, b2):
        return None
    return _RPReLUFn.apply(x, b1, a, b2)
