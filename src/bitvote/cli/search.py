"""``bitvote search`` (one voter per layer under an area budget) and ``bitvote frontier``
(accuracy vs voter area over results files): thin wrappers over :mod:`bitvote.hw.search` and
:mod:`bitvote.hw.frontier`."""

from __future__ import annotations

import json

from .args import (
    count, device, input_file, nonneg_int, output_dir, positive_float, positive_float_upto, positive_int, text, threads
)


def add_parser(sub):
    p = sub.add_parser("search", help="choose one voter per layer of a popcount checkpoint under an area budget")
    p.add_argument("checkpoint", type=input_file, help="a trained popcount checkpoint")
    p.add_argument("--budget", type=positive_float_upto(1.0), required=True,
                   help="voter area as a fraction of popcount + threshold, e.g. 0.6")
    p.add_argument("--candidates", type=text, nargs="+", default=["mv", "tap", "tap,leaf=4"],
                   help="voters a layer may take besides popcount (default: mv tap 'tap,leaf=4')")
    p.add_argument("--tie", type=text, default="first", help="tie rule of every voter (default first)")
    p.add_argument("--holdout", type=positive_int, default=500, help="training images the sensitivities are measured on")
    p.add_argument("--recalibrate-bn", type=nonneg_int, default=1000, metavar="N",
                   help="training images BN is re-estimated on after each conversion")
    p.add_argument("--cost", default="auto", choices=["auto", "synth", "units"],
                   help="area from synthesis (yosys, cached) or the unit-count model; auto: synth if yosys is installed")
    p.add_argument("--retrain-epochs", type=count(100000, lo=0), default=0, help="retrain the chosen mapping this long (0: no)")
    p.add_argument("--retrain-lr", type=positive_float, default=1e-3)
    p.add_argument("--recipe", type=text, default="plain", help="retraining recipe (docs/reproduce.md)")
    p.add_argument("--batch-size", type=count(1 << 16), default=128)
    p.add_argument("--subset", type=positive_int, help="retrain on a fixed random subset of N training images")
    p.add_argument("--test-subset", type=positive_int, help="report on a fixed random subset of N test images")
    p.add_argument("--data", type=text, help="data root (default $BITVOTE_DATA, else ~/.cache/bitvote/data)")
    p.add_argument("--out", type=output_dir, required=True, help="folder: mapping.json, search.md, results.json, retrained/")
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--threads", type=threads)
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true", help="print mapping.json's object")
    p.set_defaults(func=_search)

    p = sub.add_parser("frontier", help="accuracy vs voter area (table + Pareto plot) over reproduce/search results")
    p.add_argument("results", type=input_file, nargs="+", help="results.json / ablation.json files")
    p.add_argument("--out", type=output_dir, required=True, help="folder: frontier.md, frontier.json, frontier.png")
    p.add_argument("--cost", default="auto", choices=["auto", "synth", "units"],
                   help="area from synthesis (yosys, cached) or the unit-count model")
    p.add_argument("--modes", type=text, default="baseline,retrained",
                   help="row modes to include, comma-separated, or all (default baseline,retrained)")
    p.add_argument("--timeout", type=positive_float, help="seconds per yosys run")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_frontier)


def _search(args):
    from ..experiments.recipes import parse_recipe
    from ..hw.search import search

    parse_recipe(args.recipe)
    res = search(args.checkpoint, args.budget, args.data, args.out, args.candidates, args.tie, args.holdout,
                 args.recalibrate_bn, args.cost, args.retrain_epochs, args.retrain_lr, args.recipe, args.device,
                 args.threads, not args.no_download, args.test_subset, args.batch_size, quiet=args.quiet,
                 subset=args.subset)
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if k != "retrained"}))
    else:
        print(f"{res['model']} x{res['width']:g}: mapping at {res['area_fraction']:.3f} of the popcount + threshold "
              f"area ({'synthesized' if res['area_source'] == 'synth' else 'unit-count model'}; budget "
              f"{res['budget']:g}): top1 {res['top1']:.2f}%; {args.out}/mapping.json, search.md, results.json")
    return 0


def _frontier(args):
    from ..hw.frontier import MODES, frontier

    modes = MODES if args.modes.strip() == "all" else [m.strip() for m in args.modes.split(",") if m.strip()]
    frontier(args.results, args.out, args.cost, modes, args.timeout, args.quiet)
    return 0
