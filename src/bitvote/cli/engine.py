"""``bitvote compile | run | verify | bench``: the packed CPU engine (docs/engine.md)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import BitvoteError
from .args import (
    count, engine_data, input_file, nonneg_float, nonneg_int, output_file, positive_int, text, threads
)


def load_data(spec: str, limit: int = 0, num_classes: int = 10):
    """Images (and labels) for ``--data``.

    ``synthetic[:N]``: N random images (no labels; seeded). A ``.pt``/``.pth`` file: a tensor
    of images, or a dict with ``x``/``images`` and optionally ``y``/``labels``. Anything else
    is a dataset root or ``.bvd`` pack for :mod:`bitvote.data`: the test split of CIFAR-10 or
    CIFAR-100 (chosen by the model's number of classes), normalized as in training.
    """
    x = y = None
    if spec.startswith("synthetic") or spec.startswith("random"):
        n = int(spec.split(":", 1)[1]) if ":" in spec else 64
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 3, 32, 32, generator=g)
    elif Path(spec).suffix in (".pt", ".pth"):
        if not Path(spec).is_file():
            raise BitvoteError(f"data file {spec!r} does not exist")
        try:
            d = torch.load(spec, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - weights_only: a file that is not plain tensors is refused here
            raise BitvoteError(f"data file {spec!r} is not a readable tensor file of plain tensors "
                               f"({type(e).__name__})") from None
        if torch.is_tensor(d):
            x = d
        elif isinstance(d, dict):
            x = next((d[k] for k in ("x", "images", "data") if k in d), None)
            y = next((d[k] for k in ("y", "labels", "targets") if k in d), None)
        x, y = _checked_images(x, y, spec, num_classes)
    else:
        from .. import data as D

        dataset = "cifar100" if num_classes == 100 else "cifar10"
        test = D.load(dataset, "test", spec, download=False)
        if limit:
            test = D.subset(test, limit)
        x, y = D.normalize(test.x, dataset), test.y
    x = x.float()
    if limit:
        x = x[:limit]
        y = None if y is None else y[:limit]
    return x, (None if y is None else torch.as_tensor(y).long())


def _checked_images(x, y, spec, num_classes):
    """Images of a ``--data`` file as the models take them, and labels that can be scored.

    uint8 images are raw pixels: they are normalized as in training (CIFAR-10 or -100 by the
    class count) rather than fed as 0..255 floats, which would give a plausible wrong accuracy.
    """
    if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != 3 or x.shape[0] < 1 or min(x.shape[2:]) < 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise BitvoteError(f"data file {spec!r} holds no (N, 3, H, W) image tensor (found {shape})")
    if x.dtype == torch.uint8:
        from .. import data as D

        x = D.normalize(x, "cifar100" if num_classes == 100 else "cifar10")
    elif not x.is_floating_point():
        raise BitvoteError(f"data file {spec!r}: images are {x.dtype}, expected float (normalized) or uint8 pixels")
    elif not bool(torch.isfinite(x).all()):
        raise BitvoteError(f"data file {spec!r}: images hold nan or inf")
    if y is not None:
        if not torch.is_tensor(y):
            try:
                y = torch.as_tensor(y)
            except (TypeError, ValueError, RuntimeError):
                raise BitvoteError(f"data file {spec!r}: labels are not a list of class indices") from None
        if y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point() or y.dtype == torch.bool:
            raise BitvoteError(f"data file {spec!r}: labels must be {x.shape[0]} integer class indices "
                               f"(found {y.dtype} of shape {tuple(y.shape)})")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise BitvoteError(f"data file {spec!r}: labels outside 0..{num_classes - 1} (the model's classes)")
    return x, y


def _compile(args):
    from ..engine import graph as G

    if Path(args.out).resolve() == Path(args.checkpoint).resolve():
        raise BitvoteError(f"--out {args.out} is the input checkpoint: choose another file")
    g = G.compile_model(args.checkpoint)
    G.save(g, args.out)
    sz = G.binary_sizes(g)
    print(f"wrote {args.out}: {len(g['blocks'])} blocks, binary layers {sz['packed_weight_bytes']} B packed vs "
          f"{sz['float_weight_bytes']} B float ({sz['ratio_weights']:.1f}x smaller; "
          f"{sz['ratio_with_epilogue']:.1f}x with the folded BN)")


def _run(args):
    from ..engine import graph as G

    if args.device != "cpu" and args.threads is not None:
        raise BitvoteError("--threads sets the CPU engine's threads: the cuda path does not take it")
    eng = G.load(args.model)
    if args.device != "cpu":
        from ..gpu import require_device
        from ..gpu.model import GpuEngineModel

        eng = GpuEngineModel(eng.graph, require_device(args.device))
    x, y = load_data(args.data, args.limit, int(eng.graph.get("config", {}).get("num_classes", 10)))
    n_threads = args.threads or 1
    logits = torch.cat([eng(x[i:i + args.batch], n_threads).cpu() for i in range(0, x.shape[0], args.batch)])
    pred = logits.argmax(1)
    res = {"images": int(x.shape[0]), "predictions": pred.tolist()}
    if y is not None:
        res["accuracy"] = float((pred == y).float().mean())
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['images']} images" + (f", top-1 accuracy {res['accuracy']:.4f}" if y is not None else ""))


def _verify(args):
    from ..engine.graph import load_checkpoint
    from ..engine.verify import verify

    model = load_checkpoint(args.checkpoint)  # read once: its classes pick CIFAR-10 or -100 for a folder
    x, y = load_data(args.data, args.limit, int(model.config.get("num_classes", 10)))
    engine = None  # the packed CPU engine
    if args.device != "cpu":
        from ..gpu import require_device
        from ..gpu.model import GpuEngineModel

        dev = require_device(args.device)
        engine = lambda graph: GpuEngineModel(graph, dev)  # noqa: E731
    r = verify(model, x, y, threads=args.threads, eps=args.eps, atol=args.atol, engine=engine)
    if args.json:
        print(json.dumps(r))
    else:
        for l in r["layers"]:
            print(f"  {l['name']:<22} {l['outputs']:>10} outputs  {l['mismatches']} mismatches")
        print(f"per layer: {r['layer_mismatches']} mismatching outputs (given the same input bits)")
        print(f"end to end: {r['images']} images, {r['flips']} flipped bits ({r['flips_near_zero']} within "
              f"eps={r['eps']} of 0, {r['flips_downstream']} downstream of those, {r['flips_unexplained']} unexplained)")
        print(f"top-1: {r['top1_agree']} agree, {r['top1_disagree']} differ ({r['top1_unexplained']} unexplained); "
              f"max logit difference without flips {r['max_logit_diff']:.3g} (atol {r['atol']})")
        if r["correct_engine"] is not None:
            print(f"accuracy: engine {r['correct_engine']}/{r['images']}, torch {r['correct_torch']}/{r['images']}")
        print("PASSED" if r["passed"] else "FAILED")
    return 0 if r["passed"] else 1


def _bench(args):
    if args.voter is not None and not args.model:
        raise BitvoteError("--voter is the voter of the whole model: it needs --model (the layer timings use popcount, MV and tap)")
    args.voter = args.voter or "mv"
    if args.device != "cpu":
        if args.threads:
            raise BitvoteError("--threads sets CPU threads: the cuda benchmark does not take it")
        from ..gpu.bench import main as gpu_bench

        return gpu_bench(args)
    from ..engine import bench as B

    rows = []
    threads = [args.threads] if args.threads else [1, 2]
    kernels = getattr(args, "kernels", None) or ["v1"]
    want_layers = args.layers or not args.model  # --layers with --model times both
    if want_layers:
        for th in threads:
            rows.append({"peak": B.peak(th)})
        rows += B.bench_layers(threads=threads, reps=args.reps, quick=args.quick, kernels=kernels)
        rows += B.bench_epilogues(threads=threads[0], reps=args.reps, quick=args.quick, kernels=kernels)
    if args.model:
        for nb in (1, 8) if args.quick else (1, 32):
            for th in threads:
                rows.append(B.bench_model(args.model, voter=args.voter, batch=nb, threads=th,
                                          reps=args.reps, width=0.25 if args.quick else 1.0))
    if args.json:
        print(json.dumps(rows))
        return
    print("all figures: measured in this run, on this machine, as it is now (a loaded machine inflates them)")
    for r in rows:
        if "peak" in r:
            p = r["peak"]
            print(f"peak t{p['threads']} [{p['isa']}]: XOR+popcount {p['xorpop']:.0f} G binary MAC/s, "
                  f"fp32 FMA {p['fp32']:.0f} G MAC/s, int8 {p['int8']:.0f} G MAC/s ({p['int8_unit']})")
        elif "engine_img_s" in r:
            line = (f"model {r['model']} ({r['voter']}, width {r['width']}) batch {r['batch']} threads {r['threads']}: "
                    f"engine {r['engine_img_s']:.1f} img/s, torch fp32 {r['torch_img_s']:.1f} img/s, {r['speedup']:.2f}x")
            if "resnet18_int8_img_s" in r:
                line += (f"; float resnet18 fp32 {r['resnet18_fp32_img_s']:.1f} img/s, int8 {r['resnet18_int8_img_s']:.1f} "
                         f"img/s, engine {r['speedup_int8']:.2f}x int8")
            print(line)
        elif "epilogue" in r:
            print(f"{r['layer']:<12} b{r['batch']:<3} t{r['threads']} {r['kernel']} {r['epilogue']:<13} {r['ms']:8.3f} ms "
                  f"{r['vs_popcount']:5.2f}x popcount {r['gbmacs']:7.1f} GMAC/s  ({r['voter']}, {r['path']}, packed input)")
        else:
            print(f"{r['layer']:<12} b{r['batch']:<3} t{r['threads']} {r['kernel']} engine {r['ms']:8.3f} ms  "
                  f"fp32 {r['fp32_ms']:8.3f} ms {r['speedup']:5.2f}x  int8 {r['int8_ms']:8.3f} ms {r['speedup_int8']:5.2f}x  "
                  f"{r['gbmacs']:6.1f} GMAC/s  peak: engine {100 * r['peak_frac']:3.0f}%"
                  + (f" fp32 {100 * r['fp32_peak_frac']:3.0f}%" if r["fp32_peak_frac"] is not None else "")
                  + (f" int8 {100 * r['int8_peak_frac']:3.0f}%" if r["int8_peak_frac"] is not None else "")
                  + f"  [{r['isa']}]")


def add_parser(sub):
    p = sub.add_parser("compile", help="compile a trained checkpoint into a packed engine graph (.bvm)")
    p.add_argument("checkpoint", type=input_file)
    p.add_argument("--out", type=output_file, required=True, help="output .bvm file")
    p.set_defaults(func=_compile)

    p = sub.add_parser("run", help="evaluate an engine graph")
    p.add_argument("model", type=input_file, help=".bvm file from `bitvote compile`")
    p.add_argument("--data", type=engine_data, required=True, help="a .pt file of images (+ labels), synthetic:N, "
                   "a dataset folder or a .bvd pack (its test split)")
    p.add_argument("--limit", type=nonneg_int, default=0, help="the first N images only (default 0: all)")
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--threads", type=threads, help="CPU engine threads (default 1)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: the Triton GPU path (docs/gpu.md)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)

    p = sub.add_parser("verify", help="check the engine against PyTorch: exact per layer, flips traced end to end")
    p.add_argument("checkpoint", type=input_file)
    p.add_argument("--data", type=engine_data, required=True, help="a .pt file of images (+ labels), synthetic:N, "
                   "a dataset folder or a .bvd pack (its test split)")
    p.add_argument("--limit", type=nonneg_int, default=0, help="the first N images only (default 0: all)")
    p.add_argument("--threads", type=threads, default=1)
    p.add_argument("--eps", type=nonneg_float, default=1e-4, help="a flip is explained by a pre-sign value within eps of 0")
    p.add_argument("--atol", type=nonneg_float, default=1e-3, help="logit tolerance for images without flips")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: check the Triton GPU path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_verify)

    p = sub.add_parser("bench", help="time the engine against PyTorch fp32 in the same run")
    p.add_argument("--layers", action="store_true", help="per-layer and epilogue timings (default without --model)")
    p.add_argument("--model", type=text, default=None, help="also time a whole model, e.g. reactnet18")
    p.add_argument("--voter", type=text, default=None, help="voter of the whole model (default mv)")
    p.add_argument("--threads", type=threads, default=0, help="one thread count (default: 1 and 2)")
    p.add_argument("--reps", type=count(10000), default=5)
    p.add_argument("--quick", action="store_true", help="a few shapes, small model: checks that it runs")
    p.add_argument("--kernels", nargs="+", choices=["v0", "v1"], default=None,
                   help="AVX2 kernel versions to time side by side (v0: the earlier kernels; default v1)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: the Triton GPU path vs cuDNN fp32/TF32/fp16/bf16, batch 1 and 256 (docs/gpu.md)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_bench)
