"""Checkpoints: only tensors and plain types, written atomically, validated on load.

A checkpoint is a dict that ``torch.load(path, weights_only=True)`` reads: the model's
``state_dict`` and ``config`` (the ``models.create`` kwargs, the voter as its string), whether
the binary convs use binary weights (False in step 1), and, for a training run, the optimizer,
the schedule, epoch / batch / global step, every random-generator state and the run's args.
``load_model`` rebuilds the model from the file alone, so ``bitvote eval`` needs nothing else.
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..io import atomic_write_bytes
from ..errors import BitvoteError

__all__ = ["save", "load", "load_model", "model_from_checkpoint", "model_checkpoint", "set_binary_weights",
           "FORMAT"]

FORMAT = "bitvote-checkpoint/1"


def set_binary_weights(model: nn.Module, on: bool) -> nn.Module:
    """Step 1 of two-step training uses real weights in the binary convs (``on=False``)."""
    from ..nn.layers import VoterLayer

    for m in model.modules():
        if isinstance(m, VoterLayer):
            m.binary_weights = on
    return model


def binary_weights(model: nn.Module) -> bool:
    from ..nn.layers import VoterLayer

    return all(m.binary_weights for m in model.modules() if isinstance(m, VoterLayer))


def model_checkpoint(model: nn.Module, **extra) -> dict:
    """The smallest valid checkpoint of ``model`` (what ``convert`` writes), plus ``extra`` keys."""
    return {"format": FORMAT, "model": model.state_dict(), "config": dict(model.config),
            "binary_weights": binary_weights(model), **extra}


def save(path, state: dict) -> None:
    """Serialize to memory, then temp file + fsync + rename: a kill leaves the old file intact."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def _is_pickle(path: Path) -> bool:
    """A plain (non-zip) pickle stream, protocol 2+: what ``weights_only`` refuses when it holds
    objects. Text or random bytes are not: they are merely corrupt."""
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def read(path, require=("model", "config")) -> dict:
    """Read a checkpoint dict safely (``weights_only``); every failure is one line naming the file.

    Lenient about provenance: any ``{"model": state_dict, "config": model.config}`` dict is
    accepted (the engine and the hardware tools take such hand-made files too); :func:`load`
    adds the check that ``bitvote train`` wrote it.
    """
    path = Path(path)
    if not path.is_file():
        raise BitvoteError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the error below says what matters
            warnings.simplefilter("ignore")
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) and ("unsupported global" in str(e).lower() or _is_pickle(path)):
            raise BitvoteError(f"checkpoint {path} holds Python objects, not only tensors and plain types: "
                               "refused to load it (unpickling them could run code)") from None
        kind = "truncated or corrupt" if path.stat().st_size else "empty"
        raise BitvoteError(f"checkpoint {path} is {kind} ({type(e).__name__})") from None
    if not isinstance(ck, dict):
        raise BitvoteError(f"{path} is not a bitvote checkpoint")
    for key in require:
        if key not in ck:
            raise BitvoteError(f"checkpoint {path} has no {key!r}: not a bitvote checkpoint, or damaged")
    cfg = ck.get("config")
    if "config" in require and not (isinstance(cfg, dict) and cfg.get("name")):
        raise BitvoteError(f"checkpoint {path} has no model config with a model name")
    return ck


def load(path) -> dict:
    """:func:`read` a checkpoint that ``bitvote train`` / ``convert`` wrote."""
    ck = read(path, require=())
    if ck.get("format") != FORMAT:
        raise BitvoteError(f"{path} is not a bitvote checkpoint")
    for key in ("model", "config"):
        if key not in ck:
            raise BitvoteError(f"checkpoint {path} has no {key!r}: it is damaged")
    return ck


def model_from_checkpoint(ck: dict, path="checkpoint") -> nn.Module:
    """Rebuild the model a checkpoint was taken from and load its weights."""
    from .. import models

    cfg = dict(ck["config"])
    name = cfg.pop("name", None)
    model = models.create(name, **cfg)
    if not ck.get("binary_weights", True):
        set_binary_weights(model, False)
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError:
        raise BitvoteError(f"checkpoint {path}: its weights do not fit a {name} model "
                           f"(width {cfg.get('width')}) — damaged or from another model") from None
    return model


def load_model(path, device="cpu") -> tuple:
    """``(model, checkpoint)`` from a checkpoint file, model in eval mode on ``device``."""
    ck = load(path)
    model = model_from_checkpoint(ck, path).to(device).eval()
    return model, ck
