"""``bitvote export``: a checkpoint as ONNX or QONNX (docs/export.md), a thin layer over
:mod:`bitvote.export`."""

from __future__ import annotations

import json
import sys

from ..errors import BitvoteError
from .args import engine_data, input_file, output_file, positive_int


def add_parser(sub):
    p = sub.add_parser("export", help="export a checkpoint as ONNX (onnxruntime, ...) or QONNX (FINN)")
    p.add_argument("checkpoint", type=input_file)
    p.add_argument("--format", required=True, choices=("onnx", "qonnx"),
                   help="onnx: standard opset 17, every voter; qonnx: FINN's dialect, popcount and mv layers")
    p.add_argument("--out", required=True, type=output_file, help="output file (.onnx)")
    p.add_argument("--batch", type=positive_int,
                   help="fixed batch size (onnx: default dynamic; qonnx: default 1)")
    p.add_argument("--probes", action="store_true",
                   help="add every binary layer's integer result (sums, votes, each tree level's votes) as extra outputs")
    p.add_argument("--check", metavar="DATA", type=engine_data,
                   help="run the written file on DATA (synthetic:N, a .pt file or a data root) and compare with PyTorch")
    p.add_argument("--limit", type=positive_int, help="with --check: at most N images")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_export)


def _export(args):
    from .. import export as E

    E.require(args.format)  # before reading anything: a missing extra is the first thing to say
    E.check_output(args.out)
    model = E.load_model(args.checkpoint)
    x = None
    if args.check:  # read the data before writing anything: a bad --check is the user's first answer
        from .engine import load_data

        x, _ = load_data(args.check, args.limit or 0, int(getattr(model, "config", {}).get("num_classes", 10)))
        b = args.batch or (1 if args.format == "qonnx" else None)
        if b is not None:  # a fixed batch: whole slices of it
            if x.shape[0] < b:
                raise BitvoteError(f"--check has {x.shape[0]} images, fewer than the batch of {b}")
            x = x[: x.shape[0] - x.shape[0] % b]
    probes = args.probes or x is not None
    if args.format == "onnx":
        proto = E.to_onnx(model, args.out, batch=args.batch, probes=probes)
    else:
        proto = E.to_qonnx(model, args.out, batch=args.batch or 1, probes=probes)
    res = {"out": args.out, "format": args.format, "nodes": len(proto.graph.node),
           "opset": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
           "finn_notes": E.finn_notes(model) if args.format == "qonnx" else []}
    if x is not None:
        res["check"] = E.check(model, proto, x)
    if args.json:
        print(json.dumps(res))
    else:
        ops = ", ".join(f"{d} {v}" for d, v in res["opset"].items())
        print(f"wrote {args.out}: {args.format}, {res['nodes']} nodes ({ops})")
        for note in res["finn_notes"]:
            print(f"bitvote: note: {note}", file=sys.stderr)
        c = res.get("check")
        if c:
            print(f"check on {c['images']} images: logits max |diff| {c['logits_max_abs']:.3g} (atol {c['atol']:.3g}), "
                  f"top-1 agree {c['top1_agree']:.4f}, {c['bits_flipped']} mismatching bits in "
                  f"{len(c['layers'])} binary layers; {'PASSED' if c['ok'] else 'FAILED'}")
    return 0 if not res.get("check") or res["check"]["ok"] else 1
