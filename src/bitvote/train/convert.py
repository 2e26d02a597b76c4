"""Conversion: the same trained weights with a (hierarchical) majority voter swapped in.

The seed's first experiment: take a popcount BNN, replace every voter layer's popcount by a
voter, and measure how much accuracy survives. BN after a voter still holds the statistics of
the popcount sums, so :func:`recalibrate_bn` re-estimates them on training images (no
gradients): the cheap fix a user tries before retraining.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch.nn as nn

from .. import data as D
from ..errors import BitvoteError
from ..models import set_voter, voter_layers, voter_map_text
from ..voter import is_popcount
from .checkpoint import model_checkpoint, save as save_checkpoint
from .loop import evaluate, load_for_evaluation
from .recalibrate import recalibrate_bn

__all__ = ["convert_model", "recalibrate_bn", "resolved", "convert_checkpoint", "print_rows"]


def convert_model(model: nn.Module, voter, tie=None, pad_value=None) -> nn.Module:
    """Swap ``voter`` into every voter layer of ``model`` in place (weights untouched)."""
    opts = {} if pad_value is None else {"pad_value": pad_value}
    if tie is None and not is_popcount(voter):
        tie = model.config.get("tie") if hasattr(model, "config") else None
    set_voter(model, voter, tie, **opts)
    return model


def resolved(model: nn.Module) -> str:
    """The distinct hierarchies the model's voter layers resolved to, in layer order.

    E.g. ``M9(M2(M4)) / M9(M4(M4)) / M9(M8(M4)) / M9(M16(M4))`` for ``tap,leaf=4`` at width
    0.125: a rule names leaf sizes only once it meets a layer's channel count.
    """
    seen = []
    for _, layer in voter_layers(model):
        h = getattr(layer, "hierarchy", None)
        text = "popcount" if h is None else h.describe()
        if text not in seen:
            seen.append(text)
    return " / ".join(seen)


def convert_checkpoint(ckpt, voter, out=None, tie=None, pad_value=None, recalibrate: int = 0, data=None,
                       device="cpu", test_subset=None, evaluate_before=True, download=True, quiet=True) -> dict:
    """Load ``ckpt``, evaluate, convert, evaluate, optionally recalibrate BN and evaluate; save.

    Returns ``{"rows": [{"mode", "voter", "resolved", "top1", "top5", "n"}...], "out": path}``:
    modes ``before`` (skipped if ``evaluate_before`` is False), ``converted``,
    ``recalibrated``. ``out`` receives the final model (recalibrated when asked).
    """
    model, ck, dataset, test = load_for_evaluation(ckpt, data, device, test_subset, download)
    dev = test.x.device
    rows = []

    def row(mode):
        r = {"mode": mode, "voter": voter_map_text(model.config["voter"]), "resolved": resolved(model), **evaluate(model, test)}
        rows.append(r)
        if not quiet:
            print(f"{mode:>13}: {r['voter']} [{r['resolved']}] top1 {r['top1']:.2f}%  top5 {r['top5']:.2f}%", flush=True)

    if evaluate_before:
        row("before")
    convert_model(model, voter, tie, pad_value)
    row("converted")
    if recalibrate:
        train_split = D.load(dataset, "train", data, device=dev, download=download)
        recalibrate_bn(model, train_split, recalibrate)
        row("recalibrated")
    if out is not None:
        out = Path(out)
        if out.resolve() == Path(ckpt).resolve():
            raise BitvoteError(f"--out {out} is the input checkpoint: choose another file")
        save_checkpoint(out, model_checkpoint(model, dataset=dataset, converted_from=str(ckpt),
                                              recalibrated_bn=int(recalibrate or 0)))
    return {"rows": rows, "out": None if out is None else str(out), "dataset": dataset, "model": model.config["name"],
            "width": model.config["width"]}


def print_rows(res: dict, file=sys.stdout) -> None:
    """Before/after table of :func:`convert_checkpoint`'s rows."""
    print("| Stage | Voter | Resolved | Top-1 (%) | Top-5 (%) |\n|---|---|---|---|---|", file=file)
    for r in res["rows"]:
        print(f"| {r['mode']} | {r['voter']} | {r['resolved']} | {r['top1']:.2f} | {r['top5']:.2f} |", file=file)
