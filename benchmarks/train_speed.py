"""Training throughput: float ResNet-18 vs ReActNet-18 with popcount / mv / tap voters, on CPU.

One run measures every row on the same machine state, so the ratios are comparable:

    PYTHONPATH=src python benchmarks/train_speed.py            # widths 0.25 and 1.0, batch 64
    PYTHONPATH=src python benchmarks/train_speed.py --threads 2 --json speed.json
    PYTHONPATH=src python benchmarks/train_speed.py --widths 0.125 --voters "tap;tap,groups=4" --tie first --fuse both
    PYTHONPATH=src python benchmarks/train_speed.py --widths 0.125 --batch-size 128 --steps 3 --warmup 1 \
        --threads 2 --voters "popcount;mv;tap;tap,leaf=4" --tie first --paths old,new --json speed.json

A step is the whole training step of ``bitvote train``: batched crop/flip/normalize of a uint8
batch, forward, cross-entropy, backward, Adam. Rows report images/s (median over timed steps)
and the step time relative to ``resnet18`` and to the popcount ReActNet-18 at the same width.
``--act both`` times every row with and without the fused RSign/RPReLU kernels
(``BITVOTE_NATIVE_ACT``); ``--models`` picks the binary models (ReActNet-18 by default).
``--paths old,new`` times every voter row twice, on the float leaf-sum path
(``BITVOTE_NATIVE_VOTE=0``) and on the default path (the packed-bit kernels of
:mod:`bitvote.nn.fastvote`, and for counted kernel rows such as ``cm:P(M3)`` the GEMMs of
:mod:`bitvote.nn.rowvote`); ``kernels`` is the default without those GEMMs
(``BITVOTE_ROW_VOTE=0``); ``terms`` is the default with every kernel backward on vote.c's
term loop (``BITVOTE_VOTE_BACKWARD=terms``: no leaf GEMMs); ``loop`` is the default with the
small-leaf pattern backward and the channel-major backward off (``BITVOTE_VOTE_PATTERNS=0``,
``BITVOTE_CHANNEL_VOTE=0``: those trees on the term loop); ``nochan`` is the default with the
bit-sliced backward off (``BITVOTE_CHANNEL_VOTE=0``: its trees on vote.c's pattern backward,
term loop or leaf GEMMs); ``flat`` adds the row trained with
sigma ``fanin,flat`` (exact votes, one MV's backward).
``--packed both`` times every binary row with and without the packed-bit kernels in training
(``BITVOTE_PACKED_VOTE``: the popcount forward from 32 channels on and the forward-only votes).
``--rounds R`` measures every row R times, round by round, and reports the medians, so a
slow minute of the machine lands on every row once instead of on one row.
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
from bitvote.train import heap
from bitvote.train.optim import make_optimizer

def measure(name, voter, width, batch, steps, warmup, seed=0, tie=None, clock=time.perf_counter, sigma=None):
    torch.manual_seed(seed)
    model = models.create(name, voter=voter, width=width, **({} if sigma is None else {"sigma": sigma})).train()
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
        t = clock()
        x = D.normalize(D.augment(xs[idx], dy[idx], dx[idx], flip[idx]), "cifar10")
        loss = F.cross_entropy(model(x), ys[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(clock() - t)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="0.25,1.0")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--voters", default="popcount;mv;tap", help="rows of each model, ';'-separated specs")
    ap.add_argument("--models", default="reactnet18", help="binary models, comma-separated (e.g. reactnet18,birealnet18)")
    ap.add_argument("--act", choices=("on", "off", "both"), default="on",
                    help="fused RSign/Sign/RPReLU kernels (BITVOTE_NATIVE_ACT); both = each row twice")
    ap.add_argument("--tie", default=None, help="tie rule of the voter rows (default: the layers' +1)")
    ap.add_argument("--fuse", choices=("on", "off", "both"), default="on",
                    help="fused CPU vote chains (BITVOTE_FUSE); both = each voter row twice")
    ap.add_argument("--paths", default="new",
                    help="vote paths of the voter rows, comma-separated: new (the default: packed-bit kernels, "
                         "kernel-row GEMMs, leaf-GEMM backward), kernels (packed-bit kernels only, BITVOTE_ROW_VOTE=0), "
                         "terms (no leaf-GEMM backward, BITVOTE_VOTE_BACKWARD=terms), loop (no pattern or channel-major "
                         "backward, BITVOTE_VOTE_PATTERNS=0 BITVOTE_CHANNEL_VOTE=0), nochan (no bit-sliced backward, "
                         "BITVOTE_CHANNEL_VOTE=0), old (float leaf sums, "
                         "BITVOTE_NATIVE_VOTE=0), flat (sigma fanin,flat); old,new = each voter row twice")
    ap.add_argument("--packed", choices=("on", "off", "both"), default="on",
                    help="packed-bit popcount forward and forward-only votes (BITVOTE_PACKED_VOTE); "
                         "both = each binary row twice")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time, or this process's CPU time (with --threads 1, a loaded machine's "
                         "other processes then distort less)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every row this many times, the rows interleaved round by round (a fresh "
                         "model each time), and report the median: drift of the machine then hits every row alike")
    ap.add_argument("--heap", choices=("keep", "system"), default="keep",
                    help="keep: freed memory stays in the heap, as `bitvote train` sets it on the CPU "
                         "(bitvote.train.heap); system: glibc's defaults (large blocks mmapped and returned "
                         "on free). Process-wide: A/B by two runs")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    a = ap.parse_args(argv)
    tie = None if a.tie is None else (a.tie if a.tie == "first" else int(a.tie))
    paths = [p.strip() for p in a.paths.split(",") if p.strip()]
    if not paths or any(p not in ("old", "new", "kernels", "terms", "loop", "nochan", "flat") for p in paths):
        ap.error(f"--paths: expected old, new, kernels, terms, loop, nochan, flat or a comma-separated list of them, "
                 f"got {a.paths!r}")
    binaries = [m.strip() for m in a.models.split(",") if m.strip()]
    if not binaries or any(m not in models.names() or m == "resnet18" for m in binaries):
        ap.error(f"--models: expected binary models of {', '.join(models.names())}, got {a.models!r}")
    onoff = {"on": (True,), "off": (False,), "both": (False, True)}
    plan = [("resnet18", "popcount", True, "-", True, True)]
    for m in binaries:
        for act in onoff[a.act]:
            for pk in onoff[a.packed]:
                for v in a.voters.split(";"):
                    v = v.strip()
                    for fz in onoff[a.fuse]:
                        for p in (["-"] if v == "popcount" else paths):
                            plan.append((m, v, fz, p, act, pk))
    if a.rounds < 1 or a.steps < 1 or a.warmup < 0:
        ap.error("--rounds and --steps must be at least 1, --warmup at least 0")
    if a.threads:
        torch.set_num_threads(a.threads)
    kept = a.heap == "keep" and heap.keep_freed_memory()
    widths = [float(w) for w in a.widths.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {a.batch_size}, "
          f"{a.steps} timed steps (median){f' x {a.rounds} interleaved rounds (median)' if a.rounds > 1 else ''}, "
          f"cpu count {os.cpu_count()}")
    print(f"tie: {a.tie or 'layer default'}, clock: {a.clock}, heap: {'kept' if kept else 'system'}")
    print("| model | voter | path | fused | act | packed | width | step (ms) | images/s | x resnet18 | x popcount |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    yn = lambda b: "yes" if b else "no"  # noqa: E731
    clock = time.process_time if a.clock == "cpu" else time.perf_counter

    def one(name, voter, fz, path, act, pk, w):
        os.environ["BITVOTE_FUSE"] = "1" if fz else "0"
        os.environ["BITVOTE_PACKED_VOTE"] = "1" if pk else "0"
        os.environ["BITVOTE_NATIVE_ACT"] = "1" if act else "0"
        os.environ["BITVOTE_NATIVE_VOTE"] = "0" if path == "old" else "1"
        os.environ["BITVOTE_ROW_VOTE"] = "0" if path in ("old", "kernels") else "1"
        os.environ["BITVOTE_VOTE_BACKWARD"] = "terms" if path == "terms" else "auto"
        os.environ["BITVOTE_VOTE_PATTERNS"] = "0" if path == "loop" else "1"
        os.environ["BITVOTE_CHANNEL_VOTE"] = "0" if path in ("loop", "nochan") else "1"
        return measure(name, voter, w, a.batch_size, a.steps, a.warmup, tie=tie, clock=clock,
                       sigma="fanin,flat" if path == "flat" else None)

    for w in widths:
        base, pops = None, {}
        rounds = [[] for _ in plan]
        for r in range(a.rounds - 1):  # all rounds but the last; the last prints as it goes
            for i, spec in enumerate(plan):
                rounds[i].append(one(*spec, w))
            print(f"width {w:g}: round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)
        for i, (name, voter, fz, path, act, pk) in enumerate(plan):
            rounds[i].append(one(name, voter, fz, path, act, pk, w))
            s = statistics.median(rounds[i])
            base = base or s
            if name != "resnet18" and voter == "popcount":
                pops.setdefault((name, act, pk), s)
            pop = pops.get((name, act, pk)) if name != "resnet18" else None
            row = {"model": name, "voter": voter, "path": path, "fused": fz, "act": act, "packed": pk, "width": w,
                   "step_ms": 1e3 * s, "images_per_s": a.batch_size / s, "ratio": s / base,
                   "ratio_popcount": None if pop is None else s / pop, "rounds_ms": [1e3 * t for t in rounds[i]]}
            rows.append(row)
            rp = "-" if row["ratio_popcount"] is None else f"{row['ratio_popcount']:.2f}"
            print(f"| {name} | {voter} | {path} | {yn(fz)} | {yn(act)} | {yn(pk)} | {w:g} | {row['step_ms']:.1f} | "
                  f"{row['images_per_s']:.0f} | {row['ratio']:.2f} | {rp} |")
            sys.stdout.flush()
    if a.json:
        from bitvote.io import atomic_write_bytes

        atomic_write_bytes(a.json, json.dumps({"threads": torch.get_num_threads(), "batch": a.batch_size,
                                               "tie": a.tie, "clock": a.clock, "heap": "kept" if kept else "system",
                                               "rows": rows}, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
