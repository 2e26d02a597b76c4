"""Assemble the exported model: input, the lowered network, logits (and probes), checks."""

from __future__ import annotations

import json
from typing import Optional

import onnx
import torch
from onnx import TensorProto, helper

from ..errors import BitvoteError
from ..nn.layers import VoterLayer
from .binary import qonnx_supported
from .graph import QONNX_DOMAIN, Builder
from .lower import Lowering

__all__ = ["build_model", "INPUT", "LOGITS"]

INPUT, LOGITS = "input", "logits"


def _check_exportable(model, fmt: str) -> None:
    names = {id(m): n for n, m in model.named_modules()}
    for m in model.modules():
        if isinstance(m, VoterLayer):
            if not m.binary_weights:
                raise BitvoteError(f"layer {names[id(m)]!r} has real weights (step 1 of two-step training): "
                                   "export runs binary weights; train step 2 first")
            if fmt == "qonnx":
                why = qonnx_supported(m)
                if why:
                    raise BitvoteError(f"qonnx export of layer {names[id(m)]!r}: {why}")


@torch.no_grad()
def build_model(model, fmt: str, *, input_size=None, batch: Optional[int] = None, probes: bool = False) -> onnx.ModelProto:
    """Lower ``model`` (evaluation mode: BN uses its running statistics) into an ONNX proto."""
    _check_exportable(model, fmt)
    if input_size is None:
        input_size = getattr(model, "default_cfg", {}).get("input_size")
        if input_size is None:
            raise BitvoteError("export needs the input size (C, H, W): this model has no default_cfg")
    input_size = tuple(int(v) for v in input_size)
    if len(input_size) != 3 or min(input_size) < 1:
        raise BitvoteError(f"input size must be (C, H, W) positive integers, got {input_size}")
    if fmt == "qonnx" and batch is None:
        batch = 1
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise BitvoteError(f"batch must be a positive integer, got {batch!r}")
    was_training = model.training
    model.eval()
    try:
        b = Builder()
        if fmt == "qonnx":
            b.domains[QONNX_DOMAIN] = 1
        low = Lowering(model, b, fmt, input_size)
        y = low(INPUT)
        n = batch if batch is not None else "batch"
        out_shape = low.shapes["output"][1:]
    finally:
        model.train(was_training)
    b.nodes.append(helper.make_node("Identity", [y], [LOGITS], name=LOGITS))
    b.add_output(LOGITS, [n, *out_shape])
    if probes:
        for layer, (t, shape) in low.probes.items():
            b.nodes.append(helper.make_node("Identity", [t], ["probe:" + layer], name="probe:" + layer))
            b.add_output("probe:" + layer, [n, *shape])
    inp = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [n, *input_size])
    cfg = dict(getattr(model, "config", {}))
    doc = (f"bitvote export ({fmt}) of {cfg.get('name', type(model).__name__)}; "
           "binary values are +/-1 floats, sums and votes are exact integers in float32")
    proto = b.model([inp], doc, {"bitvote.format": fmt, "bitvote.config": json.dumps(cfg, default=str)})
    if fmt == "onnx":
        onnx.checker.check_model(proto)
        proto = onnx.shape_inference.infer_shapes(proto)
    else:
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.transformation.infer_shapes import InferShapes

        proto = ModelWrapper(proto).transform(InferShapes()).model
    return proto
