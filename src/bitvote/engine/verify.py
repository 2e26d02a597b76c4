"""Engine vs PyTorch, per SPEC.md "Bit-exactness".

Per layer (exact): every binary layer gets the bits PyTorch fed it; the engine's integer
results (sums, votes, ``P`` counts) must equal the layer's own functional core
(:func:`bitvote.nn.functional.binary_conv2d` without the weight scale, i.e. conv_leaf_sums +
:func:`bitvote.voter.reduce_votes` for voters) at every output.

End to end (explained): the engine runs on its own; real-valued ops (stem, folded BN, adds)
may round differently, so a binarized bit may flip. Each flip must trace to a PyTorch
pre-sign value within ``eps`` of 0, or lie downstream (same image, later layer) of such a
flip; each top-1 disagreement must trace to a flip in that image or to a PyTorch logit
margin below ``eps``. Images without flips must have logits within ``atol``.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Union

import torch

from ..nn import BinaryConv2d, Sign
from ..nn import functional as BF
from .graph import EngineModel, compile_model, load_model
from ..packed.pack import pack, unpack

__all__ = ["verify"]


@torch.inference_mode()
def verify(model_or_path, x: torch.Tensor, labels=None, threads: int = 1, eps: float = 1e-4,
           atol: float = 1e-3, batch: int = 64,
           engine: Union[None, EngineModel, Callable[[Dict], EngineModel]] = None) -> Dict:
    """Check an engine against the model on images ``x``; returns counts (see module doc).

    ``engine`` is what is checked: ``None`` for the packed CPU engine, or a factory that takes
    the compiled graph and returns an :class:`~bitvote.engine.graph.EngineModel` (e.g.
    ``bitvote.gpu.model.GpuEngineModel``), or such an engine already built from this model's
    graph. The model runs on the CPU; the engine's packed words are compared through its
    :meth:`~bitvote.engine.graph.EngineModel.engine_words`, so any engine with the CPU
    engine's interface is checked the same way, and this module never imports one.
    """
    model = load_model(model_or_path)
    engine = _engine_for(model, engine)
    epack = lambda t: engine.pack_input(t, threads)  # noqa: E731
    as64 = engine.engine_words
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, BinaryConv2d)]
    signs = [m for m in model.modules() if isinstance(m, Sign)]
    rep = {"images": 0, "layers": [{"name": n, "outputs": 0, "mismatches": 0} for n, _ in convs],
           "flips": 0, "flips_near_zero": 0, "flips_downstream": 0, "flips_unexplained": 0, "max_flip_value": 0.0,
           "top1_agree": 0, "top1_disagree": 0, "top1_unexplained": 0, "max_logit_diff": 0.0,
           "correct_engine": None, "correct_torch": None}
    if labels is not None:
        rep["correct_engine"] = rep["correct_torch"] = 0
    for start in range(0, x.shape[0], batch):
        xb = x[start:start + batch].float()
        conv_in, sign_in = [], []
        hooks = [m.register_forward_hook(lambda m, i, o: conv_in.append(i[0])) for _, m in convs]
        hooks += [m.register_forward_hook(lambda m, i, o: sign_in.append(i[0])) for m in signs]
        try:
            ref = model(xb)
        finally:
            for h in hooks:
                h.remove()
        # 1. per layer, exact, on PyTorch's input bits
        for li, ((name, m), xin) in enumerate(zip(convs, conv_in)):
            with BF.reference_votes():  # the reduction itself, not a kernel the engine shares
                want = BF.binary_conv2d(xin, m.latent_weight(), m.stride, m.padding, m.dilation, m.groups,
                                        voter=m.hierarchy, pad_value=m.pad_value, weight_scale=False)
            got = engine.layers[li](epack(xin), threads, raw=True).cpu()
            rep["layers"][li]["outputs"] += want.numel()
            rep["layers"][li]["mismatches"] += int((got.to(want.dtype) != want).sum())
        # 2. end to end, with flips traced
        trace = []
        out = engine(xb, threads, trace=trace).cpu()
        n = xb.shape[0]
        flipped_img = torch.zeros(n, dtype=torch.bool)
        for li, (xin, pre) in enumerate(zip(conv_in, sign_in)):
            mine = as64(trace[li])
            theirs = pack(xin, threads=threads)
            diff = (mine ^ theirs) != 0  # (N, H, W, Wd) words with a flip
            if not diff.any():
                continue
            for img in diff.flatten(1).any(1).nonzero().flatten().tolist():
                # bits of this image's flips, as (C, H, W) positions of the pre-sign values
                C = pre.shape[1]
                fb = unpack(mine[img] ^ theirs[img], C).permute(2, 0, 1)
                vals = pre[img][fb].abs()
                k = int(fb.sum())
                rep["flips"] += k
                if flipped_img[img]:
                    rep["flips_downstream"] += k
                else:
                    near = int((vals <= eps).sum())
                    rep["flips_near_zero"] += near
                    rep["flips_unexplained"] += k - near
                    rep["max_flip_value"] = max(rep["max_flip_value"], float(vals.max()))
                    flipped_img[img] = True
        top_e, top_t = out.argmax(1), ref.argmax(1)
        agree = top_e == top_t
        rep["top1_agree"] += int(agree.sum())
        rep["top1_disagree"] += int((~agree).sum())
        two = ref.topk(2, 1).values if ref.shape[1] > 1 else torch.cat([ref, ref], 1)
        margin = two[:, 0] - two[:, 1]
        rep["top1_unexplained"] += int((~agree & ~flipped_img & (margin > eps)).sum())
        clean = ~flipped_img
        if clean.any():
            rep["max_logit_diff"] = max(rep["max_logit_diff"], float((out[clean] - ref[clean]).abs().max()))
        if labels is not None:
            lb = labels[start:start + batch]
            rep["correct_engine"] += int((top_e == lb).sum())
            rep["correct_torch"] += int((top_t == lb).sum())
        rep["images"] += n
    rep["layer_mismatches"] = sum(l["mismatches"] for l in rep["layers"])
    rep["eps"], rep["atol"] = eps, atol
    rep["passed"] = (rep["layer_mismatches"] == 0 and rep["flips_unexplained"] == 0
                     and rep["top1_unexplained"] == 0 and rep["max_logit_diff"] <= atol)
    return rep


def _engine_for(model, engine: Optional[object]) -> EngineModel:
    if engine is None:
        return EngineModel(compile_model(model))
    if isinstance(engine, EngineModel):
        return engine
    if callable(engine):
        return engine(compile_model(model))
    raise TypeError(f"verify: engine must be an EngineModel or a factory taking a graph, got {type(engine).__name__}")
