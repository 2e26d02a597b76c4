"""One binary convolution on packed bits: packed weights, voter segments and a fused epilogue.

:class:`PackedConv` holds what the C kernel needs for one layer and calls it. A voter's leaves
are consecutive runs of the flat term order (SPEC.md); each leaf becomes a list of
*segments* ``(tap, word, mask)``, the bits of one input word that belong to it, so any
hierarchy (tap- or channel-major, uneven, any channel count) runs on the same kernel. The
kernel counts XOR mismatches per leaf, takes ``s = valid - 2 * mismatches`` and then either
keeps the sum (popcount) or votes through the levels, and finally emits one of:

* ``"int"``    the integer result (sum, vote +/-1, or a ``P`` root's count) as int32 NCHW;
* ``"affine"`` ``r * a[o] + b[o]`` as float32 (weight scale and BN folded in);
* ``"select"`` ``a[o]`` where the vote is +1, ``b[o]`` where it is -1 (BN after a voter);
  both float outputs are ``(N, Co, Ho, Wo)`` tensors in channels-last memory (what the
  kernel writes contiguously and what the packer reads fastest);
* ``"bits"``   packed output bits ``(N, Ho, Wo, Wdo)``: ``r >= thr[o]`` (``dir = 1``),
  ``r <= thr[o]`` (``dir = -1``) or a constant (``dir = 0``): votes (``thr = 1``) or BN + sign
  folded into integer thresholds.
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from ..errors import BitvoteError
from ..voter import CM, Hierarchy
from .build import ConvArgs, isa_id, lib
from .pack import pack_bools, recycled, words

__all__ = ["PackedConv", "segments"]

#: epilogue modes and their codes in the C kernels (``ConvArgs.outmode``)
EPILOGUES = {"int": 0, "affine": 1, "select": 2, "bits": 3}


#: set bits of every byte value
_POPCOUNT8 = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32)


def _i64(m: int) -> int:
    return m - (1 << 64) if m >= 1 << 63 else m


def segments(C: int, T: int, hier: Optional[Hierarchy]):
    """``[(leaf, tap, word, mask, first_flat)]`` covering every term once, sorted by leaf."""
    leaves = (C * T,) if hier is None else hier.leaf_sizes
    cm = hier is not None and hier.order == CM
    out, start = [], 0
    for leaf, size in enumerate(leaves):
        a, b = start, start + size
        start = b
        for t in range(T):
            if cm:  # i = c * T + t
                c0, c1 = max(0, -(-(a - t) // T)), min(C, (b - 1 - t) // T + 1)
            else:  # i = t * C + c
                c0, c1 = max(a, t * C) - t * C, min(b, (t + 1) * C) - t * C
            if c0 >= c1:
                continue
            for j in range(c0 // 64, (c1 - 1) // 64 + 1):
                lo, hi = max(c0, 64 * j), min(c1, 64 * j + 64)
                mask = ((1 << (hi - lo)) - 1) << (lo - 64 * j)
                out.append((leaf, t, j, mask, lo * T + t if cm else t * C + lo))
    return out


def _row_leaves(hier: Hierarchy, C: int, kh: int, kw: int) -> bool:
    """Whether ``hier`` is a channel-major tree over whole kernel rows (rows of kw = 2 or 3 taps):
    a count or vote of the row votes, or per-channel votes over kh = 2 or 3 rows under a root."""
    if hier.order != CM or kw not in (2, 3) or tuple(hier.leaf_sizes) != (kw,) * (C * kh):
        return False
    if hier.depth == 2:
        return True
    return hier.depth == 3 and kh in (2, 3) and hier.levels[1].groups == (kh,) * C


def _field_leaves(hier: Hierarchy, C: int, T: int, Wd: int) -> bool:
    """True for M<T>(M<C/L>(M<L>)) in tap order with L = 2..32 a power of two dividing C:
    every leaf is an L-bit field of one input word (the kernel's SWAR path; <= 31 words a tap)."""
    L = hier.leaf_sizes[0]
    if hier.order == CM or T < 2 or hier.root != "M" or len(hier.levels) != 3 or Wd > 31:
        return False
    if L not in (2, 4, 8, 16, 32) or C % L or set(hier.leaf_sizes) != {L} or len(hier.leaf_sizes) != T * (C // L):
        return False
    return list(hier.levels[1].groups) == [C // L] * T and list(hier.levels[2].groups) == [T]


def _cgroup_leaves(hier: Hierarchy, C: int, T: int) -> bool:
    """True for cm:M<G>(M<n/G>) and cm:P(M<n/G>) (``cgroups=G``) with G >= 2 leaves of Lc = C/G
    whole channels over T <= 15 taps, Lc = 8, 16, 32 (a field of every input word) or a
    multiple of 64 (whole words): the channel-group kernel."""
    if hier.order != CM or hier.depth != 2 or not 1 <= T <= 15:
        return False
    G = len(hier.leaf_sizes)
    if G < 2 or C % G or set(hier.leaf_sizes) != {C // G * T}:
        return False
    Lc = C // G
    return Lc in (8, 16, 32) or Lc % 64 == 0


def _arr(values, dtype):
    return torch.tensor(list(values) or [0], dtype=dtype)


class ConvEpilogue:
    """What the CPU and GPU packed convs share: output size and the fused epilogue's parameters.

    Subclasses call :meth:`_layer` first: it checks the weights, voter and padding and sets
    ``name``, ``Co``, ``C``, ``kh``, ``kw``, ``stride``, ``padding``, ``pad_value`` and ``hier``.
    """

    def _layer(self, wbits: torch.Tensor, stride, padding, pad_value, hier: Optional[Hierarchy], name: str):
        if wbits.dim() != 4:
            raise BitvoteError(f"layer {name!r}: expected (Co, C, kh, kw) weights, got {tuple(wbits.shape)}")
        Co, C, kh, kw = wbits.shape
        if hier is not None and hier.n != C * kh * kw:
            raise BitvoteError(f"layer {name!r}: voter {hier.describe()} has n = {hier.n}, the layer {C * kh * kw}")
        if float(pad_value) not in (0.0, 1.0, -1.0):
            raise BitvoteError(f"layer {name!r}: pad_value must be 0, +1 or -1, got {pad_value}")
        self.name, self.Co, self.C, self.kh, self.kw = name, Co, C, kh, kw
        self.stride, self.padding, self.pad_value, self.hier = int(stride), int(padding), float(pad_value), hier

    @property
    def is_vote(self) -> bool:
        """True when the layer outputs +/-1 votes (an ``M`` root)."""
        return self.hier is not None and self.hier.root == "M"

    def out_size(self, H: int, W: int):
        k, s, p = (self.kh, self.kw), self.stride, self.padding
        return (H + 2 * p - k[0]) // s + 1, (W + 2 * p - k[1]) // s + 1

    def _set_epilogue(self, mode: str, a, b, thr, dir, device) -> None:
        if mode not in EPILOGUES:
            raise BitvoteError(f"unknown epilogue {mode!r}: choose one of {', '.join(EPILOGUES)}")
        Co = self.Co

        def vec(v, dtype, default):
            if v is None or isinstance(v, (int, float)):
                v = default if v is None else v
                return torch.full((Co,), v, dtype=dtype, device=device)
            t = torch.as_tensor(v).detach().to(device=device, dtype=dtype).reshape(-1)
            if t.numel() != Co:
                raise BitvoteError(f"layer {self.name!r}: epilogue vector has {t.numel()} entries for {Co} channels")
            return t.contiguous()

        if mode == "bits" and thr is None and dir is None:
            if not self.is_vote:
                raise BitvoteError(f"layer {self.name!r}: bit output needs a voter or thresholds")
            thr, dir = 1, 1
        self.mode = mode
        self.a, self.b = vec(a, torch.float32, 1.0), vec(b, torch.float32, 0.0)
        self.thr = vec(thr, torch.int32, 0)
        self.dir = vec(dir, torch.int32, 1)


class PackedConv(ConvEpilogue):
    """A binary conv (one conv group, dilation 1) compiled for the packed kernels.

    ``wbits``: bool weights ``(Co, C, kh, kw)``, True = +1. ``pad_value``: 0 (zero padding,
    padded terms invalid), +1 or -1. ``hier``: a resolved :class:`~bitvote.voter.Hierarchy`
    or ``None`` for popcount.
    """

    def __init__(self, wbits: torch.Tensor, stride: int = 1, padding: int = 0, pad_value: float = 0.0,
                 hier: Optional[Hierarchy] = None, name: str = "layer"):
        self._layer(wbits, stride, padding, pad_value, hier, name)
        Co, C, kh, kw = wbits.shape
        T, Wd = kh * kw, words(C)
        self.T, self.Wd = T, Wd
        self.load_weights(wbits)
        chmask = [((1 << min(64, C - 64 * j)) - 1) for j in range(Wd)]
        self.padpix = _arr([_i64(m) if self.pad_value > 0 else 0 for m in chmask], torch.int64)
        segs = segments(C, T, hier)
        self.seg_leaf = _arr((s[0] for s in segs), torch.int32)
        self.seg_tap = _arr((s[1] for s in segs), torch.int32)
        self.seg_word = _arr((s[2] for s in segs), torch.int32)
        self.seg_mask = _arr((_i64(s[3]) for s in segs), torch.int64)
        self.seg_first = _arr((s[4] for s in segs), torch.int64)
        self.masked = int(any(s[3] != chmask[s[2]] for s in segs))
        self.n_segments = len(segs)
        if hier is None:
            self.leaf_size = _arr([C * T], torch.int32)
            nodes, groups, ties, root_p = [1], [], [1], 0
        else:
            self.leaf_size = _arr(hier.leaf_sizes, torch.int32)
            nodes = [len(lv.groups) for lv in hier.levels]
            groups = [g for lv in hier.levels[1:] for g in lv.groups]
            ties = list(hier.tie_codes)
            root_p = int(hier.root == "P")
        # which kernel: 1 = one leaf (popcount, MV), 2 = one leaf per tap with all its channels
        # (tap-major HMV `tap`), 3 = tap-major leaves that are L-bit fields of the input words
        # (`tap,leaf=L`, L = 2..32 dividing C), 4 = channel-major trees over kernel rows
        # (`cm:P(M3)`, `cm:M<C>(M3(M3))`), 5 = one leaf per channel over its taps, 6 =
        # channel-major groups of whole channels (`cgroups=G`), 0 = the general segment kernel
        if hier is None or len(hier.leaf_sizes) == 1:
            self.kind = 1
        elif hier.order != CM and T > 1 and tuple(hier.leaf_sizes) == (C,) * T:
            self.kind = 2
        elif _field_leaves(hier, C, T, Wd):
            self.kind = 3
        elif _row_leaves(hier, C, self.kh, self.kw):
            self.kind = 4
        elif hier.order == CM and hier.depth == 2 and 2 <= T <= 15 and tuple(hier.leaf_sizes) == (T,) * C:
            self.kind = 5  # one leaf per channel over its taps (`cm:M<C>(M9)`)
        elif _cgroup_leaves(hier, C, T):
            self.kind = 6
        else:
            self.kind = 0
        self.lev_nodes = _arr(nodes, torch.int32)
        self.lev_groups = _arr(groups, torch.int32)
        self.lev_tie = _arr(ties, torch.int32)
        self.root_p = root_p
        self.epilogue("int")

    def load_weights(self, wbits: torch.Tensor) -> "PackedConv":
        """Pack new bool weights of the same shape (a training step's); the rest of the layer,
        its voter segments and levels, stays as built."""
        Co, C, kh, kw, T, Wd = self.Co, self.C, self.kh, self.kw, self.T, self.Wd
        if tuple(wbits.shape) != (Co, C, kh, kw):
            raise BitvoteError(f"layer {self.name!r}: weights {tuple(wbits.shape)} for a layer built for "
                               f"{(Co, C, kh, kw)}")
        cob = (Co + 7) // 8
        wt = wbits.bool().permute(0, 2, 3, 1).reshape(Co, T, C)
        ww = pack_bools(wt)  # (Co, T, Wd)
        if cob * 8 != Co:
            ww = torch.cat([ww, torch.zeros(cob * 8 - Co, T, Wd, dtype=torch.int64)])
        self.w = ww.view(cob, 8, T, Wd).permute(0, 2, 3, 1).contiguous()
        # popcount of each tap's weight words per output channel (cob, T, 8): the mismatches a
        # zero-padded tap adds when the kernel feeds it zero words (Harley-Seal tile)
        wu = self.w.view(torch.uint8).view(cob, T, Wd, 8, 8)
        self.wpc = _POPCOUNT8[wu.long()].sum(dim=(2, 4)).to(torch.int32).contiguous()
        self._args = {}  # they point at the old words
        return self

    def fuse_rprelu(self, shift_in, prelu, shift_out) -> "PackedConv":
        """Fuse a block's RPReLU into the float epilogue: ``prelu(y + shift_in, w) + shift_out``
        per channel, after the residual (if one is passed to the call), in PyTorch's order."""
        def vec(v):
            t = torch.as_tensor(v).detach().to(torch.float32).reshape(-1).contiguous()
            if t.numel() == 1:
                t = t.expand(self.Co).contiguous()
            if t.numel() != self.Co:
                raise BitvoteError(f"layer {self.name!r}: RPReLU vector has {t.numel()} entries for {self.Co} channels")
            return t
        self.rprelu = (vec(shift_in), vec(prelu), vec(shift_out))
        self._args = {}
        return self

    def use_segments(self, on: bool = True) -> "PackedConv":
        """Force the general segment kernel (``on``) or go back to the layer's best kernel; tests
        run both on the same layer."""
        if not hasattr(self, "_kind"):
            self._kind = self.kind
        self.kind = 0 if on else self._kind
        self._args = {}
        return self

    def epilogue(self, mode: str, a=None, b=None, thr=None, dir=None):
        """Choose the fused output (see the module docstring); per-channel vectors of length Co."""
        self._set_epilogue(mode, a, b, thr, dir, torch.device("cpu"))
        self._args = {}
        return self

    #: the graph may let the output overwrite the residual (see ``inplace``)
    inplace_residual = True

    def __call__(self, xw: torch.Tensor, threads: int = 1, isa=None, raw: bool = False,
                 residual: Optional[torch.Tensor] = None, inplace: bool = False,
                 leaf_sums: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Run on packed input words ``(N, H, W, Wd)``; the output follows the epilogue.

        ``raw=True`` returns the integer result (``"int"``) whatever the epilogue: what
        verify compares with the PyTorch layer. ``residual`` ``(N, Co, Ho, Wo)`` (float
        epilogues only) is added to the output, before a fused RPReLU (:meth:`fuse_rprelu`).
        ``inplace=True`` writes the output over the residual's memory (when it is channels-last
        float32; each element is read before it is written): one stream of memory traffic
        fewer, for callers done with the residual (the graph's blocks).
        ``leaf_sums``: an int16 buffer ``(leaves, N * Ho * Wo, Co)`` (contiguous) that also
        receives every leaf's sum of valid terms, the integers a training backward starts from
        (leaves of at most 32767 terms).
        """
        mode = "int" if raw else self.mode
        if xw.dim() != 4 or xw.shape[3] != self.Wd or xw.dtype != torch.int64:
            raise BitvoteError(f"layer {self.name!r}: expected packed int64 input (N, H, W, {self.Wd}), "
                               f"got {xw.dtype} {tuple(xw.shape)}")
        if not xw.is_contiguous():
            xw = xw.contiguous()
        N, H, W, _ = xw.shape
        Ho = (H + 2 * self.padding - self.kh) // self.stride + 1
        Wo = (W + 2 * self.padding - self.kw) // self.stride + 1
        if Ho < 1 or Wo < 1:
            raise BitvoteError(f"layer {self.name!r}: input {H}x{W} is too small for the kernel")
        if not hasattr(self, "_bufs"):
            self._bufs = {}
        res = None
        if residual is not None and mode in ("affine", "select"):
            if tuple(residual.shape) != (N, self.Co, Ho, Wo):
                raise BitvoteError(f"layer {self.name!r}: residual {tuple(residual.shape)} does not match the "
                                   f"output {(N, self.Co, Ho, Wo)}")
            res = residual.detach().to(torch.float32).permute(0, 2, 3, 1).contiguous()
        if res is not None and inplace:
            Wdo = 0
            out = res
        elif mode == "bits":
            Wdo = words(self.Co)
            out = recycled(self._bufs, "bits", (N, Ho, Wo, Wdo), torch.int64)
        elif mode == "int":
            Wdo = 0
            out = torch.empty((N, self.Co, Ho, Wo), dtype=torch.int32)
        else:
            Wdo = 0
            out = recycled(self._bufs, "float", (N, Ho, Wo, self.Co), torch.float32)
        key = (mode, N, H, W, int(threads))
        p = self._args.get(key) if hasattr(self, "_args") else None
        if p is None:
            p = self._make_args(mode, N, H, W, Ho, Wo, Wdo, threads)
        p.x, p.out = xw.data_ptr(), out.data_ptr()
        p.lsum = 0
        if leaf_sums is not None:
            if int(self.leaf_size.max()) > 32767:
                raise BitvoteError(f"layer {self.name!r}: a leaf of {int(self.leaf_size.max())} terms does not fit "
                                   "the int16 leaf sums (at most 32767)")
            want = (self.leaf_size.numel(), N * Ho * Wo, self.Co)
            if leaf_sums.dtype != torch.int16 or tuple(leaf_sums.shape) != want or not leaf_sums.is_contiguous():
                raise BitvoteError(f"layer {self.name!r}: leaf sums need a contiguous int16 buffer {want}, got "
                                   f"{leaf_sums.dtype} {tuple(leaf_sums.shape)}")
            p.lsum = leaf_sums.data_ptr()
        if mode in ("affine", "select"):
            p.res = 0 if res is None else res.data_ptr()
            p.post = (0 if res is None else 1) | (2 if getattr(self, "rprelu", None) is not None else 0)
        rc = lib().bv_conv(ctypes.byref(p), isa_id(isa))
        if rc != 0:
            raise MemoryError(f"bitvote kernel failed on layer {self.name!r} (code {rc})")
        return out.permute(0, 3, 1, 2) if mode in ("affine", "select") else out

    def _make_args(self, mode, N, H, W, Ho, Wo, Wdo, threads):
        """The kernel's argument struct for one input shape, cached (the call only sets x, out)."""
        if not hasattr(self, "_args") or len(self._args) > 16:
            self._args = {}
        p = ConvArgs(
            x=0, N=N, H=H, W=W, Wd=self.Wd,
            w=self.w.data_ptr(), Co=self.Co, kh=self.kh, kw=self.kw, stride=self.stride, pad=self.padding,
            padmode=int(self.pad_value), Ho=Ho, Wo=Wo, padpix=self.padpix.data_ptr(),
            S=self.n_segments, masked=self.masked,
            seg_tap=self.seg_tap.data_ptr(), seg_word=self.seg_word.data_ptr(), seg_mask=self.seg_mask.data_ptr(),
            seg_leaf=self.seg_leaf.data_ptr(), seg_first=self.seg_first.data_ptr(),
            L=self.leaf_size.numel(), leaf_size=self.leaf_size.data_ptr(),
            voter=int(self.hier is not None), nlev=self.lev_nodes.numel(), root_p=self.root_p,
            lev_nodes=self.lev_nodes.data_ptr(), lev_groups=self.lev_groups.data_ptr(), lev_tie=self.lev_tie.data_ptr(),
            outmode=EPILOGUES[mode], Wdo=Wdo, out=0,
            a=self.a.data_ptr(), b=self.b.data_ptr(), thr=self.thr.data_ptr(), dir=self.dir.data_ptr(),
            nthreads=int(threads), kind=self.kind, wpc=self.wpc.data_ptr(),
        )
        rp = getattr(self, "rprelu", None)
        if rp is not None:
            p.si, p.pw, p.so = (t.data_ptr() for t in rp)
        self._args[(mode, N, H, W, int(threads))] = p
        return p
