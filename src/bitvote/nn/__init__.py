"""Binary layers (modules) and their functional core."""

from . import functional
from .activations import LearnableBias, RPReLU, RSign, Sign
from .layers import BinaryConv2d, BinaryLinear, VoterLayer, set_weight_grad
from .normfree import Gain, ScaledStdConv2d, adaptive_clip_grad_

__all__ = ["functional", "BinaryConv2d", "BinaryLinear", "VoterLayer", "LearnableBias", "Sign", "RSign", "RPReLU",
           "Gain", "ScaledStdConv2d", "adaptive_clip_grad_", "set_weight_grad"]
