"""Counted kernel-row votes as GEMMs (bitvote.nn.rowvote) against the oracle and the float path.

Votes must be bit-identical to the brute-force oracle; gradients equal to the float path's
chain rule (reduce_votes on leaf sums) up to fp32 summation order. Shapes cross the
implementation's boundaries: maps small enough for the block GEMMs alone and large enough
for the interior convolutions, every border class (padding 0-2, stride 2, dilation 2,
non-square maps), kernel rows of 2 taps (ties inside the interior) and of 3.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitvote import BinaryConv2d
from bitvote.nn import rowvote
from bitvote.voter import resolve

from oracle import binary_conv
from test_fastvote import close_fp32

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module")
def own_forward():
    """The counts from this module's own GEMMs: on the CPU the packed kernels would give them
    (test_packedvote_counts_match_the_gemms holds the two equal)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BITVOTE_PACKED_VOTE", "0")
        yield


def layer(C, Co, k, stride, padding, pad_value, tie, dilation=1, sigma="fanin", surrogate="approxsign", groups=1):
    return BinaryConv2d(C, Co, k, stride, padding, dilation, groups, voter=f"cm:P(M{k})", pad_value=pad_value,
                        tie=tie, sigma=sigma, surrogate=surrogate)


def run(conv, x, g, rows, monkeypatch):
    monkeypatch.setenv("BITVOTE_ROW_VOTE", "1" if rows else "0")
    monkeypatch.setenv("BITVOTE_NATIVE_VOTE", "0")
    x = x.clone().requires_grad_(True)
    conv.weight.grad = None
    y = conv(x)
    (y * g).sum().backward()
    return y.detach(), x.grad, conv.weight.grad.clone()


@st.composite
def case(draw, big=False):
    k = draw(st.sampled_from([2, 3]))
    padding = draw(st.integers(0, k - 1))
    lo = max(1, k - 2 * padding)
    hw = st.integers(11, 17) if big else st.integers(lo, 7)
    return dict(k=k, C=draw(st.integers(1, 5)), Co=draw(st.sampled_from([1, 2, 5])),
                stride=draw(st.sampled_from([1, 2])), padding=padding, H=draw(hw), W=draw(hw),
                N=draw(st.integers(1, 2)), pad_value=draw(st.sampled_from([0.0, 1.0, -1.0])),
                tie=draw(st.sampled_from([1, -1, "first"])), seed=draw(st.integers(0, 2**16)))


def inputs(c):
    torch.manual_seed(c["seed"])
    return torch.randint(-1, 2, (c["N"], c["C"], c["H"], c["W"])).float()  # zeros binarize to +1


@SETTINGS
@given(c=case())
def test_votes_match_oracle(c):
    conv = layer(c["C"], c["Co"], c["k"], c["stride"], c["padding"], c["pad_value"], c["tie"])
    x = inputs(c)
    assert rowvote.supports(resolve(f"cm:P(M{c['k']})", c["C"] * c["k"] ** 2, c["k"] ** 2, tie=c["tie"]),
                            conv.weight.shape)
    levels = [[c["k"]] * (c["C"] * c["k"]), [c["C"] * c["k"]]]
    want = binary_conv(x, conv.weight.detach(), c["stride"], c["padding"], c["pad_value"], levels,
                       [c["tie"], 1], "P", "cm")
    assert torch.equal(conv(x), want)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(c=case(big=True))
def test_interior_convolutions_match_oracle(c):
    conv = layer(c["C"], c["Co"], c["k"], c["stride"], c["padding"], c["pad_value"], c["tie"])
    x = inputs(c)
    levels = [[c["k"]] * (c["C"] * c["k"]), [c["C"] * c["k"]]]
    want = binary_conv(x, conv.weight.detach(), c["stride"], c["padding"], c["pad_value"], levels,
                       [c["tie"], 1], "P", "cm")
    assert torch.equal(conv(x), want)


@SETTINGS
@given(c=st.one_of(case(), case(big=True)),
       sigma=st.sampled_from(["fanin", "valid", "unit", "2", "fanin,leaf=2", "0.5,leaf=3"]),
       surrogate=st.sampled_from(["approxsign", "ste"]), dilation=st.sampled_from([1, 2]))
def test_gradients_match_float_path(c, sigma, surrogate, dilation):
    span = dilation * (c["k"] - 1) + 1
    if min(c["H"], c["W"]) + 2 * c["padding"] < span:
        return
    conv = layer(c["C"], c["Co"], c["k"], c["stride"], c["padding"], c["pad_value"], c["tie"], dilation,
                 sigma, surrogate)
    x = inputs(c)
    with torch.no_grad():
        shape = conv(x).shape
    g = torch.randn(shape, generator=torch.Generator().manual_seed(c["seed"]))
    mp = pytest.MonkeyPatch()
    try:
        got = run(conv, x, g, True, mp)
        want = run(conv, x, g, False, mp)
    finally:
        mp.undo()
    assert torch.equal(got[0], want[0])
    assert close_fp32(got[1], want[1]), (got[1] - want[1]).abs().max()
    assert close_fp32(got[2], want[2]), (got[2] - want[2]).abs().max()


@pytest.mark.parametrize("H,C,Co,stride", [(32, 8, 8, 1), (32, 8, 16, 2), (16, 16, 32, 2), (8, 32, 16, 1),
                                           (4, 64, 64, 1), (33, 4, 6, 2)])
def test_model_sizes_match_float_path(H, C, Co, stride, monkeypatch):
    """The layer shapes of a ReActNet-18 at width 1/8: interior convolutions and block GEMMs."""
    torch.manual_seed(H + C)
    conv = layer(C, Co, 3, stride, 1, 0.0, "first")
    x = torch.randn(4, C, H, H)
    g = torch.randn(conv(x).shape)
    calls = []
    real = rowvote._interior_forward
    monkeypatch.setattr(rowvote, "_interior_forward", lambda *a: calls.append(1) or real(*a))
    got, want = run(conv, x, g, True, monkeypatch), run(conv, x, g, False, monkeypatch)
    assert bool(calls) == ((H // stride) ** 2 >= rowvote._CONV_POSITIONS)  # both paths are covered
    assert torch.equal(got[0], want[0])
    assert close_fp32(got[1], want[1]) and close_fp32(got[2], want[2])


def test_conv_groups_run_per_group(monkeypatch):
    torch.manual_seed(3)
    conv = layer(4, 6, 3, 1, 1, 0.0, "first", groups=2)
    x = torch.randn(2, 4, 12, 12)
    g = torch.randn(2, 6, 12, 12)
    got, want = run(conv, x, g, True, monkeypatch), run(conv, x, g, False, monkeypatch)
    assert torch.equal(got[0], want[0])
    assert close_fp32(got[1], want[1]) and close_fp32(got[2], want[2])


def test_supports_only_counted_kernel_rows():
    n, taps = 4 * 9, 9
    assert rowvote.supports(resolve("cm:P(M3)", n, taps), (8, 4, 3, 3))
    for spec in ("cm:M(M3)", "cm:P(M9)", "P(M4)", "cm:M4(M3(M3))", "tap", "mv"):
        h = resolve(spec, n, taps)
        assert not (h is not None and rowvote.supports(h, (8, 4, 3, 3))), spec


def test_default_on_and_switch_off(monkeypatch):
    """The layer takes the GEMM path by default where the bit-sliced backward does not take the
    tree (BITVOTE_CHANNEL_VOTE=0 here; a CPU without AVX-512), that backward where it does
    (faster at every measured shape); BITVOTE_ROW_VOTE=0 sends it elsewhere."""
    from bitvote.nn import chanvote, fastvote

    calls = []
    real = rowvote.conv_votes
    monkeypatch.setattr(rowvote, "conv_votes", lambda *a, **k: calls.append(1) or real(*a, **k))
    conv = layer(3, 4, 3, 1, 1, 0.0, "first")
    x = torch.randn(1, 3, 6, 6)
    monkeypatch.setenv("BITVOTE_CHANNEL_VOTE", "0")
    y = conv(x)
    assert calls == [1]
    monkeypatch.setenv("BITVOTE_ROW_VOTE", "0")
    assert torch.equal(conv(x), y) and calls == [1]
    monkeypatch.setenv("BITVOTE_ROW_VOTE", "1")
    monkeypatch.setenv("BITVOTE_CHANNEL_VOTE", "1")
    chan = fastvote.enabled() and chanvote.takes(conv.hierarchy, 3, 9)
    assert torch.equal(conv(x), y) and calls == ([1] if chan else [1, 1])


def test_votes_exact_under_bf16_autocast():
    torch.manual_seed(0)
    conv = layer(5, 6, 3, 1, 1, 0.0, "first")
    x = torch.randn(2, 5, 16, 16)
    want = conv(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = conv(x)
    assert torch.equal(got.float(), want)


def test_tables_built_under_inference_mode(monkeypatch):
    """The polynomials come from an autograd probe: a first call under inference mode or
    no_grad (evaluation) must still build them."""
    monkeypatch.setattr(rowvote, "_TABLES", {})
    torch.manual_seed(1)
    conv = layer(3, 4, 3, 1, 1, 0.0, "first", sigma="valid")
    x = torch.randn(2, 3, 9, 9)
    with torch.inference_mode():
        got = conv(x)
    monkeypatch.setattr(rowvote, "_TABLES", {})
    with torch.no_grad():
        again = conv(x)
    monkeypatch.setenv("BITVOTE_ROW_VOTE", "0")
    assert torch.equal(got, again) and torch.equal(got, conv(x))


@pytest.mark.parametrize("H,stride,pad_value,tie", [(9, 1, 0.0, "first"), (16, 2, 1.0, 1), (12, 1, -1.0, -1)])
def test_packedvote_counts_match_the_gemms(H, stride, pad_value, tie, monkeypatch):
    """On the CPU the forward's counts come from the packed kernels; the backward is this
    module's either way, so the step is the same numbers."""
    torch.manual_seed(H)
    conv = layer(6, 5, 3, stride, 1, pad_value, tie)
    x = torch.randn(2, 6, H, H)
    g = torch.randn(conv(x).shape)
    want = run(conv, x, g, True, monkeypatch)
    monkeypatch.setenv("BITVOTE_PACKED_VOTE", "1")
    calls = []
    real = rowvote._interior_forward
    monkeypatch.setattr(rowvote, "_interior_forward", lambda *a: calls.append(1) or real(*a))
    got = run(conv, x, g, True, monkeypatch)
    assert not calls  # the GEMMs did not run
    for a, b in zip(got, want):
        assert torch.equal(a, b)
