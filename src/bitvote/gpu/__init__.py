"""The GPU path (design in docs/gpu.md): Triton kernels for the packed binary conv.

Triton is an optional extra (``pip install bitvote[gpu]``; CUDA builds of torch ship it).
Importing :mod:`bitvote.gpu` never needs it; :func:`available` says whether the kernels can
run, and the modules that launch kernels raise a one-line :class:`BitvoteError` without it.
With ``TRITON_INTERPRET=1`` (set before the first import of the kernels) they run on CPU
tensors through Triton's interpreter: how the tests check them on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

from ..errors import BitvoteError

__all__ = ["available", "interpreted", "require", "require_cuda", "require_device", "concrete_device",
           "same_device", "tf32"]


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


def concrete_device(device, current=None):
    """``device`` as a tensor on it reports its device, so that stored devices compare equal.

    A tensor on the GPU says ``cuda:0``, never ``cuda``, and ``torch.device("cuda") !=
    torch.device("cuda:0")``: a bare ``cuda`` gets the index of the current CUDA device
    (``current`` where given, else :func:`torch.cuda.current_device`; that is where a bare
    ``cuda`` allocates). A CPU tensor says ``cpu`` without an index, so ``cpu:0`` becomes ``cpu``.
    Every device the GPU path stores goes through here, and so does every device it compares.
    """
    import torch

    d = torch.device(device)
    if d.type == "cpu":
        return torch.device("cpu")
    if d.index is None and d.type == "cuda":
        return torch.device("cuda", torch.cuda.current_device() if current is None else int(current))
    return d


def same_device(a, b) -> bool:
    """Whether ``a`` and ``b`` name the same device (``cuda`` and ``cuda:<current>`` do)."""
    return concrete_device(a) == concrete_device(b)


@contextlib.contextmanager
def tf32(enabled: bool):
    """cuDNN convs and cuBLAS matmuls in TF32 (``enabled``) or in full fp32 inside the block,
    the previous settings restored after it.

    PyTorch runs cuDNN's fp32 convs in TF32 by default (10-bit mantissa products): the GPU
    engine's real-valued convs (stem, shortcuts) would then round unlike the CPU model, enough
    to move ``verify``'s logits by ~1e-3 and flip a vote. The ``allow_tf32`` flags are used
    (they keep PyTorch >= 2.9's per-backend ``fp32_precision`` settings consistent); where
    those settings were given separately (cuDNN conv and RNN differing), PyTorch refuses to
    read the flags, and the block sets and restores the per-backend settings instead.
    """
    import torch

    b = torch.backends
    try:
        prev = b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32
    except RuntimeError:  # per-backend settings that the two flags cannot express
        prev = None
    if prev is not None:
        b.cudnn.allow_tf32 = b.cuda.matmul.allow_tf32 = bool(enabled)
        try:
            yield
        finally:
            b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = prev
        return
    new = [b.cudnn.conv, b.cudnn.rnn, b.cuda.matmul]
    prev_new = [x.fp32_precision for x in new]
    for x in new:
        x.fp32_precision = "tf32" if enabled else "ieee"
    try:
        yield
    finally:
        for x, v in zip(new, prev_new):
            x.fp32_precision = v
