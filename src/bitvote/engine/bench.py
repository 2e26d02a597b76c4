"""Timing of the engine against PyTorch fp32 and int8 in the same run (``bitvote bench``).

Per layer: the ReActNet-18 3x3 shapes, each timed from its real-valued input (packing
included) through the fused epilogue (popcount -> BN-folded floats), against ``F.conv2d``
fp32 and PyTorch's quantized conv (``torch.ao.nn.quantized.Conv2d``, x86/fbgemm engine,
weights prepacked at construction, quint8 channels-last input quantized before the clock
starts: int8 at its most favourable) on the same shape under ``torch.inference_mode()`` with
the same thread count. Every row also says which fraction of this CPU's peak it reached:
:func:`peak` runs small probes compiled with the engine in the same process (the engine's
own XOR + popcount tile on L1 data, fp32 FMA, int8 dot products: VNNI where the CPU has it).
Epilogues: popcount vs MV vs every hierarchy the models use (tap, groups, channel-major,
'first' ties), side by side on the same shapes. Whole model: images/s of the compiled graph
vs the binary model in PyTorch fp32 eager vs the float ResNet-18 of the same width in fp32
and post-training quantized to int8 with PyTorch's own FX flow.

Timings are the median of ``reps`` runs after a warm-up, the candidates of one row
interleaved: CPU time of the process on one thread (a machine shared with other work
inflates it less than wall time), wall time on more (CPU time would count spin-waits). ``kernels=("v0", "v1")`` also times the
earlier AVX2 kernels (``bv_set_kernel(0)``) beside the current ones in the same process.
"""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

from ..voter import resolve
from ..packed.build import active_isa, isa_id, lib
from ..packed.conv import PackedConv
from ..packed.pack import pack

__all__ = ["LAYERS", "EPILOGUES", "peak", "bench_layers", "bench_epilogues", "bench_model"]

#: (name, C_in, C_out, H, stride): the ReActNet-18 3x3 binary conv shapes at full width.
LAYERS = [
    ("64@32x32", 64, 64, 32, 1),
    ("64->128 s2", 64, 128, 32, 2),
    ("128@16x16", 128, 128, 16, 1),
    ("128->256 s2", 128, 256, 16, 2),
    ("256@8x8", 256, 256, 8, 1),
    ("256->512 s2", 256, 512, 8, 2),
    ("512@4x4", 512, 512, 4, 1),
]

#: (label, voter spec or None, tie): the epilogues ``bench_epilogues`` times; specs that
#: need the channel count are formatted with ``C``.
EPILOGUES = [
    ("popcount", None, 1),
    ("mv", "mv", 1),
    ("mv first", "mv", "first"),
    ("tap", "tap", 1),
    ("tap first", "tap", "first"),
    ("groups=4", "groups=4", 1),
    ("tap,groups=2", "tap,groups=2", 1),
    ("tap,leaf=16", "tap,leaf=16", "first"),
    ("cm:M(C)(M9)", "cm:M{C}(M9)", 1),
    ("cgroups=4", "cgroups=4", 1),
    ("cm:P(M3) first", "cm:P(M3)", "first"),
    ("cm:M(M3(M3)) first", "cm:M(M3(M3))", "first"),
]

_KERNELS = {"v0": 0, "v1": 1}

_PATHS = {0: "segments", 1: "dense one-leaf", 2: "dense per-tap", 3: "dense fields", 4: "kernel rows",
          5: "channel leaves", 6: "channel groups"}


def _ran_kind(kind: int, kernels: str, isa: str) -> int:
    """The kernel that really runs a layer of ``kind``: the portable build and the AVX2 ``v0``
    kernels have the dense one-leaf / per-tap kernels only, and run the rest on segments."""
    if kind > 2 and (isa == "portable" or (isa == "avx2" and kernels == "v0")):
        return 0
    return kind


def _clock(threads: int):
    """CPU time for one thread (what a loaded machine inflates least); wall time for more
    (CPU time would count the threads' spin-waits)."""
    return (time.process_time, "CPU time, median") if threads <= 1 else (time.perf_counter, "wall time, median")


def _cpu_ms(fns, reps: int, threads: int = 1) -> List[float]:
    """Median time (ms, :func:`_clock`) of each of ``fns``, run interleaved after one warm-up each."""
    clock = _clock(threads)[0]
    for f in fns:
        f()
    ts = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            t = clock()
            f()
            ts[i].append(clock() - t)
    return [statistics.median(t) * 1e3 for t in ts]


def _with_kernel(version: int, fn):
    def run():
        old = lib().bv_set_kernel(version)
        try:
            return fn()
        finally:
            lib().bv_set_kernel(old)
    return run


_PEAK: Dict = {}

#: the int8 units the peak probe knows, by ``bv_int8_kind``: the widest one the CPU has (AMX
#: tiles where present: oneDNN's int8 convs run on them)
INT8_UNITS = {0: "none", 1: "avx2 vpmaddubsw", 2: "avx-vnni", 3: "avx512-vnni", 4: "amx-int8"}


def peak(threads: int = 1, isa=None, seconds: float = 0.05) -> Dict:
    """This CPU's measured peaks in G MAC/s on ``threads`` threads: ``xorpop`` (binary MACs
    of the engine's XOR + popcount tile on ``isa``, L1-resident), ``fp32`` (FMA) and
    ``int8`` (dot products; ``int8_unit`` says which), best of three short runs each."""
    key = (threads, isa_id(isa))
    if key in _PEAK:
        return _PEAK[key]
    out = {"threads": threads, "isa": active_isa() if isa is None else isa,
           "int8_unit": INT8_UNITS[lib().bv_int8_kind()]}
    clock = time.process_time if threads <= 1 else time.perf_counter
    for which, name in ((0, "xorpop"), (1, "fp32"), (2, "int8")):
        iters = 64
        while True:  # calibrate to ~seconds per run
            t = clock()
            macs = lib().bv_peak(which, key[1], iters, threads)
            dt = clock() - t
            if macs == 0 or dt > seconds / 4 or iters > 1 << 34:
                break
            iters *= 4
        best = 0.0
        for _ in range(3):
            t = clock()
            macs = lib().bv_peak(which, key[1], iters, threads)
            dt = max(clock() - t, 1e-9)
            best = max(best, macs / dt / 1e9)
        out[name] = best
    _PEAK[key] = out
    return out


def _int8_conv(w: torch.Tensor, stride: int, x: torch.Tensor):
    """PyTorch's quantized conv for ``w`` (per-channel qint8 weights, prepacked) and ``x``
    quantized to quint8, channels-last; both built before any timing."""
    import torch.ao.nn.quantized as nnq

    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    co, ci = w.shape[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated in newer PyTorch, not gone
        q = nnq.Conv2d(ci, co, 3, stride, 1, bias=True)
        qw = torch.quantize_per_channel(w, w.abs().amax(dim=(1, 2, 3)).clamp_min(1e-8) / 127,
                                        torch.zeros(co, dtype=torch.long), 0, torch.qint8)
        q.set_weight_bias(qw, torch.zeros(co))  # prepacks
        q.scale, q.zero_point = 0.05, 64
        xq = torch.quantize_per_tensor(x.contiguous(memory_format=torch.channels_last),
                                       float(x.abs().max()) / 127, 128, torch.quint8)
    return q, xq


def bench_layers(batches=(1, 32), threads=(1, 2), reps: int = 5, quick: bool = False,
                 kernels: Sequence[str] = ("v1",)) -> List[Dict]:
    """Per layer: engine (pack + conv + BN-folded popcount epilogue) vs fp32 ``F.conv2d`` vs
    int8 quantized conv, each with its fraction of the measured peak."""
    rows = []
    layers = LAYERS[::3] if quick else LAYERS
    prev = torch.get_num_threads()
    try:
        for name, ci, co, h, s in layers:
            w = torch.randn(co, ci, 3, 3)
            pc = PackedConv(w >= 0, s, 1, 0.0, None, name).epilogue("affine", a=torch.rand(co), b=torch.randn(co))
            for nb in batches:
                x = torch.randn(nb, ci, h, h)
                q, xq = _int8_conv(w, s, x)
                for th in threads:
                    torch.set_num_threads(th)
                    pk = peak(th)

                    def fp32():
                        with torch.inference_mode():
                            return F.conv2d(x, w, None, s, 1)

                    def int8():
                        with torch.inference_mode():
                            return q(xq)

                    engs = [_with_kernel(_KERNELS[k], lambda th=th: pc(pack(x, threads=th), th)) for k in kernels]
                    *ms, fp, i8 = _cpu_ms([*engs, fp32, int8], reps, th)
                    ho = (h + 2 - 3) // s + 1
                    macs = nb * co * ho * ho * ci * 9
                    for k, m in zip(kernels, ms):
                        g = macs / m / 1e6
                        rows.append({"layer": name, "batch": nb, "threads": th, "kernel": k, "ms": m,
                                     "fp32_ms": fp, "int8_ms": i8, "speedup": fp / m, "speedup_int8": i8 / m,
                                     "gbmacs": g, "peak_frac": g / pk["xorpop"],
                                     "fp32_peak_frac": macs / fp / 1e6 / pk["fp32"] if pk["fp32"] else None,
                                     "int8_peak_frac": macs / i8 / 1e6 / pk["int8"] if pk["int8"] else None,
                                     "isa": active_isa(), "int8_unit": pk["int8_unit"],
                                     "input": "real NCHW (packing timed)", "output": "floats, channels-last",
                                     "timing": _clock(th)[1]})
    finally:
        torch.set_num_threads(prev)
    return rows


def bench_epilogues(batch: int = 32, threads: int = 1, reps: int = 5, quick: bool = False,
                    kernels: Sequence[str] = ("v1",)) -> List[Dict]:
    """popcount (floats, BN folded) vs MV vs every hierarchy of :data:`EPILOGUES` (packed bits),
    same shapes, from packed input; ``vs_popcount`` is each row's time over popcount's."""
    rows = []
    layers = LAYERS[::3] if quick else LAYERS
    for name, ci, co, h, s in layers:
        w = torch.randn(co, ci, 3, 3)
        x = torch.randn(batch, ci, h, h)
        xw = pack(x, threads=threads)
        convs = []
        for label, spec, tie in EPILOGUES:
            hier = None if spec is None else resolve(spec.format(C=ci), ci * 9, 9, tie)
            pc = PackedConv(w >= 0, s, 1, 0.0, hier, name)
            pc.epilogue("affine") if hier is None or hier.root == "P" else pc.epilogue("bits")  # counts stay numbers
            convs.append((label, hier, pc))
        fns, keys = [], []
        for k in kernels:
            for label, hier, pc in convs:
                fns.append(_with_kernel(_KERNELS[k], lambda pc=pc: pc(xw, threads)))
                keys.append((k, label, hier, pc))
        ms = _cpu_ms(fns, reps, threads)
        ho = (h + 2 - 3) // s + 1
        base = {k: m for (k, label, _, _), m in zip(keys, ms) if label == "popcount"}
        for (k, label, hier, pc), m in zip(keys, ms):
            rows.append({"layer": name, "batch": batch, "threads": threads, "kernel": k, "epilogue": label,
                         "voter": "popcount" if hier is None else hier.describe(),
                         "path": _PATHS[_ran_kind(pc.kind, k, active_isa())],
                         "ms": m, "vs_popcount": m / base[k],
                         "gbmacs": batch * co * ho * ho * ci * 9 / m / 1e6, "input": "packed bits",
                         "output": "floats" if hier is None or hier.root == "P" else "bits", "isa": active_isa(),
                         "timing": _clock(threads)[1]})
    return rows


_QUANTIZED: Dict = {}


def _quantized_resnet18(width: float, x: torch.Tensor):
    """The float ResNet-18 of this width, post-training quantized to int8 with PyTorch's FX
    flow (conv-bn-relu fused, x86 qconfig, a few calibration batches), and the float model;
    built once per width and process (quantizing takes longer than timing)."""
    if width in _QUANTIZED:
        return _QUANTIZED[width]
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from .. import models

    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    fm = models.create("resnet18", width=width).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = prepare_fx(fm, get_default_qconfig_mapping(torch.backends.quantized.engine), (x,))
        with torch.inference_mode():
            for _ in range(2):
                pm(torch.randn_like(x))
        qm = convert_fx(pm)
    _QUANTIZED[width] = fm, qm
    return fm, qm


def bench_model(name: str = "reactnet18", voter: str = "mv", batch: int = 32, threads: int = 1,
                reps: int = 3, width: float = 1.0, int8: bool = True) -> Dict:
    """Whole model: images/s of the engine graph vs PyTorch fp32 eager (same model, same
    input), and, with ``int8``, the float ResNet-18 of the same width in fp32 and int8."""
    from .. import models
    from .graph import EngineModel, compile_model

    model = models.create(name, voter=voter, width=width).eval()
    engine = EngineModel(compile_model(model))
    x = torch.randn(batch, 3, 32, 32)
    fm = qm = None
    if int8:
        fm, qm = _quantized_resnet18(width, x)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        def eager(m):
            def run():
                with torch.inference_mode():
                    return m(x)
            return run

        fns = [lambda: engine(x, threads), eager(model)] + ([eager(fm), eager(qm)] if int8 else [])
        ms = _cpu_ms(fns, reps, threads)
    finally:
        torch.set_num_threads(prev)
    row = {"model": name, "voter": voter, "width": width, "batch": batch, "threads": threads,
           "engine_img_s": batch / ms[0] * 1e3, "torch_img_s": batch / ms[1] * 1e3, "speedup": ms[1] / ms[0],
           "isa": active_isa(), "openmp": bool(lib().openmp), "timing": _clock(threads)[1]}
    if int8:
        row.update({"resnet18_fp32_img_s": batch / ms[2] * 1e3, "resnet18_int8_img_s": batch / ms[3] * 1e3,
                    "speedup_int8": ms[3] / ms[0]})
    return row
