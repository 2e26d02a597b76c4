"""``bitvote models`` and ``bitvote voter``: look at what the library offers."""

from __future__ import annotations

from ..errors import BitvoteError
from .args import count, kernel, spec_terms, text, width


def add_parser(sub):
    p = sub.add_parser("models", help="list the registered models, or print one with its voters")
    p.add_argument("name", nargs="?", type=text, help="model to print (e.g. reactnet18)")
    p.add_argument("--voter", type=text, help="voter spec (e.g. mv, tap, 'M4(M128)'; default popcount)")
    p.add_argument("--tie", type=text, help="tie rule: 1, -1, first, or root-first list like first,1 (default 1)")
    p.add_argument("--width", type=width, help="channel width multiplier (default 1.0)")
    p.set_defaults(func=_models)

    p = sub.add_parser("voter", help="resolve a voter spec for a layer and show its levels")
    p.add_argument("spec", type=text, help="voter spec, e.g. tap,groups=4 or 'M9(M4(M128))'")
    p.add_argument("--n", type=spec_terms, help="terms per output (default C * k * k)")
    p.add_argument("--channels", "-C", type=count(1 << 16), help="input channels C (default 64; or n / k^2 with --n)")
    p.add_argument("--k", type=kernel, default=3, help="kernel size k (default 3)")
    p.add_argument("--tie", type=text, help="tie rule (default 1)")
    p.set_defaults(func=_voter)


def _models(args):
    from .. import models

    if not args.name:
        given = [f for f, v in (("--voter", args.voter), ("--tie", args.tie), ("--width", args.width)) if v is not None]
        if given:
            raise BitvoteError(f"{', '.join(given)}: only with a model name (bitvote models NAME {given[0]} ...)")
        for n in models.names():
            print(n)
        return 0
    m = models.create(args.name, voter=args.voter or "popcount", width=1.0 if args.width is None else args.width,
                      tie=args.tie or "1")
    print(m)
    return 0


def _voter(args):
    from ..errors import BitvoteError
    from ..voter import resolve

    taps = args.k * args.k
    channels = 64 if args.channels is None else args.channels
    n = args.n if args.n is not None else channels * taps
    if args.n is not None and args.channels is not None and args.n != channels * taps:
        raise BitvoteError(f"--n {args.n} and --channels {channels} disagree: n = C * k * k = {channels * taps}; give one")
    if n > spec_terms.hi:
        raise BitvoteError(f"n = C * k * k = {n} terms is more than one voter spec takes ({spec_terms.hi})")
    if n % taps:
        raise BitvoteError(f"--n {n} is not a multiple of k*k = {taps}")
    h = resolve(args.spec, n, taps, args.tie or "1", layer=f"C={n // taps}, k={args.k}")
    if h is None and args.tie is not None:
        raise BitvoteError(f"--tie breaks ties of a voter: {args.spec} is popcount, which has none")
    if h is None:
        print(f"popcount over n = {n} terms")
        return 0
    print(f"{h.describe()}  (n = {n}, order = {h.order}, root = {h.root})")
    for depth, (count, fanins) in enumerate(h.voters_per_level()):
        sizes = sorted(set(fanins))
        print(f"  level {depth}: {count} voter(s) of fan-in {', '.join(map(str, sizes))}, tie {h.ties[depth]}")
    return 0
