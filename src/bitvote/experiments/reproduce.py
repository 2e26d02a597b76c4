"""``bitvote reproduce``: the seed's results table from one command, at any scale.

For each model: train the popcount baseline; then for each voter row convert it (evaluate),
convert and re-estimate BN (evaluate), and retrain through the voter with one budget for every
row (evaluate). Each finished stage is a small JSON file under ``DIR/stages`` (written
atomically) and is skipped on a re-run; training stages resume mid-stage from their
``last.pt``, so an interrupted reproduction continues where it stopped. The table, results
and plot are written by :mod:`bitvote.experiments.report`.

Ties: an MV row uses the SPEC default ``+1``; hierarchies use ``first``. With ``+1`` at every
level, deep hierarchies with small leaves vote nearly constant at conversion (ties compound
toward +1), BN then divides by a near-zero batch variance and retraining explodes;
``first`` is unbiased. ``tie=`` overrides it for every voter row.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .. import data as D
from ..errors import BitvoteError
from ..io import atomic_write_bytes, hold_folder
from ..voter import is_mv, is_popcount

__all__ = ["PRESETS", "VoterRow", "voter_rows", "reproduce", "Protocol"]

#: every preset: training scale, retraining budget (the same for every voter row) and the sweep
PRESETS: Dict[str, dict] = {
    # seconds on tiny data: what the test suite runs
    "smoke": dict(models=("reactnet18",), voters=("mv", "tap,leaf=4"), width=0.125, subset=None, test_subset=None,
                  batch_size=8, epochs=1, lr=2e-3, retrain_epochs=1, retrain_lr=1e-3, recalibrate=32,
                  pad_variant=True),
    # `bitvote demo`: ~10 CPU minutes, one MV row group and one HMV row group
    "demo": dict(models=("reactnet18",), voters=("mv", "tap"), width=0.25, subset=5000, test_subset=1000,
                 batch_size=128, epochs=4, lr=2e-3, retrain_epochs=1, retrain_lr=1e-3, recalibrate=1000,
                 pad_variant=False),
    # a few hours of a 2-core CPU on CIFAR-10 (measured: 3.0 h of stages, 1 shared thread);
    # every training stage under an hour (small-leaf hierarchies train at ~50 images/s on 2 cores)
    "cpu": dict(models=("reactnet18", "birealnet18"),
                voters=("mv", "groups=4", "tap", "tap,groups=4", "tap,leaf=4"),
                width=0.125, subset=10000, test_subset=2000, batch_size=128, epochs=15, lr=2e-3,
                retrain_epochs=2, retrain_lr=1e-3, recalibrate=1000, pad_variant=True),
    # paper scale, for a GPU (untested on one): full width and data; the seed's slides do not
    # state their epochs, 200 + 50 is a common CIFAR BNN schedule
    "full": dict(models=("reactnet18", "birealnet18"),
                 voters=("mv", "groups=4", "tap", "tap,groups=4", "tap,leaf=16"),
                 width=1.0, subset=None, test_subset=None, batch_size=128, epochs=200, lr=1e-3,
                 retrain_epochs=50, retrain_lr=5e-4, recalibrate=10000, pad_variant=True),
    # one GPU, a time budget: full width and data; the epochs come from a measured step time so
    # the whole protocol fits `minutes` (see plan_epochs). Untested on a GPU.
    "gpu1": dict(models=("reactnet18", "birealnet18"), voters=("mv", "tap"), width=1.0, subset=None,
                 test_subset=None, batch_size=256, epochs=None, lr=2e-3, retrain_epochs=None, retrain_lr=1e-3,
                 recalibrate=10000, pad_variant=False, minutes=10.0),
    # the accuracy-vs-area frontier at the cpu preset's scale: every design the hardware sweep
    # prices, retrained up to 6 epochs (until the train loss stops falling for 2) by the recipe
    # the ablation (`--table ablation`, the small-leaf row) measured best at equal time:
    # kd+flat (self-distillation, exact votes, one MV's backward; at equal epochs only the
    # chain rule's kd+leafsigma=2 is better, at 2.1x the time per epoch).
    # Every training stage stays under an hour on one CPU thread (docs/reproduce.md).
    "frontier-cpu": dict(models=("reactnet18", "birealnet18"),
                         voters=("mv", "groups=4", "tap", "tap,groups=4", "tap,leaf=4", "tap,leaf=8",
                                 "cm:M(M3(M3))", "cm:P(M3)"),
                         width=0.125, subset=10000, test_subset=2000, batch_size=128, epochs=15, lr=2e-3,
                         retrain_epochs=6, retrain_lr=1e-3, recalibrate=1000, pad_variant=True,
                         recipe="kd+flat+plateau=2", ablation_voters=("tap,leaf=4",), ablation_models=("reactnet18",)),
    # a credible scale on a CPU: width 1/2 on all of CIFAR-10. Measured on a 2-core AVX2 CPU:
    # one popcount epoch takes ~18 min on one thread (~9.5 min on two), so the 40-epoch
    # baseline is ~12 h of one thread per model: run it in slices (every stage resumes
    # mid-epoch), one process per model (`--models`, its own `--out`). Voters: MV, per-tap, and
    # the frontier's best area saver (cm:P(M3), -56 % area) beside its cheapest (tap,leaf=4)
    "mid": dict(models=("reactnet18", "birealnet18"), voters=("mv", "tap", "cm:P(M3)", "tap,leaf=4"), width=0.5, subset=None,
                test_subset=None, batch_size=128, epochs=40, lr=2e-3, retrain_epochs=5, retrain_lr=1e-3,
                recalibrate=10000, pad_variant=True, recipe="kd+flat+plateau=2"),
}

#: the recipes `--table ablation` compares (docs/reproduce.md, "Retraining recipes")
ABLATION_RECIPES = ("plain", "flat", "kd+flat", "recal+kd+flat", "leafsigma=2", "kd", "recal", "leafsigma=4", "prog",
                    "layers", "recal+kd+leafsigma=2", "flat+long=2.5", "kd+flat+long=2")

for _name, _p in PRESETS.items():
    _p.setdefault("minutes", None)  # a time budget replaces the epochs when given (plan_epochs)
    _p.setdefault("recipe", "plain")  # the retraining recipe of every voter row (experiments.recipes)
    _p.setdefault("ablation_recipes", ABLATION_RECIPES)
    _p.setdefault("ablation_voters", (_p["voters"][-1],))  # the cheapest design of the sweep
    _p.setdefault("ablation_models", _p["models"][:1])

#: the keys that decide what a stage computes: a folder holds one protocol
_PROTOCOL_KEYS = ("width", "subset", "test_subset", "batch_size", "epochs", "lr", "retrain_epochs", "retrain_lr",
                  "recalibrate", "dataset", "seed", "surrogate", "sigma")


@dataclass(frozen=True)
class VoterRow:
    """One voter row group: a spec, its tie, and the padding of its voter layers."""

    spec: str
    tie: str
    pad_value: Optional[float] = None

    @property
    def slug(self) -> str:
        """A folder name: ``tap_groups_4-tiefirst``, ``mv-tie1-pad1``."""
        s = "".join(c if c.isalnum() else "_" for c in self.spec)
        if len(s) > 48:  # a per-layer mapping: keep folder names short and distinct
            import hashlib

            s = s[:32] + "_" + hashlib.sha1(self.spec.encode()).hexdigest()[:10]
        s += "-tie" + "".join(c if c.isalnum() else "_" for c in str(self.tie).replace("-", "m"))
        if self.pad_value is not None:
            s += f"-pad{self.pad_value:+g}".replace("+", "p").replace("-", "m")
        return s

    @property
    def label(self) -> str:
        pad = "" if self.pad_value is None else f", pad {self.pad_value:+g}"
        name = self.spec
        if isinstance(self.voter, dict):  # the table shows the mapping whole; plots need a short name
            import hashlib

            name = f"per-layer {hashlib.sha1(self.spec.encode()).hexdigest()[:6]}"
        return f"{name} (tie {self.tie}{pad})"

    @property
    def voter(self):
        """The spec, or for a per-layer row (``PATTERN=SPEC;...``) its mapping."""
        from ..models import parse_voter_map

        return parse_voter_map(self.spec)

    def retrain_key(self, recipe: str) -> str:
        """Stage key and folder of this row retrained by ``recipe`` (``plain``: the historical names)."""
        from .recipes import recipe_slug

        return self.slug if recipe_slug(recipe) == "plain" else f"{self.slug}--{recipe_slug(recipe)}"


def voter_rows(specs: Sequence[str], tie: Optional[str] = None, pad_variant: bool = True) -> List[VoterRow]:
    """Row groups for ``specs``: ``mv`` gets tie +1 (and a pad +1 twin), hierarchies tie ``first``."""
    rows = []
    for spec in specs:
        spec = str(spec).strip()
        if not spec:
            continue
        if isinstance(_as_voter(spec), dict):  # a per-layer mapping: hierarchies, tie first
            rows.append(VoterRow(spec, str(tie if tie is not None else "first")))
            continue
        if is_popcount(spec):
            raise BitvoteError("--voters: popcount is the baseline, not a voter row")
        t = tie if tie is not None else ("1" if is_mv(spec) else "first")
        rows.append(VoterRow(spec, str(t)))
        if is_mv(spec) and pad_variant:
            rows.append(VoterRow(spec, str(t), 1.0))
    if not rows:
        raise BitvoteError("--voters: no voter given")
    return rows


def _as_voter(spec):
    from ..models import parse_voter_map

    return parse_voter_map(spec)


def _is_divergence(e: BitvoteError) -> bool:
    msg = str(e).lower()
    return "diverged" in msg or "nan" in msg or "not finite" in msg or "non-finite" in msg


class Protocol:
    """One reproduction folder: stage files, the splits, and the stage runners."""

    def __init__(self, out, params: dict, data=None, device="cpu", threads=None, download=True, quiet=False):
        self.out = Path(out)
        self.p = params
        self.data, self.device, self.threads, self.download, self.quiet = data, device, threads, download, quiet
        self._splits = {}

    # -- stage files ---------------------------------------------------------------------------
    def stage_path(self, model: str, key: str) -> Path:
        return self.out / "stages" / model / f"{key}.json"

    def done(self, model: str, key: str) -> Optional[dict]:
        p = self.stage_path(model, key)
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                return None  # cannot happen with atomic writes; recompute if it does
        return None

    def record(self, model: str, key: str, row: dict) -> dict:
        atomic_write_bytes(self.stage_path(model, key), (json.dumps(row, indent=1) + "\n").encode())
        return row

    def check_folder(self) -> None:
        """A folder holds one protocol: reusing stages of another scale would mix numbers."""
        mine = {k: self.p.get(k) for k in _PROTOCOL_KEYS}
        f = self.out / "protocol.json"
        if f.is_file():
            theirs = _read_json(f)
            diff = [k for k in _PROTOCOL_KEYS if theirs.get(k) != mine[k]]
            if diff:
                raise BitvoteError(f"--out {self.out} holds a reproduction with other settings "
                                   f"({', '.join(f'{k} {theirs.get(k)!r} != {mine[k]!r}' for k in diff)}): choose another --out")
        else:
            atomic_write_bytes(f, (json.dumps(mine, indent=1) + "\n").encode())

    # -- data ----------------------------------------------------------------------------------
    def split(self, name: str) -> D.Split:
        if name not in self._splits:
            s = D.load(self.p["dataset"], name, self.data, device=self.device, download=self.download)
            self._splits[name] = D.subset(s, self.p["test_subset"]) if name == "test" else s
        return self._splits[name]

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"bitvote reproduce: {msg}", file=sys.stderr, flush=True)

    # -- rows ----------------------------------------------------------------------------------
    def base_row(self, model: str, **kw) -> dict:
        p = self.p
        return {"model": model, "width": p["width"], "dataset": p["dataset"], "data": self.split("test").source,
                "subset": p["subset"], "test_subset": p["test_subset"], "preset": p["preset"], **kw}

    def train_stage(self, **kw) -> dict:
        """Train (or resume) one stage with the protocol's data, batch and seed; ``kw`` is the rest
        of its :class:`~bitvote.train.TrainConfig` (``out`` included)."""
        from ..train import TrainConfig, train

        cfg = TrainConfig(dataset=self.p["dataset"], data=self.data, subset=self.p["subset"],
                          test_subset=self.p["test_subset"], batch_size=self.p["batch_size"], seed=self.p["seed"],
                          device=self.device, threads=self.threads, download=self.download, resume=True,
                          quiet=self.quiet, **kw)
        cfg.eval_every = cfg.epochs  # test once, at the end: every row is measured the same way
        return train(cfg)

    def baseline(self, model: str) -> dict:
        got = self.done(model, "baseline")
        if got:
            return got
        self.log(f"{model}: training the popcount baseline ({self.p['epochs']} epochs)")
        res = self.train_stage(model=model, width=self.p["width"], epochs=self.p["epochs"], lr=self.p["lr"],
                          out=str(self.out / model / "baseline"))
        row = self.base_row(model, voter="popcount", resolved="popcount", mode="baseline",
                            variant="baseline", status="ok", top1=res["top1"], top5=res["top5"], n=res["n"],
                            epochs=self.p["epochs"], wall_s=res.get("wall_s"), checkpoint=res["best"])
        return self.record(model, "baseline", row)

    def converted(self, model: str, base: dict, vr: VoterRow) -> List[dict]:
        """The converted and the BN-recalibrated rows (one model load, two stage files)."""
        from ..train import evaluate, load_model
        from ..train.convert import convert_model, recalibrate_bn, resolved

        keys = (f"{vr.slug}.converted", f"{vr.slug}.recalibrated")
        got = [self.done(model, k) for k in keys]
        if all(got):
            return got
        net, _ = load_model(base["checkpoint"], self.device)
        convert_model(net, vr.voter, vr.tie, vr.pad_value)
        common = dict(voter=vr.spec, tie=vr.tie, pad_value=vr.pad_value, label=vr.label, resolved=resolved(net),
                      epochs=self.p["epochs"], status="ok")
        t = time.monotonic()
        ev = evaluate(net, self.split("test"))
        rows = [self.record(model, keys[0], self.base_row(model, **common, mode="converted", variant="converted",
                                                          top1=ev["top1"], top5=ev["top5"], n=ev["n"],
                                                          wall_s=time.monotonic() - t))]
        self.log(f"{model} {vr.label}: converted top1 {ev['top1']:.2f}")
        t = time.monotonic()
        recalibrate_bn(net, self.split("train"), self.p["recalibrate"], seed=self.p["seed"])
        ev = evaluate(net, self.split("test"))
        rows.append(self.record(model, keys[1], self.base_row(model, **common, mode="recalibrated",
                                                               variant="recalibrated", top1=ev["top1"], top5=ev["top5"],
                                                               n=ev["n"], recalibrate_images=self.p["recalibrate"],
                                                               wall_s=time.monotonic() - t)))
        self.log(f"{model} {vr.label}: + BN recalibration top1 {ev['top1']:.2f}")
        return rows

    def retrained(self, model: str, base: dict, vr: VoterRow, resolved_text: str, recipe: Optional[str] = None) -> dict:
        """The row retrained from the baseline by ``recipe`` (default: the preset's)."""
        from .recipes import recipe_options, recipe_slug

        recipe = recipe or self.p["recipe"]
        name = vr.retrain_key(recipe)
        key = f"{name}.retrained"
        got = self.done(model, key)
        if got:
            return got
        opts, epochs = recipe_options(recipe, self.p, vr.voter)
        self.log(f"{model} {vr.label}: retraining through the voter ({epochs} epochs, recipe {recipe})")
        label = vr.label if recipe_slug(recipe) == "plain" else f"{vr.label} [{recipe}]"
        common = dict(voter=vr.spec, tie=vr.tie, pad_value=vr.pad_value, label=label, resolved=resolved_text,
                      mode="retrained", variant="retrained", epochs=epochs, recipe=recipe,
                      surrogate=self.p["surrogate"], sigma=opts["sigma"])
        try:
            res = self.train_stage(init=base["checkpoint"], voter=vr.voter, tie=vr.tie, pad_value=vr.pad_value,
                                   surrogate=self.p["surrogate"], epochs=epochs, lr=self.p["retrain_lr"],
                                   out=str(self.out / model / name), **opts)
        except BitvoteError as e:
            if not _is_divergence(e):
                raise
            self.log(f"{model} {vr.label}: retraining diverged ({e})")
            return self.record(model, key, self.base_row(model, **common, status="diverged", error=str(e),
                                                         top1=None, top5=None, n=None))
        return self.record(model, key, self.base_row(model, **common, status="ok", top1=res["top1"], top5=res["top5"],
                                                     n=res["n"], wall_s=res.get("wall_s"),
                                                     epochs_run=res.get("epochs_run", epochs),
                                                     stopped=res.get("stopped", "budget"),
                                                     checkpoint=res.get("best")))


def _time_steps(model_name: str, voter: str, tie, p: dict, device, steps: int = 6) -> float:
    """Median seconds of one training step (forward, backward, Adam) at the preset's scale."""
    import statistics

    import torch
    import torch.nn.functional as F

    from .. import models as M
    from ..train.optim import make_optimizer

    dev = torch.device(device)
    torch.manual_seed(0)
    net = M.create(model_name, voter=voter, width=p["width"], tie=tie).to(dev).train()
    opt = make_optimizer(net, 1e-3, 0.0)
    x = torch.randn(p["batch_size"], 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (p["batch_size"],), device=dev)
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def plan_epochs(p: dict, models: Sequence[str], rows: Sequence[VoterRow], n_train: int, device, out: Path,
                log=print) -> dict:
    """Epochs that fit ``p["minutes"]``, from measured step times; kept in ``out/plan.json``.

    The baseline gets E epochs and every voter row E/4 (at least 1) of retraining; 10 % of the
    budget is left for evaluation, conversion and BN recalibration. A re-run reuses the stored
    plan, so an interrupted budgeted run resumes with the same epochs.
    """
    f = out / "plan.json"
    if f.is_file():
        return _read_json(f)
    steps = max(1, n_train // p["batch_size"])
    base_s = sum(_time_steps(m, "popcount", 1, p, device) for m in models) * steps
    vote_s = sum(_time_steps(m, vr.spec, vr.tie, p, device) for m in models for vr in rows) * steps
    budget = 0.9 * 60.0 * float(p["minutes"])
    # E * base_s + max(1, E/4) * vote_s <= budget
    e = max(1, int((budget - vote_s) // max(base_s, 1e-9))) if budget > base_s + vote_s else 1
    while e > 1 and e * base_s + max(1, e // 4) * vote_s > budget:
        e -= 1
    plan = {"epochs": e, "retrain_epochs": max(1, e // 4), "minutes": float(p["minutes"]),
            "baseline_epoch_s": base_s, "retrain_epoch_s_all_rows": vote_s, "device": str(device)}
    atomic_write_bytes(f, (json.dumps(plan, indent=1) + "\n").encode())
    log(f"plan for {p['minutes']:g} min: baseline {plan['epochs']} epochs, retraining {plan['retrain_epochs']} "
        f"(measured {base_s:.0f} s per baseline epoch over all models)")
    return plan


def _validate(models: Sequence[str], rows: Sequence[VoterRow], width: float) -> None:
    """Fail before any training: unknown models, unknown or misfit voter specs, bad ties."""
    from .. import models as M

    for name in models:
        for vr in rows:
            opts = {} if vr.pad_value is None else {"pad_value": vr.pad_value}
            M.create(name, voter=vr.voter, width=width, tie=vr.tie, **opts)


def _read_json(f: Path) -> dict:
    """A JSON dict this module wrote into the output folder; damage is one line naming it."""
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise BitvoteError(f"{f} is damaged (not JSON text): delete it to start that part again") from None
    if not isinstance(d, dict):
        raise BitvoteError(f"{f} is damaged (not a JSON object): delete it to start that part again")
    return d


def reproduce(preset: str = "smoke", models: Optional[Sequence[str]] = None, voters: Optional[Sequence[str]] = None,
              data=None, out=None, tie=None, device="cpu", threads=None, download=True, quiet=False,
              print_table=True, table: str = "seed", recipes: Optional[Sequence[str]] = None,
              voter_maps: Sequence = (), **overrides) -> List[dict]:
    """Run (or resume) the protocol; writes ``table.md``, ``results.json``, ``accuracy.png``.

    Returns every row (diverged rows included, with ``top1`` None). ``overrides`` change preset
    values (``width``, ``epochs``, ``subset``, ``recipe``, ...): the folder's ``protocol.json``
    then records the ones that decide a stage, and a re-run with other values into the same
    folder is an error. ``voter_maps``: per-layer voters (``{pattern: spec}``), one row each.

    ``table="ablation"``: the preset's ``ablation_models`` x ``ablation_voters`` (or
    ``models``/``voters``), retrained by every recipe of ``recipes`` (default the preset's
    ``ablation_recipes``) at the same budget; writes ``ablation.md`` and ``ablation.json``
    beside the seed table's files (the baseline and conversions are shared with it).
    """
    from ..models import voter_map_text
    from .recipes import parse_recipe

    import torch

    from ..train import device as as_device

    if preset not in PRESETS:
        raise BitvoteError(f"unknown preset {preset!r}: choose one of {', '.join(k for k in PRESETS if k != 'demo')}")
    p = dict(PRESETS[preset], preset=preset, dataset="cifar10", seed=0, surrogate="approxsign", sigma="fanin")
    unknown = set(overrides) - set(p)
    if unknown:
        raise BitvoteError(f"unknown reproduce option(s): {', '.join(sorted(unknown))}")
    p.update(overrides)
    if table not in ("seed", "ablation"):
        raise BitvoteError(f"unknown table {table!r}: choose seed or ablation")
    ablation = table == "ablation"
    recipes = list(recipes or (p["ablation_recipes"] if ablation else [p["recipe"]]))
    for r in recipes:
        parse_recipe(r)
    models = list(models or (p["ablation_models"] if ablation else p["models"]))
    if voters is not None:  # accept "a;b" as well as a list
        voters = [v for item in voters for v in str(item).split(";")]
    specs = list(voters or (p["ablation_voters"] if ablation and not voter_maps else [] if voter_maps else p["voters"]))
    specs += [voter_map_text(m) for m in voter_maps]
    rows_spec = voter_rows(specs, tie, p["pad_variant"] and not ablation)
    as_device(device)
    if threads:
        torch.set_num_threads(threads)
    _validate(models, rows_spec, p["width"])
    out = Path(out or f"runs/reproduce-{preset}")
    proto = Protocol(out, p, data, device, threads, download, quiet)
    proto.split("test")  # a missing data folder fails here, before anything is written
    planned = bool(p.get("minutes")) and (p["epochs"] is None or "minutes" in overrides)
    if not planned and p["epochs"] is None:
        raise BitvoteError(f"preset {preset!r} sizes its epochs from a time budget: pass --minutes")
    with hold_folder(out, "bitvote reproduce"):
        return _run(proto, models, rows_spec, planned, print_table, recipes, ablation)


def _run(proto: "Protocol", models, rows_spec, planned: bool, print_table: bool, recipes=None,
         ablation: bool = False) -> List[dict]:
    """The protocol proper, with ``proto.out`` held by this process."""
    from . import report as R

    p, out = proto.p, proto.out
    if planned:
        n_train = len(D.subset(proto.split("train"), p["subset"], p["seed"]))
        plan = plan_epochs(p, models, rows_spec, n_train, proto.device, out, proto.log)
        p["epochs"], p["retrain_epochs"] = plan["epochs"], plan["retrain_epochs"]
    proto.check_folder()
    t0 = time.monotonic()
    rows: List[dict] = []
    for model in models:
        base = proto.baseline(model)
        rows.append(base)
        for vr in rows_spec:
            conv = proto.converted(model, base, vr)
            rows.extend(conv)
            for recipe in recipes or [p["recipe"]]:
                rows.append(proto.retrained(model, base, vr, conv[0]["resolved"], recipe))
    if ablation:
        R.write_ablation(out, rows, p, time.monotonic() - t0, print_table=print_table and not proto.quiet,
                         log=proto.log)
    else:
        R.write_all(out, rows, p, time.monotonic() - t0, print_table=print_table and not proto.quiet, log=proto.log)
    return rows
