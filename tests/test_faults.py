"""Kill safety: SIGKILL a training run at random moments, resume each time, end where an uninterrupted run ends.

Kill moments are drawn over the whole run: one during start-up, the others after a random
number of finished steps, half of them timed to land inside a checkpoint write
(``$BITVOTE_TEST_WRITE_DELAY`` makes each atomic write sleep half-way and before its rename, so
a temp file is observably in flight). After every kill ``last.pt`` must load with
``weights_only=True``; the final weights, optimizer state and logged losses must be
bit-identical to the uninterrupted run's (CPU, fixed seed, 1 thread). The draw's seed is in
every failure message; ``BITVOTE_KILL_SEED`` replays one.
"""

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

from bitvote.train import load_checkpoint

from fakedata import make_cifar_python

SRC = str(Path(__file__).resolve().parents[1] / "src")
DELAY = 0.05  # seconds of sleep inside each atomic write
STEPS = 18  # 48 images / batch 8 = 6 steps per epoch, 3 epochs
KILLS = 6


def _popen(args, env):
    return subprocess.Popen([sys.executable, "-m", "bitvote", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _temps(out: Path):
    return [p.name for p in out.glob(".*.tmp")] if out.is_dir() else []


def _inode(path: Path):
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _same(a, b, what):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for k in a:
            _same(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{what}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), what
    else:
        assert a == b, what


def test_random_sigkills_then_resume_is_bit_exact(tmp_path):
    seed = int(os.environ.get("BITVOTE_KILL_SEED") or time.time_ns() % 2**31)
    rng = random.Random(seed)
    make_cifar_python(tmp_path / "data", n_train=48, n_test=20)
    env = {**os.environ, "PYTHONPATH": SRC, "BITVOTE_CACHE": str(tmp_path / "cache"),
           "BITVOTE_TEST_WRITE_DELAY": str(DELAY)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "BITVOTE_DATA"):
        env.pop(k, None)
    args = ["train", "--model", "reactnet18", "--width", "0.125", "--data", str(tmp_path / "data"), "--epochs", "3",
            "--batch-size", "8", "--seed", "2", "--threads", "1", "--no-download", "--quiet",
            "--ckpt-every-steps", "1", "--resume"]

    ref = _popen(args + ["--out", str(tmp_path / "ref")], env)
    assert ref.wait(timeout=120) == 0, ref.stderr.read().decode()

    run = tmp_path / "run"
    last = run / "last.pt"
    # sorted distinct step targets spread over the run; target 0 = a kill during start-up
    targets = [0] + sorted(rng.sample(range(1, STEPS - 1), KILLS - 1))
    log, in_write, step = [], 0, 0
    for i, target in enumerate(targets):
        p = _popen(args + ["--out", str(run)], env)
        try:
            if target == 0:
                time.sleep(rng.uniform(0.0, 1.5))
            else:
                ino, done = _inode(last), step
                while done < target and p.poll() is None:  # every step replaces last.pt (a new inode)
                    now = _inode(last)
                    if now != ino:
                        ino, done = now, done + 1
                    time.sleep(0.002)
                if i % 2:  # land inside the next checkpoint write: its temp file is on disk
                    while not any(".last.pt." in t for t in _temps(run)) and p.poll() is None:
                        time.sleep(0.001)
                    time.sleep(rng.uniform(0.0, 2 * DELAY))
                else:
                    time.sleep(rng.uniform(0.0, 0.2))
            alive = p.poll() is None
            p.kill()
            p.wait()
        finally:
            p.stderr.close()
        assert alive, f"seed {seed}: the run ended before kill {i} (target step {target}): {log}"
        temps = _temps(run)
        in_write += any(".last.pt." in t or ".best.pt." in t for t in temps)
        if last.exists():
            ck = load_checkpoint(last)  # never corrupt: loads with weights_only=True
            assert ck["step"] >= step and not ck["finished"], f"seed {seed}: {log}"
            step = ck["step"]
        log.append((target, step, temps))
    assert in_write >= 1, f"seed {seed}: no kill landed inside a checkpoint write: {log}"
    assert step >= 1, f"seed {seed}: no progress across the kills: {log}"

    p = _popen(args + ["--out", str(run)], env)
    assert p.wait(timeout=120) == 0, p.stderr.read().decode()
    p.stderr.close()
    a, b = load_checkpoint(tmp_path / "ref" / "last.pt"), load_checkpoint(last)
    assert b["finished"] and b["step"] == STEPS
    for k in ("model", "optimizer", "epoch", "step", "best_top1", "result"):
        if k == "result":
            a[k].pop("wall_s"), b[k].pop("wall_s"), a[k].pop("out"), b[k].pop("out")
            a[k].pop("last"), b[k].pop("last"), a[k].pop("best"), b[k].pop("best")
        _same(a[k], b[k], f"seed {seed}: {k}")
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]], f"seed {seed}"
    assert not _temps(run), f"seed {seed}: stale temp files left: {_temps(run)}"
    assert sorted(p.name for p in run.iterdir()) == [".lock", "best.pt", "last.pt", "log.csv", "result.json"]
