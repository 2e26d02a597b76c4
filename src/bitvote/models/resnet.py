"""ResNet-18 family for CIFAR: the float teacher and three binary networks.

All share the CIFAR stem (real 3x3 stride-1 conv + BN, no max-pool), stages of
64-128-256-512 channels (times ``width``) at 32/16/8/4 pixels, and a real FC head. A voter
goes on every binary 3x3 conv on the main path and nowhere else (shortcuts stay popcount or
real); ``model.voter_layer_names()`` lists those layers.

Where each choice comes from (see ``docs/models.md``):

* ``resnet18``: He et al. 2016, CIFAR variant (3x3 stem, no max-pool), option-B shortcuts.
* ``birealnet18``: Bi-Real Net (Liu et al. 2018), liuzechun/Bi-Real-net ``birealnet.py``:
  16 blocks of ``sign -> binary 3x3 -> BN -> + shortcut``, downsampling shortcut
  ``AvgPool2d(2) -> real 1x1 conv -> BN``, weights scaled by ``mean|W|``, ApproxSign.
* ``reactnet18``: ReActNet (Liu et al. 2020), liuzechun/ReActNet ``resnet/2_step2``: Bi-Real's
  block with RSign (learnable shift before the sign) and RPReLU after the add.
* ``xnornet18``: XNOR-Net (Rastegari et al. 2016) on ResNet-18 basic blocks: two binary 3x3
  convs per block (``sign -> binary conv -> BN``, twice) around one shortcut, weights scaled
  by XNOR-Net's per-channel ``mean|W|``, real 1x1 conv + BN downsampling shortcut. The
  activation scale K of the paper is left out (BN absorbs a per-channel scale).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import BitvoteError
from ..nn import BinaryConv2d, RSign, Sign
from ..voter import is_popcount
from .registry import register, set_voter
from .variants import Variant

__all__ = ["resnet18", "birealnet18", "reactnet18", "xnornet18", "BinaryResNet"]

STAGES = (64, 128, 256, 512)


def channels(c: int, width: float) -> int:
    """``c`` channels at ``width``: rounded, at least 1 (what every model's stages use)."""
    return max(1, int(round(c * width)))


def _downsample(cin, cout, stride, avgpool, v: Variant):
    if stride == 1 and cin == cout:
        return nn.Identity()
    if avgpool:  # Bi-Real / ReActNet: average pool, then a real 1x1 conv at stride 1
        pool = nn.AvgPool2d(2, stride) if stride > 1 else nn.Identity()
        return nn.Sequential(pool, v.conv(cin, cout, 1), v.norm(cout))
    return nn.Sequential(v.conv(cin, cout, 1, stride), v.norm(cout))


class _Residual(nn.Module):
    """Residual scaling shared by the binary blocks: ``shortcut + alpha * f(beta * x)``.

    With BN (or without it) ``alpha = beta = 1``; BN-free sets them (see ``variants.py``).
    A downsampling shortcut sees ``beta * x`` like the main path; an identity one sees ``x``.
    """

    def _init_residual(self, v: Variant, shortcut: nn.Module):
        self.shortcut = shortcut
        self.downsample = not isinstance(shortcut, nn.Identity)
        self.beta = v.next_beta()
        self.alpha = v.alpha
        v.after_unit(self.downsample)

    def _add(self, out, x, x_in):
        res = self.shortcut(x_in) if self.downsample else x
        return out * self.alpha + res if self.alpha != 1.0 else out + res

    def extra_repr(self):
        return f"alpha={self.alpha:g}, beta={self.beta:.4g}" if self.alpha != 1.0 or self.beta != 1.0 else ""


class BiRealBlock(_Residual):
    """``sign -> binary 3x3 -> BN -> + shortcut`` (Bi-Real); ReActNet adds RSign and RPReLU."""

    def __init__(self, cin, cout, stride, react: bool, act_surrogate, conv_kw, v: Variant):
        super().__init__()
        self.sign = RSign(cin, act_surrogate) if react else Sign(act_surrogate)
        self.conv = v.bconv(cin, cout, 3, stride, 1, **conv_kw)
        self.bn = v.norm(cout)
        self.gain = v.gain(cout)
        self._init_residual(v, _downsample(cin, cout, stride, True, v))
        self.act = v.rprelu(cout) if react else nn.Identity()

    def forward(self, x):
        x_in = x * self.beta if self.beta != 1.0 else x
        out = self.gain(self.bn(self.conv(self.sign(x_in))))
        return self.act(self._add(out, x, x_in))


class XnorBlock(_Residual):
    """ResNet basic block with XNOR-Net binary convs: ``(sign -> bconv -> BN) x 2 + shortcut``."""

    def __init__(self, cin, cout, stride, act_surrogate, conv_kw, v: Variant):
        super().__init__()
        self.sign1 = Sign(act_surrogate)
        self.conv1 = v.bconv(cin, cout, 3, stride, 1, **conv_kw)
        self.bn1 = v.norm(cout)
        self.gain1 = v.gain(cout)
        self.sign2 = Sign(act_surrogate)
        self.conv2 = v.bconv(cout, cout, 3, 1, 1, **conv_kw)
        self.bn2 = v.norm(cout)
        self.gain2 = v.gain(cout)
        self._init_residual(v, _downsample(cin, cout, stride, False, v))

    def forward(self, x):
        x_in = x * self.beta if self.beta != 1.0 else x
        out = self.gain1(self.bn1(self.conv1(self.sign1(x_in))))
        out = self.gain2(self.bn2(self.conv2(self.sign2(out))))
        return self._add(out, x, x_in)


class FloatBlock(nn.Module):
    """The real-valued ResNet basic block (the teacher and float reference)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _downsample(cin, cout, stride, False, Variant("bn"))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class BinaryResNet(nn.Module):
    """CIFAR ResNet-18 skeleton; ``kind`` picks the block: float, birealnet, reactnet, xnornet."""

    default_cfg = {"input_size": (3, 32, 32), "first_conv": "stem.0", "classifier": "fc"}

    def __init__(self, kind: str, num_classes=10, width=1.0, act_surrogate="approxsign", bn="bn", alpha=0.2, **conv_kw):
        super().__init__()
        self.kind = kind
        v = Variant(bn, alpha)
        chans = [channels(c, width) for c in STAGES]
        self.stem = nn.Sequential(v.conv(3, chans[0], 3, 1, 1), v.norm(chans[0]))
        if kind == "float":
            self.stem.append(nn.ReLU(inplace=True))
        blocks_per_stage = 2 if kind in ("float", "xnornet") else 4
        layers = []
        cin = chans[0]
        for si, cout in enumerate(chans):
            blocks = []
            for bi in range(blocks_per_stage):
                stride = 2 if (si > 0 and bi == 0) else 1
                if kind == "float":
                    blocks.append(FloatBlock(cin, cout, stride))
                elif kind == "xnornet":
                    blocks.append(XnorBlock(cin, cout, stride, act_surrogate, conv_kw, v))
                else:
                    blocks.append(BiRealBlock(cin, cout, stride, kind == "reactnet", act_surrogate, conv_kw, v))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def voter_layer_names(self):
        return [n for n, m in self.named_modules() if isinstance(m, BinaryConv2d)]

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


_LAYER_OPTS = ("tie", "pad_value", "surrogate", "sigma")


def check_options(opts, extra=("bn", "alpha", "act_surrogate")):
    unknown = set(opts) - set(_LAYER_OPTS) - set(extra)
    if unknown:
        raise BitvoteError(f"unknown model option(s) {', '.join(sorted(unknown))}: "
                           f"valid are {', '.join(extra + _LAYER_OPTS)}")


def _build(kind, num_classes, voter, width, **opts):
    check_options(opts)
    tie = opts.pop("tie", 1)
    if kind == "float":
        if opts.get("bn", "bn") != "bn" or not is_popcount(voter):
            raise BitvoteError("resnet18 is the real-valued teacher: it takes no voter and only bn='bn'")
        return BinaryResNet(kind, num_classes, width)
    model = BinaryResNet(kind, num_classes, width, **opts)
    set_voter(model, voter, tie)
    return model


@register
def resnet18(num_classes=10, voter="popcount", width=1.0, **opts):
    """Real-valued CIFAR ResNet-18 (teacher, float reference)."""
    return _build("float", num_classes, voter, width, **opts)


@register
def birealnet18(num_classes=10, voter="popcount", width=1.0, **opts):
    """Bi-RealNet-18: a shortcut around each of the 16 binary 3x3 convs."""
    return _build("birealnet", num_classes, voter, width, **opts)


@register
def reactnet18(num_classes=10, voter="popcount", width=1.0, **opts):
    """ReActNet-18: Bi-RealNet-18 with RSign and RPReLU."""
    return _build("reactnet", num_classes, voter, width, **opts)


@register
def xnornet18(num_classes=10, voter="popcount", width=1.0, **opts):
    """XNORNet-18: ResNet-18 basic blocks with XNOR-Net binary convs."""
    return _build("xnornet", num_classes, voter, width, **opts)
