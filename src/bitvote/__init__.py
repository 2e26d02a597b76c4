"""bitvote: binary neural networks whose XNOR+popcount is replaced by majority voters.

Layers: ``bitvote.BinaryConv2d``, ``bitvote.BinaryLinear``; voter semantics in
:mod:`bitvote.voter` (SPEC.md); models in :mod:`bitvote.models`.
"""

from . import binarize, voter
from .errors import BitvoteError
from .nn import BinaryConv2d, BinaryLinear, RPReLU, RSign

__version__ = "0.1.0"

__all__ = ["BinaryConv2d", "BinaryLinear", "RSign", "RPReLU", "BitvoteError", "binarize", "voter", "models"]


def __getattr__(name):
    # Models import lazily so that `import bitvote` stays light for kernel/hardware users.
    if name == "models":
        import importlib

        mod = importlib.import_module(".models", __name__)
        globals()["models"] = mod
        return mod
    raise AttributeError(name)
