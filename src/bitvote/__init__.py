"""bitvote: binary neural networks whose XNOR+popcount is replaced by majority voters.

Layers: ``bitvote.BinaryConv2d``, ``bitvote.BinaryLinear``; voter semantics in
:mod:`bitvote.voter` (SPEC.md); models in :mod:`bitvote.models`.
"""

from .errors import BitvoteError

__version__ = "0.1.0"

__all__ = ["BinaryConv2d", "BinaryLinear", "RSign", "RPReLU", "BitvoteError", "binarize", "voter", "models"]


_LAYERS = ("BinaryConv2d", "BinaryLinear", "RSign", "RPReLU")


def __getattr__(name):
    # Everything that needs torch imports lazily, so `import bitvote` stays light for
    # kernel/hardware users and the spec side (bitvote.voter.spec, bitvote.hw.design) runs
    # without torch.
    import importlib

    if name in ("models", "binarize", "voter", "nn"):
        mod = importlib.import_module("." + name, __name__)
        globals()[name] = mod
        return mod
    if name in _LAYERS:
        value = getattr(importlib.import_module(".nn", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(name)
