"""A small ONNX graph builder: named nodes, deduplicated constants, typed outputs.

The exporters build graphs node by node with :class:`Builder` instead of tracing the model:
the voters' reductions (leaf sums, abstention, the ``first`` tie) become a handful of
explicit standard ops whose meaning can be read off the file, and every constant that depends
only on the layer's geometry (valid-term counts under zero padding, which child decides a
``first`` tie) is computed once at export time.
"""

from __future__ import annotations

from collections import Counter
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["Builder", "QONNX_DOMAIN", "OPSET"]

#: The standard opset of the exported files: every op used exists in it unchanged, and every
#: onnxruntime from 1.14 on runs it.
OPSET = 17
#: The domain of QONNX's custom ops (Quant, BipolarQuant, MultiThreshold), as FINN reads them.
QONNX_DOMAIN = "qonnx.custom_op.general"


class Builder:
    """Collects nodes and initializers; every method returns the name of the tensor it made."""

    def __init__(self):
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self.outputs: List[onnx.ValueInfoProto] = []
        self._used: Counter = Counter()
        self._consts: Dict[tuple, str] = {}
        self.domains = {"": OPSET}

    def fresh(self, hint: str) -> str:
        """A tensor or node name not used yet, derived from ``hint`` (a module's name)."""
        hint = hint or "t"
        self._used[hint] += 1
        k = self._used[hint]
        return hint if k == 1 else f"{hint}_{k - 1}"

    def const(self, value, hint: str = "const", dtype=np.float32) -> str:
        """An initializer; equal small constants (scalars, shapes) share one tensor."""
        arr = np.asarray(value, dtype=dtype)
        key = None
        if arr.size <= 8:
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            if key in self._consts:
                return self._consts[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(arr, name))
        if key is not None:
            self._consts[key] = name
        return name

    def shape(self, dims: Sequence[int]) -> str:
        """An int64 shape for Reshape (0 copies the input's dim: the dynamic batch)."""
        return self.const(list(dims), "shape", np.int64)

    def op(self, op_type: str, inputs: Sequence[str], hint: str, *, domain: str = "", n_out: int = 1, **attrs):
        """Append one node; returns its output name (or names when ``n_out > 1``)."""
        outs = [self.fresh(hint) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=outs[0], domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    # common compositions -------------------------------------------------------------------
    def sign(self, x: str, hint: str) -> str:
        """SPEC.md's binarization: +1 where ``x >= 0`` (zero and -0.0 included), else -1."""
        ge = self.op("GreaterOrEqual", [x, self.const(0.0)], hint + ".ge0")
        return self.op("Where", [ge, self.const(1.0), self.const(-1.0)], hint)

    def add_output(self, name: str, shape: Sequence, elem=TensorProto.FLOAT) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem, list(shape)))

    def model(self, inputs: Sequence[onnx.ValueInfoProto], doc: str = "", metadata: Optional[dict] = None) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "bitvote", list(inputs), self.outputs, self.initializers)
        opsets = [helper.make_opsetid(d, v) for d, v in self.domains.items()]
        m = helper.make_model(graph, opset_imports=opsets, producer_name="bitvote", doc_string=doc)
        # the IR version every onnxruntime that knows opset 17 reads
        m.ir_version = 8
        for k, v in (metadata or {}).items():
            helper.set_model_props(m, {**{p.key: p.value for p in m.metadata_props}, k: str(v)})
        return m
