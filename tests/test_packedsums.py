"""The popcount forward on the packed conv kernels (bitvote.nn.packedvote.conv_sums).

From 32 input channels a popcount layer's forward sums come from XOR-popcount on packed bits.
They are exact integers, the numbers the float conv gives, so the output, every gradient and
a whole training step must be bit-identical to the float conv's; input that is not +/-1 (a
layer told its input is binary when it is not) must keep the float conv's numbers.
"""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitvote import BinaryConv2d, models
from bitvote.nn import functional as BF
from bitvote.nn import packedvote

pytestmark = pytest.mark.skipif(not packedvote.available(), reason="no C compiler for the packed kernels")


@pytest.fixture
def calls(monkeypatch):
    """How many popcounts the packed kernels computed."""
    seen = []
    real = packedvote.conv_sums

    def counted(*a, **k):
        seen.append(1)
        return real(*a, **k)

    monkeypatch.setattr(packedvote, "conv_sums", counted)
    return seen


def _step(layer, x0, g, reference):
    x = x0.clone().requires_grad_(True)
    layer.weight.grad = None
    if reference:
        with BF.reference_votes():
            y = layer(x)
    else:
        y = layer(x)
    (y * g).sum().backward()
    return y.detach(), x.grad, layer.weight.grad.clone()


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # calls: cleared per example
@given(C=st.sampled_from([32, 33, 63, 64, 65, 96, 130]), Co=st.integers(1, 20), k=st.sampled_from([2, 3, (1, 3), 5]),
       stride=st.sampled_from([1, 2, 3]), padding=st.sampled_from([0, 1, 2]),
       pad_value=st.sampled_from([0.0, 1.0, -1.0]), scale=st.booleans(), binary_in=st.booleans(),
       H=st.integers(3, 9), W=st.integers(3, 9), seed=st.integers(0, 2**16))
def test_packed_popcount_step_equals_the_float_conv(C, Co, k, stride, padding, pad_value, scale, binary_in, H, W,
                                                    seed, calls):
    """Output, input and weight gradients of one layer: torch.equal with the float conv, at
    word boundaries, every padding mode and stride, scaled or not, input binarized by the layer
    (``input_surrogate`` ste) or declared binary (``None``)."""
    kh, kw = (k, k) if isinstance(k, int) else k
    if H + 2 * padding < kh or W + 2 * padding < kw:
        return
    torch.manual_seed(seed)
    layer = BinaryConv2d(C, Co, (kh, kw), stride, padding, pad_value=pad_value, weight_scale=scale,
                         input_surrogate="ste" if binary_in else None)
    x0 = torch.randn(2, C, H, W)
    if not binary_in:
        x0 = torch.where(x0 >= 0, 1.0, -1.0)
    y = layer(x0)
    g = torch.randn_like(y)
    del calls[:]
    got = _step(layer, x0, g, reference=False)
    assert len(calls) == 1
    want = _step(layer, x0, g, reference=True)
    assert len(calls) == 1  # the reference ran the float conv
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_input_that_is_not_binary_keeps_the_float_conv(calls):
    """A layer told its input is +/-1 (``input_surrogate=None``) that gets real values computes
    what the float conv computes, not the sums of their signs."""
    layer = BinaryConv2d(32, 4, 3, 1, 1, input_surrogate=None)
    x = torch.where(torch.randn(2, 32, 5, 5) >= 0, 1.0, -1.0)
    for bad in (0.5, 0.0, -0.0, 3.0, float("inf")):
        xr = x.clone()
        xr[1, 31, 4, 4] = bad
        want = F.conv2d(xr, torch.where(layer.weight >= 0, 1.0, -1.0), None, 1, 1)
        got = layer(xr)
        assert torch.equal(got, want), bad
    assert not calls
    assert torch.equal(layer(x), F.conv2d(x, torch.where(layer.weight >= 0, 1.0, -1.0), None, 1, 1))
    assert len(calls) == 1


def test_small_layers_and_other_dtypes_keep_the_float_conv(calls, monkeypatch):
    x = torch.randn(2, 16, 6, 6)
    BinaryConv2d(16, 4, 3, 1, 1)(x)  # too few channels to pay
    BinaryConv2d(64, 4, 1)(torch.randn(2, 64, 6, 6))  # 1x1 kernels: not measured to pay
    BinaryConv2d(64, 4, 3, 1, 1, groups=2)(torch.randn(2, 64, 6, 6))
    BinaryConv2d(64, 4, 3, 1, 1).double()(torch.randn(2, 64, 6, 6, dtype=torch.float64))
    BinaryConv2d(64, 4, 3, 1, 2, dilation=2)(torch.randn(2, 64, 6, 6))
    BinaryConv2d(64, 4, 3, 1, 1)(torch.randn(0, 64, 6, 6))  # an empty batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = BinaryConv2d(64, 4, 3, 1, 1)(torch.randn(2, 64, 6, 6))
    assert y.dtype == torch.bfloat16  # autocast's conv, as before
    monkeypatch.setenv("BITVOTE_PACKED_VOTE", "0")
    BinaryConv2d(64, 4, 3, 1, 1)(torch.randn(2, 64, 6, 6))
    assert not calls


def test_no_grad_inference_mode_and_double_backward(calls):
    torch.manual_seed(0)
    layer = BinaryConv2d(64, 8, 3, 2, 1, weight_scale=True)
    x = torch.randn(3, 64, 7, 7)
    with BF.reference_votes():
        want = layer(x)
    with torch.no_grad():
        assert torch.equal(layer(x), want)
    with torch.inference_mode():
        assert torch.equal(layer(x), want)
    assert len(calls) == 2
    # a gradient of a gradient (through the backward's own convolution_backward)
    outs = []
    for ref in (False, True):
        xr = x.clone().requires_grad_(True)
        ctx = BF.reference_votes() if ref else contextlib.nullcontext()
        with ctx:
            y = layer(xr)
        (gx,) = torch.autograd.grad((y * y).sum(), xr, create_graph=True)
        (ggx,) = torch.autograd.grad(gx.square().sum(), xr)
        outs.append((gx.detach(), ggx))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_channels_last_input(calls):
    layer = BinaryConv2d(48, 8, 3, 1, 1)
    x = torch.randn(2, 48, 6, 6).contiguous(memory_format=torch.channels_last)
    with BF.reference_votes():
        want = layer(x)
    assert torch.equal(layer(x), want) and len(calls) == 1


@pytest.mark.parametrize("name", ["reactnet18", "birealnet18", "xnornet18"])
def test_training_step_of_a_model_is_unchanged(name, calls):
    """A whole popcount training step at width 1/2 (32 channels and more): same loss and the
    same gradient of every parameter, bit for bit, as with the float conv."""
    torch.manual_seed(0)
    model = models.create(name, width=0.5).train()
    x = torch.randn(4, 3, 16, 16)
    out = []
    for ref in (False, True):
        model.zero_grad(set_to_none=True)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        if ref:
            with BF.reference_votes():
                loss = model(x).square().mean()
        else:
            loss = model(x).square().mean()
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        model.load_state_dict(state)  # BN running statistics moved: undo for the second pass
    assert calls
    assert torch.equal(out[0][0], out[1][0])
    assert all(torch.equal(a, b) for a, b in zip(out[0][1], out[1][1]))


@pytest.mark.parametrize("size", [8, 32])
@pytest.mark.parametrize("pad_value", [0.0, -1.0])
@pytest.mark.parametrize("scale", [False, True])
def test_both_epilogues_keep_every_bit(scale, pad_value, size, calls):
    """From 32x32 output pixels the sums (times the scale) come from the kernel's float
    epilogue, below from its integers: the same numbers either way, zeros' signs included (an
    all-zero weight channel has scale 0, and a negative sum times 0 is -0.0 in the product)."""
    torch.manual_seed(1)
    layer = BinaryConv2d(40, 9, 3, 1, 1, weight_scale=scale, pad_value=pad_value, input_surrogate=None)
    with torch.no_grad():
        layer.weight[3] = 0.0
    x0 = torch.where(torch.randn(2, 40, size, size) >= 0, 1.0, -1.0)
    g = torch.randn(2, 9, size, size)
    got = _step(layer, x0, g, reference=False)
    want = _step(layer, x0, g, reference=True)
    assert len(calls) == 1
    for a, b in zip(got, want):
        assert torch.equal(a, b) and torch.equal(torch.signbit(a), torch.signbit(b))
    if scale:
        assert torch.signbit(got[0][:, 3]).any()  # the case the -0.0 bias exists for


def test_layers_of_one_shape_keep_their_own_scales(calls):
    """Layers of one shape share a cached packed layer; each call's scale (and no scale) is
    its own, in the float epilogue (32x32 outputs) and the int one (8x8)."""
    torch.manual_seed(2)
    for size in (32, 8):
        layers = [BinaryConv2d(32, 6, 3, 1, 1, weight_scale=scale, input_surrogate=None)
                  for scale in (True, True, False)]
        with torch.no_grad():
            layers[1].weight.mul_(5.0)  # another scale, the same signs: only the scale tells them apart
        x = torch.where(torch.randn(2, 32, size, size) >= 0, 1.0, -1.0)
        with BF.reference_votes():
            want = [m(x) for m in layers]
        for _ in range(2):
            for m, w in zip(layers, want):
                assert torch.equal(m(x), w)
    assert len(calls) == 12
