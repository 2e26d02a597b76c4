"""The Triton kernels of the GPU path (design in docs/gpu.md). Imported only when triton is.

Layout (the CPU engine's, on 32-bit words): activations ``(N, H, W, Wd)`` int32, channels
innermost, bit ``c % 32`` of word ``c // 32`` is channel ``c`` (1 = +1); bits past ``C`` are 0.
A CPU engine int64 word tensor viewed as int32 is exactly this layout (little-endian).
Weights ``(T, Wd, CoP)`` int32: output channels innermost, so a tile of output channels
loads one contiguous run per (tap, word).

:func:`conv_kernel` walks a table of *segments* ``(tap, word, mask)`` sorted by voter leaf
(the CPU engine's segments, on 32-bit words). Each segment XORs one input word of every
pixel of the tile with one weight word of every output channel of the tile and adds the
popcount to the leaf's mismatch count. A segment's ``end`` code says which voters close
after it (1: its leaf, 2: also the leaf's parent); closing a voter applies SPEC.md's vote
(ties +1 / -1 / first, abstention of voters without valid terms) and feeds the parent.
The root (the level ``DEPTH - 1``) is resolved after the loop, then the fused epilogue.
Hierarchies deeper than 3 levels run with ``LEAFOUT``: the kernel writes leaf sums, valid
counts and first terms, and :func:`bitvote.voter.reduce_votes` takes them from there.
"""

from __future__ import annotations

import triton
import triton.language as tl

try:  # the CUDA popcount (not available under the interpreter)
    from triton.language.extra import libdevice as _libdevice
except ImportError:  # pragma: no cover
    _libdevice = None

OUT_INT, OUT_AFFINE, OUT_SELECT, OUT_BITS = 0, 1, 2, 3


@triton.jit
def _popc(v, INTERP: tl.constexpr):
    """Population count of int32 words: the hardware ``popc`` on CUDA, SWAR in the interpreter."""
    if INTERP:
        u = v.to(tl.uint32, bitcast=True)
        u = u - ((u >> 1) & 0x55555555)
        u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
        u = (u + (u >> 4)) & 0x0F0F0F0F
        u = (u * 0x01010101) >> 24
        return u.to(tl.int32)
    else:
        return _libdevice.popc(v)


@triton.jit
def _vote(s, first, TIE: tl.constexpr):
    """MV on integer sums: +1 / -1, ``TIE`` (1, -1, or 0 = first) where ``s == 0``."""
    if TIE == 0:
        t = first
    else:
        t = tl.full(s.shape, TIE, tl.int32)
    return tl.where(s > 0, 1, tl.where(s < 0, -1, t))


@triton.jit
def pack_kernel(x_ptr, shift_ptr, out_ptr, nan_ptr, NPIX, C, HW, W, Wd, sN, sC, sH, sW,
                HAS_SHIFT: tl.constexpr, BLOCK_P: tl.constexpr):
    """Real ``(N, C, H, W)`` (any strides) -> words ``(N, H, W, Wd)``: bit = ``x (+ shift) >= 0``."""
    pid_p = tl.program_id(0)
    j = tl.program_id(1)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = p < NPIX
    n = p // HW
    r = p % HW
    h = r // W
    w = r % W
    lane = tl.arange(0, 32)
    c = j * 32 + lane
    cm = c < C
    m2 = pm[:, None] & cm[None, :]
    off = n[:, None].to(tl.int64) * sN + c[None, :].to(tl.int64) * sC + (h * sH + w * sW)[:, None].to(tl.int64)
    v = tl.load(x_ptr + off, mask=m2, other=0.0).to(tl.float32)
    if HAS_SHIFT:
        v = v + tl.load(shift_ptr + c, mask=cm, other=0.0)[None, :]
    bit = ((v >= 0) & m2).to(tl.int32)
    word = tl.sum(bit << lane[None, :], axis=1)
    tl.store(out_ptr + p.to(tl.int64) * Wd + j, word, mask=pm)
    bad = tl.max(((v != v) & m2).to(tl.int32), axis=1)
    tl.store(nan_ptr + p * 0, bad, mask=pm & (bad > 0))


@triton.jit
def conv_kernel(
    x_ptr, w_ptr, out_ptr, vout_ptr, fout_ptr,
    seg_tap, seg_word, seg_mask, seg_cnt, seg_bit, seg_flat, seg_end, seg_leaf,
    padw_ptr, a_ptr, b_ptr, thr_ptr, dir_ptr,
    N, H, W, Wd, Co, CoP, Ho, Wo, S, L, Wdo, stride, pad,
    KW: tl.constexpr, PADMODE: tl.constexpr, DEPTH: tl.constexpr, ROOT_P: tl.constexpr,
    TIE0: tl.constexpr, TIE1: tl.constexpr, TIER: tl.constexpr, ROOT_ABSTAIN: tl.constexpr, NEED_FIRST: tl.constexpr,
    LEAFOUT: tl.constexpr, OUTMODE: tl.constexpr, INTERP: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr,
):
    """One tile of BLOCK_P output pixels x BLOCK_O output channels (see the module doc).

    DEPTH: 0 popcount, 1..3 voter levels; ties TIE0 (leaves), TIE1 (level 1 below a depth-3
    root), TIER (the root); 1, -1 or 0 = first. ROOT_ABSTAIN: the root's value without valid inputs.
    PADMODE: 0 zero padding (padded terms invalid), 1 (+1), -1 (-1).
    """
    pid_p = tl.program_id(0)
    pid_o = tl.program_id(1)
    HoWo = Ho * Wo
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = p < N * HoWo
    n = p // HoWo
    rem = p % HoWo
    oy = rem // Wo
    ox = rem % Wo
    o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    om = o < Co

    zi = tl.zeros((BLOCK_P, BLOCK_O), tl.int32)
    zp = tl.zeros((BLOCK_P,), tl.int32)
    acc0 = zi  # mismatches of the open leaf
    val0 = zp  # valid terms of the open leaf (per pixel)
    first0 = zi
    best0 = zp + 2147483647
    sum1 = zi  # votes of level 1's open node, its non-abstaining children, its first vote
    cnt1 = zp
    first1 = zi
    sum2 = zi
    cnt2 = zp
    first2 = zi
    for s in range(S):
        t = tl.load(seg_tap + s)
        j = tl.load(seg_word + s)
        m = tl.load(seg_mask + s)
        ky = t // KW
        kx = t % KW
        iy = oy * stride - pad + ky
        ix = ox * stride - pad + kx
        inb = pm & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        xoff = ((n.to(tl.int64) * H + iy) * W + ix) * Wd + j
        xv = tl.load(x_ptr + xoff, mask=inb, other=0)
        if PADMODE == 1:
            xv = tl.where(inb, xv, tl.load(padw_ptr + j))
        wv = tl.load(w_ptr + (t * Wd + j) * CoP + o, mask=om, other=0)
        d = (xv[:, None] ^ wv[None, :]) & m
        if PADMODE == 0:
            d = tl.where(inb[:, None], d, 0)
            val0 += tl.where(inb, tl.load(seg_cnt + s), 0)
        else:
            val0 += tl.load(seg_cnt + s)
        acc0 += _popc(d, INTERP)
        if NEED_FIRST:
            f = tl.load(seg_flat + s)
            if PADMODE == 0:
                better = inb & (f < best0)
            else:
                better = f < best0
            bv = 1 - 2 * (((xv[:, None] ^ wv[None, :]) >> tl.load(seg_bit + s)) & 1)
            first0 = tl.where(better[:, None], bv, first0)
            best0 = tl.where(better, f, best0)
        if DEPTH >= 2 or LEAFOUT:
            e = tl.load(seg_end + s)
            if e >= 1:  # close the leaf
                s0 = val0[:, None] - 2 * acc0
                if LEAFOUT:
                    lf = tl.load(seg_leaf + s)
                    loff = (p.to(tl.int64)[:, None] * Co + o[None, :]) * L + lf
                    m2 = pm[:, None] & om[None, :]
                    tl.store(out_ptr + loff, s0, mask=m2)
                    tl.store(vout_ptr + p.to(tl.int64) * L + lf, val0, mask=pm)
                    if NEED_FIRST:
                        tl.store(fout_ptr + loff, tl.where(val0[:, None] > 0, first0, 0), mask=m2)
                else:
                    v0 = tl.where(val0[:, None] > 0, _vote(s0, first0, TIE0), 0)
                    sum1 += v0
                    cnt1 += (val0 > 0).to(tl.int32)
                    first1 = tl.where(first1 == 0, v0, first1)
                    if DEPTH == 3:
                        if e >= 2:  # close the level-1 node
                            v1 = tl.where(cnt1[:, None] > 0, _vote(sum1, first1, TIE1), 0)
                            sum2 += v1
                            cnt2 += (cnt1 > 0).to(tl.int32)
                            first2 = tl.where(first2 == 0, v1, first2)
                            sum1 = zi
                            cnt1 = zp
                            first1 = zi
                acc0 = zi
                val0 = zp
                first0 = zi
                best0 = zp + 2147483647

    if not LEAFOUT:
        # the root
        rs = val0[:, None] - 2 * acc0
        rc = val0
        rf = first0
        if DEPTH == 2:
            rs = sum1
            rc = cnt1
            rf = first1
        if DEPTH == 3:
            rs = sum2
            rc = cnt2
            rf = first2
        r = rs
        if DEPTH > 0:
            if not ROOT_P:
                # a root without valid inputs takes its tie value (+1 under first)
                r = tl.where(rc[:, None] > 0, _vote(rs, rf, TIER), ROOT_ABSTAIN)
        m2 = pm[:, None] & om[None, :]
        if OUTMODE == 3:  # packed bits: BLOCK_O is a multiple of 32, tiles aligned to words
            dr = tl.load(dir_ptr + o, mask=om, other=0)[None, :]
            th = tl.load(thr_ptr + o, mask=om, other=0)[None, :]
            bit = tl.where(dr > 0, r >= th, tl.where(dr < 0, r <= th, th != 0)) & m2
            lane = (o % 32)[None, :]
            sh = bit.to(tl.int32) << lane
            words = tl.sum(tl.reshape(sh, (BLOCK_P, BLOCK_O // 32, 32)), axis=2)
            wi = pid_o * (BLOCK_O // 32) + tl.arange(0, BLOCK_O // 32)
            tl.store(out_ptr + p.to(tl.int64)[:, None] * Wdo + wi[None, :], words,
                     mask=pm[:, None] & (wi < Wdo)[None, :])
        else:
            ooff = (n.to(tl.int64)[:, None] * Co + o[None, :]) * HoWo + rem[:, None]
            if OUTMODE == 0:
                tl.store(out_ptr + ooff, r, mask=m2)
            elif OUTMODE == 1:
                av = tl.load(a_ptr + o, mask=om, other=0.0)[None, :]
                bv2 = tl.load(b_ptr + o, mask=om, other=0.0)[None, :]
                tl.store(out_ptr + ooff, r.to(tl.float32) * av + bv2, mask=m2)
            else:
                av = tl.load(a_ptr + o, mask=om, other=0.0)[None, :]
                bv2 = tl.load(b_ptr + o, mask=om, other=0.0)[None, :]
                tl.store(out_ptr + ooff, tl.where(r > 0, av, bv2), mask=m2)
