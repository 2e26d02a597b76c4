"""The three forms of every binary model: with BN, without BN, and BN-free.

``bn="bn"``: batch norm after every conv (the papers' default).
``bn="none"``: every BatchNorm removed, the stem's included (the seed's "w/o BN").
``bn="free"``: no BN, and instead (Chen et al. 2021, VITA-Group/BNN_NoBN ``*_bf.py``): scaled
weight standardization on real and binary convs (a learnable per-channel gain after each
binary conv), residual scaling ``x + alpha * f(beta * x)`` with ``beta = 1/sqrt(expected
variance)`` tracked through each stage and reset after each downsampling block, and AGC in
training (:func:`bitvote.nn.adaptive_clip_grad_`, ``bitvote train --agc``).
"""

from __future__ import annotations

import math

import torch.nn as nn

from ..errors import BitvoteError
from ..nn import BinaryConv2d, Gain, RPReLU, ScaledStdConv2d

__all__ = ["Variant", "BN_FORMS"]

BN_FORMS = ("bn", "none", "free")


class Variant:
    """Factory for the pieces that differ between the ``bn`` forms, plus the variance tracker."""

    def __init__(self, bn: str = "bn", alpha: float = 0.2):
        if bn not in BN_FORMS:
            raise BitvoteError(f"unknown bn form {bn!r}: choose one of {', '.join(BN_FORMS)}")
        if not (isinstance(alpha, (int, float)) and alpha > 0):
            raise BitvoteError(f"alpha must be a positive number, got {alpha!r}")
        self.bn = bn
        self.free = bn == "free"
        self.alpha = float(alpha) if self.free else 1.0
        self.expected_var = 1.0

    def norm(self, c: int) -> nn.Module:
        return nn.BatchNorm2d(c) if self.bn == "bn" else nn.Identity()

    def conv(self, cin, cout, k, stride=1, padding=0) -> nn.Module:
        cls = ScaledStdConv2d if self.free else nn.Conv2d
        return cls(cin, cout, k, stride, padding, bias=False)

    def bconv(self, cin, cout, k, stride=1, padding=0, **kw) -> BinaryConv2d:
        # A Sign/RSign precedes every binary conv in these models: the layer gets +/-1 already.
        return BinaryConv2d(cin, cout, k, stride, padding, weight_scale=True, standardize=self.free,
                            input_surrogate=None, **kw)

    def gain(self, c: int) -> nn.Module:
        return Gain(c) if self.free else nn.Identity()

    def rprelu(self, c: int) -> nn.Module:
        """RPReLU after the add, in every form (as in BNN_NoBN's BN-free ReActNet)."""
        return RPReLU(c)

    # residual scaling -----------------------------------------------------------------
    def next_beta(self) -> float:
        """beta for the next residual unit: 1/sqrt of the variance expected at its input."""
        return 1.0 / math.sqrt(self.expected_var) if self.free else 1.0

    def after_unit(self, transition: bool) -> None:
        """A residual unit adds alpha^2 of variance; a downsampling unit restarts from 1."""
        if transition:
            self.expected_var = 1.0
        self.expected_var += self.alpha**2
