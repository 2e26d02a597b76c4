"""`bitvote hw report`: results JSON (reproduce rows or one eval object) joined with synthesized cost."""

import json
import shutil

import pytest

from bitvote.cli import main
from bitvote.hw.report import load_results

need_yosys = pytest.mark.skipif(not shutil.which("yosys"),
                                reason="yosys not installed and could not be installed here (.ci/run: apt-get install -y yosys iverilog)")

W = 0.03125  # 2..16 channels: n = 18..144, quick to synthesize


def _write(tmp_path):
    rows = [
        {"model": "reactnet18", "voter": "popcount", "width": W, "top1": 80.0, "top5": 98.0},
        {"model": "reactnet18", "voter": "mv", "width": W, "top1": 60.0, "top5": 95.0, "variant": "converted"},
    ]
    a = tmp_path / "reproduce.json"
    a.write_text(json.dumps({"rows": rows}))
    b = tmp_path / "eval.json"  # the `bitvote eval --json` object
    b.write_text(json.dumps({"top1": 70.0, "top5": 97.0, "model": "reactnet18", "voter": "tap", "width": W}))
    return a, b


def test_load_results_formats(tmp_path):
    a, b = _write(tmp_path)
    c = tmp_path / "list.json"
    c.write_text(json.dumps([{"model": "reactnet18", "voter": "mv", "top1": 1}]))
    rows = load_results([a, b, c])
    assert [r["voter"] for r in rows] == ["popcount", "mv", "tap", "mv"]


@need_yosys
def test_report_table_and_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BITVOTE_CACHE", str(tmp_path / "cache"))
    a, b = _write(tmp_path)
    png, js = tmp_path / "p.png", tmp_path / "r.json"
    assert main(["hw", "report", str(a), str(b), "--plot", str(png), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "**popcount** (baseline)" in out and "popcount + unfolded BN (baseline)" in out
    assert "mv (converted)" in out and "| tap |" in out
    rep = {r["label"]: r for r in json.loads(js.read_text())}
    base, mv, tap = rep["popcount"], rep["mv (converted)"], rep["tap"]
    assert base["vs_baseline"] == 0 and base["bn_area_T"] > base["area_T"]
    # exact MV costs at most what popcount + threshold does (the compare is a larger share at tiny n)
    assert -0.2 < mv["vs_baseline"] <= 0.03
    assert tap["area_T"] < mv["area_T"]
    assert mv["xnor_T"] == base["xnor_T"] > 0
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no plot: matplotlib is not installed" in out and not png.exists()
    else:
        assert png.stat().st_size > 1000


@pytest.mark.parametrize("content, words", [
    ("{", "is not JSON"),
    ('{"a": 1}', "expected a list of rows"),
    ('[{"model": "reactnet18"}]', "row 0: needs 'model', 'voter' and 'top1'"),
])
def test_bad_results_one_line(tmp_path, content, words, capsys):
    p = tmp_path / "bad.json"
    p.write_text(content)
    assert main(["hw", "report", str(p)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
