"""Sigma ablation: which surrogate width retrains a converted voter model best?

One popcount baseline is trained (or reused), then retrained through each voter with each
sigma rule, same budget, same seed, same data; the table prints top-1/top-5 per (voter, rule).
Every run lives in ``--out`` and resumes, so an interrupted ablation continues.

    PYTHONPATH=src python benchmarks/sigma_ablation.py --data PATH --out runs/sigma-ablation --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bitvote.io import atomic_write_bytes
from bitvote.errors import BitvoteError
from bitvote.train import TrainConfig, train


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data")
    p.add_argument("--out", default="runs/sigma-ablation")
    p.add_argument("--model", default="reactnet18")
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--subset", type=int, default=5000)
    p.add_argument("--test-subset", type=int, default=2000)
    p.add_argument("--base-epochs", type=int, default=6)
    p.add_argument("--epochs", type=int, default=2, help="retraining epochs per (voter, rule)")
    p.add_argument("--lr", type=float, default=2e-3, help="baseline LR")
    p.add_argument("--retrain-lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--voters", nargs="+", default=["mv", "tap,groups=4"])
    p.add_argument("--ties", nargs="+", default=["1", "first"], help="tie per voter (same order)")
    p.add_argument("--rules", nargs="+", default=["fanin", "valid", "unit", "0.5"])
    p.add_argument("--surrogate", default="approxsign")
    p.add_argument("--threads", type=int)
    a = p.parse_args(argv)
    out = Path(a.out)
    common = dict(model=a.model, width=a.width, subset=a.subset, test_subset=a.test_subset, batch_size=a.batch_size,
                  data=a.data, threads=a.threads, quiet=True, resume=True, seed=0)
    t0 = time.time()
    base = train(TrainConfig(**common, epochs=a.base_epochs, lr=a.lr, eval_every=a.base_epochs, out=str(out / "baseline")))
    rows = [dict(voter="popcount", sigma="-", tie="-", top1=base["top1"], top5=base["top5"], wall_s=base.get("wall_s"))]
    print(f"baseline: top1 {base['top1']:.2f} top5 {base['top5']:.2f}", flush=True)
    ties = a.ties + [a.ties[-1]] * (len(a.voters) - len(a.ties))
    for voter, tie in zip(a.voters, ties):
        for rule in a.rules:
            slug = "".join(c if c.isalnum() else "_" for c in f"{voter}-{tie}-{rule}")
            cfg = TrainConfig(**{**common, "model": None, "width": None}, init=str(out / "baseline" / "best.pt"),
                              voter=voter, tie=tie, sigma=rule, surrogate=a.surrogate, epochs=a.epochs, lr=a.retrain_lr,
                              eval_every=a.epochs, out=str(out / slug))
            try:
                r = train(cfg)
                row = dict(voter=voter, sigma=rule, tie=tie, top1=r["top1"], top5=r["top5"], wall_s=r.get("wall_s"))
            except BitvoteError as e:  # a diverged run is a result, not a crash
                row = dict(voter=voter, sigma=rule, tie=tie, top1=None, top5=None, error=str(e))
            rows.append(row)
            print(json.dumps(row), flush=True)
    atomic_write_bytes(out / "results.json", (json.dumps(rows, indent=1) + "\n").encode())
    print(f"\nCIFAR-10 ({a.data}), {a.model} width {a.width}, {a.subset} train / {a.test_subset} test images; "
          f"baseline {a.base_epochs} epochs, retrain {a.epochs} epochs ({a.surrogate}); {time.time() - t0:.0f} s\n")
    print("| voter | tie | sigma | Top-1 (%) | Top-5 (%) |\n|---|---|---|---|---|")
    for r in rows:
        t1 = "diverged" if r["top1"] is None else f"{r['top1']:.2f}"
        t5 = "" if r["top5"] is None else f"{r['top5']:.2f}"
        print(f"| {r['voter']} | {r['tie']} | {r['sigma']} | {t1} | {t5} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
