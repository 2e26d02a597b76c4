"""The training-speed benchmark runs end to end (tiny widths, one timed step)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_speed_runs(tmp_path):
    out = tmp_path / "speed.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--widths", "0.0625",
                        "--batch-size", "4", "--steps", "1", "--warmup", "0", "--threads", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(x["model"], x["voter"]) for x in rows] == [("resnet18", "popcount"), ("reactnet18", "popcount"),
                                                        ("reactnet18", "mv"), ("reactnet18", "tap")]
    assert rows[0]["ratio"] == 1.0 and "| reactnet18 | tap |" in r.stdout
