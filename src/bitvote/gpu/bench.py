"""``bitvote bench --device cuda``: the GPU path against cuDNN in the same run.

Per layer (the ReActNet-18 3x3 binary conv shapes of :data:`bitvote.engine.bench.LAYERS`,
batch 1 and 256): the Triton binary conv from the real-valued input (packing included)
through the fused epilogue (popcount -> BN-folded floats; MV and HMV ``tap`` -> packed vote
bits), against cuDNN ``F.conv2d`` in fp32 (TF32 off), TF32, fp16 and bf16 (channels_last,
the tensor-core layout) on the same shape. Whole model: images/s of the compiled graph on
the GPU vs the model in PyTorch eager fp32 (TF32 off, then on) and bf16 autocast. Every
"fp32" figure says whether TF32 was on: PyTorch's default runs cuDNN's fp32 convs in TF32.
Times are CUDA-event medians of ``reps`` runs after a warm-up; rows are yielded (and
printed by :func:`main`) as they are measured. On the CPU (Triton's interpreter) the same code runs for
the tests only: its timings mean nothing.
"""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Dict, Iterator, List

import torch
import torch.nn.functional as F

from ..engine.bench import LAYERS
from ..voter import resolve
from . import concrete_device, tf32
from .conv import GpuPackedConv, pack

__all__ = ["iter_layers", "bench_layers", "bench_model", "device_name", "format_row"]


def device_name(device) -> str:
    d = concrete_device(device)
    return torch.cuda.get_device_name(d) if d.type == "cuda" else "cpu (Triton interpreter: timings meaningless)"


def _time(fn, reps: int, device) -> float:
    """Median milliseconds of ``fn`` after one warm-up call."""
    fn()
    cuda = concrete_device(device).type == "cuda"
    ts = []
    for _ in range(reps):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            ts.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def iter_layers(device="cuda", batches=(1, 256), reps: int = 20, quick: bool = False, layers=None) -> Iterator[Dict]:
    """Per layer: Triton popcount / MV / HMV vs cuDNN fp32 (TF32 off), TF32, fp16, bf16; one
    row per (layer, batch), yielded as soon as it is measured (see module doc)."""
    dev = concrete_device(device)
    cuda = dev.type == "cuda"
    layers = layers if layers is not None else (LAYERS[::3] if quick else LAYERS)
    for name, ci, co, h, s in layers:
        w = torch.randn(co, ci, 3, 3, device=dev)
        a, b = torch.rand(co, device=dev), torch.randn(co, device=dev)
        convs = {
            "popcount": GpuPackedConv(w >= 0, s, 1, 0.0, None, name, device=dev).epilogue("affine", a=a, b=b),
            "mv": GpuPackedConv(w >= 0, s, 1, 0.0, resolve("mv", ci * 9, 9), name, device=dev).epilogue("bits"),
            "hmv_tap": GpuPackedConv(w >= 0, s, 1, 0.0, resolve("tap", ci * 9, 9), name,
                                     device=dev).epilogue("bits"),
        }
        for nb in batches:
            x = torch.randn(nb, ci, h, h, device=dev)
            ho = (h + 2 - 3) // s + 1
            macs = nb * co * ho * ho * ci * 9
            row = {"layer": name, "batch": nb, "device": device_name(dev), "macs": macs}
            with torch.inference_mode():
                for mode, pc in convs.items():
                    flag = torch.zeros(1, dtype=torch.int32, device=dev)
                    row[f"{mode}_ms"] = _time(lambda: pc(pack(x, nan_flag=flag)), reps, dev)
                xw = pack(x)
                row["popcount_packed_ms"] = _time(lambda: convs["popcount"](xw), reps, dev)
                with tf32(False):
                    row["fp32_ms"] = _time(lambda: F.conv2d(x, w, None, s, 1), reps, dev)
                if cuda:
                    with tf32(True):
                        row["tf32_ms"] = _time(lambda: F.conv2d(x, w, None, s, 1), reps, dev)
                    for dt, key in ((torch.float16, "fp16_ms"), (torch.bfloat16, "bf16_ms")):
                        xc = x.to(dt).contiguous(memory_format=torch.channels_last)
                        wc = w.to(dt).contiguous(memory_format=torch.channels_last)
                        row[key] = _time(lambda: F.conv2d(xc, wc, None, s, 1), reps, dev)
            for k in ("fp32", "tf32", "fp16", "bf16"):
                if f"{k}_ms" in row:
                    row[f"popcount_vs_{k}"] = row[f"{k}_ms"] / row["popcount_ms"]
            row["popcount_gbmacs"] = macs / row["popcount_ms"] / 1e6
            yield row


def bench_layers(device="cuda", batches=(1, 256), reps: int = 20, quick: bool = False, layers=None) -> List[Dict]:
    """:func:`iter_layers` as a list."""
    return list(iter_layers(device, batches, reps, quick, layers))


def bench_model(name: str = "reactnet18", voter: str = "mv", batch: int = 256, reps: int = 10,
                width: float = 1.0, device="cuda", size: int = 32) -> Dict:
    """Whole model: images/s of the compiled graph on the GPU (its real-valued ops in fp32,
    TF32 off) vs PyTorch eager fp32 with TF32 off and on, and bf16 autocast."""
    from .. import models
    from ..engine.graph import compile_model
    from .model import GpuEngineModel

    dev = concrete_device(device)
    model = models.create(name, voter=voter, width=width).eval()
    engine = GpuEngineModel(compile_model(model), dev)
    model = model.to(dev)
    x = torch.randn(batch, 3, size, size, device=dev)

    def eager():
        with torch.inference_mode():
            return model(x)

    def eager_bf16():
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16):
            return model(x)

    ms_g = _time(lambda: engine(x), reps, dev)
    with tf32(False):
        ms_t = _time(eager, reps, dev)
    row = {"model": name, "voter": voter, "width": width, "batch": batch, "device": device_name(dev),
           "gpu_engine_img_s": batch / ms_g * 1e3, "torch_fp32_img_s": batch / ms_t * 1e3}
    if dev.type == "cuda":
        with tf32(True):
            row["torch_tf32_img_s"] = batch / _time(eager, reps, dev) * 1e3
        row["torch_bf16_img_s"] = batch / _time(eager_bf16, reps, dev) * 1e3
    return row


def format_row(r: Dict) -> str:
    """One printed line of a :func:`iter_layers` or :func:`bench_model` row."""
    if "gpu_engine_img_s" in r:
        line = (f"model {r['model']} ({r['voter']}, width {r['width']}) batch {r['batch']}: "
                f"GPU engine {r['gpu_engine_img_s']:.0f} img/s, "
                f"torch fp32 (TF32 off) {r['torch_fp32_img_s']:.0f} img/s")
        if "torch_tf32_img_s" in r:
            line += f", torch fp32 (TF32 on) {r['torch_tf32_img_s']:.0f} img/s"
        if "torch_bf16_img_s" in r:
            line += f", torch bf16 {r['torch_bf16_img_s']:.0f} img/s"
        return line + f"  [{r['device']}]"
    label = {"fp32": "fp32 (TF32 off)", "tf32": "fp32 (TF32 on)", "fp16": "fp16", "bf16": "bf16"}
    ref = "  ".join(f"{label[k]} {r[k + '_ms']:.3f}" for k in label if k + "_ms" in r)
    return (f"{r['layer']:<12} b{r['batch']:<4} popcount {r['popcount_ms']:.3f} (packed in "
            f"{r['popcount_packed_ms']:.3f})  mv {r['mv_ms']:.3f}  hmv {r['hmv_tap_ms']:.3f} ms | "
            f"cuDNN {ref} ms | {r['popcount_gbmacs']:.0f} G binary MAC/s")


def format_rows(rows: List[Dict]) -> List[str]:
    return [format_row(r) for r in rows]


def main(args) -> int:
    """``bitvote bench --device cuda [--layers] [--model M] [--quick] [--json]``.

    Timings need a real GPU: the interpreter is refused here unless ``--quick`` (the tests).
    """
    import json

    from . import interpreted, require, require_cuda

    dev = require() if (interpreted() and args.quick) else require_cuda()
    require()  # triton present
    want_layers = args.layers or not args.model
    reps = args.reps if args.reps != 5 else 20  # the CPU default (5) is short for CUDA-event medians
    if dev == "cpu":  # interpreter smoke run: one tiny shape, one rep
        rows = bench_layers(dev, batches=(1,), reps=1, layers=[("tiny", 8, 8, 4, 1)])
        model_runs = [dict(batch=1, reps=1, width=0.0625, size=8)] if args.model else []
    else:
        rows = iter_layers(dev, batches=(1, 256), reps=reps, quick=args.quick) if want_layers else []
        model_runs = [dict(batch=nb, reps=max(3, reps // 2), width=0.25 if args.quick else 1.0)
                  for nb in ((64,) if args.quick else (1, 256))] if args.model else []
    if not args.json:  # rows are printed as they are measured: a run cut short keeps them
        print(f"device: {device_name(dev)}; times in ms (CUDA-event medians), binary convs from real inputs "
              f"(packing timed) unless 'packed'", flush=True)
    out = []
    for r in itertools.chain(rows, (bench_model(args.model, args.voter, device=dev, **kw) for kw in model_runs)):
        out.append(r)
        if not args.json:
            print(format_row(r), flush=True)
    if args.json:
        print(json.dumps(out), flush=True)
    return 0
