"""CPU bf16 autocast in training (`--amp`): trains, and its votes match fp32 exactly."""

import torch

import bitvote
from bitvote.train.loop import _autocast


def test_amp_forward_votes_match_fp32():
    torch.manual_seed(0)
    m = bitvote.models.create("reactnet18", voter="tap", width=0.125).eval()
    x = torch.randn(2, 3, 16, 16)
    conv_out = {}
    layer = dict(bitvote.models.voter_layers(m))["layer2.0.conv"]
    def hook(mod, i, o):
        conv_out.setdefault(0, (i[0].detach(), o.detach()))

    layer.register_forward_hook(hook)
    m(x)
    xin, ref = conv_out[0]
    with _autocast(torch.device("cpu"), amp=True):
        got = layer(xin)
    assert torch.equal(got, ref)


def test_amp_training_step_is_finite():
    from bitvote.train.loop import _step

    torch.manual_seed(0)
    m = bitvote.models.create("reactnet18", voter="mv", width=0.125)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    loss, logits = _step(m, None, opt, x, y, 1e-3, 0.0, torch.device("cpu"), amp=True)
    assert torch.isfinite(loss) and logits.shape == (4, 10)
    assert all(torch.isfinite(p).all() for p in m.parameters())
