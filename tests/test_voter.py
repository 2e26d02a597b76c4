"""Voter specs and layers against the brute-force oracle (SPEC.md)."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bitvote
from bitvote import BinaryConv2d, BinaryLinear, BitvoteError
from bitvote.voter import parse_spec, resolve

from oracle import binary_conv, eval_tree

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def tree_text(levels, root="M"):
    """Root-first spec text for uniform levels (bottom-up group sizes)."""
    text = f"M{levels[0][0]}"
    for li, lv in enumerate(levels[1:], start=1):
        kind = root if li == len(levels) - 1 else "M"
        text = f"{kind}{lv[0]}({text})"
    return text


@st.composite
def conv_case(draw):
    k = draw(st.sampled_from([1, 2, 3]))
    C = draw(st.integers(1, 6))
    Co = draw(st.integers(1, 3))
    stride = draw(st.sampled_from([1, 2]))
    padding = draw(st.integers(0, k - 1))
    H = draw(st.integers(max(1, k - 2 * padding), 6))
    W = draw(st.integers(max(1, k - 2 * padding), 6))
    N = draw(st.integers(1, 2))
    pad_value = draw(st.sampled_from([0.0, 1.0, -1.0]))
    return dict(k=k, C=C, Co=Co, stride=stride, padding=padding, H=H, W=W, N=N, pad_value=pad_value)


@st.composite
def voter_case(draw, C, T):
    """A spec string, the tree the oracle should evaluate (as written), its order and root."""
    n = C * T
    kind = draw(st.sampled_from(["mv", "tap", "groups", "tap,groups", "tap,leaf", "cgroups", "tree", "uneven", "cmtree", "P"]))
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
    if kind == "uneven":
        m = draw(st.integers(1, min(n, 4)))
        cuts = sorted(draw(st.lists(st.integers(1, n - 1), min_size=m - 1, max_size=m - 1, unique=True))) if n > 1 else []
        if len(cuts) != m - 1:
            m = len(cuts) + 1
        sizes = [b - a for a, b in zip([0] + cuts, cuts + [n])]
        if m == 1:
            return f"M{n}", [[n]], "tap", "M"
        return f"M{m}(" + ", ".join(f"M{s}" for s in sizes) + ")", [sizes, [m]], "tap", "M"
    # explicit uniform trees: factor n into levels
    factors, rest = [], n
    depth = draw(st.integers(1, 3))
    for _ in range(depth - 1):
        d = draw(st.sampled_from(divisors(rest)))
        factors.append(d)
        rest //= d
    leaf = rest
    levels = [[leaf] * (n // leaf)]
    count = n // leaf
    for f in factors:
        count //= f
        levels.append([f] * count)
    # levels must end in one root node
    if len(levels[-1]) != 1:
        levels.append([len(levels[-1])])
    root = "P" if kind == "P" and len(levels) > 1 else "M"
    order = "cm" if kind == "cmtree" else "tap"
    return ("cm:" if order == "cm" else "") + tree_text(levels, root), levels, order, root


@SETTINGS
@given(data=st.data())
def test_conv_matches_oracle(data):
    case = data.draw(conv_case())
    k, C = case["k"], case["C"]
    spec, levels, order, root = data.draw(voter_case(C, k * k))
    tie = data.draw(st.sampled_from([1, -1, "first"]))
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    x = torch.randn(case["N"], C, case["H"], case["W"])
    # Small integer-valued inputs make ties (s == 0) common.
    if data.draw(st.booleans()):
        x = torch.randint(-1, 2, x.shape).float()
    layer = BinaryConv2d(C, case["Co"], k, case["stride"], case["padding"], voter=spec,
                         pad_value=case["pad_value"], tie=tie)
    got = layer(x)
    want = binary_conv(x, layer.weight.detach(), case["stride"], case["padding"], case["pad_value"],
                       levels, [tie] * len(levels), root, order)
    assert got.shape == want.shape
    assert torch.equal(got, want), (spec, case, tie)


@SETTINGS
@given(case=conv_case(), seed=st.integers(0, 2**16))
def test_popcount_matches_oracle(case, seed):
    torch.manual_seed(seed)
    x = torch.randn(case["N"], case["C"], case["H"], case["W"])
    layer = BinaryConv2d(case["C"], case["Co"], case["k"], case["stride"], case["padding"], pad_value=case["pad_value"])
    want = binary_conv(x, layer.weight.detach(), case["stride"], case["padding"], case["pad_value"])
    assert torch.equal(layer(x), want)


@SETTINGS
@given(data=st.data())
def test_tie_sequences(data):
    """A root-first tie sequence: one rule per level, every level different."""
    C, k = data.draw(st.integers(2, 6)), 3
    seq = data.draw(st.lists(st.sampled_from([1, -1, "first"]), min_size=2, max_size=2))
    torch.manual_seed(data.draw(st.integers(0, 999)))
    x = torch.randint(-1, 2, (2, C, 5, 5)).float()
    layer = BinaryConv2d(C, 3, k, 1, 1, voter="tap", tie=",".join(map(str, seq)))
    want = binary_conv(x, layer.weight.detach(), 1, 1, 0.0, [[C] * 9, [9]], list(reversed(seq)), "M")
    assert torch.equal(layer(x), want)


def test_zero_padding_abstains_at_corners():
    """Per-tap leaves at a corner of a zero-padded map have no valid term: they abstain."""
    x = torch.ones(1, 2, 3, 3)
    layer = BinaryConv2d(2, 1, 3, 1, 1, voter="tap", tie=-1)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.weight[0, :, 2, 2] = -1.0  # tap 8 disagrees
        layer.weight[0, :, 1, 1] = -1.0  # tap 4 disagrees
        layer.weight[0, :, 0, 0] = -1.0  # tap 0 disagrees
    y = layer(x)
    # Bottom-right corner: valid taps 0,1,3,4 -> votes -1,+1,+1,-1 -> tie -> -1.
    assert y[0, 0, 2, 2].item() == -1
    # With +1 padding every tap is valid: taps 0,4,8 vote -1, the other six +1 -> +1.
    layer.pad_value = 1.0
    assert layer(x)[0, 0, 2, 2].item() == 1


def test_stride2_zero_padding_borders():
    """Stride 2 on an even map touches the top/left padding only (SPEC.md asks for this test)."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 6, 6)
    layer = BinaryConv2d(4, 2, 3, 2, 1, voter="tap", tie="first")
    want = binary_conv(x, layer.weight.detach(), 2, 1, 0.0, [[4] * 9, [9]], ["first"] * 2, "M")
    assert torch.equal(layer(x), want)


def test_linear_is_1x1_conv():
    torch.manual_seed(1)
    lin = BinaryLinear(12, 5, voter="groups=3", tie="first")
    x = torch.randn(4, 12)
    want = binary_conv(x.view(4, 12, 1, 1), lin.weight.detach().view(5, 12, 1, 1), 1, 0, 0.0,
                       [[4, 4, 4], [3]], ["first", "first"], "M").view(4, 5)
    assert torch.equal(lin(x), want)
    # tap on a linear layer is mv (fan-in-1 level dropped)
    assert BinaryLinear(12, 5, voter="tap").hierarchy.describe() == "M12"


def test_conv_groups():
    torch.manual_seed(2)
    layer = BinaryConv2d(6, 4, 3, 1, 1, groups=2, voter="tap")
    x = torch.randn(2, 6, 4, 4)
    y = layer(x)
    w = layer.weight.detach()
    for g in range(2):
        want = binary_conv(x[:, 3 * g : 3 * g + 3], w[2 * g : 2 * g + 2], 1, 1, 0.0, [[3] * 9, [9]], [1, 1], "M")
        assert torch.equal(y[:, 2 * g : 2 * g + 2], want)


@pytest.mark.parametrize(
    "spec,n,taps,text",
    [
        ("mv", 576, 9, "M576"),
        ("tap", 576, 9, "M9(M64)"),
        ("tap", 64, 1, "M64"),
        ("groups=4", 512, 1, "M4(M128)"),
        ("M4(M128, M128, M128, M128)", 512, 1, "M4(M128)"),
        ("tap,groups=4", 2304, 9, "M9(M4(M64))"),
        ("tap,leaf=16", 4608, 9, "M9(M32(M16))"),
        ("cgroups=4", 576, 9, "cm:M4(M144)"),
        ("cm:M64(M3(M3))", 576, 9, "cm:M64(M3(M3))"),
        ("P(M9)", 576, 9, "P64(M9)"),
        ("M3(M200, M200, M176)", 576, 9, "M3(M200, M200, M176)"),
        ("M1(M576)", 576, 9, "M576"),
        ("M576(M1)", 576, 9, "M576"),
        ("P(M1)", 27, 9, "P27(M1)"),
        ("M9(M4(M128))", 4608, 9, "M9(M4(M128))"),
    ],
)
def test_resolve(spec, n, taps, text):
    h = resolve(spec, n, taps)
    assert h.describe() == text
    assert resolve(h.describe(), n, taps) == h  # the canonical text parses back to the same tree


@pytest.mark.parametrize(
    "spec",
    ["", "M", "M4(", "M4(M128", "M0", "Q4", "P", "P128", "M4(M128)x", "M2(M3, M4(M2))", "groups=0", "tap,groups=x",
     "M3(M2, M2)", "M(M4)(M2)", "M4(P2(M2))"],
)
def test_malformed_specs_raise_one_line(spec):
    with pytest.raises(BitvoteError) as e:
        resolve(spec, 16, 1) if spec else parse_spec(123)
    assert "\n" not in str(e.value)


def test_misfit_names_layer_n_and_spec():
    with pytest.raises(BitvoteError) as e:
        resolve("M4(M128)", 576, 9, layer="layer2.0.conv")
    msg = str(e.value)
    assert "layer2.0.conv" in msg and "576" in msg and "M4(M128)" in msg
    with pytest.raises(BitvoteError, match="tie sequence"):
        resolve("tap", 576, 9, tie="first,1,-1")
    with pytest.raises(BitvoteError, match="groups"):
        resolve("tap,groups=3", 64 * 9, 9)
    with pytest.raises(BitvoteError, match="tie"):
        resolve("mv", 9, 9, tie="maybe")


def test_model_misfit_names_the_layer():
    with pytest.raises(BitvoteError, match=r"layer1\.0\.conv"):
        bitvote.models.create("reactnet18", voter="M4(M128)", width=0.125)


def test_vote_is_fp32_under_autocast():
    """A sum of 4096 +/-1 terms is exact in fp32; bf16 would round +2 vs +1 ... keep fp32."""
    layer = BinaryConv2d(4096, 2, 1, voter="mv")
    x = torch.randn(3, 4096, 2, 2)
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.float32 and torch.equal(y, ref)


def test_voter_layers_exclude_shortcuts():
    m = bitvote.models.create("birealnet18", voter="mv", width=0.125)
    names = [n for n, _ in bitvote.models.voter_layers(m)]
    assert len(names) == 16 and not any("shortcut" in n for n in names)
    m = bitvote.models.create("xnornet18", voter="mv", width=0.125)
    assert len(bitvote.models.voter_layers(m)) == 16


def test_voter_mapping_per_layer():
    m = bitvote.models.create("reactnet18", voter={"layer4.*": "tap", "*": "mv"}, width=0.125)
    kinds = {n: l.hierarchy.describe() for n, l in bitvote.models.voter_layers(m)}
    assert kinds["layer4.3.conv"] == "M9(M64)" and kinds["layer1.0.conv"] == "M72"
    with pytest.raises(BitvoteError, match="matches no voter layer"):
        bitvote.models.create("reactnet18", voter={"nothing.*": "tap"}, width=0.125)


def test_first_tie_at_leaf_uses_first_valid_term():
    # One output, one leaf of 4 terms over a 2x2 kernel at a corner: terms (tap-major) at taps
    # 0,1,2 are padding; tap 3 is the first valid one.
    x = torch.tensor([[[[1.0, -1.0], [-1.0, 1.0]]]])
    layer = BinaryConv2d(1, 1, 2, 1, 1, voter="mv", tie="first")
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[[[1.0, 1.0], [1.0, -1.0]]]]))
    y = layer(x)
    # Output (0,0) sees only x[0,0] at tap 3: -1 * 1... weight tap3 = -1, x = +1 -> -1
    assert y[0, 0, 0, 0].item() == -1
    assert eval_tree([1, 1, 1, -1], [False, False, False, True], [[4]], ["first"]) == -1


@pytest.mark.parametrize("spec", ["mv", "tap", "tap,groups=4", "cgroups=2", "P(M9)", "M3(M1536)"])
@pytest.mark.parametrize("tie", [1, "first"])
def test_cpu_bf16_autocast_keeps_votes_exact(spec, tie):
    """Under CPU autocast the +/-1 GEMMs run in bf16 (fp32 accumulation): sums above 256 round,
    but never across zero, so every vote and tie equals the fp32 one (n = 4608 here)."""
    torch.manual_seed(3)
    layer = BinaryConv2d(512, 4, 3, 1, 1, voter=spec, tie=tie)
    x = torch.randn(2, 512, 4, 4)
    x[:, :, 1:3] = x[:, :1, 1:3]  # correlated inputs: large |s| and some exact ties
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
    assert got.dtype == torch.float32 and torch.equal(got, ref)


@pytest.mark.parametrize("amp", [False, True])
def test_fused_cpu_chains_match_eager(monkeypatch, amp):
    """The compiled one-pass vote/surrogate chains give the eager votes exactly, and its grads."""
    from bitvote import _fuse

    torch.manual_seed(0)
    x = torch.randint(-1, 2, (2, 8, 6, 6)).float()
    results = {}
    for fuse in ("0", "1"):
        monkeypatch.setenv("BITVOTE_FUSE", fuse)
        monkeypatch.setattr(_fuse, "MIN_NUMEL", 1)
        for surrogate in ("approxsign", "ste"):
            torch.manual_seed(1)
            layer = BinaryConv2d(8, 4, 3, 1, 1, voter="tap,groups=2", tie="first", surrogate=surrogate)
            xi = x.clone().requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                y = layer(xi)
            (y.float() * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum().backward()
            results[fuse, surrogate] = (y.detach(), xi.grad, layer.weight.grad)
    assert _fuse.enabled()
    for surrogate in ("approxsign", "ste"):
        (y0, gx0, gw0), (y1, gx1, gw1) = results["0", surrogate], results["1", surrogate]
        assert torch.equal(y0, y1)
        tol = 2e-2 if amp else 1e-5
        assert torch.allclose(gx0, gx1, rtol=tol, atol=tol) and torch.allclose(gw0, gw1, rtol=tol, atol=tol)
        assert gw0.abs().sum() > 0


def test_fused_falls_back_once_when_compiling_fails(monkeypatch, capsys):
    from bitvote import _fuse

    def broken(*a, **k):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(_fuse, "MIN_NUMEL", 1)
    monkeypatch.setattr(_fuse, "_broken", None)
    monkeypatch.setattr(torch, "compile", broken)
    f = _fuse.fused(lambda a, b: (a + b).sign())
    a, b = torch.randn(10), torch.randn(10)
    assert torch.equal(f(a, b), (a + b).sign()) and torch.equal(f(a, b), (a + b).sign())
    err = capsys.readouterr().err
    assert err.count("fused CPU vote kernels unavailable (RuntimeError: no C++ compiler)") == 1
    assert not _fuse.enabled()
