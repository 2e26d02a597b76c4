"""The bit-sliced backward (bitvote.nn.chanvote) against the float path and vote.c's paths.

Trees whose voters below the root each lie inside one input channel (channel-major) or one
tap (tap-major, one or two levels deep) take it; gradients must equal the float path's chain
rule (SPEC.md's surrogate) up to fp32 summation order, votes are untouched. Sizes sit on the
kernel's boundaries: output channels around its 64-bit words and 16-lane vectors, blocks of 8
(image, position) pairs of one border pattern, programs whose leaves lose taps at zero
padding, factor products of one and of several values; for tap-major trees also input
channels around the 8-channel loads, counters over more than 15 inputs, several voters per
tap and per-tap voters whose factors take many values.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitvote import BinaryConv2d
from bitvote.nn import chanvote, fastvote

from native_helpers import close_fp32, run_layer

pytestmark = pytest.mark.skipif(not (fastvote.available() and chanvote.available()),
                                reason="no C compiler for the native vote kernels")

TIES = [1, -1, "first"]
SIGMAS = ["fanin", "valid", "unit", 0.5, 2.0, "fanin,leaf=2", "valid,leaf=3", "0.5,leaf=1.5"]


def trees(C, k):
    """(spec, levels written) of per-channel trees of a k x k kernel over C channels."""
    if k == 3:
        return [(f"cm:M{C}(M3(M3))", 3), (f"cm:M{C}(M9)", 2), (f"cm:M{3 * C}(M3)", 2), (f"cm:P{C}(M3(M3))", 3),
                (f"cgroups={C}", 2), (f"cm:P{3 * C}(M3)", 2)]
    return [(f"cm:M{C}(M2(M2))", 3), (f"cm:M{2 * C}(M2)", 2), (f"cm:M{C}(M4)", 2), (f"cm:P{C}(M2(M2))", 3)]  # cm:P(M{kw}): rowvote's


@pytest.fixture
def taken(monkeypatch):
    """Counts the backwards the channel-major kernel answered."""
    calls = {"ran": 0, "declined": 0}
    real = chanvote.backward

    def counted(*a):
        got = real(*a)
        calls["ran" if got is not None else "declined"] += 1
        return got

    monkeypatch.setattr(chanvote, "backward", counted)
    return calls


def grads(layer, x, g, mp, native, channel=True):
    """The layer's votes and gradients; ``channel``: through this kernel wherever it applies
    (forced, so that machines without AVX-512 test it too), else the term loop."""
    mp.setenv("BITVOTE_CHANNEL_VOTE", "all" if channel else "0")
    return run_layer(layer, x, g, native, mp)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data(), sigma=st.sampled_from(SIGMAS), surrogate=st.sampled_from(["approxsign", "ste"]))
def test_channel_vote_matches_float_path_and_term_loop(taken, data, sigma, surrogate):
    k = data.draw(st.sampled_from([2, 3]))
    C = data.draw(st.integers(1, 5))
    spec, nties = data.draw(st.sampled_from(trees(C, k)))
    # one-channel trees with a one-input root are plain majorities: the term loop's, not this kernel's
    check_tree(taken, data, C, k, spec, nties, sigma, surrogate, hmax=7,
               expect=lambda h: chanvote.per_channel(h, k * k) is not None)


def check_tree(taken, data, C, k, spec, nties, sigma, surrogate, hmax, expect, env=()):
    """One drawn layer of ``spec`` through this kernel (``expect(hierarchy)``: whether it takes
    it), the float path and vote.c's default paths: equal votes, gradients within fp32 rounding.
    ``env``: settings for the first two runs (the float path's and this kernel's)."""
    Co = data.draw(st.sampled_from([1, 5, 16, 17, 63, 64, 65, 130]))
    stride = data.draw(st.sampled_from([1, 2]))
    padding = data.draw(st.integers(0, k - 1))
    H, W = data.draw(st.integers(max(1, k - 2 * padding), hmax)), data.draw(st.integers(max(1, k - 2 * padding), hmax))
    N = data.draw(st.integers(1, 3))
    tie = ",".join(str(data.draw(st.sampled_from(TIES))) for _ in range(nties))
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    layer = BinaryConv2d(C, Co, k, stride, padding, voter=spec, tie=tie, sigma=sigma, surrogate=surrogate,
                         pad_value=data.draw(st.sampled_from([0.0, 1.0, -1.0])))
    x = torch.randn(N, C, H, W)
    if data.draw(st.booleans()):  # small integers: ties at every level
        x = torch.randint(-1, 2, x.shape).float()
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    g = torch.randn(N, Co, Ho, Wo)
    threads = torch.get_num_threads()
    torch.set_num_threads(data.draw(st.sampled_from([1, 2])))
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name, value in env:
                mp.setenv(name, value)
            y0, gx0, gw0 = grads(layer, x, g, mp, native=False)
            before = taken["ran"]
            y1, gx1, gw1 = grads(layer, x, g, mp, native=True)
            ran = taken["ran"] - before
            for name, _ in env:
                mp.delenv(name)
            _, gx2, gw2 = grads(layer, x, g, mp, native=True, channel=False)
    finally:
        torch.set_num_threads(threads)
    assert ran == expect(layer.hierarchy), (spec, layer.hierarchy.describe(), taken)
    assert torch.equal(y0, y1)
    assert close_fp32(gx1, gx0) and close_fp32(gw1, gw0), (spec, Co, tie, sigma, surrogate, stride, padding)
    assert close_fp32(gx1, gx2) and close_fp32(gw1, gw2)


@pytest.mark.parametrize("spec,C,k", [("cm:M3(M3(M3))", 3, 3), ("cm:M2(M4(M4(M4)))", 2, 8)])
@pytest.mark.parametrize("Co,N,H", [(64, 3, 9), (200, 2, 10), (7, 5, 8)])
def test_blocks_of_one_border_pattern_across_images(taken, monkeypatch, spec, C, k, Co, N, H):
    """Pairs of (image, position) that share a border pattern fill blocks of 8 across images; a
    thread's last block is partial; an 8 x 8 kernel has 64 taps (one word of live taps)."""
    torch.manual_seed(Co + N)
    layer = BinaryConv2d(C, Co, k, 1, k // 2, voter=spec, tie="first")
    x = torch.randint(-1, 2, (N, C, H, H + 1)).float()
    Ho, Wo = H + 2 * (k // 2) - k + 1, H + 1 + 2 * (k // 2) - k + 1
    g = torch.randn(N, Co, Ho, Wo)
    on_two_threads_as_the_float_path(taken, monkeypatch, layer, x, g)


def on_two_threads_as_the_float_path(taken, monkeypatch, layer, x, g):
    """The layer's backward on two threads: this kernel once, as the float path."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        y0, gx0, gw0 = grads(layer, x, g, monkeypatch, native=False)
        y1, gx1, gw1 = grads(layer, x, g, monkeypatch, native=True)
    finally:
        torch.set_num_threads(threads)
    assert taken["ran"] == 1
    assert torch.equal(y0, y1) and close_fp32(gx1, gx0) and close_fp32(gw1, gw0)


def test_too_many_factor_products_fall_back_to_the_term_loop(taken, monkeypatch):
    """Six levels of 2-input voters whose factors each take two values (sigma 4: s = 0 and
    s = +/-2 both pass) give a leaf up to 2**6 products, more than 32 of them over 64 output
    channels: the kernel declines, the term loop answers."""
    torch.manual_seed(0)
    layer = BinaryConv2d(2, 64, 8, 1, 0, voter="cm:M2(M2(M2(M2(M2(M2(M2))))))", tie="first", sigma=4.0)
    x = torch.randint(-1, 2, (2, 2, 9, 9)).float()
    g = torch.randn(2, 64, 2, 2)
    y0, gx0, gw0 = grads(layer, x, g, monkeypatch, native=False)
    y1, gx1, gw1 = grads(layer, x, g, monkeypatch, native=True)
    assert taken == {"ran": 0, "declined": 1}
    assert torch.equal(y0, y1) and close_fp32(gx1, gx0) and close_fp32(gw1, gw0)


def test_switch_and_which_trees_it_takes(taken, monkeypatch):
    def hier(spec, C=4, k=3):
        return BinaryConv2d(C, 3, k, voter=spec).hierarchy

    assert chanvote.per_channel(hier("cm:M4(M3(M3))"), 9) == (1, [3, 3])
    assert chanvote.per_channel(hier("cm:M12(M3)"), 9) == (3, [3])
    assert chanvote.per_channel(hier("cgroups=4"), 9) == (1, [9])
    for spec in ["tap", "tap,leaf=2", "mv", "cm:M2(M18)"]:  # tap-major, flat, or leaves across channels
        assert chanvote.per_channel(hier(spec), 9) is None, spec
    layer = BinaryConv2d(4, 3, 3, 1, 1, voter="cm:M4(M3(M3))", tie="first")
    x, g = torch.randn(2, 4, 5, 5), torch.randn(2, 3, 5, 5)
    _, gx1, gw1 = grads(layer, x, g, monkeypatch, native=True)
    assert taken["ran"] == 1
    _, gx0, gw0 = grads(layer, x, g, monkeypatch, native=True, channel=False)
    assert taken["ran"] == 1 and not chanvote.takes(layer.hierarchy, layer.in_channels, 9)
    assert close_fp32(gx1, gx0) and close_fp32(gw1, gw0)
    monkeypatch.setenv("BITVOTE_CHANNEL_VOTE", "1")  # the default: where it was built with AVX-512
    assert chanvote.takes(layer.hierarchy, layer.in_channels, 9) == chanvote._WIDE


def test_portable_build_matches(monkeypatch, tmp_path):
    """The build without AVX-512 (masked adds by lane masks) or any vector ISA gives the same
    gradients as the one this machine picked; it runs only when forced."""
    cases = [("cm:M5(M3(M3))", 5, 70, 1, "fanin"), ("cm:M15(M3)", 5, 33, 2, "0.5,leaf=1.5"), ("cm:P4(M9)", 4, 64, 1, "valid")]
    layers = []
    for spec, C, Co, stride, sigma in cases:
        torch.manual_seed(Co)
        layers.append((BinaryConv2d(C, Co, 3, stride, 1, voter=spec, tie="first", sigma=sigma),
                       torch.randint(-1, 2, (2, C, 6, 7)).float()))
    want = []
    for layer, x in layers:
        g = torch.randn_like(layer(x))
        want.append((g, grads(layer, x, g, monkeypatch, native=True)))
    monkeypatch.setenv("BITVOTE_CACHE", str(tmp_path))
    monkeypatch.setattr(chanvote, "_LIB", None)
    monkeypatch.setattr(chanvote, "_WIDE", chanvote._WIDE)
    monkeypatch.setattr(chanvote, "_flags", lambda: [[]])
    assert chanvote.available() and not chanvote._WIDE
    monkeypatch.setenv("BITVOTE_CHANNEL_VOTE", "1")
    assert not chanvote.takes(layers[0][0].hierarchy, layers[0][0].in_channels, 9)
    for (layer, x), (g, (_, gx0, gw0)) in zip(layers, want):
        monkeypatch.setenv("BITVOTE_CHANNEL_VOTE", "all")
        assert chanvote.takes(layer.hierarchy, layer.in_channels, 9)
        _, gx1, gw1 = run_layer(layer, x, g, True, monkeypatch)
        assert close_fp32(gx1, gx0) and close_fp32(gw1, gw0)


def test_missing_compiler_keeps_the_term_loop(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(chanvote, "_LIB", None)
    monkeypatch.setattr(chanvote, "_broken", None)
    layer = BinaryConv2d(3, 4, 3, 1, 1, voter="cm:M3(M3(M3))", tie="first")
    x, g = torch.randn(2, 3, 5, 5), torch.randn(2, 4, 5, 5)
    _, gx0, gw0 = grads(layer, x, g, monkeypatch, native=False)
    fastvote.available()  # the vote kernels are built already; only this one fails
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("BITVOTE_CACHE", str(tmp_path))
    _, gx1, gw1 = grads(layer, x, g, monkeypatch, native=True)
    err = capsys.readouterr().err
    assert err.count("channel-major vote kernel unavailable") == 1 and "Traceback" not in err
    assert close_fp32(gx1, gx0) and close_fp32(gw1, gw0)
    grads(layer, x, g, monkeypatch, native=True)
    assert "unavailable" not in capsys.readouterr().err  # said once


def test_an_input_without_slack_is_copied_not_overread(taken, monkeypatch):
    """The kernel reads 8 bytes from a pixel; a padded input whose storage ends at its last byte
    (not what the forward makes) is copied first, with the same gradients."""
    real = fastvote._signs_nhwc
    monkeypatch.setattr(fastvote, "_signs_nhwc", lambda *a: real(*a).clone())  # clone: no slack
    layer = BinaryConv2d(3, 70, 3, 1, 1, voter="cm:M3(M3(M3))", tie="first")
    x, g = torch.randn(2, 3, 5, 5), torch.randn(2, 70, 5, 5)
    _, gx0, gw0 = grads(layer, x, g, monkeypatch, native=False)
    _, gx1, gw1 = grads(layer, x, g, monkeypatch, native=True)
    assert taken["ran"] == 1 and close_fp32(gx1, gx0) and close_fp32(gw1, gw0)


@pytest.mark.parametrize("k,spec,dilation,padding,stride", [
    (3, "cm:M{C}(M3(M3))", 2, 2, 1), (3, "cm:M{C}(M3(M3))", (1, 2), (1, 2), (2, 1)),
    (5, "cm:M{C}(M5(M5))", 1, 2, 1), (5, "cm:P{C}(M5(M5))", 2, 3, 1), (4, "cm:M{C}(M4(M4))", 1, 1, 1)])
@pytest.mark.parametrize("pad_value", [0.0, 1.0])
def test_dilation_unequal_strides_and_larger_kernels(taken, monkeypatch, k, spec, dilation, padding, stride, pad_value):
    """Taps at dilated offsets, border patterns of unequal paddings and strides, 16-25 taps."""
    torch.manual_seed(k)
    C = 3
    layer = BinaryConv2d(C, 70, k, stride, padding, dilation=dilation, voter=spec.format(C=C), tie="first",
                         pad_value=pad_value)
    x = torch.randint(-1, 2, (2, C, 9, 11)).float()
    g = torch.randn_like(layer(x))
    y0, gx0, gw0 = grads(layer, x, g, monkeypatch, native=False)
    y1, gx1, gw1 = grads(layer, x, g, monkeypatch, native=True)
    assert taken["ran"] == 1
    assert torch.equal(y0, y1) and close_fp32(gx1, gx0) and close_fp32(gw1, gw0)


def tap_trees(C, k):
    """(spec, levels written) of tap-major trees of a k x k kernel over C channels: one voter or
    several per tap, with or without leaves below it, voted or counted at the root."""
    T = k * k
    specs = [("tap", 2)]
    for L in (2, 3, 4, 8):
        if C % L == 0 and C > L:
            specs += [(f"tap,leaf={L}", 3), (f"M{T * C // L}(M{L})", 2), (f"P{T * C // L}(M{L})", 2)]
    for G in (2, 4):
        if C % G == 0 and C > G:
            specs += [(f"tap,groups={G}", 3)]
    if C % 8 == 0 and C > 8:  # two voters per tap, each over C / 8 leaves of 4
        specs += [(f"M{2 * T}(M{C // 8}(M4))", 3)]
    return [(s, n) for s, n in specs if "M1(" not in s]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data(), sigma=st.sampled_from(SIGMAS), surrogate=st.sampled_from(["approxsign", "ste"]))
def test_tap_major_trees_match_float_path_and_vote_kernels(taken, data, sigma, surrogate):
    k = data.draw(st.sampled_from([1, 2, 3]))
    C = data.draw(st.sampled_from([2, 3, 4, 6, 8, 9, 12, 16, 17, 24, 40, 64]))
    spec, nties = data.draw(st.sampled_from(tap_trees(C, k)))
    # leaves of 16+ would take the leaf GEMMs; vote.c's comparison run keeps its default choice
    check_tree(taken, data, C, k, spec, nties, sigma, surrogate, hmax=6,
               expect=lambda h: chanvote.per_tap(h, C, k * k) is not None, env=[("BITVOTE_VOTE_BACKWARD", "terms")])


@pytest.mark.parametrize("spec,C,Co,N,H", [("tap,leaf=2", 64, 70, 3, 9),     # 32 leaves per tap: counted by 15s
                                           ("tap", 40, 64, 2, 10),          # a 40-input tap voter
                                           ("tap,groups=4", 24, 130, 4, 6),  # leaves of 6: two factors
                                           ("tap,leaf=4", 13 * 4, 7, 5, 8)])  # 52 channels: 6.5 loads of 8
def test_tap_major_blocks_and_wide_voters(taken, monkeypatch, spec, C, Co, N, H):
    torch.manual_seed(C + Co)
    layer = BinaryConv2d(C, Co, 3, 1, 1, voter=spec, tie="first")
    x = torch.randn(N, C, H, H + 1)
    g = torch.randn(N, Co, H, H + 1)
    monkeypatch.setenv("BITVOTE_VOTE_BACKWARD", "terms")
    on_two_threads_as_the_float_path(taken, monkeypatch, layer, x, g)


def test_tap_voter_with_too_many_factor_values_falls_back(taken, monkeypatch):
    """sigma 16 x sqrt(64): every count of a 64-input tap voter passes gradient, 33 factor
    values, more than the kernel's 32 classes: it declines and vote.c answers."""
    torch.manual_seed(1)
    layer = BinaryConv2d(64, 20, 3, 1, 1, voter="tap", tie="first", sigma=16.0)
    x, g = torch.randn(2, 64, 4, 4), torch.randn(2, 20, 4, 4)
    monkeypatch.setenv("BITVOTE_VOTE_BACKWARD", "terms")
    y0, gx0, gw0 = grads(layer, x, g, monkeypatch, native=False)
    y1, gx1, gw1 = grads(layer, x, g, monkeypatch, native=True)
    assert taken == {"ran": 0, "declined": 1}
    assert torch.equal(y0, y1) and close_fp32(gx1, gx0) and close_fp32(gw1, gw0)


def test_which_tap_major_trees_it_takes():
    def hier(spec, C=8, k=3):
        return BinaryConv2d(C, 3, k, voter=spec).hierarchy

    assert chanvote.per_tap(hier("tap"), 8, 9) == (1, [8])
    assert chanvote.per_tap(hier("tap,leaf=4"), 8, 9) == (1, [4, 2])
    assert chanvote.per_tap(hier("P(M4)"), 8, 9) == (2, [4])
    assert chanvote.per_tap(hier("M18(M4)"), 8, 9) == (2, [4])
    for spec in ["mv", "groups=4", "cm:M8(M3(M3))", "M9(M2(M2(M2)))", "M3(M24)"]:
        assert chanvote.per_tap(hier(spec), 8, 9) is None, spec
    assert chanvote.shape(hier("tap,leaf=4"), 8, 9) == (1, 1, [4, 2])
    assert chanvote.shape(hier("cm:M8(M3(M3))"), 8, 9) == (0, 1, [3, 3])
