"""Generated RTL: lint-clean, simulates equal to bitvote.voter (ties at every level, abstention),
and synthesizes with Yosys. Needs iverilog / yosys (.ci/run installs them with apt-get)."""

import shutil
from dataclasses import replace

import pytest

from bitvote import BitvoteError
from bitvote.cli import main
from bitvote.hw.check import check
from bitvote.hw.design import make_design
from bitvote.hw.lint import lint
from bitvote.hw.rtl import generate, popcount_fa_count, write
from bitvote.voter import Level

HINT = "not installed and could not be installed here (.ci/run: apt-get install -y yosys iverilog)"
need_iverilog = pytest.mark.skipif(not shutil.which("iverilog"), reason=f"iverilog {HINT}")
need_yosys = pytest.mark.skipif(not shutil.which("yosys"), reason=f"yosys {HINT}")

# (n, spec, k, tie, pad): MV, HMV of 2-4 levels, uneven, cm order, P root, first ties, zero padding
DESIGNS = [
    (64, "mv", 1, "1", "+1"),
    (64, "mv", 1, "-1", "zero"),
    (64, "M4(M16)", 1, "first", "zero"),
    (128, "M2(M4(M4(M4)))", 1, "first,-1,1,first", "zero"),
    (128, "M2(M4(M4(M4)))", 1, "-1", "+1"),
    (72, "tap", 3, "first,-1", "zero"),
    (72, "cm:M8(M3(M3))", 3, "first", "zero"),
    (72, "P(M9)", 3, "1", "zero"),
    (64, "P(M4(M4))", 1, "first", "+1"),
    (22, "M2(M3(M4), M2(M5, M5))", 1, "first", "zero"),
    (128, "popcount", 1, "1", "zero"),
    (128, "popcount", 1, "1", "+1"),
]


def _design(n, spec, k, tie, pad, epilogue="threshold"):
    return make_design(n, spec, k, tie, pad, epilogue)


@need_iverilog
@pytest.mark.parametrize("case", DESIGNS, ids=lambda c: f"{c[1]}-n{c[0]}-t{c[3]}-{c[4]}")
def test_rtl_matches_reduce_votes(case):
    eps = ["threshold", "bn"] if case[1] == "popcount" else ["threshold"]
    for ep in eps:
        d = _design(*case, epilogue=ep)
        r = check(d, vectors=400, seed=1)
        assert r.mismatches == 0, str(r)


@need_iverilog
@pytest.mark.parametrize("tie, pad", [("1", "zero"), ("first", "zero"), ("-1", "+1")])
def test_wrong_tie_at_any_level_is_caught(tie, pad):
    """The vectors tie voters at every level: a reference with one level's tie changed differs."""
    d = make_design(128, "M2(M4(M4(M4)))", 1, tie, pad)
    h = d.hier
    for li, lv in enumerate(h.levels):
        alt = {1: -1, -1: 1, "first": 1}[lv.tie]
        levels = list(h.levels)
        levels[li] = Level(lv.groups, alt)
        r = check(d, vectors=200, seed=2, reference=replace(h, levels=tuple(levels)))
        assert r.mismatches > 0, f"a wrong tie at level {li} went unnoticed"


@need_iverilog
def test_abstention_is_exercised():
    """Treating padded terms as -1 (no abstention) must disagree with the zero-padded RTL."""
    import torch

    from bitvote.hw.check import expected, make_vectors, simulate

    d = make_design(64, "M4(M16)", 1, "1", "zero")
    Z, V = make_vectors(d, 200, seed=3)
    got = torch.tensor(simulate(d, generate(d), Z, V))
    assert torch.equal(got, expected(d, Z, V))
    dn = replace(d, pad="-1")  # padded terms as -1 votes
    assert not torch.equal(got, expected(dn, Z * V, torch.ones_like(V)))
    assert (V.view(200, 4, 16).sum(2) == 0).any(), "no leaf abstained in the vectors"


def test_rtl_is_readable_and_lint_clean(tmp_path):
    d = _design(72, "tap", 3, "first,1", "zero")
    text = generate(d)
    assert "module bv_vote" in text and "bv_first" in text and "input  wire [71:0] valid" in text
    assert "genvar" in text  # uniform levels are generate loops
    assert popcount_fa_count(128) == 120  # the anchors' pc_128 has 120 FAs
    if not (shutil.which("verilator") or shutil.which("iverilog")):
        pytest.skip(f"verilator and iverilog {HINT}")
    for case in DESIGNS[:: 3] + [DESIGNS[-1]]:
        for ep in ("threshold", "bn"):
            dd = _design(*case, epilogue=ep)
            tool, msgs = lint(write(dd, tmp_path))
            assert msgs == [], f"{dd.name} ({tool}): {msgs[:3]}"
            if case[1] != "popcount":
                break


@need_yosys
def test_synth_small_n(tmp_path, monkeypatch):
    monkeypatch.setenv("BITVOTE_CACHE", str(tmp_path))
    from bitvote.hw.synth import netlist_path, synth

    res = {}
    for spec, ep in [("popcount", "threshold"), ("popcount", "bn"), ("mv", "threshold"),
                     ("M4(M32)", "threshold"), ("M2(M4(M4(M4)))", "threshold")]:
        d = make_design(128, spec, 1, "1", "+1", ep, xnor=False)
        res[(spec, ep)] = synth(d)
    T = {k: v["transistors"] for k, v in res.items()}
    thr = T[("popcount", "threshold")]
    # anchors (Yosys 0.23): 4712 T for popcount + threshold at n = 128; MV within a few %
    assert 0.9 * 4712 < thr < 1.1 * 4712
    assert abs(T[("mv", "threshold")] / thr - 1) < 0.06
    assert T[("M4(M32)", "threshold")] < 0.9 * thr  # anchors: -21 %
    assert T[("M2(M4(M4(M4)))", "threshold")] < 0.6 * thr
    assert T[("popcount", "bn")] > 1.5 * thr  # anchors: +128 % at n = 128
    assert res[("mv", "threshold")]["depth_cmos"] < res[("popcount", "threshold")]["depth_cmos"]
    # cached: same numbers, no second run; the gate netlist simulates equal too
    d = make_design(128, "M4(M32)", 1, "1", "+1", xnor=False)
    assert synth(d)["key"] == res[("M4(M32)", "threshold")]["key"]
    if shutil.which("iverilog"):
        d64 = make_design(64, "M4(M16)", 1, "first", "zero")
        r = check(d64, vectors=200, netlist=netlist_path(synth(d64)))
        assert r.mismatches == 0, str(r)


@need_yosys
def test_cli_synth_and_check(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BITVOTE_CACHE", str(tmp_path))
    assert main(["hw", "synth", "--n", "64", "--voter", "mv", "M(M16)", "--no-xnor"]) == 0
    out = capsys.readouterr().out
    assert "est. transistors" in out and "bv_M4_M16" in out
    assert main(["hw", "synth", "--n", "64", "--voter", "popcount", "mv", "--no-xnor", "--epilogue", "threshold", "bn",
                 "--table"]) == 0
    out = capsys.readouterr().out
    assert "baseline popcount + runtime threshold" in out and "bv_pcbn_64_noxnor" in out and "| +0 % |" in out
    if shutil.which("iverilog"):
        assert main(["hw", "check", "--n", "64", "--voter", "M(M16)", "--pad", "zero", "--tie", "first,-1",
                     "--vectors", "100"]) == 0
        assert "0 mismatches" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["hw", "rtl", "--n", "100", "--k", "3", "--out", "x"], "not a multiple of k*k"),
    (["hw", "rtl", "--n", "64", "--voter", "M3(M5)", "--out", "x"], "does not fit"),
    (["hw", "rtl", "--n", "64", "--voter", "M4((", "--out", "x"], "malformed voter spec"),
    (["hw", "rtl", "--n", "64", "--tie", "maybe", "--out", "x"], "unknown tie rule"),
])
def test_bad_design_one_line(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_tool_message(monkeypatch):
    from bitvote.hw import check as chk

    monkeypatch.setattr(chk.shutil, "which", lambda name: None)
    with pytest.raises(BitvoteError, match="apt-get install -y yosys iverilog"):
        chk.require_tool("yosys")
