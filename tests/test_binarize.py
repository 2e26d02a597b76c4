"""Binarizers and surrogate gradients against their formulas."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bitvote import BinaryConv2d, BitvoteError
from bitvote.binarize import ApproxSign, Ste, approx_sign, binarize, binarize_weight, get_surrogate, sign, ste_sign

floats = st.floats(-3, 3, allow_nan=False, width=32)


def test_zero_and_negative_zero_are_plus_one():
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 2.0, -2.0])
    assert sign(x).tolist() == [1, 1, 1, -1, 1, -1]
    assert approx_sign(x).tolist() == [1, 1, 1, -1, 1, -1]


def test_nan_is_an_error():
    with pytest.raises(BitvoteError, match="NaN"):
        ste_sign(torch.tensor([0.5, float("nan")]))


@settings(max_examples=50, deadline=None)
@given(st.lists(floats, min_size=1, max_size=20))
def test_ste_gradient_is_clipped_identity(vals):
    x = torch.tensor(vals, requires_grad=True)
    ste_sign(x).sum().backward()
    want = [1.0 if abs(v) <= 1 else 0.0 for v in x.detach().tolist()]
    assert x.grad.tolist() == want


@settings(max_examples=50, deadline=None)
@given(st.lists(floats, min_size=1, max_size=20))
def test_approxsign_gradient_is_triangle(vals):
    x = torch.tensor(vals, requires_grad=True)
    approx_sign(x).sum().backward()
    want = torch.tensor([max(0.0, 2 - 2 * abs(v)) for v in x.detach().tolist()])
    assert torch.allclose(x.grad, want)


def test_approxsign_is_derivative_of_polynomial():
    """F'(u) matches a finite difference of F(u) = 2u + u^2 / 2u - u^2 on [-1, 1)."""
    def Fpoly(u):
        return torch.where(u < -1, -torch.ones_like(u), torch.where(u < 0, 2 * u + u * u,
                           torch.where(u < 1, 2 * u - u * u, torch.ones_like(u))))
    u = torch.linspace(-1.5, 1.5, 301, dtype=torch.float64)
    h = 1e-6
    fd = (Fpoly(u + h) - Fpoly(u - h)) / (2 * h)
    mask = (u - (-1)).abs() > 1e-3
    mask &= (u.abs() > 1e-3) & ((u - 1).abs() > 1e-3)
    assert torch.allclose(ApproxSign().grad(u)[mask], fd[mask], atol=1e-5)


def test_scaled_binarize_chain_rule():
    x = torch.tensor([0.5, 2.0, -3.0, 5.0], requires_grad=True)
    binarize(x, "approxsign", scale=4.0).sum().backward()
    u = x.detach() / 4
    assert torch.allclose(x.grad, (2 - 2 * u.abs()).clamp(min=0) / 4)


def test_weight_binarization_and_scale():
    w = torch.tensor([[0.5, -2.0, 0.0], [-0.1, 0.2, 0.3]], requires_grad=True)
    wb, alpha = binarize_weight(w, scale=True)
    assert wb.tolist() == [[1, -1, 1], [-1, 1, 1]]
    assert torch.allclose(alpha, torch.tensor([2.5 / 3, 0.2]))
    assert not alpha.requires_grad
    wb.sum().backward()
    assert w.grad.tolist() == [[1, 0, 1], [1, 1, 1]]


def test_surrogate_by_name_or_object():
    assert isinstance(get_surrogate("ApproxSign"), ApproxSign)
    assert get_surrogate(Ste(0.5)).clip == 0.5
    with pytest.raises(BitvoteError, match="unknown surrogate"):
        get_surrogate("tanh")


class _RefSign(torch.autograd.Function):
    """Test-side sign with an ApproxSign backward."""

    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return torch.where(u >= 0, torch.ones_like(u), -torch.ones_like(u))

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        return g * (2 - 2 * u.abs()).clamp(min=0)


class _RefSte(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u):
        ctx.save_for_backward(u)
        return torch.where(u >= 0, torch.ones_like(u), -torch.ones_like(u))

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        return g * (u.abs() <= 1).to(g.dtype)


@pytest.mark.parametrize("stride,pad", [(1, 1), (2, 1), (1, 0)])
def test_mv_gradient_matches_reference(stride, pad):
    """dL/ds = dL/dv * F'(s / sigma) / sigma with sigma = sqrt(n), through STE'd inputs/weights."""
    torch.manual_seed(0)
    C, Co = 5, 3
    layer = BinaryConv2d(C, Co, 3, stride, pad, voter="mv")
    x = (torch.rand(2, C, 6, 6) * 2.4 - 1.2).requires_grad_()
    g = torch.randn(2, Co, (6 + 2 * pad - 3) // stride + 1, (6 + 2 * pad - 3) // stride + 1)
    (layer(x) * g).sum().backward()
    gx, gw = x.grad.clone(), layer.weight.grad.clone()

    x2 = x.detach().clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    s = F.conv2d(_RefSte.apply(x2), _RefSte.apply(w2), stride=stride, padding=pad)
    v = _RefSign.apply(s / math.sqrt(C * 9))
    (v * g).sum().backward()
    assert torch.equal(layer(x), v)
    assert torch.allclose(gx, x2.grad, atol=1e-5) and torch.allclose(gw, w2.grad, atol=1e-5)


def test_tap_hmv_gradient_matches_reference():
    """Two levels: leaf per tap (sigma = sqrt(C)), root over 9 taps (sigma = 3)."""
    torch.manual_seed(1)
    C, Co = 4, 2
    layer = BinaryConv2d(C, Co, 3, 1, 1, voter="tap")
    x = (torch.rand(2, C, 5, 5) * 2.4 - 1.2).requires_grad_()
    g = torch.randn(2, Co, 5, 5)
    (layer(x) * g).sum().backward()

    x2 = x.detach().clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    xb, wb = _RefSte.apply(x2), _RefSte.apply(w2)
    leaf_votes = []
    valid = F.conv2d(torch.ones(1, C, 5, 5), torch.ones(9, C, 3, 3) * torch.eye(9).view(9, 1, 3, 3), padding=1)
    for t in range(9):
        mask = torch.zeros(1, 1, 3, 3)
        mask.view(-1)[t] = 1
        s = F.conv2d(xb, wb * mask, padding=1)
        v = _RefSign.apply(s / math.sqrt(C))
        leaf_votes.append(torch.where(valid[:, t : t + 1] > 0, v, torch.zeros_like(v)))
    root = _RefSign.apply(sum(leaf_votes) / 3.0)
    (root * g).sum().backward()
    assert torch.equal(layer(x), root)
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)
    assert torch.allclose(layer.weight.grad, w2.grad, atol=1e-5)


@pytest.mark.parametrize("stride,groups", [(1, 2), (2, 3), (1, 3), (2, 2)])
def test_grouped_hmv_gradient_matches_reference(stride, groups):
    """Leaves spanning several taps (one matmul row per leaf): M{G}(M{n/G}) in tap-major order."""
    torch.manual_seed(4)
    C, Co, H = 4, 3, 5
    layer = BinaryConv2d(C, Co, 3, stride, 1, voter=f"groups={groups}")
    x = (torch.rand(2, C, H, H) * 2.4 - 1.2).requires_grad_()
    Ho = (H + 2 - 3) // stride + 1
    g = torch.randn(2, Co, Ho, Ho)
    (layer(x) * g).sum().backward()

    x2 = x.detach().clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    xb, wb = _RefSte.apply(x2), _RefSte.apply(w2)
    # tap-major terms: unfold is channel-major (c * 9 + t); reorder to t * C + c
    xu = F.unfold(xb, 3, padding=1, stride=stride).view(2, C, 9, -1).transpose(1, 2).reshape(2, 9 * C, -1)
    wt = wb.view(Co, C, 9).transpose(1, 2).reshape(Co, 9 * C)
    terms = xu[:, None] * wt[None, :, :, None]  # (N, Co, n, L); padded terms are 0
    n = 9 * C
    valid = F.unfold(torch.ones(1, C, H, H), 3, padding=1, stride=stride).view(1, C, 9, -1).transpose(1, 2)
    valid = valid.reshape(1, 1, n, -1)
    leaves = [torch.where(ok.sum(2) > 0, _RefSign.apply(t.sum(2) / math.sqrt(n // groups)), 0.0)  # no valid term: abstain
              for t, ok in zip(terms.split(n // groups, 2), valid.split(n // groups, 2))]
    root = _RefSign.apply(sum(leaves) / math.sqrt(groups)).view(2, Co, Ho, Ho)
    (root * g).sum().backward()
    assert torch.equal(layer(x), root)
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)
    assert torch.allclose(layer.weight.grad, w2.grad, atol=1e-5)


def test_sigma_rules_change_the_gradient_only():
    torch.manual_seed(2)
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    outs, grads = [], []
    for sigma in ["fanin", "valid", "unit", 2.0]:
        layer = BinaryConv2d(8, 2, 3, 1, 1, voter="tap", sigma=sigma)
        torch.manual_seed(3)
        layer.reset_parameters()
        x.grad = None
        y = layer(x)
        y.sum().backward()
        outs.append(y.detach())
        grads.append(x.grad.clone())
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    assert not torch.allclose(grads[0], grads[2])
    with pytest.raises(BitvoteError, match="sigma"):
        BinaryConv2d(8, 2, 3, voter="mv", sigma="wide")
