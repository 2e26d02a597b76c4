"""Fast GPU training of the binary models: a small library-side helper.

:func:`prepare_for_gpu_training` puts a model in channels_last (cuDNN's fast layout for
fp16/bf16 convolutions) on the device and optionally wraps it in ``torch.compile``. Mixed
precision is the caller's: run the forward under ``torch.autocast("cuda", torch.bfloat16)``.
The voters need nothing more: :func:`bitvote.nn.functional.binary_conv2d` takes every vote
path (leaf sums, ties, ``reduce_votes``) with autocast disabled and in fp32, so sums and ties
stay exact; popcount layers run their +/-1 conv in the autocast dtype, where sums up to
2^8 (bf16) / 2^11 (fp16) are exact and cuDNN accumulates in fp32.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["prepare_for_gpu_training"]


def prepare_for_gpu_training(model: nn.Module, device=None, channels_last: bool = True, compile: bool = False,
                             compile_mode: str = "max-autotune-no-cudagraphs") -> nn.Module:
    """Return ``model`` ready for fast GPU training (see the module doc).

    ``device``: where to move it (default: leave it). ``channels_last``: convert parameters
    and buffers of 4-d shape to channels_last; feed inputs with
    ``x.contiguous(memory_format=torch.channels_last)``. ``compile``: wrap in
    ``torch.compile(model, mode=compile_mode)`` (the compiled module shares the parameters,
    so optimizers and ``state_dict`` keep working through ``model`` as returned; save
    checkpoints from ``getattr(m, "_orig_mod", m)``).
    """
    if device is not None:
        model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model, mode=compile_mode)
    return model
