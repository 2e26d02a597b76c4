"""Run an exported file and compare it with the PyTorch model it came from.

``onnx`` files run in onnxruntime, ``qonnx`` files in qonnx's own executor
(``qonnx.core.onnx_exec.execute_onnx``, node by node, its custom ops in NumPy). The
comparison follows SPEC.md's "Bit-exactness": binary layers must agree exactly (every sum,
every vote bit), logits within a tolerance, and top-1 everywhere except where a flipped bit
upstream or a logit margin below the tolerance explains it.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import onnx
import torch

from ..errors import BitvoteError
from ..nn import BinaryConv2d
from ..nn.functional import binary_conv2d, conv_leaf_sums
from ..voter import Hierarchy, reduce_votes

__all__ = ["run_exported", "compare", "exported_format", "PROBE"]

PROBE = "probe:"


def _proto(exported) -> onnx.ModelProto:
    if isinstance(exported, onnx.ModelProto):
        return exported
    try:
        return onnx.load(str(exported))
    except FileNotFoundError:
        raise BitvoteError(f"exported file {str(exported)!r} does not exist") from None
    except Exception as e:  # noqa: BLE001 - protobuf raises several types on bad files
        raise BitvoteError(f"{str(exported)!r} is not an ONNX file: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def exported_format(proto: onnx.ModelProto) -> str:
    props = {p.key: p.value for p in proto.metadata_props}
    if "bitvote.format" in props:
        return props["bitvote.format"]
    return "qonnx" if any(o.domain.startswith("qonnx") for o in proto.opset_import) else "onnx"


def run_exported(exported, x, fmt: Optional[str] = None) -> Dict[str, np.ndarray]:
    """``{output name: array}`` for images ``x`` ((N, C, H, W) tensor or array), fed to the
    file's one graph input."""
    proto = _proto(exported)
    fmt = fmt or exported_format(proto)
    xa = np.ascontiguousarray(x.detach().cpu().float().numpy() if torch.is_tensor(x) else np.asarray(x, np.float32))
    names = [o.name for o in proto.graph.output]
    inits = {t.name for t in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in inits)  # tools may rename it
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    inp = inp.name
    if xa.ndim != len(dims) or any(w is not None and w != v for w, v in zip(dims[1:], xa.shape[1:])):
        shown = tuple("N" if d is None else d for d in dims)
        raise BitvoteError(f"images of shape {tuple(xa.shape)} do not fit the exported input {shown}")
    if np.isnan(xa).any():
        raise BitvoteError("the images contain NaN: binarizing NaN is an error (SPEC.md), not a bit")
    nb = dims[0]
    if nb is not None and nb != xa.shape[0]:  # a fixed batch: run whole slices of it
        if xa.shape[0] % nb:
            raise BitvoteError(f"{xa.shape[0]} images are not a whole number of the file's batches of {nb}")
        parts = [_run(proto, fmt, inp, names, xa[i:i + nb]) for i in range(0, xa.shape[0], nb)]
        return {k: np.concatenate([p[k] for p in parts]) for k in names}
    return _run(proto, fmt, inp, names, xa)


def _run(proto, fmt, inp, names, xa):
    if fmt == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return dict(zip(names, sess.run(names, {inp: xa})))
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    out = execute_onnx(ModelWrapper(proto), {inp: xa})
    return {k: out[k] for k in names}


def _segment_sum(x: torch.Tensor, groups, dim: int) -> torch.Tensor:
    return torch.stack([c.sum(dim) for c in x.split(list(groups), dim)], dim)


@torch.no_grad()
def level_votes(layer, x: torch.Tensor):
    """The votes of every level of ``layer``'s tree below its root, from PyTorch's own leaf
    sums and reduction: ``(N, Co, Ho, Wo, voters)`` each, 0 where a voter abstains.

    A level's votes are the root output of the tree cut off above that level; its abstaining
    voters (no valid term below them) are set to 0, as the full tree passes them up.
    """
    h = layer.hierarchy
    xb = x if layer.input_surrogate is None else torch.where(x >= 0, 1.0, -1.0)
    wb, _ = layer.binary_weight()
    sums, valid, first, dim = conv_leaf_sums(xb.float(), wb.float(), h, layer.stride, layer.padding,
                                             layer.dilation, layer.pad_value)
    perm = (1, 4, 2, 3, 0) if dim == 0 else (0, 2, 3, 4, 1)  # leaves along dim -> last
    out, c = [], valid
    for li in range(h.depth - 1):
        if li > 0 and c is not None:
            c = _segment_sum((c > 0).float(), h.levels[li].groups, dim)
        v = reduce_votes(Hierarchy(n=h.n, levels=h.levels[:li + 1], order=h.order), sums, valid, first, dim=dim)
        if len(h.levels[li].groups) == 1:
            v = v.unsqueeze(dim)
        if c is not None:
            v = torch.where(c > 0, v, torch.zeros(()))
        out.append(v.permute(*perm).contiguous())
    return out


@torch.no_grad()
def _reference(model, x):
    """PyTorch logits and every binary layer's integer result: sums before the weight scale
    (popcount), votes, ``P`` counts, and the votes of every level of a tree (forward hooks)."""
    outs = {}
    names = {id(m): n for n, m in model.named_modules()}

    def hook(layer, args, y):
        if layer.hierarchy is None:  # the integer sums, before the weight scale
            y = binary_conv2d(args[0], layer.latent_weight(), layer.stride, layer.padding, layer.dilation,
                              layer.groups, pad_value=layer.pad_value, input_surrogate=layer.input_surrogate)
        outs[names[id(layer)]] = y.detach().clone()
        if layer.hierarchy is not None and layer.hierarchy.depth > 1:
            for li, v in enumerate(level_votes(layer, args[0])):
                outs[f"{names[id(layer)]}:level{li}"] = v

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, BinaryConv2d)]
    was = model.training
    model.eval()
    try:
        logits = model(x.float())
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return logits, outs


def compare(model, exported, x, *, fmt: Optional[str] = None, atol: Optional[float] = None) -> dict:
    """Compare an exported file with ``model`` on images ``x``.

    Returns a dict: ``logits_max_abs`` (max |PyTorch - exported|), ``atol`` (the tolerance:
    default ``1e-4 * max(1, max |logit|)``), ``top1_agree`` (fraction), ``top1_unexplained``
    (disagreements with a PyTorch margin above ``atol`` in images without flipped bits),
    ``layers`` (per binary layer with a probe, and per level of a tree below its root as
    ``layer:levelI``: elements compared and mismatches), ``bits_flipped``
    (total mismatches) and ``ok`` (no unexplained top-1 change, and logits within ``atol`` on
    every image without a flipped bit). Probes exist when the file was exported with
    ``probes=True``; without them only the logits are compared.
    """
    proto = _proto(exported)
    got = run_exported(proto, x, fmt)
    ref, layers = _reference(model, torch.as_tensor(x))
    ref = ref.float().numpy()
    lg = got[proto.graph.output[0].name]  # the logits come first
    if lg.shape != ref.shape:
        raise BitvoteError(f"exported logits have shape {lg.shape}, the model's {ref.shape}")
    if atol is None:
        atol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    diff = np.abs(lg - ref)
    per_layer = {}
    flipped_img = np.zeros(ref.shape[0], bool)
    for name, y in layers.items():
        key = PROBE + name
        if key not in got:
            continue
        yr = y.float().numpy()
        bad = got[key] != yr
        per_layer[name] = {"compared": int(bad.size), "mismatches": int(bad.sum())}
        flipped_img |= bad.reshape(bad.shape[0], -1).any(1)
    top_ref, top_got = ref.argmax(1), lg.argmax(1)
    srt = np.sort(ref, 1)
    margin = srt[:, -1] - srt[:, -2] if ref.shape[1] > 1 else np.full(ref.shape[0], np.inf)
    unexplained = (top_ref != top_got) & ~flipped_img & (margin > atol)
    clean = ~flipped_img
    ok = not unexplained.any() and bool((diff[clean] <= atol).all())
    return {
        "images": int(ref.shape[0]),
        "logits_max_abs": float(diff.max()),
        "atol": float(atol),
        "top1_agree": float((top_ref == top_got).mean()),
        "top1_unexplained": int(unexplained.sum()),
        "bits_flipped": int(sum(v["mismatches"] for v in per_layer.values())),
        "images_with_flips": int(flipped_img.sum()),
        "layers": per_layer,
        "ok": ok,
    }
