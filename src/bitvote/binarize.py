"""Binarizers: the forward sign and the pseudo-gradients that make it trainable.

Every binary value in bitvote is +1 or -1 (SPEC.md, "Values and bits"): ``x >= 0`` gives +1,
everything else -1, so 0 and -0.0 both give +1 (``torch.sign`` would give 0). NaN is an
error, not a bit.

Three ways to use this module:

* functional: ``sign(x)`` (forward only), ``ste_sign(x)``, ``approx_sign(x)``,
  ``binarize_weight(w, scale=True)``;
* by name: ``get_surrogate("approxsign")`` returns the :class:`Surrogate` object;
* by object: ``ApproxSign()``, ``Ste(clip=1.0)``, passed wherever a name is accepted.

A :class:`Surrogate` only states a derivative ``F'(u)``; the sign itself is shared. The same
objects drive the activation binarizers here and the vote backward in :mod:`bitvote.voter`.
"""

from __future__ import annotations

from typing import Union

import torch

from ._fuse import fused
from .errors import BitvoteError

__all__ = [
    "sign",
    "Surrogate",
    "Ste",
    "ApproxSign",
    "get_surrogate",
    "binarize",
    "ste_sign",
    "approx_sign",
    "binarize_weight",
    "weight_scale",
    "unscale_weight_grad",
    "check_finite",
]

#: Raise on NaN before binarizing. One reduction per layer; turn off for speed if you must.
CHECK_NAN = True


def check_finite(x: torch.Tensor, what: str = "input") -> None:
    """NaN has no bit (SPEC.md): refuse it instead of silently voting -1.

    One reduction: a NaN anywhere makes the sum NaN; only a non-finite sum (NaN, or infs)
    pays for the exact element-wise look.
    """
    if not (CHECK_NAN and x.is_floating_point() and x.numel()) or torch.compiler.is_compiling():
        return  # a compiled graph cannot branch on data; the trainer's non-finite-loss check stands in
    if not torch.isfinite(x.sum()) and torch.isnan(x).any():
        raise BitvoteError(f"NaN in the {what} of a binarizer: NaN is not a bit (SPEC.md)")


def sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where ``x >= 0`` (zero and -0.0 included), else -1; same dtype as ``x``.

    ``sign(sign(x) + 1/2)`` maps {-1, 0, +1} to {-1, +1, +1}: in place, about twice as fast
    as ``torch.where`` on the CPU.
    """
    if not x.is_floating_point():
        return torch.where(x >= 0, 1, -1).to(x.dtype)
    return torch.sign(x).add_(0.5).sign_()


class Surrogate:
    """The derivative used in place of sign's (zero almost everywhere) in the backward pass."""

    name = "surrogate"

    def grad(self, u: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, g: torch.Tensor, s: torch.Tensor, sigma) -> torch.Tensor:
        """``g * F'(s / sigma) / sigma``; subclasses fuse it for a scalar ``sigma`` (hot path)."""
        return g * self.grad(s / sigma) / sigma

    def __repr__(self) -> str:
        return self.name


class Ste(Surrogate):
    """Straight-through estimator (Hubara et al. 2016; Courbariaux et al. 2016).

    Forward ``sign(u)``; backward ``dF/du = 1 if |u| <= clip else 0`` (clipped identity).
    The boundary is inclusive, so a value that is already exactly +/-1 passes its gradient.
    """

    name = "ste"

    def __init__(self, clip: float = 1.0):
        self.clip = float(clip)

    def grad(self, u):
        return (u.abs() <= self.clip).to(u.dtype)

    def backward(self, g, s, sigma):
        return _ste_backward(g, s, _as_tensor(sigma, s), _as_tensor(self.clip, s))

    def __repr__(self):
        return "ste" if self.clip == 1.0 else f"Ste(clip={self.clip})"


class ApproxSign(Surrogate):
    """ApproxSign (Bi-Real Net, Liu et al. ECCV 2018; the seed's "ApproxSign()").

    Forward ``sign(u)``; backward of the piecewise polynomial
    ``F(u) = 2u + u^2`` on [-1, 0), ``2u - u^2`` on [0, 1), ``sign(u)`` elsewhere:
    ``F'(u) = 2 - 2|u|`` on [-1, 1), 0 elsewhere (a triangle of area 2, like sign's jump).
    """

    name = "approxsign"

    def grad(self, u):
        return torch.clamp(2.0 - 2.0 * u.abs(), min=0.0)

    def backward(self, g, s, sigma):
        return _approxsign_backward(g, s, _as_tensor(sigma, s))


def _as_tensor(v, like: torch.Tensor):
    """On the CPU a scalar becomes a 0-d fp32 tensor, so one compiled loop serves every value
    (see _fuse); elsewhere it stays a float (reading a device scalar back would sync)."""
    if torch.is_tensor(v) or like.device.type != "cpu":
        return v
    return torch.tensor(float(v), dtype=torch.float32)


def _scalar(v) -> bool:
    return not torch.is_tensor(v) or v.dim() == 0


def _ste_backward_pure(g, s, sigma, clip):
    return ((s.abs() <= clip * sigma).to(g.dtype) * (g / sigma)).to(g.dtype)


def _ste_backward_eager(g, s, sigma, clip):
    if _scalar(sigma):
        sg, c = float(sigma), float(clip)
        return torch.where(s.abs() <= c * sg, g / sg, torch.zeros((), dtype=g.dtype, device=g.device))
    return _ste_backward_pure(g, s, sigma, float(clip))


def _approxsign_backward_pure(g, s, sigma):
    return (torch.clamp(2.0 - 2.0 * (s / sigma).abs(), min=0.0) * (g / sigma)).to(g.dtype)


def _approxsign_backward_eager(g, s, sigma):
    if _scalar(sigma):
        # F'(s/sigma)/sigma = max(0, 2/sigma - 2|s|/sigma^2), computed in place: few passes.
        sg = float(sigma)
        r = s.abs()
        r.mul_(-2.0 / (sg * sg)).add_(2.0 / sg).clamp_(min=0.0)
        return r.mul_(g)
    return _approxsign_backward_pure(g, s, sigma)


# g * F'(s / sigma) / sigma: one pass over large CPU tensors (the leaves of a hierarchy).
_ste_backward = fused(_ste_backward_pure, _ste_backward_eager)
_approxsign_backward = fused(_approxsign_backward_pure, _approxsign_backward_eager)


_SURROGATES = {"ste": Ste, "approxsign": ApproxSign}

SurrogateLike = Union[str, Surrogate]


def get_surrogate(spec: SurrogateLike) -> Surrogate:
    """Resolve a surrogate given by name (``"ste"``, ``"approxsign"``) or as an object."""
    if isinstance(spec, Surrogate):
        return spec
    key = str(spec).strip().lower().replace("_", "").replace("-", "")
    if key not in _SURROGATES:
        raise BitvoteError(
            f"unknown surrogate {spec!r}: choose one of {', '.join(sorted(_SURROGATES))}"
        )
    return _SURROGATES[key]()


class _SignFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, surrogate, scale):
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        ctx.scale = scale
        return sign(x)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return ctx.surrogate.backward(grad_out, x, ctx.scale), None, None


def binarize(x: torch.Tensor, surrogate: SurrogateLike = "ste", scale: float = 1.0) -> torch.Tensor:
    """``sign(x)`` with ``surrogate``'s derivative applied to ``u = x / scale``.

    ``dL/dx = dL/dy * F'(x / scale) / scale``: the chain-rule ``1/scale`` is part of the
    definition (SPEC.md, "Training through a voter").
    """
    check_finite(x)
    return _SignFn.apply(x, get_surrogate(surrogate), float(scale))


def ste_sign(x: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """Sign with the clipped straight-through estimator."""
    return binarize(x, Ste(clip))


def approx_sign(x: torch.Tensor) -> torch.Tensor:
    """Sign with Bi-Real's ApproxSign derivative."""
    return binarize(x, ApproxSign())


class _WeightSignFn(torch.autograd.Function):
    """sign(W) forward, clamp-STE backward: gradient passes where |W| <= 1 (ReActNet/Bi-Real)."""

    @staticmethod
    def forward(ctx, w):
        ctx.save_for_backward(w)
        return sign(w)

    @staticmethod
    def backward(ctx, grad_out):
        (w,) = ctx.saved_tensors
        return grad_out * (w.abs() <= 1.0).to(grad_out.dtype)


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel ``mean|W|`` (XNOR-Net's alpha), detached, shaped to broadcast on ``w``."""
    dims = tuple(range(1, w.dim()))
    return w.detach().abs().mean(dim=dims, keepdim=True)


def binarize_weight(w: torch.Tensor, scale: bool = False):
    """Binary weights ``sign(W)`` with the clamp-STE, and optionally their scale.

    Returns ``(w_bin, alpha)`` where ``alpha`` is the detached per-output-channel ``mean|W|``
    (shape ``(C_out,)``) when ``scale`` is true, else ``None``. The scale is returned apart
    from the +/-1 weights because a voter votes on the unscaled integer sum (SPEC.md).
    """
    check_finite(w, "weights")
    wb = _WeightSignFn.apply(w)
    alpha = weight_scale(w).flatten() if scale else None
    return wb, alpha


class _UnscaleGradFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w):
        alpha = weight_scale(w)
        ctx.save_for_backward(alpha.clamp_min(torch.finfo(alpha.dtype).tiny))
        return w.view_as(w)

    @staticmethod
    def backward(ctx, grad_out):
        (alpha,) = ctx.saved_tensors
        return grad_out / alpha


def unscale_weight_grad(w: torch.Tensor) -> torch.Tensor:
    """Identity forward; backward divides by the detached per-output-channel ``mean|W|``.

    A scaled popcount ``alpha * conv(x, sign(W))`` with a detached ``alpha`` has, by the
    chain rule, ``dL/dW = alpha * dL/d(alpha sign W) * 1{|W| <= 1}``. The reference ReActNet /
    Bi-Real code drops the ``alpha``: its weight is ``alpha sign(W)`` in the forward and
    ``clamp(W, -1, 1)`` in the backward. Applied to the latent weight before
    :func:`binarize_weight`, this function turns the first gradient into the second; the forward
    is unchanged bit for bit. An all-zero channel (``alpha = 0``) gets a zero gradient.
    """
    return _UnscaleGradFn.apply(w)
