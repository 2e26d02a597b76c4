"""ReActNet-A: the MobileNetV1 layout with binary 3x3 and binary 1x1 convs (Liu et al. 2020).

Follows liuzechun/ReActNet ``mobilenet/2_step2/reactnet.py`` (and BNN_NoBN's
``Qaw_reactnet_A_*``): stage channels 32, 64, 128, 128, 256, 256, 512 x 6, 1024, 1024; each
block is

    RSign -> binary 3x3 (stride s) -> BN -> + shortcut (AvgPool2d(2) when s = 2) -> RPReLU
    RSign -> binary 1x1 -> BN -> + shortcut -> RPReLU

and where the channels double, the 1x1 part is two binary 1x1 convs (C -> C each) whose
outputs, each plus the shortcut, are concatenated. Stride 2 wherever the channels change,
except 32 -> 64. CIFAR stem: a real 3x3 conv, stride 1, 32 channels (+ BN); so the maps go
32 -> 16 -> 8 -> 4 -> 2.

Voters go on every binary conv, 3x3 and 1x1. On a 1x1 layer a spec sees n = C terms and one
tap: ``tap`` is ``mv`` there, ``groups=G`` is ``M{G}(M{C/G})``, ``tap,groups=G`` is
``M{G}(M{C/G})`` (the tap level has fan-in 1 and is dropped). The seed's ``M4(M128)`` fits a
1x1 layer with C = 512. Use a ``{pattern: spec}`` mapping to treat them differently, e.g.
``{"*.conv3x3": "tap", "*": "mv"}``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..nn import RSign
from .registry import register, set_voter
from .resnet import channels, check_options
from .variants import Variant

__all__ = ["ReActNetA", "reactneta"]

STAGE_CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


class ReActBlockA(nn.Module):
    """One ReActNet-A block: a 3x3 residual unit then a 1x1 residual unit (see module doc)."""

    def __init__(self, cin, cout, stride, act_surrogate, conv_kw, v: Variant):
        super().__init__()
        self.stride = stride
        self.sign1 = RSign(cin, act_surrogate)
        self.conv3x3 = v.bconv(cin, cin, 3, stride, 1, **conv_kw)
        self.bn1 = v.norm(cin)
        self.gain1 = v.gain(cin)
        self.pool = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()
        self.act1 = v.rprelu(cin)
        self.beta1, self.alpha = v.next_beta(), v.alpha
        v.after_unit(stride == 2)
        self.sign2 = RSign(cin, act_surrogate)
        self.double = cout == 2 * cin
        if cout not in (cin, 2 * cin):
            raise ValueError(f"ReActNet-A block: {cin} -> {cout} channels")
        n_pw = 2 if self.double else 1
        self.conv1x1 = nn.ModuleList(v.bconv(cin, cin, 1, **conv_kw) for _ in range(n_pw))
        self.bn2 = nn.ModuleList(v.norm(cin) for _ in range(n_pw))
        self.gain2 = nn.ModuleList(v.gain(cin) for _ in range(n_pw))
        self.act2 = v.rprelu(cout)
        self.beta2 = v.next_beta()
        v.after_unit(False)

    def _scale(self, out):
        return out * self.alpha if self.alpha != 1.0 else out

    def forward(self, x):
        x_in = x * self.beta1 if self.beta1 != 1.0 else x
        out = self.gain1(self.bn1(self.conv3x3(self.sign1(x_in))))
        # A downsampling unit's shortcut sees the scaled input (its variance restarts at 1).
        res = self.pool(x_in) if self.stride == 2 else x
        out1 = self.act1(self._scale(out) + res)
        h = self.sign2(out1 * self.beta2 if self.beta2 != 1.0 else out1)
        outs = [self._scale(g(bn(conv(h)))) + out1 for conv, bn, g in zip(self.conv1x1, self.bn2, self.gain2)]
        return self.act2(torch.cat(outs, 1) if self.double else outs[0])

    def extra_repr(self):
        if self.alpha == 1.0:
            return ""
        return f"alpha={self.alpha:g}, beta1={self.beta1:.4g}, beta2={self.beta2:.4g}"


class ReActNetA(nn.Module):
    default_cfg = {"input_size": (3, 32, 32), "first_conv": "stem.0", "classifier": "fc"}

    def __init__(self, num_classes=10, width=1.0, act_surrogate="approxsign", bn="bn", alpha=0.2, **conv_kw):
        super().__init__()
        v = Variant(bn, alpha)
        base = channels(32, width)  # every stage a multiple of the stem's width, so doubling stays exact
        chans = [base * c // 32 for c in STAGE_CHANNELS]
        self.stem = nn.Sequential(v.conv(3, chans[0], 3, 1, 1), v.norm(chans[0]))
        blocks = []
        for i in range(1, len(STAGE_CHANNELS)):
            c_prev, c = STAGE_CHANNELS[i - 1], STAGE_CHANNELS[i]
            stride = 2 if (c_prev != c and c != 64) else 1
            blocks.append(ReActBlockA(chans[i - 1], chans[i], stride, act_surrogate, conv_kw, v))
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chans[-1], num_classes)

    def voter_layer_names(self):
        from ..nn import BinaryConv2d

        return [n for n, m in self.named_modules() if isinstance(m, BinaryConv2d)]

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@register
def reactneta(num_classes=10, voter="popcount", width=1.0, **opts):
    """ReActNet-A (MobileNetV1 layout) with a CIFAR stem; voters on its 3x3 and 1x1 binary convs."""
    check_options(opts)
    tie = opts.pop("tie", 1)
    model = ReActNetA(num_classes, width, **opts)
    set_voter(model, voter, tie)
    return model
