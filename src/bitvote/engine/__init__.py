"""The packed CPU inference engine (design in docs/engine.md).

:mod:`.graph` compiles a whole model into an engine graph (``.bvm``) of packed convs
(:mod:`bitvote.packed`: the packer, :class:`PackedConv` and the C kernels), :mod:`.verify`
checks it against the PyTorch layers bit by bit and :mod:`.bench` times it against fp32 and
int8.
"""

from ..packed import ISAS, PackedConv, best_isa, pack, pack_bools, unpack, words

__all__ = ["ISAS", "best_isa", "PackedConv", "pack", "pack_bools", "unpack", "words"]
