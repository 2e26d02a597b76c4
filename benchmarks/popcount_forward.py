"""Popcount forward of ReActNet-18's binary 3x3 convs: float conv vs packed bits, side by side.

    PYTHONPATH=src python benchmarks/popcount_forward.py --threads 2 --batch-size 128
    PYTHONPATH=src python benchmarks/popcount_forward.py --widths 0.5 --threads 1 --json fwd.json

For every conv shape of the network at each width (stage entries at stride 2), one process
times ``F.conv2d`` on +/-1 input and weights (``torch.no_grad``) against what a training
forward does on the packed kernels (:mod:`bitvote.nn.packedvote`): pack the input, run the
popcount kernel, hand out contiguous fp32 sums, with each epilogue (``int`` then a
conversion; ``affine`` then a copy from channels-last). Every result is checked equal to the
float conv's first. Medians of ``--reps``; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from bitvote.models.resnet import STAGES, channels
from bitvote.packed import PackedConv, pack


def shapes(width: float):
    """(C_in, C_out, input size, stride) of the binary 3x3 convs, one row per distinct shape."""
    ch = [channels(c, width) for c in STAGES]
    rows = [(ch[0], ch[0], 32, 1)]
    for i in (1, 2, 3):
        rows.append((ch[i - 1], ch[i], 64 >> i, 2))
        rows.append((ch[i], ch[i], 32 >> i, 1))
    return rows


def timed(f, reps: int) -> float:
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="0.125,0.25,0.5,1.0")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch and kernel threads (default: torch's choice)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", help="also write the rows to this JSON file")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    th = torch.get_num_threads()
    print(f"torch {torch.__version__}, {th} thread(s), batch {a.batch_size}, median of {a.reps}")
    print("| width | conv | float ms | pack ms | packed int ms (x) | packed affine ms (x) |")
    print("|---|---|---:|---:|---:|---:|")
    rows = []
    for w in (float(v) for v in a.widths.split(",")):
        for C, Co, H, s in shapes(w):
            g = torch.Generator().manual_seed(0)
            x = torch.where(torch.randn(a.batch_size, C, H, H, generator=g) >= 0, 1.0, -1.0)
            wt = torch.where(torch.randn(Co, C, 3, 3, generator=g) >= 0, 1.0, -1.0)
            pi = PackedConv(wt >= 0, s, 1, 0.0, None)
            pa = PackedConv(wt >= 0, s, 1, 0.0, None).epilogue("affine", torch.ones(Co), torch.zeros(Co))

            def by_int():
                return pi(pack(x, threads=th), threads=th).float()

            def by_affine():
                return pa(pack(x, threads=th), threads=th).contiguous()

            with torch.no_grad():
                ref = F.conv2d(x, wt, None, s, 1)
                assert torch.equal(by_int(), ref) and torch.equal(by_affine(), ref), (C, Co, H, s)
                tf = timed(lambda: F.conv2d(x, wt, None, s, 1), a.reps)
            tp = timed(lambda: pack(x, threads=th), a.reps)
            ti, ta = timed(by_int, a.reps), timed(by_affine, a.reps)
            name = f"{C}->{Co}@{H}" + (" s2" if s == 2 else "")
            rows.append({"width": w, "conv": name, "float_ms": tf, "pack_ms": tp, "int_ms": ti, "affine_ms": ta})
            print(f"| {w:g} | {name} | {tf:.2f} | {tp:.2f} | {ti:.2f} ({tf / ti:.2f}x) | {ta:.2f} ({tf / ta:.2f}x) |",
                  flush=True)
    if a.json:
        from bitvote.io import atomic_write_bytes

        atomic_write_bytes(a.json, json.dumps({"threads": th, "batch": a.batch_size, "rows": rows}, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
