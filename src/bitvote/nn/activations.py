"""Real-valued pieces around the binary convs: learnable shifts, RSign, RPReLU.

From ReActNet (Liu et al., ECCV 2020; liuzechun/ReActNet ``LearnableBias``, ``BinaryActivation``):
RSign shifts each channel before the sign (a learnable threshold), RPReLU is
``shift -> PReLU -> shift`` per channel. ``Sign`` is the plain activation binarizer of
Bi-Real Net (sign forward, ApproxSign backward by default).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..binarize import binarize, get_surrogate
from . import fusedact

__all__ = ["LearnableBias", "Sign", "RSign", "RPReLU"]


class LearnableBias(nn.Module):
    """Adds a per-channel learnable shift (initialised to 0)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        return x + self.bias

    def extra_repr(self):
        return str(self.channels)


class Sign(nn.Module):
    """Binarizes activations: +1 where x >= 0 else -1, with a surrogate gradient."""

    def __init__(self, surrogate="approxsign"):
        super().__init__()
        self.surrogate = get_surrogate(surrogate)

    def forward(self, x):
        y = fusedact.sign(x, self.surrogate)
        return binarize(x, self.surrogate) if y is None else y

    def extra_repr(self):
        return f"surrogate={self.surrogate}"


class RSign(nn.Module):
    """ReActNet's RSign: ``sign(x + b_c)`` with a learnable per-channel shift ``b_c``."""

    def __init__(self, channels: int, surrogate="approxsign"):
        super().__init__()
        self.shift = LearnableBias(channels)
        self.sign = Sign(surrogate)

    def forward(self, x):
        y = fusedact.rsign(x, self.shift.bias, self.sign.surrogate)
        return self.sign(self.shift(x)) if y is None else y


class RPReLU(nn.Module):
    """ReActNet's RPReLU: ``PReLU(x - gamma_c) + zeta_c`` with per-channel parameters."""

    def __init__(self, channels: int, init: float = 0.25):
        super().__init__()
        self.shift_in = LearnableBias(channels)
        self.prelu = nn.PReLU(channels, init=init)
        self.shift_out = LearnableBias(channels)

    def forward(self, x):
        y = fusedact.rprelu(x, self.shift_in.bias, self.prelu.weight, self.shift_out.bias)
        return self.shift_out(self.prelu(self.shift_in(x))) if y is None else y
