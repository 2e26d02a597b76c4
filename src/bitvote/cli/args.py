"""Argument types that check a value once, at the boundary, before any work starts.

Every command's numbers, strings and paths go through one of these ``type=`` callables, so a
value that cannot be right (0 images, a nan tolerance, a batch of -3, an output file inside a
folder that does not exist) is one ``bitvote: error: argument --x: ...`` line and exit 2 from
argparse, and nothing has been read, computed or written yet. The library keeps its own checks
for callers that do not come through the CLI; these make the CLI's answer immediate and uniform.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

__all__ = ["positive_int", "nonneg_int", "seed", "positive_float", "nonneg_float", "fraction", "text",
           "input_file", "input_path", "output_file", "output_dir", "engine_data", "MAX_COUNT"]

#: the largest count any option takes (images, steps, epochs, vectors, terms): an int32
MAX_COUNT = 2**31 - 1

_Bad = argparse.ArgumentTypeError


def _int(s: str) -> int:
    try:
        v = int(str(s).strip(), 10)
    except ValueError:
        raise _Bad(f"must be a whole number, got {s!r}") from None
    return v


def _ranged_int(s: str, lo: int, what: str) -> int:
    v = _int(s)
    if v < lo:
        raise _Bad(f"must be {what}, got {v}")
    if v > MAX_COUNT:
        raise _Bad(f"{s} is too large (at most {MAX_COUNT})")
    return v


def positive_int(s: str) -> int:
    """A count of at least 1 (images, epochs, batch size, threads, vectors, ...)."""
    return _ranged_int(s, 1, "at least 1")


def nonneg_int(s: str) -> int:
    """A count where 0 means "off" or "all"."""
    return _ranged_int(s, 0, "0 or more")


def count(hi: int, lo: int = 1):
    """A count in ``lo .. hi``: for options where a huge value is not a request but a mistake
    that would hang the machine (a million processes, a Verilog unit of a billion terms)."""

    def check(s: str) -> int:
        v = _int(s)
        if v < lo:
            raise _Bad(f"must be at least {lo}, got {v}")
        if v > hi:
            raise _Bad(f"must be at most {hi}, got {s}")
        return v

    check.lo, check.hi = lo, hi
    check.__name__ = f"count_{lo}_to_{hi}"
    return check


def positive_float_upto(hi: float):
    """A finite number in (0, hi]."""

    def check(s: str) -> float:
        what = f"a positive number up to {hi:g}"
        v = _float(s, what)
        if not 0 < v <= hi:
            raise _Bad(f"must be {what}, got {s}")
        return v

    check.hi = hi
    check.__name__ = f"positive_float_upto_{hi:g}"
    return check


#: bounds shared by several commands
threads = count(1024)
width = positive_float_upto(16.0)
kernel = count(32)
#: terms of one hardware unit (a layer of 4096 channels x 4 x 4) and of one voter spec
hw_terms = count(1 << 16)
spec_terms = count(1 << 20)
#: synthetic images of run / verify
MAX_SYNTHETIC = 1 << 16


def seed(s: str) -> int:
    """A random seed: 0 .. 2**32 - 1 (what every generator accepts)."""
    v = _int(s)
    if not 0 <= v < 2**32:
        raise _Bad(f"must be in 0 .. {2**32 - 1}, got {s}")
    return v


def _float(s: str, what: str = "a finite number") -> float:
    try:
        v = float(str(s).strip())
    except ValueError:
        raise _Bad(f"must be {what}, got {s!r}") from None
    if not math.isfinite(v):
        raise _Bad(f"must be {what}, got {s}")
    return v


def positive_float(s: str) -> float:
    """A finite number > 0 (seconds, a learning rate, a width)."""
    what = "a positive finite number"
    if not _float(s, what) > 0:
        raise _Bad(f"must be {what}, got {s}")
    return float(s)


def nonneg_float(s: str) -> float:
    """A finite number >= 0 (a tolerance, a decay, a clip factor; 0 often means off)."""
    what = "a finite number >= 0"
    if _float(s, what) < 0:
        raise _Bad(f"must be {what}, got {s}")
    return float(s)


def fraction(s: str) -> float:
    """A finite number in [0, 1) (label smoothing)."""
    what = "a number in [0, 1)"
    if not 0 <= _float(s, what) < 1:
        raise _Bad(f"must be {what}, got {s}")
    return float(s)


def text(s: str) -> str:
    """A name or spec: not empty, no NUL or line break (the error line must stay one line)."""
    if not str(s).strip():
        raise _Bad("must not be empty")
    if any(c in s for c in "\0\n\r"):
        raise _Bad(f"{s!r} holds a control character")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8 on the command line (surrogate-escaped)
        raise _Bad(f"{s!r} is not UTF-8 text") from None
    return s


def _path_text(s: str) -> str:
    if not str(s).strip():
        raise _Bad("the path is empty")
    if "\0" in s:
        raise _Bad(f"{s!r} holds a NUL byte")
    return s


def input_file(s: str) -> str:
    """An existing file to read."""
    p = Path(_path_text(s)).expanduser()
    if not p.exists():
        raise _Bad(f"{s} does not exist")
    if p.is_dir():
        raise _Bad(f"{s} is a folder, not a file")
    if not os.access(p, os.R_OK):
        raise _Bad(f"{s} is not readable")
    return s


def input_path(s: str) -> str:
    """An existing file or folder to read (a dataset source, say)."""
    p = Path(_path_text(s)).expanduser()
    if not p.exists():
        raise _Bad(f"{s} does not exist")
    if not os.access(p, os.R_OK):
        raise _Bad(f"{s} is not readable")
    return s


def _writable(folder: Path) -> bool:
    """Whether files can be created in ``folder``; a folder without any write bit counts as
    read-only even for root, who would otherwise write through it."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK) and bool(mode & 0o222)


def _nearest_existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def output_file(s: str) -> str:
    """A file to write: its folder exists and is writable, and no folder is in its place."""
    p = Path(_path_text(s)).expanduser()
    if str(s).endswith(("/", os.sep)) or p.is_dir():
        raise _Bad(f"{s} is a folder, not a file")
    if p.exists() and not p.is_file():  # a device or a pipe: the atomic rename would replace it
        raise _Bad(f"{s} is not a regular file")
    parent = p.absolute().parent
    if not parent.exists():
        raise _Bad(f"{s}: folder {parent} does not exist")
    if not parent.is_dir():
        raise _Bad(f"{s}: {parent} is a file, not a folder")
    if not _writable(parent):
        raise _Bad(f"{s}: folder {parent} is read-only")
    return s


def output_dir(s: str) -> str:
    """A folder to write into (created when missing): no file in its place or on its way, and
    the nearest existing folder above it is writable."""
    p = Path(_path_text(s)).expanduser()
    if p.exists() and not p.is_dir():
        raise _Bad(f"{s} is {'a file' if p.is_file() else 'not a folder'}, not a folder")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise _Bad(f"{s}: {base} is a file, not a folder")
    if not _writable(base):
        raise _Bad(f"{s}: {base} is read-only")
    return s


def engine_data(s: str) -> str:
    """``--data`` of run / verify: ``synthetic[:N]``, a ``.pt`` file, a dataset folder or a ``.bvd`` pack."""
    s = _path_text(s)
    if s.startswith(("synthetic", "random")):
        head, _, n = s.partition(":")
        if head not in ("synthetic", "random"):
            raise _Bad(f"{s!r}: write synthetic:N")
        if n and not 1 <= _int(n) <= MAX_SYNTHETIC:
            raise _Bad(f"synthetic:N needs 1 <= N <= {MAX_SYNTHETIC}, got {n}")
        return s
    p = Path(s).expanduser()
    if p.suffix in (".pt", ".pth"):
        return input_file(s)
    if not p.exists():
        raise _Bad(f"{s} does not exist (a .pt file of images, synthetic:N, a dataset folder or a .bvd pack)")
    if not p.is_dir() and p.suffix != ".bvd":
        raise _Bad(f"{s} is a file but neither a .pt file of images nor a .bvd pack")
    return s


def pad_value(s: str) -> float:
    """The padding of binary activations: 0 (abstain), 1 or -1."""
    v = _float(s)
    if v not in (0.0, 1.0, -1.0):
        raise _Bad(f"must be 0, 1 or -1, got {s}")
    return v


def device(s: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` (whether that device exists is checked when it is used)."""
    s = text(s)
    if s != "cpu" and not (s == "cuda" or (s.startswith("cuda:") and s[5:].isdigit())):
        raise _Bad(f"unknown device {s!r}: choose cpu, cuda or cuda:N")
    return s
