"""Forward-only votes on the packed conv kernels (bitvote.nn.packedvote) against the oracle.

Passes that need no gradient (evaluation, BN recalibration, the ``flat`` rule's vote) take
the packed kernels; their votes must be bit-identical to the brute-force oracle for every
tree, tie, padding and stride, at the 64-bit word boundaries of the packed input, and a
training step through them must equal the one without them exactly.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitvote import BinaryConv2d, BitvoteError
from bitvote.nn import packedvote
from bitvote.packed import PackedConv

from oracle import binary_conv
from test_fastvote import TIES, layer_case, random_inputs, tree_case

pytestmark = pytest.mark.skipif(not packedvote.available(), reason="no C compiler for the packed kernels")

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _layer(case, spec, ties, C=None, groups=1):
    C = case["C"] if C is None else C
    return BinaryConv2d(C * groups, case["Co"] * groups, case["k"], case["stride"], case["padding"], groups=groups,
                        voter=spec, pad_value=case["pad_value"], tie=",".join(map(str, reversed(ties))))


def _oracle(layer, x, case, levels, ties, root, order, groups=1):
    cin, cout = x.shape[1] // groups, layer.weight.shape[0] // groups
    return torch.cat([binary_conv(x[:, g * cin:(g + 1) * cin], layer.weight.detach()[g * cout:(g + 1) * cout],
                                  case["stride"], case["padding"], case["pad_value"], levels, ties, root, order)
                      for g in range(groups)], 1)


@pytest.fixture
def calls(monkeypatch):
    """How many conv groups the packed kernels voted on."""
    seen = []
    real = packedvote.conv_votes

    def counted(*a, **k):
        seen.append(1)
        return real(*a, **k)

    monkeypatch.setattr(packedvote, "conv_votes", counted)
    return seen


@SETTINGS
@given(data=st.data())
def test_forward_only_votes_match_oracle(data):
    case = data.draw(layer_case())
    k, C = case["k"], case["C"]
    spec, levels, order, root = data.draw(tree_case(C, k * k))
    ties = [data.draw(st.sampled_from(TIES)) for _ in levels]
    groups = data.draw(st.sampled_from([1, 1, 2]))
    layer = _layer(case, spec, ties, groups=groups)
    x = random_inputs(data, dict(case, C=C * groups))
    with torch.no_grad():
        got = layer(x)
    assert torch.equal(got, _oracle(layer, x, case, levels, ties, root, order, groups)), (spec, case, ties)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), C=st.sampled_from([63, 64, 65, 129]))
def test_word_boundaries_match_oracle(data, C):
    """Channel counts around the 64-bit words: masked tails, leaves straddling two words."""
    case = dict(k=3, C=C, Co=data.draw(st.sampled_from([3, 9])), stride=data.draw(st.sampled_from([1, 2])),
                padding=1, H=4, W=3, N=1, pad_value=data.draw(st.sampled_from([0.0, 1.0, -1.0])))
    spec, levels, order, root = data.draw(tree_case(C, 9))
    ties = [data.draw(st.sampled_from(TIES)) for _ in levels]
    layer = _layer(case, spec, ties)
    x = random_inputs(data, case)
    with torch.no_grad():
        got = layer(x)
    assert torch.equal(got, _oracle(layer, x, case, levels, ties, root, order)), (spec, C, ties)


def test_forward_only_passes_take_the_packed_kernels(calls, monkeypatch):
    layer = BinaryConv2d(8, 6, 3, 1, 1, groups=2, voter="tap,leaf=2", tie="first")
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        a = layer(x)
    assert len(calls) == 2  # one call per conv group
    y = layer(x)  # no input gradient wanted, but the weights want one: a graph
    assert y.grad_fn is not None and torch.equal(y, a)
    monkeypatch.setenv("BITVOTE_PACKED_VOTE", "0")
    del calls[:]
    with torch.no_grad():
        b = layer(x)
    assert not calls and torch.equal(a, b)


@pytest.mark.parametrize("spec", ["tap", "tap,leaf=4", "cm:M8(M3(M3))", "groups=4", "tap,groups=4"])
def test_flat_training_step_is_unchanged_by_the_packed_votes(spec, calls, monkeypatch):
    """The ``flat`` rule's votes come from the packed kernels; output and gradients are the
    same numbers as on the other paths."""
    torch.manual_seed(0)
    layer = BinaryConv2d(8, 5, 3, 2, 1, voter=spec, tie="first", sigma="fanin,flat")
    x0 = torch.randn(3, 8, 7, 6)
    g = torch.randn(3, 5, 4, 3)
    out = []
    for on in ("1", "0"):
        monkeypatch.setenv("BITVOTE_PACKED_VOTE", on)
        x = x0.clone().requires_grad_(True)
        layer.weight.grad = None
        y = layer(x)
        (y * g).sum().backward()
        out.append((y.detach(), x.grad, layer.weight.grad.clone()))
    assert len(calls) == 1
    for a, b in zip(*out):
        assert torch.equal(a, b), spec


def test_new_weights_of_a_cached_layer_are_packed_again(calls):
    """Layers of one shape share the cached segments; each call packs its own weights."""
    torch.manual_seed(1)
    a, b = (BinaryConv2d(6, 4, 3, 1, 1, voter="tap,leaf=3", tie=-1) for _ in range(2))
    x = torch.randn(2, 6, 4, 4)
    levels, ties = [[3] * 18, [2] * 9, [9]], [-1, -1, -1]
    for _ in range(2):
        for layer in (a, b, a):
            with torch.no_grad():
                got = layer(x)
            assert torch.equal(got, binary_conv(x, layer.weight.detach(), 1, 1, 0.0, levels, ties))
        with torch.no_grad():
            a.weight.neg_()  # a training step that flips every sign
    assert len(calls) == 6


def test_reloading_weights_of_another_shape_is_refused():
    conv = PackedConv(torch.ones(4, 3, 3, 3, dtype=torch.bool), 1, 1)
    with pytest.raises(BitvoteError, match=r"weights \(4, 3, 1, 1\) for a layer built for \(4, 3, 3, 3\)"):
        conv.load_weights(torch.ones(4, 3, 1, 1, dtype=torch.bool))


def test_shapes_the_kernels_do_not_take_use_the_other_paths(calls):
    layer = BinaryConv2d(4, 3, 3, 1, (1, 0), voter="tap,leaf=2", tie="first")
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        got = layer(x)
    assert not calls
    assert got.shape == (1, 3, 5, 3)
    dil = BinaryConv2d(4, 3, 3, 1, 2, dilation=2, voter="tap,leaf=2", tie="first")
    with torch.no_grad():
        dil(x)
    assert not calls
    tiny = BinaryConv2d(4, 3, 3, 1, 0, voter="tap,leaf=2", tie="first")
    with torch.no_grad():  # smaller than the kernel: the output is empty, as on the other paths
        assert tiny(torch.randn(1, 4, 2, 2)).shape == (1, 3, 0, 0)
    assert not calls


def test_bf16_autocast_keeps_votes_exact(calls):
    layer = BinaryConv2d(8, 5, 3, 1, 1, voter="tap,leaf=4", tie="first")
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        want = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = layer(x)
    assert got.dtype == torch.float32 and torch.equal(got, want) and len(calls) == 2


def test_a_failing_build_falls_back_once(monkeypatch, capsys):
    def broken():
        raise RuntimeError("the C compiler failed\nmore lines")

    monkeypatch.setattr(packedvote, "lib", broken)
    monkeypatch.setattr(packedvote, "_broken", None)
    layer = BinaryConv2d(4, 3, 3, 1, 1, voter="tap,leaf=2", tie="first")
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        y = layer(x)
        layer(x)
    err = capsys.readouterr().err
    assert err.count("packed vote kernels unavailable (RuntimeError: the C compiler failed)") == 1
    assert "Traceback" not in err and not packedvote.enabled()
    assert torch.equal(y, binary_conv(x, layer.weight.detach(), 1, 1, 0.0, [[2] * 18, [2] * 9, [9]], ["first"] * 3))


def test_reference_votes_run_the_reduction_alone(calls, monkeypatch):
    """What verify and the kernel tests compare with: no kernel path inside, on this thread."""
    from bitvote.nn import fastvote, functional as BF, rowvote

    seen = []
    for mod, name in ((fastvote, "conv_votes"), (rowvote, "conv_votes")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _real=real, **k: seen.append(1) or _real(*a, **k))
    x, w = torch.randn(2, 6, 5, 5), torch.randn(4, 6, 3, 3)
    for spec in ("tap,leaf=2", "cm:P(M3)", "tap"):
        from bitvote.voter import resolve

        hier = resolve(spec, 54, 9, "first")
        with BF.reference_votes():
            ref = BF.binary_conv2d(x, w, 1, 1, voter=hier)
            with torch.enable_grad():
                BF.binary_conv2d(x, w.requires_grad_(), 1, 1, voter=hier)
            w.requires_grad_(False)
        assert not calls and not seen, spec
        assert torch.equal(BF.binary_conv2d(x, w, 1, 1, voter=hier), ref)  # outside: the packed kernels
        assert len(calls) == 1
        del calls[:]


def test_threads_voting_at_once_keep_their_own_weights():
    """Two layers of one shape, each in its own thread, many calls interleaved: a cached layer
    is per thread, so no call ever runs on the other layer's weights."""
    import threading

    torch.manual_seed(2)
    layers = [BinaryConv2d(8, 6, 3, 1, 1, voter="tap", tie=1) for _ in range(2)]
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        want = [binary_conv(x, m.weight, 1, 1, 0.0, [[8] * 9, [9]], [1, 1]) for m in layers]
    assert (want[0] != want[1]).sum() > 10  # a mix-up would show
    bad = []

    def work(i):
        for _ in range(30):
            with torch.no_grad():
                if not torch.equal(layers[i](x), want[i]):
                    bad.append(i)

    import sys

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads inside every call
    try:
        ts = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not bad
