"""Forward+backward time of one binary conv layer per voter mode, side by side in one run.

Issue 2 item 5: a 256-channel 16x16 3x3 layer (batch 64 by default), popcount vs mv vs
`tap` vs `tap,groups=4`. Goal: MV <= 1.15x popcount, HMV <= 1.5x. Ratios are what count:
run on a quiet machine; rounds interleave the modes so drift hits them alike.

    python benchmarks/voter_speed.py [--batch 64] [--channels 256] [--size 16] [--rounds 5]
"""

import argparse
import json
import statistics
import time

import torch

from bitvote import BinaryConv2d


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--voters", default="popcount,mv,tap,tap,groups=4")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # "tap,groups=4" contains a comma: split on commas not followed by "groups=" / "leaf="
    voters, buf = [], ""
    for part in args.voters.split(","):
        if buf and (part.startswith("groups=") or part.startswith("leaf=")) and buf == "tap":
            voters[-1] = "tap," + part
            buf = ""
            continue
        voters.append(part)
        buf = part
    torch.manual_seed(0)
    C, S, N = args.channels, args.size, args.batch
    layers = {v: BinaryConv2d(C, C, 3, 1, 1, voter=v) for v in voters}
    x = torch.randn(N, C, S, S, requires_grad=True)
    g = torch.randn(N, C, S, S)

    def step(layer):
        x.grad = None
        layer.weight.grad = None
        (layer(x) * g).sum().backward()

    for v in voters:  # warm-up
        step(layers[v])
    times = {v: [] for v in voters}
    for _ in range(args.rounds):
        for v in voters:
            t0 = time.perf_counter()
            step(layers[v])
            times[v].append(time.perf_counter() - t0)
    base = statistics.median(times["popcount"]) if "popcount" in times else None
    rows = []
    for v in voters:
        ms = statistics.median(times[v]) * 1e3
        rows.append({"voter": v, "resolved": layers[v].hierarchy.describe() if layers[v].hierarchy else "popcount",
                     "ms": round(ms, 2), "ratio": round(ms / (base * 1e3), 3) if base else None})
    if args.json:
        print(json.dumps(rows))
        return
    print(f"fwd+bwd, {C}ch {S}x{S} 3x3, batch {N}, {args.threads} threads, median of {args.rounds}")
    print(f"{'voter':<16}{'resolved':<16}{'ms':>10}{'x popcount':>12}")
    for r in rows:
        print(f"{r['voter']:<16}{r['resolved']:<16}{r['ms']:>10.1f}{r['ratio']:>12.2f}")


if __name__ == "__main__":
    main()
