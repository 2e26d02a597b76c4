"""Counted kernel-row votes (``cm:P(M{kw})``) as dense GEMMs, without leaf tensors.

In channel-major order a leaf of ``kw`` terms is one kernel row of one input channel, and a
``P`` root counts those leaves' votes (MajorityNets' approximate popcount). A leaf's vote is
a function of its terms a_i = x_i w_i in {-1, +1} (0 where padding abstains), so it is a
multilinear polynomial in them: maj(a0, a1, a2) = (a0 + a1 + a2 - a0 a1 a2) / 2 when all
three are valid. Each monomial prod_{i in S} a_i = (prod_S x_i)(prod_S w_i) splits into an
input product and a weight product, so the root's count over channels and rows is one GEMM of
weight products against input products, and the surrogate derivative (a function of the leaf
sum, hence a polynomial too) makes both gradients GEMMs as well: about 4/3 of a plain conv's
multiply-adds per pass at kw = 3, where the leaf tensors hold C * kh sums per output.

Which terms are valid depends only on the output position (zero padding), so positions fall
into a few classes with one polynomial per kernel row each; the interior is one class.
The polynomials are read off :func:`bitvote.voter.reduce_votes` itself on every sign pattern
of one leaf (a Walsh-Hadamard transform), so ties, ``first``, abstention, every sigma rule and
surrogate mean exactly what they mean there. Counts are rounded to the integers they are;
gradients equal the chain rule up to fp32 summation order. On a CPU where the bit-sliced
backward (:mod:`.chanvote`) takes these trees, the layer runs there instead (faster at every
shape measured); this path serves the other CPUs and devices.
"""

from __future__ import annotations

import os
from itertools import product
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from ..binarize import Surrogate
from ..voter import CM, Hierarchy, reduce_votes
from ..voter.spec import Level, Tie
from . import packedvote

__all__ = ["supports", "enabled", "conv_votes"]

#: rows of up to this many taps (2^kw monomials per row)
_MAX_ROW = 4

#: from this many output positions the interior runs as convolutions (below, NCHW rows are
#: too short for the element-wise passes: the block GEMMs win, measured at 4x4 and 8x8)
_CONV_POSITIONS = 128


def enabled() -> bool:
    """``BITVOTE_ROW_VOTE=0`` sends these layers to the general paths (for A/B timing)."""
    return os.environ.get("BITVOTE_ROW_VOTE", "1") != "0"


def supports(voter: Hierarchy, weight_shape) -> bool:
    """Whether ``voter`` is a count of kernel-row votes on a weight of ``weight_shape``."""
    _, C, kh, kw = weight_shape
    if voter.order != CM or voter.root != "P" or voter.depth != 2 or not 2 <= kw <= _MAX_ROW:
        return False
    leaf, root = voter.levels
    return leaf.uniform and leaf.groups[0] == kw and len(leaf.groups) == C * kh and len(root.groups) == 1


_TABLES: Dict[tuple, Dict[int, Tuple[Dict[int, float], Dict[int, float]]]] = {}


def _tables(kh: int, kw: int, tie: Tie, surrogate: Surrogate, sigma):
    """``{valid-tap mask V: (vote coefficients, derivative coefficients)}`` of one leaf.

    Coefficients are keyed by monomial (a tap mask S within V): vote(a) = sum_S c_S prod_S a_i
    and d vote / d s = sum_S k_S prod_S a_i, exact on {-1, +1}^V.
    """
    key = (kh, kw, int(tie.code), type(surrogate).__name__, tuple(sorted(vars(surrogate).items())), str(sigma))
    if key in _TABLES:
        return _TABLES[key]
    # a probe tree with one input channel: leaf 0 holds the pattern, the other rows abstain
    probe = Hierarchy(n=kh * kw, levels=(Level((kw,) * kh, tie), Level((kh,), Tie.PLUS)), order=CM, root="P")
    rows: List[Tuple[int, Tuple[int, ...]]] = []
    for mask in range(1 << kw):
        taps = [i for i in range(kw) if mask >> i & 1]
        for signs in product((-1, 1), repeat=len(taps)):
            a = [0] * kw
            for i, v in zip(taps, signs):
                a[i] = v
            rows.append((mask, tuple(a)))
    with torch.inference_mode(False), torch.enable_grad():  # the layer may run under no_grad
        vote, deriv, a = _probe(probe, rows, kw, kh, tie, surrogate, sigma)
    tables = {}
    for mask in range(1 << kw):
        sel = [b for b, (m, _) in enumerate(rows) if m == mask]
        coef_v, coef_k = {}, {}
        for S in (S for S in range(1 << kw) if S & mask == S):
            chi = torch.ones(len(sel), dtype=torch.float64)
            for i in range(kw):
                if S >> i & 1:
                    chi = chi * a[sel, i]
            cv, ck = float((vote[sel] * chi).mean()), float((deriv[sel] * chi).mean())
            if abs(cv) > 1e-12:
                coef_v[S] = cv
            if abs(ck) > 1e-12:
                coef_k[S] = ck
        tables[mask] = (coef_v, coef_k)
    _TABLES[key] = tables
    return tables


def _probe(probe, rows, kw, kh, tie, surrogate, sigma):
    """Votes and d vote / d s of leaf 0 of ``probe`` for every pattern in ``rows``, and the terms."""
    B = len(rows)
    a = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    sums = torch.zeros(B, kh, dtype=torch.float64)
    sums[:, 0] = a.sum(1)
    sums.requires_grad_(True)
    valid = torch.zeros(B, kh, dtype=torch.float64)
    valid[:, 0] = torch.tensor([bin(m).count("1") for m, _ in rows], dtype=torch.float64)
    first = None
    if tie.is_first:
        first = torch.zeros(B, kh, dtype=torch.float64)
        for b, (_, t) in enumerate(rows):
            first[b, 0] = next((v for v in t if v != 0), 0)
    out = reduce_votes(probe, sums, valid, first, dim=1, surrogate=surrogate, sigma=sigma)
    (grad,) = torch.autograd.grad(out.sum(), sums)
    return out.detach(), grad[:, 0], a


_CLASSES: Dict[tuple, list] = {}


def _runs(keys):
    """Maximal runs of equal keys: ``[(key, start, stop)]``."""
    runs = []
    for j, k in enumerate(keys):
        if runs and runs[-1][0] == k and runs[-1][2] == j:
            runs[-1][2] = j + 1
        else:
            runs.append([k, j, j + 1])
    return [tuple(r) for r in runs]


def _classes(H, W, Ho, Wo, kh, kw, stride, padding, dilation, zero_pad):
    """Output positions in blocks that share their rows' valid-tap masks:
    ``[(masks per row, (oy0, oy1), (ox0, ox1))]`` (row validity depends on oy, tap validity on ox)."""
    key = (H, W, Ho, Wo, kh, kw, stride, padding, dilation, zero_pad)
    if key not in _CLASSES:
        full = (1 << kw) - 1
        if zero_pad:
            rows = [tuple(0 <= oy * stride[0] + ky * dilation[0] - padding[0] < H for ky in range(kh)) for oy in range(Ho)]
            cols = [sum(1 << i for i in range(kw) if 0 <= ox * stride[1] + i * dilation[1] - padding[1] < W)
                    for ox in range(Wo)]
        else:
            rows, cols = [(True,) * kh] * Ho, [full] * Wo
        blocks = [(tuple(c if r else 0 for r in rk), (y0, y1), (x0, x1))
                  for rk, y0, y1 in _runs(rows) for c, x0, x1 in _runs(cols)]
        _CLASSES[key] = blocks
    return _CLASSES[key]


def _prod(taps, ky: int, S: int, kw: int):
    """The product over the taps in mask S of row ``ky`` (``taps[ky][i]``); None for S = 0."""
    out = None
    for i in range(kw):
        if S >> i & 1:
            out = taps[ky][i] if out is None else out * taps[ky][i]
    return out


def _taps(xp, kh, kw, stride, dilation, ys, xs):
    """``[ky][kx]`` views (N, rows, cols, C) of the padded NCHW input ``xp`` under one block."""
    (y0, y1), (x0, x1) = ys, xs
    (sh, sw), (dh, dw) = stride, dilation
    return [[xp[:, :, y0 * sh + ky * dh : (y1 - 1) * sh + ky * dh + 1 : sh,
                x0 * sw + i * dw : (x1 - 1) * sw + i * dw + 1 : sw].permute(0, 2, 3, 1) for i in range(kw)]
            for ky in range(kh)]


def _chain_plan(V: int, kcoef: Dict[int, float], kw: int):
    """How the chain rule of a leaf with valid taps ``V`` reads per-monomial GEMM results.

    The surrogate derivative is a function of the leaf sum, so its coefficient k depends on a
    monomial's degree only. With a_i^2 = 1 on valid taps, x_i dL/dx_i = sum_U c(U, i) X_U Gu_U,
    where c(U, i) = k_{|U|-1} if i is in U else k_{|U|+1} (and likewise for w_i dL/dw_i).
    Returns ``[(U, common, delta)]``: every i in V takes ``common``, and i in U adds ``delta``.
    """
    k = {}
    for T, c in kcoef.items():
        k[bin(T).count("1")] = c
    plan = []
    for U in range(1 << kw):
        if U & V != U:
            continue
        m = bin(U).count("1")
        if U == V:
            common, delta = k.get(m - 1, 0.0), 0.0
        else:
            common, delta = k.get(m + 1, 0.0), k.get(m - 1, 0.0) - k.get(m + 1, 0.0)
        if common or delta:
            plan.append((U, common, delta))
    return plan


def _fill_products(buf, taps, need, kw):
    """Write the input products X_U of ``need`` [(row, U)] into consecutive channel slices of ``buf``."""
    C = taps[0][0].shape[-1]
    for j, (ky, U) in enumerate(need):
        dst = buf[..., j * C:(j + 1) * C]
        bits = [i for i in range(kw) if U >> i & 1]
        if not bits:
            dst.fill_(1.0)
        elif len(bits) == 1:
            dst.copy_(taps[ky][bits[0]])
        else:
            torch.mul(taps[ky][bits[0]], taps[ky][bits[1]], out=dst)
            for i in bits[2:]:
                dst.mul_(taps[ky][i])


def _weight_products(wt, need, kw, scale=None):
    """(len(need) * C, O): the weight products W_U of ``need`` stacked, each times ``scale[j]``."""
    C, O = wt[0][0].shape
    out = wt[0][0].new_ones(len(need) * C, O)
    for j, (ky, U) in enumerate(need):
        dst = out[j * C:(j + 1) * C]
        if U:
            dst.copy_(_prod(wt, ky, U, kw))
        if scale is not None:
            dst.mul_(scale[j])
    return out


class _RowVoteFn(torch.autograd.Function):
    """Counts of kernel-row votes from +/-1 inputs and weights; backward per the chain rule."""

    @staticmethod
    def forward(ctx, xb, wb, geometry, tables, voter):
        stride, padding, dilation, zero_pad, pad_value, Ho, Wo = geometry
        N, C, H, W = xb.shape
        O, _, kh, kw = wb.shape
        blocks = _classes(H, W, Ho, Wo, kh, kw, stride, padding, dilation, zero_pad)
        inner = _interior(blocks, tables, kh, kw, Ho * Wo)
        ctx.save_for_backward(xb, wb)
        ctx.geometry, ctx.tables, ctx.blocks, ctx.inner = geometry, tables, blocks, inner
        if packedvote.takes(xb, wb, stride, padding, dilation, pad_value):
            return packedvote.conv_votes(xb, wb, voter, stride, padding, pad_value)  # the same counts, faster
        xp = _padded(xb, padding, pad_value)
        wt = wb.permute(2, 3, 1, 0)  # (kh, kw, C, O): products are (C, O) blocks
        out = _interior_forward(xp, wb, geometry, inner) if inner is not None else xb.new_empty(N, O, Ho, Wo)
        for masks, ys, xs in blocks:
            if inner is not None and masks == inner.masks:
                continue
            taps = _taps(xp, kh, kw, stride, dilation, ys, xs)
            need, scale, const = [], [], 0.0
            for ky, V in enumerate(masks):
                for S, c in tables[V][0].items():
                    if S == 0:
                        const += c * C
                    else:
                        need.append((ky, S))
                        scale.append(c)
            blk = out[:, :, ys[0]:ys[1], xs[0]:xs[1]].permute(0, 2, 3, 1)
            if need:
                feats = xp.new_empty(taps[0][0].shape[:3] + (len(need) * C,))
                _fill_products(feats, taps, need, kw)
                y = feats.view(-1, feats.shape[-1]) @ _weight_products(wt, need, kw, scale)
                blk.copy_(y.view(blk.shape))
                if const:
                    blk.add_(const)
            else:
                blk.fill_(const)
        return out.round_()

    @staticmethod
    def backward(ctx, g):
        xb, wb = ctx.saved_tensors
        stride, padding, dilation, zero_pad, pad_value, Ho, Wo = ctx.geometry
        tables = ctx.tables
        N, C, H, W = xb.shape
        O, _, kh, kw = wb.shape
        xp = _padded(xb, padding, pad_value)
        wt = wb.permute(2, 3, 1, 0)
        G = g.to(xb.dtype).permute(0, 2, 3, 1)  # (N, Ho, Wo, O)
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dW = torch.zeros(kh, kw, C, O, dtype=xb.dtype, device=xb.device) if want_w else None
        blocks, inner = ctx.blocks, ctx.inner
        dxp = None
        if inner is not None:
            dxp, dwi = _interior_backward(xp, wb, g.to(xb.dtype), ctx.geometry, inner, want_x, want_w)
            if want_w:
                dW += dwi.permute(2, 3, 1, 0)
        if want_x and dxp is None:
            dxp = torch.zeros_like(xp)
        for masks, ys, xs in blocks:
            if inner is not None and masks == inner.masks:
                continue
            plans = [_chain_plan(V, tables[V][1], kw) for V in masks]
            need = [(ky, U) for ky, plan in enumerate(plans) for U, _, _ in plan]
            if not need:
                continue
            at = {k: j for j, k in enumerate(need)}
            taps = _taps(xp, kh, kw, stride, dilation, ys, xs)
            Gc = G[:, ys[0]:ys[1], xs[0]:xs[1]].reshape(-1, O)
            shape = taps[0][0].shape
            feats = xp.new_empty(shape[:3] + (len(need) * C,))
            _fill_products(feats, taps, need, kw)
            if want_x:
                # one GEMM for every weight product: Gu_U = sum_o g W_U
                Gu = (Gc @ _weight_products(wt, need, kw).t()).view(shape[:3] + (len(need) * C,))
                GX = Gu.mul_(feats)  # X_U Gu_U
                dtaps = _taps(dxp, kh, kw, stride, dilation, ys, xs)
                for ky, plan in enumerate(plans):
                    part = lambda U: GX[..., at[(ky, U)] * C:(at[(ky, U)] + 1) * C]  # noqa: E731
                    common = None
                    for U, cm, _ in plan:
                        if cm:
                            common = part(U) * cm if common is None else common.add_(part(U), alpha=cm)
                    for i in range(kw):
                        if masks[ky] >> i & 1:
                            acc = None if common is None else common.clone()
                            for U, _, dl in plan:
                                if dl and U >> i & 1:
                                    acc = part(U) * dl if acc is None else acc.add_(part(U), alpha=dl)
                            if acc is not None:
                                dtaps[ky][i].addcmul_(acc, taps[ky][i])
            if want_w:
                # one GEMM for every input product: corr_U = sum_p g X_U
                corr = (feats.view(Gc.shape[0], -1).t() @ Gc).view(len(need), C, O)
                for ky, plan in enumerate(plans):
                    for i in range(kw):
                        if masks[ky] >> i & 1:
                            acc = torch.zeros_like(dW[ky, i])
                            for U, cm, dl in plan:
                                c = cm + (dl if U >> i & 1 else 0.0)
                                if c:
                                    WU = _prod(wt, ky, U, kw)
                                    term = corr[at[(ky, U)]]
                                    acc.add_(term if WU is None else term * WU, alpha=c)
                            dW[ky, i].addcmul_(acc, wt[ky][i])
        dx = dw = None
        if want_x:
            ph, pw = padding
            dx = dxp[:, :, ph:ph + H, pw:pw + W]
        if want_w:
            dw = dW.permute(3, 2, 0, 1).contiguous()
        return dx, dw, None, None, None


class _Interior:
    """The positions whose rows are all whole: one polynomial, run as convolutions.

    Votes take single taps (coefficient per tap) and the whole row's product; the chain rule
    reads the single taps and the row product (:func:`_chain_plan`). ``mask`` (Ho, Wo) marks
    the positions (the border blocks run on their own).
    """

    def __init__(self, masks, single, row, const, plan_single, plan_row, mask):
        self.masks, self.single, self.row, self.const = masks, single, row, const
        self.plan_single, self.plan_row, self.mask = plan_single, plan_row, mask


def _interior(blocks, tables, kh, kw, positions):
    """The interior as an :class:`_Interior`, or None where the block path is as good."""
    full = (1 << kw) - 1
    masks = (full,) * kh
    mine = [(ys, xs) for m, ys, xs in blocks if m == masks]
    count = sum((y1 - y0) * (x1 - x0) for (y0, y1), (x0, x1) in mine)
    if positions < _CONV_POSITIONS or count * 4 < positions:
        return None  # small or mostly border maps: the block GEMMs are faster (measured)
    vote, deriv = tables[full]
    if any(S not in (full,) and bin(S).count("1") != 1 for S in vote if S):
        return None  # pairs in the interior vote (an even row with ties): block path
    plan = _chain_plan(full, deriv, kw)
    if any(U not in (full,) and bin(U).count("1") != 1 for U, _, _ in plan):
        return None
    single = [vote.get(1 << i, 0.0) for i in range(kw)]
    common = {U: cm for U, cm, _ in plan}
    delta = {U: dl for U, _, dl in plan}
    plan_single = [(common.get(1 << i, 0.0), delta.get(1 << i, 0.0)) for i in range(kw)]
    Ho = max(y1 for _, (_, y1), _ in blocks)
    Wo = max(x1 for _, _, (_, x1) in blocks)
    mask = torch.zeros(Ho, Wo)
    for (y0, y1), (x0, x1) in mine:
        mask[y0:y1, x0:x1] = 1.0
    return _Interior(masks, single, vote.get(full, 0.0), vote.get(0, 0.0) * kh, plan_single,
                     common.get(full, 0.0), mask)


def _row_product(xpad, kw, stride, dilation, Wo):
    """z (N, C, Hp, Wz): the product of each kernel row's kw inputs, at every row start."""
    sw, dw = stride[1], dilation[1]
    span = (Wo - 1) * sw + 1
    z = xpad[..., 0:span].clone()
    for i in range(1, kw):
        z.mul_(xpad[..., i * dw: i * dw + span])
    return z


def _interior_forward(xpad, wb, geometry, inner):
    """Counts (N, O, Ho, Wo) by the interior polynomial at every position (borders are redone)."""
    stride, padding, dilation, _, pad_value, Ho, Wo = geometry
    kh, kw = wb.shape[2:]
    scale = wb.new_tensor(inner.single).view(1, 1, 1, kw)
    y = F.conv2d(xpad, wb * scale, None, stride, 0, dilation)
    if inner.row:
        wrow = wb.prod(3, keepdim=True) * inner.row
        y = y + F.conv2d(_row_product(xpad, kw, stride, dilation, Wo), wrow, None, stride, 0, (dilation[0], 1))
    return y.add_(inner.const * xpad.shape[1]) if inner.const else y


def _interior_backward(xpad, wb, g, geometry, inner, want_x, want_w):
    """Input (N, C, Hp, Wp, padded) and weight gradients of the interior positions' counts."""
    stride, padding, dilation, _, pad_value, Ho, Wo = geometry
    O, C, kh, kw = wb.shape
    (sh, sw), (dh, dwid) = stride, dilation
    gi = (g * inner.mask.to(g)).contiguous()
    rows = inner.plan_row != 0.0
    z = _row_product(xpad, kw, stride, dilation, Wo) if rows else None
    common = wb.new_tensor([c for c, _ in inner.plan_single]).view(1, 1, 1, kw)
    delta = wb.new_tensor([d for _, d in inner.plan_single]).view(1, 1, 1, kw)
    wrow = wb.prod(3, keepdim=True)  # (O, C, kh, 1)
    # the plain conv's two gradients with weights delta * w: delta_i Gu_i folded, and corr
    dx, corr, _ = torch.ops.aten.convolution_backward(
        gi, xpad, wb * delta, None, list(stride), [0, 0], list(dilation), False, [0, 0], 1, [want_x, want_w, False])
    dweight = None
    if want_x:
        # dx_i = delta_i Gu_i + x_i Q_row, Q_row = sum_j common_j x_j Gu_j + common_row z Gu_row
        acc = torch.zeros_like(xpad)
        N = gi.shape[0]
        gT = gi.transpose(0, 1).reshape(O, -1)  # (O, N * Ho * Wo): one GEMM per kernel row
        for ky in range(kh):
            parts = [wb[:, :, ky, i] * inner.plan_single[i][0] for i in range(kw)]
            if rows:
                parts.append(wrow[:, :, ky, 0] * inner.plan_row)
            Gu = (torch.cat(parts, 1).t() @ gT).view(-1, N, Ho, Wo)  # (parts * C, N, Ho, Wo)
            y0 = ky * dh
            Q = None
            for i in range(len(parts)):
                src = z[:, :, y0: y0 + (Ho - 1) * sh + 1: sh, 0: (Wo - 1) * sw + 1: sw] if i == kw else \
                    xpad[:, :, y0: y0 + (Ho - 1) * sh + 1: sh, i * dwid: i * dwid + (Wo - 1) * sw + 1: sw]
                part = Gu[i * C:(i + 1) * C].transpose(0, 1)
                Q = part * src if Q is None else Q.addcmul_(part, src)
            for i in range(kw):
                acc[:, :, y0: y0 + (Ho - 1) * sh + 1: sh, i * dwid: i * dwid + (Wo - 1) * sw + 1: sw] += Q
        dx.addcmul_(acc, xpad)
    if want_w:
        # w_i dW_i = sum_j common_j w_j corr_j + common_row w_row corr_row, plus delta_i corr_i
        inner_sum = (corr * wb * common).sum(3, keepdim=True)
        if rows:
            corr_row = torch.nn.grad.conv2d_weight(z, wrow.shape, gi, stride, 0, (dh, 1))
            inner_sum = inner_sum + corr_row * wrow * inner.plan_row
        dweight = inner_sum * wb
        if delta.any():
            dweight += corr * delta
    return dx, dweight


def _padded(xb, padding, pad_value):
    """NCHW +/-1 input with its padding (0: abstaining terms, else the pad value)."""
    ph, pw = padding
    return F.pad(xb, (pw, pw, ph, ph), value=float(pad_value)).contiguous()


def conv_votes(xb, wb, voter: Hierarchy, stride, padding, dilation, pad_value, Ho, Wo, surrogate, sigma):
    """The counts (N, Co, Ho, Wo) of ``voter`` (see :func:`supports`) on +/-1 ``xb``, ``wb``."""
    kh, kw = wb.shape[2:]
    tables = _tables(kh, kw, voter.levels[0].tie, surrogate, sigma)
    zero_pad = float(pad_value) == 0.0
    geometry = (tuple(stride), tuple(padding), tuple(dilation), zero_pad, float(pad_value), Ho, Wo)
    return _RowVoteFn.apply(xb.float(), wb.float(), geometry, tables, voter)
