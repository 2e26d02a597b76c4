"""Binary convolutions on packed bits: the bit packer, the C conv kernels and their build.

``pack`` turns real activations into bits and :class:`PackedConv` runs one binary conv on
packed words through any voter, with a fused epilogue. The inference engine
(:mod:`bitvote.engine`) compiles whole models onto these kernels; training takes its exact
forward-only votes from them (:mod:`bitvote.nn.packedvote`). The kernels are C, built at
first use (:mod:`.build`).
"""

from .build import ISAS, best_isa
from .conv import PackedConv
from .pack import pack, pack_binary, pack_bools, unpack, words

__all__ = ["ISAS", "best_isa", "PackedConv", "pack", "pack_binary", "pack_bools", "unpack", "words"]
