"""``bitvote convert`` and ``bitvote reproduce``: thin wrappers over :mod:`bitvote.train.convert`,
:mod:`bitvote.experiments.reproduce` and :mod:`bitvote.experiments.appendix`."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import BitvoteError
from .args import (
    count, device, input_file, nonneg_int, output_dir, output_file, pad_value, positive_float_upto, positive_int,
    text, threads
)


def add_parser(sub):
    p = sub.add_parser("convert", help="swap a voter into a trained checkpoint; accuracy before and after")
    p.add_argument("checkpoint", type=input_file)
    p.add_argument("--voter", type=text, help="voter spec, e.g. mv, tap, groups=4, 'tap,leaf=16', or per layer "
                   "'layer1.*=tap,leaf=4;*=mv'")
    p.add_argument("--voter-map", type=input_file, metavar="FILE.json", help="per-layer voters (a JSON object {pattern: spec})")
    p.add_argument("--tie", type=text, help="tie rule: 1, -1, first, or a root-first list (default: the checkpoint's, else 1)")
    p.add_argument("--pad-value", type=pad_value, help="padding of binary activations in the voter layers: 0, 1 or -1")
    p.add_argument("--out", type=output_file, help="write the converted checkpoint here")
    p.add_argument("--recalibrate-bn", type=nonneg_int, default=0, metavar="N",
                   help="re-estimate BN statistics on N training images after the swap (no gradients)")
    p.add_argument("--data", type=text, help="data root (default $BITVOTE_DATA, else ~/.cache/bitvote/data)")
    p.add_argument("--test-subset", type=positive_int, help="evaluate on a fixed random subset of N test images")
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--threads", type=threads)
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_convert)

    p = sub.add_parser("reproduce", help="the seed's results table: baseline, converted, recalibrated, retrained")
    p.add_argument("--preset", type=text, default="smoke", help="smoke | cpu | mid | full | gpu1 | frontier-cpu (default smoke)")
    p.add_argument("--minutes", type=positive_float_upto(100000.0),
                   help="time budget: epochs are planned from measured step times (gpu1 defaults to 10)")
    p.add_argument("--table", choices=("seed", "appendix", "ablation"), default="seed",
                   help="seed: baseline / MV / HMV rows (default); appendix: the 4 models x BN / w/o BN / BN-free grid; "
                        "ablation: every retraining recipe at equal budget on the preset's ablation voter")
    p.add_argument("--recipe", type=text, help="retraining recipe of every voter row, e.g. recal+kd+leafsigma=2 "
                   "(default: the preset's; docs/reproduce.md)")
    p.add_argument("--recipes", type=text, nargs="+", help="ablation only: the recipes to compare (default: the preset's)")
    p.add_argument("--voter-map", type=input_file, action="append", default=[], metavar="FILE.json",
                   help="a per-layer voter row (what bitvote search writes); repeatable")
    p.add_argument("--retrain-epochs", type=count(100000), help="retraining budget of every row (default: the preset's)")
    p.add_argument("--datasets", type=text, help="appendix only: cifar10, cifar100 or both (comma-separated; default cifar10)")
    p.add_argument("--models", type=text, help="comma-separated models (default: the preset's)")
    p.add_argument("--voters", type=text, nargs="+", help="seed table only: voter specs, e.g. --voters mv 'tap,groups=4' (default: the preset's)")
    p.add_argument("--tie", type=text, help="seed table only: tie rule for every voter row (default: 1 for mv, first for hierarchies)")
    p.add_argument("--data", type=text, help="data root (default $BITVOTE_DATA, else ~/.cache/bitvote/data)")
    p.add_argument("--out", type=output_dir, help="output folder (default runs/reproduce-PRESET)")
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--threads", type=threads)
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_reproduce)


def _convert(args):
    import torch

    from ..train.convert import convert_checkpoint, print_rows

    if args.tie is not None and args.voter.strip().lower() == "popcount":
        raise BitvoteError("--tie breaks ties of a voter: --voter popcount has none")
    if args.out and Path(args.out).resolve() == Path(args.checkpoint).resolve():
        raise BitvoteError(f"--out {args.out} is the input checkpoint: choose another file")
    if args.threads:
        torch.set_num_threads(args.threads)
    from .train import voter_arg

    res = convert_checkpoint(args.checkpoint, voter_arg(args, required=True), args.out, args.tie, args.pad_value, args.recalibrate_bn,
                             args.data, args.device, args.test_subset, download=not args.no_download)
    if args.json:
        print(json.dumps(res))
        return 0
    n = res["rows"][0]["n"]
    print(f"{res['model']} (width {res['width']:g}) on {n} {res['dataset']} test images:")
    print_rows(res)
    if res["out"]:
        print(f"converted checkpoint: {res['out']}")
    return 0


def _reproduce(args):
    from ..experiments.reproduce import reproduce

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    if args.models and not models:
        raise BitvoteError(f"--models {args.models!r} names no model")
    if args.table == "appendix":
        from ..experiments.appendix import reproduce_appendix

        unused = [f for f, v in (("--minutes", args.minutes), ("--voters", args.voters), ("--tie", args.tie)) if v is not None]
        if unused:
            raise BitvoteError(f"{', '.join(unused)}: the appendix table does not take {'it' if len(unused) == 1 else 'them'} "
                               "(its rows are the model x normalization grid, trained to the preset's epochs)")
        datasets = [d.strip() for d in (args.datasets or "cifar10").split(",") if d.strip()]
        if not datasets:
            raise BitvoteError(f"--datasets {args.datasets!r} names no dataset")
        reproduce_appendix(args.preset, models=models, datasets=datasets, data=args.data, out=args.out,
                           device=args.device, threads=args.threads, download=not args.no_download, quiet=args.quiet)
        return 0
    if args.datasets is not None:
        raise BitvoteError("--datasets is for --table appendix; the seed table runs on CIFAR-10")
    extra = {} if args.minutes is None else {"minutes": args.minutes}
    from ..models import read_voter_map

    if args.recipe is not None:
        extra["recipe"] = args.recipe
    if args.retrain_epochs is not None:
        extra["retrain_epochs"] = args.retrain_epochs
    maps = [read_voter_map(f) for f in args.voter_map]
    reproduce(args.preset, models=models, voters=args.voters, data=args.data, out=args.out, tie=args.tie,
              device=args.device, threads=args.threads, download=not args.no_download, quiet=args.quiet,
              table=args.table, recipes=args.recipes, voter_maps=maps, **extra)
    return 0
