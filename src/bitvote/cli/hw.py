"""``bitvote hw``: hardware cost of voters (units, rtl, synth, check, report); see docs/hardware.md."""

from __future__ import annotations

import json
import sys

from ..errors import BitvoteError
from .args import (
    count, hw_terms, input_file, kernel, output_dir, output_file, positive_float, seed, text, width
)


def _design_args(p, many=False):
    nargs = "+" if many else None
    p.add_argument("--n", type=hw_terms, required=True, nargs=nargs, help="terms per output (C * k * k)")
    p.add_argument("--voter", type=text, default="mv", nargs=nargs,
                   help="voter spec (mv, tap, 'M9(M4(M128))', ...) or popcount for the baselines; "
                        "'{C}' is replaced by n / k^2")
    p.add_argument("--k", type=kernel, default=1, help="kernel size, so rules resolve: C = n / k^2 (default 1)")
    p.add_argument("--tie", type=text, help="tie rule: 1, -1, first, or root-first list like first,1,-1 (default 1)")
    p.add_argument("--pad", default="+1", choices=["zero", "+1", "-1"],
                   help="zero adds the per-term valid port (abstention); +1/-1: every term valid (default +1)")
    p.add_argument("--epilogue", choices=["threshold", "bn"], nargs=nargs,
                   help="popcount only: + runtime threshold (BN folded, the default) or + unfolded BN multiply-add")
    p.add_argument("--no-xnor", action="store_true", help="leave out the XNOR array (the design takes z = XNOR outputs)")


def add_parser(sub):
    hw = sub.add_parser("hw", help="hardware cost of voters: units, Verilog, Yosys synthesis, Icarus check, report")
    hs = hw.add_subparsers(dest="hw_command", metavar="SUBCOMMAND")
    hw.set_defaults(func=lambda a: (hw.print_help(), 2)[1])

    p = hs.add_parser("units", help="the seed's unit counts per layer (XNOR, popcount/voters per level, real ops)")
    p.add_argument("checkpoint", nargs="?", type=input_file, help="checkpoint to rebuild the model from (its config)")
    p.add_argument("--model", type=text, help="model name (instead of a checkpoint)")
    p.add_argument("--voter", type=text, help="voter spec (default popcount; with a checkpoint: swapped in for its own)")
    p.add_argument("--width", type=width, help="channel width multiplier (with --model; default 1.0)")
    p.add_argument("--tie", type=text, help="tie rule (default 1; with a checkpoint: its own)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=_units)

    p = hs.add_parser("rtl", help="synthesizable Verilog for one output unit")
    _design_args(p)
    p.add_argument("--out", type=output_dir, required=True, help="output folder (writes <design>.v)")
    p.add_argument("--lint", action="store_true", help="lint it (verilator --lint-only -Wall, or iverilog -Wall)")
    p.set_defaults(func=_rtl)

    p = hs.add_parser("synth", help="synthesize with Yosys: cells, est. transistors, logic depth (cached)")
    _design_args(p, many=True)
    p.add_argument("--timeout", type=positive_float, default=None, help="seconds per design")
    p.add_argument("--json", action="store_true")
    p.add_argument("--table", action="store_true",
                   help="print a markdown table per n, relative to popcount + threshold when it is in the set")
    p.set_defaults(func=_synth)

    p = hs.add_parser("check", help="simulate the RTL with iverilog and compare with bitvote.voter")
    _design_args(p, many=True)
    p.add_argument("--vectors", type=count(10**6), default=400, help="random input vectors per design (default 400)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--netlist", action="store_true", help="also simulate the Yosys gate netlist")
    p.set_defaults(func=_check)

    p = hs.add_parser("report", help="accuracy JSON joined with synthesized hardware cost: table + Pareto plot")
    p.add_argument("results", nargs="+", type=input_file, help="JSON from bitvote reproduce / bitvote eval --json")
    p.add_argument("--plot", type=output_file, default="hw_pareto.png", help="PNG path (default hw_pareto.png)")
    p.add_argument("--json", type=output_file, dest="json_out", help="also write the joined rows as JSON here")
    p.add_argument("--timeout", type=positive_float, default=None, help="seconds per synthesized design")
    p.set_defaults(func=_report)


def _units(args):
    from .. import models
    from ..hw.units import count_units, format_units, model_from_checkpoint

    if args.checkpoint and args.model:
        raise BitvoteError("give a checkpoint or --model, not both")
    if args.checkpoint:
        if args.width is not None:
            raise BitvoteError("--width is the checkpoint's own: it is only for --model")
        m = model_from_checkpoint(args.checkpoint)
        if args.voter is not None or args.tie is not None:  # count the checkpoint's model with this voter
            models.set_voter(m, args.voter or m.config.get("voter", "popcount"), args.tie)
    elif args.model:
        m = models.create(args.model, voter=args.voter or "popcount", width=1.0 if args.width is None else args.width,
                          tie=args.tie or "1")
    else:
        raise BitvoteError("hw units needs a checkpoint or --model NAME")
    u = count_units(m)
    print(json.dumps(u, indent=1) if args.json else format_units(u))
    return 0


def _designs(args):
    from ..hw.design import make_design

    ns = args.n if isinstance(args.n, list) else [args.n]
    vs = args.voter if isinstance(args.voter, list) else [args.voter]
    eps = args.epilogue if isinstance(args.epilogue, list) else [args.epilogue or "threshold"]
    tie = "1" if args.tie is None else args.tie
    out = []
    for n in ns:
        for v in vs:
            for i, ep in enumerate(eps):
                d = make_design(n, v, args.k, tie, args.pad, ep, not args.no_xnor)
                if d.kind == "popcount" or i == 0:  # the epilogue only changes popcount designs
                    out.append(d)
    if args.epilogue is not None and not any(d.kind == "popcount" for d in out):
        raise BitvoteError("--epilogue is what follows a popcount: none of these designs is popcount")
    if args.tie is not None and all(d.kind != "voter" for d in out):
        raise BitvoteError("--tie breaks ties of a voter: popcount and the XNOR array have none")
    return out


def _rtl(args):
    from ..hw.lint import lint
    from ..hw.rtl import write

    (d,) = _designs(args)
    path = write(d, args.out)
    print(f"{path}: {d.describe()}")
    if args.lint:
        tool, msgs = lint(path)
        print(f"lint ({tool}): " + ("clean" if not msgs else f"{len(msgs)} warning(s)"))
        for m in msgs:
            print("  " + m)
        return 1 if msgs else 0
    return 0


def _synth(args):
    from ..hw.synth import format_table, synth

    if args.json and args.table:
        raise BitvoteError("--json and --table are two ways to print the result: choose one")
    rows = []
    for d in _designs(args):
        r = synth(d, args.timeout)
        rows.append(r)
        if not (args.json or args.table):
            print(f"{d.name:<34} n={d.n:<5} cells {r['cells']:>6}  depth {r['depth_gates']:>3}  "
                  f"est. transistors {r['transistors']:>7}  depth(cmos) {r['depth_cmos']:>3}   {d.describe()}")
            sys.stdout.flush()
    if args.json:
        print(json.dumps(rows, indent=1))
    elif args.table:
        print(format_table(rows))
    return 0


def _check(args):
    from ..hw.check import check
    from ..hw.synth import netlist_path, synth

    bad = 0
    for d in _designs(args):
        r = check(d, args.vectors, args.seed)
        print(r)
        bad += r.mismatches
        if args.netlist:
            r = check(d, args.vectors, args.seed, netlist=netlist_path(synth(d)))
            print(r)
            bad += r.mismatches
    return 1 if bad else 0


def _report(args):
    from ..hw.report import build_report, format_report, load_results, plot_report

    from pathlib import Path

    inputs = {Path(r).resolve() for r in args.results}
    for flag, out in (("--plot", args.plot), ("--json", args.json_out)):
        if out and Path(out).resolve() in inputs:
            raise BitvoteError(f"{flag} {out} is one of the results files: choose another file")
    rows = load_results(args.results)
    rep = build_report(rows, args.timeout, log=lambda m: print(m, file=sys.stderr))
    print(format_report(rep))
    ok, note = plot_report(rep, args.plot)
    print(note)
    if args.json_out:
        from ..io import atomic_write_bytes

        atomic_write_bytes(Path(args.json_out), (json.dumps(rep, indent=1) + "\n").encode())
    return 0
