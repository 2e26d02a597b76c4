"""The seed's hardware table: units per binary layer, and the real-valued ops left over.

For a voter layer with C_in, k, C_out and output H_o x W_o (SPEC.md, "Units"):

* XNOR units: ``(C_in/groups * k * k) * (C_out * H_o * W_o)``: one per term per output;
* ``popcount``: ``C_out * H_o * W_o`` popcounts of width ``n = C_in/groups * k * k``;
* ``mv``: as many majority voters of width n; HMV: per output, the voters of every level with
  their fan-ins (``Hierarchy.voters_per_level``), times ``C_out * H_o * W_o``.

H_o x W_o come from one forward pass on a zero image of the model's input size, with hooks;
the same pass counts what stays real-valued (in output elements: BN affine ops, adds, sign
compares, real conv / FC multiply-accumulates, pooling adds). Which layers are voter layers
is the model's own list (``bitvote.models.voter_layers``).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Optional

import torch
import torch.nn as nn

from .. import models
from ..errors import BitvoteError
from ..nn.layers import BinaryConv2d
from .design import Design, design_for

__all__ = ["model_from_checkpoint", "layer_units", "count_units", "layer_design", "format_units"]


def model_from_checkpoint(path) -> nn.Module:
    """Rebuild a model from a checkpoint's ``config`` (weights are not needed to count units)."""
    from ..train.checkpoint import create_from_config, read

    cfg = dict(read(path, require=("config",))["config"])
    opts = cfg.pop("options", None) or {}
    if not isinstance(opts, dict):
        raise BitvoteError(f"checkpoint {path}: config option 'options' is not a dict")
    cfg.update(opts)
    return create_from_config(cfg, path)


def _input_shape(model: nn.Module):
    cfg = getattr(model, "default_cfg", None) or {}
    return tuple(cfg.get("input_size", (3, 32, 32)))


def layer_units(model: nn.Module, input_size=None):
    """``(layers, real_ops)``: one dict per voter layer, and a Counter of real-valued ops."""
    voters = OrderedDict(models.voter_layers(model))
    if not voters:
        raise BitvoteError(f"model {getattr(model, 'config', {}).get('name', type(model).__name__)!r} has no voter layer")
    shapes, real = {}, Counter()
    hooks = []
    names = {m: n for n, m in model.named_modules()}

    def hook(mod, inp, out):
        name = names[mod]
        x = inp[0] if inp else None
        if isinstance(mod, BinaryConv2d):
            shapes[name] = tuple(out.shape)
            if mod.weight_scale:
                real["scale multiplies"] += out.numel()
            return
        if isinstance(mod, nn.Conv2d):
            real["real conv MACs"] += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.Linear):
            real["FC MACs"] += out.numel() * mod.in_features
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            real["BN multiply-adds"] += out.numel()
        elif isinstance(mod, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            real["pooling adds"] += x.numel()
        elif isinstance(mod, (nn.PReLU, nn.ReLU)):
            real["activations (PReLU/ReLU)"] += out.numel()
        elif type(mod).__name__ == "LearnableBias":
            real["bias adds (RSign/RPReLU shifts)"] += out.numel()
        elif type(mod).__name__ == "Sign":
            real["sign compares (binarize)"] += out.numel()
        if hasattr(mod, "shortcut") and not isinstance(mod.shortcut, type(None)):
            real["residual adds"] += out.numel()

    for m in model.modules():
        if len(list(m.children())) == 0 or hasattr(m, "shortcut"):
            hooks.append(m.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *(input_size or _input_shape(model))))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)

    layers = []
    for name, layer in voters.items():
        _, C_out, H_o, W_o = shapes[name]
        k = layer.kernel_size[0]
        n = layer.terms
        outputs = C_out * H_o * W_o
        h = layer.hierarchy
        row = {
            "layer": name, "C_in": layer.in_channels, "C_out": C_out, "k": k, "stride": layer.stride[0],
            "groups": layer.groups, "H_o": H_o, "W_o": W_o, "n": n, "outputs": outputs,
            "xnor_units": n * outputs, "voter": layer.voter_spec.text,
            "pad": {0.0: "zero", 1.0: "+1", -1.0: "-1"}[layer.pad_value] if any(layer.padding) else "none",
        }
        if h is None:
            row.update(mode="popcount", resolved="popcount", popcount_units=outputs, popcount_width=n, levels=[])
        else:
            lv = []
            for depth, (count, fanins) in enumerate(h.voters_per_level()):
                per = Counter(fanins)
                kind = "P (counts votes)" if depth == 0 and h.root == "P" else "MV"
                for fan, c in sorted(per.items()):
                    lv.append({"level": depth, "kind": kind, "fan_in": fan, "per_output": c, "units": c * outputs})
            row.update(mode="mv" if h.is_mv else "hmv", resolved=h.describe(), levels=lv,
                       voter_units=sum(x["units"] for x in lv))
        layers.append(row)
    return layers, real


def count_units(model: nn.Module, input_size=None) -> dict:
    """Per-layer rows, totals and real ops as one JSON-able dict."""
    layers, real = layer_units(model, input_size)
    cfg = getattr(model, "config", {})
    total = {"xnor_units": sum(r["xnor_units"] for r in layers),
             "popcount_units": sum(r.get("popcount_units", 0) for r in layers),
             "voter_units": sum(r.get("voter_units", 0) for r in layers),
             "outputs": sum(r["outputs"] for r in layers)}
    return {"model": cfg.get("name", type(model).__name__), "voter": cfg.get("voter"),
            "width": cfg.get("width"), "input_size": list(input_size or _input_shape(model)),
            "layers": layers, "total": total, "real_ops": dict(real)}


def layer_design(layer: BinaryConv2d, pad: Optional[str] = None, epilogue: str = "threshold",
                 xnor: bool = False) -> Design:
    """The one-output design of a layer (``pad`` None: +1, i.e. an interior output, no valid port),
    built from the hierarchy the layer resolved."""
    return design_for(layer.hierarchy, layer.terms, layer.kernel_size[0], pad or "+1", epilogue, xnor,
                      spec=layer.voter_spec.text)


def _fmt(x: int) -> str:
    return f"{x:,}"


def format_units(u: dict) -> str:
    """The table as text: one line per layer (plus one per HMV level), totals, real ops."""
    lines = [f"{u['model']}  voter={u['voter']}  width={u['width']}  input={'x'.join(map(str, u['input_size']))}"]
    hdr = f"{'layer':<18} {'C_in':>5} {'k':>2} {'s':>2} {'C_out':>5} {'HoxWo':>7} {'n':>5} {'outputs':>9} {'XNOR units':>13}  units"
    lines += [hdr, "-" * len(hdr)]
    for r in u["layers"]:
        head = (f"{r['layer']:<18} {r['C_in']:>5} {r['k']:>2} {r['stride']:>2} {r['C_out']:>5} "
                f"{str(r['H_o']) + 'x' + str(r['W_o']):>7} {r['n']:>5} {_fmt(r['outputs']):>9} {_fmt(r['xnor_units']):>13}  ")
        if r["mode"] == "popcount":
            lines.append(head + f"{_fmt(r['popcount_units'])} popcount of width {r['popcount_width']}")
        else:
            lv = r["levels"]
            lines.append(head + f"{r['resolved']}: " + "; ".join(
                f"L{x['level']} {_fmt(x['units'])} {'P' if x['kind'].startswith('P') else 'MV'}{x['fan_in']}" for x in lv))
    t = u["total"]
    lines.append("-" * len(hdr))
    tot = f"total: XNOR units {_fmt(t['xnor_units'])}, outputs {_fmt(t['outputs'])}"
    if t["popcount_units"]:
        tot += f", popcount units {_fmt(t['popcount_units'])}"
    if t["voter_units"]:
        tot += f", voter units {_fmt(t['voter_units'])}"
    lines.append(tot)
    lines.append("real-valued ops left (per image): " + ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(u["real_ops"].items())))
    return "\n".join(lines)
