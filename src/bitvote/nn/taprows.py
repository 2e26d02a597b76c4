"""Leaf-major rows of a tap-major binary conv: the im2col of voters whose leaves are runs of taps.

In tap-major order a leaf is a run of ``R`` blocks, each ``b`` consecutive channels of one
kernel tap. Gathering every leaf's terms into one row (K = R*b) turns all leaf sums into one
batched matmul, and the same rows give the backward's weight gradient; :func:`scatter_add`
returns row gradients to the input, one add per copied run.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

__all__ = ["runs", "gather", "scatter_add"]

#: (window slice of the padded input, first channel group, groups, row, slot in the row)
Run = Tuple[tuple, int, int, int, int]


def runs(kh: int, kw: int, stride, dilation, Ho: int, Wo: int, G: int, R: int) -> List[Run]:
    """The copies that lay blocks ``p = tap * G + group`` out as rows ``p // R``, slots ``p % R``."""
    out, t = [], 0
    for i in range(kh):
        for j in range(kw):
            sl = (slice(None), slice(i * dilation[0], i * dilation[0] + (Ho - 1) * stride[0] + 1, stride[0]),
                  slice(j * dilation[1], j * dilation[1] + (Wo - 1) * stride[1] + 1, stride[1]))
            g = 0
            while g < G:  # split the tap's groups where a row ends (R = 1: rows are blocks)
                p = t * G + g
                m = G - g if R == 1 else min(G - g, R - p % R)
                out.append((sl, g, m, p // R, p % R))
                g += m
            t += 1
    return out


def gather(xcl: torch.Tensor, plan: List[Run], rows: int, Ho: int, Wo: int, R: int, b: int,
           out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Rows (rows, N, Ho, Wo, R, b) of a channels-last padded input (N, Hp, Wp, C), into ``out``
    when given (a buffer of that shape, of any dtype: the copies convert)."""
    N = xcl.shape[0]
    if out is None:
        out = xcl.new_empty((rows, N, Ho, Wo, R, b))
    for sl, g, m, row, k in plan:
        src = xcl[sl][..., g * b:(g + m) * b].reshape(N, Ho, Wo, m, b)
        if R == 1:
            out[row:row + m, :, :, :, 0].copy_(src.permute(3, 0, 1, 2, 4))
        else:
            out[row, :, :, :, k:k + m].copy_(src)
    return out


def scatter_add(gx: torch.Tensor, grows: torch.Tensor, plan: List[Run], b: int) -> torch.Tensor:
    """Add row gradients (rows, N, Ho, Wo, R, b) into ``gx`` (N, Hp, Wp, C), in place."""
    N, Ho, Wo = grows.shape[1:4]
    for sl, g, m, row, k in plan:
        dst = gx[sl][..., g * b:(g + m) * b].view(N, Ho, Wo, m, b)
        if grows.shape[4] == 1:
            dst.add_(grows[row:row + m, :, :, :, 0].permute(1, 2, 3, 0, 4))
        else:
            dst.add_(grows[row, :, :, :, k:k + m])
    return gx
