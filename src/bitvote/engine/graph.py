"""Compile a trained model into an engine graph (``.bvm``) and run it.

An engine graph is a plain dict (tensors and plain types, so ``torch.load(...,
weights_only=True)`` reads it) describing the model block by block:

* binary convs: weights as packed sign bits (1 bit per weight), the voter as its resolved
  levels, and a fused epilogue: popcount -> ``s * (alpha * bn_scale) + bn_shift``; an ``M``
  voter -> ``bn(+1)`` / ``bn(-1)`` per channel; a ``P`` root -> BN folded as an affine map;
  and, where a binarization follows the BN directly (XNOR-Net's first conv), integer
  thresholds so the next conv reads packed bits without unpacking;
* real-valued ops where the model has them: the stem conv with its BN folded, the shortcuts
  (average pool + 1x1 conv with BN folded), RSign shifts (folded into the packer), RPReLU and
  the pooled FC head, run with PyTorch.

Supported models: the ResNet-18 BNN family (``reactnet18``, ``birealnet18``, ``xnornet18``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import BitvoteError
from ..nn import BinaryConv2d, RPReLU, RSign, Sign
from ..voter import Hierarchy
from ..packed.conv import PackedConv
from ..packed.pack import pack

__all__ = ["compile_model", "EngineModel", "load_model", "load_checkpoint", "save", "load", "FORMAT"]

FORMAT = "bitvote-engine/1"


# --------------------------------------------------------------------------------------------
# Loading a trained model
# --------------------------------------------------------------------------------------------


def load_checkpoint(path) -> nn.Module:
    """Rebuild a model from a checkpoint ``{"model": state_dict, "config": model.config}``."""
    from ..train import checkpoint as C

    ck = C.read(path)
    model = C.model_from_checkpoint(ck, path)
    if not C.binary_weights(model):
        raise BitvoteError(f"checkpoint {path} has real weights (step 1 of two-step training): "
                           "the engine runs binary weights; train step 2 first")
    return model.eval()


def load_model(model_or_path) -> nn.Module:
    """A model object passes through (set to eval); a path is read with :func:`load_checkpoint`."""
    if isinstance(model_or_path, nn.Module):
        return model_or_path.eval()
    return load_checkpoint(model_or_path)


# --------------------------------------------------------------------------------------------
# Compile
# --------------------------------------------------------------------------------------------


def _bn_fold(bn: nn.BatchNorm2d):
    scale = bn.weight.detach() / torch.sqrt(bn.running_var.detach() + bn.eps)
    return scale, bn.bias.detach() - bn.running_mean.detach() * scale


@torch.no_grad()
def _bn_at(bn: nn.BatchNorm2d, values: torch.Tensor) -> torch.Tensor:
    """``bn`` itself applied to ``values`` (R,) in every channel: (Co, R)."""
    Co = bn.num_features
    y = bn(values.view(1, 1, -1, 1).expand(1, Co, -1, 1).contiguous().float())
    return y.view(Co, -1)


def _pack_weight(w: torch.Tensor) -> torch.Tensor:
    bits = (w.detach() >= 0).numpy().astype(np.uint8).reshape(-1)
    return torch.from_numpy(np.packbits(bits, bitorder="little"))


def unpack_weight(by: torch.Tensor, shape) -> torch.Tensor:
    """The bool weight bits of a compiled layer (``wbits``, little-endian packed) in ``shape``."""
    n = int(np.prod(shape))
    bits = np.unpackbits(by.numpy(), bitorder="little")[:n]
    return torch.from_numpy(bits.astype(bool)).view(*shape)


def _binary_conv(conv: BinaryConv2d, bn: nn.BatchNorm2d, name: str, then_sign: bool) -> Dict:
    """A binary conv + the BN after it, as a graph node with its fused epilogue."""
    if conv.groups != 1 or conv.dilation != (1, 1):
        raise BitvoteError(f"layer {name!r}: the engine runs groups=1, dilation=1 convs only")
    if conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1]:
        raise BitvoteError(f"layer {name!r}: the engine needs equal strides and paddings in both directions")
    h = conv.hierarchy
    w, alpha = conv.binary_weight()  # exactly the bits (and scale) the PyTorch forward uses
    node = {"name": name, "shape": list(w.shape), "wbits": _pack_weight(w), "stride": conv.stride[0],
            "padding": conv.padding[0], "pad_value": conv.pad_value, "hier": None if h is None else h.to_dict()}
    n = w[0].numel()
    if h is None:
        alpha = alpha if alpha is not None else torch.ones(w.shape[0])
        r = torch.arange(-n, n + 1, dtype=torch.float32)
        values = r.view(1, -1) * alpha.view(-1, 1)  # what the layer hands to BN: s * alpha
    elif h.root == "P":
        alpha = torch.ones(w.shape[0])
        top = sum(h.levels[-1].groups)  # the root fan-in
        r = torch.arange(-top, top + 1, dtype=torch.float32)
        values = r.view(1, -1).expand(w.shape[0], -1)
    else:
        r = torch.tensor([-1.0, 1.0])
        values = r.view(1, -1).expand(w.shape[0], -1)
    if then_sign:
        # BN + sign -> integer thresholds, found by running the BN on every possible result.
        y = torch.stack([_bn_at(bn, values[o])[o] for o in range(w.shape[0])])  # (Co, R)
        bits = y >= 0
        thr, dirs = [], []
        ri = r.to(torch.int64)
        for o in range(w.shape[0]):
            b = bits[o]
            if b.all() or not b.any():
                thr.append(int(b.all())), dirs.append(0)
            elif (b[1:].int() >= b[:-1].int()).all():  # non-decreasing in r
                thr.append(int(ri[b.nonzero()[0, 0]])), dirs.append(1)
            elif (b[1:].int() <= b[:-1].int()).all():
                thr.append(int(ri[b.nonzero()[-1, 0]])), dirs.append(-1)
            else:  # pragma: no cover - BN is monotone
                raise BitvoteError(f"layer {name!r}: BN + sign is not monotone in channel {o}")
        node.update(epilogue="bits", thr=torch.tensor(thr, dtype=torch.int32), dir=torch.tensor(dirs, dtype=torch.int32))
    elif h is not None and h.root == "M":
        y = _bn_at(bn, torch.tensor([1.0, -1.0]))
        node.update(epilogue="select", a=y[:, 0].clone(), b=y[:, 1].clone())
    else:
        scale, shift = _bn_fold(bn)
        node.update(epilogue="affine", a=(alpha * scale).float(), b=shift.float())
    return node


def _shortcut(mod: nn.Module) -> Optional[Dict]:
    if isinstance(mod, nn.Identity):
        return None
    pool = conv = bn = None
    for m in mod:
        if isinstance(m, nn.AvgPool2d):
            pool = int(m.stride if isinstance(m.stride, int) else m.stride[0])
        elif isinstance(m, nn.Conv2d):
            conv = m
        elif isinstance(m, nn.BatchNorm2d):
            bn = m
    scale, shift = _bn_fold(bn)
    return {"pool": pool or 0, "stride": conv.stride[0],
            "weight": (conv.weight.detach() * scale.view(-1, 1, 1, 1)).clone(), "bias": shift.clone()}


def _rsign_shift(m) -> Optional[torch.Tensor]:
    return m.shift.bias.detach().reshape(-1).clone() if isinstance(m, RSign) else None


@torch.no_grad()
def compile_model(model_or_path) -> Dict:
    """A trained model (or checkpoint path) -> engine graph dict (see the module docstring)."""
    model = load_model(model_or_path)
    kind = getattr(model, "kind", None)
    bn = getattr(model, "config", {}).get("bn", "bn")
    if bn != "bn":
        raise BitvoteError(f"the engine compiles bn='bn' models only; this one has bn={bn!r}")
    if kind not in ("reactnet", "birealnet", "xnornet"):
        raise BitvoteError("the engine compiles the binary ResNet-18 family (reactnet18, birealnet18, "
                           f"xnornet18); got {type(model).__name__}{'/' + kind if kind else ''}")
    names = {m: n for n, m in model.named_modules()}
    sconv, sbn = model.stem[0], model.stem[1]
    scale, shift = _bn_fold(sbn)
    graph = {
        "format": FORMAT, "kind": kind, "config": dict(getattr(model, "config", {})),
        "stem": {"weight": (sconv.weight.detach() * scale.view(-1, 1, 1, 1)).clone(), "bias": shift.clone(),
                 "stride": sconv.stride[0], "padding": sconv.padding[0]},
        "blocks": [],
        "fc": {"weight": model.fc.weight.detach().clone(), "bias": model.fc.bias.detach().clone()},
    }
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for blk in stage:
            if kind == "xnornet":
                b = {"convs": [_binary_conv(blk.conv1, blk.bn1, names[blk.conv1], then_sign=True),
                               _binary_conv(blk.conv2, blk.bn2, names[blk.conv2], then_sign=False)],
                     "shifts": [None, None]}
            else:
                b = {"convs": [_binary_conv(blk.conv, blk.bn, names[blk.conv], then_sign=False)],
                     "shifts": [_rsign_shift(blk.sign)]}
                if isinstance(blk.act, RPReLU):
                    b["act"] = {"shift_in": blk.act.shift_in.bias.detach().reshape(-1).clone(),
                                "prelu": blk.act.prelu.weight.detach().clone(),
                                "shift_out": blk.act.shift_out.bias.detach().reshape(-1).clone()}
            b["shortcut"] = _shortcut(blk.shortcut)
            graph["blocks"].append(b)
    return graph


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def save(graph: Dict, path) -> None:
    """Write an engine graph atomically, with a digest of its contents (:mod:`bitvote.integrity`)."""
    import io

    from ..io import atomic_write_bytes
    from ..integrity import seal

    buf = io.BytesIO()
    torch.save(seal(graph), buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load(path) -> "EngineModel":
    """Read a ``.bvm`` file into a runnable :class:`EngineModel`."""
    p = Path(path)
    if not p.is_file():
        raise BitvoteError(f"engine graph {str(path)!r} does not exist")
    try:
        g = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise BitvoteError(f"engine graph {str(path)!r} is not readable: {str(e).splitlines()[0]}") from None
    if not isinstance(g, dict) or g.get("format") != FORMAT:
        raise BitvoteError(f"{str(path)!r} is not a bitvote engine graph ({FORMAT})")
    from ..integrity import note_unsealed, unseal

    g, sealed = unseal(g, repr(str(path)), "engine graph")
    if not sealed:
        note_unsealed(repr(str(path)), "engine graph")
    try:
        return EngineModel(g)
    except BitvoteError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        raise BitvoteError(f"engine graph {str(path)!r} is malformed ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None


def binary_sizes(graph: Dict, model: Optional[nn.Module] = None) -> Dict[str, int]:
    """Bytes of the binary layers: packed in the graph vs float32 weights (+ BN) in the model."""
    packed = sum(c["wbits"].numel() for b in graph["blocks"] for c in b["convs"])
    epi = sum(sum(c[k].numel() * 4 for k in ("a", "b", "thr", "dir") if k in c) for b in graph["blocks"] for c in b["convs"])
    floats = sum(int(np.prod(c["shape"])) * 4 for b in graph["blocks"] for c in b["convs"])
    return {"packed_weight_bytes": packed, "epilogue_bytes": epi, "float_weight_bytes": floats,
            "ratio_weights": floats / max(packed, 1), "ratio_with_epilogue": floats / max(packed + epi, 1)}


# --------------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------------


class EngineModel:
    """A compiled graph ready to run: binary convs on packed bits, real ops in PyTorch."""

    def __init__(self, graph: Dict):
        self.graph = graph
        self.kind = graph["kind"]
        self.layers: List[PackedConv] = []
        self.blocks = []
        for b in graph["blocks"]:
            convs = []
            for c in b["convs"]:
                pc = self._make_conv(c)
                convs.append(pc)
                self.layers.append(pc)
            act = b.get("act")
            if act is not None:  # RPReLU fused into the float epilogue of the block's last conv
                convs[-1].fuse_rprelu(act["shift_in"], act["prelu"], act["shift_out"])
            self.blocks.append((b, convs))

    def _make_conv(self, c: Dict):
        """One graph node -> a runnable conv (the GPU path overrides this and :meth:`_pack`)."""
        pc = PackedConv(unpack_weight(c["wbits"], c["shape"]), c["stride"], c["padding"], c["pad_value"],
                        None if c["hier"] is None else Hierarchy.from_dict(c["hier"]), c["name"])
        return pc.epilogue(c["epilogue"], a=c.get("a"), b=c.get("b"), thr=c.get("thr"), dir=c.get("dir"))

    def _pack(self, x, shift, threads):
        return pack(x, shift, threads)

    def pack_input(self, x: torch.Tensor, threads: int = 1):
        """``x``'s sign bits in the layout this engine's layers read (no RSign shift)."""
        return self._pack(x, None, threads)

    def engine_words(self, bits):
        """Packed bits this engine produced, as the CPU engine's uint64 words (here: as they are).

        :func:`bitvote.engine.verify.verify` compares every engine through this, so an engine
        with another word layout (the GPU path) converts here and nowhere else."""
        return bits

    @staticmethod
    def _shortcut(sc, x):
        if sc is None:
            return x
        if sc["pool"]:
            x = F.avg_pool2d(x, 2, sc["pool"])
        return F.conv2d(x, sc["weight"], sc["bias"], sc["stride"]).contiguous(memory_format=torch.channels_last)

    @staticmethod
    def _conv(conv, xw, threads, isa, residual):
        """A block's last conv with its residual; the output overwrites the residual where the
        conv allows it (the block's float input is packed already: nothing reads it later; the
        image itself never reaches here, the stem's output does)."""
        if getattr(conv, "inplace_residual", False):
            return conv(xw, threads, isa, residual=residual, inplace=True)
        return conv(xw, threads, isa, residual=residual)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, threads: int = 1, trace: Optional[list] = None, isa=None) -> torch.Tensor:
        """Logits for images ``x`` (N, 3, H, W). ``trace`` (a list) receives the packed input of
        every binary layer, in order, for verify."""
        g = self.graph
        # channels-last throughout: the binary convs' float epilogues write it, the packer reads
        # it contiguously, and PyTorch's elementwise ops stay on their fast path (no mixed layouts).
        # The stem reads a channels-last image (3 channels: a small copy) so that its 64-channel
        # output is channels-last as computed, not copied (8 MB at batch 32, fresh pages each).
        x = x.float().contiguous(memory_format=torch.channels_last)
        x = F.conv2d(x, g["stem"]["weight"], g["stem"]["bias"], g["stem"]["stride"], g["stem"]["padding"])
        x = x.contiguous(memory_format=torch.channels_last)
        for b, convs in self.blocks:
            if self.kind == "xnornet":
                xw = self._pack(x, None, threads)
                if trace is not None:
                    trace.append(xw)
                mid = convs[0](xw, threads, isa)  # packed bits: BN + sign folded into thresholds
                if trace is not None:
                    trace.append(mid)
                y = self._conv(convs[1], mid, threads, isa, self._shortcut(b["shortcut"], x))
            else:
                xw = self._pack(x, b["shifts"][0], threads)
                if trace is not None:
                    trace.append(xw)
                # the shortcut add and RPReLU run in the conv's epilogue (same float ops, same order)
                y = self._conv(convs[0], xw, threads, isa, self._shortcut(b["shortcut"], x))
            x = y
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return F.linear(x, g["fc"]["weight"], g["fc"]["bias"])
