"""The GPU path (design in docs/gpu.md): Triton kernels for the packed binary conv.

Triton is an optional extra (``pip install bitvote[gpu]``; CUDA builds of torch ship it).
Importing :mod:`bitvote.gpu` never needs it; :func:`available` says whether the kernels can
run, and the modules that launch kernels raise a one-line :class:`BitvoteError` without it.
With ``TRITON_INTERPRET=1`` (set before the first import of the kernels) they run on CPU
tensors through Triton's interpreter: how the tests check them on machines without a GPU.
"""

from __future__ import annotations

import importlib.util
import os

from ..errors import BitvoteError

__all__ = ["available", "interpreted", "require", "require_cuda", "require_device"]


def interpreted() -> bool:
    """True when Triton kernels run in its interpreter (``TRITON_INTERPRET=1``) on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available() -> bool:
    """True when the Triton kernels can run here (triton installed and CUDA or the interpreter)."""
    if importlib.util.find_spec("triton") is None:
        return False
    if interpreted():
        return True
    import torch

    return torch.cuda.is_available()


def require():
    """Raise a one-line error unless the kernels can run; returns the device they run on."""
    if importlib.util.find_spec("triton") is None:
        raise BitvoteError("the GPU path needs triton: pip install 'bitvote[gpu]' (CUDA builds of torch include it)")
    if interpreted():
        return "cpu"
    return require_cuda()


def require_cuda():
    """The ``cuda`` device, or a one-line error on a machine without CUDA."""
    import torch

    if not torch.cuda.is_available():
        raise BitvoteError(f"--device cuda: no CUDA device here (torch {torch.__version__}, "
                           f"torch.cuda.is_available() is False)")
    return "cuda"


def require_device(device: str = "cuda"):
    """The device the GPU path runs on for ``--device cuda``: ``cuda``, or ``cpu`` when the
    kernels run in Triton's interpreter (``TRITON_INTERPRET=1``); else a one-line error."""
    if device != "cuda":
        raise BitvoteError(f"unknown device {device!r}: use cpu or cuda")
    return require()
