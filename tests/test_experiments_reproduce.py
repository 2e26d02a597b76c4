"""`bitvote reproduce`: the smoke preset end to end, stage skipping, diverged rows, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bitvote.cli import main
from bitvote.errors import BitvoteError
from bitvote.experiments.reproduce import PRESETS, Protocol, reproduce, voter_rows

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture()
def data(tiny_data):
    return tiny_data(n_train=24, n_test=12)


def test_smoke_preset_writes_table_results_and_plot(data, tmp_path, capsys):
    out = tmp_path / "rep"
    rc = main(["reproduce", "--preset", "smoke", "--data", str(data), "--out", str(out), "--threads", "1",
               "--no-download"])
    assert rc == 0
    printed = capsys.readouterr().out
    for f in ("table.md", "results.json"):
        assert (out / f).is_file()
    try:
        import matplotlib  # noqa: F401

        assert (out / "accuracy.png").stat().st_size > 1000
    except ImportError:
        pass
    table = (out / "table.md").read_text()
    assert "| Models | Top-1 (%) | Top-5 (%) |" in table and "| Models | Top-1 (%) | Top-5 (%) |" in printed
    assert "width 0.125" in table and "popcount, 1 epoch," in table
    body = [ln for ln in table.splitlines() if ln.startswith("| ") and "Models" not in ln]
    # baseline + 3 voter row groups (mv, mv pad +1, tap,leaf=4) x (converted, recalibrated, retrained)
    assert len(body) == 10
    assert body[0].startswith("| ReActNet-18 |")
    assert "ReActNet-18 with Majority Voter = M72" in body[1]
    assert "+ BN recalibration" in body[2] and body[3].startswith("| Our ReActNet-18 with Majority Voter")
    assert "pad +1" in body[4]
    assert "HMV `tap,leaf=4` (tie first) = M9(M2(M4)) / M9(M4(M4)) / M9(M8(M4)) / M9(M16(M4))" in body[7]
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 10
    for r in rows:
        for k in ("model", "voter", "resolved", "mode", "top1", "top5", "width", "epochs", "dataset"):
            assert k in r, k
    assert [r["mode"] for r in rows[:4]] == ["baseline", "converted", "recalibrated", "retrained"]
    assert rows[4]["pad_value"] == 1.0 and rows[7]["tie"] == "first"

    # a re-run skips every finished stage and gives the same table
    stamps = {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("*.json")}
    again = reproduce("smoke", data=str(data), out=str(out), threads=1, download=False, quiet=True)
    assert [r["top1"] for r in again] == [r["top1"] for r in rows]
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("*.json")}

    # the folder holds one protocol
    with pytest.raises(BitvoteError, match="other settings"):
        reproduce("smoke", data=str(data), out=str(out), quiet=True, download=False, epochs=2)


def test_diverged_retraining_is_a_row_not_a_crash(data, tmp_path, monkeypatch):
    real = Protocol.train_stage

    def fake(self, **kw):
        if kw.get("voter"):
            raise BitvoteError("training diverged at step 3 (epoch 1, batch 3): the loss is nan")
        return real(self, **kw)

    monkeypatch.setattr(Protocol, "train_stage", fake)
    out = tmp_path / "rep"
    rows = reproduce("smoke", voters=["tap,groups=4"], data=str(data), out=str(out), threads=1, download=False,
                     quiet=True)
    assert [r["status"] for r in rows if r["mode"] == "retrained"] == ["diverged"]
    assert "| diverged |" in (out / "table.md").read_text()
    assert all(r["top1"] is not None for r in json.loads((out / "results.json").read_text()))


def test_voter_rows_ties_and_pad_twin():
    rows = voter_rows(["mv", "tap,groups=4"])
    assert [(r.spec, r.tie, r.pad_value) for r in rows] == [("mv", "1", None), ("mv", "1", 1.0),
                                                            ("tap,groups=4", "first", None)]
    assert len({r.slug for r in rows}) == 3
    assert [r.tie for r in voter_rows(["mv", "tap"], tie="-1", pad_variant=False)] == ["-1", "-1"]


def test_cpu_and_full_presets_sweep_the_seed_hierarchies():
    for name in ("cpu", "full"):
        v = PRESETS[name]["voters"]
        assert "mv" in v and "groups=4" in v and "tap" in v and "tap,groups=4" in v
        assert any(s.startswith("tap,leaf=") and int(s.split("=")[1]) <= 16 for s in v)
        assert PRESETS[name]["pad_variant"]


@pytest.mark.parametrize("args,match", [
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--voters", "majority9000"], "voter"),
    (["--voters", "tap,leaf=16"], "does not fit layer"),
    (["--models", "resnet99"], "unknown model 'resnet99'"),
    (["--data", "MISSING"], "MISSING"),
])
def test_reproduce_bad_input_is_one_line(data, tmp_path, args, match):
    full = ["reproduce", "--preset", "smoke", "--data", str(data), "--out", str(tmp_path / "o"), "--no-download"]
    for i in range(0, len(args), 2):
        if args[i] in full:
            full[full.index(args[i]) + 1] = args[i + 1] if args[i + 1] != "MISSING" else str(tmp_path / "nowhere")
        else:
            full += args[i : i + 2]
    match = match if match != "MISSING" else "nowhere"
    env = {**os.environ, "PYTHONPATH": SRC, "BITVOTE_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "bitvote", *full], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bitvote: error:") and match in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "stages").exists()


def test_time_budget_plans_epochs(data, tmp_path):
    """gpu1's budget, run at toy scale on the CPU: epochs come from measured steps, kept in plan.json."""
    out = tmp_path / "budget"
    rows = reproduce("gpu1", models=["reactnet18"], voters=["mv"], data=str(data), out=str(out), threads=1,
                     download=False, quiet=True, print_table=False, width=0.125, batch_size=8, minutes=0.05,
                     recalibrate=8)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["epochs"] >= 1 and plan["retrain_epochs"] >= 1 and plan["baseline_epoch_s"] > 0
    assert json.loads((out / "protocol.json").read_text())["epochs"] == plan["epochs"]
    assert {r["mode"] for r in rows} == {"baseline", "converted", "recalibrated", "retrained"}
    with pytest.raises(BitvoteError, match="--minutes"):
        reproduce("gpu1", data=str(data), out=str(tmp_path / "b2"), quiet=True, download=False, minutes=None)


def test_a_folder_held_by_another_run_is_refused_in_one_line(data, tmp_path, capsys):
    """Two processes resuming the same stages would race: the second is refused, then works."""
    from bitvote.io import hold_folder

    out = tmp_path / "rep"
    with hold_folder(out, "test holder"):
        with pytest.raises(BitvoteError, match="in use by another test holder"):
            with hold_folder(out, "test holder"):
                pass
        code = main(["reproduce", "--preset", "smoke", "--data", str(data), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "is in use by another bitvote reproduce" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    with hold_folder(out, "test holder"):  # released on exit: free again
        pass
