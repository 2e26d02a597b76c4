"""``bitvote frontier``: accuracy against voter area over every row of reproduce / search runs.

Reads ``results.json`` / ``ablation.json`` files (``bitvote reproduce``, ``bitvote search``,
any list of rows with ``model``, ``voter``, ``top1``), prices each row's voter with
:mod:`bitvote.hw.cost` (synthesis when Yosys is there, else the unit-count model, said in the
table) and writes ``OUT/frontier.md`` (top-1, top-5, voter area and depth, both against the
row's popcount baseline, the Pareto front marked), ``OUT/frontier.json`` and
``OUT/frontier.png`` (the Pareto plot, with matplotlib).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence

from ..errors import BitvoteError
from ..io import atomic_write_bytes
from ..voter import is_popcount
from .cost import model_area, resolve_source
from .report import load_results, pareto as pareto_front, plot_report

__all__ = ["MODES", "frontier_rows", "format_frontier", "frontier"]

MODES = ("baseline", "converted", "recalibrated", "retrained")


def frontier_rows(rows: List[dict], source: str = "auto", modes: Sequence[str] = ("baseline", "retrained"),
                  timeout: Optional[float] = None, log=None) -> List[dict]:
    """Each kept row with ``area_T``, ``depth_cmos``, ``vs_baseline`` (area) and ``dtop1``."""
    src = resolve_source(source)
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise BitvoteError(f"--modes {','.join(bad)}: choose from {', '.join(MODES)} (or all)")
    cache: dict = {}
    costs: dict = {}
    out, seen = [], set()
    for r in rows:
        mode = r.get("mode") or r.get("variant") or ("baseline" if is_popcount(r["voter"]) else "retrained")
        if mode not in modes or r.get("top1") is None:
            continue
        width = float(r.get("width", 1.0))
        tie = str(r.get("tie") or ("1" if is_popcount(r["voter"]) else "first"))
        nc = int(r.get("num_classes", 10))
        voter = r["voter"]
        from ..models import parse_voter_map

        parsed = parse_voter_map(voter) if isinstance(voter, str) else voter
        key = (r["model"], width, str(voter), tie, nc)
        if key not in costs:
            costs[key] = model_area(r["model"], parsed, width, tie, nc, src, cache, timeout)
            if log:
                log(f"priced {r['model']} x{width:g} {str(voter)[:60]}")
        c = costs[key]
        label = r.get("label") or str(voter)
        if mode != "baseline":
            label += f" ({mode})"
        if r.get("recipe") not in (None, "plain") and r.get("recipe") not in label:
            label += f" [{r['recipe']}]"
        ident = (r["model"], width, label, round(float(r["top1"]), 4))
        if ident in seen:  # the same baseline from several files
            continue
        seen.add(ident)
        out.append({"model": r["model"], "width": width, "voter": str(voter), "label": label, "mode": mode,
                    "top1": float(r["top1"]), "top5": None if r.get("top5") is None else float(r["top5"]),
                    "area_T": c["area_T"], "baseline_T": c["baseline_T"], "vs_baseline": c["fraction"] - 1.0,
                    "depth_cmos": c["depth_cmos"], "source": src, "baseline": mode == "baseline",
                    "bn_area_T": None, "results": r.get("source"), "stopped": r.get("stopped"),
                    "epochs": r.get("epochs_run", r.get("epochs"))})
    if not out:
        raise BitvoteError(f"no row of mode {', '.join(modes)} with an accuracy in the results given")
    for r in out:  # the top-1 gap to the popcount baseline of the same model, width (and file, if it has one)
        bases = [b for b in out if b["baseline"] and (b["model"], b["width"]) == (r["model"], r["width"])]
        mine = [b for b in bases if b["results"] == r["results"]] or bases
        r["dtop1"] = None if not mine else r["top1"] - mine[0]["top1"]
        base_depth = [b["depth_cmos"] for b in mine]
        r["depth_vs_baseline"] = None if not base_depth else r["depth_cmos"] - base_depth[0]
    return out


def area_source_text(source: str) -> str:
    """Where a row's areas come from, as the table and the plot say it."""
    return "synthesized (yosys)" if source == "synth" else "unit-count model (no synthesis)"


def format_frontier(rows: List[dict]) -> str:
    front = {id(r) for r in pareto_front(rows)}
    what = area_source_text(rows[0]["source"])
    lines = [f"Voter area and depth: {what}; voter/popcount epilogue per image, XNOR array excluded.", "",
             "| model | width | row | top-1 | vs baseline | top-5 | voter area (M T) | vs popcount+thr | depth | "
             "depth vs baseline | Pareto |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|:-:|"]
    for r in sorted(rows, key=lambda r: (r["model"], r["width"], r["area_T"], -r["top1"])):
        t5 = "—" if r["top5"] is None else f"{r['top5']:.2f}"
        d = "" if r["dtop1"] is None else f"{r['dtop1']:+.2f}"
        dd = "" if r["depth_vs_baseline"] is None else f"{r['depth_vs_baseline']:+d}"
        label = f"**{r['label']}**" if r["baseline"] else r["label"]
        lines.append(f"| {r['model']} | {r['width']:g} | {label} | {r['top1']:.2f} | {d} | {t5} | "
                     f"{r['area_T'] / 1e6:,.2f} | {100 * r['vs_baseline']:+.1f} % | {r['depth_cmos']} | {dd} | "
                     f"{'*' if id(r) in front else ''} |")
    return "\n".join(lines)


def frontier(paths: Sequence, out, source: str = "auto", modes: Sequence[str] = ("baseline", "retrained"),
             timeout: Optional[float] = None, quiet: bool = False) -> dict:
    """Write ``OUT/frontier.md``, ``frontier.json``, ``frontier.png``; returns ``{"rows", "plot"}``."""
    import sys
    import time

    t0 = time.monotonic()
    log = None if quiet else (lambda m: print(f"bitvote frontier: {m}", file=sys.stderr, flush=True))
    rows = frontier_rows(load_results(paths), source, modes, timeout, log)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BitvoteError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    table = format_frontier(rows)
    atomic_write_bytes(out / "frontier.json", (json.dumps(rows, indent=1) + "\n").encode())
    ok, note = plot_report(rows, out / "frontier.png", area_source_text(rows[0]["source"]))
    wall = time.monotonic() - t0
    text = (f"# Accuracy vs voter area\n\nFrom {', '.join(map(str, paths))}.\n\n{table}\n\n"
            f"{'![Pareto plot](frontier.png)' if ok else note}\n\nPriced in {wall:.0f} s.\n")
    atomic_write_bytes(out / "frontier.md", text.encode())
    if not quiet:
        print(table)
        print(f"\n{out / 'frontier.md'}, {out / 'frontier.json'}" + (f", {out / 'frontier.png'}" if ok else f" ({note})"))
    return {"rows": rows, "plot": str(out / "frontier.png") if ok else None, "wall_s": wall}
