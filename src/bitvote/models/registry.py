"""Model registry: ``create(name, **kwargs)`` and ``names()`` are the whole public surface.

Each family file registers small constructor functions with :func:`register`; every model
records the arguments it was built with (``model.config``) so a checkpoint can rebuild it, and
carries ``default_cfg`` (input size, normalization, classes) so data and training code never
hard-code them.
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Dict, Mapping, Union

import torch.nn as nn

from ..errors import BitvoteError
from ..nn.layers import VoterLayer
from ..voter import is_popcount, tie_text

__all__ = ["register", "create", "names", "set_voter", "voter_layers", "VoterMap", "spec_for", "parse_voter_map",
           "voter_map_text", "read_voter_map"]

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}

VoterMap = Union[str, Mapping[str, str]]


def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _REGISTRY[fn.__name__] = fn
    return fn


def names():
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def create(name: str, num_classes: int = 10, voter: VoterMap = "popcount", width: float = 1.0, **options) -> nn.Module:
    """Build a registered model; ``voter`` is one spec or a ``{layer-pattern: spec}`` mapping."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise BitvoteError(f"unknown model {name!r}{hint}: choose one of {', '.join(names())}")
    if not (isinstance(num_classes, int) and num_classes >= 1):
        raise BitvoteError(f"num_classes must be a positive integer, got {num_classes!r}")
    try:
        width = float(width)
    except (TypeError, ValueError):
        raise BitvoteError(f"width must be a number, got {width!r}") from None
    if not 0 < width <= 8:
        raise BitvoteError(f"width must be in (0, 8], got {width}")
    try:
        model = _REGISTRY[name](num_classes=num_classes, voter=voter, width=width, **options)
    except TypeError as e:
        raise BitvoteError(f"model {name!r}: {e}") from None
    model.config = dict(name=name, num_classes=num_classes, voter=_voter_plain(voter), width=width, **options)
    if "tie" in options:  # plain types only: a checkpoint's config is read with weights_only=True
        model.config["tie"] = tie_text(options["tie"])
    return model


def _voter_plain(voter: VoterMap):
    return dict(voter) if isinstance(voter, Mapping) else str(voter)


def voter_layers(model: nn.Module):
    """``[(name, layer)]`` of the model's voter layers (binary convs on the main path)."""
    wanted = set(model.voter_layer_names()) if hasattr(model, "voter_layer_names") else None
    out = []
    for name, m in model.named_modules():
        if isinstance(m, VoterLayer) and (wanted is None or name in wanted):
            out.append((name, m))
    return out


def _spec_for(name: str, voter: VoterMap) -> str:
    if isinstance(voter, Mapping):
        for pattern, spec in voter.items():
            if fnmatch.fnmatchcase(name, pattern):
                return spec
        return "popcount"
    return voter


#: the voter spec of layer ``name`` under ``voter`` (the first matching pattern; unmatched: popcount)
spec_for = _spec_for

_GLOB = set("*?[.")


def parse_voter_map(text: str) -> VoterMap:
    """A ``--voter`` argument: one spec, or ``PATTERN=SPEC;PATTERN=SPEC...`` (first match wins).

    Specs contain ``=`` themselves (``groups=4``, ``tap,leaf=4``), so the text is a mapping
    only when it has a ``;`` or its first ``=`` follows a layer-name pattern (one with a ``.``
    or a glob character: ``layer1.*=tap,leaf=4``, ``*=mv``); a layer that no pattern matches
    keeps popcount. The specs themselves are checked where they meet the layers.
    """
    text = str(text).strip()
    key = text.partition("=")[0]
    if ";" not in text and not (_GLOB & set(key) and "=" in text):
        if not text:
            raise BitvoteError("--voter: empty voter spec")
        return text
    out = {}
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        pattern, eq, spec = (t.strip() for t in item.partition("="))
        if not eq or not pattern or not spec:
            raise BitvoteError(f"--voter {text!r}: {item!r} is not PATTERN=SPEC (e.g. 'layer1.*=tap,leaf=4;*=mv')")
        if pattern in out:
            raise BitvoteError(f"--voter {text!r}: pattern {pattern!r} is given twice")
        out[pattern] = spec
    if not out:
        raise BitvoteError(f"--voter {text!r}: no PATTERN=SPEC entry")
    return out


def voter_map_text(voter: VoterMap) -> str:
    """The one-line text of a voter (what :func:`parse_voter_map` reads back)."""
    if isinstance(voter, Mapping):
        return ";".join(f"{k}={v}" for k, v in voter.items())
    return str(voter)


def read_voter_map(path) -> dict:
    """A ``--voter-map FILE.json``: an object ``{"pattern": "spec", ...}`` (first match wins), or
    what ``bitvote search`` writes (the same object under ``"voter"``)."""
    import json
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise BitvoteError(f"--voter-map {str(path)!r} does not exist")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BitvoteError(f"--voter-map {str(path)!r} is not JSON ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("voter"), dict):
        data = data["voter"]
    if not isinstance(data, dict) or not data or not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                                            for k, v in data.items()):
        raise BitvoteError(f"--voter-map {str(path)!r}: expected a JSON object of layer pattern -> voter spec strings")
    return {k.strip(): v.strip() for k, v in data.items()}


def set_voter(model: nn.Module, voter: VoterMap = "popcount", tie=None, **layer_options) -> nn.Module:
    """Put ``voter`` (one spec, or a mapping of layer-name patterns to specs) on every voter layer.

    Weights are untouched: this is the conversion step. ``layer_options`` may set
    ``surrogate``, ``sigma`` or ``pad_value`` on those layers too.
    """
    from ..binarize import get_surrogate
    from ..voter import check_sigma

    if not voter_layers(model) and not is_popcount(voter):
        name = getattr(model, "config", {}).get("name", type(model).__name__)
        raise BitvoteError(f"model {name} has no voter layers: voter {_voter_plain(voter)!r} has nothing to act on")
    if isinstance(voter, Mapping):
        for pattern in voter:
            if not any(fnmatch.fnmatchcase(n, pattern) for n, _ in voter_layers(model)):
                raise BitvoteError(f"voter pattern {pattern!r} matches no voter layer of this model")
    for name, layer in voter_layers(model):
        if "surrogate" in layer_options:
            layer.surrogate = get_surrogate(layer_options["surrogate"])
        if "sigma" in layer_options:
            layer.sigma = check_sigma(layer_options["sigma"])
        if "pad_value" in layer_options and hasattr(layer, "pad_value"):
            from ..nn.layers import check_pad_value

            layer.pad_value = check_pad_value(layer_options["pad_value"])
        layer.set_voter(_spec_for(name, voter), tie, name=name)
    if hasattr(model, "config"):
        model.config["voter"] = _voter_plain(voter)
        if tie is not None:
            model.config["tie"] = tie_text(tie)
        model.config.update({k: v for k, v in layer_options.items()})
    return model
