"""bitvote.nn.functional.binary_conv2d, the functional core the layers call, against the oracle."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import oracle
from bitvote import BitvoteError
from bitvote.nn import functional as BF
from bitvote.voter import parse_spec, parse_tie, resolve

cases = st.fixed_dictionaries({
    "seed": st.integers(0, 2**16), "cin": st.integers(1, 5), "cout": st.integers(1, 4),
    "k": st.sampled_from([1, 2, 3]), "stride": st.sampled_from([1, 2]), "padding": st.integers(0, 1),
    "pad_value": st.sampled_from([0.0, 1.0, -1.0]), "size": st.integers(3, 6),
})


def _inputs(c):
    g = torch.Generator().manual_seed(c["seed"])
    x = torch.randn(2, c["cin"], c["size"], c["size"], generator=g)
    w = torch.randn(c["cout"], c["cin"], c["k"], c["k"], generator=g)
    return x, w


@settings(max_examples=25, deadline=None)
@given(c=cases)
def test_popcount_is_the_oracle_sum(c):
    x, w = _inputs(c)
    got = BF.binary_conv2d(x, w, c["stride"], c["padding"], pad_value=c["pad_value"])
    want = oracle.binary_conv(x, w, c["stride"], c["padding"], c["pad_value"])
    assert torch.equal(got, want)
    scaled = BF.binary_conv2d(x, w, c["stride"], c["padding"], pad_value=c["pad_value"], weight_scale=True)
    alpha = w.abs().mean(dim=(1, 2, 3)).view(1, -1, 1, 1)
    torch.testing.assert_close(scaled, want * alpha)


@settings(max_examples=20, deadline=None)
@given(c=cases, tie=st.sampled_from(["1", "-1", "first"]))
def test_mv_is_the_oracle_vote(c, tie):
    x, w = _inputs(c)
    n = c["cin"] * c["k"] ** 2
    h = resolve(parse_spec("mv"), n, c["k"] ** 2, parse_tie(tie))
    got = BF.binary_conv2d(x, w, c["stride"], c["padding"], voter=h, pad_value=c["pad_value"])
    t = tie if tie == "first" else int(tie)
    want = oracle.binary_conv(x, w, c["stride"], c["padding"], c["pad_value"], [[n]], [t], "M")
    assert torch.equal(got, want)


def test_real_weights_keep_the_weights_and_refuse_a_voter():
    torch.manual_seed(0)
    x, w = torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 3)
    got = BF.binary_conv2d(x, w, 1, 1, binary_weights=False)
    want = torch.nn.functional.conv2d(oracle.sign(x), w, None, 1, 1)
    torch.testing.assert_close(got, want)
    h = resolve(parse_spec("mv"), 27, 9, parse_tie("1"))
    with pytest.raises(BitvoteError, match="needs binary weights"):
        BF.binary_conv2d(x, w, 1, 1, voter=h, binary_weights=False)


def test_gradient_reaches_input_and_weight():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    BF.binary_conv2d(x, w, 1, 1).sum().backward()
    assert x.grad is not None and w.grad is not None
    assert bool((w.grad[w.detach().abs() > 1] == 0).all())  # the weight's clamp-STE


@pytest.mark.parametrize("spec,levels", [("mv", lambda C, T: [[C * T]]), ("tap", lambda C, T: [[C] * T, [T]])])
@pytest.mark.parametrize("tie", [1, -1, "first"])
@pytest.mark.parametrize("k,padding", [(1, 1), (2, 2), (3, 1)])
def test_roots_without_a_valid_term_take_their_tie_value(spec, levels, tie, k, padding):
    """Outputs whose window is all zero padding (k <= padding) have no valid term: the root
    abstains and outputs its tie value (+1 under 'first'); where every output has a valid
    term the abstention pass is skipped. Both against the brute-force oracle."""
    torch.manual_seed(k + padding)
    C, Co = 3, 5
    x, w = torch.randn(2, C, 4, 3), torch.randn(Co, C, k, k)
    T = k * k
    hier = resolve(spec, C * T, T, tie)
    with BF.reference_votes():
        got = BF.binary_conv2d(x, w, 1, padding, voter=hier, pad_value=0.0)
    lv = levels(C, T)
    want = oracle.binary_conv(x, w, 1, padding, 0.0, lv, [tie] * len(lv), "M", "tap")
    assert torch.equal(got, want)
    assert torch.equal(BF.binary_conv2d(x, w, 1, padding, voter=hier, pad_value=0.0), want)  # the kernels too
    if k <= padding:  # the corner outputs read only padding
        assert torch.all(got[:, :, 0, 0] == (1 if tie == "first" else tie))
