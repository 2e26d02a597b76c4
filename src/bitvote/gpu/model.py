"""A compiled engine graph (``.bvm``) run on the GPU: binary convs in Triton, real ops in torch.

:class:`GpuEngineModel` is :class:`bitvote.engine.graph.EngineModel` with its two hooks
replaced: each graph node becomes a :class:`~bitvote.gpu.conv.GpuPackedConv` (same fused
epilogue) and packing runs :func:`bitvote.gpu.conv.pack`. The real-valued ops (stem,
shortcuts, RPReLU, head) are the same torch code on the device's tensors. NaN inputs of a
binarizer set a flag that is checked once per forward (one sync, not one per layer).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from ..engine.graph import EngineModel, unpack_weight
from ..voter import Hierarchy
from . import concrete_device, require, tf32
from .conv import GpuPackedConv, pack, to_engine_words

__all__ = ["GpuEngineModel", "to_device"]


def to_device(obj, device):
    """Every tensor of a nested dict/list moved to ``device`` (packed weight bytes excepted)."""
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: (v if k == "wbits" else to_device(v, device)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    return obj


class GpuEngineModel(EngineModel):
    """Run an engine graph on ``device`` (``cuda``; ``cpu`` only under Triton's interpreter).

    The real-valued convs (stem, shortcuts) and the head run in full fp32, TF32 off
    (:func:`bitvote.gpu.tf32`): the logits then round like the CPU model's (``verify``).
    """

    def __init__(self, graph: Dict, device=None):
        self.device = concrete_device(device if device is not None else require())
        super().__init__(graph)
        self.graph = to_device(graph, self.device)
        self.blocks = [(to_device(b, self.device), convs) for b, convs in self.blocks]
        self._nan: Optional[torch.Tensor] = None

    def _make_conv(self, c: Dict):
        pc = GpuPackedConv(unpack_weight(c["wbits"], c["shape"]), c["stride"], c["padding"], c["pad_value"],
                           None if c["hier"] is None else Hierarchy.from_dict(c["hier"]), c["name"],
                           device=self.device)
        return pc.epilogue(c["epilogue"], a=c.get("a"), b=c.get("b"), thr=c.get("thr"), dir=c.get("dir"))

    def _pack(self, x, shift, threads):
        return pack(x, shift, nan_flag=self._nan)

    def pack_input(self, x, threads: int = 1):
        return pack(x.to(self.device))

    def engine_words(self, bits):
        return to_engine_words(bits).cpu()

    def __call__(self, x: torch.Tensor, threads: int = 1, trace: Optional[list] = None, isa=None) -> torch.Tensor:
        from ..errors import BitvoteError

        self._nan = torch.zeros(1, dtype=torch.int32, device=self.device)
        with tf32(False):
            out = super().__call__(x.to(self.device), threads, trace, isa)
        if int(self._nan.item()):
            raise BitvoteError("NaN in the input of a binarizer: NaN is not a bit (SPEC.md)")
        return out
