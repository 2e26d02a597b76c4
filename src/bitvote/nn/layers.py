"""Binary layers: ``BinaryConv2d`` and ``BinaryLinear`` with a popcount or voter output.

The ``weight`` is the latent real weight (a plain ``nn.Conv2d`` parameter, so optimizers,
checkpoints and initializers treat it as usual); the forward pass binarizes it and the input
and applies the layer's voter (SPEC.md). ``print(layer)`` shows the voter as it resolved
for this layer, its padding and tie rule.

``weight_grad`` chooses the latent weight's gradient under a scaled popcount output
(``weight_scale=True``): ``"scaled"`` (default) is the chain rule of the forward, the
clamp-STE gradient times the detached ``mean|W|``; ``"unscaled"`` is the reference
ReActNet/Bi-Real code's, without that factor (docs/models.md). The forward is the same.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..binarize import get_surrogate, unscale_weight_grad
from ..errors import BitvoteError
from ..voter import Hierarchy, check_sigma, parse_spec, parse_tie, resolve
from . import functional as BF

__all__ = ["BinaryConv2d", "BinaryLinear", "VoterLayer", "WEIGHT_GRADS", "check_pad_value", "set_weight_grad"]

#: the latent weight's gradient under a scaled popcount: the forward's chain rule, or the reference's
WEIGHT_GRADS = ("scaled", "unscaled")


def check_pad_value(v) -> float:
    """``v`` as the float padding value of binary activations, or a one-line error."""
    v = float(v)
    if v not in (0.0, 1.0, -1.0):
        raise BitvoteError(f"pad_value must be 0 (zero padding), +1 or -1, got {v}")
    return v


def _check_weight_grad(mode) -> str:
    if mode not in WEIGHT_GRADS:
        raise BitvoteError(f"weight_grad must be one of {', '.join(WEIGHT_GRADS)}, got {mode!r}")
    return mode


def set_weight_grad(model: nn.Module, mode: str) -> nn.Module:
    """Set ``weight_grad`` (``"scaled"`` or ``"unscaled"``) on every binary layer of ``model``."""
    mode = _check_weight_grad(mode)
    for m in model.modules():
        if isinstance(m, VoterLayer):
            m.weight_grad = mode
    return model


class VoterLayer:
    """What every binary layer shares: its voter, tie rule, surrogate and sigma."""

    #: qualified name inside a model, set by the model so errors can name the layer
    layer_name: str = "layer"
    #: False in step 1 of two-step training: binary activations, real weights, popcount only
    _binary_weights: bool = True

    @property
    def binary_weights(self) -> bool:
        return self._binary_weights

    @binary_weights.setter
    def binary_weights(self, value: bool) -> None:
        if not value and self.hierarchy is not None:
            raise BitvoteError(f"{self.layer_name}: a voter ({self.voter}) needs binary weights; "
                               "real weights (step 1) allow only popcount")
        self._binary_weights = bool(value)

    standardize = False
    weight_grad = "scaled"

    def latent_weight(self) -> torch.Tensor:
        """The real weight that gets binarized: ``weight``, or its per-output-channel scaled
        standardization ``(W - mean) / (std * sqrt(fan_in))`` (BN-free nets, Chen et al. 2021),
        which makes the scaled popcount ``alpha * s`` of unit variance at initialization."""
        w = self.weight
        if not self.standardize:
            return w
        dims = tuple(range(1, w.dim()))
        fan_in = w[0].numel()
        mean = w.mean(dim=dims, keepdim=True)
        var = w.var(dim=dims, keepdim=True, unbiased=False)
        return (w - mean) / torch.sqrt(var * fan_in + 1e-5)

    def _forward_weight(self) -> torch.Tensor:
        """The latent weight as the forward uses it: with ``weight_grad="unscaled"`` and a
        scaled popcount output, its gradient loses the ``mean|W|`` factor (values unchanged)."""
        w = self.latent_weight()
        if self.weight_grad == "unscaled" and self.weight_scale and self.hierarchy is None and self._binary_weights:
            w = unscale_weight_grad(w)
        return w

    @torch.no_grad()
    def binary_weight(self):
        """``(w_bin, alpha)``: the +/-1 weights the layer uses and its scale (or None).

        What the packed engine and the hardware model read, so they see exactly the bits
        the PyTorch forward uses (standardization included).
        """
        from ..binarize import binarize_weight

        wb, alpha = binarize_weight(self.latent_weight(), self.weight_scale)
        return wb.detach(), None if alpha is None else alpha.detach()

    def _init_voter(self, voter, tie, surrogate, sigma, input_surrogate):
        self.surrogate = get_surrogate(surrogate)
        self.input_surrogate = None if input_surrogate is None else get_surrogate(input_surrogate)
        self.sigma = check_sigma(sigma)
        self.set_voter(voter, tie)

    @property
    def terms(self) -> int:
        """n: the number of terms per output (C_in per conv group x taps)."""
        raise NotImplementedError

    @property
    def taps(self) -> int:
        raise NotImplementedError

    def set_voter(self, voter="popcount", tie=None, name: str | None = None) -> None:
        """Swap the output mode (what ``bitvote convert`` does); weights stay as they are."""
        if name is not None:
            self.layer_name = name
        if tie is None:
            tie = getattr(self, "tie", 1)
        spec = parse_spec(voter)
        hierarchy = resolve(spec, self.terms, self.taps, parse_tie(tie), self.layer_name)
        if hierarchy is not None and not self._binary_weights:
            raise BitvoteError(f"{self.layer_name}: voter {spec.text!r} needs binary weights; "
                               "real weights (step 1) allow only popcount")
        self.tie = parse_tie(tie)
        self.voter_spec = spec
        self.hierarchy: Hierarchy | None = hierarchy

    @property
    def voter(self) -> str:
        return self.voter_spec.text

    def voter_repr(self) -> str:
        h = self.hierarchy
        if h is None:
            return "voter=popcount"
        desc = h.describe()
        shown = desc if desc == self.voter_spec.text else f"{self.voter_spec.text} -> {desc}"
        tie = self.tie if not isinstance(self.tie, tuple) else ",".join(map(str, self.tie))
        return f"voter={shown}, tie={tie}, surrogate={self.surrogate}, sigma={self.sigma}"


class BinaryConv2d(nn.Conv2d, VoterLayer):
    """Binary 2-D convolution: +/-1 activations and weights, popcount or (H)MV output.

    ``forward(x)`` binarizes ``x`` (``x >= 0`` -> +1) with ``input_surrogate`` (default the
    clipped STE, which passes gradients of inputs already at +/-1 unchanged; ``None`` declares
    that ``x`` is already +/-1, as in the models where a Sign/RSign precedes the layer) and the weight
    with the clamp-STE, then returns a float tensor: the sums ``s`` for ``popcount`` (times
    the per-output-channel ``mean|W|`` when ``weight_scale``), +1/-1 for ``mv`` and HMV specs,
    a count of votes for a ``P`` root.

    ``pad_value``: 0 = zero padding (padded terms are invalid; voters with none abstain),
    +1 or -1 (padded activations take that value). ``tie``: 1, -1, ``"first"`` or a root-first
    sequence. ``surrogate``/``sigma``: the vote's backward, ``F'(s / sigma) / sigma``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        *,
        voter="popcount",
        pad_value: float = 0.0,
        tie=1,
        weight_scale: bool = False,
        standardize: bool = False,
        weight_grad: str = "scaled",
        surrogate="approxsign",
        sigma="fanin",
        input_surrogate="ste",
        bias: bool = False,
        device=None,
        dtype=None,
    ):
        if bias:
            raise BitvoteError("binary layers have no bias (SPEC.md): add a real-valued op after the layer")
        if isinstance(padding, str):
            raise BitvoteError("BinaryConv2d takes integer padding; string padding modes are not supported")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias=False, padding_mode="zeros", device=device, dtype=dtype)
        self.pad_value = check_pad_value(pad_value)
        self.weight_scale = bool(weight_scale)
        self.standardize = bool(standardize)
        self.weight_grad = _check_weight_grad(weight_grad)
        self._init_voter(voter, tie, surrogate, sigma, input_surrogate)

    @property
    def taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def terms(self) -> int:
        return self.in_channels // self.groups * self.taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return BF.binary_conv2d(
            x, self._forward_weight(), self.stride, self.padding, self.dilation, self.groups,
            voter=self.hierarchy, pad_value=self.pad_value, weight_scale=self.weight_scale,
            input_surrogate=self.input_surrogate, surrogate=self.surrogate, sigma=self.sigma,
            binary_weights=self._binary_weights,
        )

    def extra_repr(self) -> str:
        s = super().extra_repr().replace(", bias=False", "")
        s += f", {self.voter_repr()}"
        if self.pad_value != 0.0 and any(self.padding):
            s += f", pad_value={self.pad_value:+g}"
        if self.weight_scale:
            s += ", weight_scale=True"
        if self.standardize:
            s += ", standardize=True"
        if self.weight_grad != "scaled":
            s += f", weight_grad={self.weight_grad}"
        if self.input_surrogate is None:
            s += ", input=binary"
        if not self._binary_weights:
            s += ", binary_weights=False"
        return s


class BinaryLinear(nn.Linear, VoterLayer):
    """Binary fully-connected layer: a 1x1 binary conv over ``in_features`` terms (SPEC.md)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        voter="popcount",
        tie=1,
        weight_scale: bool = False,
        standardize: bool = False,
        weight_grad: str = "scaled",
        surrogate="approxsign",
        sigma="fanin",
        input_surrogate="ste",
        bias: bool = False,
        device=None,
        dtype=None,
    ):
        if bias:
            raise BitvoteError("binary layers have no bias (SPEC.md): add a real-valued op after the layer")
        super().__init__(in_features, out_features, bias=False, device=device, dtype=dtype)
        self.weight_scale = bool(weight_scale)
        self.standardize = bool(standardize)
        self.weight_grad = _check_weight_grad(weight_grad)
        self._init_voter(voter, tie, surrogate, sigma, input_surrogate)

    taps = 1

    @property
    def terms(self) -> int:
        return self.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x4 = x.reshape(-1, self.in_features, 1, 1)
        w4 = self._forward_weight().view(self.out_features, self.in_features, 1, 1)
        y = BF.binary_conv2d(
            x4, w4, voter=self.hierarchy, weight_scale=self.weight_scale,
            input_surrogate=self.input_surrogate, surrogate=self.surrogate, sigma=self.sigma,
            binary_weights=self._binary_weights,
        )
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, out_features={self.out_features}, {self.voter_repr()}"
        if self.weight_scale:
            s += ", weight_scale=True"
        if self.weight_grad != "scaled":
            s += f", weight_grad={self.weight_grad}"
        return s
