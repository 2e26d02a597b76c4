"""The packed CPU inference engine (design in docs/engine.md).

``pack`` turns real activations into bits, :class:`PackedConv` runs one binary conv on
packed words with a fused epilogue, :mod:`.graph` compiles a whole model into an engine
graph (``.bvm``), :mod:`.verify` checks it against the PyTorch layers bit by bit and
:mod:`.bench` times it against fp32. The kernels are C, built at first use (:mod:`.build`).
"""

from .build import ISAS, best_isa
from .conv import PackedConv
from .pack import pack, pack_bools, unpack, words

__all__ = ["ISAS", "best_isa", "PackedConv", "pack", "pack_bools", "unpack", "words"]
