"""`bitvote hw units`: the seed's table (XNOR and popcount / voter units per layer)."""

import json

import pytest
import torch

import bitvote
from bitvote.cli import main
from bitvote.hw.units import count_units, model_from_checkpoint


def seed_table(width=1.0):
    """ReActNet-18 on CIFAR by hand: 4 stages x 4 blocks, 32/16/8/4 pixels, 3x3 convs."""
    rows = []
    cin = round(64 * width)
    for si, (c, hw) in enumerate(zip((64, 128, 256, 512), (32, 16, 8, 4))):
        c = round(c * width)
        for bi in range(4):
            stride = 2 if si > 0 and bi == 0 else 1
            rows.append(dict(layer=f"layer{si + 1}.{bi}.conv", C_in=cin, C_out=c, H_o=hw, W_o=hw, stride=stride))
            cin = c
    for r in rows:
        r["n"] = r["C_in"] * 9
        r["outputs"] = r["C_out"] * r["H_o"] * r["W_o"]
        r["xnor"] = (r["C_in"] * 3 * 3) * (r["C_out"] * r["H_o"] * r["W_o"])  # seed's formula
    return rows


def test_reactnet18_mv_matches_seed_formula():
    u = count_units(bitvote.models.create("reactnet18", voter="mv"))
    exp = seed_table()
    assert [r["layer"] for r in u["layers"]] == [r["layer"] for r in exp]
    for got, want in zip(u["layers"], exp):
        for key in ("C_in", "C_out", "H_o", "W_o", "stride", "n", "outputs"):
            assert got[key] == want[key], (got["layer"], key)
        assert got["xnor_units"] == want["xnor"]
        assert got["levels"] == [{"level": 0, "kind": "MV", "fan_in": want["n"], "per_output": 1, "units": want["outputs"]}]
    assert u["total"]["xnor_units"] == sum(r["xnor"] for r in exp) == 547_356_672
    assert u["total"]["voter_units"] == sum(r["outputs"] for r in exp)
    ops = u["real_ops"]
    assert ops["residual adds"] == sum(r["outputs"] for r in exp)  # one add per block output
    assert ops["BN multiply-adds"] > 0 and ops["real conv MACs"] > 0 and ops["FC MACs"] == 512 * 10


def test_popcount_and_hmv_levels():
    u = count_units(bitvote.models.create("reactnet18", voter="popcount", width=0.25))
    r0 = u["layers"][0]
    assert r0["mode"] == "popcount" and r0["popcount_units"] == 16 * 32 * 32 and r0["popcount_width"] == 16 * 9
    u = count_units(bitvote.models.create("reactnet18", voter="tap,leaf=8", width=0.25))
    r0 = u["layers"][0]  # C = 16: M9(M2(M8))
    assert r0["resolved"] == "M9(M2(M8))"
    outs = 16 * 32 * 32
    assert [(x["fan_in"], x["units"]) for x in r0["levels"]] == [(9, outs), (2, 9 * outs), (8, 18 * outs)]


def test_cli_model_and_checkpoint(tmp_path, capsys):
    assert main(["hw", "units", "--model", "reactnet18", "--voter", "mv"]) == 0
    out = capsys.readouterr().out
    for r in seed_table():
        line = next(l for l in out.splitlines() if l.startswith(r["layer"] + " "))
        assert f"{r['xnor']:,}" in line and f"MV{r['n']}" in line
    m = bitvote.models.create("birealnet18", voter="tap", width=0.125, tie="first")
    ck = tmp_path / "m.pt"
    torch.save({"model": m.state_dict(), "config": m.config}, ck)
    assert main(["hw", "units", str(ck), "--json"]) == 0
    u = json.loads(capsys.readouterr().out)
    assert u["model"] == "birealnet18" and u["layers"][0]["resolved"] == "M9(M8)"
    assert model_from_checkpoint(ck).config["voter"] == "tap"


@pytest.mark.parametrize("argv, words", [
    (["hw", "units"], "needs a checkpoint"),
    (["hw", "units", "/no/such.pt"], "does not exist"),
    (["hw", "units", "--model", "reactnet18", "--voter", "M7(M3)"], "does not fit"),
    (["hw", "units", "--model", "nosuch"], "unknown model"),
])
def test_bad_input_one_line(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_checkpoint(tmp_path, capsys):
    p = tmp_path / "x.pt"
    torch.save({"model": {}}, p)
    assert main(["hw", "units", str(p)]) == 2
    assert "no 'config'" in capsys.readouterr().err
