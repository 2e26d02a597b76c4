"""``bitvote train``, ``bitvote eval`` and ``bitvote demo``: thin wrappers over :mod:`bitvote.train`."""

from __future__ import annotations

import json

from .args import (
    count, device, fraction, input_file, nonneg_float, nonneg_int, output_dir, pad_value, positive_float,
    positive_int, seed, text, threads, width
)


#: dest -> option strings of ``bitvote train`` (to tell an option given from a default)
_TRAIN_OPTIONS = {}
#: CLI dest -> TrainConfig field, where they differ
_FIELD = {"ckpt_every": "ckpt_every_s", "no_download": "download"}


def _given(argv) -> tuple:
    """The TrainConfig fields named on the command line (``--lr 1e-3`` counts even though it is
    the default: ``--resume`` must compare it with the saved run)."""
    given = set()
    for dest, opts in _TRAIN_OPTIONS.items():
        if any(a in opts or a.split("=", 1)[0] in opts for a in argv if a.startswith("--")):
            given.add(_FIELD.get(dest, dest))
    return tuple(sorted(given))


def add_parser(sub):
    p = sub.add_parser("train", help="train a model on CIFAR-10/100 (resumable)")
    p.add_argument("--model", type=text, help="model name (default reactnet18, or the --init checkpoint's)")
    p.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    p.add_argument("--data", type=text, help="data root (default $BITVOTE_DATA, else ~/.cache/bitvote/data; downloads when missing)")
    p.add_argument("--voter", type=text, help="voter spec, or per layer 'layer1.*=tap,leaf=4;*=mv' (first match wins, the "
                   "rest popcount); default popcount, or the --init checkpoint's")
    p.add_argument("--voter-map", type=input_file, metavar="FILE.json", help="per-layer voters from a JSON object "
                   "{pattern: spec} (what bitvote search writes); instead of --voter")
    p.add_argument("--tie", type=text, help="tie rule: 1, -1, first, or a root-first list")
    p.add_argument("--surrogate", choices=["approxsign", "ste"], help="the vote's backward")
    p.add_argument("--sigma", type=text, help="the vote's surrogate width rule (e.g. fanin)")
    p.add_argument("--pad-value", type=pad_value, help="padding of binary activations: 0, 1 or -1")
    p.add_argument("--bn", choices=["bn", "none", "free"], help="normalization form (default bn, or the --init checkpoint's)")
    p.add_argument("--width", type=width, help="channel width multiplier (default 1.0)")
    p.add_argument("--epochs", type=count(100000), default=10)
    p.add_argument("--batch-size", type=positive_int, default=128, help="the global batch, split over --nproc processes")
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--wd", type=nonneg_float, help="weight decay on conv/linear weights (default 1e-5 in step 1, else 0)")
    p.add_argument("--schedule", default="linear", choices=["linear", "cosine", "constant"])
    p.add_argument("--label-smoothing", type=fraction, default=0.0)
    p.add_argument("--step", type=int, default=2, choices=[1, 2],
                   help="1: binary activations, real weights; 2: binary weights too (default)")
    p.add_argument("--subset", type=positive_int, help="train on a fixed random subset of N images")
    p.add_argument("--test-subset", type=positive_int, help="evaluate on a fixed random subset of N test images")
    p.add_argument("--eval-every", type=positive_int, default=1, help="evaluate every N epochs (default 1)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--out", type=output_dir, required=True, help="run folder: last.pt, best.pt, log.csv, result.json")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (starts fresh if there is none); "
                   "an option given here that differs from the saved run is refused, naming it")
    p.add_argument("--override", action="store_true",
                   help="with --resume: continue with the given options that differ from the saved run "
                        "(learning rate, epochs, schedule, ...); the model's own options can never change")
    p.add_argument("--init", type=input_file, help="start from this checkpoint's weights (e.g. step 1's best.pt)")
    p.add_argument("--teacher", type=input_file, help="distill from this checkpoint (ReActNet's distribution loss)")
    p.add_argument("--self-distill", action="store_true",
                   help="distill from the --init checkpoint itself (the popcount parent; no extra training)")
    p.add_argument("--recalibrate-bn", type=nonneg_int, default=0, metavar="N",
                   help="re-estimate BN on N train images before the first step and at every --progressive stage")
    p.add_argument("--progressive", type=text, metavar="SCHEDULE",
                   help="'mv;tap': train through these voters before --voter, or 'layers': convert layer group "
                        "by layer group; each stage gets an equal share of the steps")
    p.add_argument("--patience", type=nonneg_int, default=0, metavar="E",
                   help="stop early when the train loss has not fallen for E epochs (0: off)")
    p.add_argument("--min-delta", type=fraction, default=1e-3, help="relative fall that counts for --patience")
    p.add_argument("--threads", type=threads, help="torch CPU threads")
    p.add_argument("--agc", type=nonneg_float, metavar="CLIP",
                   help="adaptive gradient clipping factor (default 0.04 for --bn free, else off; 0 turns it off)")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast on the CPU too (CUDA always uses it); votes and ties stay exact")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA; slow to start on the CPU)")
    p.add_argument("--weight-grad", default="scaled", choices=["scaled", "unscaled"],
                   help="latent weights' gradient under the scaled popcount: scaled (x mean|W|, the forward's "
                        "chain rule; default) or unscaled (the reference ReActNet/Bi-Real code)")
    p.add_argument("--ckpt-every", type=nonneg_float, default=120.0, help="mid-epoch checkpoint every S seconds")
    p.add_argument("--ckpt-every-steps", type=nonneg_int, default=0, help="mid-epoch checkpoint every N steps")
    p.add_argument("--stop-after-steps", type=nonneg_int, default=0,
                   help="end this invocation after N steps with last.pt written; --resume continues")
    p.add_argument("--no-download", action="store_true", help="never download the dataset")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--nproc", type=count(256), help="launch N processes on this machine (torchrun --standalone "
                   "--nproc_per_node N -m bitvote train ...): DDP, gloo on the CPU, nccl on CUDA")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (CUDA only)")
    p.set_defaults(func=_train)
    _TRAIN_OPTIONS.update({a.dest: a.option_strings for a in p._actions if a.option_strings})

    p = sub.add_parser("eval", help="top-1/top-5 of a checkpoint on its dataset's test split")
    p.add_argument("checkpoint", type=input_file)
    p.add_argument("--data", type=text, help="data root (default $BITVOTE_DATA, else ~/.cache/bitvote/data)")
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.add_argument("--test-subset", type=positive_int, help="evaluate a fixed random subset of N test images")
    p.add_argument("--threads", type=threads)
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_eval)

    p = sub.add_parser("demo", help="the main job: the seed's experiment in small (train, convert to MV/HMV, retrain), ~4 minutes on 2 cores")
    p.add_argument("--data", type=text, help="data root (default $BITVOTE_DATA, else download)")
    p.add_argument("--out", type=output_dir, default="runs/demo")
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--threads", type=threads)
    p.add_argument("--no-download", action="store_true")
    p.set_defaults(func=_demo)


def voter_arg(args, required: bool = False):
    """``--voter`` (a spec or a ``PATTERN=SPEC;...`` mapping) or ``--voter-map FILE``: one parser
    for train, convert, reproduce and search."""
    from ..errors import BitvoteError
    from ..models import parse_voter_map, read_voter_map

    given = getattr(args, "voter", None)
    vmap = getattr(args, "voter_map", None)
    if given is not None and vmap is not None:
        raise BitvoteError("--voter and --voter-map both give the voter: use one")
    if vmap is not None:
        return read_voter_map(vmap)
    if given is None:
        if required:
            raise BitvoteError("give the voter: --voter SPEC or --voter-map FILE.json")
        return None
    return parse_voter_map(given)


def _without_nproc(argv):
    """The command line minus ``--nproc N``: what each launched worker runs."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _train(args):
    from ..errors import BitvoteError
    from ..train import TrainConfig, check_config, device, train
    from ..train.distributed import env_world, launch

    cfg = TrainConfig(
        model=args.model, dataset=args.dataset, data=args.data, voter=voter_arg(args), tie=args.tie,
        surrogate=args.surrogate, sigma=args.sigma, pad_value=args.pad_value, bn=args.bn, width=args.width,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, wd=args.wd, schedule=args.schedule,
        label_smoothing=args.label_smoothing, step=args.step, subset=args.subset, test_subset=args.test_subset,
        eval_every=args.eval_every, seed=args.seed, device=args.device, out=args.out, resume=args.resume,
        init=args.init, teacher=args.teacher, threads=args.threads, ckpt_every_s=args.ckpt_every,
        ckpt_every_steps=args.ckpt_every_steps, download=not args.no_download, quiet=args.quiet,
        sync_bn=args.sync_bn, stop_after_steps=args.stop_after_steps, amp=args.amp, compile=args.compile,
        agc=args.agc, weight_grad=args.weight_grad, override=args.override, given=_given(args.argv),
        self_distill=args.self_distill, recalibrate_bn=args.recalibrate_bn, progressive=args.progressive,
        patience=args.patience, min_delta=args.min_delta,
    )
    if args.override and not args.resume:
        raise BitvoteError("--override only applies with --resume (it lets a resumed run take changed options)")
    if args.sync_bn and (args.nproc or 1) < 2 and env_world()[1] < 2:
        raise BitvoteError("--sync-bn synchronizes BatchNorm across processes: it needs --nproc 2 or more")
    if args.nproc is not None:
        if args.nproc < 1:
            raise BitvoteError(f"--nproc must be at least 1, got {args.nproc}")
        if env_world()[1] > 1:
            raise BitvoteError("--nproc inside torchrun: torchrun already started the processes")
        if args.nproc > 1:
            check_config(cfg)  # the cheap mistakes fail once, here, not once per worker
            device(cfg.device)
            return launch(args.nproc, _without_nproc(args.argv), args.debug)
    res = train(cfg)
    if env_world()[0] != 0:
        return 0  # under torchrun, rank 0 reports
    if args.json:
        print(json.dumps(res))
    elif not res.get("finished", True):
        pass  # stopped by --stop-after-steps: train() said so on stderr
    else:
        print(f"{res.get('model')} ({res.get('voter')}): top1 {res.get('top1', 0):.2f}% top5 {res.get('top5', 0):.2f}% "
              f"on {res.get('n')} {res.get('dataset')} test images; checkpoints in {args.out}")
    return 0


def _eval(args):
    import torch

    from ..train import evaluate_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    res = evaluate_checkpoint(args.checkpoint, args.data, args.device, args.batch_size, args.test_subset,
                              download=not args.no_download)
    if args.json:
        keys = ("top1", "top5", "model", "voter", "dataset", "n", "width", "step", "checkpoint")
        print(json.dumps({k: res[k] for k in keys}))
    else:
        print(f"{res['model']} (width {res['width']}, voter {res['voter']}) on {res['n']} {res['dataset']} test images: "
              f"top1 {res['top1']:.2f}%  top5 {res['top5']:.2f}%")
    return 0


def _demo(args):
    from ..experiments.demo import run_demo

    run_demo(args.data, args.out, args.device, args.threads, download=not args.no_download)
    return 0
