"""Build the C kernels at first use and load them with ctypes.

The shared library is compiled once with the system C compiler (``$CC``, else ``cc``/``gcc``)
and cached in ``$BITVOTE_CACHE/engine`` (default ``~/.cache/bitvote/engine``) under a name keyed by the
hash of the sources, the flags and the compiler's version, so an edit or a new compiler
rebuilds and nothing else does. No build step at install time: ``pip install`` stays pure
Python. OpenMP gives the threads; if the compiler lacks it, the kernels run single-threaded.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from .. import native
from ..errors import BitvoteError
from ..io import cache_root

__all__ = ["lib", "ISAS", "best_isa", "active_isa", "isa_id", "ConvArgs"]

_HERE = Path(__file__).parent
_SOURCES = ("kernels.c", "kbody.h", "pack.c", "isa.h")
_UNITS = ("kernels.c", "pack.c")  # compiled into one shared library
_FLAGS = ["-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math"]
#: ISA names in the order of the C enum; ``best_isa()`` says which this CPU runs.
ISAS = ("portable", "avx2", "avx512bw", "avx512popcnt")

_P = ctypes.c_void_p
_I = ctypes.c_int32


class ConvArgs(ctypes.Structure):
    """Mirror of ``bv_conv_t`` in kernels.c (same field order)."""

    _fields_ = [
        ("x", _P), ("N", _I), ("H", _I), ("W", _I), ("Wd", _I),
        ("w", _P), ("Co", _I), ("kh", _I), ("kw", _I), ("stride", _I), ("pad", _I), ("padmode", _I),
        ("Ho", _I), ("Wo", _I),
        ("padpix", _P),
        ("S", _I), ("masked", _I),
        ("seg_tap", _P), ("seg_word", _P), ("seg_mask", _P), ("seg_leaf", _P), ("seg_first", _P),
        ("L", _I), ("leaf_size", _P),
        ("voter", _I), ("nlev", _I), ("root_p", _I),
        ("lev_nodes", _P), ("lev_groups", _P), ("lev_tie", _P),
        ("outmode", _I), ("Wdo", _I), ("out", _P),
        ("a", _P), ("b", _P), ("thr", _P), ("dir", _P),
        ("nthreads", _I), ("kind", _I),
        ("post", _I), ("res", _P), ("si", _P), ("pw", _P), ("so", _P),
        ("wpc", _P), ("lsum", _P),
    ]


_LIB = None


def cache_dir() -> Path:
    """Where the compiled kernels are cached: ``engine`` under :func:`bitvote.io.cache_root`."""
    d = cache_root() / "engine"
    d.mkdir(parents=True, exist_ok=True)
    return d


def lib() -> ctypes.CDLL:
    """The loaded kernel library (compiled on first use, then cached on disk and in memory)."""
    global _LIB
    if _LIB is not None:
        return _LIB
    so, flags = native.build([_HERE / u for u in _UNITS], [_FLAGS + ["-fopenmp"], _FLAGS], "bitvote_kernels", cache_dir(),
                             "the engine kernels", headers=[_HERE / h for h in _SOURCES if h not in _UNITS])
    L = ctypes.CDLL(str(so))
    L.bv_conv.argtypes = [ctypes.POINTER(ConvArgs), ctypes.c_int]
    L.bv_conv.restype = ctypes.c_int
    L.bv_best_isa.restype = ctypes.c_int
    L.bv_struct_size.restype = ctypes.c_int
    L.bv_pack.argtypes = [_P, _I, _I, _I, _I, ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long,
                          _P, _P, _I, _I, _I]
    L.bv_pack.restype = ctypes.c_int
    L.bv_peak.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_int]
    L.bv_peak.restype = ctypes.c_double
    L.bv_int8_kind.restype = ctypes.c_int
    L.bv_set_kernel.argtypes = [ctypes.c_int]
    L.bv_set_kernel.restype = ctypes.c_int
    if L.bv_struct_size() != ctypes.sizeof(ConvArgs):  # pragma: no cover - a build mismatch
        raise RuntimeError("kernels.c and build.ConvArgs disagree on the argument struct")
    L.openmp = "-fopenmp" in flags
    L.path = str(so)
    _LIB = L
    return L


def best_isa() -> str:
    """The fastest kernel variant this CPU runs (what the engine uses unless told otherwise)."""
    return ISAS[lib().bv_best_isa()]


def active_isa() -> str:
    """The ISA the engine runs by default: ``$BITVOTE_ISA`` if set, else :func:`best_isa`."""
    i = isa_id(None)
    return best_isa() if i < 0 else ISAS[i]


_ISA_OK: dict = {}  # names already checked against this CPU -> index


def isa_id(isa) -> int:
    """``None``/"auto" -> -1 (best), else the index of a name in :data:`ISAS`."""
    if isa is None or isa == "auto":
        env = os.environ.get("BITVOTE_ISA")
        if not env:
            return -1
        isa = env
    i = _ISA_OK.get(isa)
    if i is not None:
        return i
    if isa not in ISAS:
        raise BitvoteError(f"unknown ISA {isa!r}: choose one of auto, {', '.join(ISAS)}")
    i = ISAS.index(isa)
    if i > lib().bv_best_isa():
        raise BitvoteError(f"ISA {isa!r} is not supported by this CPU (best: {best_isa()})")
    _ISA_OK[isa] = i
    return i
