"""The Triton GPU kernels against the brute-force oracle, the PyTorch layer and the CPU engine.

Here (no GPU) they run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set
below before the kernels are imported, unless the environment already chose). On a CUDA
machine ``TRITON_INTERPRET=0 pytest tests/test_gpu_kernels.py`` runs the same tests on the
GPU (benchmarks/gpu_check.sh, with ``BITVOTE_GPU_EXAMPLES`` bounding the hypothesis cases). Shapes are small: the interpreter is slow.
"""

import os
import sys

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed (optional extra: pip install 'bitvote[gpu]')",
                    exc_type=ImportError)

import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bitvote import gpu  # noqa: E402
from bitvote.errors import BitvoteError  # noqa: E402
from bitvote.nn import functional as BF  # noqa: E402
from bitvote.voter import resolve  # noqa: E402

if not gpu.available():
    pytest.skip("no CUDA device and TRITON_INTERPRET is off: the Triton kernels cannot run", allow_module_level=True)

from bitvote.gpu.conv import GpuPackedConv, from_engine_words, pack, to_engine_words, unpack32  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import oracle  # noqa: E402

DEV = gpu.require()


def _examples(default: int) -> int:
    """Hypothesis examples per test: ``$BITVOTE_GPU_EXAMPLES`` when set. On a GPU each new
    shape or rule is a kernel compilation (~1 s), so a timed device run asks for few."""
    try:
        return max(1, int(os.environ["BITVOTE_GPU_EXAMPLES"]))
    except (KeyError, ValueError):
        return default


def _specs(C, T):
    return oracle.voter_specs(C, T, deep=True)


@st.composite
def case(draw):
    C = draw(st.integers(1, 70))
    k = draw(st.sampled_from([1, 3]))
    return dict(
        C=C, k=k, spec=draw(st.sampled_from(_specs(C, k * k))),
        Co=draw(st.integers(1, 40)),
        N=draw(st.integers(1, 2)), H=draw(st.integers(2, 5)), W=draw(st.integers(2, 5)),
        stride=draw(st.sampled_from([1, 2])), padding=draw(st.sampled_from([0, 1])),
        pad_value=draw(st.sampled_from([0.0, 1.0, -1.0])),
        tie=draw(st.sampled_from([1, -1, "first", "first,1,-1"])),
        seed=draw(st.integers(0, 2**16)),
    )


def _hier(c):
    T = c["k"] ** 2
    try:
        return resolve(c["spec"], c["C"] * T, T, c["tie"])
    except BitvoteError:  # a tie sequence whose length does not match the spec's levels
        return resolve(c["spec"], c["C"] * T, T, 1)


@settings(max_examples=_examples(25), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case())
def test_conv_matches_oracle_layer_and_bits(c):
    g = torch.Generator().manual_seed(c["seed"])
    # small integers make exact zeros (ties) common; -0.0 must pack to +1
    x = torch.randint(-2, 3, (c["N"], c["C"], c["H"], c["W"]), generator=g).float()
    x[0, 0, 0, 0] = -0.0
    w = torch.randn(c["Co"], c["C"], c["k"], c["k"], generator=g)
    if c["H"] + 2 * c["padding"] < c["k"] or c["W"] + 2 * c["padding"] < c["k"]:
        return
    hier = _hier(c)
    args = (x, w, c["stride"], c["padding"], c["pad_value"])
    if hier is None:
        want = oracle.binary_conv(*args)
    else:
        want = oracle.binary_conv(*args, levels=[list(lv.groups) for lv in hier.levels],
                                  ties=[lv.tie for lv in hier.levels], root=hier.root, order=hier.order)
    with BF.reference_votes():  # the reduction, not the packed kernels under test
        layer = BF.binary_conv2d(x, w, c["stride"], c["padding"], voter=hier, pad_value=c["pad_value"])
    assert torch.equal(layer, want)
    pc = GpuPackedConv(w >= 0, c["stride"], c["padding"], c["pad_value"], hier, device=DEV)
    xw = pack(x.to(DEV))
    got = pc(xw)
    assert torch.equal(got.cpu().float(), want), c
    if pc.is_vote:
        bits = pc.epilogue("bits")(xw)
        assert torch.equal(unpack32(bits, c["Co"]).permute(0, 3, 1, 2), want > 0)
        a, b = torch.randn(c["Co"]), torch.randn(c["Co"])
        sel = pc.epilogue("select", a=a, b=b)(xw).cpu()
        assert torch.equal(sel, torch.where(want > 0, a.view(1, -1, 1, 1), b.view(1, -1, 1, 1)))
    else:
        a, b = torch.randn(c["Co"]), torch.randn(c["Co"])
        aff = pc.epilogue("affine", a=a, b=b)(xw).cpu()
        assert torch.equal(aff, want * a.view(1, -1, 1, 1) + b.view(1, -1, 1, 1))
        thr = torch.randint(-3, 4, (c["Co"],), dtype=torch.int32)
        dirs = torch.randint(-1, 2, (c["Co"],), dtype=torch.int32)
        bits = pc.epilogue("bits", thr=thr, dir=dirs)(xw)
        t, d = thr.view(1, -1, 1, 1).float(), dirs.view(1, -1, 1, 1)
        wantb = torch.where(d > 0, want >= t, torch.where(d < 0, want <= t, t != 0))
        assert torch.equal(unpack32(bits, c["Co"]).permute(0, 3, 1, 2), wantb)


@settings(max_examples=_examples(15), deadline=None)
@given(C=st.integers(1, 100), N=st.integers(1, 2), H=st.integers(1, 4), W=st.integers(1, 4),
       seed=st.integers(0, 2**16), shift=st.booleans(), channels_last=st.booleans())
def test_pack_matches_the_cpu_engine(C, N, H, W, seed, shift, channels_last):
    from bitvote.engine import pack as cpack

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (N, C, H, W), generator=g).float()
    x[0, 0, 0, 0] = -0.0
    sh = torch.randint(-1, 2, (C,), generator=g).float() * 0.5 if shift else None
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    want = cpack(x, sh)
    got = pack(x.to(DEV), sh)
    assert torch.equal(to_engine_words(got.cpu()), want)
    assert torch.equal(from_engine_words(want, C), got.cpu())


def test_pack_rejects_nan():
    x = torch.zeros(1, 3, 2, 2)
    x[0, 1, 1, 1] = float("nan")
    with pytest.raises(BitvoteError, match="NaN"):
        pack(x.to(DEV))


def test_input_checks():
    pc = GpuPackedConv(torch.ones(4, 40, 3, 3, dtype=torch.bool), device=DEV)
    with pytest.raises(BitvoteError, match="int32"):
        pc(torch.zeros(1, 3, 3, 1, dtype=torch.int64, device=DEV))
    with pytest.raises(BitvoteError, match="too small"):
        pc(torch.zeros(1, 2, 2, 2, dtype=torch.int32, device=DEV))


@pytest.mark.parametrize("name,voter", [("reactnet18", "tap,groups=2"), ("xnornet18", "mv"), ("birealnet18", "popcount")])
def test_whole_model_verify(name, voter):
    """The GPU graph is exact per layer and explained end to end (engine.verify, device cuda)."""
    from bitvote import models
    from bitvote.engine.verify import verify
    from bitvote.gpu.model import GpuEngineModel

    torch.manual_seed(0)
    m = models.create(name, voter=voter, width=0.125).eval()
    for mod in m.modules():  # non-trivial BN statistics
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    r = verify(m, torch.randn(1, 3, 8, 8), engine=GpuEngineModel)
    assert r["layer_mismatches"] == 0 and r["passed"], r


def test_cli_bench_without_cuda_is_one_line(capsys, monkeypatch):
    from bitvote.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert main(["bench", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0]


def test_train_helper_runs_on_cpu():
    from bitvote import models
    from bitvote.gpu.train import prepare_for_gpu_training

    m = models.create("reactnet18", voter="mv", width=0.125)
    m2 = prepare_for_gpu_training(m, compile=False)
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    m2(x).sum().backward()
