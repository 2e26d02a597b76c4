"""The fused RSign / Sign / RPReLU kernels (bitvote.nn.fusedact) against the eager ops.

Forward values and input gradients must be bit-identical to the eager chain; parameter
gradients equal up to fp32 summation order. Inputs sit on the surrogates' boundaries
(x + b = 0, -0.0, +/-1, +/-clip), channel planes shorter and longer than the 8-lane blocks,
one and two threads.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitvote import binarize as B
from bitvote.errors import BitvoteError
from bitvote.nn import fusedact
from bitvote.nn.activations import RPReLU, RSign, Sign

pytestmark = pytest.mark.skipif(not fusedact.applies(torch.zeros(1, 1, 1, 1)), reason="no C compiler")

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def module(kind, C, clip=1.0):
    if kind == "rsign":
        return RSign(C)
    if kind == "rsign-ste":
        return RSign(C, B.Ste(clip))
    if kind == "sign":
        return Sign()
    if kind == "sign-ste":
        return Sign(B.Ste(clip))
    return RPReLU(C)


def run(mod, x, g, fused, monkeypatch):
    monkeypatch.setenv("BITVOTE_NATIVE_ACT", "1" if fused else "0")
    x = x.clone().requires_grad_(True)
    mod.zero_grad(set_to_none=True)
    y = mod(x)
    (y * g).sum().backward()
    return y.detach(), x.grad, [p.grad.clone() for p in mod.parameters()]


def close(a, b, scale):
    return (a - b).abs().max().item() <= 1e-5 * max(1.0, scale)


@st.composite
def case(draw):
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 17))
    H, W = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kind = draw(st.sampled_from(["rsign", "rsign-ste", "sign", "sign-ste", "rprelu"]))
    clip = draw(st.sampled_from([1.0, 0.5, 2.0]))
    return N, C, H, W, kind, clip


@SETTINGS
@given(c=case(), seed=st.integers(0, 2**16), ties=st.booleans(), threads=st.sampled_from([1, 2]))
def test_fused_matches_eager(c, seed, ties, threads):
    N, C, H, W, kind, clip = c
    torch.manual_seed(seed)
    mod = module(kind, C, clip)
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_(torch.randint(-2, 3, p.shape).float() / 2 if ties else torch.randn(p.shape))
    if ties:  # x + b lands exactly on 0, -0.0, +/-0.5, +/-1, +/-2: every boundary of the surrogates
        x = torch.randint(-4, 5, (N, C, H, W)).float() / 2
        x.view(-1)[0] = -0.0
    else:
        x = torch.randn(N, C, H, W) * 1.5
    g = torch.randn(N, C, H, W)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with pytest.MonkeyPatch.context() as mp:
            y0, gx0, gp0 = run(mod, x, g, False, mp)
            y1, gx1, gp1 = run(mod, x, g, True, mp)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(y1, y0) and torch.equal(gx1, gx0), (c, ties)
    scale = g.abs().sum().item() * (1 + x.abs().max().item()) / max(1, C)
    assert all(close(a, b, scale) for a, b in zip(gp1, gp0)), (c, ties)


def test_fused_path_runs_and_the_switch_turns_it_off(monkeypatch):
    calls = []
    real = fusedact._RPReLUFn.apply
    monkeypatch.setattr(fusedact._RPReLUFn, "apply", lambda *a: calls.append(1) or real(*a))
    mod, x = RPReLU(4), torch.randn(2, 4, 3, 3)
    mod(x)
    assert calls == [1]
    monkeypatch.setenv("BITVOTE_NATIVE_ACT", "0")
    mod(x)
    assert calls == [1]


@pytest.mark.parametrize("make", [
    lambda x: x.to(memory_format=torch.channels_last),
    lambda x: x.double(),
    lambda x: x[:, :, :, :2],  # not contiguous
    lambda x: x.flatten(2),  # not 4-D
])
def test_other_layouts_take_the_eager_ops(make, monkeypatch):
    x = make(torch.randn(2, 3, 4, 4))
    assert not fusedact.applies(x)
    mod = RPReLU(3).to(x.dtype) if x.dim() == 4 else None
    if mod is not None:
        torch.testing.assert_close(mod(x), mod.shift_out(mod.prelu(mod.shift_in(x))), rtol=0, atol=0)


def test_inputs_of_other_ranks_take_the_eager_ops():
    """RSign and Sign broadcast like the eager ops on any rank (a 1-D or 2-D input too)."""
    mod = RSign(3)
    for x in (torch.randn(3), torch.randn(2, 3)):
        assert torch.equal(mod(x), mod.sign(mod.shift(x)))
        assert torch.equal(Sign()(x), B.binarize(x, Sign().surrogate))


def test_autocast_and_custom_surrogates_take_the_eager_ops():
    x = torch.randn(2, 3, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fusedact.applies(x)

    class Wide(B.ApproxSign):
        pass

    assert fusedact.rsign(x, torch.zeros(1, 3, 1, 1), Wide()) is None
    assert fusedact.rsign(x, torch.zeros(1, 3, 1, 1), B.ApproxSign()) is not None


def test_nan_is_refused_as_by_the_binarizer(monkeypatch):
    x = torch.randn(2, 3, 4, 4)
    x[1, 2, 3, 0] = math.nan
    for mod in (RSign(3), Sign()):
        with pytest.raises(BitvoteError, match="NaN"):
            mod(x)
    monkeypatch.setattr(B, "CHECK_NAN", False)  # switched off: the eager op's value, not a silent -1
    monkeypatch.setenv("BITVOTE_NATIVE_ACT", "1")
    got = RSign(3)(x)
    monkeypatch.setenv("BITVOTE_NATIVE_ACT", "0")
    assert torch.equal(got, RSign(3)(x))


def test_a_reactnet_step_is_the_same_either_way(monkeypatch):
    from bitvote import models

    torch.manual_seed(0)
    model = models.create("reactnet18", width=0.125).train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    out = []
    for fused in ("0", "1"):
        monkeypatch.setenv("BITVOTE_NATIVE_ACT", fused)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (l0, g0), (l1, g1) = out
    assert torch.equal(l0, l1)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_module_first_run_under_inference_mode_still_trains():
    """An evaluation pass under inference mode (the trainer's) must not leave the kernels a
    tensor that autograd refuses to keep."""
    x = torch.randn(2, 3, 4, 4)
    for mod in (Sign(), RSign(3), RPReLU(3)):
        with torch.inference_mode():
            want = mod(x)
        xx = x.clone().requires_grad_(True)
        y = mod(xx)
        y.sum().backward()
        assert torch.equal(y.detach(), want) and xx.grad is not None


def test_a_failing_build_falls_back_to_the_eager_ops_with_one_line(monkeypatch, capsys):
    from bitvote import native

    monkeypatch.setattr(fusedact, "_LIB", None)
    monkeypatch.setattr(fusedact, "_broken", None)

    def broken(*a, **k):
        raise BitvoteError("no C compiler found for the fused RSign/RPReLU kernels")

    monkeypatch.setattr(native, "build", broken)
    x = torch.randn(2, 3, 4, 4)
    assert not fusedact.applies(x) and not fusedact.applies(x)  # tried once
    err = capsys.readouterr().err
    assert err.count("fused activation kernels unavailable") == 1 and "no C compiler" in err
    mod = RPReLU(3)
    assert torch.equal(mod(x), mod.shift_out(mod.prelu(mod.shift_in(x))))
