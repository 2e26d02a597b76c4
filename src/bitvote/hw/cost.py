"""Voter area per layer and per model, from synthesis or, without Yosys, from a unit-count model.

The per-layer search and the frontier need the same number: a model's voter/popcount area
per image, ``sum over voter layers of outputs x transistors per one-output design`` (the
XNOR array is the same for every voter and left out), as a fraction of the popcount +
runtime-threshold baseline. ``source="synth"`` synthesizes each distinct design with
:func:`bitvote.hw.synth.synth` (cached, the numbers ``bitvote hw report`` prints);
``source="units"`` estimates it from the hierarchy's voters alone, so a search runs on a
machine without Yosys; ``"auto"`` picks synth when ``yosys`` is on the PATH. Every result
says which it used.

The unit-count model: a counter of f one-bit inputs is ~``f - bitlen(f)`` full adders (28 T
each); a voter compares the count with a constant (~12 T per bit; a voter of 4 or fewer inputs
is one gate, 6-20 T), a popcount or a ``P`` root with a runtime threshold register (~24 T per
bit). Depth: ~2 full-adder delays per halving of the inputs, plus the compare. It orders the
wide designs as synthesis does (popcount > mv > groups/tap; ``tests/test_frontier.py``) but
overestimates mid-size leaves (ReActNet-18 at width 1/8: ``tap,leaf=8`` 0.80 of popcount +
threshold against 0.57 synthesized), so a search or frontier meant for numbers uses synthesis.
"""

from __future__ import annotations

import math
import shutil
from typing import Dict, Optional

from .. import models
from ..errors import BitvoteError
from ..voter import is_popcount
from .units import layer_design, layer_units

__all__ = ["SOURCES", "resolve_source", "unit_estimate", "design_cost", "model_area", "layer_areas"]

SOURCES = ("auto", "synth", "units")


def resolve_source(source: str = "auto") -> str:
    """``synth`` or ``units`` (``auto``: synth where yosys is installed)."""
    if source not in SOURCES:
        raise BitvoteError(f"--cost {source!r}: choose auto, synth or units")
    if source == "auto":
        return "synth" if shutil.which("yosys") else "units"
    return source


def _counter(f: int) -> int:
    return 28 * max(f - f.bit_length(), 0)


def _voter_T(f: int, per_bit: int) -> int:
    if per_bit == 12 and f <= 4:  # a wire, a 2-input gate with its tie, majority-of-3 and -of-4 gates
        return (0, 0, 6, 12, 20)[f]
    return _counter(f) + per_bit * (f + 1).bit_length()


def unit_estimate(design) -> dict:
    """``{"transistors", "depth_cmos"}`` of a one-output design from the unit-count model."""
    if design.kind == "xnor":
        return {"transistors": 12 * design.n, "depth_cmos": 2}
    if design.hier is None:  # popcount + runtime threshold
        n = design.n
        return {"transistors": _counter(n) + 24 * (n + 1).bit_length(),
                "depth_cmos": 4 * max(1, math.ceil(math.log2(max(n, 2)))) + (n + 1).bit_length()}
    h = design.hier
    t = 0
    depth = 0
    for li, (count, fanins) in enumerate(h.voters_per_level()):  # root first
        counted = li == 0 and h.root == "P"
        per_bit = 24 if counted else 12
        t += sum(_voter_T(f, per_bit) for f in fanins)
        f = max(fanins)
        depth += 4 * max(1, math.ceil(math.log2(max(f, 2)))) + (f + 1).bit_length()
    return {"transistors": t, "depth_cmos": depth}


def design_cost(design, source: str, cache: Optional[Dict] = None, timeout: Optional[float] = None) -> dict:
    """Transistors and depth of one design (``source`` already resolved), memoized in ``cache``."""
    cache = {} if cache is None else cache
    key = (design.name, source)
    if key not in cache:
        if source == "synth":
            from .synth import synth

            r = synth(design, timeout)
            cache[key] = {"transistors": r["transistors"], "depth_cmos": r["depth_cmos"]}
        else:
            cache[key] = unit_estimate(design)
    return cache[key]


def layer_areas(model, candidates, source: str, tie="first", cache=None, timeout=None) -> Dict[str, Dict[str, dict]]:
    """``{layer: {spec: {"area_T", "depth_cmos"}}}`` for every voter layer and candidate
    (``popcount`` included): what each layer would cost with that voter alone.

    ``model`` is only measured (its shapes), never changed; a candidate that does not fit a
    layer (e.g. a leaf size that does not divide its channels) is left out for that layer.
    """
    import copy

    cache = {} if cache is None else cache
    net = copy.deepcopy(model)
    rows = {r["layer"]: r for r in layer_units(net)[0]}
    out: Dict[str, Dict[str, dict]] = {name: {} for name in rows}
    for spec in ["popcount", *[c for c in candidates if c != "popcount"]]:
        for name, layer in models.voter_layers(net):
            try:
                layer.set_voter(spec, tie if spec != "popcount" else None, name=name)
            except BitvoteError:
                continue
            c = design_cost(layer_design(layer), source, cache, timeout)
            out[name][spec] = {"area_T": rows[name]["outputs"] * c["transistors"], "depth_cmos": c["depth_cmos"]}
    return out


def model_area(model_name: str, voter, width: float = 1.0, tie="first", num_classes: int = 10,
               source: str = "auto", cache=None, timeout=None) -> dict:
    """Voter area and depth of a model with ``voter`` (a spec or a per-layer mapping), beside
    its popcount + threshold baseline: ``{"area_T", "baseline_T", "fraction", "depth_cmos", "source"}``."""
    src = resolve_source(source)
    cache = {} if cache is None else cache
    area = base = depth = 0
    for v, acc in ((voter, "area"), ("popcount", "base")):
        m = models.create(model_name, num_classes=num_classes, voter=v, width=width,
                          **({} if is_popcount(v) else {"tie": tie}))
        rows = {r["layer"]: r for r in layer_units(m)[0]}
        for name, layer in models.voter_layers(m):
            c = design_cost(layer_design(layer), src, cache, timeout)
            t = rows[name]["outputs"] * c["transistors"]
            if acc == "area":
                area += t
                depth = max(depth, c["depth_cmos"])
            else:
                base += t
    return {"area_T": area, "baseline_T": base, "fraction": area / base, "depth_cmos": depth, "source": src}
