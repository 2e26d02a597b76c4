"""The training-speed benchmark runs end to end (tiny widths, one timed step)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench(*args, timeout=120, script="train_speed.py"):
    """The benchmark as a user runs it, on this checkout's sources."""
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def bench_rows(tmp_path, *args, timeout=120, script="train_speed.py"):
    """A successful run with ``--json``: its process result and the rows it wrote."""
    out = tmp_path / "rows.json"
    r = bench(*args, "--json", out, timeout=timeout, script=script)
    assert r.returncode == 0, r.stderr
    return r, json.loads(out.read_text())["rows"]


def test_train_speed_runs(tmp_path):
    r, rows = bench_rows(tmp_path, "--widths", "0.0625", "--batch-size", "4", "--steps", "1", "--warmup", "0", "--threads", "1")
    assert [(x["model"], x["voter"]) for x in rows] == [("resnet18", "popcount"), ("reactnet18", "popcount"),
                                                        ("reactnet18", "mv"), ("reactnet18", "tap")]
    assert rows[0]["ratio"] == 1.0 and "| reactnet18 | tap |" in r.stdout


def test_train_speed_models_and_act_switch(tmp_path):
    _, rows = bench_rows(tmp_path, "--widths", "0.0625", "--batch-size", "4", "--steps", "1", "--warmup", "0", "--threads", "1",
                         "--voters", "popcount", "--models", "reactnet18,birealnet18", "--act", "both")
    assert [(x["model"], x["act"]) for x in rows][1:] == [("reactnet18", False), ("reactnet18", True),
                                                          ("birealnet18", False), ("birealnet18", True)]
    assert all(x["ratio_popcount"] == 1.0 for x in rows[1:])  # each against its own model and switch
    bad = bench("--models", "nonet", timeout=60)
    assert bad.returncode == 2 and "--models" in bad.stderr and "Traceback" not in bad.stderr


def test_train_speed_rounds_report_the_median_of_interleaved_rounds(tmp_path):
    r, rows = bench_rows(tmp_path, "--widths", "0.0625", "--batch-size", "4", "--steps", "1", "--warmup", "0", "--threads", "1",
                         "--voters", "popcount;tap,leaf=2", "--paths", "flat", "--rounds", "3", timeout=180)
    assert [x["path"] for x in rows] == ["-", "-", "flat"]
    for x in rows:
        assert len(x["rounds_ms"]) == 3
        assert abs(x["step_ms"] - sorted(x["rounds_ms"])[1]) < 1e-9
    assert "round 2/3 done" in r.stderr and "3 interleaved rounds" in r.stdout
    bad = bench("--rounds", "0", timeout=60)
    assert bad.returncode == 2 and "--rounds" in bad.stderr and "Traceback" not in bad.stderr


def test_train_speed_packed_switch_times_each_binary_row_twice(tmp_path):
    _, rows = bench_rows(tmp_path, "--widths", "0.0625", "--batch-size", "4", "--steps", "1", "--warmup", "0", "--threads", "1",
                         "--voters", "popcount;mv", "--packed", "both")
    assert [(x["voter"], x["packed"]) for x in rows[1:]] == [("popcount", False), ("mv", False),
                                                             ("popcount", True), ("mv", True)]
    # each row's popcount reference is the popcount row of its own setting
    assert rows[1]["ratio_popcount"] == 1.0 and rows[3]["ratio_popcount"] == 1.0


def test_train_speed_terms_path_times_the_term_loop_beside_the_default(tmp_path):
    _, rows = bench_rows(tmp_path, "--widths", "0.25", "--batch-size", "2", "--steps", "1", "--warmup", "0",
                         "--threads", "1", "--voters", "popcount;tap", "--tie", "first", "--paths", "terms,new",
                         timeout=180)
    assert [(x["voter"], x["path"]) for x in rows[1:]] == [("popcount", "-"), ("tap", "terms"), ("tap", "new")]
    bad = bench("--paths", "terms,fast", timeout=60)
    assert bad.returncode == 2 and "terms" in bad.stderr and "Traceback" not in bad.stderr


def test_popcount_forward_benchmark_checks_and_times_every_shape(tmp_path):
    _, rows = bench_rows(tmp_path, "--widths", "0.5", "--batch-size", "2", "--reps", "1", "--threads", "1",
                         script="popcount_forward.py")
    assert [x["conv"] for x in rows] == ["32->32@32", "32->64@32 s2", "64->64@16", "64->128@16 s2", "128->128@8",
                                         "128->256@8 s2", "256->256@4"]
    assert all(x["float_ms"] > 0 and x["int_ms"] > 0 and x["affine_ms"] > 0 for x in rows)


def test_voter_speed_times_the_term_loop_beside_the_kernels(tmp_path):
    r = bench("--channels", "8", "--size", "6", "--batch", "2", "--rounds", "1", "--threads", "1", "--fuse", "on",
              "--voters", "popcount,cm:M(M3(M3))", "--tie", "first", "--paths", "loop,nochan,new", "--precision", "fp32",
              "--json", script="voter_speed.py", timeout=180)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(x["voter"], x["path"], x["precision"]) for x in rows] == [
        ("popcount", "-", "fp32"), ("cm:M(M3(M3))", "loop", "fp32"), ("cm:M(M3(M3))", "nochan", "fp32"),
        ("cm:M(M3(M3))", "new", "fp32")]
    assert rows[1]["resolved"] == "cm:M8(M3(M3))" and all(x["ms"] > 0 for x in rows)
    bad = bench("--paths", "fast", script="voter_speed.py", timeout=60)
    assert bad.returncode == 2 and "--paths" in bad.stderr and "Traceback" not in bad.stderr
