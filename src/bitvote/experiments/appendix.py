"""The seed's appendix: BN / without BN / BN-free forms of four binary networks.

``bitvote reproduce --table appendix --preset smoke|cpu|full`` trains the 4 x 3 grid (popcount,
no voter) on CIFAR-10 and/or CIFAR-100 with :class:`bitvote.experiments.reproduce.Protocol`'s resumable
stages (one stage file per cell: an interrupted grid resumes), and writes ``appendix.md`` (the
seed's layout, its numbers beside ours) and ``appendix.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .. import data as D
from ..errors import BitvoteError
from ..io import atomic_write_bytes, hold_folder
from ..models.variants import BN_FORMS
from .report import display_name
from .reproduce import PRESETS, Protocol

__all__ = ["APPENDIX_MODELS", "SEED_APPENDIX", "reproduce_appendix", "appendix_table"]

APPENDIX_MODELS = ("xnornet18", "birealnet18", "reactnet18", "reactneta")

#: the seed's Table 2 (top-1 %): {dataset: {model: (BN, w/o BN, BN-Free)}}
SEED_APPENDIX: Dict[str, Dict[str, tuple]] = {
    "cifar10": {"xnornet18": (90.21, 71.75, 79.67), "birealnet18": (89.12, 71.30, 79.59),
                "reactnet18": (92.31, 90.33, 92.08), "reactneta": (82.95, 77.60, 83.91)},
    "cifar100": {"xnornet18": (65.35, 45.30, 53.76), "birealnet18": (63.51, 47.72, 54.34),
                 "reactnet18": (68.78, 62.60, 68.34), "reactneta": (50.30, 39.37, 55.00)},
}


def reproduce_appendix(preset: str = "smoke", models: Optional[Sequence[str]] = None,
                       datasets: Sequence[str] = ("cifar10",), data=None, out=None, device="cpu", threads=None,
                       download=True, quiet=False, print_table=True, **overrides) -> List[dict]:
    """Train (or resume) every model x bn form on each dataset; returns the rows."""
    import torch

    from ..train import device as as_device

    if preset not in PRESETS or preset == "demo":
        raise BitvoteError(f"unknown preset {preset!r}: choose one of {', '.join(k for k in PRESETS if k != 'demo')}")
    models = list(models or APPENDIX_MODELS)
    bad = [m for m in models if m not in APPENDIX_MODELS]
    if bad:
        raise BitvoteError(f"the appendix grid covers {', '.join(APPENDIX_MODELS)}; not {', '.join(bad)}")
    for ds in datasets:
        if ds not in D.DATASETS:
            raise BitvoteError(f"unknown dataset {ds!r}: choose one of {', '.join(D.DATASETS)}")
    as_device(device)
    if threads:
        torch.set_num_threads(threads)
    out = Path(out or f"runs/appendix-{preset}")
    rows, t0 = [], time.monotonic()
    for ds in datasets:
        p = dict(PRESETS[preset], preset=preset, dataset=ds, seed=0, surrogate="approxsign", sigma="fanin")
        p.update(overrides)
        proto = Protocol(out / ds, p, data, device, threads, download, quiet)
        proto.split("test")  # a missing data folder fails here, before anything is written
        with hold_folder(out / ds, "bitvote reproduce --table appendix"):
            proto.check_folder()
            for model in models:
                for bn in BN_FORMS:
                    rows.append(_cell(proto, model, bn))
    text = appendix_table(rows, PRESETS[preset], time.monotonic() - t0)
    atomic_write_bytes(out / "appendix.md", text.encode())
    atomic_write_bytes(out / "appendix.json", (json.dumps(rows, indent=1) + "\n").encode())
    if print_table and not quiet:
        print(text)
    return rows


def _cell(proto: Protocol, model: str, bn: str) -> dict:
    key = f"appendix-{bn}"
    got = proto.done(model, key)
    if got:
        return got
    p = proto.p
    proto.log(f"{p['dataset']} {model} bn={bn}: training ({p['epochs']} epochs)")
    res = proto.train_stage(model=model, width=p["width"], epochs=p["epochs"], lr=p["lr"], bn=bn,
                       out=str(proto.out / model / f"bn-{bn}"))
    row = proto.base_row(model, bn=bn, voter="popcount", mode="baseline", status="ok", top1=res["top1"],
                         top5=res["top5"], n=res["n"], epochs=p["epochs"], wall_s=res.get("wall_s"))
    return proto.record(model, key, row)


def appendix_table(rows: List[dict], preset: dict, wall_s: float) -> str:
    """The seed's appendix layout: one line per model, BN / w/o BN / BN-Free per dataset."""
    datasets = [d for d in ("cifar10", "cifar100") if any(r["dataset"] == d for r in rows)]
    models = [m for m in APPENDIX_MODELS if any(r["model"] == m for r in rows)]
    got = {(r["dataset"], r["model"], r["bn"]): r for r in rows}
    head = "| Binary Network |" + "".join(f" {d.upper()} {f} (ours / seed) |" for d in datasets
                                          for f in ("BN", "w/o BN", "BN-Free")) + "\n"
    head += "|---|" + "---|" * (3 * len(datasets)) + "\n"
    lines = []
    for m in models:
        cells = []
        for d in datasets:
            for i, bn in enumerate(BN_FORMS):
                r = got.get((d, m, bn))
                ours = f"{r['top1']:.2f}" if r and r.get("top1") is not None else "-"
                cells.append(f" {ours} / {SEED_APPENDIX[d][m][i]:.2f} |")
        lines.append(f"| {display_name(m)} |" + "".join(cells))
    sub = preset.get("subset")
    return (f"Top-1 (%) of the three forms (popcount, no voter), ours at width {preset['width']:g}, "
            f"{preset['epochs']} epochs, {'all' if not sub else sub} training images, "
            f"{'all' if not preset.get('test_subset') else preset['test_subset']} test images; "
            f"the seed's (full scale) after each slash. Wall time {wall_s / 60:.1f} min.\n\n" + head + "\n".join(lines) + "\n")
