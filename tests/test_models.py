"""Every model builds, runs forward and backward with every voter; the registry's surface."""

import pytest
import torch

import bitvote
from bitvote import BinaryConv2d, BitvoteError

VOTERS = ["popcount", "mv", "tap", "tap,groups=4", "groups=2", "tap,leaf=4", "cgroups=2", "P(M9)"]
BINARY = ["birealnet18", "reactnet18", "xnornet18"]


def test_names():
    assert set(bitvote.models.names()) >= {"resnet18", "birealnet18", "reactnet18", "xnornet18"}


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("voter", VOTERS)
def test_forward_backward(name, voter):
    torch.manual_seed(0)
    m = bitvote.models.create(name, num_classes=7, voter=voter, width=0.125)
    x = torch.randn(2, 3, 16, 16)
    y = m(x)
    assert y.shape == (2, 7)
    y.logsumexp(1).sum().backward()
    convs = [l for _, l in bitvote.models.voter_layers(m)]
    assert all(l.weight.grad is not None and l.weight.grad.abs().sum() > 0 for l in convs), voter
    assert m.stem[0].weight.grad.abs().sum() > 0
    assert m.config["voter"] == voter


def test_float_resnet18():
    m = bitvote.models.create("resnet18", num_classes=100, width=0.25)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert not any(isinstance(x, BinaryConv2d) for x in m.modules())
    with pytest.raises(BitvoteError):
        bitvote.models.create("resnet18", voter="mv")


def test_shapes_follow_the_seed():
    m = bitvote.models.create("reactnet18", width=1.0)
    convs = dict(bitvote.models.voter_layers(m))
    assert len(convs) == 16
    assert convs["layer1.0.conv"].in_channels == 64 and convs["layer4.3.conv"].out_channels == 512
    assert convs["layer2.0.conv"].stride == (2, 2)


def test_print_shows_voters():
    text = str(bitvote.models.create("reactnet18", voter="tap", width=0.125))
    assert "voter=tap -> M9(M8)" in text


def test_set_voter_converts_without_touching_weights():
    m = bitvote.models.create("birealnet18", width=0.125)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    bitvote.models.set_voter(m, "tap,groups=2", tie="first")
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(l.hierarchy.describe().startswith("M9(M2") for _, l in bitvote.models.voter_layers(m))


@pytest.mark.parametrize("bad", [dict(name="resnet19"), dict(name="reactnet18", width=0), dict(name="reactnet18", colour=1),
                                 dict(name="reactnet18", voter="M7")])
def test_bad_model_arguments(bad):
    name = bad.pop("name")
    with pytest.raises(BitvoteError) as e:
        bitvote.models.create(name, **bad)
    assert "\n" not in str(e.value)
