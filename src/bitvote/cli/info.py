"""``bitvote models`` and ``bitvote voter``: look at what the library offers."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("models", help="list the registered models, or print one with its voters")
    p.add_argument("name", nargs="?", help="model to print (e.g. reactnet18)")
    p.add_argument("--voter", default="popcount", help="voter spec (e.g. mv, tap, 'M4(M128)')")
    p.add_argument("--tie", default="1", help="tie rule: 1, -1, first, or root-first list like first,1")
    p.add_argument("--width", type=float, default=1.0)
    p.set_defaults(func=_models)

    p = sub.add_parser("voter", help="resolve a voter spec for a layer and show its levels")
    p.add_argument("spec", help="voter spec, e.g. tap,groups=4 or 'M9(M4(M128))'")
    p.add_argument("--n", type=int, help="terms per output (default C * k * k)")
    p.add_argument("--channels", "-C", type=int, default=64, help="input channels C (default 64)")
    p.add_argument("--k", type=int, default=3, help="kernel size k (default 3)")
    p.add_argument("--tie", default="1")
    p.set_defaults(func=_voter)


def _models(args):
    from .. import models

    if not args.name:
        for n in models.names():
            print(n)
        return 0
    m = models.create(args.name, voter=args.voter, width=args.width, tie=args.tie)
    print(m)
    return 0


def _voter(args):
    from ..errors import BitvoteError
    from ..voter import resolve

    taps = args.k * args.k
    n = args.n if args.n is not None else args.channels * taps
    if n % taps:
        raise BitvoteError(f"--n {n} is not a multiple of k*k = {taps}")
    h = resolve(args.spec, n, taps, args.tie, layer=f"C={n // taps}, k={args.k}")
    if h is None:
        print(f"popcount over n = {n} terms")
        return 0
    print(f"{h.describe()}  (n = {n}, order = {h.order}, root = {h.root})")
    for depth, (count, fanins) in enumerate(h.voters_per_level()):
        sizes = sorted(set(fanins))
        print(f"  level {depth}: {count} voter(s) of fan-in {', '.join(map(str, sizes))}, tie {h.ties[depth]}")
    return 0
