"""Synthesize a design with Yosys, the way the synthesis anchors did, and cache the numbers.

The script is the one in ``notes/synthesis-anchors.md`` (so numbers compare): ``synth
-flatten``, then ABC twice from the same saved design: onto generic 2-input gates + MUX
(``cells``, ``depth_gates`` = ``ltp -noff``) and onto ABC's CMOS gate set (``transistors`` from
``stat -tech cmos``, ``depth_cmos``). Unit gates only: no cell library, wires, timing or power.

Results are cached as JSON under ``$BITVOTE_CACHE/hw`` (default ``~/.cache/bitvote/hw``),
keyed by a hash of the Verilog, the script and the Yosys version; Yosys is deterministic, so a
cached number is the number.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

from ..errors import BitvoteError
from ..io import cache_root
from .check import require_tool
from .design import Design
from .rtl import generate

__all__ = ["SCRIPT", "synth", "synth_verilog", "cache_dir", "yosys_version", "format_table"]

SCRIPT = """\
read_verilog {src}
synth -flatten -top {top}
design -save s
abc -g AND,NAND,OR,NOR,XOR,XNOR,ANDNOT,ORNOT,MUX
opt_clean -purge
tee -o {tag}_gates.stat stat
tee -o {tag}_gates.ltp ltp -noff
write_verilog -noattr {netlist}
design -load s
abc -g cmos
opt_clean -purge
tee -o {tag}_cmos.stat stat -tech cmos
tee -o {tag}_cmos.ltp ltp -noff
"""


def cache_dir() -> Path:
    """Where synthesis results and netlists are cached: ``hw`` under :func:`bitvote.io.cache_root`."""
    return cache_root() / "hw"


_VERSION = None


def yosys_version() -> str:
    global _VERSION
    if _VERSION is None:
        exe = require_tool("yosys")
        _VERSION = subprocess.run([exe, "-V"], capture_output=True, text=True).stdout.strip()
    return _VERSION


def _num(pattern: str, text: str, what: str, src: str) -> int:
    m = re.search(pattern, text)
    if not m:
        raise BitvoteError(f"could not read {what} from the Yosys output for {src}")
    return int(m.group(1))


def synth_verilog(verilog: str, top: str, timeout: Optional[float] = None, use_cache: bool = True) -> dict:
    """Synthesize ``verilog`` (top module ``top``); returns cells, transistors, depths, netlist path."""
    exe = require_tool("yosys")
    version = yosys_version()
    key = hashlib.sha256("\0".join([verilog, top, SCRIPT, version]).encode()).hexdigest()[:20]
    cdir = cache_dir()
    entry = cdir / f"{top}-{key}.json"
    netlist = cdir / f"{top}-{key}_gates.v"
    if use_cache and entry.exists() and netlist.exists():
        try:
            return dict(json.loads(entry.read_text()), cached=True)
        except (ValueError, TypeError):  # a damaged cache entry (not JSON, not an object): synthesize again
            pass
    cdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bitvote-synth-") as tmp:
        t = Path(tmp)
        (t / "design.v").write_text(verilog)
        (t / "run.ys").write_text(SCRIPT.format(src="design.v", top=top, tag="r", netlist="gates.v"))
        try:
            r = subprocess.run([exe, "-q", "-l", "yosys.log", "run.ys"], cwd=t, capture_output=True,
                               text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BitvoteError(f"yosys took longer than {timeout:.0f} s on {top}") from None
        if r.returncode:
            err = (r.stderr or r.stdout).strip().splitlines()
            raise BitvoteError(f"yosys failed on {top}: {err[-1] if err else 'no output'}")
        gs, gl = (t / "r_gates.stat").read_text(), (t / "r_gates.ltp").read_text()
        cs, cl = (t / "r_cmos.stat").read_text(), (t / "r_cmos.ltp").read_text()
        res = {
            "top": top,
            "cells": _num(r"Number of cells:\s+(\d+)", gs, "cells", top),
            "depth_gates": _num(r"length=(\d+)", gl, "depth", top),
            "cells_cmos": _num(r"Number of cells:\s+(\d+)", cs, "cells", top),
            "transistors": _num(r"Estimated number of transistors:\s+(\d+)", cs, "transistors", top),
            "depth_cmos": _num(r"length=(\d+)", cl, "depth", top),
            "yosys": version,
            "key": key,
        }
        netlist.write_text((t / "gates.v").read_text())
    tmp_entry = entry.with_suffix(".tmp")
    tmp_entry.write_text(json.dumps(res, indent=1))
    os.replace(tmp_entry, entry)  # atomic: a shared cache never holds half a file
    return dict(res, cached=False)


def synth(d: Design, timeout: Optional[float] = None, use_cache: bool = True) -> dict:
    """Synthesize design ``d``; adds its name, description and n to the numbers."""
    res = dict(synth_verilog(generate(d), d.name, timeout, use_cache))
    res.update(design=d.name, describe=d.describe(), n=d.n, spec=d.spec)
    return res


def netlist_path(res: dict) -> Path:
    """The cached gate netlist (generic gates) of a synthesis result, for ``hw check --netlist``."""
    return cache_dir() / f"{res['top']}-{res['key']}_gates.v"


def format_table(rows) -> str:
    """Markdown, one table per n; deltas against popcount + threshold of the same n if present."""
    out = []
    for n in sorted({r["n"] for r in rows}):
        rs = [r for r in rows if r["n"] == n]
        base = next((r for r in rs if r["design"].startswith("bv_pcthr_")), None)
        title = f"**n = {n}**"
        if base:
            title += f" (baseline popcount + runtime threshold: {base['transistors']} T, depth {base['depth_gates']}/{base['depth_cmos']})"
        xnor = next((r for r in rs if r["design"].startswith("bv_xnor_")), None)
        out += [title, "", "| design | what | cells | depth (gates) | est. transistors | depth (cmos) | T vs baseline | "
                "depth vs baseline | T with XNOR array | vs baseline |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rs:
            dt = dd = tx = dx = ""
            if base and r is not xnor:
                dt = f"{100 * (r['transistors'] / base['transistors'] - 1):+.0f} %"
                dd = f"{100 * (r['depth_cmos'] / base['depth_cmos'] - 1):+.0f} %"
                if xnor and r["design"].endswith("_noxnor"):
                    tx = r["transistors"] + xnor["transistors"]
                    dx = f"{100 * (tx / (base['transistors'] + xnor['transistors']) - 1):+.0f} %"
            what = r["describe"].split(", n = ")[0]
            out.append(f"| `{r['design']}` | {what} | {r['cells']} | {r['depth_gates']} | {r['transistors']} | "
                       f"{r['depth_cmos']} | {dt} | {dd} | {tx} | {dx} |")
        out.append("")
    return "\n".join(out)
