"""Lint generated Verilog: ``verilator --lint-only -Wall`` when installed, else ``iverilog -Wall``.

One file holds several modules by design, so Verilator's DECLFILENAME is off.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List, Tuple

from .check import require_tool

__all__ = ["lint"]


def lint(path) -> Tuple[str, List[str]]:
    """``(tool, warnings)`` for the Verilog file ``path``; no warnings means clean."""
    path = Path(path)
    if shutil.which("verilator"):
        r = subprocess.run(["verilator", "--lint-only", "-Wall", "-Wno-DECLFILENAME", str(path)],
                           capture_output=True, text=True)
        msgs = [l for l in (r.stderr + r.stdout).splitlines() if l.startswith("%")]
        return "verilator", msgs
    iv = require_tool("iverilog")
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([iv, "-Wall", "-g2005", "-o", str(Path(tmp) / "a.out"), str(path)],
                           capture_output=True, text=True)
    msgs = [l for l in (r.stderr + r.stdout).splitlines() if l.strip()]
    return "iverilog", msgs
