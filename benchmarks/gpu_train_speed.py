"""GPU training speed, one run: images/s of reactnet18 (popcount, mv, an HMV) vs float resnet18.

Each model is trained for a few steps on random CIFAR-shaped data (batch 256
by default) with SGD, bf16 autocast (votes and ties stay fp32 inside binary_conv2d) and
channels_last via :func:`bitvote.gpu.train.prepare_for_gpu_training`; ``--compile`` also
times ``torch.compile``. Rounds interleave the models so clock drift hits them alike; the
figure is the median step time -> images/s, and the ratio to resnet18's. A line is printed
(and flushed) for every model in every round as soon as it is timed, so a run cut short
keeps what it measured; the summary with the medians follows the last round.

    python3 benchmarks/gpu_train_speed.py [--batch 256] [--steps 20] [--rounds 3] [--compile] [--json]

Needs CUDA; elsewhere it exits with one line (``--cpu`` runs a tiny smoke version).
"""

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from bitvote import models
from bitvote.gpu.train import prepare_for_gpu_training

CONFIGS = [("resnet18", "popcount"), ("reactnet18", "popcount"), ("reactnet18", "mv"), ("reactnet18", "tap")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    ap.add_argument("--no-amp", action="store_true", help="fp32 instead of bf16 autocast")
    ap.add_argument("--cpu", action="store_true", help="smoke run on the CPU (timings meaningless)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.cpu:
        dev, args.batch, args.steps, args.rounds, args.width = torch.device("cpu"), 4, 1, 1, 0.125
    elif not torch.cuda.is_available():
        print(f"gpu_train_speed: no CUDA device here (torch {torch.__version__}); use --cpu for a smoke run",
              file=sys.stderr)
        return 2
    else:
        dev = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
    amp = not args.no_amp
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    variants = [(n, v, False) for n, v in CONFIGS] + ([(n, v, True) for n, v in CONFIGS] if args.compile else [])
    runs = {}
    for name, voter, comp in variants:
        m = models.create(name, voter=voter, width=args.width).train()
        m = prepare_for_gpu_training(m, device=dev, compile=comp)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        runs[(name, voter, comp)] = (m, opt)

    def step(m, opt):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    dname = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (smoke run, meaningless)"
    if not args.json:
        print(f"device: {dname}; batch {args.batch}, bf16 autocast {amp}, channels_last, "
              f"{args.rounds} round(s) x {args.steps} steps", flush=True)
    warm = set()
    times = {k: [] for k in runs}
    for rnd in range(args.rounds):
        for k, (m, opt) in runs.items():
            if k not in warm:  # warm-up (cuDNN autotuning, compilation) right before its first round
                for _ in range(3 if not args.cpu else 1):
                    step(m, opt)
                sync()
                warm.add(k)
            ts = []
            for _ in range(args.steps):
                sync()
                t = time.perf_counter()
                step(m, opt)
                sync()
                ts.append(time.perf_counter() - t)
            times[k] += ts
            if not args.json:
                med = statistics.median(ts)
                voter = k[1] if k[0] != "resnet18" else "float"
                print(f"round {rnd + 1}: {k[0]:<11} {voter:<13} compile={str(k[2]):<5} {med * 1e3:8.2f} ms/step "
                      f"{args.batch / med:9.0f} img/s", flush=True)
    ref = {c: statistics.median(times[("resnet18", "popcount", c)]) for c in {k[2] for k in runs}}
    rows = []
    for (name, voter, comp), ts in times.items():
        med = statistics.median(ts)
        rows.append({"model": name, "voter": voter if name != "resnet18" else "float", "compile": comp,
                     "batch": args.batch, "amp_bf16": amp, "channels_last": True, "step_ms": med * 1e3,
                     "img_s": args.batch / med, "step_vs_resnet18": med / ref[comp], "device": dname})
    if args.json:
        print(json.dumps(rows), flush=True)
    else:
        print(f"median of {args.rounds}x{args.steps} steps:")
        for r in rows:
            print(f"{r['model']:<11} {r['voter']:<13} compile={str(r['compile']):<5} {r['step_ms']:8.2f} ms/step "
                  f"{r['img_s']:9.0f} img/s  {r['step_vs_resnet18']:.2f}x resnet18's step", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
