"""One binary conv as standard ONNX ops: popcount, MV and every hierarchy of SPEC.md.

The input is already +/-1 (a Sign or RSign precedes every binary conv in bitvote's models).

* ``popcount``: ``Conv`` on +/-1 values (the sums ``s`` are integers, exact in float32),
  times the per-channel ``mean|W|`` when the layer scales its weights.
* ``mv``: the same ``Conv``, then ``Sign(s + t/2)``: ``s`` is an integer, so adding half the
  tie value ``t`` decides exactly the ties and nothing else (what the PyTorch layer computes).
* hierarchies: the flat term order is cut into *blocks* that never straddle a leaf, as
  :func:`bitvote.nn.functional.conv_leaf_sums` does: ``b`` channels of one tap (tap-major;
  one ``Slice`` of the padded input per tap and a grouped 1x1 ``Conv``), ``b`` whole channels
  (channel-major; a grouped ``Conv``) or runs of taps inside a channel (channel-major; a
  per-channel ``Conv`` with masked taps). The multiply-adds are those of the plain conv. Block
  sums go to the last axis, ``(N, Co, Ho, Wo, blocks)``, and every level of the tree is one
  ``MatMul`` with a 0/1 matrix (uneven groups included) followed by ``Sign(s + fill/2)``.
* zero padding: padded terms are 0 and add nothing. Which voters have no valid term below
  them depends only on the output position, so the valid counts are constants: a voter
  without valid terms gets ``fill = 0`` (``Sign(0) = 0``: it abstains and its parent does
  not count it), a root without them gets its tie value.
* ``first``: which leaf block (or child) is the first valid one is a constant per position
  too: the first term is a ``MatMul`` of the block's first-term products masked to it.
"""

from __future__ import annotations

import math
from functools import reduce
from typing import Optional, Tuple

import numpy as np
import onnx

from ..errors import BitvoteError
from .graph import QONNX_DOMAIN, Builder

__all__ = ["lower_binary_conv", "out_size"]


def out_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def _weights(layer) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Exactly the +/-1 weights and scale the PyTorch forward uses (standardization included)."""
    wb, alpha = layer.binary_weight()
    return wb.float().numpy().astype(np.float32), None if alpha is None else alpha.float().numpy().astype(np.float32)


def _wconst(b: Builder, w: np.ndarray, hint: str) -> str:
    """Binary weights (+1/-1, 0 where masked) stored as int8 and cast to float in the graph:
    a quarter of the file, and a runtime folds the cast once when it loads the model."""
    return b.op("Cast", [b.const(np.ascontiguousarray(w), hint, np.int8)], hint + ".f", to=onnx.TensorProto.FLOAT)


def _pad(b: Builder, x: str, ph: int, pw: int, value: float, hint: str) -> str:
    if not (ph or pw):
        return x
    pads = b.const([0, 0, ph, pw, 0, 0, ph, pw], "pads", np.int64)
    return b.op("Pad", [x, pads, b.const(float(value))], hint + ".pad", mode="constant")


def _tap_valid(H, W, kh, kw, stride, pad, dil, Ho, Wo) -> np.ndarray:
    """``(taps, Ho, Wo)``: 1 where the tap of that output position lies inside the image."""
    rows = np.arange(Ho)[:, None] * stride[0] - pad[0] + np.arange(kh)[None, :] * dil[0]  # (Ho, kh)
    cols = np.arange(Wo)[:, None] * stride[1] - pad[1] + np.arange(kw)[None, :] * dil[1]
    vr = (rows >= 0) & (rows < H)
    vc = (cols >= 0) & (cols < W)
    v = vr.T[:, None, :, None] & vc.T[None, :, None, :]  # (kh, kw, Ho, Wo)
    return v.reshape(kh * kw, Ho, Wo).astype(np.float32)


def _aggregate(groups) -> np.ndarray:
    """0/1 matrix (inputs, voters) summing consecutive runs of ``groups`` sizes."""
    A = np.zeros((sum(groups), len(groups)), np.float32)
    start = 0
    for j, g in enumerate(groups):
        A[start:start + g, j] = 1
        start += g
    return A


def _first_live(live: Optional[np.ndarray], groups, Ho, Wo) -> np.ndarray:
    """``(Ho, Wo, inputs)``: 1 at the first live input of each run (all-dead runs: none)."""
    n = sum(groups)
    if live is None:
        live = np.ones((Ho, Wo, n), bool)
    S = np.zeros((Ho, Wo, n), np.float32)
    start = 0
    for g in groups:
        seg = live[..., start:start + g]
        has = seg.any(-1)
        idx = seg.argmax(-1) + start
        hh, ww = np.nonzero(has)
        S[hh, ww, idx[hh, ww]] = 1
        start += g
    return S


class _Geometry:
    def __init__(self, layer, hw):
        self.Co, self.C, self.kh, self.kw = layer.weight.shape
        self.T = self.kh * self.kw
        self.stride, self.pad, self.dil = tuple(layer.stride), tuple(layer.padding), tuple(layer.dilation)
        self.H, self.W = hw
        self.Ho = out_size(self.H, self.kh, self.stride[0], self.pad[0], self.dil[0])
        self.Wo = out_size(self.W, self.kw, self.stride[1], self.pad[1], self.dil[1])
        self.pad_value = float(getattr(layer, "pad_value", 0.0))
        self.zero_pad = self.pad_value == 0.0 and any(self.pad)

    def conv_attrs(self, padded: bool):
        ph, pw = (0, 0) if padded else self.pad
        return dict(kernel_shape=[self.kh, self.kw], strides=list(self.stride), dilations=list(self.dil),
                    pads=[ph, pw, ph, pw])

    def tap_valid(self) -> np.ndarray:
        if not self.zero_pad:
            return np.ones((self.T, self.Ho, self.Wo), np.float32)
        return _tap_valid(self.H, self.W, self.kh, self.kw, self.stride, self.pad, self.dil, self.Ho, self.Wo)


def lower_binary_conv(b: Builder, layer, x: str, hw, name: str, dialect: str = "onnx", raw: bool = False,
                      levels: Optional[list] = None):
    """Emit ``layer`` applied to the +/-1 tensor ``x`` (spatial size ``hw``).

    Returns ``(output, result)``: the output is what the PyTorch layer returns (sums times the
    weight scale, votes, or a ``P`` root's count); the result is the layer's exact integer
    result (the sums before the scale; for voters the output itself), what checks compare bit
    for bit. ``raw``: a popcount layer stops at the unscaled sums (the QONNX exporter folds
    the scale into the thresholds that follow). ``levels``, a list, receives ``(tensor,
    voters)`` for every level of a tree below its root: its votes as ``(N, Co, Ho, Wo,
    voters)``, 0 where a voter abstains.
    """
    if layer.groups != 1 and layer.hierarchy is not None:
        raise BitvoteError(f"layer {name!r}: export of voters on grouped convs (groups={layer.groups}) is not supported")
    g = _Geometry(layer, hw)
    W, alpha = _weights(layer)
    h = layer.hierarchy
    if dialect == "qonnx":
        return _lower_qonnx(b, layer, g, W, alpha, x, name, raw)
    if h is None or (h.is_mv and not h.levels[0].tie.is_first):
        padded = g.pad_value != 0.0 and any(g.pad)
        xp = _pad(b, x, *g.pad, g.pad_value, name) if padded else x
        s = b.op("Conv", [xp, _wconst(b, W, name + ".weight")], name + ".sum" if h is not None or alpha is not None or raw else name,
                 group=layer.groups, **g.conv_attrs(padded))
        if h is None:
            return _scaled(b, s, alpha, raw, name), s
        v = _vote_mv(b, s, h.levels[0].tie, name)
        return v, v
    v = _lower_tree(b, g, W, h, x, name, levels if levels is not None else [])
    return v, v


def _scaled(b: Builder, s: str, alpha, raw: bool, name: str) -> str:
    if alpha is None or raw:
        return s
    return b.op("Mul", [s, b.const(alpha.reshape(1, -1, 1, 1), name + ".alpha")], name)


def _vote_mv(b: Builder, s: str, tie, name: str) -> str:
    """``Sign(s + t/2)``; an output without any valid term (padding wider than the kernel)
    takes the tie value, which the same formula gives since its ``s`` is 0."""
    half = b.const(0.5 * float(tie))
    return b.op("Sign", [b.op("Add", [s, half], name + ".fill")], name)


def _block_plan(h, C, T):
    """The block cut of :func:`bitvote.nn.functional.conv_leaf_sums`: (plan, terms per block)."""
    leaves = h.leaf_sizes
    bounds = [int(v) for v in np.cumsum(leaves)]
    first = h.levels[0].tie.is_first
    if h.order != "cm" or len(leaves) == 1:
        return "tap", reduce(math.gcd, bounds, C)
    if all(x % T == 0 for x in bounds) and not first:
        return "channels", reduce(math.gcd, [x // T for x in bounds], C) * T
    return "taps", 1 if first else reduce(math.gcd, bounds, T)


def _blocks(b: Builder, g: _Geometry, W: np.ndarray, x: str, plan: str, bs: int, name: str, first_only=False) -> str:
    """Block sums ``(N, Co, Ho, Wo, P)`` in flat block order; ``first_only`` keeps only each
    block's first term (its weights masked to it)."""
    Co, C, kh, kw, T = g.Co, g.C, g.kh, g.kw, g.T
    suffix = ".first" if first_only else ".blocks"
    padded = any(g.pad)
    xp = _pad(b, x, *g.pad, g.pad_value, name) if padded else x
    if plan == "tap":
        G = C // bs
        Wr = W.reshape(Co, G, bs, T).transpose(3, 1, 0, 2).copy()  # (T, G, Co, bs)
        if first_only:
            Wr[..., 1:] = 0
        outs = []
        for t in range(T):
            i, j = divmod(t, kw)
            r0, c0 = i * g.dil[0], j * g.dil[1]
            xt = xp
            full = (r0 == 0 and c0 == 0 and g.stride == (1, 1) and kh == 1 and kw == 1)
            if not full:
                starts = b.const([r0, c0], "starts", np.int64)
                ends = b.const([r0 + (g.Ho - 1) * g.stride[0] + 1, c0 + (g.Wo - 1) * g.stride[1] + 1], "ends", np.int64)
                axes = b.const([2, 3], "axes", np.int64)
                steps = b.const(list(g.stride), "steps", np.int64)
                xt = b.op("Slice", [xp, starts, ends, axes, steps], f"{name}.tap{t}")
            wt = _wconst(b, Wr[t].reshape(G * Co, bs, 1, 1), f"{name}{suffix}.w{t}")
            y = b.op("Conv", [xt, wt], f"{name}{suffix}.t{t}", group=G, kernel_shape=[1, 1])
            outs.append(b.op("Reshape", [y, b.shape([0, G, Co, g.Ho, g.Wo])], f"{name}{suffix}.t{t}.r"))
        y = outs[0] if len(outs) == 1 else b.op("Concat", outs, name + suffix + ".cat", axis=1)
    elif plan == "channels":
        bc = bs // T
        G = C // bc
        Wg = W.reshape(Co, G, bc, kh, kw).transpose(1, 0, 2, 3, 4).reshape(G * Co, bc, kh, kw)
        y = b.op("Conv", [xp, _wconst(b, Wg, name + suffix + ".w")], name + suffix + ".conv",
                 group=G, **g.conv_attrs(True))
        y = b.op("Reshape", [y, b.shape([0, G, Co, g.Ho, g.Wo])], name + suffix + ".r")
    else:  # runs of bs taps inside one channel
        R = T // bs
        mask = np.zeros((R, T), np.float32)
        for r in range(R):
            mask[r, r * bs:(r + 1) * bs] = 1
        Wk = W.reshape(Co, C, 1, T) * mask.reshape(1, 1, R, T)  # (Co, C, R, T)
        Wk = Wk.transpose(1, 2, 0, 3).reshape(C * R * Co, 1, kh, kw)
        y = b.op("Conv", [xp, _wconst(b, Wk, name + suffix + ".w")], name + suffix + ".conv",
                 group=C, **g.conv_attrs(True))
        y = b.op("Reshape", [y, b.shape([0, C * R, Co, g.Ho, g.Wo])], name + suffix + ".r")
    return b.op("Transpose", [y], name + suffix + ".t", perm=[0, 2, 3, 4, 1])


def _block_valid(g: _Geometry, plan: str, bs: int) -> np.ndarray:
    """Valid terms per block, ``(Ho, Wo, P)``."""
    V = g.tap_valid()  # (T, Ho, Wo)
    if plan == "tap":
        G = g.C // bs
        vb = np.repeat(V * bs, G, axis=0)  # block t*G + gi
    elif plan == "channels":
        G = g.C // (bs // g.T)
        vb = np.repeat(V.sum(0, keepdims=True) * (bs // g.T), G, axis=0)
    else:
        R = g.T // bs
        runs = V.reshape(R, bs, g.Ho, g.Wo).sum(1)  # (R, Ho, Wo)
        vb = np.tile(runs, (g.C, 1, 1))  # block c*R + r
    return vb.transpose(1, 2, 0)


def _lower_tree(b: Builder, g: _Geometry, W: np.ndarray, h, x: str, name: str, levels: list) -> str:
    plan, bs = _block_plan(h, g.C, g.T)
    per_leaf = [sz // bs for sz in h.leaf_sizes]
    A0 = _aggregate(per_leaf)
    blocks = _blocks(b, g, W, x, plan, bs, name)
    s = blocks if all(p == 1 for p in per_leaf) else b.op("MatMul", [blocks, b.const(A0, name + ".leaves")], name + ".s0")
    vb = _block_valid(g, plan, bs) if g.zero_pad else None
    c = None if vb is None else vb @ A0  # valid terms per leaf (Ho, Wo, L)
    first = None
    if h.levels[0].tie.is_first:
        fb = blocks if plan == "taps" else _blocks(b, g, W, x, plan, bs, name, first_only=True)
        S = _first_live(None if vb is None else vb > 0, per_leaf, g.Ho, g.Wo)
        first = b.op("MatMul", [b.op("Mul", [fb, b.const(S, name + ".first0.sel")], name + ".first0.m"),
                                b.const(A0, name + ".leaves")], name + ".first0")
    v = None
    last = h.depth - 1
    for li, level in enumerate(h.levels):
        lvl = f"{name}.l{li}"
        if li > 0:
            A = _aggregate(level.groups)
            if level.tie.is_first and not (li == last and h.root == "P"):
                S = _first_live(None if c is None else c > 0, level.groups, g.Ho, g.Wo)
                first = b.op("MatMul", [b.op("Mul", [v, b.const(S, lvl + ".sel")], lvl + ".first.m"),
                                        b.const(A, lvl + ".agg")], lvl + ".first")
            s = b.op("MatMul", [v, b.const(A, lvl + ".agg")], lvl + ".s")
            if c is not None:
                c = (c > 0).astype(np.float32) @ A
        if li == last and h.root == "P":
            v = s
            break
        if level.tie.is_first:
            fill = first
            if c is not None and li == last:  # a root without valid terms takes +1
                fill = b.op("Add", [first, b.const((c == 0).astype(np.float32), lvl + ".dead")], lvl + ".fillv")
            half = b.op("Mul", [fill, b.const(0.5)], lvl + ".half")
        else:
            t = float(level.tie)
            if c is None:
                half = b.const(0.5 * t)
            else:  # a voter without valid terms abstains (fill 0); a root takes its tie value
                dead = t if li == last else 0.0
                half = b.const(0.5 * np.where(c == 0, dead, t).astype(np.float32), lvl + ".fill")
        v = b.op("Sign", [b.op("Add", [s, half], lvl + ".sf")], lvl + ".v")
        if li < last:
            levels.append((v, len(level.groups)))
    return b.op("Reshape", [v, b.shape([0, g.Co, g.Ho, g.Wo])], name)


# --------------------------------------------------------------------------------------------
# QONNX: bipolar quantizers, an integer conv, MultiThreshold for the vote
# --------------------------------------------------------------------------------------------


def qonnx_supported(layer) -> Optional[str]:
    """Why FINN cannot take this layer's voter (``None`` when it can)."""
    h = layer.hierarchy
    if h is None:
        return None
    if not h.is_mv:
        return (f"voter {h.describe()} is a hierarchy: FINN's matrix-vector-threshold unit computes one "
                "popcount per output channel and thresholds it, while a vote of votes needs a popcount per "
                "leaf (weights masked to 0, which bipolar weights cannot hold) and a second threshold stage; "
                "export it with --format onnx, or convert the layer to mv or popcount")
    if h.levels[0].tie.is_first:
        return ("tie rule 'first' looks up the first term, which no threshold on the sum can do; "
                "export it with --format onnx, or use tie +1 or -1")
    return None


def bipolar(b: Builder, x: str, hint: str) -> str:
    """QONNX's BipolarQuant (scale 1): +1 where ``x >= 0``, else -1, as SPEC.md binarizes."""
    return b.op("BipolarQuant", [x, b.const(1.0)], hint, domain=QONNX_DOMAIN)


def multithreshold(b: Builder, x: str, thr: np.ndarray, hint: str, bipolar_out=True) -> str:
    """``MultiThreshold`` with one threshold per channel: ``[x >= thr]`` as +/-1 (BIPOLAR)."""
    attrs = dict(out_dtype="BIPOLAR", out_scale=2.0, out_bias=-1.0) if bipolar_out else dict(out_dtype="BINARY")
    return b.op("MultiThreshold", [x, b.const(np.asarray(thr, np.float32).reshape(-1, 1), hint + ".thr")], hint,
                domain=QONNX_DOMAIN, data_layout="NCHW", **attrs)


def _lower_qonnx(b: Builder, layer, g: _Geometry, W, alpha, x, name, raw):
    why = qonnx_supported(layer)
    if why:
        raise BitvoteError(f"qonnx export of layer {name!r}: {why}")
    h = layer.hierarchy
    padded = g.pad_value != 0.0 and any(g.pad)
    xp = _pad(b, x, *g.pad, g.pad_value, name) if padded else x
    wq = bipolar(b, b.const(W, name + ".weight"), name + ".wq")
    last = h is None and alpha is None and not raw
    s = b.op("Conv", [xp, wq], name if last else name + ".sum", group=layer.groups, **g.conv_attrs(padded))
    if h is None:
        return _scaled(b, s, alpha, raw, name), s
    # s >= 0 for tie +1, s >= 1 (s > 0) for tie -1: s is an integer
    thr = 0.0 if float(h.levels[0].tie) > 0 else 1.0
    v = multithreshold(b, s, np.full(g.Co, thr), name)
    return v, v
