"""Exact votes of a binary conv from packed bits, for passes that need no gradient (CPU).

Training through a hierarchy with the ``flat`` sigma rule takes the votes without a graph and
one MV's backward at the popcount; evaluation and BN recalibration need no graph at all. Such
votes are only integers of bits, so the packed conv kernels (:mod:`bitvote.packed`, the
inference engine's) compute them: XOR-popcount over 64 terms per instruction, every voter
tree, tie rule and padding mode, bit-identical to :func:`bitvote.voter.reduce_votes` (the
tests and ``bitvote verify`` hold the kernels to it). Measured 1.4-12x faster than the
term-by-term vote kernels of :mod:`.fastvote` at 32 channels and more (0.9-2x at 8-16, where
a word carries few bits), and at 64 channels about as fast as the float conv itself.

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
from ..packed import PackedConv, pack
from ..packed.build import lib
from ..voter import Hierarchy

__all__ = ["enabled", "available", "supports", "takes", "conv_votes"]

#: layers whose packed form is kept (weights are repacked at every call)
_KEEP = 256

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


def _layer(hier: Hierarchy, wb: torch.Tensor, stride: int, padding: int, pad_value: float) -> PackedConv:
    convs = getattr(_cache, "convs", None)
    if convs is None:
        convs = _cache.convs = OrderedDict()
    key = (hier, tuple(wb.shape), stride, padding, float(pad_value))
    conv = convs.get(key)
    if conv is None:
        conv = PackedConv(wb >= 0, stride, padding, pad_value, hier)
        Co = wb.shape[0]
        # float results straight from the kernel's vector epilogue: the votes +1 / -1, or a P
        # root's counts (exact integers in fp32)
        if hier.root == "P":
            conv.epilogue("affine", torch.ones(Co), torch.zeros(Co))
        else:
            conv.epilogue("select", torch.ones(Co), -torch.ones(Co))
        convs[key] = conv
        if len(convs) > _KEEP:
            convs.popitem(last=False)
    else:
        convs.move_to_end(key)
        conv.load_weights(wb >= 0)
    return conv


def conv_votes(xb: torch.Tensor, wb: torch.Tensor, hier: Hierarchy, stride: Tuple[int, int],
               padding: Tuple[int, int], pad_value: float) -> torch.Tensor:
    """Votes (or a ``P`` root's counts) ``(N, Co, Ho, Wo)`` fp32 of one conv group, no graph.

    ``xb`` and ``wb`` are the binarized input and weights (a value >= 0 is +1, as everywhere).
    The kernel writes channels-last floats; they are copied to the contiguous layout the rest
    of the step runs on (measured: channels-last votes slowed the step's element-wise ops and
    batch norm by more than the copy costs).
    """
    with torch.no_grad():
        conv = _layer(hier, wb.detach(), int(stride[0]), int(padding[0]), pad_value)
        threads = torch.get_num_threads()
        return conv(pack(xb.detach(), threads=threads), threads=threads).contiguous()
