"""The packed-bit vote kernels (bitvote.nn.fastvote) against the brute-force oracle and the float path.

Votes must be bit-identical to the oracle; gradients equal to the float path's chain rule (the
plain reference implementation of SPEC.md's surrogate) up to fp32 summation order. Sizes sit
on the kernel's boundaries: output channels around its 16-lane (votes) and 8-lane (gradients)
blocks, odd channel counts, batches smaller than the thread count, stride 2, every padding.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitvote import BinaryConv2d
from bitvote.nn import chanvote, fastvote

from native_helpers import close_fp32, run_layer
from oracle import binary_conv

pytestmark = pytest.mark.skipif(not fastvote.available(), reason="no C compiler for the native vote kernels")

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TIES = [1, -1, "first"]


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def layer_case(draw):
    k = draw(st.sampled_from([1, 2, 3]))
    C = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9]))
    Co = draw(st.sampled_from([1, 2, 3, 7, 8, 9, 15, 16, 17, 33]))
    stride = draw(st.sampled_from([1, 2]))
    padding = draw(st.integers(0, k - 1))
    H = draw(st.integers(max(1, k - 2 * padding), 6))
    W = draw(st.integers(max(1, k - 2 * padding), 6))
    return dict(k=k, C=C, Co=Co, stride=stride, padding=padding, H=H, W=W, N=draw(st.integers(1, 3)),
                pad_value=draw(st.sampled_from([0.0, 1.0, -1.0])))


@st.composite
def tree_case(draw, C, T):
    """(spec, bottom-up levels for the oracle, order, root)."""
    n = C * T
    kind = draw(st.sampled_from(["mv", "tap", "groups", "tap,groups", "tap,leaf", "cgroups", "uneven", "cm3", "P"]))
    if kind == "mv":
        return "mv", [[n]], "tap", "M"
    if kind == "tap":
        return "tap", [[C] * T, [T]], "tap", "M"
    if kind in ("groups", "cgroups"):
        g = draw(st.sampled_from(divisors(n)))
        return f"{kind}={g}", [[n // g] * g, [g]], ("cm" if kind == "cgroups" else "tap"), "M"
    if kind == "tap,groups":
        g = draw(st.sampled_from(divisors(C)))
        return f"tap,groups={g}", [[C // g] * (g * T), [g] * T, [T]], "tap", "M"
    if kind == "tap,leaf":
        leaf = draw(st.sampled_from(divisors(C)))
        return f"tap,leaf={leaf}", [[leaf] * (C // leaf * T), [C // leaf] * T, [T]], "tap", "M"
    if kind == "cm3" and T == 9:  # the seed's per-channel majority-of-3 over kernel rows
        return f"cm:M{C}(M3(M3))", [[3] * (3 * C), [3] * C, [C]], "cm", "M"
    if kind == "P":
        return f"P(M{C})", [[C] * T, [T]], "tap", "P"
    # uneven leaves straddling taps (at least two leaves when n allows it)
    cuts = sorted(draw(st.lists(st.integers(1, n - 1), min_size=1, max_size=3, unique=True))) if n > 1 else []
    sizes = [b - a for a, b in zip([0] + cuts, cuts + [n])]
    if len(sizes) == 1:
        return f"M{n}", [[n]], "tap", "M"
    return f"M{len(sizes)}(" + ", ".join(f"M{s}" for s in sizes) + ")", [sizes, [len(sizes)]], "tap", "M"


def random_inputs(data, case):
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    x = torch.randn(case["N"], case["C"], case["H"], case["W"])
    if data.draw(st.booleans()):  # small integers: ties (s == 0) at every level
        x = torch.randint(-1, 2, x.shape).float()
    return x


@SETTINGS
@given(data=st.data())
def test_native_votes_match_oracle(data):
    case = data.draw(layer_case())
    k, C = case["k"], case["C"]
    spec, levels, order, root = data.draw(tree_case(C, k * k))
    ties = [data.draw(st.sampled_from(TIES)) for _ in levels]  # bottom-up, one per written level
    x = random_inputs(data, case)
    layer = BinaryConv2d(C, case["Co"], k, case["stride"], case["padding"], voter=spec,
                         pad_value=case["pad_value"], tie=",".join(map(str, reversed(ties))))
    with pytest.MonkeyPatch.context() as mp:  # the forward's votes: the packed kernels', or vote.c's own
        mp.setenv("BITVOTE_PACKED_VOTE", "1" if data.draw(st.booleans()) else "0")
        got = layer(x)
    want = binary_conv(x, layer.weight.detach(), case["stride"], case["padding"], case["pad_value"],
                       levels, ties, root, order)
    assert torch.equal(got, want), (spec, case, ties)


@SETTINGS
@given(data=st.data(), sigma=st.sampled_from(["fanin", "valid", "unit", 0.5, "fanin,leaf=2", "valid,leaf=3", "0.5,leaf=1.5"]),
       surrogate=st.sampled_from(["approxsign", "ste"]))
def test_native_gradients_match_float_path(data, sigma, surrogate):
    case = data.draw(layer_case())
    k, C = case["k"], case["C"]
    spec, levels, _, _ = data.draw(tree_case(C, k * k))
    tie = ",".join(str(data.draw(st.sampled_from(TIES))) for _ in levels)
    x = random_inputs(data, case)
    layer = BinaryConv2d(C, case["Co"], k, case["stride"], case["padding"], voter=spec, tie=tie,
                         pad_value=case["pad_value"], sigma=sigma, surrogate=surrogate)
    Ho = (case["H"] + 2 * case["padding"] - k) // case["stride"] + 1
    Wo = (case["W"] + 2 * case["padding"] - k) // case["stride"] + 1
    g = torch.randn(case["N"], case["Co"], Ho, Wo)
    backward = data.draw(st.sampled_from(["gemm", "terms"]))  # where the leaves allow both
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BITVOTE_VOTE_BACKWARD", backward)
        y0, gx0, gw0 = run_layer(layer, x, g, False, mp)
        y1, gx1, gw1 = run_layer(layer, x, g, True, mp)
    assert torch.equal(y0, y1), (spec, case, tie)
    assert close_fp32(gx1, gx0) and close_fp32(gw1, gw0), (spec, case, tie, sigma, surrogate, backward)


@pytest.mark.parametrize("spec,C", [("tap,leaf=4", 8), ("tap,groups=4", 12), ("cm:M5(M3(M3))", 5), ("tap", 7)])
@pytest.mark.parametrize("Co", [15, 16, 17, 32])
def test_channel_blocks_and_threads(spec, C, Co, monkeypatch):
    """Outputs around the kernel's channel blocks; a batch of 1 with two threads; stride 2."""
    torch.manual_seed(Co)
    layer = BinaryConv2d(C, Co, 3, 2, 1, voter=spec, tie="first")
    x = torch.randint(-1, 2, (1, C, 7, 5)).float()
    g = torch.randn(1, Co, 4, 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        y0, gx0, gw0 = run_layer(layer, x, g, False, monkeypatch)
        y1, gx1, gw1 = run_layer(layer, x, g, True, monkeypatch)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(y0, y1)
    assert close_fp32(gx1, gx0) and close_fp32(gw1, gw0)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), surrogate=st.sampled_from(["approxsign", "ste"]))
def test_term_backward_across_position_blocks_and_channel_windows(data, surrogate):
    """The term-loop backward takes output positions in blocks and output channels in windows
    of up to 512: positions per image that leave a partial block, outputs just past one window
    (a second, partial one), small leaves (sigma from a table) and a 64-term one (sigma 8,
    computed)."""
    spec, C = data.draw(st.sampled_from([("tap,leaf=2", 4), ("cm:M3(M3(M3))", 3), ("M2(M36, M36)", 8),
                                         ("tap", 64)]))
    Co = data.draw(st.sampled_from([1, 63, 65, 513, 530]))
    N, H, W = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5))
    pad_value = data.draw(st.sampled_from([0.0, 1.0]))
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    layer = BinaryConv2d(C, Co, 3, 1, 1, voter=spec, tie="first", pad_value=pad_value, surrogate=surrogate)
    x = torch.randint(-1, 2, (N, C, H, W)).float()  # small integers: ties at every level
    g = torch.randn(N, Co, H, W)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BITVOTE_VOTE_BACKWARD", "terms")
        y0, gx0, gw0 = run_layer(layer, x, g, False, mp)
        y1, gx1, gw1 = run_layer(layer, x, g, True, mp)
    assert torch.equal(y0, y1)
    assert close_fp32(gx1, gx0) and close_fp32(gw1, gw0), (spec, Co, N, H, W, pad_value, surrogate)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), surrogate=st.sampled_from(["approxsign", "ste"]),
       sigma=st.sampled_from(["fanin", "valid", 0.5, "fanin,leaf=2"]))
def test_pattern_backward_matches_term_loop_and_float_path(data, surrogate, sigma):
    """Trees of leaves of 1-4 terms, 8 or more under each level-1 voter, take the pattern
    backward: images of up to 169 positions (several blocks), batches split between two
    threads, every padding (leaves with invalid terms at the border, and 2-term leaves
    straddling two taps under a flat root), a counting root, ties everywhere, few and many
    output channels."""
    leaf = data.draw(st.sampled_from([1, 2, 3, 4]))
    C = leaf * data.draw(st.sampled_from([8, 9, 16]))
    kind = data.draw(st.sampled_from(["tap", "flat", "P"]))
    if kind == "tap":
        spec, ties = f"tap,leaf={leaf}", 3
    elif kind == "P":  # a counting root over the 9 taps, leaves of C <= 4 channels
        C = leaf
        spec, ties = f"P(M{C})", 2
    else:  # a flat root over 2-term leaves in tap-major order (they straddle taps where C is odd)
        C = C + 1 if C % 2 == 0 else C
        spec, ties = f"groups={9 * C // 2}" if (9 * C) % 2 == 0 else f"groups={9 * C}", 2
    Co = data.draw(st.sampled_from([1, 7, 16, 17, 40]))
    stride, padding = data.draw(st.sampled_from([(1, 1), (2, 1), (1, 0)]))
    N, H, W = data.draw(st.integers(1, 3)), data.draw(st.integers(3, 13)), data.draw(st.integers(3, 13))
    tie = ",".join(str(data.draw(st.sampled_from(TIES))) for _ in range(ties))
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    layer = BinaryConv2d(C, Co, 3, stride, padding, voter=spec, tie=tie, surrogate=surrogate, sigma=sigma,
                         pad_value=data.draw(st.sampled_from([0.0, 1.0, -1.0])))
    x = torch.randint(-1, 2, (N, C, H, W)).float()
    Ho, Wo = (H + 2 * padding - 3) // stride + 1, (W + 2 * padding - 3) // stride + 1
    g = torch.randn(N, Co, Ho, Wo)
    threads = torch.get_num_threads()
    torch.set_num_threads(data.draw(st.sampled_from([1, 2])))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("BITVOTE_VOTE_BACKWARD", "terms")
            y0, gx0, gw0 = run_layer(layer, x, g, False, mp)
            mp.setenv("BITVOTE_VOTE_PATTERNS", "1")
            y1, gx1, gw1 = run_layer(layer, x, g, True, mp)
            mp.setenv("BITVOTE_VOTE_PATTERNS", "0")
            _, gx2, gw2 = run_layer(layer, x, g, True, mp)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(y0, y1)
    assert close_fp32(gx1, gx0) and close_fp32(gw1, gw0), (spec, C, Co, tie, sigma, surrogate)
    assert close_fp32(gx1, gx2) and close_fp32(gw1, gw2)


@pytest.mark.parametrize("stride,pad,pad_value,groups", [(1, 1, 0.0, 1), (2, 1, 0.0, 2), (2, 2, 0.0, 1),
                                                          (1, 1, 1.0, 1), (2, 1, -1.0, 2)])
def test_mv_first_matches_oracle_and_float_path(stride, pad, pad_value, groups, monkeypatch):
    """``mv`` with ``first`` is the plain conv plus one gathered term: same votes, same gradients."""
    torch.manual_seed(stride + pad)
    C, Co = 4, 6
    layer = BinaryConv2d(C, Co, 3, stride, pad, groups=groups, voter="mv", tie="first", pad_value=pad_value)
    x = torch.randint(-1, 2, (2, C, 6, 5)).float()
    y = layer(x)
    cin, cout = C // groups, Co // groups
    w = layer.weight.detach()
    want = torch.cat([binary_conv(x[:, i * cin:(i + 1) * cin], w[i * cout:(i + 1) * cout], stride, pad, pad_value,
                                  [[cin * 9]], ["first"]) for i in range(groups)], 1)
    assert torch.equal(y, want)
    g = torch.randn_like(y)
    y0, gx0, gw0 = run_layer(layer, x, g, False, monkeypatch)
    y1, gx1, gw1 = run_layer(layer, x, g, True, monkeypatch)
    assert torch.equal(y0, y1) and close_fp32(gx1, gx0) and close_fp32(gw1, gw0)


def test_native_is_the_default_and_the_switch_turns_it_off(monkeypatch):
    calls = []
    real = fastvote.conv_votes
    monkeypatch.setattr(fastvote, "conv_votes", lambda *a: calls.append(1) or real(*a))
    layer = BinaryConv2d(8, 4, 3, 1, 1, voter="tap,leaf=4", tie="first")
    x = torch.randn(2, 8, 5, 5)
    monkeypatch.setenv("BITVOTE_NATIVE_VOTE", "1")
    y1 = layer(x)
    assert calls == [1]
    monkeypatch.setenv("BITVOTE_NATIVE_VOTE", "0")
    assert torch.equal(layer(x), y1) and calls == [1]


def test_kernels_take_small_leaves_by_default(monkeypatch):
    """By default the kernels take small leaves and ``cm:`` trees with the term loop, equal
    tap-major leaves of 32 terms and more with the leaf GEMMs; without those GEMMs
    (``BITVOTE_VOTE_BACKWARD=terms``) large leaves go to the float path."""
    monkeypatch.setenv("BITVOTE_NATIVE_VOTE", "1")
    h = lambda spec, C: BinaryConv2d(C, C, 3, voter=spec).hierarchy  # noqa: E731
    assert fastvote.pays(h("tap,leaf=4", 256), 256) and fastvote.pays(h("cm:M64(M3(M3))", 64), 64)
    assert fastvote.pays(h("tap", 64), 64) and fastvote.pays(h("tap", 256), 256)
    assert [fastvote.backward_kind(h(spec, C)) for spec, C in [("tap", 256), ("tap", 32), ("groups=4", 16),
            ("tap,groups=4", 256)]] == ["gemm"] * 4
    assert [fastvote.backward_kind(h(spec, C)) for spec, C in [("tap", 16), ("tap,leaf=4", 256), ("groups=4", 8),
            ("tap,groups=4", 64), ("cm:M64(M3(M3))", 64)]] == ["terms"] * 5
    assert fastvote.backward_kind(BinaryConv2d(1, 2, 3, voter="M2(M5, M4)").hierarchy) == "terms"  # unequal
    monkeypatch.setenv("BITVOTE_VOTE_BACKWARD", "terms")
    assert fastvote.backward_kind(h("tap", 256)) == "terms" and not fastvote.pays(h("tap", 256), 256)
    monkeypatch.setenv("BITVOTE_VOTE_BACKWARD", "gemm")
    assert fastvote.backward_kind(h("tap", 16)) == "gemm"
    assert fastvote.backward_kind(h("cm:M64(M3(M3))", 64)) == "terms"  # the GEMMs need tap-major leaves
    monkeypatch.setenv("BITVOTE_VOTE_BACKWARD", "terms")
    monkeypatch.setenv("BITVOTE_NATIVE_VOTE", "all")
    assert fastvote.pays(h("tap", 256), 256)
    assert not fastvote.pays(BinaryConv2d(4096, 1, 3, voter="tap,leaf=4").hierarchy, 1)  # int16 sums


def test_bit_sliced_backward_takes_tap_major_leaves_up_to_64_terms(monkeypatch):
    """Told the conv group's channels, the choice hands tap-major trees the bit-sliced backward
    ahead of the leaf GEMMs up to leaves of 64 terms (where it runs: forced here, so that every
    CPU checks the rule), and counts them as paying even under BITVOTE_VOTE_BACKWARD=terms."""
    monkeypatch.setenv("BITVOTE_NATIVE_VOTE", "1")
    monkeypatch.setenv("BITVOTE_CHANNEL_VOTE", "all")
    h = lambda spec, C: BinaryConv2d(C, C, 3, voter=spec).hierarchy  # noqa: E731
    if not chanvote.available():
        pytest.skip("no C compiler for the bit-sliced backward")
    kinds = [(spec, C, fastvote.backward_kind(h(spec, C), C)) for spec, C in
             [("tap", 32), ("tap", 64), ("tap", 128), ("tap,groups=4", 256), ("tap,groups=4", 512), ("groups=4", 64)]]
    assert [k for *_, k in kinds] == ["terms", "terms", "gemm", "terms", "gemm", "gemm"], kinds
    assert fastvote.backward_kind(h("tap", 64)) == "gemm"  # without the channels: the GEMMs
    monkeypatch.setenv("BITVOTE_VOTE_BACKWARD", "terms")
    assert fastvote.pays(h("tap", 256), 256, 256) and not fastvote.pays(h("tap", 256), 256)
    monkeypatch.setenv("BITVOTE_CHANNEL_VOTE", "0")
    assert not fastvote.pays(h("tap", 256), 256, 256)
    monkeypatch.setenv("BITVOTE_VOTE_BACKWARD", "auto")
    assert fastvote.backward_kind(h("tap", 64), 64) == "gemm"


def test_missing_compiler_falls_back_once(monkeypatch, capsys):
    monkeypatch.setattr(fastvote, "_LIB", None)
    monkeypatch.setattr(fastvote, "_broken", None)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("BITVOTE_CACHE", str(__import__("tempfile").mkdtemp()))
    layer = BinaryConv2d(4, 3, 3, 1, 1, voter="tap,leaf=2", tie="first")
    x = torch.randn(1, 4, 5, 5)
    y = layer(x)
    assert not fastvote.available()
    err = capsys.readouterr().err
    assert err.count("native vote kernels unavailable") == 1 and "Traceback" not in err
    want = binary_conv(x, layer.weight.detach(), 1, 1, 0.0, [[2] * 18, [2] * 9, [9]], ["first"] * 3)
    assert torch.equal(y, want)
    layer(x)
    assert "unavailable" not in capsys.readouterr().err  # said once


def test_native_under_bf16_autocast_keeps_votes_exact():
    layer = BinaryConv2d(8, 5, 3, 1, 1, voter="tap,leaf=4", tie="first")
    x = torch.randn(2, 8, 6, 6)
    y = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya = layer(x)
    assert ya.dtype == torch.float32 and torch.equal(y, ya)


def test_native_plan_caches_per_hierarchy():
    a = BinaryConv2d(8, 4, 3, voter="tap,leaf=4")
    b = BinaryConv2d(8, 6, 3, voter="tap,leaf=4")
    assert a.hierarchy == b.hierarchy
    p1 = fastvote._plan(a.hierarchy, 8, 9, "fanin")
    assert fastvote._plan(b.hierarchy, 8, 9, "fanin") is p1
    assert p1.nodes == 18 + 9 + 1  # leaves, one middle voter per tap, the root
    assert math.isclose(p1.sigma[0].item(), 2.0) and math.isclose(p1.sigma[-1].item(), 3.0)


def test_second_derivative_is_refused_not_zero(monkeypatch):
    monkeypatch.setenv("BITVOTE_NATIVE_VOTE", "all")
    layer = BinaryConv2d(4, 3, 3, 1, 1, voter="tap,leaf=2", tie="first", input_surrogate=None)
    x = torch.randn(1, 4, 5, 5).sign().requires_grad_(True)
    (gx,) = torch.autograd.grad(layer(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()


@pytest.mark.parametrize("amp", [False, True])
def test_float_path_fused_chains_still_match_eager(monkeypatch, amp):
    """The float path (``BITVOTE_NATIVE_VOTE=0``) keeps its compiled vote chains exact."""
    from bitvote import _fuse

    monkeypatch.setenv("BITVOTE_NATIVE_VOTE", "0")
    monkeypatch.setattr(_fuse, "MIN_NUMEL", 1)
    x = torch.randint(-1, 2, (2, 8, 6, 6)).float()
    out = {}
    for fuse in ("0", "1"):
        monkeypatch.setenv("BITVOTE_FUSE", fuse)
        torch.manual_seed(1)
        layer = BinaryConv2d(8, 4, 3, 1, 1, voter="tap,groups=2", tie="first")
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            y = layer(xi)
        (y.float() * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
        out[fuse] = (y.detach(), xi.grad, layer.weight.grad)
    (y0, gx0, gw0), (y1, gx1, gw1) = out["0"], out["1"]
    tol = 2e-2 if amp else 1e-5
    assert torch.equal(y0, y1) and gw0.abs().sum() > 0
    assert torch.allclose(gx0, gx1, rtol=tol, atol=tol) and torch.allclose(gw0, gw1, rtol=tol, atol=tol)


def test_direct_call_without_the_library_is_a_clear_error(monkeypatch):
    """The forward's votes may come from the packed kernels; the backward needs this library,
    so a direct call says so up front instead of failing inside the backward."""
    from bitvote.binarize import get_surrogate
    from bitvote.voter import resolve

    monkeypatch.setenv("BITVOTE_NATIVE_VOTE", "0")
    xb = torch.ones(1, 4, 3, 3)
    wb = torch.ones(2, 4, 3, 3)
    with pytest.raises(RuntimeError, match="native vote kernels are unavailable"):
        fastvote.conv_votes(xb, wb, resolve("tap,leaf=2", 36, 9), (1, 1), (1, 1), (1, 1), 0.0, 3, 3,
                            get_surrogate("approxsign"), "fanin")


@SETTINGS
@given(data=st.data())
def test_leaf_gemm_backward_across_batch_chunks(data):
    """The leaf-GEMM backward cut into batch chunks of every size (a last chunk shorter than
    the others, one image per chunk, one chunk for all), strides, dilation and padding modes,
    leaf sums from the packed forward or from the backward's matmul: the same gradients as
    the float path and as vote.c's term loop."""
    C = data.draw(st.sampled_from([2, 3, 4, 6, 8]))
    # leaves of whole taps, of runs over taps (groups=3), of a few channels inside a tap
    spec = data.draw(st.sampled_from(["tap", "groups=3", f"groups={3 * C}", f"tap,groups={C // 2 if C % 2 == 0 else 1}",
                                      "mv", "P(M%d)" % C]))
    N, Co = data.draw(st.integers(1, 5)), data.draw(st.sampled_from([1, 7, 8, 9, 17]))
    stride, dilation = data.draw(st.sampled_from([1, 2])), data.draw(st.sampled_from([1, 2]))
    pad_value = data.draw(st.sampled_from([0.0, 1.0, -1.0]))
    tie = data.draw(st.sampled_from(["first", "1", "-1"]))
    layer = BinaryConv2d(C, Co, 3, stride, dilation, dilation=dilation, voter=spec, pad_value=pad_value, tie=tie)
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    x = torch.randint(-1, 2, (N, C, 7, 6)).float()
    with torch.no_grad():
        Ho, Wo = layer(x).shape[2:]
    g = torch.randn(N, Co, Ho, Wo)
    per_image = len(layer.hierarchy.leaf_sizes) * Ho * Wo * max(Co, layer.hierarchy.leaf_sizes[0])
    images = data.draw(st.integers(1, N))  # images per chunk
    calls = []
    real = fastvote._leaf_gemm_backward
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fastvote, "_GEMM_CHUNK", per_image * images)
        # the leaf sums: the packed forward's (dilation 1), or the backward's own matmul
        mp.setenv("BITVOTE_PACKED_VOTE", "1" if data.draw(st.booleans()) else "0")
        mp.setattr(fastvote, "_leaf_gemm_backward", lambda *a: calls.append(1) or real(*a))
        y0, gx0, gw0 = run_layer(layer, x, g, False, mp)
        mp.setenv("BITVOTE_VOTE_BACKWARD", "terms")
        y1, gx1, gw1 = run_layer(layer, x, g, True, mp)
        assert not calls
        mp.setenv("BITVOTE_VOTE_BACKWARD", "gemm")
        y2, gx2, gw2 = run_layer(layer, x, g, True, mp)
    assert len(calls) == (0 if spec == "mv" else 1)  # mv is the plain conv's backward
    assert torch.equal(y0, y2) and torch.equal(y1, y2)
    assert close_fp32(gx2, gx0) and close_fp32(gw2, gw0), (spec, N, Co, stride, dilation, pad_value, tie, images)
    assert close_fp32(gx2, gx1) and close_fp32(gw2, gw1)


def test_leaf_gemm_backward_skips_the_input_gradient_nobody_wants(monkeypatch):
    """A layer whose input needs no gradient (a frozen stem's output) gets its weight gradient
    from the GEMMs without forming the input's."""
    monkeypatch.setenv("BITVOTE_NATIVE_VOTE", "all")
    monkeypatch.setenv("BITVOTE_VOTE_BACKWARD", "gemm")
    seen = []
    real = fastvote._leaf_gemm_backward
    monkeypatch.setattr(fastvote, "_leaf_gemm_backward", lambda *a: seen.append(a[12]) or real(*a))
    torch.manual_seed(0)
    layer = BinaryConv2d(4, 6, 3, 1, 1, voter="tap", tie="first")
    x = torch.randint(-1, 2, (2, 4, 5, 5)).float()
    layer(x).pow(2).sum().backward()
    want = layer.weight.grad.clone()
    layer.weight.grad = None
    monkeypatch.setenv("BITVOTE_NATIVE_VOTE", "0")
    layer(x).pow(2).sum().backward()
    assert seen == [False] and close_fp32(want, layer.weight.grad)


def test_unknown_backward_choice_is_a_clear_error(monkeypatch):
    from bitvote.errors import BitvoteError

    monkeypatch.setenv("BITVOTE_VOTE_BACKWARD", "fast")
    with pytest.raises(BitvoteError, match="BITVOTE_VOTE_BACKWARD='fast': expected auto, gemm or terms"):
        fastvote.backward_kind(BinaryConv2d(8, 8, 3, voter="tap").hierarchy)


@pytest.mark.parametrize("shape,ph,pw,pad", [((2, 3, 5, 7), 1, 1, 0), ((1, 70, 4, 4), 2, 0, -1), ((3, 1, 1, 9), 0, 3, 1),
                                             ((2, 16, 3, 16), 1, 1, 0), ((1, 13, 2, 21), 1, 2, 1), ((1, 70, 3, 17), 0, 1, -1)])
def test_input_layout_pass_matches_the_torch_ops(shape, ph, pw, pad):
    """vote.c's one-pass sign / pad / channels-last of the forward's input, NaN and -0 included,
    against the torch ops it replaces (which a non-contiguous input still takes); shapes on
    both sides of its 8-channel x 8-pixel blocks."""
    check_layout_pass(shape, ph, pw, pad)


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 2), C=st.integers(1, 40), H=st.integers(1, 4), W=st.integers(1, 35), ph=st.integers(0, 2),
       pw=st.integers(0, 2), pad=st.sampled_from([0, 1, -1]))
def test_input_layout_pass_property(N, C, H, W, ph, pw, pad):
    check_layout_pass((N, C, H, W), ph, pw, pad)


def check_layout_pass(shape, ph, pw, pad):
    torch.manual_seed(sum(shape))
    x = torch.randn(shape)
    x.view(-1)[::7] = float("nan")
    x.view(-1)[1::5] = -0.0
    N, C, H, W = shape
    want = torch.full((N, H + 2 * ph, W + 2 * pw, C), pad, dtype=torch.int8)
    want[:, ph:ph + H, pw:pw + W] = torch.where(x >= 0, 1, -1).permute(0, 2, 3, 1).to(torch.int8)
    assert fastvote.available()
    assert torch.equal(fastvote._signs_nhwc(x, ph, pw, pad), want)
    wide = torch.zeros(N, C, H, 2 * W)
    wide[..., ::2] = x
    xt = wide[..., ::2]  # same values, not contiguous
    assert (W == 1 or not xt.is_contiguous()) and torch.equal(fastvote._signs_nhwc(xt, ph, pw, pad), want)
