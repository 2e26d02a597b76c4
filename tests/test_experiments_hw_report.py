"""`bitvote hw report` joins `bitvote reproduce` output with synthesized cost: table, plot and JSON."""

import json
import shutil

import pytest

from bitvote.cli import main
from bitvote.experiments.reproduce import reproduce


@pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys is not installed (.ci/run installs it)")
def test_hw_report_from_reproduce_output(tiny_data, tmp_path, capsys):
    data = tiny_data(n_train=16, n_test=8)
    out = tmp_path / "rep"
    reproduce("smoke", voters=["mv"], data=str(data), out=str(out), threads=1, download=False,
              quiet=True, print_table=False)
    rows = json.loads((out / "results.json").read_text())
    png = tmp_path / "pareto.png"
    assert main(["hw", "report", str(out / "results.json"), "--plot", str(png), "--json", str(tmp_path / "j.json")]) == 0
    text = capsys.readouterr().out
    joined = json.loads((tmp_path / "j.json").read_text())
    assert len([r for r in joined if not str(r.get("label", "")).startswith("popcount + unfolded")]) >= len(rows)
    assert "popcount" in text and "mv" in text
    try:
        import matplotlib  # noqa: F401

        assert png.stat().st_size > 1000
    except ImportError:
        pass
