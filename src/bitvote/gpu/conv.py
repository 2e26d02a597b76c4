"""One binary conv on the GPU: packed 32-bit words, voter segments, fused epilogue.

:class:`GpuPackedConv` mirrors :class:`bitvote.engine.PackedConv` (same constructor, same
``epilogue`` modes ``int`` / ``affine`` / ``select`` / ``bits``, same outputs), on 32-bit
words: ``(N, H, W, Wd)`` int32 with ``Wd = ceil(C / 32)``. The voter's leaves become the CPU
engine's segments (:func:`bitvote.packed.conv.segments`), split into 32-bit words. Voters
up to 3 levels deep (every rule: ``mv``, ``tap``, ``groups=G``, ``tap,groups=G``,
``tap,leaf=L``, ``cgroups=G``, ``cm:`` trees, uneven trees, ``P`` roots, every tie rule) vote
inside the kernel; deeper explicit trees get their leaf sums from the kernel and their votes
from :func:`bitvote.voter.reduce_votes`.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..packed.conv import EPILOGUES, ConvEpilogue
from ..errors import BitvoteError
from ..voter import CM, Hierarchy, Tie, reduce_votes
from . import concrete_device, interpreted, require, same_device

__all__ = ["GpuPackedConv", "pack", "words32", "from_engine_words", "to_engine_words", "unpack32"]


def words32(channels: int) -> int:
    """32-bit words per pixel for ``channels`` bits."""
    return (int(channels) + 31) // 32


def _k():
    require()
    from . import kernels

    return kernels


#: warps per program, per kernel: at the default 4 the conv tile (64 x 64 int32 accumulators
#: per voter level) needs 255 registers a thread and spills; at 8 it spills nothing.
NUM_WARPS = {"pack": 4, "conv": 8}


def _launch_opts(kernel: str):
    """Launch options of ``kernel`` (the interpreter takes none). The CPU engine computes
    ``r * a + b`` with two roundings (``-ffp-contract=off``): no FMA here either."""
    if interpreted():
        return {}
    return {"num_warps": NUM_WARPS[kernel], "enable_fp_fusion": False}


def pack(x: torch.Tensor, shift: Optional[torch.Tensor] = None, nan_flag: Optional[torch.Tensor] = None,
         block_p: int = 64) -> torch.Tensor:
    """Real ``(N, C, H, W)`` on the kernels' device -> int32 words ``(N, H, W, Wd)``.

    Bit = ``x (+ shift[c]) >= 0`` in float32 (-0.0 -> 1). NaN is an error: checked here unless
    a ``nan_flag`` int32 tensor is given, which the kernel sets to 1 (checked later, one sync).
    """
    K = _k()
    if x.dim() != 4:
        raise BitvoteError(f"pack expects an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if x.device.type != "cuda" and not interpreted():
        raise BitvoteError(f"pack: the input is on {x.device}; the Triton kernels need a CUDA tensor")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        x = x.float()
    N, C, H, W = x.shape
    Wd = words32(C)
    out = torch.empty((N, H, W, Wd), dtype=torch.int32, device=x.device)
    flag = nan_flag if nan_flag is not None else torch.zeros(1, dtype=torch.int32, device=x.device)
    sh = x if shift is None else shift.detach().to(device=x.device, dtype=torch.float32).reshape(-1).contiguous()
    if shift is not None and sh.numel() != C:
        raise BitvoteError(f"pack: shift has {sh.numel()} entries for {C} channels")
    npix = N * H * W
    if npix:
        grid = (triton_cdiv(npix, block_p), Wd)
        K.pack_kernel[grid](x, sh, out, flag, npix, C, H * W, W, Wd, *x.stride(),
                            HAS_SHIFT=shift is not None, BLOCK_P=block_p, **_launch_opts("pack"))
    if nan_flag is None and int(flag.item()):
        raise BitvoteError("NaN in the input of a binarizer: NaN is not a bit (SPEC.md)")
    return out


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def from_engine_words(w64: torch.Tensor, channels: int) -> torch.Tensor:
    """CPU engine int64 words ``(..., Wd64)`` -> int32 words ``(..., Wd32)`` (same bits)."""
    w = w64.contiguous().view(torch.int32)
    return w[..., : words32(channels)].contiguous()


def to_engine_words(w32: torch.Tensor) -> torch.Tensor:
    """int32 words ``(..., Wd32)`` -> CPU engine int64 words ``(..., ceil(Wd32 / 2))``."""
    w = w32.contiguous()
    if w.shape[-1] % 2:
        w = torch.cat([w, torch.zeros_like(w[..., :1])], -1)
    return w.view(torch.int64)


def unpack32(w32: torch.Tensor, channels: int) -> torch.Tensor:
    """int32 words ``(..., Wd32)`` -> bools ``(..., channels)``."""
    from ..packed.pack import unpack

    return unpack(to_engine_words(w32.cpu()), channels)


def _i32(m: int) -> int:
    return m - (1 << 32) if m >= 1 << 31 else m


class GpuPackedConv(ConvEpilogue):
    """A binary conv (one conv group, dilation 1) for the Triton kernels.

    Arguments as :class:`bitvote.engine.PackedConv`; ``device`` is where the tables live
    (``cuda``, or ``cpu`` under the interpreter; default: :func:`bitvote.gpu.require`), kept
    with its index (:func:`bitvote.gpu.concrete_device`) so inputs compare equal to it.
    """

    def __init__(self, wbits: torch.Tensor, stride: int = 1, padding: int = 0, pad_value: float = 0.0,
                 hier: Optional[Hierarchy] = None, name: str = "layer", device=None,
                 block_p: Optional[int] = None, block_o: Optional[int] = None):
        from ..packed.conv import segments
        from ..packed.pack import pack_bools

        dev = concrete_device(device if device is not None else require())
        self._layer(wbits, stride, padding, pad_value, hier, name)
        Co, C, kh, kw = wbits.shape
        self.device = dev
        T, Wd = kh * kw, words32(C)
        self.T, self.Wd = T, Wd
        wt = wbits.detach().cpu().bool().permute(0, 2, 3, 1).reshape(Co, T, C)
        w32 = from_engine_words(pack_bools(wt), C)  # (Co, T, Wd)
        self.w = w32.permute(1, 2, 0).contiguous().to(dev)  # (T, Wd, Co)
        chmask = [(1 << min(32, C - 32 * j)) - 1 for j in range(Wd)]
        self.padw = torch.tensor([_i32(m) if self.pad_value > 0 else 0 for m in chmask], dtype=torch.int32, device=dev)

        # the CPU engine's segments, on 32-bit words
        segs = []
        for leaf, t, j, mask, _first in segments(C, T, hier):
            for half in (0, 1):
                m = (mask >> (32 * half)) & 0xFFFFFFFF
                if not m:
                    continue
                jj = 2 * j + half
                bit = (m & -m).bit_length() - 1
                c = 32 * jj + bit
                flat = c * T + t if (hier is not None and hier.order == CM) else t * C + c
                segs.append((leaf, t, jj, m, bin(m).count("1"), bit, flat))
        depth = 0 if hier is None else hier.depth
        self.leafout = depth > 3
        # end codes: 1 closes the segment's leaf, 2 also its level-1 parent
        ends1 = set()
        if hier is not None and depth >= 2:
            acc = 0
            for g in hier.levels[1].groups:
                acc += g
                ends1.add(acc - 1)
        end = []
        for i, sg in enumerate(segs):
            last = i + 1 == len(segs) or segs[i + 1][0] != sg[0]
            end.append(0 if not last else (2 if sg[0] in ends1 else 1))

        def col(i, vals=None):
            v = [s[i] for s in segs] if vals is None else vals
            return torch.tensor([_i32(a) for a in v] or [0], dtype=torch.int32, device=dev)

        self.seg_leaf, self.seg_tap, self.seg_word, self.seg_mask = col(0), col(1), col(2), col(3)
        self.seg_cnt, self.seg_bit, self.seg_flat, self.seg_end = col(4), col(5), col(6), col(0, end)
        self.S = len(segs)
        self.L = 1 if hier is None else len(hier.leaf_sizes)
        if hier is None:
            ties = []
        else:
            ties = list(hier.tie_codes)
        self.depth = depth
        self.ties = ties
        self.root_tie = Tie.PLUS if hier is None else hier.levels[-1].tie
        self.need_first = hier is not None and hier.levels[0].tie.is_first
        self.block_p = block_p or (64 if not interpreted() else 32)
        self.block_o = block_o or 64
        self.epilogue("int")

    def epilogue(self, mode: str, a=None, b=None, thr=None, dir=None):
        """Choose the fused output, exactly as :meth:`bitvote.engine.PackedConv.epilogue`."""
        self._set_epilogue(mode, a, b, thr, dir, self.device)
        return self

    def _check(self, xw):
        if xw.dim() != 4 or xw.shape[3] != self.Wd or xw.dtype != torch.int32:
            raise BitvoteError(f"layer {self.name!r}: expected packed int32 input (N, H, W, {self.Wd}), "
                               f"got {xw.dtype} {tuple(xw.shape)}")
        if not same_device(xw.device, self.device):
            raise BitvoteError(f"layer {self.name!r}: input on {xw.device}, layer on {self.device}")

    rprelu = None

    def fuse_rprelu(self, shift_in, prelu, shift_out) -> "GpuPackedConv":
        """The CPU engine's fused RPReLU (after the residual), applied here as PyTorch ops in
        the same order as the model: ``prelu(y + shift_in) + shift_out`` per channel."""
        dev = self.device
        self.rprelu = tuple(torch.as_tensor(v).detach().to(torch.float32).reshape(1, -1, 1, 1).to(dev)
                            for v in (shift_in, prelu, shift_out))
        return self

    def __call__(self, xw: torch.Tensor, threads: int = 1, isa=None, raw: bool = False,
                 residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Run on packed int32 words ``(N, H, W, Wd)``; ``threads``/``isa`` are ignored (the CPU
        engine's signature). ``raw=True``: the integer result whatever the epilogue.
        ``residual`` and a fused RPReLU apply to float epilogues, as in the CPU engine."""
        out = self._run(xw, raw)
        if raw or self.mode not in ("affine", "select"):
            return out
        if residual is not None:
            out = out + residual.to(out.device, torch.float32)
        if self.rprelu is not None:
            si, w, so = self.rprelu
            y = out + si
            out = torch.where(y >= 0, y, w * y) + so
        return out

    def _run(self, xw: torch.Tensor, raw: bool) -> torch.Tensor:
        K = _k()
        self._check(xw)
        mode = "int" if raw else self.mode
        xw = xw.contiguous()
        N, H, W, _ = xw.shape
        Ho, Wo = self.out_size(H, W)
        if Ho < 1 or Wo < 1:
            raise BitvoteError(f"layer {self.name!r}: input {H}x{W} is too small for the kernel")
        dev = self.device
        if self.leafout:
            return self._leafout(K, xw, N, H, W, Ho, Wo, mode)
        if mode == "bits":
            Wdo = words32(self.Co)
            out = torch.empty((N, Ho, Wo, Wdo), dtype=torch.int32, device=dev)
            bo = max(32, min(self.block_o, 1 << (self.Co - 1).bit_length()))
        else:
            Wdo = 0
            out = torch.empty((N, self.Co, Ho, Wo), dtype=torch.int32 if mode == "int" else torch.float32, device=dev)
            bo = max(16, min(self.block_o, 1 << (self.Co - 1).bit_length()))
        self._launch(K, xw, out, out, out, N, H, W, Ho, Wo, Wdo, EPILOGUES[mode], False, bo)
        return out

    def _launch(self, K, xw, out, vout, fout, N, H, W, Ho, Wo, Wdo, outmode, leafout, bo):
        ties = self.ties + [1] * (3 - len(self.ties))
        root = self.root_tie
        grid = (triton_cdiv(N * Ho * Wo, self.block_p), triton_cdiv(self.Co, bo))
        K.conv_kernel[grid](
            xw, self.w, out, vout, fout,
            self.seg_tap, self.seg_word, self.seg_mask, self.seg_cnt, self.seg_bit, self.seg_flat,
            self.seg_end, self.seg_leaf,
            self.padw, self.a, self.b, self.thr, self.dir,
            N, H, W, self.Wd, self.Co, self.Co, Ho, Wo, self.S, self.L, Wdo, self.stride, self.padding,
            KW=self.kw, PADMODE=int(self.pad_value), DEPTH=min(self.depth, 3),
            ROOT_P=int(self.hier is not None and self.hier.root == "P"),
            TIE0=ties[0], TIE1=ties[1], TIER=root.code, ROOT_ABSTAIN=root.abstain_fill,
            NEED_FIRST=self.need_first, LEAFOUT=leafout, OUTMODE=outmode, INTERP=interpreted(),
            BLOCK_P=self.block_p, BLOCK_O=bo, **_launch_opts("conv"))

    def leaf_sums(self, xw: torch.Tensor):
        """``(sums, valid, first)`` per leaf: ``(N, Ho, Wo, Co, L)``, ``(N, Ho, Wo, 1, L)`` and
        ``(N, Ho, Wo, Co, L)`` (or None without a ``first`` leaf tie), for reduce_votes."""
        K = _k()
        self._check(xw)
        xw = xw.contiguous()
        N, H, W, _ = xw.shape
        Ho, Wo = self.out_size(H, W)
        dev, L = self.device, self.L
        sums = torch.empty((N, Ho, Wo, self.Co, L), dtype=torch.int32, device=dev)
        valid = torch.empty((N, Ho, Wo, 1, L), dtype=torch.int32, device=dev)
        first = torch.zeros_like(sums) if self.need_first else sums
        bo = max(16, min(self.block_o, 1 << (self.Co - 1).bit_length()))
        self._launch(K, xw, sums, valid, first, N, H, W, Ho, Wo, 0, 0, True, bo)
        return sums, valid, (first if self.need_first else None)

    def _leafout(self, K, xw, N, H, W, Ho, Wo, mode):
        """Hierarchies deeper than 3 levels: leaf sums here, votes by reduce_votes."""
        sums, valid, first = self.leaf_sums(xw)
        f = torch.float32
        r = reduce_votes(self.hier, sums.to(f), None if self.pad_value != 0 else valid.to(f),
                         None if first is None else first.to(f), dim=-1)
        r = r.round().to(torch.int32).permute(0, 3, 1, 2).contiguous()  # (N, Co, Ho, Wo)
        return self._epilogue_torch(r, mode)

    def _epilogue_torch(self, r: torch.Tensor, mode: str) -> torch.Tensor:
        v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
        if mode == "int":
            return r
        if mode == "affine":
            return r.float() * v(self.a) + v(self.b)
        if mode == "select":
            return torch.where(r > 0, v(self.a), v(self.b))
        d, th = v(self.dir), v(self.thr)
        bit = torch.where(d > 0, r >= th, torch.where(d < 0, r <= th, th != 0))
        return pack(bit.float() * 2 - 1)
