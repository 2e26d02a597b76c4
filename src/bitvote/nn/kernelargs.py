"""Arguments the C vote kernels (vote.c, chanvote.c) read alike: where a window's taps lie in
the padded channels-last int8 input, whether its padding abstains, how much storage follows
that input, and the surrogate as a code."""

from __future__ import annotations

import torch

from ..binarize import Ste

__all__ = ["SLACK", "tap_offsets", "zero_padded", "surrogate_code"]

#: bytes of storage kept after the kernels' padded input (a word read from its last pixel stays inside)
SLACK = 64


def tap_offsets(kh: int, kw: int, dilation, Wp: int, C: int) -> torch.Tensor:
    """Per tap (row-major over the kernel): its pixel's offset from the window's corner, int64."""
    return torch.tensor([(i * dilation[0] * Wp + j * dilation[1]) * C for i in range(kh) for j in range(kw)],
                        dtype=torch.int64)


def zero_padded(pad_value, padding) -> int:
    """1 where the padding's terms abstain (zero padding of a padded layer), else 0."""
    return int(float(pad_value) == 0.0 and (padding[0] > 0 or padding[1] > 0))


def surrogate_code(surrogate):
    """``(code, clip)``: 1 for the straight-through estimator, 0 for ApproxSign."""
    return (1 if type(surrogate) is Ste else 0), float(getattr(surrogate, "clip", 1.0))
