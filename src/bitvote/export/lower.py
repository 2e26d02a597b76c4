"""Walk a bitvote model and emit its graph, module by module, in the order its forward runs.

Every registered model is covered: the ResNet-18 family (``resnet18``, ``birealnet18``,
``reactnet18``, ``xnornet18``) and ``reactneta``, in each BN form (``bn``, ``none``,
``free``). The blocks' residual arithmetic (``shortcut + alpha * f(beta * x)``) is written as
the blocks compute it, so the exported logits follow PyTorch's operations one for one.

Two dialects share the walk:

* ``onnx``: standard ops only (see :mod:`bitvote.export.binary`).
* ``qonnx``: activations and weights pass through ``BipolarQuant``; votes are
  ``MultiThreshold`` on the integer sum; where a binarization follows a binary conv's BN
  directly (XNOR-Net's first conv of a block), BN + sign fold into per-channel thresholds on
  the conv's integer output, found by running the model's own BN on every value it can take.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..errors import BitvoteError
from ..models.reactneta import ReActBlockA, ReActNetA
from ..models.resnet import BinaryResNet, BiRealBlock, FloatBlock, XnorBlock
from ..nn import BinaryConv2d, Gain, LearnableBias, RPReLU, RSign, ScaledStdConv2d, Sign
from .binary import bipolar, lower_binary_conv, multithreshold
from .graph import Builder

__all__ = ["Lowering", "input_shapes"]


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(np.float32)


@torch.no_grad()
def input_shapes(model: nn.Module, input_size) -> Dict[object, Tuple[int, ...]]:
    """The input shape of every module at this image size, and under ``"output"`` the model's
    output shape (one forward on zeros)."""
    shapes: Dict[int, Tuple[int, ...]] = {}

    def record(mod, args):
        shapes.setdefault(id(mod), tuple(args[0].shape))  # the first call: a module may be reused

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()]
    try:
        shapes["output"] = tuple(model(torch.zeros((1,) + tuple(input_size))).shape)
    finally:
        for hk in hooks:
            hk.remove()
    return shapes


class Lowering:
    """Emits one model into a :class:`Builder`; ``probes`` collects each binary layer's output."""

    def __init__(self, model: nn.Module, b: Builder, dialect: str, input_size):
        self.model, self.b, self.dialect = model, b, dialect
        self.names = {id(m): n for n, m in model.named_modules()}
        self.shapes = input_shapes(model, input_size)
        # layer (and layer:levelI below a tree's root) -> (tensor, shape without the batch)
        self.probes: Dict[str, Tuple[str, Tuple[int, ...]]] = {}

    def name(self, m: nn.Module) -> str:
        return self.names.get(id(m), type(m).__name__) or "model"

    def hw(self, m: nn.Module):
        return self.shapes[id(m)][2:]

    # ------------------------------------------------------------------------------------
    def __call__(self, x: str) -> str:
        return self.emit(self.model, x)

    def emit(self, m: nn.Module, x: str) -> str:
        """Dispatch on the module type; anything unknown is an error naming the module."""
        for cls, fn in self._TABLE:
            if isinstance(m, cls):
                return fn(self, m, x)
        raise BitvoteError(f"export: no mapping for module {self.name(m)!r} ({type(m).__name__})")

    def _seq(self, m, x):
        for sub in m:
            x = self.emit(sub, x)
        return x

    def _identity(self, m, x):
        return x

    def _conv(self, m: nn.Conv2d, x):
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise BitvoteError(f"export: conv {self.name(m)!r} needs integer zero padding")
        w = m.standardized_weight() if isinstance(m, ScaledStdConv2d) else m.weight
        ins = [x, self.b.const(_f32(w), self.name(m) + ".weight")]
        if m.bias is not None:
            ins.append(self.b.const(_f32(m.bias), self.name(m) + ".bias"))
        ph, pw = m.padding
        return self.b.op("Conv", ins, self.name(m), group=m.groups, kernel_shape=list(m.kernel_size),
                         strides=list(m.stride), dilations=list(m.dilation), pads=[ph, pw, ph, pw])

    def _binary_conv(self, m: BinaryConv2d, x):
        if m.input_surrogate is not None:  # the layer binarizes its input itself
            x = self.sign(x, self.name(m) + ".in")
        levels = []
        y, result = lower_binary_conv(self.b, m, x, self.hw(m), self.name(m), self.dialect, levels=levels)
        self.probe(m, result)
        shape = self.probes[self.name(m)][1]
        for li, (t, voters) in enumerate(levels):
            self.probes[f"{self.name(m)}:level{li}"] = (t, (*shape, voters))
        return y

    def probe(self, m, y):
        """Record the layer's integer result (sums before the scale, votes, counts) for checks."""
        c = self.shapes[id(m)]
        co = m.out_channels
        Ho = (c[2] + 2 * m.padding[0] - m.dilation[0] * (m.kernel_size[0] - 1) - 1) // m.stride[0] + 1
        Wo = (c[3] + 2 * m.padding[1] - m.dilation[1] * (m.kernel_size[1] - 1) - 1) // m.stride[1] + 1
        self.probes[self.name(m)] = (y, (co, Ho, Wo))

    def _bn(self, m: nn.BatchNorm2d, x):
        if m.running_mean is None:
            raise BitvoteError(f"export: batch norm {self.name(m)!r} keeps no running statistics")
        n = self.name(m)
        b = self.b
        w = _f32(m.weight) if m.weight is not None else np.ones(m.num_features, np.float32)
        bias = _f32(m.bias) if m.bias is not None else np.zeros(m.num_features, np.float32)
        return b.op("BatchNormalization", [x, b.const(w, n + ".weight"), b.const(bias, n + ".bias"),
                                           b.const(_f32(m.running_mean), n + ".mean"),
                                           b.const(_f32(m.running_var), n + ".var")], n, epsilon=float(m.eps))

    def sign(self, x, hint):
        return bipolar(self.b, x, hint) if self.dialect == "qonnx" else self.b.sign(x, hint)

    def _sign(self, m, x):
        return self.sign(x, self.name(m))

    def _shift(self, m: LearnableBias, x):
        return self.b.op("Add", [x, self.b.const(_f32(m.bias), self.name(m) + ".b")], self.name(m))

    def _rsign(self, m: RSign, x):
        return self.sign(self._shift(m.shift, x), self.name(m))

    def _rprelu(self, m: RPReLU, x):
        y = self._shift(m.shift_in, x)
        slope = _f32(m.prelu.weight)
        slope = slope.reshape(-1, 1, 1) if slope.size > 1 else slope.reshape(1)
        y = self.b.op("PRelu", [y, self.b.const(slope, self.name(m) + ".slope")], self.name(m) + ".prelu")
        return self._shift(m.shift_out, y)

    def _gain(self, m: Gain, x):
        return self.b.op("Mul", [x, self.b.const(_f32(m.gain), self.name(m) + ".g")], self.name(m))

    def _relu(self, m, x):
        return self.b.op("Relu", [x], self.name(m))

    def _avgpool(self, m: nn.AvgPool2d, x):
        k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
        s = m.stride if isinstance(m.stride, tuple) else (m.stride,) * 2
        p = m.padding if isinstance(m.padding, tuple) else (m.padding,) * 2
        if m.divisor_override is not None:
            raise BitvoteError(f"export: average pool {self.name(m)!r} with divisor_override")
        return self.b.op("AveragePool", [x], self.name(m), kernel_shape=list(k), strides=list(s),
                         pads=[p[0], p[1], p[0], p[1]], ceil_mode=int(m.ceil_mode),
                         count_include_pad=int(m.count_include_pad))

    def _adaptive(self, m: nn.AdaptiveAvgPool2d, x):
        if m.output_size not in (1, (1, 1)):
            raise BitvoteError(f"export: adaptive pool {self.name(m)!r} to {m.output_size} (only 1x1)")
        return self.b.op("GlobalAveragePool", [x], self.name(m))

    def _linear(self, m: nn.Linear, x):
        n = self.name(m)
        ins = [x, self.b.const(_f32(m.weight), n + ".weight")]
        if m.bias is not None:
            ins.append(self.b.const(_f32(m.bias), n + ".bias"))
        return self.b.op("Gemm", ins, n, transB=1)

    # helpers for the blocks -----------------------------------------------------------
    def scale(self, x, factor: float, hint: str):
        return x if factor == 1.0 else self.b.op("Mul", [x, self.b.const(float(factor))], hint)

    def add(self, a, c, hint):
        return self.b.op("Add", [a, c], hint)

    def _residual_add(self, blk, out, x, x_in, hint):
        res = self.emit(blk.shortcut, x_in) if blk.downsample else x
        return self.add(self.scale(out, blk.alpha, hint + ".alpha"), res, hint)

    def _bireal(self, blk: BiRealBlock, x):
        n = self.name(blk)
        x_in = self.scale(x, blk.beta, n + ".beta")
        out = self.emit(blk.gain, self.emit(blk.bn, self.emit(blk.conv, self.emit(blk.sign, x_in))))
        return self.emit(blk.act, self._residual_add(blk, out, x, x_in, n + ".add"))

    def _xnor(self, blk: XnorBlock, x):
        n = self.name(blk)
        x_in = self.scale(x, blk.beta, n + ".beta")
        a = self.emit(blk.sign1, x_in)
        if self.dialect == "qonnx":
            a = self._fold_sign(blk.conv1, nn.Sequential(blk.bn1, blk.gain1), a, self.name(blk.sign2))
        else:
            a = self.emit(blk.sign2, self.emit(blk.gain1, self.emit(blk.bn1, self.emit(blk.conv1, a))))
        out = self.emit(blk.gain2, self.emit(blk.bn2, self.emit(blk.conv2, a)))
        return self._residual_add(blk, out, x, x_in, n + ".add")

    def _float_block(self, blk: FloatBlock, x):
        n = self.name(blk)
        out = self.b.op("Relu", [self.emit(blk.bn1, self.emit(blk.conv1, x))], n + ".relu1")
        out = self.emit(blk.bn2, self.emit(blk.conv2, out))
        return self.b.op("Relu", [self.add(out, self.emit(blk.shortcut, x), n + ".add")], n + ".relu2")

    def _react_a(self, blk: ReActBlockA, x):
        n = self.name(blk)
        x_in = self.scale(x, blk.beta1, n + ".beta1")
        out = self.emit(blk.gain1, self.emit(blk.bn1, self.emit(blk.conv3x3, self.emit(blk.sign1, x_in))))
        res = self.emit(blk.pool, x_in) if blk.stride == 2 else x
        out1 = self.emit(blk.act1, self.add(self.scale(out, blk.alpha, n + ".alpha1"), res, n + ".add1"))
        h = self.emit(blk.sign2, self.scale(out1, blk.beta2, n + ".beta2"))
        outs = []
        for i, (conv, bn, g) in enumerate(zip(blk.conv1x1, blk.bn2, blk.gain2)):
            o = self.emit(g, self.emit(bn, self.emit(conv, h)))
            outs.append(self.add(self.scale(o, blk.alpha, f"{n}.alpha2.{i}"), out1, f"{n}.add2.{i}"))
        y = self.b.op("Concat", outs, n + ".cat", axis=1) if blk.double else outs[0]
        return self.emit(blk.act2, y)

    def _head(self, m, x):
        x = self.b.op("Flatten", [self.emit(m.pool, x)], "flatten", axis=1)
        return self.emit(m.fc, x)

    def _resnet(self, m: BinaryResNet, x):
        x = self.emit(m.stem, x)
        for stage in (m.layer1, m.layer2, m.layer3, m.layer4):
            x = self.emit(stage, x)
        return self._head(m, x)

    def _reactneta(self, m: ReActNetA, x):
        return self._head(m, self.emit(m.blocks, self.emit(m.stem, x)))

    # QONNX: BN + sign folded into the thresholds of a binary conv ------------------------
    @torch.no_grad()
    def _fold_sign(self, conv: BinaryConv2d, post: nn.Module, a: str, hint: str) -> str:
        """``sign(post(conv(a)))`` as one ``MultiThreshold`` per channel on the conv's integer
        output (the sums, or the votes of an MV). The thresholds come from running ``post`` (the
        model's own BN / gain) on every value the layer can output, so they reproduce the float
        BN's rounding rather than a re-derived formula."""
        name = self.name(conv)
        b = self.b
        s, result = lower_binary_conv(b, conv, a, self.hw(conv), name, "qonnx", raw=True)
        self.probe(conv, result)
        Co = conv.out_channels
        if conv.hierarchy is None:  # every sum -n..n, times the scale as the layer multiplies it
            n = conv.terms
            r = torch.arange(-n, n + 1, dtype=torch.float32)
            _, alpha = conv.binary_weight()
            vals = r.view(1, 1, -1, 1).expand(1, Co, -1, 1)
            if alpha is not None:
                vals = vals * alpha.float().view(1, -1, 1, 1)
        else:  # the two votes
            r = torch.tensor([-1.0, 1.0])
            vals = r.view(1, 1, -1, 1).expand(1, Co, -1, 1)
        bits = (post(vals.contiguous()) >= 0).view(Co, -1)  # (Co, R), R ordered as r
        rv = r.numpy()
        thr = np.zeros(Co, np.float32)
        flip = np.ones(Co, np.float32)
        for o in range(Co):
            bo = bits[o].numpy()
            if bo.all():
                thr[o] = rv[0] - 1
            elif not bo.any():
                thr[o] = rv[-1] + 1
            elif (np.diff(bo.astype(int)) >= 0).all():  # +1 from a threshold on
                thr[o] = rv[bo.argmax()]
            elif (np.diff(bo.astype(int)) <= 0).all():  # decreasing: threshold -s
                flip[o] = -1
                thr[o] = -rv[len(bo) - 1 - bo[::-1].argmax()]
            else:  # pragma: no cover - BN and gains are monotone
                raise BitvoteError(f"layer {name!r}: BN + sign is not monotone in channel {o}")
        if (flip < 0).any():
            s = b.op("Mul", [s, b.const(flip.reshape(1, -1, 1, 1), name + ".dir")], name + ".dir")
        return multithreshold(b, s, thr, hint)

    _TABLE = []  # filled below (order matters: subclasses before their bases)


Lowering._TABLE = [
    (BinaryResNet, Lowering._resnet),
    (ReActNetA, Lowering._reactneta),
    (BiRealBlock, Lowering._bireal),
    (XnorBlock, Lowering._xnor),
    (FloatBlock, Lowering._float_block),
    (ReActBlockA, Lowering._react_a),
    (nn.Sequential, Lowering._seq),
    (nn.Identity, Lowering._identity),
    (BinaryConv2d, Lowering._binary_conv),
    (nn.Conv2d, Lowering._conv),
    (nn.BatchNorm2d, Lowering._bn),
    (RSign, Lowering._rsign),
    (Sign, Lowering._sign),
    (RPReLU, Lowering._rprelu),
    (LearnableBias, Lowering._shift),
    (Gain, Lowering._gain),
    (nn.ReLU, Lowering._relu),
    (nn.AvgPool2d, Lowering._avgpool),
    (nn.AdaptiveAvgPool2d, Lowering._adaptive),
    (nn.Linear, Lowering._linear),
]
