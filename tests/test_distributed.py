"""Scale-out: 2 gloo processes on the CPU train the same run as 1 process, and their checkpoint resumes in 1.

The commands are the ones docs/scaling.md gives (``torchrun`` is ``python -m torch.distributed.run``).
Tolerance: the 2-rank run sums each gradient in two halves and averages them over gloo, so float
rounding differs from the 1-process sum; after a few Adam steps of a width-1/8 ``bn="none"``
model the weights agree to ``ATOL`` (measured: ~2e-6) and the logged losses to ``RTOL``.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bitvote.train import TrainConfig, load_checkpoint, train

SRC = str(Path(__file__).resolve().parents[1] / "src")
ATOL = 1e-4
RTOL = 1e-5


@pytest.fixture()
def data(tiny_data):
    return tiny_data(n_train=48, n_test=20)


def _args(data, out, batch, *extra):
    return ["train", "--model", "reactnet18", "--width", "0.125", "--bn", "none", "--data", str(data),
            "--epochs", "2", "--batch-size", str(batch), "--seed", "1", "--threads", "1", "--no-download",
            "--quiet", "--out", str(out), *extra]


def _cfg(data, out, batch, **kw):
    return TrainConfig(model="reactnet18", width=0.125, bn="none", data=str(data), epochs=2, batch_size=batch,
                       seed=1, threads=1, download=False, quiet=True, out=str(out), **kw)


def _run(cmd, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=SRC, BITVOTE_CACHE=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _close(a, b):
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] and a["batch"] == b["batch"]
    for k in a["model"]:
        diff = (a["model"][k].double() - b["model"][k].double()).abs().max().item() if a["model"][k].numel() else 0.0
        assert diff <= ATOL, (k, diff)
    la = [r["train_loss"] for r in a["history"]] + [a["epoch_stats"]["loss"]]
    lb = [r["train_loss"] for r in b["history"]] + [b["epoch_stats"]["loss"]]
    assert la == pytest.approx(lb, rel=RTOL)


def test_torchrun_two_ranks_match_one_and_resume_in_one(data, tmp_path):
    """torchrun --nproc_per_node 2 -m bitvote train ..., stopped mid-run, then --resume in 1 process."""
    two, one = tmp_path / "two", tmp_path / "one"
    _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "bitvote",
          *_args(data, two, 8, "--stop-after-steps", "5")], tmp_path)
    assert {p.name for p in two.iterdir()} == {"last.pt", ".lock"}  # rank 0 alone wrote, nothing half-written left
    assert train(_cfg(data, one, 8, stop_after_steps=5))["finished"] is False
    a, b = load_checkpoint(two / "last.pt"), load_checkpoint(one / "last.pt")
    assert a["world_size"] == 2 and b["world_size"] == 1
    assert (a["step"], a["epoch"], a["batch"]) == (5, 0, 5)  # global batches: independent of the world size
    _close(a, b)
    # the 2-process checkpoint resumes in 1 process (`bitvote train --out DIR --resume`); both end alike
    from bitvote.cli import main

    assert main(["train", "--data", str(data), "--threads", "1", "--quiet", "--out", str(two), "--resume"]) == 0
    r2 = load_checkpoint(two / "last.pt")["result"]
    r1 = train(_cfg(data, one, 8, resume=True))
    a, b = load_checkpoint(two / "last.pt"), load_checkpoint(one / "last.pt")
    assert a["finished"] and b["finished"] and a["step"] == 12
    _close(a, b)
    assert r2["top1"] == r1["top1"]


def test_nproc_shortcut_uneven_shards(data, tmp_path):
    """bitvote train --nproc 2 with a global batch of 7 (ranks take 4 and 3): still the 1-process run."""
    two, one = tmp_path / "two", tmp_path / "one"
    r = _run(["-m", "bitvote", *_args(data, two, 7, "--nproc", "2", "--json")], tmp_path)
    assert r.stdout.count("{") == 1  # one result line (rank 0's)
    res1 = train(_cfg(data, one, 7))
    a, b = load_checkpoint(two / "last.pt"), load_checkpoint(one / "last.pt")
    assert a["step"] == 12 and a["finished"]
    assert {p.name for p in two.iterdir()} == {"last.pt", "best.pt", "log.csv", "result.json", ".lock"}
    _close(a, b)
    assert abs(a["result"]["top1"] - res1["top1"]) <= 5.0  # at most one of 20 test images flips


def test_nproc_rejects_bad_values_before_launching(data, tmp_path, capsys):
    from bitvote.cli import main

    for argv, match in ((_args(data, tmp_path / "a", 8, "--nproc", "0"), "--nproc"),
                        (_args(data, tmp_path / "b", 0, "--nproc", "2"), "--batch-size"),
                        (_args(data, tmp_path / "c", 8, "--nproc", "2", "--device", "tpu"), "tpu")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err
