"""The engine's vector kernels at their block boundaries, against plain references.

Every path (the dense one-leaf and per-tap kernels, the vector segment kernel, the earlier
AVX2 kernels kept for benchmarks, the portable build) must give the PyTorch layer's exact
integers (``binary_conv2d``: ``conv_leaf_sums`` + ``reduce_votes``), which the brute-force
oracle confirms on the smaller cases. Channel counts sit just below, on and above word and
register-tile sizes (the 9-word tile sweeps up to 8 blocks of 8 output channels, the other
tiles 4), under every tie rule and padding mode.
"""

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitvote.errors import BitvoteError
from bitvote.nn import functional as BF
from bitvote.voter import resolve

engine = pytest.importorskip("bitvote.engine")
from bitvote.engine import ISAS, PackedConv, best_isa, pack, unpack  # noqa: E402
from bitvote.engine import bench  # noqa: E402
from bitvote.packed.build import lib  # noqa: E402

import oracle  # noqa: E402

AVAILABLE = ISAS[: ISAS.index(best_isa()) + 1]
#: (isa, kernel version): v0 differs from v1 only on AVX2
PATHS = [(isa, 1) for isa in AVAILABLE] + ([("avx2", 0)] if "avx2" in AVAILABLE else [])

CHANNELS = [1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 127, 128, 129]
OUT_CHANNELS = [1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 72]
TIES = [1, -1, "first", ("first", 1), (1, "first"), (-1, "first")]


def _specs(C, T):
    out = oracle.voter_specs(C, T, deep=True)
    if T > 1 and C % 16 == 0:
        out.append("tap,leaf=16")
    return out


@st.composite
def layer_case(draw):
    C = draw(st.sampled_from(CHANNELS))
    k = draw(st.sampled_from([1, 3, 3]))
    T = k * k
    return dict(
        C=C, k=k, T=T, spec=draw(st.sampled_from(_specs(C, T))), tie=draw(st.sampled_from(TIES)),
        Co=draw(st.sampled_from(OUT_CHANNELS)),
        N=draw(st.integers(1, 2)), H=draw(st.integers(1, 6)), W=draw(st.integers(1, 6)),
        stride=draw(st.sampled_from([1, 2])), padding=draw(st.sampled_from([0, 1])),
        pad_value=draw(st.sampled_from([0.0, 1.0, -1.0])), agree=draw(st.sampled_from([0.0, 0.5, 0.9])),
        seed=draw(st.integers(0, 2**16)),
    )


def _resolve(c):
    T = c["T"]
    try:
        return resolve(c["spec"], c["C"] * T, T, c["tie"])
    except BitvoteError:  # a per-level tie sequence that does not fit this spec's depth
        return resolve(c["spec"], c["C"] * T, T, "first")


def _inputs(c):
    g = torch.Generator().manual_seed(c["seed"])
    x = torch.randn(c["N"], c["C"], c["H"], c["W"], generator=g)
    w = torch.randn(c["Co"], c["C"], c["k"], c["k"], generator=g)
    agree = int(c["agree"] * c["C"])
    if agree:  # these channels match everywhere: sums near zero, many exact ties
        x[:, :agree] = 1.0
        w[:, :agree] = 1.0
        w[: c["Co"] // 2, :agree] = -1.0
    return x, w


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer_case())
def test_every_path_matches_the_layer_at_block_boundaries(c):
    if c["H"] + 2 * c["padding"] < c["k"] or c["W"] + 2 * c["padding"] < c["k"]:
        return
    x, w = _inputs(c)
    hier = _resolve(c)
    with BF.reference_votes():
        want = BF.binary_conv2d(x, w, c["stride"], c["padding"], voter=hier, pad_value=c["pad_value"])
    n_outputs = want.numel() * c["C"] * c["T"]
    if n_outputs <= 60_000:  # the brute-force oracle agrees with the layer
        if hier is None:
            ref = oracle.binary_conv(x, w, c["stride"], c["padding"], c["pad_value"])
        else:
            ref = oracle.binary_conv(x, w, c["stride"], c["padding"], c["pad_value"],
                                     levels=[list(lv.groups) for lv in hier.levels],
                                     ties=[lv.tie for lv in hier.levels], root=hier.root, order=hier.order)
        assert torch.equal(want, ref)
    pc = PackedConv(w >= 0, c["stride"], c["padding"], c["pad_value"], hier)
    xw = pack(x)
    g = torch.Generator().manual_seed(c["seed"] + 1)
    a, b = torch.randn(c["Co"], generator=g), torch.randn(c["Co"], generator=g)
    v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    old = lib().bv_set_kernel(1)
    try:
        for segments in (False, True):
            pc.use_segments(segments)
            for isa, version in PATHS:
                lib().bv_set_kernel(version)
                tag = (isa, version, segments, hier.describe() if hier else None)
                assert torch.equal(pc.epilogue("int")(xw, 1, isa).float(), want), tag
                if pc.is_vote:
                    sel = pc.epilogue("select", a=a, b=b)(xw, 2, isa)
                    assert torch.equal(sel, torch.where(want > 0, v(a), v(b))), tag
                    bits = pc.epilogue("bits")(xw, 1, isa)
                    assert torch.equal(unpack(bits, c["Co"]).permute(0, 3, 1, 2), want > 0), tag
                else:
                    af = pc.epilogue("affine", a=a, b=b)(xw, 2, isa)
                    assert torch.equal(af, want * v(a) + v(b)), tag
    finally:
        lib().bv_set_kernel(old)
        pc.use_segments(False)


@pytest.mark.parametrize("spec", ["mv", "tap", "groups=3", "tap,groups=2", "tap,leaf=4", "cm:M8(M3(M3))", "cm:P(M3)",
                                  "cm:M8(M9)", "cgroups=2", "P(M8)"])
@pytest.mark.parametrize("stride,padding,pad_value", [(1, 1, 0.0), (2, 1, 1.0), (1, 0, 0.0)])
def test_leaf_sums_out_on_every_kernel_kind(spec, stride, padding, pad_value):
    """One layer per kernel kind (dense one-leaf and per-tap, fields, rows, channels, channel
    groups, segments), two blocks of 8 output channels."""
    c = dict(C=8, k=3, T=9, spec=spec, tie="first", Co=16, N=2, H=5, W=6, stride=stride, padding=padding,
             pad_value=pad_value, agree=0.5, seed=len(spec))
    test_leaf_sums_out_are_every_leafs_sum.hypothesis.inner_test(c)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer_case())
def test_leaf_sums_out_are_every_leafs_sum(c):
    """``leaf_sums`` receives each leaf's sum of valid terms, what ``conv_leaf_sums`` gives,
    on every kernel (the layouts without such a kernel run the segment kernel for it), and
    the votes beside it do not change."""
    if c["H"] + 2 * c["padding"] < c["k"] or c["W"] + 2 * c["padding"] < c["k"]:
        return
    x, w = _inputs(c)
    hier = _resolve(c)
    xb, wb = torch.where(x >= 0, 1.0, -1.0), torch.where(w >= 0, 1.0, -1.0)
    pc = PackedConv(w >= 0, c["stride"], c["padding"], c["pad_value"], hier)
    xw = pack(x)
    if hier is None:
        want = BF.binary_conv2d(xb, wb, c["stride"], c["padding"], pad_value=c["pad_value"], input_surrogate=None)
        want = want.permute(0, 2, 3, 1).reshape(1, -1, c["Co"])
    else:
        sums, _, _, dim = BF.conv_leaf_sums(xb, wb, hier, c["stride"], c["padding"], 1, c["pad_value"])
        L = len(hier.leaf_sizes)
        want = sums.reshape(L, -1, c["Co"]) if dim == 0 else sums.permute(1, 0, 3, 4, 2).reshape(L, -1, c["Co"])
    votes = pc.epilogue("int")(xw, 1)
    for segments in (False, True):
        pc.use_segments(segments)
        for isa in AVAILABLE:
            got = torch.full(want.shape, -999, dtype=torch.int16)
            assert torch.equal(pc(xw, 2, isa, leaf_sums=got), votes), (isa, segments)
            assert torch.equal(got, want.to(torch.int16)), (isa, segments, hier.describe() if hier else None)
    pc.use_segments(False)
    with pytest.raises(BitvoteError, match="leaf sums need a contiguous int16 buffer"):
        pc(xw, 1, leaf_sums=torch.zeros(want.shape, dtype=torch.int32))


@pytest.mark.parametrize("spec", ["mv", "tap", "tap,groups=2", "cgroups=4", "M2(M200, M376)"])
def test_first_ties_at_borders_and_in_every_lane(spec):
    """All-tie layers: every lane of every block ties, so every vote is a 'first' lookup
    (the first valid term moves with the zero-padded border taps)."""
    C, Co = 64, 40
    x = torch.ones(1, C, 5, 4)
    x[:, C // 2:] = -1.0  # half the channels disagree with all-ones weights: sum 0 per tap
    x[0, 0, 1, 2] = -1.0
    x[0, 32, 1, 2] = 1.0  # the first channel's sign flips at one pixel, the sum stays 0
    w = torch.ones(Co, C, 3, 3)
    w[1::3, 0] = -1.0
    w[1::3, 32] = -1.0
    hier = resolve(spec, C * 9, 9, "first")
    with BF.reference_votes():
        want = BF.binary_conv2d(x, w, 1, 1, voter=hier, pad_value=0.0)
    pc = PackedConv(w >= 0, 1, 1, 0.0, hier)
    xw = pack(x)
    for segments in (False, True):
        pc.use_segments(segments)
        for isa, version in PATHS:
            old = lib().bv_set_kernel(version)
            try:
                got = unpack(pc.epilogue("bits")(xw, 1, isa), Co).permute(0, 3, 1, 2)
            finally:
                lib().bv_set_kernel(old)
            assert torch.equal(got, want > 0), (spec, isa, version, segments)


@settings(max_examples=25, deadline=None)
@given(C=st.sampled_from([1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 130]), W=st.integers(1, 40),
       H=st.integers(1, 3), layout=st.sampled_from(["nchw", "channels_last", "rows"]),
       shift=st.booleans(), nan=st.booleans(), seed=st.integers(0, 2**16))
def test_packers_match_the_sign_rule(C, W, H, layout, shift, nan, seed):
    """Vector packers at 8/16/32/64-pixel and channel boundaries, tails and NaN anywhere."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(2, C, H, W + 1, generator=g)
    base[base.abs() < 0.3] = -0.0
    x = {"nchw": base[..., :W].contiguous(), "rows": base[..., 1:],
         "channels_last": base[..., :W].contiguous(memory_format=torch.channels_last)}[layout]
    sh = torch.randn(C, generator=g) if shift else None
    want = (x if sh is None else x + sh.view(1, -1, 1, 1)) >= 0
    if nan:  # one NaN anywhere, in the layout under test
        idx = [int(torch.randint(0, d, (1,), generator=g)) for d in x.shape]
        x[tuple(idx)] = float("nan")
    for isa in AVAILABLE:
        for th in (1, 2):
            if nan:
                with pytest.raises(BitvoteError, match="NaN"):
                    pack(x, sh, th, isa=isa)
            else:
                got = unpack(pack(x, sh, th, isa=isa), C).permute(0, 3, 1, 2)
                assert torch.equal(got, want), (isa, th, layout)


@settings(max_examples=40, deadline=None)
@given(C=st.sampled_from([1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 130]), W=st.integers(1, 40),
       H=st.integers(1, 3), layout=st.sampled_from(["nchw", "channels_last", "rows"]),
       odd=st.sampled_from([None, 0.0, -0.0, 0.5, -2.0, float("inf"), 1.0 + 2**-23]), seed=st.integers(0, 2**16))
def test_pack_binary_tells_signs_from_other_values(C, W, H, layout, odd, seed):
    """Every packer flags a value other than +/-1 anywhere (tails and masked lanes included,
    whose padding must not count); all-binary input packs to the same words as ``pack``."""
    from bitvote.packed import pack_binary

    g = torch.Generator().manual_seed(seed)
    base = torch.where(torch.randn(2, C, H, W + 1, generator=g) >= 0, 1.0, -1.0)
    x = {"nchw": base[..., :W].contiguous(), "rows": base[..., 1:],
         "channels_last": base[..., :W].contiguous(memory_format=torch.channels_last)}[layout]
    if odd is not None:
        idx = [int(torch.randint(0, d, (1,), generator=g)) for d in x.shape]
        x[tuple(idx)] = odd
    for isa in AVAILABLE:
        for th in (1, 2):
            got = pack_binary(x, th, isa=isa)
            if odd is None:
                assert got is not None and torch.equal(got, pack(x, None, th, isa=isa)), (isa, th, layout)
            else:
                assert got is None, (isa, th, layout, odd)


def test_peak_probe_reports_every_unit():
    p = bench.peak(1, seconds=0.004)
    assert p["xorpop"] > 0 and p["fp32"] >= 0 and p["int8"] >= 0 and p["int8_unit"]
    assert bench.peak(1, seconds=0.004) is p  # measured once per process
    assert p["int8_unit"] in bench.INT8_UNITS.values()
    if p["int8_unit"] == "amx-int8":  # the probe names a unit only where the CPU reports it
        flags = Path("/proc/cpuinfo").read_text()
        assert "amx_int8" in flags and "amx_tile" in flags
        assert p["int8"] > 8 * p["fp32"]  # 16384 MACs per tile instruction: VNNI reaches ~4x fp32 FMA


def test_bench_rows_have_int8_and_peak_fractions(monkeypatch):
    monkeypatch.setattr(bench, "LAYERS", [("tiny", 64, 16, 4, 1)])
    kernels = ("v0", "v1") if "avx2" in AVAILABLE else ("v1",)
    rows = bench.bench_layers(batches=(1,), threads=(1,), reps=1, kernels=kernels)
    assert [r["kernel"] for r in rows] == list(kernels)
    for r in rows:
        assert r["int8_ms"] > 0 and r["fp32_ms"] > 0 and r["speedup_int8"] > 0 and 0 < r["peak_frac"]
    monkeypatch.setattr(bench, "EPILOGUES", bench.EPILOGUES[:3] + [("cm", "cm:M{C}(M9)", 1), ("cg", "cgroups=4", 1),
                                                                   ("rows", "cm:P(M3)", "first")])
    ep = bench.bench_epilogues(batch=1, reps=1, kernels=kernels)
    assert {r["epilogue"] for r in ep} == {"popcount", "mv", "mv first", "cm", "cg", "rows"}
    assert all(r["vs_popcount"] > 0 for r in ep)
    assert {r["path"] for r in ep} >= {"dense one-leaf", "channel leaves", "kernel rows"}
    if bench.active_isa() == "avx2":
        # the earlier AVX2 kernels have no row or channel-leaf kernel: those rows ran on segments
        # (on wider ISAs both versions run the same kernels)
        assert all(r["path"] == "segments" for r in ep if r["kernel"] == "v0" and r["epilogue"] in ("cm", "rows"))
    else:
        assert "segments" not in {r["path"] for r in ep if r["epilogue"] in ("cm", "rows")}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(L=st.sampled_from([2, 4, 8, 16, 32]), mult=st.sampled_from([2, 3, 4, 5, 8, 16]),
       ties=st.tuples(*[st.sampled_from([1, -1, "first"])] * 3), Co=st.sampled_from([1, 8, 13]),
       stride=st.sampled_from([1, 2]), padding=st.sampled_from([0, 1]), pad_value=st.sampled_from([0.0, 1.0, -1.0]),
       agree=st.sampled_from([0.0, 0.5]), seed=st.integers(0, 2**16))
def test_field_leaves_match_the_layer(L, mult, ties, Co, stride, padding, pad_value, agree, seed):
    """`tap,leaf=L` (leaves are L-bit fields of the input words): the SWAR kernel, with a tie
    rule per level, partial last words (C = 3L, 5L) and more than one word per tap."""
    C = L * mult
    if C > 300:
        return
    c = dict(C=C, k=3, T=9, N=1, H=4, W=3, Co=Co, agree=agree, seed=seed)
    x, w = _inputs(c)
    hier = resolve(f"tap,leaf={L}", C * 9, 9, ties)
    pc = PackedConv(w >= 0, stride, padding, pad_value, hier)
    assert pc.kind == 3
    with BF.reference_votes():
        want = BF.binary_conv2d(x, w, stride, padding, voter=hier, pad_value=pad_value)
    xw = pack(x)
    for isa, version in PATHS:
        old = lib().bv_set_kernel(version)
        try:
            assert torch.equal(pc.epilogue("int")(xw, 1, isa).float(), want), (isa, version)
            bits = pc.epilogue("bits")(xw, 2, isa)
            assert torch.equal(unpack(bits, Co).permute(0, 3, 1, 2), want > 0), (isa, version)
        finally:
            lib().bv_set_kernel(old)


@settings(max_examples=30, deadline=None)
@given(C=st.sampled_from([1, 7, 31, 32, 33, 63, 64, 65, 128, 130, 200]), ties=st.tuples(*[st.sampled_from([1, -1, "first"])] * 2),
       Co=st.sampled_from([8, 16, 64, 13]), k=st.sampled_from([2, 3]), stride=st.sampled_from([1, 2]),
       padding=st.sampled_from([0, 1]), pad_value=st.sampled_from([0.0, 1.0, -1.0]),
       agree=st.sampled_from([0.0, 0.5, 0.9]), seed=st.integers(0, 2**16))
def test_tap_votes_in_registers_match_the_layer(C, ties, Co, k, stride, padding, pad_value, agree, seed):
    """`tap` (one leaf per tap) with a tie rule per level: ties in many lanes (agreeing
    channels), one to four words a tap, abstaining border taps, whole and partial blocks."""
    c = dict(C=C, k=k, T=k * k, N=2, H=4, W=5, Co=Co, agree=agree, seed=seed)
    x, w = _inputs(c)
    hier = resolve("tap", C * k * k, k * k, ties)
    pc = PackedConv(w >= 0, stride, padding, pad_value, hier)
    with BF.reference_votes():
        want = BF.binary_conv2d(x, w, stride, padding, voter=hier, pad_value=pad_value)
    g = torch.Generator().manual_seed(seed + 1)
    a, b = torch.randn(Co, generator=g), torch.randn(Co, generator=g)
    xw = pack(x)
    for isa, version in PATHS:
        old = lib().bv_set_kernel(version)
        try:
            tag = (isa, version)
            assert torch.equal(pc.epilogue("int")(xw, 1, isa).float(), want), tag
            bits = pc.epilogue("bits")(xw, 2, isa)
            assert torch.equal(unpack(bits, Co).permute(0, 3, 1, 2), want > 0), tag
            sel = pc.epilogue("select", a=a, b=b)(xw, 1, isa)
            assert torch.equal(sel, torch.where(want > 0, a.view(1, -1, 1, 1), b.view(1, -1, 1, 1))), tag
        finally:
            lib().bv_set_kernel(old)


def test_one_leaf_under_a_p_root_is_the_sum():
    """P(M<n>) (a P root over one leaf, e.g. P(M<C>) for one channel) counts, it does not vote."""
    g = torch.Generator().manual_seed(4)
    x, w = torch.randn(2, 1, 4, 4, generator=g), torch.randn(9, 1, 3, 3, generator=g)
    hier = resolve("P(M1)", 9, 9)
    with BF.reference_votes():
        want = BF.binary_conv2d(x, w, 1, 1, voter=hier, pad_value=0.0)
    assert torch.equal(want, oracle.binary_conv(x, w, 1, 1, 0.0))
    pc = PackedConv(w >= 0, 1, 1, 0.0, hier)
    for segments in (False, True):
        pc.use_segments(segments)
        for isa, version in PATHS:
            old = lib().bv_set_kernel(version)
            try:
                assert torch.equal(pc.epilogue("int")(pack(x), 1, isa).float(), want), (isa, version, segments)
            finally:
                lib().bv_set_kernel(old)


@pytest.mark.parametrize("Co", [20, 50, 100, 120, 530])
@pytest.mark.parametrize("spec", ["M2(M36, M36)", "tap,groups=2"])
def test_segment_kernel_covers_the_last_channel_blocks(spec, Co):
    """Output channels whose 8-channel blocks end in a partial register tile (7 blocks in
    tiles of 4, 13 or 15 in tiles of 8): every block is computed, the last ones in smaller
    tiles."""
    g = torch.Generator().manual_seed(Co)
    x, w = torch.randn(1, 8, 3, 2, generator=g), torch.randn(Co, 8, 3, 3, generator=g)
    hier = resolve(spec, 72, 9, "first")
    with BF.reference_votes():
        want = BF.binary_conv2d(x, w, 1, 1, voter=hier, pad_value=0.0)
    pc = PackedConv(w >= 0, 1, 1, 0.0, hier)
    pc.use_segments(True)
    try:
        _check_every_path(pc, hier, pack(x), want, Co, spec)
    finally:
        pc.use_segments(False)


def _check_every_path(pc, hier, xw, want, Co, spec):
    """Every ISA and kernel version: the exact integers, then the float epilogue of a P root
    (counts stay numbers) or the packed bits of an M root's votes."""
    for isa, version in PATHS:
        old = lib().bv_set_kernel(version)
        try:
            assert torch.equal(pc.epilogue("int")(xw, 1, isa).float(), want), (spec, isa, version)
            if hier.root == "P":
                a, b = torch.linspace(0.5, 2.0, Co), torch.linspace(-1.0, 1.0, Co)
                got = pc.epilogue("affine", a, b)(xw, 2, isa)
                assert torch.allclose(got, want * a.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)), (spec, isa, version)
            else:
                bits = pc.epilogue("bits")(xw, 2, isa)
                assert torch.equal(unpack(bits, Co).permute(0, 3, 1, 2), want > 0), (spec, isa, version)
        finally:
            lib().bv_set_kernel(old)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(C=st.sampled_from([1, 7, 63, 64, 65, 129]), k=st.sampled_from([2, 3]),
       shape=st.sampled_from(["P({r})", "M({r})", "M({r}({k}))", "P({r}({k}))", "M({c})", "P({c})"]),
       tie=st.sampled_from([1, -1, "first", ("first", 1), (1, "first"), (-1, 1, "first"), ("first", -1, 1)]),
       Co=st.sampled_from([1, 8, 13]), stride=st.sampled_from([1, 2]), padding=st.sampled_from([0, 1, 2]),
       pad_value=st.sampled_from([0.0, 1.0, -1.0]), agree=st.sampled_from([0.0, 0.5]), seed=st.integers(0, 2**16))
def test_row_leaves_match_the_layer(C, k, shape, tie, Co, stride, padding, pad_value, agree, seed):
    """Channel-major trees over kernel rows (`cm:P(M3)`, `cm:M(M3)`, `cm:M<C>(M3(M3))`,
    `cm:P(M3(M3))`, and fan-ins of 2) and one leaf per channel (`cm:M<C>(M9)`, `cm:P(M4)`):
    the word-wise majority and bit-sliced counter kernels, with every border class
    (a row of 2 or 1 valid taps ties or stands alone, an empty row abstains, a channel votes
    over 2 rows), a tie rule per level, partial last words, several words per row."""
    if padding >= k:
        return
    c = dict(C=C, k=k, T=k * k, N=2, H=5, W=4, Co=Co, agree=agree, seed=seed)
    x, w = _inputs(c)
    spec = "cm:" + shape.format(r=f"M{k}", k=f"M{k}", c=f"M{k * k}")
    try:
        hier = resolve(spec, C * k * k, k * k, tie)
    except BitvoteError:  # a tie sequence for another depth
        return
    pc = PackedConv(w >= 0, stride, padding, pad_value, hier)
    assert pc.kind == (1 if len(hier.leaf_sizes) == 1 else 5 if "{c}" in shape else 4), spec
    with BF.reference_votes():
        want = BF.binary_conv2d(x, w, stride, padding, voter=hier, pad_value=pad_value)
    if C * k <= 8:
        levels = [lv.groups for lv in hier.levels]
        ties = [lv.tie.plain for lv in hier.levels]
        assert torch.equal(want, oracle.binary_conv(x, w, stride, padding, pad_value, levels, ties, hier.root, "cm"))
    _check_every_path(pc, hier, pack(x), want, Co, spec)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(Lc=st.sampled_from([8, 16, 32, 64, 128]), G=st.sampled_from([2, 3, 4, 5]), k=st.sampled_from([1, 2, 3]),
       root=st.sampled_from(["M", "P"]), tie=st.sampled_from([1, -1, "first", ("first", 1), (1, "first"), (-1, "first")]),
       Co=st.sampled_from([1, 8, 13]), stride=st.sampled_from([1, 2]), padding=st.sampled_from([0, 1, 2]),
       pad_value=st.sampled_from([0.0, 1.0, -1.0]), agree=st.sampled_from([0.0, 0.5, 0.9]), seed=st.integers(0, 2**16))
def test_channel_groups_match_the_layer(Lc, G, k, root, tie, Co, stride, padding, pad_value, agree, seed):
    """`cgroups=G` (leaves of Lc whole channels over every tap): field leaves (Lc = 8, 16, 32,
    partial last words when G * Lc is not a multiple of 64) and word leaves (Lc = 64, 128),
    a tie rule per level, pixels without a valid tap (padding 2 with k <= 2)."""
    C = G * Lc
    if C > 320:
        return
    T = k * k
    spec = f"cgroups={G}" if root == "M" else f"cm:P(M{C * T // G})"
    try:
        hier = resolve(spec, C * T, T, tie)
    except BitvoteError:  # a tie sequence for another depth
        return
    c = dict(C=C, k=k, T=T, N=2, H=4, W=3, Co=Co, agree=agree, seed=seed)
    x, w = _inputs(c)
    pc = PackedConv(w >= 0, stride, padding, pad_value, hier)
    assert pc.kind == 6, spec
    with BF.reference_votes():
        want = BF.binary_conv2d(x, w, stride, padding, voter=hier, pad_value=pad_value)
    _check_every_path(pc, hier, pack(x), want, Co, spec)
