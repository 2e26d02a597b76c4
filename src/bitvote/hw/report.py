"""Accuracy next to hardware cost: results JSON joined with units x synthesized cost per unit.

Input (``bitvote hw report RESULTS...``): JSON files, each one of

* a list of rows, or an object with a ``"rows"`` (or ``"results"``) list: what ``bitvote
  reproduce`` writes;
* one ``bitvote eval --json`` object.

A row needs ``model``, ``voter`` (spec string) and ``top1``; optional: ``top5``, ``width``
(default 1), ``tie`` (default 1), ``num_classes``, ``label`` (shown instead of the voter),
``variant`` (e.g. ``converted``, ``recalibrated``, ``retrained``; shown in the label).

Cost of a row: its model is built with that voter; every voter layer's one-output design (an
interior output: all terms valid, no valid port) is synthesized (cached), and the area is
``sum over layers of outputs x transistors per unit`` (voter/popcount epilogue only; the XNOR
array, identical for every voter, is given separately). Popcount rows are the baselines:
popcount + runtime threshold (BN folded, FINN-style) and popcount + unfolded BN.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .. import models
from ..errors import BitvoteError
from ..voter.spec import is_popcount
from .design import make_design
from .synth import synth
from .units import layer_design, layer_units

__all__ = ["load_results", "model_cost", "build_report", "format_report", "plot_report", "pareto"]


def _number(v, lo=-math.inf, hi=math.inf) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi


def _check_row(r: dict, where: str) -> None:
    """The fields the report reads, with types it can use (a results file may be hand-edited)."""
    if not isinstance(r["model"], str) or not isinstance(r["voter"], str):
        raise BitvoteError(f"{where}: 'model' and 'voter' must be strings")
    if not (r["top1"] is None or _number(r["top1"], 0, 100)):
        raise BitvoteError(f"{where}: 'top1' must be a percentage, got {r['top1']!r}")
    if r.get("top5") is not None and not _number(r["top5"], 0, 100):
        raise BitvoteError(f"{where}: 'top5' must be a percentage, got {r['top5']!r}")
    if "width" in r and not (_number(r["width"]) and 0 < r["width"] <= 16):
        raise BitvoteError(f"{where}: 'width' must be a multiplier in (0, 16], got {r['width']!r}")
    nc = r.get("num_classes", 10)
    if isinstance(nc, bool) or not isinstance(nc, int) or not 1 <= nc <= 100_000:
        raise BitvoteError(f"{where}: 'num_classes' must be a class count, got {nc!r}")
    for k in ("tie", "label", "variant"):
        if r.get(k) is not None and not isinstance(r[k], (str, int)):
            raise BitvoteError(f"{where}: {k!r} must be a string, got {type(r[k]).__name__}")


def load_results(paths) -> List[dict]:
    """Rows from results files (see the module docstring); one-line errors name the file."""
    rows = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise BitvoteError(f"results file {str(path)!r} does not exist")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise BitvoteError(f"results file {str(path)!r} is not JSON: {e.msg} at line {e.lineno}") from None
        except UnicodeDecodeError as e:
            raise BitvoteError(f"results file {str(path)!r} is not UTF-8 text (byte {e.start})") from None
        except RecursionError:
            raise BitvoteError(f"results file {str(path)!r} nests too deeply to be a results file") from None
        if isinstance(data, dict) and "top1" in data:
            items = [data]
        elif isinstance(data, dict) and isinstance(data.get("rows", data.get("results")), list):
            items = data.get("rows", data.get("results"))
        elif isinstance(data, list):
            items = data
        else:
            raise BitvoteError(f"results file {str(path)!r}: expected a list of rows, {{'rows': [...]}} or an eval object with 'top1'")
        for i, r in enumerate(items):
            if not isinstance(r, dict) or not all(k in r for k in ("model", "voter", "top1")):
                raise BitvoteError(f"results file {str(path)!r}, row {i}: needs 'model', 'voter' and 'top1'")
            _check_row(r, f"results file {str(path)!r}, row {i}")
            if r["top1"] is None:  # a diverged run: no accuracy to place
                print(f"bitvote: note: results file {str(path)!r}, row {i} ({r['model']}, {r['voter']}) has no top1 "
                      "(diverged): left out", file=sys.stderr)
                continue
            rows.append(dict(r, source=str(path)))
    if not rows:
        raise BitvoteError("no result rows in " + ", ".join(map(str, paths)))
    return rows


def model_cost(model_name: str, voter: str, width: float = 1.0, tie="1", num_classes: int = 10,
               epilogue: str = "threshold", timeout: Optional[float] = None, log=None) -> dict:
    """Area (transistors) of a model's voter layers: sum of outputs x synthesized T per unit."""
    m = models.create(model_name, num_classes=num_classes, voter=voter, width=width, tie=tie)
    layers, _ = layer_units(m)
    by_name = dict(models.voter_layers(m))
    area = xnor = 0
    depth = 0
    designs: Dict[str, dict] = {}
    for row in layers:
        layer = by_name[row["layer"]]
        d = layer_design(layer, epilogue=epilogue)
        if d.name not in designs:
            designs[d.name] = synth(d, timeout)
            if log and not designs[d.name]["cached"]:
                log(f"synthesized {d.describe()}")
        xd = make_design(d.n, kind="xnor")
        if xd.name not in designs:
            designs[xd.name] = synth(xd, timeout)
        area += row["outputs"] * designs[d.name]["transistors"]
        xnor += row["outputs"] * designs[xd.name]["transistors"]
        depth = max(depth, designs[d.name]["depth_cmos"])
    return {"area_T": area, "xnor_T": xnor, "depth_cmos": depth,
            "units": {k: v["transistors"] for k, v in designs.items()}}


def build_report(rows: List[dict], timeout: Optional[float] = None, log=None) -> List[dict]:
    """Each row with its cost, and the popcount baselines of each (model, width) it mentions."""
    out, base_cache = [], {}
    for r in rows:
        width = float(r.get("width", 1.0))
        tie = str(r.get("tie", "1"))
        nc = int(r.get("num_classes", 10))
        key = (r["model"], width, nc)
        if key not in base_cache:
            base_cache[key] = {
                ep: model_cost(r["model"], "popcount", width, "1", nc, ep, timeout, log) for ep in ("threshold", "bn")
            }
        base = base_cache[key]["threshold"]["area_T"]
        is_base = is_popcount(r["voter"])
        c = base_cache[key]["threshold"] if is_base else model_cost(r["model"], r["voter"], width, tie, nc, "threshold", timeout, log)
        label = r.get("label") or str(r["voter"])
        if r.get("variant"):
            label += f" ({r['variant']})"
        out.append({
            "model": r["model"], "voter": str(r["voter"]), "label": label, "width": width,
            "top1": float(r["top1"]), "top5": (float(r["top5"]) if r.get("top5") is not None else None),
            "area_T": c["area_T"], "xnor_T": c["xnor_T"], "depth_cmos": c["depth_cmos"],
            "vs_baseline": c["area_T"] / base - 1.0, "baseline": is_base,
            "bn_area_T": base_cache[key]["bn"]["area_T"] if is_base else None,
        })
    return out


def _pareto(rows: List[dict]) -> List[dict]:
    """Per (model, width): rows not beaten on both area (lower) and top-1 (higher)."""
    front = []
    for key in sorted({(r["model"], r["width"]) for r in rows}):
        best = None
        for r in sorted((r for r in rows if (r["model"], r["width"]) == key), key=lambda r: (r["area_T"], -r["top1"])):
            if best is None or r["top1"] > best:
                front.append(r)
                best = r["top1"]
    return front


pareto = _pareto


def format_report(rep: List[dict]) -> str:
    """A markdown table (areas in millions of transistors per image, from Yosys synthesis of each unit)."""
    front = {id(r) for r in _pareto(rep)}
    lines = ["| model | width | voter | top-1 | top-5 | voter area (M T) | vs popcount+thr | depth (cmos) | + XNOR array (M T) | Pareto |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|:-:|"]
    for r in sorted(rep, key=lambda r: (r["model"], r["width"], r["area_T"])):
        t5 = f"{r['top5']:.2f}" if r["top5"] is not None else "—"
        label = f"**{r['label']}** (baseline)" if r["baseline"] else r["label"]
        lines.append(f"| {r['model']} | {r['width']:g} | {label} | {r['top1']:.2f} | {t5} | {r['area_T'] / 1e6:,.1f} | "
                     f"{100 * r['vs_baseline']:+.1f} % | {r['depth_cmos']} | {(r['area_T'] + r['xnor_T']) / 1e6:,.1f} | "
                     f"{'*' if id(r) in front else ''} |")
        if r["baseline"] and r["bn_area_T"]:
            lines.append(f"| {r['model']} | {r['width']:g} | popcount + unfolded BN (baseline) | {r['top1']:.2f} | {t5} | "
                         f"{r['bn_area_T'] / 1e6:,.1f} | {100 * (r['bn_area_T'] / r['area_T'] - 1):+.1f} % | | "
                         f"{(r['bn_area_T'] + r['xnor_T']) / 1e6:,.1f} | |")
    return "\n".join(lines)


def plot_report(rep: List[dict], path, area_source: str = "synthesized (yosys)") -> Tuple[bool, str]:
    """Accuracy vs voter area, Pareto front drawn, baselines marked. ``(ok, note)``.

    ``area_source`` names where the areas came from, on the x axis."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False, "no plot: matplotlib is not installed (pip install 'bitvote[plot]'); the table above is complete"
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    groups = sorted({(r["model"], r["width"]) for r in rep})
    color = {g: plt.cm.tab10(i % 10) for i, g in enumerate(groups)}
    front = _pareto(rep)
    for g in groups:
        f = [r for r in front if (r["model"], r["width"]) == g]
        ax.plot([r["area_T"] / 1e6 for r in f], [r["top1"] for r in f], "--", lw=1, color=color[g],
                label=f"{g[0]} x{g[1]:g}: Pareto front")
    # rows of one area (a design retrained several ways, its variants): label the best, ring the others
    same = {}
    for r in rep:
        if not r["baseline"]:
            same.setdefault((r["model"], r["width"], r["area_T"]), []).append(r)
    shown = {id(max(rs, key=lambda r: r["top1"])): len(rs) - 1 for rs in same.values()}
    for r in rep:
        x, c = r["area_T"] / 1e6, color[(r["model"], r["width"])]
        if not r["baseline"] and id(r) not in shown:
            ax.scatter([x], [r["top1"]], marker="o", s=14, facecolors="none", edgecolors=c, zorder=2)
        elif r["baseline"]:
            ax.scatter([x], [r["top1"]], marker="s", s=60, color=c, edgecolors="black", zorder=3)
            ax.annotate(f"{r['label']}: popcount + threshold", (x, r["top1"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=7)
            if r["bn_area_T"]:
                xb = r["bn_area_T"] / 1e6
                ax.scatter([xb], [r["top1"]], marker="D", s=45, facecolors="none", edgecolors=c, zorder=3)
                ax.annotate(f"{r['label']}: popcount + BN", (xb, r["top1"]), textcoords="offset points",
                            xytext=(-5, -11), fontsize=7, ha="right")
        else:
            more = shown[id(r)]
            ax.scatter([x], [r["top1"]], marker="o", s=40, color=c, zorder=3)
            ax.annotate(r["label"] + (f" (best of {more + 1} rows)" if more else ""), (x, r["top1"]),
                        textcoords="offset points", xytext=(5, -3), fontsize=7)
    models_ = sorted({f"{r['model']} x{r['width']:g}" for r in rep})
    ax.set_xlabel(f"voter / popcount area per image (million transistors, {area_source})\n"
                  "squares: popcount + threshold baseline, diamonds: popcount + unfolded BN, dots: voters\n"
                  "(small rings: other rows of the same area, e.g. other recipes)", fontsize=8)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Accuracy vs voter area: " + ", ".join(models_), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True, f"plot written to {path}"
