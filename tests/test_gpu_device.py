"""Devices, TF32 and launch options of the GPU path, checked without a GPU.

A tensor on a GPU reports ``cuda:0`` while ``torch.device("cuda")`` has no index, and the
two compare unequal: a layer that stored the bare device refused every input on a real GPU.
On the CPU the same trap is ``torch.device("cpu", 0)`` (a CPU tensor reports ``cpu``), which
the interpreter tests below construct with; the normalization itself is tested on plain
``torch.device`` objects (no GPU needed to build one).
"""

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")

from bitvote import gpu  # noqa: E402
from bitvote.gpu import concrete_device, same_device, tf32  # noqa: E402


def _conv_fp32():
    """Whether cuDNN convs may use TF32 ("tf32") or not ("ieee"), however it was set."""
    try:
        return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    except RuntimeError:  # PyTorch >= 2.9 with per-backend settings that the flag cannot express
        p = torch.backends.cudnn.conv.fp32_precision
        return "ieee" if p == "ieee" else "tf32"


def _no_cuda_call():
    raise AssertionError("torch.cuda.current_device() called for a device that has its index")


def test_concrete_device_gives_bare_cuda_the_current_index(monkeypatch):
    assert concrete_device(torch.device("cuda"), current=0) == torch.device("cuda:0")
    assert concrete_device("cuda", current=3) == torch.device("cuda", 3)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    assert concrete_device("cuda") == torch.device("cuda:2")
    assert concrete_device(torch.device("cuda")) != torch.device("cuda")  # the stored form has an index
    assert same_device("cuda", "cuda:2") and same_device(torch.device("cuda"), torch.device("cuda", 2))
    assert not same_device("cuda", "cuda:0")


def test_concrete_device_keeps_explicit_indices_and_drops_the_cpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", _no_cuda_call)
    assert concrete_device("cuda:1") == torch.device("cuda", 1)
    assert concrete_device(torch.device("cuda", 0), current=5) == torch.device("cuda:0")
    assert concrete_device(torch.device("cpu", 0)) == torch.device("cpu") == torch.zeros(1).device
    assert concrete_device("cpu") == torch.device("cpu")
    assert not same_device("cuda:0", "cuda:1") and not same_device("cpu", "cuda:0")
    assert torch.device("cpu", 0) != torch.device("cpu")  # the trap the normalization removes


def test_tf32_context_sets_and_restores():
    before = _conv_fp32(), torch.backends.cuda.matmul.allow_tf32
    with tf32(False):
        assert _conv_fp32() == "ieee" and not torch.backends.cuda.matmul.allow_tf32
        with tf32(True):
            assert _conv_fp32() == "tf32" and torch.backends.cuda.matmul.allow_tf32
        assert _conv_fp32() == "ieee"
    assert (_conv_fp32(), torch.backends.cuda.matmul.allow_tf32) == before
    with pytest.raises(RuntimeError):
        with tf32(False):
            raise RuntimeError("inside")
    assert (_conv_fp32(), torch.backends.cuda.matmul.allow_tf32) == before


@pytest.mark.skipif(not hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"),
                    reason="PyTorch < 2.9 has no per-backend fp32_precision settings")
def test_tf32_context_under_per_backend_settings():
    """Conv and RNN set apart through the new API: PyTorch refuses the legacy flag's read."""
    conv, rnn = torch.backends.cudnn.conv, torch.backends.cudnn.rnn
    saved = conv.fp32_precision, rnn.fp32_precision
    try:
        conv.fp32_precision, rnn.fp32_precision = "tf32", "ieee"
        with pytest.raises(RuntimeError):
            torch.backends.cudnn.allow_tf32
        with tf32(False):
            assert conv.fp32_precision == "ieee"
        assert (conv.fp32_precision, rnn.fp32_precision) == ("tf32", "ieee")
    finally:
        conv.fp32_precision, rnn.fp32_precision = saved
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's default, through the flag again


def test_launch_options_per_kernel(monkeypatch):
    from bitvote.gpu import conv

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert conv._launch_opts("conv") == {"num_warps": 8, "enable_fp_fusion": False}
    assert conv._launch_opts("pack")["num_warps"] == 4
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert conv._launch_opts("conv") == {}


def test_bench_rows_say_whether_tf32_was_on():
    from bitvote.gpu.bench import format_row

    layer = {"layer": "l", "batch": 1, "popcount_ms": 1.0, "popcount_packed_ms": 0.5, "mv_ms": 1.0,
             "hmv_tap_ms": 1.0, "fp32_ms": 2.0, "tf32_ms": 1.0, "bf16_ms": 0.5, "popcount_gbmacs": 1.0}
    line = format_row(layer)
    assert "fp32 (TF32 off) 2.000" in line and "fp32 (TF32 on) 1.000" in line
    model = {"model": "m", "voter": "mv", "width": 1.0, "batch": 1, "device": "d", "gpu_engine_img_s": 1.0,
             "torch_fp32_img_s": 2.0, "torch_tf32_img_s": 3.0}
    assert "torch fp32 (TF32 off) 2 img/s" in format_row(model) and "(TF32 on) 3" in format_row(model)


# ---- the kernels in the interpreter, built with an indexed device ---------------------------------

triton_ok = pytest.mark.skipif(not gpu.available(), reason="triton missing, or no CUDA and TRITON_INTERPRET is off")


def _indexed(dev: str) -> torch.device:
    """The device with an explicit index: on the CPU the object a CUDA user's ``cuda`` stands for."""
    return torch.device(dev, 0)


@triton_ok
def test_conv_built_on_an_indexed_device_accepts_its_inputs():
    from bitvote.gpu.conv import GpuPackedConv, pack
    from bitvote.voter import resolve

    dev = gpu.require()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 5, 3, 3, generator=g)
    w = torch.randn(4, 5, 3, 3, generator=g) >= 0
    for hier in (None, resolve("mv", 45, 9)):
        pc = GpuPackedConv(w, 1, 1, 0.0, hier, device=_indexed(dev))
        assert pc.device == concrete_device(dev) and pc.device == x.to(dev).device
        xw = pack(x.to(dev))
        ref = pc(xw)
        assert ref.shape == (1, 4, 3, 3)
        if hier is not None:
            assert pc.epilogue("bits")(xw).shape == (1, 3, 3, 1)
        sums, valid, _ = pc.leaf_sums(xw)
        assert valid.shape[:3] == (1, 3, 3)


@triton_ok
def test_model_on_an_indexed_device_runs_with_tf32_off(monkeypatch):
    from bitvote import models
    from bitvote.engine.graph import compile_model
    from bitvote.gpu.model import GpuEngineModel

    torch.manual_seed(0)
    m = models.create("reactnet18", voter="mv", width=0.0625).eval()
    eng = GpuEngineModel(compile_model(m), _indexed(gpu.require()))
    seen = []
    real = torch.nn.functional.conv2d

    def spy(*a, **k):  # the stem and shortcut convs: full fp32 wanted
        seen.append(_conv_fp32())
        return real(*a, **k)

    monkeypatch.setattr(torch.nn.functional, "conv2d", spy)
    before = _conv_fp32()
    out = eng(torch.randn(2, 3, 8, 8))
    monkeypatch.undo()
    assert seen and set(seen) == {"ieee"}  # stem + every shortcut ran with TF32 off
    assert _conv_fp32() == before  # and the caller's setting is back
    assert out.shape == (2, 10) and out.device == concrete_device(gpu.require())


@triton_ok
def test_cli_bench_prints_labelled_rows(capsys, monkeypatch):
    from bitvote.cli import main

    if not gpu.interpreted():
        pytest.skip("the interpreter's smoke run only (on a GPU, benchmarks/gpu_check.sh times it)")
    assert main(["bench", "--device", "cuda", "--quick"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("device: cpu (Triton interpreter") and len(out) == 2
    assert "cuDNN fp32 (TF32 off)" in out[1] and "popcount" in out[1]
