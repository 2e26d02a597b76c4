"""Retraining recipes: how a converted model is trained back through its voter.

A recipe is ``+``-joined atoms, each one change to the plain recipe (ApproxSign, the preset's
sigma, cross-entropy, the preset's retraining epochs):

| atom | what it changes |
|---|---|
| ``plain`` | nothing |
| ``recal`` | BN re-estimated on the preset's recalibration images before the first step (and at every stage) |
| ``kd`` | distillation from the popcount parent itself (the baseline being converted: no extra training) |
| ``leafsigma=F`` | the leaf level's surrogate width x F (sigma rule ``BASE,leaf=F``); flat MV unchanged |
| ``flat`` | a hierarchy's backward is one MV's over all its terms (sigma rule ``BASE,flat``), its forward the exact tree |
| ``prog`` / ``prog=V1/V2`` | train through ``mv`` (or V1, V2, ...) before the target voter, equal shares of the steps |
| ``layers`` | convert layer group by layer group (``layer1``, then ``layer1``+``layer2``, ...), equal shares |
| ``plateau=P`` | stop early when the train loss has not fallen for P epochs |
| ``long=X`` | X times the retraining epochs (a budget, not a change at equal budget) |

:func:`recipe_options` turns one into :class:`~bitvote.train.TrainConfig` options for a row.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from ..errors import BitvoteError

__all__ = ["ATOMS", "parse_recipe", "recipe_options", "recipe_slug"]

ATOMS = ("plain", "recal", "kd", "leafsigma", "flat", "prog", "layers", "plateau", "long")


def parse_recipe(text: str) -> List[Tuple[str, str]]:
    """``"recal+leafsigma=2"`` -> ``[("recal", ""), ("leafsigma", "2")]``; one-line errors."""
    text = str(text).strip().lower()
    if not text:
        raise BitvoteError("--recipe: empty recipe (use plain)")
    atoms = []
    for part in text.split("+"):
        name, eq, val = (t.strip() for t in part.partition("="))
        if name not in ATOMS:
            raise BitvoteError(f"--recipe {text!r}: unknown part {name!r}: use {', '.join(ATOMS)} joined by '+'")
        needs = name in ("leafsigma", "plateau", "long")
        if needs and not val:
            raise BitvoteError(f"--recipe {text!r}: {name} needs a value, e.g. {name}=2")
        if eq and not val or (val and name not in ("leafsigma", "plateau", "long", "prog")):
            raise BitvoteError(f"--recipe {text!r}: {name} takes no value")
        if name in ("leafsigma", "long"):
            try:
                ok = 0 < float(val) < float("inf")
            except ValueError:
                ok = False
            if not ok:
                raise BitvoteError(f"--recipe {text!r}: {name}={val} must be a positive number")
        if name == "plateau" and not (val.isdigit() and int(val) >= 1):
            raise BitvoteError(f"--recipe {text!r}: plateau={val} must be a whole number of epochs >= 1")
        if any(a[0] == name for a in atoms):
            raise BitvoteError(f"--recipe {text!r}: {name} is given twice")
        atoms.append((name, val))
    if len(atoms) > 1 and any(a[0] == "plain" for a in atoms):
        raise BitvoteError(f"--recipe {text!r}: plain combines with nothing")
    if sum(a[0] in ("prog", "layers") for a in atoms) > 1:
        raise BitvoteError(f"--recipe {text!r}: prog and layers are two schedules: choose one")
    return atoms


def recipe_slug(text: str) -> str:
    """A folder- and key-safe name: ``recal+leafsigma=2`` -> ``recal_leafsigma2``."""
    return "_".join(n + "".join(c if c.isalnum() else "p" if c == "." else "" for c in v)
                    for n, v in parse_recipe(text))


def recipe_options(text: str, p: dict, spec) -> Tuple[Dict, int]:
    """``(TrainConfig options, retraining epochs)`` of recipe ``text`` for a row whose target
    voter is ``spec``, under preset values ``p`` (``sigma``, ``recalibrate``, ``retrain_epochs``)."""
    opts: Dict = {"sigma": p["sigma"]}
    epochs = int(p["retrain_epochs"])
    flat = False
    for name, val in parse_recipe(text):
        if name == "recal":
            opts["recalibrate_bn"] = int(p["recalibrate"])
        elif name == "kd":
            opts["self_distill"] = True
        elif name == "leafsigma":
            opts["sigma"] = f"{p['sigma']},leaf={float(val):g}"
        elif name == "flat":
            flat = True
        elif name == "prog":
            chain = [v for v in val.split("/") if v] if val else ["mv"]
            if isinstance(spec, str) and spec.strip().lower() == chain[-1]:
                chain = chain[:-1]  # mv before mv: nothing to go through
            if chain:
                opts["progressive"] = ";".join(chain)
        elif name == "layers":
            opts["progressive"] = "layers"
        elif name == "plateau":
            opts["patience"] = int(val)
        elif name == "long":
            epochs = max(1, round(epochs * float(val)))
    if flat:
        opts["sigma"] = f"{opts['sigma']},flat"
    return opts, epochs
