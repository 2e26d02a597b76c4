"""``bitvote demo``: the README's main job, a few CPU minutes from install to an accuracy.

It trains a reduced-width ReActNet-18 on a fixed subset of CIFAR-10 and prints a table of
stages and the commands to go further. The run lives in ``out/<stage>`` and resumes, so a
second ``bitvote demo`` reuses finished stages. Later stages (convert to a majority voter,
retrain through it) append rows to ``STAGES``' output the same way.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from .loop import TrainConfig, train

__all__ = ["DEMO", "run_demo", "format_table"]

#: the demo's baseline: ~3 minutes on 2 CPU cores (most of it training)
DEMO = dict(model="reactnet18", dataset="cifar10", width=0.25, epochs=4, batch_size=128, lr=2e-3,
            schedule="linear", subset=5000, test_subset=2000, seed=0)


def format_table(rows) -> str:
    """Markdown table of ``(name, result)`` rows: the seed's layout (Models, Top-1, Top-5)."""
    lines = ["| Models | Top-1 (%) | Top-5 (%) |", "|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['top1']:.2f} | {r['top5']:.2f} |")
    return "\n".join(lines)


def run_demo(data=None, out="runs/demo", device="cpu", threads=None, download=True, quiet=False, **overrides) -> dict:
    """Train the demo baseline (or reuse it) and print the result; returns ``{stage: result}``."""
    opts = {**DEMO, **overrides}
    opts.setdefault("eval_every", opts["epochs"])  # test once, at the end: minutes count here
    cfg = TrainConfig(**opts, data=data, out=str(Path(out) / "baseline"), resume=True,
                      device=device, threads=threads, download=download, quiet=quiet)
    results = {"baseline": train(cfg)}
    rows = [(f"ReActNet-18 (width {cfg.width}, popcount)", results["baseline"])]
    if not quiet:
        data_arg = f" --data {shlex.quote(str(data))}" if data else ""
        print(f"\nCIFAR-10, {cfg.subset} training images, {cfg.epochs} epochs, "
              f"tested on {cfg.test_subset} test images:\n")
        print(format_table(rows))
        print("\nGo further:")
        print(f"  bitvote eval {Path(out) / 'baseline' / 'best.pt'}{data_arg}")
        print(f"  bitvote train --model reactnet18 --width 0.25 --epochs 30{data_arg} --out runs/reactnet18-w025")
        sys.stdout.flush()
    return results
