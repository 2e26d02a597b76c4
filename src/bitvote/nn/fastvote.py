"""Votes of a binary conv and their surrogate gradient straight from packed bits (CPU, C).

A hierarchy with small leaves has many leaf sums per output (144 for ``tap,leaf=4`` at 64
channels); as float tensors they dwarf the layer's output and every element-wise op of the
vote and of its backward walks them again. ``csrc/vote.c`` never builds them: per output
position it packs the n terms in flat order into 64-bit words, gets every leaf sum as a
masked XNOR-popcount, walks the tree on small integers (ties, abstention, ``first``, a ``P``
root) and, in the backward, recomputes those integers, multiplies the surrogate chain root to
leaf (zero for most leaves: a 4-term leaf with sigma 2 passes gradient only when it ties) and
adds only the non-zero leaves' terms into the input and weight gradients.

Leaves of up to 4 terms in tap-major order, 8 or more under each voter above them, take its
pattern backward: a leaf's sum, vote and surrogate factor depend only on the pattern of its
terms at a position, so each leaf's rows are made once per pattern in a block of positions,
and its weight gradient comes from dL/ds summed per pattern (:func:`patterns_wanted`).

That term loop runs at vector rate, so large leaves cost it dearly. Equal tap-major leaves
of :data:`_GEMM_MIN_LEAF` terms or more take a backward on batched matmuls instead: the
packed forward keeps every leaf's sum (int16), vote.c turns sums and output gradient into
dL/ds per (leaf, output), and both gradients are one batched matmul each over the leaves'
terms (:func:`_leaf_gemm_backward`).

The semantics are those of :func:`bitvote.voter.reduce_votes` (votes bit-identical; gradients
equal to its chain rule up to fp32 summation order); the tests hold the two against each
other. The library is compiled with the system C compiler at first use and cached under
``$BITVOTE_CACHE``. ``BITVOTE_NATIVE_VOTE=0`` turns the path off, and a missing or failing
compiler turns it off for good with one line on stderr: the float path then runs.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
from pathlib import Path
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from .. import native
from ..binarize import ApproxSign, Ste, Surrogate
from ..errors import BitvoteError
from ..io import cache_root
from ..voter import CM, Hierarchy
from ..voter.spec import split_sigma
from . import chanvote, packedvote, taprows
from .kernelargs import SLACK, surrogate_code, tap_offsets, zero_padded

__all__ = ["wanted", "forced", "pays", "enabled", "available", "conv_votes", "supports", "backward_kind"]

_HERE = Path(__file__).parent / "csrc"
_FLAGS = ["-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math"]

_P, _I, _F = ctypes.c_void_p, ctypes.c_int32, ctypes.c_float

#: the kernels hold every sum in int16
_MAX_TERMS = 32767

#: up to this many output channels the backward's input gradient runs over a leaf's input
#: channels (measured faster); above, over output channels
_FEW_CHANNELS = 16


class _Args(ctypes.Structure):
    """Mirror of ``bvt_args`` in vote.c (same field order)."""

    _fields_ = [
        ("x", _P), ("w", _P), ("wf", _P),
        ("N", _I), ("Hp", _I), ("Wp", _I), ("C", _I), ("Co", _I), ("Cp", _I), ("kh", _I), ("kw", _I),
        ("sh", _I), ("sw", _I), ("dh", _I), ("dw", _I), ("Ho", _I), ("Wo", _I),
        ("order", _I), ("n", _I), ("nodes", _I), ("nlev", _I),
        ("lev_first", _P), ("leaf_start", _P),
        ("child0", _P), ("parent", _P), ("lev_tie", _P), ("sigma", _P),
        ("sigma_valid", _I), ("root_p", _I), ("surrogate", _I), ("clip", _F), ("nthreads", _I),
        ("tap_off", _P), ("H", _I), ("W", _I), ("ph", _I), ("pw", _I), ("zero_pad", _I), ("wtc", _P),
        ("patterns", _I),
    ]


#: leaf size from which the leaf-GEMM backward beats the term loop (where both apply)
_GEMM_MIN_LEAF = 32
#: largest leaf of a tap-major tree that the bit-sliced backward (:mod:`.chanvote`) takes from
#: the leaf GEMMs: measured per layer, it is ahead up to leaves of 64 terms and behind from 256
_CHAN_MAX_LEAF = 64

#: floats of one batch chunk's (leaves, positions, Co) tensors in the leaf-GEMM backward
_GEMM_CHUNK = 1 << 21

_LIB = None
_broken: Optional[str] = None


def wanted() -> bool:
    """``BITVOTE_NATIVE_VOTE=0`` asks for the float path everywhere (also for ``mv`` with ``first``)."""
    return os.environ.get("BITVOTE_NATIVE_VOTE", "1") != "0"


def forced() -> bool:
    """``BITVOTE_NATIVE_VOTE=all``: the kernels take every voter layer, even where they are slower."""
    return os.environ.get("BITVOTE_NATIVE_VOTE", "1").strip().lower() == "all"


def pays(hier: Hierarchy, cout: int, cin: Optional[int] = None) -> bool:
    """Whether the kernels beat the float path on this layer (or :func:`forced`).

    The float path's matmuls are the plain conv's, and what it adds grows with the number of
    leaves; the kernels' cost grows with n x Co at vector, not matmul, throughput. So the
    kernels win on small leaves and lose on large ones with many output channels (measured,
    one thread, fwd+bwd: ``tap,leaf=4`` 7x faster at 256 channels, ``cm:M{C}(M3(M3))`` 10-50x;
    ``tap`` 1.7x faster at 64 channels but 1.7x slower at 128 and 3x slower at 256). Trees
    the leaf-GEMM backward takes (:func:`backward_kind`) run here everywhere: with it
    ``tap`` and ``groups=4`` measured 1.0-2.3x faster per layer than the float path, and so do
    the trees of the bit-sliced backward (:mod:`.chanvote`; ``cin``: the conv group's input
    channels, which tell a tap-major tree's taps).
    """
    if hier.n > _MAX_TERMS:
        return False
    if forced() or hier.order == CM or backward_kind(hier, cin) == "gemm":
        return True
    if bit_sliced(hier, cin):
        return True
    leaf = hier.n / len(hier.leaf_sizes)
    return leaf <= 32 or (leaf <= 64 and cout <= 64)


def bit_sliced(hier: Hierarchy, channels: Optional[int]) -> bool:
    """Whether the bit-sliced backward (:mod:`.chanvote`) takes ``hier`` over a conv group of
    ``channels`` input channels (None: unknown, so no)."""
    return bool(channels) and hier.n % channels == 0 and chanvote.takes(hier, channels, hier.n // channels)


def backward_kind(hier: Hierarchy, channels: Optional[int] = None) -> str:
    """``"gemm"`` (leaf sums and both gradients as batched matmuls around vote.c's chain) or
    ``"terms"`` (vote.c's term loop, or the bit-sliced backward where it takes the tree). The
    GEMMs need equal leaves in tap-major order; ``BITVOTE_VOTE_BACKWARD=gemm|terms`` asks for
    one where both apply, and by default leaves of :data:`_GEMM_MIN_LEAF` terms or more take
    the GEMMs, unless the bit-sliced backward takes the tree (``channels``: the conv group's
    input channels) and its leaves hold at most :data:`_CHAN_MAX_LEAF` terms."""
    if hier.order == CM or len(set(hier.leaf_sizes)) != 1:
        return "terms"
    ask = os.environ.get("BITVOTE_VOTE_BACKWARD", "auto").strip().lower() or "auto"
    if ask in ("gemm", "terms"):
        return ask
    if ask != "auto":
        raise BitvoteError(f"BITVOTE_VOTE_BACKWARD={ask!r}: expected auto, gemm or terms")
    leaf = hier.leaf_sizes[0]
    if leaf < _GEMM_MIN_LEAF:
        return "terms"
    if leaf <= _CHAN_MAX_LEAF and bit_sliced(hier, channels):
        return "terms"
    return "gemm"


def patterns_wanted() -> bool:
    """Whether trees of leaves of up to 4 terms take vote.c's pattern backward (each leaf's rows
    made once per pattern of its terms in a block of positions); ``BITVOTE_VOTE_PATTERNS=0``
    sends them to the term loop."""
    return os.environ.get("BITVOTE_VOTE_PATTERNS", "1") != "0"


def enabled() -> bool:
    """Whether the native path may run: wanted, and no failed build so far."""
    return _broken is None and wanted()


def _build() -> ctypes.CDLL:
    arch = native.arch_flags()
    so, _ = native.build([_HERE / "vote.c"], [_FLAGS + ["-fopenmp"] + arch, _FLAGS + ["-fopenmp-simd"] + arch, _FLAGS],
                         "bitvote_vote", cache_root() / "native", "the native vote kernels")
    lib = ctypes.CDLL(str(so))
    lib.bvt_struct_size.restype = ctypes.c_int
    if lib.bvt_struct_size() != ctypes.sizeof(_Args):  # pragma: no cover - a build mismatch
        raise RuntimeError("vote.c and fastvote._Args disagree on the argument struct")
    lib.bvt_forward.argtypes = [ctypes.POINTER(_Args), _P]
    lib.bvt_backward.argtypes = [ctypes.POINTER(_Args), _P, _P, _P]
    lib.bvt_leaf_grad.argtypes = [ctypes.POINTER(_Args), _P, ctypes.c_int64, _P, _P]
    lib.bvt_signs_nhwc.argtypes = [_P, _I, _I, _I, _I, _I, _I, _I, _P, _I]
    lib.bvt_signs_nhwc.restype = None
    lib.bvt_forward.restype = lib.bvt_backward.restype = lib.bvt_leaf_grad.restype = ctypes.c_int
    return lib


def available() -> bool:
    """Enabled and compiled (compiling at the first call)."""
    global _LIB, _broken
    if not enabled():
        return False
    if _LIB is None:
        try:
            _LIB = _build()
        except Exception as e:  # noqa: BLE001 - no compiler, a failing one, a bad .so: fall back
            _broken = native.unavailable("native vote kernels", e, "the float path")
            return False
    return True


class _Plan:
    """The tree of one hierarchy as flat int arrays for vote.c (built once per layer shape)."""

    def __init__(self, hier: Hierarchy, C: int, T: int, sigma):
        n = hier.n
        self.hier, self.n = hier, n
        self.order = 1 if hier.order == CM else 0
        leaves = hier.leaf_sizes
        starts = [0]
        for s in leaves:
            starts.append(starts[-1] + s)
        lev_first, child0, fanin = [0, len(leaves)], [], list(leaves)
        for lv in hier.levels[1:]:
            pos = lev_first[-2]
            for g in lv.groups:
                child0.append(pos)
                fanin.append(g)
                pos += g
            lev_first.append(lev_first[-1] + len(lv.groups))
        nodes = lev_first[-1]
        parent = [0] * nodes
        for li in range(1, len(lev_first) - 1):
            for j in range(lev_first[li], lev_first[li + 1]):
                c1 = child0[j + 1 - len(leaves)] if j + 1 < lev_first[li + 1] else lev_first[li]
                for k in range(child0[j - len(leaves)], c1):
                    parent[k] = j
        child0 = [0] * len(leaves) + child0  # indexed by node
        sigma, leaf_mult = split_sigma(sigma)
        if sigma == "unit":
            sig = [1.0] * nodes
        elif sigma == "valid":  # the kernel takes sqrt(live inputs) times this factor
            sig = [1.0] * nodes
        elif sigma == "fanin":
            sig = [math.sqrt(g) for g in fanin]
        else:
            sig = [float(sigma) * math.sqrt(g) for g in fanin]
        if len(hier.levels) > 1 and leaf_mult != 1.0:  # "BASE,leaf=F": the leaf level F times as wide
            sig = [v * leaf_mult if j < lev_first[1] else v for j, v in enumerate(sig)]
        i32 = lambda v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
        self.lev_first = i32(lev_first)
        self.leaf_start, self.child0, self.parent = i32(starts), i32(child0), i32(parent)
        self.lev_tie = i32(hier.tie_codes)
        self.sigma = torch.tensor(sig, dtype=torch.float32)
        self.nodes, self.nlev = nodes, len(hier.levels)
        self.sigma_valid = 1 if sigma == "valid" else 0
        self.root_p = 1 if hier.root == "P" else 0
        # Equal leaves in tap-major order are rows of R blocks of b channels of one tap: the
        # backward's leaf GEMMs take them (taprows); None where leaves differ or run over channels.
        self.rows = None
        if not self.order and len(set(leaves)) == 1:
            size = leaves[0]
            b = math.gcd(size, C)
            self.rows = (len(leaves), size, b, size // b, C // b)  # (rows, K, b, R, G)


@functools.lru_cache(maxsize=256)
def _plan(hier: Hierarchy, C: int, T: int, sigma) -> _Plan:
    return _Plan(hier, C, T, sigma)


def supports(surrogate: Surrogate, device: torch.device) -> bool:
    """The surrogates vote.c knows (exactly these classes: a subclass may change ``grad``)."""
    return device.type == "cpu" and type(surrogate) in (ApproxSign, Ste)


def _args(plan: _Plan, xcl, w, wf, wshape, stride, padding, dilation, Ho, Wo, surrogate, pad_value, keep,
          wtc=None) -> _Args:
    """The kernel's arguments; ``keep`` collects tensors that must outlive the call."""
    N, Hp, Wp, C = xcl.shape
    Co, _, kh, kw = wshape
    a = _Args()
    offs = tap_offsets(kh, kw, dilation, Wp, C)
    keep.append(offs)
    a.tap_off = offs.data_ptr()
    a.wtc = 0 if wtc is None else wtc.data_ptr()
    a.H, a.W, a.ph, a.pw = Hp - 2 * padding[0], Wp - 2 * padding[1], padding[0], padding[1]
    a.zero_pad = zero_padded(pad_value, padding)
    a.x, a.w, a.wf = xcl.data_ptr(), w.data_ptr(), 0 if wf is None else wf.data_ptr()
    a.N, a.Hp, a.Wp, a.C, a.Co, a.Cp, a.kh, a.kw = N, Hp, Wp, C, Co, w.shape[1], kh, kw
    a.sh, a.sw, a.dh, a.dw, a.Ho, a.Wo = stride[0], stride[1], dilation[0], dilation[1], Ho, Wo
    a.order, a.n, a.nodes, a.nlev = plan.order, plan.n, plan.nodes, plan.nlev
    for f in ("lev_first", "leaf_start", "child0", "parent", "lev_tie", "sigma"):
        setattr(a, f, getattr(plan, f).data_ptr())
    a.sigma_valid, a.root_p = plan.sigma_valid, plan.root_p
    a.surrogate, a.clip = surrogate_code(surrogate)
    a.nthreads = torch.get_num_threads()
    a.patterns = int(patterns_wanted())
    return a


def _signs_nhwc(xb, ph, pw, pad):
    """+1 where x >= 0, else -1, channels last, padded with ``pad``: (N, H + 2 ph, W + 2 pw, C)
    int8, with :data:`SLACK` bytes of storage after it (kernels read whole words from the last
    pixel)."""
    N, C, H, W = xb.shape
    shape = (N, H + 2 * ph, W + 2 * pw, C)
    out = torch.empty(math.prod(shape) + SLACK, dtype=torch.int8)[:math.prod(shape)].view(shape)
    if xb.dtype == torch.float32 and xb.is_contiguous():  # one pass of vote.c
        _LIB.bvt_signs_nhwc(xb.data_ptr(), N, C, H, W, ph, pw, pad, out.data_ptr(), torch.get_num_threads())
        return out
    out.fill_(pad)
    out[:, ph:ph + H, pw:pw + W].copy_((xb >= 0).permute(0, 2, 3, 1)).mul_(2).sub_(1)
    return out


class _NativeVoteFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xb, wb, plan, stride, padding, dilation, pad_value, Ho, Wo, surrogate):
        N, C, H, W = xb.shape
        Co, _, kh, kw = wb.shape
        ph, pw = padding
        xcl = _signs_nhwc(xb, ph, pw, int(pad_value))
        wt = wb.reshape(Co, C, kh * kw)  # term-major (n, Co): the kernels run over channels
        wt = wt.reshape(Co, -1).t() if plan.order else wt.permute(2, 1, 0).reshape(-1, Co)
        wi = torch.ones((wt.shape[0], -(-Co // 16) * 16), dtype=torch.int16)  # pad channels: +1, unused
        wi[:, :Co] = (wt >= 0).to(torch.int16).mul_(2).sub_(1)
        kind = backward_kind(plan.hier, C) if any(ctx.needs_input_grad[:2]) else None
        sums = None
        if packedvote.takes(xb, wb, stride, padding, dilation, pad_value):
            if kind == "gemm":  # the leaf GEMMs start from every leaf's sum: the packed kernel's, kept as int16
                sums = torch.empty((plan.rows[0], N * Ho * Wo, Co), dtype=torch.int16)
            out = packedvote.conv_votes(xb, wb, plan.hier, stride, padding, pad_value, sums)  # the same votes, faster
        else:
            out = torch.empty((N, Co, Ho, Wo), dtype=torch.float32)
            keep = []
            a = _args(plan, xcl, wi, None, wb.shape, stride, padding, dilation, Ho, Wo, surrogate, pad_value, keep)
            if _LIB.bvt_forward(ctypes.byref(a), out.data_ptr()):
                raise MemoryError("native vote kernel: out of memory")
        ctx.save_for_backward(xcl, wi, sums)
        ctx.kind = kind
        ctx.meta = (plan, tuple(wb.shape), stride, padding, dilation, Ho, Wo, surrogate, xb.dtype, wb.dtype, H, W,
                    pad_value)
        return out

    @staticmethod
    @once_differentiable  # a second derivative through the C kernel is an error, never a silent 0
    def backward(ctx, g):
        xcl, wi, sums = ctx.saved_tensors
        plan, wshape, stride, padding, dilation, Ho, Wo, surrogate, xdt, wdt, H, W, pad_value = ctx.meta
        Co, C, kh, kw = wshape
        g = g.float()
        ph, pw = padding
        if ctx.kind == "gemm":
            gx, gw = _leaf_gemm_backward(plan, xcl, wi, wshape, stride, padding, dilation, Ho, Wo, surrogate,
                                         pad_value, g, ctx.needs_input_grad[0], sums)
            gxb = None if gx is None else gx[:, ph:ph + H, pw:pw + W].permute(0, 3, 1, 2).to(xdt)
            gwb = gw.reshape(kh * kw, C, Co).permute(2, 1, 0).reshape(wshape).to(wdt)
            return gxb, gwb, None, None, None, None, None, None, None, None
        g = g.contiguous()
        if bit_sliced(plan.hier, C):
            got = chanvote.backward(plan, xcl, wshape, wi, stride, padding, dilation, Ho, Wo, surrogate, pad_value, g)
            if got is not None:
                gx, gw = got
                return (gx.to(xdt), gw.to(wdt),
                        None, None, None, None, None, None, None, None)
        gx = torch.zeros(xcl.shape, dtype=torch.float32)
        gw = torch.zeros(wi.shape, dtype=torch.float32)
        wf = wi.float()
        wf[:, Co:] = 0
        wtc = None
        if not plan.order and Co <= _FEW_CHANNELS:  # (taps, Co, C): input gradient over a leaf's channels
            wtc = wf[:, :Co].reshape(kh * kw, C, Co).transpose(1, 2).contiguous()
        keep = []
        a = _args(plan, xcl, wi, wf, wshape, stride, padding, dilation, Ho, Wo, surrogate, pad_value, keep, wtc)
        if _LIB.bvt_backward(ctypes.byref(a), g.data_ptr(), gx.data_ptr(), gw.data_ptr()):
            raise MemoryError("native vote kernel: out of memory")
        gxb = gx[:, ph:ph + H, pw:pw + W].permute(0, 3, 1, 2).to(xdt)
        gw = gw[:, :Co]
        gwb = gw.t().reshape(Co, C, kh * kw) if plan.order else gw.reshape(kh * kw, C, Co).permute(2, 1, 0)
        return gxb, gwb.reshape(wshape).to(wdt), None, None, None, None, None, None, None, None


def _leaf_gemm_backward(plan, xcl, wi, wshape, stride, padding, dilation, Ho, Wo, surrogate, pad_value, g,
                        want_x, sums=None):
    """Input gradient (N, Hp, Wp, C) or None, weight gradient (n, Co) term-major, by leaf GEMMs.

    ``sums``: every leaf's sum (leaves, N * Ho * Wo, Co) int16 from the forward's packed
    kernel, or None: then each batch chunk gets them as one batched matmul of the leaf rows
    (the terms of each leaf, :mod:`.taprows`) with the weights, exact integers in fp32. Per
    chunk vote.c turns the sums and the output gradient into dL/ds per (leaf, position,
    output channel); the weight gradient is rows^T x that and the input gradient that x
    weights^T, scattered back from the rows. The multiply-adds are two convolutions' (three
    without ``sums``); the (leaves x outputs) floats exist for one chunk at a time, small
    enough to stay in cache between the passes that share them.
    """
    Co, C, kh, kw = wshape
    rows, K, b, R, G = plan.rows
    W = wi[:, :Co].float().view(rows, K, Co)  # term-major (n, Co): leaf-major rows
    Wt = W.transpose(1, 2).contiguous() if want_x else None
    gcl = g.permute(0, 2, 3, 1).contiguous()  # (N, Ho, Wo, Co): one position's channels together
    runs = taprows.runs(kh, kw, stride, dilation, Ho, Wo, G, R)
    N, HW = xcl.shape[0], Ho * Wo
    gx = torch.zeros(xcl.shape, dtype=torch.float32) if want_x else None
    gw = torch.zeros((rows, K, Co), dtype=torch.float32)
    step = max(1, min(N, _GEMM_CHUNK // max(1, rows * HW * max(Co, K))))
    xbuf = torch.empty(rows * step * HW * K)  # one chunk's buffers, reused: no page faults per chunk
    dbuf = torch.empty(rows * step * HW * Co)
    keep = []
    for n0 in range(0, N, step):
        n1 = min(N, n0 + step)
        m = (n1 - n0) * HW
        xc = xcl[n0:n1]
        X = xbuf[:rows * m * K].view(rows, n1 - n0, Ho, Wo, R, b)
        taprows.gather(xc, runs, rows, Ho, Wo, R, b, out=X)  # int8 terms -> fp32 rows in the copy
        X = X.view(rows, m, K)
        if sums is None:  # sums of +/-1 and 0: exact in fp32, and in int16 (n <= _MAX_TERMS)
            S, stride_l = torch.bmm(X, W).to(torch.int16), m * Co
        else:
            S, stride_l = sums[:, n0 * HW:n1 * HW], sums.shape[1] * Co
        dS = dbuf[:rows * m * Co].view(rows, m, Co)
        a = _args(plan, xc, wi, None, wshape, stride, padding, dilation, Ho, Wo, surrogate, pad_value, keep)
        if _LIB.bvt_leaf_grad(ctypes.byref(a), S.data_ptr(), stride_l, gcl[n0:n1].data_ptr(), dS.data_ptr()):
            raise MemoryError("native vote kernel: out of memory")
        gw.baddbmm_(X.transpose(1, 2), dS)
        if want_x:  # the rows are used up: their buffer takes their input gradient
            grows = torch.bmm(dS, Wt, out=xbuf[:rows * m * K].view(rows, m, K))
            taprows.scatter_add(gx[n0:n1], grows.view(rows, n1 - n0, Ho, Wo, R, b), runs, b)
    return gx, gw.view(-1, Co)


def conv_votes(xb, wb, hier: Hierarchy, stride, padding, dilation, pad_value, Ho, Wo, surrogate, sigma):
    """Votes (N, Co, Ho, Wo) fp32 of one conv group through ``hier``; differentiable."""
    if not available():  # the backward needs the library even where the forward's votes are packed
        raise RuntimeError(f"the native vote kernels are unavailable ({_broken or 'BITVOTE_NATIVE_VOTE=0'})")
    C, T = xb.shape[1], wb.shape[2] * wb.shape[3]
    plan = _plan(hier, C, T, sigma)
    return _NativeVoteFn.apply(xb, wb, plan, stride, padding, dilation, pad_value, Ho, Wo, surrogate)
