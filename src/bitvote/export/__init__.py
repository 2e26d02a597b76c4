"""Export trained models: ONNX for inference runtimes, QONNX for FINN (docs/export.md).

    from bitvote import export
    export.to_onnx(model, "model.onnx")         # standard opset 17: onnxruntime and the like
    export.to_qonnx(model, "model.qonnx.onnx")  # BipolarQuant / MultiThreshold: FINN's input
    export.check(model, "model.onnx", x)        # run the file, compare with PyTorch

Both files compute what the PyTorch model computes (SPEC.md): binarization with zero going to
+1, sums over the valid terms only under zero padding, votes with their tie rules, abstention
and ``P`` roots. Integer sums and votes are exact in float32, so every vote bit matches; the
real-valued ops (stem, BN, adds, RPReLU, head) match within float rounding.

The packages are optional: the extra ``bitvote[export]`` (onnx, onnxruntime, qonnx). Without
them every entry point here raises one :class:`~bitvote.errors.BitvoteError` naming the extra.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional

from ..errors import BitvoteError

__all__ = ["FORMATS", "EXTRA", "require", "build", "to_onnx", "to_qonnx", "load_model", "check_output", "save",
           "check", "run", "finn_notes"]

FORMATS = ("onnx", "qonnx")
#: how to install what this package needs
EXTRA = "pip install 'bitvote[export]'"

_NEEDS = {"onnx": ("onnx", "onnxruntime"), "qonnx": ("onnx", "onnxruntime", "qonnx")}


def require(fmt: str = "onnx") -> None:
    """Raise one clear error when the optional packages for ``fmt`` are missing."""
    if fmt not in FORMATS:
        raise BitvoteError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    for mod in _NEEDS[fmt]:
        try:
            importlib.import_module(mod)
        except ImportError:
            raise BitvoteError(f"{fmt} export needs the optional package {mod!r}: install the extra with {EXTRA}") from None


def load_model(model_or_path):
    """A model passes through; a path is read as a bitvote checkpoint (safely, weights only)."""
    import torch.nn as nn

    if isinstance(model_or_path, nn.Module):
        return model_or_path
    from ..train import checkpoint as C

    ck = C.read(model_or_path)
    return C.model_from_checkpoint(ck, model_or_path)


def build(model, fmt: str = "onnx", *, input_size=None, batch: Optional[int] = None, probes: bool = False):
    """The exported graph as an ``onnx.ModelProto`` (see :func:`to_onnx`, :func:`to_qonnx`)."""
    require(fmt)
    from .assemble import build_model

    return build_model(load_model(model), fmt, input_size=input_size, batch=batch, probes=probes)


def check_output(path) -> Path:
    """Refuse an output path that cannot be written, before any work is done."""
    p = Path(path)
    if p.is_dir():
        raise BitvoteError(f"output path {str(path)!r} is a directory")
    if not p.parent.is_dir():
        raise BitvoteError(f"output folder {str(p.parent)!r} does not exist")
    return p


def save(proto, path) -> Path:
    """Write ``proto`` atomically (a temporary file renamed over ``path``)."""
    p = check_output(path)
    tmp = p.with_name(p.name + ".tmp")
    try:
        tmp.write_bytes(proto.SerializeToString())
        tmp.replace(p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise BitvoteError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
    return p


def to_onnx(model, path=None, *, input_size=None, batch: Optional[int] = None, probes: bool = False):
    """Export to standard ONNX (opset 17); write it to ``path`` if given; return the proto.

    ``model``: a bitvote model or a checkpoint path. ``input_size``: ``(C, H, W)``, default
    the model's ``default_cfg`` (the spatial size is fixed: zero padding's valid-term counts
    are constants of it). ``batch``: a fixed batch size, default dynamic. ``probes``: every
    binary layer's output becomes an extra graph output named after the layer (for checks).
    """
    proto = build(model, "onnx", input_size=input_size, batch=batch, probes=probes)
    if path is not None:
        save(proto, path)
    return proto


def to_qonnx(model, path=None, *, input_size=None, batch: int = 1, probes: bool = False):
    """Export to the QONNX dialect FINN reads (popcount and MV layers); see :func:`to_onnx`.

    The batch is fixed (FINN compiles for one shape), default 1. A hierarchical voter or a
    ``first`` tie is an error that says why FINN cannot take it.
    """
    proto = build(model, "qonnx", input_size=input_size, batch=batch, probes=probes)
    if path is not None:
        save(proto, path)
    return proto


def finn_notes(model) -> list:
    """What in ``model`` a QONNX file states exactly but FINN cannot build (one line each).

    Zero padding: a bipolar stream has no 0, so FINN's sliding-window lowering (``Im2Col``)
    refuses to pad a BIPOLAR tensor with 0; ``pad_value=+1`` or ``-1`` avoids it.
    """
    from ..nn import BinaryConv2d

    zero = [n for n, m in load_model(model).named_modules()
            if isinstance(m, BinaryConv2d) and m.pad_value == 0.0 and any(m.padding)]
    if not zero:
        return []
    return [f"{len(zero)} binary layer(s) use zero padding ({zero[0]}{', ...' if len(zero) > 1 else ''}): "
            "FINN's Im2Col cannot pad a bipolar stream with 0; for FINN convert with --pad-value 1 or -1"]


def run(exported, x, fmt: Optional[str] = None):
    """Run an exported file (path or proto) on images ``x``: ``{output name: array}``."""
    from .runtime import run_exported

    return run_exported(exported, x, fmt)


def check(model, exported, x, *, fmt: Optional[str] = None, atol: Optional[float] = None):
    """Run ``exported`` and ``model`` on ``x`` and compare; see :func:`bitvote.export.runtime.compare`."""
    from .runtime import compare

    return compare(load_model(model), exported, x, fmt=fmt, atol=atol)
