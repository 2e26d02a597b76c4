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

from .. import integrity
from ..io import atomic_write_bytes
from ..errors import BitvoteError

__all__ = ["save", "load", "load_model", "model_from_checkpoint", "model_checkpoint", "set_binary_weights",
           "create_from_config", "FORMAT"]

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
    """Serialize to memory, then temp file + fsync + rename: a kill leaves the old file intact.

    The file carries a digest of everything in it (:mod:`bitvote.integrity`), so a damaged
    copy is refused on load instead of giving a plausible wrong accuracy.
    """
    buf = io.BytesIO()
    torch.save(integrity.seal(state), buf)
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
    ck, sealed = _read(path, require)
    if not sealed:
        integrity.note_unsealed(path, "checkpoint")
    return ck


def _read(path, require) -> tuple:
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
    ck, sealed = integrity.unseal(ck, path, "checkpoint")
    for key in require:
        if key not in ck:
            raise BitvoteError(f"checkpoint {path} has no {key!r}: not a bitvote checkpoint, or damaged")
    cfg = ck.get("config")
    if "config" in require and not (isinstance(cfg, dict) and cfg.get("name")):
        raise BitvoteError(f"checkpoint {path} has no model config with a model name")
    if "config" in ck:
        _check_config(ck["config"], path)
    if "model" in ck:
        sd = ck["model"]
        if not (isinstance(sd, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items())):
            raise BitvoteError(f"checkpoint {path}: 'model' is not a state dict (names to tensors)")
    return ck, sealed


def _plain(v, depth=0) -> bool:
    if v is None or isinstance(v, (str, bool, int, float)):
        return True
    if depth < 3 and isinstance(v, (list, tuple)):
        return all(_plain(x, depth + 1) for x in v)
    if depth < 3 and isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x, depth + 1) for k, x in v.items())
    return False


def _check_config(cfg, path) -> None:
    """A model config is ``models.create`` keyword arguments: a name string and plain values."""
    if not isinstance(cfg, dict):
        raise BitvoteError(f"checkpoint {path}: 'config' is a {type(cfg).__name__}, not a dict of model options")
    if "name" in cfg and not isinstance(cfg["name"], str):
        raise BitvoteError(f"checkpoint {path}: the model name in its config is a {type(cfg['name']).__name__}, "
                           "not a string")
    for k, v in cfg.items():
        if not isinstance(k, str) or not _plain(v):
            raise BitvoteError(f"checkpoint {path}: config option {k!r} holds a {type(v).__name__}, "
                               "not a plain value")
    # sizes that would allocate before any other check could look at them
    n = cfg.get("num_classes", 10)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100_000:
        raise BitvoteError(f"checkpoint {path}: num_classes {n!r} in its config is not a class count")
    w = cfg.get("width", 1.0)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= 16:
        raise BitvoteError(f"checkpoint {path}: width {w!r} in its config is not a width multiplier in (0, 16]")


def create_from_config(cfg: dict, path="checkpoint") -> nn.Module:
    """``models.create(**config)`` where a wrong type in the config is a one-line error naming
    the file, not a traceback from deep inside a model's constructor."""
    from .. import models

    cfg = dict(cfg)
    name = cfg.pop("name", None)
    try:
        return models.create(name, **cfg)
    except BitvoteError as e:
        raise BitvoteError(f"checkpoint {path}: {e}") from None
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RuntimeError, MemoryError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BitvoteError(f"checkpoint {path}: its config does not describe a {name} model ({detail})") from None


def load(path) -> dict:
    """:func:`read` a checkpoint that ``bitvote train`` / ``convert`` wrote."""
    ck, sealed = _read(path, require=())
    if ck.get("format") != FORMAT:
        raise BitvoteError(f"{path} is not a bitvote checkpoint")
    for key in ("model", "config"):
        if key not in ck:
            raise BitvoteError(f"checkpoint {path} has no {key!r}: it is damaged")
    if not sealed:
        integrity.note_unsealed(path, "checkpoint")
    return ck


def model_from_checkpoint(ck: dict, path="checkpoint") -> nn.Module:
    """Rebuild the model a checkpoint was taken from and load its weights."""
    cfg = dict(ck["config"])
    name = cfg.get("name")
    model = create_from_config(cfg, path)
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
