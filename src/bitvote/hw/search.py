"""``bitvote search``: one voter per layer under an area budget, from measured sensitivities.

Given a trained popcount checkpoint and a budget F (the model's voter area as a fraction of
its popcount + runtime-threshold area, :mod:`bitvote.hw.cost`):

1. **Sensitivity.** For every voter layer and candidate voter: that layer alone converted, BN
   re-estimated on ``recalibrate`` training images, top-1 on ``holdout`` other training
   images (the test split is kept for the final report, so the choice never sees it). The
   loss is measured against the popcount model recalibrated the same way.
2. **Choice.** Minimize the sum of the layers' losses subject to the summed area <= F x
   baseline: an exact multiple-choice knapsack over areas rounded up to 1/``resolution`` of
   the baseline (so the chosen mapping never exceeds the budget). Losses are taken as
   additive, which they are not exactly; the converted and retrained accuracy of the whole
   mapping is measured afterwards.
3. **Result.** ``OUT/mapping.json`` (the per-layer voters: ``--voter-map`` reads it),
   ``OUT/search.md`` (the sensitivity table and the choice), ``OUT/results.json`` (rows in
   ``bitvote reproduce``'s form: the baseline, the mapping converted + BN recalibrated, and
   retrained when asked) that ``bitvote frontier`` reads.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

from .. import data as D
from ..errors import BitvoteError
from ..io import atomic_write_bytes, hold_folder
from .cost import layer_areas, model_area, resolve_source

__all__ = ["check_budget", "choose", "sensitivities", "search"]


def check_budget(areas: Dict[str, Dict[str, dict]], budget_T: float, scale_T: float) -> None:
    """A one-line error when even the cheapest candidate at every layer exceeds the budget."""
    cheapest = sum(min(a["area_T"] for a in d.values()) for d in areas.values())
    if cheapest > budget_T:
        raise BitvoteError(f"budget {budget_T / scale_T:.3f} of the baseline area is below the cheapest mapping "
                           f"of these candidates ({cheapest / scale_T:.3f}): raise --budget or add cheaper candidates")


def choose(areas: Dict[str, Dict[str, dict]], losses: Dict[str, Dict[str, float]], budget_T: float,
           resolution: int = 2000, scale_T: Optional[float] = None) -> Dict[str, str]:
    """The per-layer choice of least summed loss whose summed area is at most ``budget_T``.

    ``areas[layer][spec]["area_T"]`` and ``losses[layer][spec]`` (points of top-1 lost; the
    popcount option has loss 0). A dynamic programme over areas rounded to steps of
    ``scale_T / resolution``; each step keeps the partial choices that no other beats in both
    loss and exact area, so rounding never loses a feasible or a better choice, and the
    result fits the budget in exact areas. Raises a one-line error when even the cheapest
    voter everywhere does not fit.
    """
    layers = list(areas)
    scale_T = scale_T or sum(a["popcount"]["area_T"] for a in areas.values())
    step = scale_T / resolution
    check_budget(areas, budget_T, scale_T)
    limit = budget_T + 1e-9 * max(1.0, scale_T)
    cap = int(math.floor(limit / step)) + 1
    # fronts[c]: non-dominated (loss, exact area, choices) whose area rounds down to step c
    fronts: Dict[int, list] = {0: [(0.0, 0.0, ())]}
    for n in layers:
        opts = [(s, float(a["area_T"]), float(losses[n].get(s, 0.0)))
                for s, a in areas[n].items() if s == "popcount" or s in losses[n]]
        nxt: Dict[int, list] = {}
        for front in fronts.values():
            for lc, ac, ch in front:
                for s, area, loss in opts:
                    a = ac + area
                    if a > limit:
                        continue
                    nxt.setdefault(min(cap, int(a / step)), []).append((lc + loss, a, ch + (s,)))
        fronts = {c: _pareto(states) for c, states in nxt.items()}
    done = [st for front in fronts.values() for st in front]
    if not done:  # the cheapest areas belong to candidates without a measured loss
        raise BitvoteError(f"budget {budget_T / scale_T:.3f} is below the cheapest measured mapping: raise --budget")
    loss, _, ch = min(done, key=lambda t: (t[0], t[1]))
    return dict(zip(layers, ch))


def _pareto(states: list) -> list:
    """The states no other beats in both loss and area (ties: the first kept)."""
    out, best_area = [], float("inf")
    for st in sorted(states, key=lambda t: (t[0], t[1])):
        if st[1] < best_area - 1e-12:
            out.append(st)
            best_area = st[1]
    return out


def _accuracy(net, split: D.Split) -> float:
    from ..train import evaluate

    return evaluate(net, split)["top1"]


def sensitivities(net, candidates: Sequence[str], tie, recal: D.Split, holdout: D.Split, n_recal: int,
                  log=None) -> dict:
    """``{"reference": top-1, "top1": {layer: {spec: top-1}}}``: each layer converted alone."""
    import copy

    from ..models import set_voter, voter_layers
    from ..train.recalibrate import recalibrate_bn

    state = copy.deepcopy(net.state_dict())
    names = [n for n, _ in voter_layers(net)]
    recalibrate_bn(net, recal, n_recal)
    ref = _accuracy(net, holdout)
    out: Dict[str, Dict[str, float]] = {n: {} for n in names}
    for name in names:
        for spec in candidates:
            net.load_state_dict(state)
            try:
                set_voter(net, {name: spec}, tie)
            except BitvoteError:
                continue  # does not fit this layer
            recalibrate_bn(net, recal, n_recal)
            out[name][spec] = _accuracy(net, holdout)
            if log:
                log(f"{name} {spec}: top1 {out[name][spec]:.2f} (reference {ref:.2f})")
        set_voter(net, "popcount")
    net.load_state_dict(state)
    return {"reference": ref, "top1": out}


def _format(areas, sens, mapping, base_T) -> str:
    specs = list(dict.fromkeys(s for a in areas.values() for s in a))
    head = "| layer | " + " | ".join(f"`{s}` top-1 / area" for s in specs) + " | chosen |"
    lines = [head, "|---|" + "---:|" * len(specs) + "---|"]
    for n, a in areas.items():
        cells = []
        for s in specs:
            if s not in a:
                cells.append("—")
                continue
            acc = sens["reference"] if s == "popcount" else sens["top1"][n].get(s)
            cells.append(("—" if acc is None else f"{acc:.1f}") + f" / {100 * a[s]['area_T'] / base_T:.2f} %")
        lines.append(f"| {n} | " + " | ".join(cells) + f" | `{mapping[n]}` |")
    return "\n".join(lines)


def search(ckpt, budget: float, data=None, out="runs/search", candidates: Optional[Sequence[str]] = None,
           tie="first", holdout: int = 500, recalibrate: int = 1000, cost: str = "auto", retrain_epochs: int = 0,
           retrain_lr: float = 1e-3, recipe: str = "plain", device="cpu", threads=None, download=True,
           test_subset: Optional[int] = None, batch_size: int = 128, timeout: Optional[float] = None,
           quiet: bool = False, subset: Optional[int] = None) -> dict:
    """Run the search (see the module docstring); returns what ``OUT/mapping.json`` holds.

    ``subset``/``test_subset``: the retraining's training subset and the report's test images,
    as ``bitvote reproduce`` draws them (seed 0), so a searched row compares with its rows.
    """
    import torch

    from ..models import voter_map_text
    from ..train import TrainConfig, evaluate, load_for_evaluation, train
    from ..train.convert import convert_model, recalibrate_bn, resolved
    from ..experiments.recipes import recipe_options

    def log(msg):
        if not quiet:
            print(f"bitvote search: {msg}", file=sys.stderr, flush=True)

    if not (isinstance(budget, (int, float)) and 0 < budget <= 1.0):
        raise BitvoteError(f"--budget must be a fraction of the baseline area in (0, 1], got {budget}")
    for k, v in (("holdout", holdout), ("recalibrate", recalibrate)):
        if v < 1:
            raise BitvoteError(f"--{k} must be at least 1, got {v}")
    if retrain_epochs < 0:
        raise BitvoteError(f"--retrain-epochs must be 0 (no retraining) or positive, got {retrain_epochs}")
    src = resolve_source(cost)
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    net, ck, dataset, test = load_for_evaluation(ckpt, data, device, test_subset, download)
    cfg = net.config
    from ..voter import is_popcount

    if not is_popcount(cfg["voter"]):
        raise BitvoteError(f"{ckpt} holds a {cfg['voter']!r} model: search starts from a popcount checkpoint")
    candidates = [c for c in dict.fromkeys(str(c).strip() for c in (candidates or ("mv", "tap", "tap,leaf=4"))) if c]
    for c in candidates:
        if is_popcount(c):
            raise BitvoteError("--candidates: popcount is always a candidate (the layer left as it is)")
    t0 = time.monotonic()
    with hold_folder(out, "bitvote search"):
        train_split = D.load(dataset, "train", data, device=test.x.device, download=download)
        if len(train_split) < 2:
            raise BitvoteError("search needs at least 2 training images (recalibration and held-out ones)")
        perm = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(1))
        n_hold = min(holdout, len(train_split) // 2)
        hold = D.Split(train_split.x[perm[:n_hold]], train_split.y[perm[:n_hold]], dataset, train_split.source)
        rest = D.Split(train_split.x[perm[n_hold:]], train_split.y[perm[n_hold:]], dataset, train_split.source)
        n_recal = min(recalibrate, len(rest))
        log(f"area from {'synthesis (yosys, cached)' if src == 'synth' else 'the unit-count model (no yosys)'}")
        cache: dict = {}
        areas = layer_areas(net, candidates, src, tie, cache, timeout)
        base_T = sum(a["popcount"]["area_T"] for a in areas.values())
        check_budget(areas, budget * base_T, base_T)  # before the measurements, which take a while
        sens = sensitivities(net, candidates, tie, rest, hold, n_recal, log)
        losses = {n: {s: sens["reference"] - acc for s, acc in d.items()} for n, d in sens["top1"].items()}
        mapping = choose(areas, losses, budget * base_T, scale_T=base_T)
        area = model_area(cfg["name"], mapping, cfg["width"], tie, cfg["num_classes"], src, cache, timeout)
        log(f"chosen mapping: {area['fraction']:.3f} of the baseline area (budget {budget:g})")

        rows = []
        common = dict(width=cfg["width"], dataset=dataset, data=test.source, subset=None, test_subset=test_subset,
                      preset="search", n=len(test), num_classes=cfg["num_classes"])
        ev = evaluate(net, test)
        rows.append(dict(common, model=cfg["name"], voter="popcount", resolved="popcount", mode="baseline",
                         variant="baseline", status="ok", top1=ev["top1"], top5=ev["top5"], label="popcount"))
        label = f"searched (budget {budget:g})"
        vtext = voter_map_text(mapping)
        convert_model(net, mapping, tie)
        recalibrate_bn(net, rest, n_recal)
        ev = evaluate(net, test)
        res_text = resolved(net)
        rows.append(dict(common, model=cfg["name"], voter=vtext, tie=str(tie), resolved=res_text, mode="recalibrated",
                         variant="recalibrated", status="ok", top1=ev["top1"], top5=ev["top5"], label=label,
                         recalibrate_images=n_recal))
        retrained = None
        if retrain_epochs:
            opts, epochs = recipe_options(recipe, {"sigma": "fanin", "recalibrate": n_recal,
                                                   "retrain_epochs": retrain_epochs}, mapping)
            log(f"retraining the mapping: {epochs} epochs, recipe {recipe}")
            res = train(TrainConfig(init=str(ckpt), voter=mapping, tie=str(tie), dataset=dataset, data=data,
                                    subset=subset, test_subset=test_subset, epochs=epochs, lr=retrain_lr, batch_size=batch_size,
                                    device=device, threads=threads, download=download, resume=True, quiet=quiet,
                                    out=str(out / "retrained"), surrogate="approxsign", **opts))
            retrained = res
            rows.append(dict(common, model=cfg["name"], voter=vtext, tie=str(tie), resolved=res_text,
                             mode="retrained", variant="retrained", status="ok", top1=res["top1"], top5=res["top5"],
                             label=label, epochs=epochs, recipe=recipe, epochs_run=res.get("epochs_run", epochs),
                             stopped=res.get("stopped", "budget"), checkpoint=res.get("best")))
        wall = time.monotonic() - t0
        for r in rows:
            r.update(area_T=area["area_T"] if r["mode"] != "baseline" else area["baseline_T"],
                     area_source=src, wall_s=wall)
        result = {"checkpoint": str(ckpt), "model": cfg["name"], "width": cfg["width"], "budget": budget,
                  "voter": mapping, "tie": str(tie), "candidates": candidates, "area_source": src,
                  "area_fraction": area["fraction"], "area_T": area["area_T"], "baseline_T": area["baseline_T"],
                  "reference_top1": sens["reference"], "sensitivity_top1": sens["top1"],
                  "layer_area_T": {n: {s: a["area_T"] for s, a in d.items()} for n, d in areas.items()},
                  "holdout_images": n_hold, "recalibrate_images": n_recal,
                  "top1": rows[-1]["top1"], "top5": rows[-1]["top5"], "wall_s": wall}
        atomic_write_bytes(out / "mapping.json", (json.dumps(result, indent=1) + "\n").encode())
        atomic_write_bytes(out / "results.json", (json.dumps(rows, indent=1) + "\n").encode())
        md = (f"# Per-layer voter search: {cfg['name']} width {cfg['width']:g}, budget {budget:g}\n\n"
              f"Area: {'synthesized (yosys)' if src == 'synth' else 'unit-count model (no synthesis)'}, voter/"
              f"popcount epilogue only. Sensitivity: each layer converted alone, BN re-estimated on {n_recal} "
              f"training images, top-1 on {n_hold} other training images (reference: popcount, recalibrated "
              f"the same way: {sens['reference']:.2f}). Choice: least summed top-1 loss under the budget "
              f"(knapsack).\n\n{_format(areas, sens, mapping, base_T)}\n\n"
              f"Chosen: {area['fraction']:.3f} of the popcount + threshold area. On {len(test)} test images: "
              + ", ".join(f"{r['mode']} top-1 {r['top1']:.2f}" for r in rows) + f". Wall time {wall / 60:.1f} min.\n")
        atomic_write_bytes(out / "search.md", md.encode())
    if retrained is not None:
        result["retrained"] = retrained
    return result
