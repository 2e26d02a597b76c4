"""Timing of the engine against PyTorch fp32 in the same run (``bitvote bench``).

Per layer: the ReActNet-18 3x3 shapes, each timed from its real-valued input (packing
included) through the fused epilogue (popcount -> BN-folded floats), against ``F.conv2d``
fp32 on the same shape under ``torch.inference_mode()`` with the same thread count.
Epilogues: popcount vs MV vs HMV (``tap``) side by side on the same shapes, HMV/MV emitting
packed bits. Whole model: images/s of the compiled graph vs the model in PyTorch fp32 eager.
Numbers are the median of ``reps`` runs after a warm-up.
"""

from __future__ import annotations

import statistics
import time
from typing import Dict, List

import torch
import torch.nn.functional as F

from ..voter import resolve
from .build import active_isa, lib
from .conv import PackedConv
from .pack import pack

__all__ = ["LAYERS", "bench_layers", "bench_epilogues", "bench_model"]

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


def _time(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def bench_layers(batches=(1, 32), threads=(1, 2), reps: int = 5, quick: bool = False) -> List[Dict]:
    """Per layer: engine (pack + conv + BN-folded popcount epilogue) vs fp32 ``F.conv2d``."""
    rows = []
    layers = LAYERS[::3] if quick else LAYERS
    prev = torch.get_num_threads()
    try:
        for name, ci, co, h, s in layers:
            w = torch.randn(co, ci, 3, 3)
            pc = PackedConv(w >= 0, s, 1, 0.0, None, name).epilogue("affine", a=torch.rand(co), b=torch.randn(co))
            for nb in batches:
                x = torch.randn(nb, ci, h, h)
                for th in threads:
                    torch.set_num_threads(th)

                    def eng():
                        return pc(pack(x, threads=th), th)

                    def fp32():
                        with torch.inference_mode():
                            return F.conv2d(x, w, None, s, 1)

                    ms, fp = _time(eng, reps), _time(fp32, reps)
                    ho = (h + 2 - 3) // s + 1
                    macs = nb * co * ho * ho * ci * 9
                    rows.append({"layer": name, "batch": nb, "threads": th, "ms": ms, "fp32_ms": fp,
                                 "speedup": fp / ms, "gbmacs": macs / ms / 1e6, "isa": active_isa(),
                                 "input": "real NCHW (packing timed)", "output": "floats, channels-last"})
    finally:
        torch.set_num_threads(prev)
    return rows


def bench_epilogues(batch: int = 32, threads: int = 1, reps: int = 5, quick: bool = False) -> List[Dict]:
    """popcount (floats, BN folded) vs MV (packed bits) vs HMV ``tap`` (packed bits), same shapes."""
    rows = []
    layers = LAYERS[::3] if quick else LAYERS
    for name, ci, co, h, s in layers:
        w = torch.randn(co, ci, 3, 3)
        x = torch.randn(batch, ci, h, h)
        xw = pack(x, threads=threads)
        for mode, spec in (("popcount", None), ("mv", "mv"), ("hmv", "tap")):
            hier = None if spec is None else resolve(spec, ci * 9, 9)
            pc = PackedConv(w >= 0, s, 1, 0.0, hier, name)
            pc.epilogue("affine") if hier is None else pc.epilogue("bits")
            ms = _time(lambda: pc(xw, threads), reps)
            ho = (h + 2 - 3) // s + 1
            rows.append({"layer": name, "batch": batch, "threads": threads, "epilogue": mode,
                         "voter": "popcount" if hier is None else hier.describe(), "ms": ms,
                         "gbmacs": batch * co * ho * ho * ci * 9 / ms / 1e6, "input": "packed bits",
                         "isa": active_isa()})
    return rows


def bench_model(name: str = "reactnet18", voter: str = "mv", batch: int = 32, threads: int = 1,
                reps: int = 3, width: float = 1.0) -> Dict:
    """Whole model: images/s of the engine graph vs PyTorch fp32 eager (same model, same input)."""
    from .. import models
    from .graph import EngineModel, compile_model

    model = models.create(name, voter=voter, width=width).eval()
    engine = EngineModel(compile_model(model))
    x = torch.randn(batch, 3, 32, 32)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        def eager():
            with torch.inference_mode():
                return model(x)

        ms_e = _time(lambda: engine(x, threads), reps)
        ms_t = _time(eager, reps)
    finally:
        torch.set_num_threads(prev)
    return {"model": name, "voter": voter, "width": width, "batch": batch, "threads": threads,
            "engine_img_s": batch / ms_e * 1e3, "torch_img_s": batch / ms_t * 1e3, "speedup": ms_t / ms_e,
            "isa": active_isa(), "openmp": bool(lib().openmp)}
