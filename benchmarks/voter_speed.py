"""Forward+backward time of one binary conv layer per voter mode, side by side in one run.

A C-channel SxS 3x3 layer (256 channels, 16x16, batch 64 by default), popcount vs mv vs
`tap` vs `tap,groups=4` (or any ``--voters``; ``cm:M(M3(M3))`` and the like take the layer's
channel count). Ratios are what count: run on a quiet machine; rounds interleave the modes
so drift hits them alike. Each mode runs in fp32 and under CPU bf16 autocast (votes stay
exact there: see binary_conv2d) unless ``--precision`` picks one.

    python benchmarks/voter_speed.py [--batch 64] [--channels 256] [--size 16] [--rounds 5]
        [--tie 1|-1|first] [--fuse both|on|off] [--paths old,new,loop,nochan] [--precision both|fp32|bf16]

``--fuse both`` (the default) times every mode with the fused one-pass CPU vote chains
(bitvote._fuse) and without them (``BITVOTE_FUSE=0``), side by side. ``--paths old,new`` times
every voter mode on the float leaf-sum path (``BITVOTE_NATIVE_VOTE=0``) and on the packed-bit
kernels (bitvote.nn.fastvote), side by side; ``loop`` is the kernels with the pattern and
channel-major backwards off (``BITVOTE_VOTE_PATTERNS=0``, ``BITVOTE_CHANNEL_VOTE=0``: vote.c's
term loop); ``nochan`` the kernels with the bit-sliced backward off (``BITVOTE_CHANNEL_VOTE=0``:
its trees on vote.c's pattern backward, term loop or leaf GEMMs); popcount has one path.
"""

import argparse
import json
import os
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
    ap.add_argument("--tie", default="1", help="tie rule of every voter: 1, -1 or first")
    ap.add_argument("--fuse", choices=("both", "on", "off"), default="both")
    ap.add_argument("--paths", default="new", help="new, old, loop, nochan or a comma-separated list (see above)")
    ap.add_argument("--precision", choices=("both", "fp32", "bf16"), default="both")
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
    tie = args.tie if args.tie == "first" else int(args.tie)
    layers = {v: BinaryConv2d(C, C, 3, 1, 1, voter=v, **({} if v == "popcount" else {"tie": tie})) for v in voters}
    x = torch.randn(N, C, S, S, requires_grad=True)
    g = torch.randn(N, C, S, S)

    def step(layer, amp, fuse, path="new"):
        os.environ["BITVOTE_FUSE"] = "1" if fuse else "0"
        os.environ["BITVOTE_NATIVE_VOTE"] = "0" if path == "old" else "1"
        os.environ["BITVOTE_VOTE_PATTERNS"] = "0" if path == "loop" else "1"
        os.environ["BITVOTE_CHANNEL_VOTE"] = "0" if path in ("loop", "nochan") else "1"
        x.grad = None
        layer.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            y = layer(x)
        (y.float() * g).sum().backward()

    fuses = {"both": (False, True), "on": (True,), "off": (False,)}[args.fuse]
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not paths or any(p not in ("old", "new", "loop", "nochan") for p in paths):
        ap.error(f"--paths: expected old, new, loop, nochan or a comma-separated list of them, got {args.paths!r}")
    amps = {"both": (False, True), "fp32": (False,), "bf16": (True,)}[args.precision]
    modes = [(v, amp, fz, p) for fz in fuses for amp in amps for v in voters
             for p in (["new"] if v == "popcount" else paths)]
    for m in modes:  # warm-up (and the one-time compile of the fused chains)
        step(layers[m[0]], m[1], m[2], m[3])
    times = {m: [] for m in modes}
    for _ in range(args.rounds):
        for m in modes:
            t0 = time.perf_counter()
            step(layers[m[0]], m[1], m[2], m[3])
            times[m].append(time.perf_counter() - t0)
    rows = []
    for v, amp, fz, path in modes:
        ms = statistics.median(times[(v, amp, fz, path)]) * 1e3
        pop = ("popcount", amp, fz, "new")
        base = statistics.median(times[pop]) * 1e3 if pop in times else None
        own = (v, False, fz, path)
        fp32 = statistics.median(times[own]) * 1e3 if own in times else ms
        rows.append({"voter": v, "path": "-" if v == "popcount" else path,
                     "precision": "bf16" if amp else "fp32", "fused": fz,
                     "resolved": layers[v].hierarchy.describe() if layers[v].hierarchy else "popcount",
                     "ms": round(ms, 2), "ratio": round(ms / base, 3) if base else None,
                     "vs_fp32": round(ms / fp32, 3)})
    if args.json:
        print(json.dumps(rows))
        return
    print(f"fwd+bwd, {C}ch {S}x{S} 3x3, batch {N}, tie {args.tie}, {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'voter':<16}{'resolved':<16}{'path':<6}{'precision':<11}{'fused':<7}{'ms':>9}{'x popcount':>12}"
          f"{'x own fp32':>12}")
    for r in rows:
        print(f"{r['voter']:<16}{r['resolved']:<16}{r['path']:<6}{r['precision']:<11}{'yes' if r['fused'] else 'no':<7}"
              f"{r['ms']:>9.1f}{r['ratio']:>12.2f}{r['vs_fp32']:>12.2f}")


if __name__ == "__main__":
    main()
