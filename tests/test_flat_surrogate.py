"""The ``flat`` sigma option: a hierarchy's exact votes with one MV's backward.

Properties: the votes equal the oracle's (and the chain-rule layer's) bit for bit; the
gradients equal those of an MV layer with the same weights, and the input gradient equals a
brute-force surrogate at the popcount; a counting root over leaves keeps its chain rule.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitvote import BinaryConv2d
from bitvote.errors import BitvoteError
from bitvote.experiments.recipes import recipe_options, recipe_slug
from bitvote.voter import check_sigma, reduce_votes, resolve, sigma_parts, sigma_without_flat

from oracle import binary_conv
from test_fastvote import TIES, close_fp32, layer_case, random_inputs, run_layer, tree_case

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _out_shape(case):
    k = case["k"]
    Ho = (case["H"] + 2 * case["padding"] - k) // case["stride"] + 1
    Wo = (case["W"] + 2 * case["padding"] - k) // case["stride"] + 1
    return case["N"], case["Co"], Ho, Wo


def _proxy_input_grad(x, w, g, stride, padding, pad_value, sigma_of, surrogate):
    """Brute force: d/dx of sum(g * F(s / sigma)) through the clipped STE, s the popcount."""
    x = x.clone().requires_grad_(True)
    xb = torch.where(x >= 0, 1.0, -1.0) + (x.clamp(-1, 1) - x.clamp(-1, 1).detach())
    wb = torch.where(w >= 0, 1.0, -1.0)
    xp = F.pad(xb, (padding,) * 4, value=float(pad_value))
    s = F.conv2d(xp, wb, stride=stride)
    ones = F.pad(torch.ones_like(x[:1, :1]), (padding,) * 4, value=0.0 if pad_value == 0 else 1.0)
    valid = F.conv2d(ones, torch.ones_like(wb[:1, :1]), stride=stride) * w.shape[1]
    u = s / sigma_of(valid)
    if surrogate == "ste":
        proxy = u.clamp(-1, 1)
    else:
        proxy = torch.where(u.abs() < 1, 2 * u - u * u.abs(), torch.sign(u))
    (g * proxy).sum().backward()
    return x.grad


@SETTINGS
@given(data=st.data(), base=st.sampled_from(["fanin", "valid", "unit", 0.5]),
       surrogate=st.sampled_from(["approxsign", "ste"]), native=st.booleans())
def test_flat_votes_are_exact_and_gradients_are_one_mv(data, base, surrogate, native):
    case = data.draw(layer_case())
    k, C = case["k"], case["C"]
    spec, levels, order, root = data.draw(tree_case(C, k * k))
    ties = [data.draw(st.sampled_from(TIES)) for _ in levels]
    tie = ",".join(map(str, reversed(ties)))
    x = random_inputs(data, case)
    opts = dict(stride=case["stride"], padding=case["padding"], pad_value=case["pad_value"], surrogate=surrogate)
    flat = BinaryConv2d(C, case["Co"], k, voter=spec, tie=tie, sigma=f"{base},flat", **opts)
    g = torch.randn(_out_shape(case))
    with pytest.MonkeyPatch.context() as mp:
        y, gx, gw = run_layer(flat, x, g, native, mp)
        want = binary_conv(x, flat.weight.detach(), case["stride"], case["padding"], case["pad_value"],
                           levels, ties, root, order)
        assert torch.equal(y, want), (spec, case, tie)
        if root == "P" or len(levels) == 1:  # flat changes nothing: the chain rule itself
            ref = BinaryConv2d(C, case["Co"], k, voter=spec, tie=tie, sigma=base, **opts)
        else:
            ref = BinaryConv2d(C, case["Co"], k, voter="mv", sigma=base, **opts)
        ref.weight.data.copy_(flat.weight.data)
        _, gx0, gw0 = run_layer(ref, x, g, native, mp)
    assert close_fp32(gx, gx0) and close_fp32(gw, gw0), (spec, case, tie, base, surrogate)
    if root == "M" and len(levels) > 1:
        n = C * k * k

        def sigma_of(valid):
            return {"fanin": n ** 0.5, "unit": 1.0, 0.5: 0.5 * n ** 0.5}.get(base, valid.clamp(min=1).sqrt())

        want_gx = _proxy_input_grad(x, flat.weight.detach(), g, case["stride"], case["padding"], case["pad_value"],
                                    sigma_of, surrogate)
        assert close_fp32(gx, want_gx), (spec, case, base, surrogate)


@SETTINGS
@given(data=st.data())
def test_reduce_votes_flat_gives_every_leaf_the_total_sums_gradient(data):
    """The reduction's own flat rule (leaf sums in, as verify and the float path use it)."""
    leaves = data.draw(st.lists(st.integers(2, 5), min_size=2, max_size=6))
    spec = f"M{len(leaves)}(" + ", ".join(f"M{s}" for s in leaves) + ")"
    n = sum(leaves)
    hier = resolve(spec, n, 1, tie=data.draw(st.sampled_from(TIES)))
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    sums = torch.stack([(torch.randint(0, s + 1, (7,)) * 2 - s).float() for s in leaves], 0)  # parity of s terms
    first = torch.where(torch.rand(sums.shape) < 0.5, -1.0, 1.0)
    sums.requires_grad_(True)
    v = reduce_votes(hier, sums, None, first, dim=0, sigma="fanin,flat")
    assert torch.equal(v.detach(), reduce_votes(hier, sums.detach(), None, first, dim=0, sigma="fanin"))
    g = torch.randn(v.shape)
    (v * g).sum().backward()
    u = sums.detach().sum(0) / n ** 0.5
    want = g * torch.where(u.abs() < 1, 2 - 2 * u.abs(), torch.zeros_like(u)) / n ** 0.5
    assert torch.allclose(sums.grad, want.expand_as(sums.grad), atol=1e-6)


def test_flat_under_a_deep_counting_root_is_one_line():
    layer = BinaryConv2d(4, 2, 3, 1, 1, voter="cm:P(M3(M3))", tie="first", sigma="fanin,flat")
    with pytest.raises(BitvoteError, match="counting root"):
        layer(torch.randn(1, 4, 5, 5))


def test_sigma_rule_text_forms():
    assert check_sigma("FANIN , flat") == "fanin,flat"
    assert check_sigma("2,flat,leaf=3") == "2.0,leaf=3,flat"
    assert check_sigma("fanin,leaf=1,flat") == "fanin,flat"
    assert sigma_parts("valid,leaf=2,flat") == ("valid", 2.0, True)
    assert sigma_without_flat("valid,leaf=2,flat") == "valid,leaf=2"
    for bad in ["fanin,flat,flat", "fanin,flatter", "fanin,leaf=0,flat"]:
        with pytest.raises(BitvoteError):
            check_sigma(bad)


def test_flat_recipe_sets_the_sigma_rule():
    p = {"sigma": "fanin", "retrain_epochs": 3, "recalibrate": 10}
    assert recipe_options("flat", p, "tap,leaf=4")[0]["sigma"] == "fanin,flat"
    assert recipe_options("leafsigma=2+flat", p, "tap,leaf=4")[0]["sigma"] == "fanin,leaf=2,flat"
    assert recipe_slug("kd+flat") == "kd_flat"
