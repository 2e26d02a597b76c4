"""Exact votes and popcounts of a binary conv from packed bits (CPU).

Training through a hierarchy with the ``flat`` sigma rule takes the votes without a graph and
one MV's backward at the popcount; evaluation and BN recalibration need no graph at all. Such
votes are only integers of bits, so the packed conv kernels (:mod:`bitvote.packed`, the
inference engine's) compute them: XOR-popcount over 64 terms per instruction, every voter
tree, tie rule and padding mode, bit-identical to :func:`bitvote.voter.reduce_votes` (the
tests and ``bitvote verify`` hold the kernels to it). Measured 1.4-12x faster than the
term-by-term vote kernels of :mod:`.fastvote` at 32 channels and more (0.9-2x at 8-16, where
a word carries few bits), and at 64 channels about as fast as the float conv itself.

The popcount itself (:func:`conv_sums`) is the forward of every popcount layer from 32 input
channels on, with or without a graph: its sums are exact integers, the same numbers the float
conv gives, and the layer's backward stays the float conv's. Measured 1.2-8x faster than the
float conv forward at 32 channels and more (batch 128, 2 threads); at 8 channels slower.

Each call packs the input and the current weights; a layer's voter segments are built once
per shape and thread and reused. ``BITVOTE_PACKED_VOTE=0`` turns the path off; a kernel
library that does not build turns it off for good with one line on stderr.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Optional, Tuple

import torch

from .. import native
from ..packed import PackedConv, pack, pack_binary
from ..packed.build import lib
from ..voter import Hierarchy

__all__ = ["enabled", "available", "supports", "takes", "conv_votes", "sums_pay", "pack_if_binary", "conv_sums"]

#: layers whose packed form is kept (weights are repacked at every call)
_KEEP = 256

#: input channels from which the packed popcount beats the float conv forward (measured from
#: 8 to 512 channels, 3x3 kernels: 8 channels 0.3-0.5x, 16 channels 0.5-1.6x, 32 and more 1.2-8x)
SUMS_MIN_CHANNELS = 32

#: output pixels from which the float epilogue (channels-last, then one copy) beats the int
#: one (NCHW int32, then a conversion): 32x32 outputs 1.3-1.8x, 16x16 even, 8x8 and less int
_AFFINE_MIN_PIXELS = 1024

_cache = threading.local()  # per thread: a cached layer holds the weights of its last call
_broken: Optional[str] = None


def enabled() -> bool:
    """``BITVOTE_PACKED_VOTE=0`` asks for the other vote paths; a failed build turns it off."""
    return _broken is None and os.environ.get("BITVOTE_PACKED_VOTE", "1") != "0"


def available() -> bool:
    """Enabled and the kernel library loads (compiling it at the first call)."""
    global _broken
    if not enabled():
        return False
    try:
        lib()
    except Exception as e:  # noqa: BLE001 - no compiler, a failing one, a bad .so: the other paths
        _broken = native.unavailable("packed vote kernels", e, "the other vote paths")
        return False
    return True


def supports(x: torch.Tensor, w: torch.Tensor, stride: Tuple[int, int], padding: Tuple[int, int],
             dilation: Tuple[int, int], pad_value: float) -> bool:
    """The shapes the kernels take: CPU tensors, square stride and padding, no dilation, an
    output of at least one pixel (an empty one is the other paths' to shape)."""
    if not (x.device.type == "cpu" and w.device.type == "cpu" and stride[0] == stride[1]
            and padding[0] == padding[1] and tuple(dilation) == (1, 1) and float(pad_value) in (0.0, 1.0, -1.0)):
        return False
    return all(x.shape[2 + i] + 2 * padding[i] >= w.shape[2 + i] for i in range(2))


def takes(x: torch.Tensor, w: torch.Tensor, stride: Tuple[int, int], padding: Tuple[int, int],
          dilation: Tuple[int, int], pad_value: float) -> bool:
    """Whether :func:`conv_votes` takes this call: a shape it runs, the path on and its library
    built, and not inside ``torch.compile`` (which traces the other paths)."""
    return (not torch.compiler.is_compiling() and supports(x, w, stride, padding, dilation, pad_value)
            and available())


def _layer(hier: Optional[Hierarchy], wb: torch.Tensor, stride: int, padding: int, pad_value: float,
           mode: str) -> PackedConv:
    """The thread's cached packed layer for this shape and epilogue, loaded with ``wb``."""
    convs = getattr(_cache, "convs", None)
    if convs is None:
        convs = _cache.convs = OrderedDict()
    key = (hier, tuple(wb.shape), stride, padding, float(pad_value), mode)
    conv = convs.get(key)
    if conv is None:
        conv = PackedConv(wb >= 0, stride, padding, pad_value, hier)
        Co = wb.shape[0]
        # "affine" 1, 0 gives the integer results as floats (a sum, a P root's count), "select"
        # +1 / -1 the votes, both straight from the kernel's vector epilogue
        if mode == "affine":
            conv.epilogue("affine", torch.ones(Co), torch.zeros(Co))
        elif mode == "scaled":  # r * a[o] + -0.0: exactly the float product, the sign of a zero kept
            conv.epilogue("affine", torch.ones(Co), torch.full((Co,), -0.0))
        elif mode == "select":
            conv.epilogue("select", torch.ones(Co), -torch.ones(Co))
        convs[key] = conv
        if len(convs) > _KEEP:
            convs.popitem(last=False)
    else:
        convs.move_to_end(key)
        conv.load_weights(wb >= 0)
    return conv


def conv_votes(xb: torch.Tensor, wb: torch.Tensor, hier: Hierarchy, stride: Tuple[int, int],
               padding: Tuple[int, int], pad_value: float, leaf_sums: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Votes (or a ``P`` root's counts) ``(N, Co, Ho, Wo)`` fp32 of one conv group, no graph.

    ``xb`` and ``wb`` are the binarized input and weights (a value >= 0 is +1, as everywhere).
    ``leaf_sums`` (int16, ``(leaves, N * Ho * Wo, Co)``) also receives every leaf's sum.
    The kernel writes channels-last floats; they are copied to the contiguous layout the rest
    of the step runs on (measured: channels-last votes slowed the step's element-wise ops and
    batch norm by more than the copy costs).
    """
    with torch.no_grad():
        conv = _layer(hier, wb.detach(), int(stride[0]), int(padding[0]), pad_value,
                      "affine" if hier.root == "P" else "select")
        threads = torch.get_num_threads()
        return conv(pack(xb.detach(), threads=threads), threads=threads, leaf_sums=leaf_sums).contiguous()


def sums_pay(x: torch.Tensor, w: torch.Tensor, stride: Tuple[int, int], padding: Tuple[int, int],
             dilation: Tuple[int, int]) -> bool:
    """Whether :func:`conv_sums` takes this popcount and is faster than the float conv: fp32
    input (``pack`` reads fp32), a non-empty batch, a shape :func:`takes`, a kernel larger than 1x1 and at least
    :data:`SUMS_MIN_CHANNELS` input channels."""
    return (x.dtype == torch.float32 and w.dtype == torch.float32 and x.dim() == 4 and x.shape[0] > 0
            and x.shape[1] >= SUMS_MIN_CHANNELS and w.shape[2] * w.shape[3] > 1
            and takes(x, w, stride, padding, dilation, 0.0))


def pack_if_binary(xb: torch.Tensor) -> Optional[torch.Tensor]:
    """The packed words of ``xb`` when every value is +1 or -1 (a binarizer's output), else
    ``None``: a tensor that only claims to be binary keeps the float conv."""
    return pack_binary(xb.detach(), threads=torch.get_num_threads())


def conv_sums(words: torch.Tensor, wb: torch.Tensor, stride: Tuple[int, int], padding: Tuple[int, int],
              out_hw: Tuple[int, int], scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Popcounts ``(N, Co, Ho, Wo)`` fp32 (contiguous) of packed +/-1 input ``words`` against
    +/-1 weights ``wb`` under zero padding (padded terms count 0), no graph: exact integers,
    or with ``scale`` (Co,) those integers times ``scale[o]``, rounded once as ``s * scale``
    rounds, fused into the pass that writes them."""
    with torch.no_grad():
        big = out_hw[0] * out_hw[1] >= _AFFINE_MIN_PIXELS
        conv = _layer(None, wb.detach(), int(stride[0]), int(padding[0]), 0.0, "scaled" if big else "int")
        if big:  # in place: the kernel's arguments point at a (r * 1 + -0.0 is r exactly)
            conv.a.copy_(1.0 if scale is None else scale.detach().reshape(-1))
        y = conv(words, threads=torch.get_num_threads())
        if big:
            return y.contiguous()
        return y.float() if scale is None else torch.mul(y, scale.detach().reshape(1, -1, 1, 1).to(torch.float32))
