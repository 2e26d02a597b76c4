"""One pass instead of several for the element-wise chains of large vote tensors on the CPU.

A hierarchy's leaf tensor is (leaves x outputs): for small leaves it is dozens of times the
layer's output, and eager PyTorch walks it once per op (add, sign, abs, mul, clamp, ...).
:func:`fused` compiles such a chain with Inductor into one loop the first time it meets a
large CPU tensor, and falls back to the eager chain for small or non-CPU tensors, inside a
compiled model (the outer compile fuses it), when ``BITVOTE_FUSE=0``, or for good once
compiling fails (no C++ compiler, say: one line on stderr says so). Results are the same:
the vote is exact either way; surrogate gradients may differ in the last bit of low-precision
dtypes (the fused loop rounds once).
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Optional

import torch

from . import native

__all__ = ["fused", "MIN_NUMEL", "enabled"]

#: below this many elements the eager ops are cheap and a compile would not pay
MIN_NUMEL = 1 << 20

_broken: Optional[str] = None


def enabled() -> bool:
    return _broken is None and os.environ.get("BITVOTE_FUSE", "1") != "0"


def _disable(err: BaseException) -> None:
    global _broken
    _broken = native.unavailable("fused CPU vote kernels", err, "eager ops")


def fused(pure: Callable, eager: Optional[Callable] = None, flatten: bool = True) -> Callable:
    """``pure`` compiled for large CPU tensors (the first argument decides), else ``eager``.

    ``pure`` must be an element-wise chain whose tensor arguments are either shaped like the
    first or 0-d (pass scalars as 0-d tensors: a Python float would compile once per value).
    They are flattened before the call, so one compiled loop serves every shape and rank; a
    call with broadcast or non-contiguous arguments takes ``eager`` (default: ``pure``).
    ``flatten=False`` compiles on the shapes as given (broadcasting allowed); a call that
    would exceed Dynamo's recompile limit runs eagerly.
    """
    eager = eager or pure
    compiled = None

    @functools.wraps(pure)
    def call(*args):
        nonlocal compiled
        t = args[0]
        if t.device.type != "cpu" or t.numel() < MIN_NUMEL or not enabled() or torch.compiler.is_compiling():
            return eager(*args)
        flat = list(args)
        if flatten:
            for i, a in enumerate(args):
                if torch.is_tensor(a) and a.dim() > 0:
                    if a.shape != t.shape or not a.is_contiguous():
                        return eager(*args)
                    flat[i] = a.view(-1)
        try:
            if compiled is None:
                compiled = torch.compile(pure, dynamic=True, fullgraph=True)
            out = compiled(*flat)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            return eager(*args)  # one more shape pattern than Dynamo keeps: this call eager
        except Exception as err:  # noqa: BLE001 - any compiler failure: fall back, once, loudly
            _disable(err)
            return eager(*args)
        return out.view(t.shape) if flatten else out

    return call
