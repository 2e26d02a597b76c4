"""Every epilogue of the Triton conv against the CPU engine, then whole-model verify: a quick
first check of a GPU machine (about 20 s, mostly kernel compilation).

Each row is one (voter, epilogue, padding) case on a small layer, printed as soon as it is
compared: the Triton result must equal the CPU engine's (:class:`bitvote.engine.PackedConv`)
bit for bit; where the engine's C library does not build, the PyTorch layer
(:func:`bitvote.nn.functional.binary_conv2d`) is the reference instead, and the row says so.
Then :func:`bitvote.engine.verify.verify` with ``device="cuda"`` on three models at width
1/8 (per layer exact, flips explained, logits within 1e-3: this is where TF32 would show).

    python3 -u benchmarks/gpu_smoke.py [--skip-models]

On a machine without CUDA it runs on CPU tensors under ``TRITON_INTERPRET=1`` (slowly).
Exit code: 0 when every row passed, 1 otherwise.
"""

import argparse
import sys
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-models", action="store_true", help="only the per-epilogue rows")
    ap.add_argument("--size", type=int, default=8, help="input height and width (default 8)")
    ap.add_argument("--reference", choices=("auto", "engine", "torch"), default="auto",
                    help="compare with the CPU engine, the PyTorch layer, or the engine where it builds")
    args = ap.parse_args()

    from bitvote import gpu
    from bitvote.errors import BitvoteError
    from bitvote.nn import functional as BF
    from bitvote.voter import resolve

    try:
        dev = gpu.concrete_device(gpu.require())
    except BitvoteError as e:
        print(f"gpu_smoke: {e}", file=sys.stderr)
        return 2
    from bitvote.gpu.bench import device_name
    from bitvote.gpu.conv import GpuPackedConv, pack, unpack32

    PackedConv = None
    ref_name = "PyTorch layer"
    if args.reference != "torch":
        try:
            from bitvote.engine import PackedConv, pack as cpack, unpack
            from bitvote.packed.build import lib

            lib()
            ref_name = "CPU engine"
        except Exception as e:  # noqa: BLE001 - no C compiler here: fall back to the PyTorch layer
            if args.reference == "engine":
                raise
            PackedConv = None
            ref_name = f"PyTorch layer (CPU engine unavailable: {type(e).__name__})"
    print(f"device: {device_name(dev)}; torch {torch.__version__}; reference: {ref_name}", flush=True)

    g = torch.Generator().manual_seed(0)
    C, Co, S = 40, 48, args.size
    cases = [  # (voter spec, tie, epilogue, padding, pad value)
        ("popcount", 1, "int", 1, 0.0), ("popcount", 1, "affine", 1, 0.0), ("popcount", 1, "bits", 1, 0.0),
        ("mv", 1, "int", 1, 0.0), ("mv", -1, "select", 1, 1.0), ("mv", "first", "bits", 1, -1.0),
        ("tap", 1, "bits", 1, 0.0), ("tap,groups=2", "first", "int", 1, 0.0),
        (f"M2(M2(M2(M{C * 9 // 8})))", 1, "int", 1, 0.0), ("tap", "first,1", "affine", 0, 0.0),
    ]
    def layer_case(spec, tie, mode, padding, pv):
        x = torch.randint(-2, 3, (2, C, S, S), generator=g).float()  # exact zeros: ties are common
        w = torch.randn(Co, C, 3, 3, generator=g)
        hier = resolve(spec, C * 9, 9, tie)
        a, b = torch.rand(Co, generator=g) + 0.5, torch.randn(Co, generator=g)
        thr = torch.randint(-3, 4, (Co,), generator=g, dtype=torch.int32)
        d = torch.randint(-1, 2, (Co,), generator=g, dtype=torch.int32)
        if mode in ("affine", "select"):
            kw = dict(a=a, b=b)
        else:  # popcount bits: thresholds; vote bits: the vote itself
            kw = dict(thr=thr, dir=d) if mode == "bits" and hier is None else {}
        gpc = GpuPackedConv(w >= 0, 1, padding, pv, hier, "smoke", device=dev).epilogue(mode, **kw)
        got = gpc(pack(x.to(dev))).cpu()
        if mode == "bits":  # compared as bits (the engine's words are 64-bit, these 32-bit)
            got = unpack32(got, Co)
        if PackedConv is not None:
            want = PackedConv(w >= 0, 1, padding, pv, hier, "smoke").epilogue(mode, **kw)(cpack(x))
            if mode == "bits":
                want = unpack(want, Co)
        else:
            r = BF.binary_conv2d(x, w, 1, padding, voter=hier, pad_value=pv, weight_scale=False)
            v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
            if mode == "int":
                want = r.to(torch.int32)
            elif mode == "affine":
                want = r * v(a) + v(b)
            elif mode == "select":
                want = torch.where(r > 0, v(a), v(b))
            elif hier is not None:
                want = (r > 0).permute(0, 2, 3, 1)
            else:
                want = torch.where(v(d) > 0, r >= v(thr), torch.where(v(d) < 0, r <= v(thr), v(thr) != 0))
                want = want.permute(0, 2, 3, 1)
        if got.shape != want.shape:
            return False, f"shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        bad = int((got.to(want.dtype) != want).sum())
        return bad == 0, f"{bad} mismatching outputs of {want.numel()}"

    def model_case(name, voter, img, nimg):
        from bitvote import models
        from bitvote.engine.verify import verify
        from bitvote.gpu.model import GpuEngineModel

        torch.manual_seed(0)
        m = models.create(name, voter=voter, width=0.125).eval()
        for mod in m.modules():  # non-trivial BN statistics
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
        r = verify(m, torch.randn(nimg, 3, img, img), engine=lambda g: GpuEngineModel(g, "cuda"))
        return r["passed"], (f"{r['layer_mismatches']} layer mismatches, {r['flips']} flips "
                             f"({r['flips_unexplained']} unexplained), max logit diff {r['max_logit_diff']:.2e} "
                             f"(atol {r['atol']})")

    def row(label, fn, *a):
        """One printed row; an exception (a kernel that does not compile, say) is a failed row
        with its first line, and the next row still runs."""
        t0 = time.perf_counter()
        try:
            ok, what = fn(*a)
        except Exception as e:  # noqa: BLE001
            ok, what = False, f"ERROR {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        print(f"{'PASS' if ok else 'FAIL'} {label}: {what}  ({time.perf_counter() - t0:.1f} s, compile included)",
              flush=True)
        return not ok

    failed = 0
    for spec, tie, mode, padding, pv in cases:
        label = f"{spec:<22} tie {str(tie):<8} {mode:<6} pad {padding} value {pv:+.0f}"
        failed += row(label, layer_case, spec, tie, mode, padding, pv)
    if not args.skip_models:
        # CIFAR-sized images on the GPU; the interpreter (CPU tensors) gets the tests' tiny ones
        img, nimg = (32, 8) if dev.type == "cuda" else (8, 1)
        for name, voter in (("reactnet18", "tap,groups=2"), ("xnornet18", "mv"), ("birealnet18", "popcount")):
            failed += row(f"verify {name} ({voter}, width 1/8, {nimg}x{img}x{img})", model_case, name, voter, img, nimg)
    print(f"{'all passed' if not failed else f'{failed} FAILED'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
