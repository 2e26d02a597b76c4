"""BN-free building blocks (Chen et al., "BNN - BN = ?", CVPR 2021 workshops; NFNets, Brock et al. 2021).

Without batch norm a network keeps its activations at unit scale by construction:

* scaled weight standardization: each output channel's weight is standardized and scaled by
  ``gain * fan_in^-1/2`` (:class:`ScaledStdConv2d`; binary convs use
  ``BinaryConv2d(standardize=True)`` followed by a :class:`Gain`);
* residual scaling: a block computes ``x + alpha * f(beta * x)`` with ``beta`` = 1/sqrt of the
  expected variance of ``x`` (tracked by the model, reset at each downsampling block);
* adaptive gradient clipping (AGC): a unit's gradient is clipped to ``clip * max(|W_unit|, eps)``
  (:func:`adaptive_clip_grad_`), applied to every parameter except the classifier.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ScaledStdConv2d", "Gain", "adaptive_clip_grad_", "unitwise_norm"]


class ScaledStdConv2d(nn.Conv2d):
    """Real conv with scaled weight standardization: ``gain * (W - mean) / (std * sqrt(fan_in))``."""

    def __init__(self, *args, eps: float = 1e-5, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight
        fan_in = w[0].numel()
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return self.gain * (w - mean) / torch.sqrt(var * fan_in + self.eps)

    def forward(self, x):
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class Gain(nn.Module):
    """A learnable per-channel scale (init 1): the gain of a standardized binary conv.

    Kept outside the binary layer because a voter's output is exactly +/-1 (SPEC.md): scales
    apply after the layer.
    """

    def __init__(self, channels: int, init: float = 1.0):
        super().__init__()
        self.channels = channels
        self.gain = nn.Parameter(torch.full((1, channels, 1, 1), float(init)))

    def forward(self, x):
        return x * self.gain

    def extra_repr(self):
        return str(self.channels)


def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm per output unit (all dims but the first); one norm for 0/1-d tensors."""
    if x.dim() <= 1:
        return x.norm(2)
    return x.norm(2, dim=tuple(range(1, x.dim())), keepdim=True)


@torch.no_grad()
def adaptive_clip_grad_(parameters: Iterable[torch.Tensor], clip: float = 0.01, eps: float = 1e-3) -> None:
    """Unit-wise AGC (NFNets): scale each unit's gradient down to ``clip * max(||W||, eps)``."""
    for p in parameters:
        if p.grad is None:
            continue
        max_norm = unitwise_norm(p).clamp(min=eps) * clip
        g_norm = unitwise_norm(p.grad)
        scale = (max_norm / g_norm.clamp(min=1e-6)).clamp(max=1.0)
        p.grad.mul_(scale)
