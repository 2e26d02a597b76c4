"""What ``--resume`` takes from the saved run, and what it refuses to change silently.

A resumed run continues from ``last.pt`` with the options it was started with. An option given
on the resuming command line that differs from the saved one is never dropped quietly (the
run would report the old value's result under the new command) and never applied quietly
(the schedule, data order or loss would change mid-run). So every difference is named:

* options fixed by the saved model (its architecture, voter, ties, binarization): refused,
  always: the weights in ``last.pt`` belong to that model;
* options that change the result (learning rate, schedule, epochs, batch, seed, ...): refused
  unless ``override`` (``--override``) asks to apply them from here on;
* where files are and how fast it runs (data folder, device, threads, checkpoint cadence):
  taken from the command line, as they change no number of the result.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..errors import BitvoteError

__all__ = ["FIXED", "RESULT", "RUNTIME", "given_options", "resumed_config"]

#: decided by the saved model: a resumed run can never change them
FIXED = ("model", "dataset", "width", "voter", "tie", "surrogate", "sigma", "pad_value", "bn", "step", "init")
#: change the result: a different value is refused unless ``override``
RESULT = ("epochs", "batch_size", "lr", "wd", "schedule", "label_smoothing", "subset", "test_subset", "eval_every",
          "seed", "teacher", "agc", "amp", "weight_grad", "self_distill", "recalibrate_bn", "progressive", "patience",
          "min_delta")
#: where things are and how fast: always the resuming command's
RUNTIME = ("data", "device", "threads", "ckpt_every_s", "ckpt_every_steps", "download", "quiet", "resume", "sync_bn",
           "stop_after_steps", "compile", "out", "given", "override")

_CLI = {"ckpt_every_s": "--ckpt-every", "download": "--no-download"}
_NEEDED = ("optimizer", "epoch", "batch", "step", "rng")


def _flag(k: str) -> str:
    return _CLI.get(k, "--" + k.replace("_", "-"))


def given_options(cfg) -> set:
    """The options the caller set: ``cfg.given`` when the CLI recorded it, else every option
    whose value is not the default (a library caller)."""
    if getattr(cfg, "given", None) is not None:
        return set(cfg.given)
    defaults = type(cfg)()
    return {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(defaults, f.name)}


def _same(a, b) -> bool:
    if a == b:
        return True
    try:
        fa, fb = float(a), float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)
    return fa == fb or (math.isnan(fa) and math.isnan(fb))


def _saved_value(k, saved: dict, config: dict):
    """The value the saved run used: its recorded option, else what its model was built with."""
    v = saved.get(k)
    if v is None and k == "model":
        v = config.get("name")
    elif v is None and k in config:
        v = config[k]
    elif v is None and k == "wd":
        v = 1e-5 if saved.get("step", 2) == 1 else 0.0
    elif v is None and k == "agc":
        v = 0.04 if config.get("bn") == "free" else 0.0
    return v


def resumed_config(cfg, ck: dict, path):
    """The config a resumed run continues with; every difference from the saved run is named."""
    missing = [k for k in _NEEDED if k not in ck]
    if missing or not isinstance(ck.get("args"), dict):
        what = missing[0] if missing else "args"
        raise BitvoteError(f"--resume: {path} is not a training checkpoint (it has no {what!r}): "
                           "choose another --out, or --init from it")
    for k in ("epoch", "batch", "step"):
        if isinstance(ck[k], bool) or not isinstance(ck[k], int) or ck[k] < 0:
            raise BitvoteError(f"--resume: {path} has a malformed {k!r} ({ck[k]!r})")
    opt, rng = ck["optimizer"], ck["rng"]
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)):
        raise BitvoteError(f"--resume: {path} has a malformed optimizer state")
    if not (isinstance(rng, dict) and torch.is_tensor(rng.get("torch")) and rng["torch"].dtype == torch.uint8
            and isinstance(rng.get("python"), (tuple, list))):
        raise BitvoteError(f"--resume: {path} has malformed random-generator states")
    saved = ck["args"]
    config = ck.get("config") or {}
    given = given_options(cfg)
    fixed, result = [], []
    for k in FIXED + RESULT:
        if k not in given:
            continue
        mine, theirs = getattr(cfg, k), _saved_value(k, saved, config)
        if mine is None or _same(mine, theirs):
            continue
        (fixed if k in FIXED else result).append(f"{_flag(k)} {theirs!r} (given {mine!r})")
    if fixed:
        raise BitvoteError(f"--resume: {path} is a run with {', '.join(fixed)}: the saved weights belong to "
                           "that model; drop these options, or start a new run in another --out")
    if result and not getattr(cfg, "override", False):
        raise BitvoteError(f"--resume: {path} was run with {', '.join(result)}: pass --override to continue "
                           "with the new values, or drop them to continue as saved")
    known = {f.name for f in dataclasses.fields(cfg)}
    merged = {k: v for k, v in saved.items() if k in known and k not in RUNTIME}
    for k in RUNTIME:
        merged[k] = getattr(cfg, k)
    if getattr(cfg, "override", False):
        for k in RESULT:
            if k in given:
                merged[k] = getattr(cfg, k)
    new = type(cfg)(**merged)
    if new.epochs < ck["epoch"]:
        raise BitvoteError(f"--resume: {path} has run {ck['epoch']} epochs already, more than --epochs {new.epochs}")
    return new
