"""C libraries compiled at first use and cached: the packed engine's kernels and the voter
training kernels.

The system C compiler (``$CC``, else ``cc`` / ``gcc`` / ``clang``) builds the sources once per
content, flag set and compiler version (all three are in the file name), into a folder under
:func:`bitvote.io.cache_root`. Flag sets are tried in order (with OpenMP first, then without),
so a compiler without OpenMP still gives a working single-threaded library.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence, Tuple

from .errors import BitvoteError

__all__ = ["compiler", "build", "arch_flags", "cpu_flags", "unavailable"]


def unavailable(what: str, err: BaseException, instead: str) -> str:
    """Say once, in one line on stderr, that a fast path is off for this process and what runs
    instead; returns the reason (the error's first line) for the caller to keep."""
    why = f"{type(err).__name__}: {err}".splitlines()[0][:200]
    print(f"bitvote: {what} unavailable ({why}); using {instead} (slower)", file=sys.stderr)
    return why


def cpu_flags() -> set:
    """The x86 feature flags of this CPU as /proc/cpuinfo names them (empty elsewhere)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return set()
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def arch_flags():
    """AVX2/FMA where this CPU has them, for the libraries built for this machine only (the
    flags are part of the cache key)."""
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= cpu_flags() else []


def compiler(what: str) -> str:
    """The C compiler to use, or one clear error naming what needed it."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise BitvoteError(f"no C compiler found for {what}: install gcc or clang (e.g. `apt-get install gcc`) "
                           "or set CC")
    return cc


def build(units: Sequence[Path], flag_sets: Sequence[Sequence[str]], name: str, folder: Path, what: str,
          headers: Sequence[Path] = ()) -> Tuple[Path, Sequence[str]]:
    """``(path, flags)`` of the cached shared library of ``units`` (``folder/NAME_KEY.so``),
    compiled when missing with the first flag set that works; ``headers`` count in the key but
    are not compiled."""
    cc = compiler(what)
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    except OSError as e:
        raise BitvoteError(f"C compiler {cc!r} does not run: {e}") from None
    src = b"".join(Path(p).read_bytes() for p in (*units, *headers))
    folder.mkdir(parents=True, exist_ok=True)
    err = None
    for flags in flag_sets:
        key = hashlib.sha256(src + " ".join(flags).encode() + version.encode()).hexdigest()[:16]
        so = folder / f"{name}_{key}.so"
        if so.exists():
            return so, flags
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            tmp_so = Path(tmp) / so.name
            res = subprocess.run([cc, *flags, *(str(u) for u in units), "-o", str(tmp_so), "-lm"],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                err = res.stderr.strip() or f"{cc} failed"
                continue
            os.replace(tmp_so, so)  # atomic: a concurrent process sees no half-written file
        return so, flags
    raise BitvoteError(f"compiling {what} with {cc!r} failed: {str(err).splitlines()[0]}")
