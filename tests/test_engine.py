"""The packed engine against plain references: the brute-force oracle and the PyTorch layers."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bitvote
from bitvote.errors import BitvoteError
from bitvote.nn import functional as BF
from bitvote.voter import resolve

engine = pytest.importorskip("bitvote.engine")
from bitvote.engine import ISAS, PackedConv, best_isa, pack, pack_bools, unpack  # noqa: E402

import oracle  # noqa: E402

AVAILABLE = ISAS[: ISAS.index(best_isa()) + 1]


def _specs(C, T):
    return oracle.voter_specs(C, T, deep=False)


@st.composite
def case(draw):
    C = draw(st.integers(1, 140))
    k = draw(st.sampled_from([1, 3]))
    spec = draw(st.sampled_from(_specs(C, k * k)))
    return dict(
        C=C, k=k, spec=spec,
        Co=draw(st.integers(1, 9)),
        H=draw(st.integers(3, 5)), W=draw(st.integers(3, 5)),
        stride=draw(st.sampled_from([1, 2])),
        padding=draw(st.sampled_from([0, 1])),
        pad_value=draw(st.sampled_from([0.0, 1.0, -1.0])),
        tie=draw(st.sampled_from([1, -1, "first"])),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case())
def test_conv_matches_oracle_and_layer(c):
    g = torch.Generator().manual_seed(c["seed"])
    x = torch.randn(1, c["C"], c["H"], c["W"], generator=g)
    w = torch.randn(c["Co"], c["C"], c["k"], c["k"], generator=g)
    x[0, 0, 0, 0] = 0.0  # zero binarizes to +1
    T = c["k"] ** 2
    hier = resolve(c["spec"], c["C"] * T, T, c["tie"])
    pc = PackedConv(w >= 0, c["stride"], c["padding"], c["pad_value"], hier)
    if hier is None:
        want = oracle.binary_conv(x, w, c["stride"], c["padding"], c["pad_value"])
    else:
        want = oracle.binary_conv(x, w, c["stride"], c["padding"], c["pad_value"],
                                  levels=[list(lv.groups) for lv in hier.levels],
                                  ties=[lv.tie for lv in hier.levels], root=hier.root, order=hier.order)
    with BF.reference_votes():  # the reduction, not the packed kernels under test
        layer = BF.binary_conv2d(x, w, c["stride"], c["padding"], voter=hier, pad_value=c["pad_value"])
    assert torch.equal(layer, want)
    xw = pack(x)
    for isa in AVAILABLE:
        got = pc(xw, isa=isa)
        assert torch.equal(got.float(), want), (isa, c)
    if pc.is_vote:  # packed output bits are the votes
        bits = pc.epilogue("bits")(xw, threads=2)
        assert torch.equal(unpack(bits, c["Co"]).permute(0, 3, 1, 2), want > 0)


def test_pack_sign_rules():
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 3.0, -2.0]).view(1, 6, 1, 1)
    bits = unpack(pack(x), 6).flatten().tolist()
    assert bits == [True, True, True, False, True, False]
    with pytest.raises(BitvoteError, match="NaN"):
        pack(torch.tensor([0.0, float("nan")]).view(1, 2, 1, 1))


def test_pack_shift_and_strides():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 130, 5, 4, generator=g)
    b = torch.randn(130, generator=g)
    want = (x + b.view(1, -1, 1, 1)) >= 0
    got = unpack(pack(x, b), 130).permute(0, 3, 1, 2)
    assert torch.equal(got, want)
    xcl = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(pack(xcl), pack(x))
    assert torch.equal(unpack(pack_bools(want.permute(0, 2, 3, 1)), 130), want.permute(0, 2, 3, 1))


def test_threshold_and_affine_epilogues():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 70, 6, 6, generator=g)
    w = torch.randn(9, 70, 3, 3, generator=g)
    pc = PackedConv(w >= 0, 1, 1, 0.0, None)
    s = pc(pack(x)).float()
    a, b = torch.randn(9, generator=g), torch.randn(9, generator=g)
    assert torch.allclose(pc.epilogue("affine", a=a, b=b)(pack(x)), s * a.view(1, -1, 1, 1) + b.view(1, -1, 1, 1))
    thr = torch.randint(-20, 20, (9,), generator=g)
    d = torch.tensor([1, -1, 0, 1, -1, 0, 1, 1, -1])
    bits = unpack(pc.epilogue("bits", thr=thr, dir=d)(pack(x)), 9).permute(0, 3, 1, 2)
    t, dd = thr.view(1, -1, 1, 1).float(), d.view(1, -1, 1, 1)
    want = torch.where(dd > 0, s >= t, torch.where(dd < 0, s <= t, t != 0))
    assert torch.equal(bits, want)


def test_bad_inputs_are_errors():
    pc = PackedConv(torch.ones(4, 8, 3, 3, dtype=torch.bool), 1, 1)
    with pytest.raises(BitvoteError, match="packed"):
        pc(torch.zeros(1, 4, 4, 2, dtype=torch.int64))
    with pytest.raises(BitvoteError, match="epilogue"):
        pc.epilogue("nope")
    with pytest.raises(BitvoteError, match="thresholds"):
        pc.epilogue("bits")


# --- the dense kernel (one leaf / one leaf per tap) against the segment kernel and the oracle ---

@st.composite
def dense_case(draw):
    # 260 channels x 9 taps = 45 words: Harley-Seal groups of 8, the 4-word step and a rest word
    C = draw(st.sampled_from([1, 7, 63, 64, 65, 130, 260]))
    k = draw(st.sampled_from([1, 3]))
    T = k * k
    specs = ["popcount", "mv", "tap"] + ([f"P(M{C})"] if T > 1 and C > 1 else [])
    return dict(
        C=C, k=k, spec=draw(st.sampled_from(specs)),
        Co=draw(st.sampled_from([1, 8, 13, 40, 72])),  # partial blocks, every register tile size
        N=draw(st.integers(1, 2)), H=draw(st.integers(2, 6)), W=draw(st.integers(2, 6)),
        stride=draw(st.sampled_from([1, 2])), padding=draw(st.sampled_from([0, 1])),
        pad_value=draw(st.sampled_from([0.0, 1.0, -1.0])),
        tie=draw(st.sampled_from([1, -1, "first"])), ties=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dense_case())
def test_dense_kernel_matches_segments_and_oracle(c):
    g = torch.Generator().manual_seed(c["seed"])
    x = torch.randn(c["N"], c["C"], c["H"], c["W"], generator=g)
    w = torch.randn(c["Co"], c["C"], c["k"], c["k"], generator=g)
    if c["ties"]:  # half the channels agree everywhere: many exact ties
        x[:, : c["C"] // 2] = 1.0
        w[:, : c["C"] // 2] = 1.0
    T = c["k"] ** 2
    hier = resolve(c["spec"], c["C"] * T, T, c["tie"])
    pc = PackedConv(w >= 0, c["stride"], c["padding"], c["pad_value"], hier)
    if c["H"] + 2 * c["padding"] < c["k"] or c["W"] + 2 * c["padding"] < c["k"]:
        return
    assert pc.kind in (1, 2)
    if hier is None:
        want = oracle.binary_conv(x, w, c["stride"], c["padding"], c["pad_value"])
    else:
        want = oracle.binary_conv(x, w, c["stride"], c["padding"], c["pad_value"],
                                  levels=[list(lv.groups) for lv in hier.levels],
                                  ties=[lv.tie for lv in hier.levels], root=hier.root, order=hier.order)
    xw = pack(x)
    seg = pc.use_segments()(xw, isa="portable")
    pc.use_segments(False)
    assert torch.equal(seg.float(), want)
    a, b = torch.randn(c["Co"], generator=g), torch.randn(c["Co"], generator=g)
    for isa in AVAILABLE:
        for th in (1, 2):
            assert torch.equal(pc.epilogue("int")(xw, th, isa).float(), want), (isa, th)
            af = pc.epilogue("affine", a=a, b=b)(xw, th, isa)
            assert torch.equal(af, want * a.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)), (isa, th)
            if pc.is_vote:
                sel = pc.epilogue("select", a=a, b=b)(xw, th, isa)
                assert torch.equal(sel, torch.where(want > 0, a.view(1, -1, 1, 1), b.view(1, -1, 1, 1)))
                bits = pc.epilogue("bits")(xw, th, isa)
                assert torch.equal(unpack(bits, c["Co"]).permute(0, 3, 1, 2), want > 0), (isa, th)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced_rows", "permuted"])
def test_pack_layouts_and_isas_agree(layout):
    g = torch.Generator().manual_seed(3)
    for N, C, H, W in [(2, 130, 5, 19), (1, 17, 1, 3), (3, 64, 4, 4), (1, 1, 7, 33)]:
        base = torch.randn(N, C, H, W + 2, generator=g)
        base[base.abs() < 0.2] = 0.0
        base[base.abs() < 0.1] = -0.0
        if layout == "nchw":
            x = base[..., :W].contiguous()
        elif layout == "channels_last":
            x = base[..., :W].contiguous(memory_format=torch.channels_last)
        elif layout == "sliced_rows":
            x = base[..., 1:W + 1]
        else:
            x = base[..., :W].permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
        sh = torch.randn(C, generator=g)
        for shift in (None, sh):
            want = x >= 0 if shift is None else (x + shift.view(1, -1, 1, 1)) >= 0
            for isa in AVAILABLE:
                for th in (1, 2):
                    got = unpack(pack(x, shift, th, isa=isa), C).permute(0, 3, 1, 2)
                    assert torch.equal(got, want), (layout, isa, th, (N, C, H, W))
        y = x.clone()
        y[-1, C - 1, H - 1, W - 1] = float("nan")
        for isa in AVAILABLE:
            with pytest.raises(BitvoteError, match="NaN"):
                pack(y, isa=isa)


@pytest.mark.parametrize("C", [512, 1800])  # 72 words (groups of 8 only); 261 words (> 248: the plain tile)
def test_dense_wide_layers_all_isas_agree(C):
    g = torch.Generator().manual_seed(C)
    x = torch.randn(2, C, 4, 3, generator=g)
    w = torch.randn(16, C, 3, 3, generator=g)
    xw = pack(x)
    for pad_value in (0.0, 1.0):
        for spec in ("popcount", "mv"):
            hier = None if spec == "popcount" else resolve(spec, C * 9, 9)
            pc = PackedConv(w >= 0, 1, 1, pad_value, hier)
            want = pc.use_segments()(xw, isa="portable")
            pc.use_segments(False)
            a, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
            for isa in AVAILABLE:
                assert torch.equal(pc.epilogue("int")(xw, 1, isa), want), (isa, pad_value, spec)
                af = pc.epilogue("affine", a=a, b=b)(xw, 2, isa)
                assert torch.equal(af, want.float() * a.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)), isa


@pytest.mark.parametrize("spec", ["popcount", "mv"])
def test_fused_residual_rprelu_matches_torch_exactly(spec):
    """The fused block tail (y + shortcut, prelu(y + si) + so) is bit-identical to PyTorch's ops,
    on every ISA (vector and scalar epilogues), with full and partial channel blocks."""
    g = torch.Generator().manual_seed(11)
    for C, Co in ((70, 16), (64, 13)):
        x = torch.randn(2, C, 5, 4, generator=g)
        w = torch.randn(Co, C, 3, 3, generator=g)
        hier = None if spec == "popcount" else resolve(spec, C * 9, 9)
        pc = PackedConv(w >= 0, 1, 1, 0.0, hier)
        xw = pack(x)
        r = pc.epilogue("int")(xw, 1, "portable").float()
        a, b = torch.randn(Co, generator=g), torch.randn(Co, generator=g)
        res = torch.randn(2, Co, 5, 4, generator=g)
        si, pw, so = (torch.randn(Co, generator=g) for _ in range(3))
        v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
        y = r * v(a) + v(b) if spec == "popcount" else torch.where(r > 0, v(a), v(b))
        want = torch.nn.functional.prelu((y + res) + v(si), pw) + v(so)
        pc.epilogue("affine" if spec == "popcount" else "select", a=a, b=b).fuse_rprelu(si, pw, so)
        for isa in AVAILABLE:
            for th in (1, 2):
                got = pc(xw, th, isa, residual=res)
                assert torch.equal(got, want), (isa, th, C, Co)
                # written over the residual (channels-last), each element read before it is written
                r2 = res.clone().contiguous(memory_format=torch.channels_last)
                got = pc(xw, th, isa, residual=r2, inplace=True)
                assert torch.equal(got, want) and got.data_ptr() == r2.data_ptr(), (isa, th, C, Co)


def test_recycled_outputs_never_overwrite_kept_results():
    """Outputs reuse their memory only once no tensor (or view) of the last one is alive."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(16, 64, 3, 3, generator=g)
    pc = PackedConv(w >= 0, 1, 1, 0.0, None).epilogue("affine", a=torch.rand(16, generator=g), b=torch.randn(16, generator=g))
    xs = [torch.randn(2, 64, 5, 5, generator=g) for _ in range(3)]
    ref = [pc(pack(x)).clone() for x in xs]
    kept = pc(pack(xs[0]))
    view = pc(pack(xs[1]))[0, :3]  # only a view of the second result survives
    third = pc(pack(xs[2]))
    assert torch.equal(kept, ref[0]) and torch.equal(view, ref[1][0, :3]) and torch.equal(third, ref[2])
    assert kept.data_ptr() != third.data_ptr()
    del kept, view, third
    a = pc(pack(xs[0]))
    ptr = a.data_ptr()
    del a
    assert pc(pack(xs[1])).data_ptr() == ptr or not hasattr(torch._C, "_storage_Use_Count")
    p1 = pack(xs[0])
    p2 = pack(xs[1])  # p1 still alive: a different buffer
    assert p1.data_ptr() != p2.data_ptr() and torch.equal(p1, pack(xs[0]).clone())
