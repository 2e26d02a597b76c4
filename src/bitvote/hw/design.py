"""One output unit as a hardware design: which voter (or baseline) over how many terms.

A :class:`Design` is what ``hw rtl``, ``hw synth`` and ``hw check`` share. It holds the
resolved :class:`~bitvote.voter.Hierarchy` (the same object the layers use; ``None`` for
popcount) so the RTL is generated from, and checked against, ``bitvote.voter`` and nothing else.
:func:`design_for` builds one from a hierarchy a layer already resolved; :func:`make_design`
is the command line's entry, from spec text. Neither needs torch.

``epilogue`` says what follows a popcount (the two baselines): ``threshold`` compares the
count with a runtime threshold (BN and sign folded into an integer per output channel, as in
FINN), ``bn`` computes the unfolded ``gamma * cnt + beta >= 0`` with 16-bit gamma and 24-bit
beta. ``xnor=False`` drops the XNOR array (the design takes the XNOR outputs ``z``), which is
how the synthesis anchors separate voter area from the array; ``kind="xnor"`` is the array
alone.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Optional

from ..errors import BitvoteError
from ..voter.spec import Hierarchy, is_popcount, parse_spec, parse_tie, resolve

__all__ = ["Design", "make_design", "design_for", "EPILOGUES", "PADS", "GAMMA_BITS", "BETA_BITS"]

EPILOGUES = ("threshold", "bn")
PADS = ("zero", "+1", "-1")
GAMMA_BITS, BETA_BITS = 16, 24


@dataclass(frozen=True)
class Design:
    n: int
    k: int
    spec: str  # as the user wrote it (after {C} substitution)
    hier: Optional[Hierarchy]  # None: popcount baseline (or the bare XNOR array)
    pad: str = "+1"  # "zero" adds the per-term valid port
    epilogue: str = "threshold"  # popcount only
    xnor: bool = True
    kind: str = "voter"  # "voter", "popcount" or "xnor"

    @property
    def valid(self) -> bool:
        return self.pad == "zero"

    @property
    def name(self) -> str:
        """A Verilog-safe module name that says what the design is, e.g. ``bv_M9_M4_M128_``."""
        if self.kind == "xnor":
            base = f"xnor_{self.n}"
        elif self.kind == "popcount":
            base = f"pc{'thr' if self.epilogue == 'threshold' else 'bn'}_{self.n}"
        else:
            tag = re.sub(r"[^A-Za-z0-9]+", "_", self.hier.describe()).strip("_")
            ties = "_".join(t.rtl_name for t in self.hier.ties)
            base = f"{tag}_t{ties}"
        if self.valid and self.kind != "xnor":
            base += "_valid"
        if not self.xnor and self.kind != "xnor":
            base += "_noxnor"
        name = "bv_" + base
        if len(name) > 60:  # long uneven specs: keep names readable and unique
            name = name[:48] + "_" + hashlib.sha1(name.encode()).hexdigest()[:8]
        return name

    def describe(self) -> str:
        if self.kind == "xnor":
            return f"XNOR array, n = {self.n}"
        if self.kind == "popcount":
            what = "popcount + runtime threshold" if self.epilogue == "threshold" else \
                f"popcount + unfolded BN ({GAMMA_BITS}b gamma x cnt + {BETA_BITS}b beta >= 0)"
        else:
            h = self.hier
            tie = ",".join(map(str, h.ties))
            what = f"{'P' if h.root == 'P' else 'vote'} {h.describe()} (order {h.order}, tie {tie})"
        pad = "zero padding (valid port)" if self.valid else f"pad {self.pad} (no valid port)"
        arr = "with" if self.xnor else "without"
        return f"{what}, n = {self.n}, k = {self.k}, {pad}, {arr} XNOR array"


def make_design(n: int, voter="mv", k: int = 1, tie="1", pad: str = "+1", epilogue: str = "threshold",
                xnor: bool = True, kind: Optional[str] = None) -> Design:
    """Resolve ``voter`` for one output of ``n = C * k * k`` terms; one-line errors for bad input.

    ``{C}`` in the spec is replaced by ``n / k^2`` so one spec can be swept over widths
    (``cm:M{C}(M3(M3))``).
    """
    _check_shape(n, k, pad, epilogue)
    taps = k * k
    spec = str(voter).replace("{C}", str(n // taps))
    if kind == "xnor" or spec.strip().lower() == "xnor":
        return Design(n, k, "xnor", None, pad="+1", xnor=True, kind="xnor")
    vs = parse_spec(spec)
    hier = resolve(vs, n, taps, parse_tie(tie), layer=f"hw design (n = {n}, k = {k})")
    return design_for(hier, n, k, pad, epilogue, xnor, spec=vs.text)


def design_for(hier: Optional[Hierarchy], n: int, k: int = 1, pad: str = "+1", epilogue: str = "threshold",
               xnor: bool = True, spec: Optional[str] = None) -> Design:
    """The design of one output whose voter is the resolved ``hier`` (``None``: popcount).

    This is how a model's layers become designs: the hierarchy the layer resolved is used as
    it is, never written back to text and parsed again. ``spec`` is the text shown in reports
    (default: the hierarchy's canonical text).
    """
    _check_shape(n, k, pad, epilogue)
    if hier is not None and (not isinstance(hier, Hierarchy) or hier.n != n):
        raise BitvoteError(f"hw design: voter {hier} does not cover n = {n} terms")
    if spec is None:
        spec = "popcount" if hier is None else hier.describe()
    if hier is None:
        if not is_popcount(spec):
            raise BitvoteError(f"hw design: spec {spec!r} is not popcount but no hierarchy was given")
        return Design(n, k, spec, None, pad, epilogue, xnor, "popcount")
    return Design(n, k, spec, hier, pad, epilogue, xnor, "voter")


def _check_shape(n, k, pad, epilogue):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise BitvoteError(f"--n must be a positive integer, got {n!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise BitvoteError(f"--k must be a positive integer, got {k!r}")
    if n % (k * k):
        raise BitvoteError(f"--n {n} is not a multiple of k*k = {k * k} (C = n / k^2)")
    if pad not in PADS:
        raise BitvoteError(f"--pad {pad!r}: use zero, +1 or -1")
    if epilogue not in EPILOGUES:
        raise BitvoteError(f"--epilogue {epilogue!r}: use threshold or bn")
