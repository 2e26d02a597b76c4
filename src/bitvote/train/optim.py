"""Adam with ReActNet's weight-decay rule and an LR schedule that is a pure function of the step.

Weight decay applies only to conv and linear weights (ReActNet decays parameters with 4 dims or
'conv' in their name; BN, biases, RSign/RPReLU shifts and slopes are never decayed). The LR
is recomputed from the global step every step, so the schedule needs no state beyond the step
and a resumed run gets exactly the same LRs.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..errors import BitvoteError

__all__ = ["make_optimizer", "lr_at", "SCHEDULES"]

SCHEDULES = ("linear", "cosine", "constant")


def _decayed(model: nn.Module):
    """Names of the conv/linear weights: the only parameters ReActNet's rule decays."""
    out = set()
    for mname, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            out.add(f"{mname}.weight" if mname else "weight")
    return out


def make_optimizer(model: nn.Module, lr: float, wd: float) -> torch.optim.Adam:
    decayed = _decayed(model)
    groups = [
        {"params": [p for n, p in model.named_parameters() if n in decayed], "weight_decay": wd},
        {"params": [p for n, p in model.named_parameters() if n not in decayed], "weight_decay": 0.0},
    ]
    return torch.optim.Adam([g for g in groups if g["params"]], lr=lr)


def lr_at(step: int, total: int, base: float, schedule: str) -> float:
    """LR for ``step`` (0-based) of ``total``: linear to 0 (ReActNet, Bi-Real), cosine, or constant."""
    if schedule not in SCHEDULES:
        raise BitvoteError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    t = min(step / max(total, 1), 1.0)
    if schedule == "linear":
        return base * (1.0 - t)
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * t))
    return base
