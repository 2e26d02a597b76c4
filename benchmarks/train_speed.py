"""Training throughput: float ResNet-18 vs ReActNet-18 with popcount / mv / tap voters, on CPU.

One run measures every row on the same machine state, so the ratios are comparable:

    PYTHONPATH=src python benchmarks/train_speed.py            # widths 0.25 and 1.0, batch 64
    PYTHONPATH=src python benchmarks/train_speed.py --threads 2 --json speed.json
    PYTHONPATH=src python benchmarks/train_speed.py --widths 0.125 --voters "tap;tap,groups=4" --tie first --fuse both

A step is the whole training step of ``bitvote train``: batched crop/flip/normalize of a uint8
batch, forward, cross-entropy, backward, Adam. Rows report images/s (median over timed steps)
and the step time relative to ``resnet18`` at the same width (the issue's goal: <= 1.3x).
Run it on a quiet machine: other processes on the cores distort every number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from bitvote import data as D
from bitvote import models
from bitvote.train.optim import make_optimizer

def measure(name, voter, width, batch, steps, warmup, seed=0, tie=None):
    torch.manual_seed(seed)
    model = models.create(name, voter=voter, width=width).train()
    if tie is not None and voter != "popcount":
        models.set_voter(model, voter, tie=tie)
    opt = make_optimizer(model, 1e-3, 0.0)
    g = torch.Generator().manual_seed(seed)
    xs = torch.randint(0, 256, (batch * 4, 3, 32, 32), dtype=torch.uint8, generator=g)
    ys = torch.randint(0, 10, (batch * 4,), generator=g)
    times = []
    for i in range(warmup + steps):
        perm, dy, dx, flip = D.epoch_plan(len(xs), seed, i)
        idx = perm[:batch]
        t = time.perf_counter()
        x = D.normalize(D.augment(xs[idx], dy[idx], dx[idx], flip[idx]), "cifar10")
        loss = F.cross_entropy(model(x), ys[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="0.25,1.0")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--voters", default="popcount;mv;tap", help="reactnet18 rows, ';'-separated specs")
    ap.add_argument("--tie", default=None, help="tie rule of the voter rows (default: the layers' +1)")
    ap.add_argument("--fuse", choices=("on", "off", "both"), default="on",
                    help="fused CPU vote chains (BITVOTE_FUSE); both = each voter row twice")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    a = ap.parse_args(argv)
    tie = None if a.tie is None else (a.tie if a.tie == "first" else int(a.tie))
    plan = [("resnet18", "popcount", True)]
    for v in a.voters.split(";"):
        for fz in {"on": (True,), "off": (False,), "both": (False, True)}[a.fuse]:
            plan.append(("reactnet18", v.strip(), fz))
    if a.threads:
        torch.set_num_threads(a.threads)
    widths = [float(w) for w in a.widths.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {a.batch_size}, "
          f"{a.steps} timed steps (median), cpu count {os.cpu_count()}")
    print(f"tie: {a.tie or 'layer default'}")
    print("| model | voter | fused | width | step (ms) | images/s | x resnet18 |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for w in widths:
        base = None
        for name, voter, fz in plan:
            os.environ["BITVOTE_FUSE"] = "1" if fz else "0"
            s = measure(name, voter, w, a.batch_size, a.steps, a.warmup, tie=tie)
            base = base or s
            row = {"model": name, "voter": voter, "fused": fz, "width": w, "step_ms": 1e3 * s,
                   "images_per_s": a.batch_size / s, "ratio": s / base}
            rows.append(row)
            print(f"| {name} | {voter} | {'yes' if fz else 'no'} | {w:g} | {row['step_ms']:.1f} | "
                  f"{row['images_per_s']:.0f} | {row['ratio']:.2f} |")
            sys.stdout.flush()
    if a.json:
        from bitvote.io import atomic_write_bytes

        atomic_write_bytes(a.json, json.dumps({"threads": torch.get_num_threads(), "batch": a.batch_size,
                                               "rows": rows}, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
