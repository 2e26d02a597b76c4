"""bitvote.nn.layers: the weight-gradient switch (scaled by mean|W| or the reference's unscaled)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitvote import BinaryConv2d, BinaryLinear, BitvoteError, models
from bitvote.binarize import weight_scale
from bitvote.nn.layers import set_weight_grad


def _grads(layer, x):
    layer.weight.grad = None
    y = layer(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y.detach(), layer.weight.grad.clone()


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), cin=st.integers(1, 6), cout=st.integers(1, 5), k=st.sampled_from([1, 3]))
def test_unscaled_weight_grad_differs_exactly_by_mean_abs_w(seed, cin, cout, k):
    """Same forward bit for bit; the scaled gradient is the unscaled one times mean|W| per channel."""
    torch.manual_seed(seed)
    a = BinaryConv2d(cin, cout, k, padding=k // 2, weight_scale=True, dtype=torch.float64)
    b = BinaryConv2d(cin, cout, k, padding=k // 2, weight_scale=True, weight_grad="unscaled", dtype=torch.float64)
    with torch.no_grad():
        a.weight.uniform_(-1.5, 1.5)  # some latent weights outside the STE's |W| <= 1 window
        b.weight.copy_(a.weight)
    x = torch.randn(2, cin, 5, 5, dtype=torch.float64)
    ya, ga = _grads(a, x)
    yb, gb = _grads(b, x)
    assert torch.equal(ya, yb)
    alpha = weight_scale(a.weight)
    torch.testing.assert_close(ga, alpha * gb, rtol=1e-12, atol=1e-15)
    mask = (a.weight.abs() <= 1).to(gb.dtype)
    assert torch.equal(gb * (1 - mask), torch.zeros_like(gb))  # the clamp-STE window is kept


def test_reference_formula_for_unscaled_grad():
    """unscaled == the reference code: forward alpha*sign(W), backward through clamp(W, -1, 1)."""
    torch.manual_seed(0)
    layer = BinaryConv2d(3, 4, 3, padding=1, weight_scale=True, weight_grad="unscaled", dtype=torch.float64)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64).sign()
    _, got = _grads(layer, x)
    w = layer.weight.detach().clone().requires_grad_()
    alpha = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    wq = (alpha * w.sign()).detach() - w.clamp(-1, 1).detach() + w.clamp(-1, 1)
    y = torch.nn.functional.conv2d(x, wq, padding=1)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    torch.testing.assert_close(got, w.grad, rtol=1e-10, atol=1e-12)


def test_switch_changes_nothing_without_a_scaled_popcount():
    torch.manual_seed(1)
    for kw in ({"weight_scale": False}, {"weight_scale": True, "voter": "mv"}):
        a = BinaryConv2d(4, 3, 3, padding=1, **kw)
        b = BinaryConv2d(4, 3, 3, padding=1, weight_grad="unscaled", **kw)
        b.load_state_dict(a.state_dict())
        x = torch.randn(2, 4, 5, 5)
        assert torch.equal(_grads(a, x)[1], _grads(b, x)[1]), kw


def test_linear_layer_and_model_switch():
    torch.manual_seed(2)
    a = BinaryLinear(8, 3, weight_scale=True)
    b = BinaryLinear(8, 3, weight_scale=True, weight_grad="unscaled")
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 8)
    ga, gb = _grads(a, x)[1], _grads(b, x)[1]
    torch.testing.assert_close(ga, weight_scale(a.weight) * gb)
    assert "weight_grad=unscaled" in repr(b) and "weight_grad" not in repr(a)
    m = set_weight_grad(models.create("reactnet18", width=0.125), "unscaled")
    layers = [l for _, l in models.voter_layers(m)]
    assert layers and all(l.weight_grad == "unscaled" for l in layers)
    with pytest.raises(BitvoteError, match="weight_grad must be one of scaled, unscaled"):
        set_weight_grad(m, "half")
    with pytest.raises(BitvoteError, match="weight_grad"):
        BinaryConv2d(2, 2, 1, weight_grad="none")
