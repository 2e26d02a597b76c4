"""Functional core of the binary layers: ``binary_conv2d`` and the leaf sums behind voters.

A voter needs, per output, the sums of the valid terms of each of its leaves (SPEC.md). We
never build the n terms of an output. Leaves are consecutive runs of the flat term order,
so we cut the flat order into equal *blocks* that never straddle a leaf boundary and that a
convolution can sum directly:

* tap-major order (the default): a block is ``b`` consecutive channels of one kernel tap,
  with ``b = gcd(C, leaf boundaries)``. All blocks come out of one batched matmul over
  shifted views of the padded input: the same multiply-adds as the plain convolution.
* channel-major order (``cm:``): a block is ``b`` whole channels (a grouped convolution), or
  a run of taps inside one channel (a per-channel convolution with a tap mask).

Blocks are then summed into leaves, and :func:`bitvote.voter.reduce_votes` takes it from
there. The valid-term counts that zero padding needs come from the same block code run on
an all-ones input, so padding has a single implementation too.
"""

from __future__ import annotations

import contextlib
import math
import threading
from functools import reduce as _fold
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..binarize import binarize, binarize_weight, get_surrogate
from ..errors import BitvoteError
from ..voter import CM, Hierarchy
from ..voter.reduce import first_nonzero as _first_nonzero, first_true as _first_true, \
    flat_changes, flat_surrogate, reduce_votes, segment_starts as _starts, segment_sum as _segsum, vote_dtype
from ..voter.spec import sigma_is_flat, sigma_without_flat
from . import fastvote, packedvote, rowvote, taprows

__all__ = ["binary_conv2d", "conv_leaf_sums", "pad_binary", "reference_votes"]

_reference = threading.local()


@contextlib.contextmanager
def reference_votes():
    """Inside, every hierarchy's votes come from :func:`conv_leaf_sums` and
    :func:`bitvote.voter.reduce_votes` alone, and every popcount from the float conv, none of
    the kernel paths: what ``bitvote verify`` and the kernel tests compare those kernels with
    (this thread only)."""
    old = getattr(_reference, "on", False)
    _reference.on = True
    try:
        yield
    finally:
        _reference.on = old


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def pad_binary(xb: torch.Tensor, padding, pad_value: float) -> torch.Tensor:
    """Pad +/-1 activations with ``pad_value`` (0 = zero padding: those terms are invalid)."""
    ph, pw = _pair(padding)
    if ph == 0 and pw == 0:
        return xb
    return F.pad(xb, (pw, pw, ph, ph), value=float(pad_value))


def _out_size(size, k, stride, dilation):
    return (size - dilation * (k - 1) - 1) // stride + 1


class _TapViews(torch.autograd.Function):
    """Gather blocks of a channels-last padded input into leaf-major rows: (Lv, N, Ho, Wo, R, b).

    Block ``p`` (``b`` channels of one tap, flat order: ``p = tap * G + group``) lands in row
    ``p // R`` at slot ``p % R``, so a leaf of ``R`` blocks is one contiguous K = R*b run and
    one matmul sums it (R = 1: one block per row). A custom function so that the backward is
    one scatter-add per copied run into one buffer, not a zero-filled tensor per slice.
    """

    @staticmethod
    def forward(ctx, xcl, kh, kw, stride, dilation, Ho, Wo, G, R):
        b = xcl.shape[3] // G
        plan = taprows.runs(kh, kw, stride, dilation, Ho, Wo, G, R)
        ctx.plan, ctx.shape, ctx.b = plan, xcl.shape, b
        return taprows.gather(xcl, plan, kh * kw * G // R, Ho, Wo, R, b)

    @staticmethod
    def backward(ctx, g):
        return (taprows.scatter_add(g.new_zeros(ctx.shape), g, ctx.plan, ctx.b), None, None, None, None, None,
                None, None, None)


def _boundaries(sizes):
    out, acc = [], 0
    for s in sizes:
        acc += s
        out.append(acc)
    return out


def _blocks_tap(xb, wb, b, padding, pad_value, stride, dilation, Ho, Wo, want_first, R=1):
    """Tap-major sums of rows of ``R`` blocks of ``b`` channels of one tap: one batched matmul.

    Returns sums (P / R, N, Ho, Wo, Co), P = taps x C/b blocks in flat order (R = blocks per
    leaf: the rows are the leaves), and, when ``want_first``, the factors of each block's
    first term: its input (P / R, N, Ho, Wo, R) and its weight (P, Co); else None.
    """
    N, C = xb.shape[:2]
    Co, _, kh, kw = wb.shape
    T, G = kh * kw, C // b
    ph, pw = padding
    xcl = xb.permute(0, 2, 3, 1)
    if ph or pw:
        xcl = F.pad(xcl, (0, 0, pw, pw, ph, ph), value=float(pad_value))
    X = _TapViews.apply(xcl.contiguous(), kh, kw, stride, dilation, Ho, Wo, G, R)  # (P/R, N, Ho, Wo, R, b)
    rows, L = T * G // R, N * Ho * Wo
    W = wb.reshape(Co, C, T).permute(2, 1, 0).reshape(rows, R * b, Co)  # flat (tap, channel) order
    sums = torch.bmm(X.view(rows, L, R * b), W).view(rows, N, Ho, Wo, Co)
    first = (X[..., 0], W.view(T * G, b, Co)[:, 0, :]) if want_first else None
    return sums, first


def _leaf_first_tap(first, valid_blocks, per_leaf):
    """First valid term of each leaf from tap-block factors, without per-block tensors.

    Which terms are valid depends only on the output position, so the leaf's first valid block
    is an index per (leaf, Ho, Wo), found on the small block-validity tensor; its term is the
    product of one input value and one weight row, returned as those two factors. An
    all-padding leaf gets 0 (it abstains).
    """
    xf, wf = first  # (rows, N, Ho, Wo, R): rows are the leaves when R > 1, the blocks when R == 1
    R = xf.shape[4]
    starts = torch.tensor(_starts(per_leaf), device=xf.device)
    if valid_blocks is None:
        x1 = xf[..., :1] if R > 1 else xf.index_select(0, starts)
        return x1, wf.index_select(0, starts)[:, None, None, None, :]
    idx = _first_true(valid_blocks[:, 0, :, :, 0] > 0, per_leaf, 0)  # (leaves, Ho, Wo), absolute block
    if R > 1:
        x1 = xf.gather(4, (idx - starts.view(-1, 1, 1))[:, None, :, :, None].expand(-1, xf.shape[1], -1, -1, 1))
    else:
        x1 = xf.gather(0, idx[:, None, :, :, None].expand(-1, xf.shape[1], -1, -1, 1))
    return x1, wf[idx].unsqueeze(1)


def _blocks_cm_channels(xp, wb, bc, stride, dilation):
    """Channel-major blocks of ``bc`` whole channels: a grouped conv. (N, G, Co, Ho, Wo); dim 1."""
    N, C = xp.shape[:2]
    Co, _, kh, kw = wb.shape
    G = C // bc
    wg = wb.reshape(Co, G, bc, kh, kw).transpose(0, 1).reshape(G * Co, bc, kh, kw)
    y = F.conv2d(xp, wg, stride=stride, dilation=dilation, groups=G)
    return y.view(N, G, Co, y.shape[-2], y.shape[-1])


def _blocks_cm_taps(xp, wb, bt, stride, dilation):
    """Channel-major blocks of ``bt`` taps inside one channel: a per-channel conv with a tap mask.

    Returns (N, C * R, Co, Ho, Wo) with R = taps / bt; dim 1.
    """
    N, C = xp.shape[:2]
    Co, _, kh, kw = wb.shape
    T = kh * kw
    R = T // bt
    mask = torch.zeros(R, T, dtype=wb.dtype, device=wb.device)
    for r in range(R):
        mask[r, r * bt : (r + 1) * bt] = 1
    # weight[(c, r, o), 0, tap] = W[o, c, tap] * mask[r, tap]
    w = wb.reshape(Co, C, 1, T) * mask.view(1, 1, R, T)  # (Co, C, R, T)
    w = w.permute(1, 2, 0, 3).reshape(C * R * Co, 1, kh, kw)
    y = F.conv2d(xp, w, stride=stride, dilation=dilation, groups=C)
    return y.view(N, C * R, Co, y.shape[-2], y.shape[-1])


def conv_leaf_sums(
    xb: torch.Tensor,
    wb: torch.Tensor,
    hier: Hierarchy,
    stride=1,
    padding=0,
    dilation=1,
    pad_value: float = 0.0,
):
    """Leaf sums, valid counts and first terms of a binary conv for ``hier`` (one conv group).

    ``xb``: +/-1 activations (N, C, H, W); ``wb``: +/-1 weights (Co, C, kh, kw).
    Returns ``(sums, valid, first, dim)``: leaves along ``dim``; ``valid`` is ``None`` unless
    zero padding can make terms invalid; ``first`` is ``None`` unless the leaf tie is 'first'
    (then a tensor, or a pair whose broadcast product it is, as ``reduce_votes`` accepts).
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    N, C, H, W = xb.shape
    Co, _, kh, kw = wb.shape
    T = kh * kw
    Ho = _out_size(H + 2 * padding[0], kh, stride[0], dilation[0])
    Wo = _out_size(W + 2 * padding[1], kw, stride[1], dilation[1])
    zero_pad = float(pad_value) == 0.0 and (padding[0] > 0 or padding[1] > 0)
    want_first = hier.levels[0].tie.is_first
    leaves = hier.leaf_sizes
    bounds = _boundaries(leaves)

    # One block plan for the sums, the first terms and the valid counts alike.
    if hier.order != CM or len(leaves) == 1:
        plan, b = "tap", _fold(math.gcd, bounds, C)
    elif all(x % T == 0 for x in bounds) and not want_first:
        plan, b = "channels", _fold(math.gcd, [x // T for x in bounds], C) * T
    else:
        # Under 'first' every block is a single term, so a block's first term is its sum.
        plan, b = "taps", 1 if want_first else _fold(math.gcd, bounds, T)
    per_leaf = [sz // b for sz in leaves]

    # Tap plan with equal leaves: one matmul row per leaf (K = leaf size), no block sums.
    R = per_leaf[0] if plan == "tap" and len(set(per_leaf)) == 1 else 1

    def on(x, w, first, rows=1):
        """Block sums (rows of ``rows`` blocks; first terms too) for input x / weight w."""
        if plan == "tap":
            s, f = _blocks_tap(x, w, b, padding, pad_value, stride, dilation, Ho, Wo, first, rows)
            return s, f, 0
        xp = pad_binary(x, padding, pad_value)
        if plan == "channels":
            return _blocks_cm_channels(xp, w, b // T, stride, dilation), None, 1
        s = _blocks_cm_taps(xp, w, b, stride, dilation)
        return s, (s if first else None), 1

    sums, first, dim = on(xb, wb, want_first, R)
    dt = vote_dtype(hier, sums.dtype)
    sums = sums.to(dt)
    valid = None
    if zero_pad:
        # Counts must be exact whatever precision the sums use: always fp32. Per block: the
        # 'first' tie needs to know which blocks of a leaf are padding.
        ones_x = torch.ones((1, C, H, W), dtype=torch.float32, device=xb.device)
        ones_w = torch.ones((1, C, kh, kw), dtype=torch.float32, device=wb.device)
        valid, _, _ = on(ones_x, ones_w, False)
    if first is not None:
        if plan == "tap":  # kept as its two factors: the vote multiplies them on the fly
            first = tuple(f.to(dt) for f in _leaf_first_tap(first, valid, per_leaf))
        else:
            if any(p != 1 for p in per_leaf):
                live = first if valid is None else first * (valid > 0).to(first.dtype)
                first = _first_nonzero(live, per_leaf, dim)
            first = first.to(dt)
    if any(p != 1 for p in per_leaf):
        if R == 1:
            sums = _segsum(sums, per_leaf, dim)
        if valid is not None:
            valid = _segsum(valid, per_leaf, dim)
    return sums, valid, first, dim


def _sign_exact_autocast_dtype(device_type: str) -> torch.dtype:
    """The dtype for the +/-1 GEMMs behind a vote: fp32, or autocast's bf16/fp16 on the CPU.

    +/-1 inputs are exact in bf16/fp16 and oneDNN accumulates their products in fp32, so the
    rounded sums keep their sign and their zeros: votes and ties stay exact (SPEC.md). The
    votes themselves are taken in fp32, or in this dtype where every sum of the hierarchy is
    exact in it (:func:`bitvote.voter.vote_dtype`: small leaves). Only the surrogate sees
    rounded magnitudes. On CUDA, cuBLAS may reduce in low precision, so sums stay fp32 there.
    """
    if device_type == "cpu" and torch.is_autocast_enabled(device_type):
        dt = torch.get_autocast_dtype(device_type)
        if dt in (torch.bfloat16, torch.float16):
            return dt
    return torch.float32


def _mv_first_term(xb, wb, groups, stride, padding, dilation, pad_value, out_hw):
    """The first valid term of every output of a one-leaf voter: (N, Co, Ho, Wo), 0 if none
    (for one conv group, as the pair of an input and a weight factor whose product it is).

    In tap-major order it is channel 0 (of the conv group) at the first tap whose pixel is
    not zero padding; that tap depends only on the output position, so the term is one input
    value times one weight, gathered once: no pass over the n terms.
    """
    N, C, H, W = xb.shape
    Co, cin, kh, kw = wb.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    Ho, Wo = out_hw
    dev = xb.device
    rows = torch.arange(Ho, device=dev)[None, :] * sh + torch.arange(kh, device=dev)[:, None] * dh  # padded coords
    cols = torch.arange(Wo, device=dev)[None, :] * sw + torch.arange(kw, device=dev)[:, None] * dw
    if float(pad_value) == 0.0:
        vr = (rows >= ph) & (rows < ph + H)
        vc = (cols >= pw) & (cols < pw + W)
        ok = (vr[:, None, :, None] & vc[None, :, None, :]).reshape(kh * kw, Ho, Wo)
        t0 = ok.to(torch.uint8).argmax(0)  # (Ho, Wo); no valid tap: the output abstains anyway
    else:
        t0 = torch.zeros((Ho, Wo), dtype=torch.long, device=dev)
    i0, j0 = t0 // kw, t0 % kw
    r = rows[i0, torch.arange(Ho, device=dev)[:, None]]
    c = cols[j0, torch.arange(Wo, device=dev)[None, :]]
    x0 = pad_binary(xb[:, ::cin], (ph, pw), pad_value)  # channel 0 of every conv group
    wf = wb[:, 0].reshape(Co, kh * kw)[:, t0]  # (Co, Ho, Wo)
    if groups == 1:  # the broadcast pair: the vote multiplies it on the fly
        return x0[:, :, r, c], wf  # (N, 1, Ho, Wo), (Co, Ho, Wo)
    xf = x0[:, :, r, c].repeat_interleave(Co // groups, dim=1)  # (N, Co, Ho, Wo)
    return xf * wf


def _use_native(voter: Hierarchy, xb: torch.Tensor, surrogate, cout: int, cin: int) -> bool:
    """Whether the packed-bit C kernels (:mod:`bitvote.nn.fastvote`) take this voter layer."""
    if not fastvote.enabled() or not fastvote.supports(get_surrogate(surrogate), xb.device):
        return False
    if not fastvote.pays(voter, cout, cin):
        return False
    if torch.compiler.is_compiling():  # an opaque C call would break the outer graph
        return False
    return fastvote.available()


def _packed_votes(xb, wb, stride, padding, dilation, pad_value) -> bool:
    """Whether this pass's votes need no graph and the packed conv kernels take them."""
    if torch.is_grad_enabled() and (xb.requires_grad or wb.requires_grad):
        return False
    return packedvote.takes(xb, wb, _pair(stride), _pair(padding), _pair(dilation), pad_value)


class _PackedPopcount(torch.autograd.Function):
    """The popcount of +/-1 input and weights from packed bits; the backward is the float
    conv's (the same call autograd makes for ``F.conv2d``), so gradients do not change."""

    @staticmethod
    def forward(ctx, xb, wb, words, stride, padding, out_hw, scale):
        ctx.save_for_backward(xb, wb, scale)
        ctx.stride, ctx.padding = stride, padding
        return packedvote.conv_sums(words, wb, stride, padding, out_hw, scale)

    @staticmethod
    def backward(ctx, g):  # differentiable again (convolution_backward has a derivative)
        xb, wb, scale = ctx.saved_tensors
        if scale is not None:  # the detached per-channel scale: what the product's backward does
            g = g * scale.to(g.dtype).view(1, -1, 1, 1)
        gx, gw, _ = torch.ops.aten.convolution_backward(
            g, xb, wb, None, list(ctx.stride), list(ctx.padding), [1, 1], False, [0, 0], 1,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        return gx, gw, None, None, None, None, None


def _popcount(xb: torch.Tensor, wb: torch.Tensor, stride, padding, dilation, groups,
              scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.conv2d`` of +/-1 input and weights under zero padding (exact integers), times the
    detached per-channel ``scale`` if given; the packed kernels compute it faster where
    :func:`packedvote.sums_pay` says so, the scale fused into their output pass."""
    st, pd, dl = _pair(stride), _pair(padding), _pair(dilation)
    if (groups == 1 and not getattr(_reference, "on", False) and not torch.is_autocast_enabled(xb.device.type)
            and packedvote.sums_pay(xb, wb, st, pd, dl)):
        words = packedvote.pack_if_binary(xb)
        if words is not None:
            out_hw = tuple(_out_size(xb.shape[2 + i] + 2 * pd[i], wb.shape[2 + i], st[i], 1) for i in range(2))
            return _PackedPopcount.apply(xb, wb, words, st, pd, out_hw, None if scale is None else scale.detach())
    s = F.conv2d(xb, wb.to(xb.dtype), None, stride, padding, dilation, groups)
    return s if scale is None else s * scale.to(s.dtype).view(1, -1, 1, 1)


def _out_layout(y: torch.Tensor, dim: int) -> torch.Tensor:
    """Votes come out as (N, Ho, Wo, Co) from tap blocks (dim 0) or (N, Co, Ho, Wo) (dim 1)."""
    return y.permute(0, 3, 1, 2) if dim == 0 else y


def binary_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    *,
    voter: Optional[Hierarchy] = None,
    pad_value: float = 0.0,
    weight_scale: bool = False,
    input_surrogate="ste",
    surrogate="approxsign",
    sigma="fanin",
    binary_weights: bool = True,
) -> torch.Tensor:
    """Binary convolution per SPEC.md: binarize ``x`` and ``weight``, then popcount or vote.

    ``voter=None`` returns the sums ``s`` (times the per-channel ``mean|W|`` when
    ``weight_scale``); a :class:`~bitvote.voter.Hierarchy` returns +/-1 votes (or a ``P``
    root's count) in fp32, computed exactly even under autocast (see ``vote_dtype``).
    ``binary_weights=False`` keeps the real weights (step 1 of two-step training: binary
    activations, real weights); only a popcount output is defined then (SPEC.md).
    """
    # input_surrogate=None: the caller hands over +/-1 already (a Sign/RSign right before the
    # layer, as in every bitvote model); binarizing again would change nothing but cost passes.
    xb = x if input_surrogate is None else binarize(x, input_surrogate)
    if not binary_weights:
        if voter is not None:
            raise BitvoteError("a voter needs binary weights: this layer has real weights (step 1 of two-step training)")
        if float(pad_value) == 0.0:
            return F.conv2d(xb, weight.to(xb.dtype), None, stride, padding, dilation, groups)
        return F.conv2d(pad_binary(xb, padding, pad_value), weight.to(xb.dtype), None, stride, 0, dilation, groups)
    wb, alpha = binarize_weight(weight, weight_scale)
    if voter is None:
        if float(pad_value) == 0.0:
            return _popcount(xb, wb, stride, padding, dilation, groups, alpha)
        return _popcount(pad_binary(xb, padding, pad_value), wb, stride, 0, dilation, groups, alpha)
    gemm_dtype = _sign_exact_autocast_dtype(x.device.type)
    with torch.autocast(device_type=x.device.type, enabled=False):
        xb, wb = xb.to(gemm_dtype), wb.to(gemm_dtype)
        if voter.is_mv and (not voter.levels[0].tie.is_first or fastvote.wanted()):
            # Fast path: one leaf over every term is the plain convolution.
            s, valid = _sums_and_valid(xb, wb, stride, padding, dilation, groups, pad_value)
            first = None
            if voter.levels[0].tie == "first":
                first = _mv_first_term(xb.detach(), wb.detach(), groups, stride, padding, dilation, pad_value,
                                       s.shape[-2:])
                first = (first[0].unsqueeze(1), first[1]) if isinstance(first, tuple) else first.unsqueeze(1)
            return reduce_votes(voter, s.unsqueeze(1), None if valid is None else valid.unsqueeze(1), first,
                                dim=1, surrogate=surrogate, sigma=sigma_without_flat(sigma))
        if sigma_is_flat(sigma) and flat_changes(voter):
            # Exact votes without a graph, and one MV's backward at the popcount: the cost of a
            # popcount layer plus a forward-only vote, whatever the tree.
            with torch.no_grad():
                votes = _hier_votes(xb.detach(), wb.detach(), voter, stride, padding, dilation, groups, pad_value,
                                    surrogate, sigma_without_flat(sigma))
            s, valid = _sums_and_valid(xb, wb, stride, padding, dilation, groups, pad_value)
            return flat_surrogate(votes, s, None if valid is None else valid.expand_as(s), voter.n, surrogate, sigma)
        return _hier_votes(xb, wb, voter, stride, padding, dilation, groups, pad_value, surrogate,
                           sigma_without_flat(sigma))


def _sums_and_valid(xb, wb, stride, padding, dilation, groups, pad_value):
    """The popcount ``s`` (fp32) of every output and, under zero padding, its valid-term counts."""
    s = _popcount(pad_binary(xb, padding, pad_value) if pad_value != 0 else xb, wb, stride,
                  0 if pad_value != 0 else padding, dilation, groups).float()
    valid = None
    if float(pad_value) == 0.0 and any(p > 0 for p in _pair(padding)):
        cin = xb.shape[1] // groups
        ones_x = torch.ones((1, cin) + tuple(xb.shape[2:]), device=xb.device)
        valid = F.conv2d(ones_x, torch.ones((1,) + tuple(wb.shape[1:]), device=wb.device), None, stride, padding,
                         dilation)
    return s, valid


def _hier_votes(xb, wb, voter, stride, padding, dilation, groups, pad_value, surrogate, sigma):
    """Votes of a hierarchy, per conv group: the packed-bit kernels where they pay, else leaf sums."""
    outs = []
    cin, cout = xb.shape[1] // groups, wb.shape[0] // groups
    kernels = not getattr(_reference, "on", False)
    if kernels and _packed_votes(xb, wb, stride, padding, dilation, pad_value):
        st, pd = _pair(stride), _pair(padding)
        for g in range(groups):
            outs.append(packedvote.conv_votes(xb[:, g * cin : (g + 1) * cin], wb[g * cout : (g + 1) * cout], voter,
                                              st, pd, pad_value))
        return outs[0] if groups == 1 else torch.cat(outs, 1)
    native = kernels and _use_native(voter, xb, surrogate, cout, cin)
    rows = (kernels and rowvote.enabled() and rowvote.supports(voter, (cout, cin) + tuple(wb.shape[2:]))
            and not torch.compiler.is_compiling()  # its tables come from an autograd probe
            and not (native and fastvote.bit_sliced(voter, cin)))  # faster where it runs
    if rows or native:
        st, pd, dl = _pair(stride), _pair(padding), _pair(dilation)
        Ho = _out_size(xb.shape[2] + 2 * pd[0], wb.shape[2], st[0], dl[0])
        Wo = _out_size(xb.shape[3] + 2 * pd[1], wb.shape[3], st[1], dl[1])
        kernel = rowvote.conv_votes if rows else fastvote.conv_votes
        for g in range(groups):
            outs.append(kernel(xb[:, g * cin : (g + 1) * cin], wb[g * cout : (g + 1) * cout], voter,
                               st, pd, dl, pad_value, Ho, Wo, get_surrogate(surrogate), sigma))
        return outs[0] if groups == 1 else torch.cat(outs, 1)
    for g in range(groups):
        sums, valid, first, dim = conv_leaf_sums(
            xb[:, g * cin : (g + 1) * cin], wb[g * cout : (g + 1) * cout], voter, stride, padding, dilation, pad_value
        )
        y = reduce_votes(voter, sums, valid, first, dim=dim, surrogate=surrogate, sigma=sigma)
        outs.append(_out_layout(y.float(), dim))
    return outs[0] if groups == 1 else torch.cat(outs, 1)
