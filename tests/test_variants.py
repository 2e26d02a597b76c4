"""BN / without-BN / BN-free forms of every binary model, ReActNet-A, and AGC."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import bitvote
from bitvote import BitvoteError
from bitvote.nn import BinaryConv2d, Gain, ScaledStdConv2d, adaptive_clip_grad_

BINARY = ["xnornet18", "birealnet18", "reactnet18", "reactneta"]
FORMS = ["bn", "none", "free"]


def smooth_images(n=8, seed=0):
    """Low-frequency synthetic images: spatially correlated like photographs."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.randn(n, 3, 8, 8, generator=g), size=32, mode="bilinear", align_corners=False)
    return (x - x.mean()) / x.std()


def test_all_twelve_are_listed():
    assert set(BINARY) <= set(bitvote.models.names())


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("bn", FORMS)
@pytest.mark.parametrize("voter", ["popcount", "mv", "tap,groups=2"])
def test_every_form_trains_a_step(name, bn, voter):
    torch.manual_seed(0)
    m = bitvote.models.create(name, num_classes=100, voter=voter, width=0.125, bn=bn)
    n_bn = sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    assert (n_bn > 0) == (bn == "bn")
    if bn == "free":
        assert all(l.standardize for _, l in bitvote.models.voter_layers(m))
        assert any(isinstance(x, ScaledStdConv2d) for x in m.modules())
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 100, (4,))
    loss = F.cross_entropy(m(x), y)
    loss.backward()
    adaptive_clip_grad_([p for n_, p in m.named_parameters() if not n_.startswith("fc.")], 0.02)
    opt.step()
    assert torch.isfinite(loss)


def test_reactneta_layout():
    m = bitvote.models.create("reactneta", width=1.0)
    convs = dict(bitvote.models.voter_layers(m))
    # 13 blocks: one 3x3 each, one 1x1 (or two where the channels double: 64->128, 128->256,
    # 256->512, 512->1024, and 32->64)
    assert sum(l.kernel_size == (3, 3) for l in convs.values()) == 13
    assert sum(l.kernel_size == (1, 1) for l in convs.values()) == 13 + 5
    assert m.stem[0].stride == (1, 1) and m.stem[0].out_channels == 32 and m.stem[0].kernel_size == (3, 3)
    strides = [b.stride for b in m.blocks]
    assert strides.count(2) == 4
    assert m.fc.in_features == 1024
    # The seed's M4(M128) fits the 1x1 layers with C = 512 and tap is mv on 1x1 layers.
    m = bitvote.models.create("reactneta", width=1.0, voter={"*conv1x1*": "tap", "*": "mv"})
    assert m.blocks[6].conv1x1[0].hierarchy.describe() == "M512"


def test_beta_resets_after_every_downsampling_block():
    m = bitvote.models.create("birealnet18", bn="free", width=0.125, alpha=0.2)
    blocks = [b for layer in (m.layer1, m.layer2, m.layer3, m.layer4) for b in layer]
    var = 1.0
    for b in blocks:
        assert math.isclose(b.beta, 1 / math.sqrt(var))
        var = (1.0 if b.downsample else var) + 0.04
    # the block right after each downsampling block starts from 1 + alpha^2
    for i, b in enumerate(blocks[:-1]):
        if b.downsample:
            assert math.isclose(blocks[i + 1].beta, 1 / math.sqrt(1.04))
    assert sum(b.downsample for b in blocks) == 3


def test_free_differs_from_none_at_init():
    x = smooth_images(4)
    outs = {}
    for bn in ("none", "free"):
        torch.manual_seed(0)
        outs[bn] = bitvote.models.create("reactnet18", bn=bn, width=0.125)(x)
    assert not torch.allclose(outs["none"], outs["free"])


@pytest.mark.parametrize("name", BINARY)
def test_free_keeps_block_inputs_bounded_through_depth(name):
    """Measured at init on smooth images: the input of every residual unit, beta * x, has a
    variance that neither explodes nor vanishes (numbers in docs/models.md)."""
    torch.manual_seed(0)
    m = bitvote.models.create(name, bn="free", width=0.25)
    seen = []

    def hook(mod, inp, out):
        beta = getattr(mod, "beta", None) or mod.beta1
        seen.append(inp[0].var().item() * beta * beta)

    for mod in m.modules():
        if hasattr(mod, "beta") or hasattr(mod, "beta1"):
            mod.register_forward_hook(hook)
    with torch.no_grad():
        m(smooth_images(16))
    assert seen and max(seen) < 2.0 and min(seen) > 0.01, seen
    if name in ("xnornet18", "birealnet18"):
        assert min(seen) > 0.15, seen


def test_agc_is_unitwise():
    w = nn.Parameter(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))  # unit norms 5 and 0.5
    w.grad = torch.tensor([[30.0, 40.0], [0.003, 0.004]])  # unit grad norms 50 and 0.005
    adaptive_clip_grad_([w], clip=0.1)
    # unit 0: 50 > 0.1 * 5 -> scaled to norm 0.5; unit 1: 0.005 < 0.05 -> untouched
    assert torch.allclose(w.grad[0].norm(), torch.tensor(0.5))
    assert torch.allclose(w.grad[1], torch.tensor([0.003, 0.004]))
    # tiny weights use eps: max norm = clip * 1e-3
    z = nn.Parameter(torch.zeros(3, 2))
    z.grad = torch.ones(3, 2)
    adaptive_clip_grad_([z], clip=0.5, eps=1e-3)
    assert torch.allclose(z.grad.norm(dim=1), torch.full((3,), 5e-4))


def test_standardized_binary_weights():
    layer = BinaryConv2d(4, 3, 3, weight_scale=True, standardize=True)
    with torch.no_grad():
        layer.weight.add_(5.0)  # a common offset: sign(W) would be all +1
    wb, alpha = layer.binary_weight()
    assert (wb == -1).any() and (wb == 1).any()
    assert torch.allclose(alpha, layer.latent_weight().abs().mean(dim=(1, 2, 3)))


def test_bad_bn_form():
    with pytest.raises(BitvoteError, match="bn form"):
        bitvote.models.create("reactnet18", bn="batch")
    with pytest.raises(BitvoteError):
        bitvote.models.create("resnet18", bn="free")
