"""CPU bf16 autocast in training (`--amp`): trains, and its votes match fp32 exactly."""

import torch

import bitvote
from bitvote.train.loop import autocast


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
    with autocast(torch.device("cpu"), amp=True):
        got = layer(xin)
    assert torch.equal(got, ref)


def test_amp_training_step_is_finite():
    from bitvote.train.loop import optimizer_step

    torch.manual_seed(0)
    m = bitvote.models.create("reactnet18", voter="mv", width=0.125)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    loss, logits = optimizer_step(m, None, opt, x, y, 1e-3, 0.0, torch.device("cpu"), amp=True)
    assert torch.isfinite(loss) and logits.shape == (4, 10)
    assert all(torch.isfinite(p).all() for p in m.parameters())


def test_agc_in_training_step_clips_unitwise():
    """--agc: each unit's gradient is capped at clip * |unit|, the classifier untouched."""
    from bitvote.nn import adaptive_clip_grad_
    from bitvote.train.loop import optimizer_step

    torch.manual_seed(0)
    m = bitvote.models.create("reactnet18", width=0.125, bn="free")
    params = [p for n, p in m.named_parameters() if not n.startswith("fc.")]
    opt = torch.optim.SGD(m.parameters(), lr=0.0)  # lr 0: the step leaves the weights, grads stay
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    optimizer_step(m, None, opt, x, y, 0.0, 0.0, torch.device("cpu"), agc=(1e-3, params))
    from bitvote.nn.normfree import unitwise_norm

    for p in params:
        if p.grad is not None:
            assert (unitwise_norm(p.grad) <= 1e-3 * unitwise_norm(p).clamp(min=1e-3) * 1.0001).all()
    assert m.fc.weight.grad is not None
    assert callable(adaptive_clip_grad_)


def test_deep_hierarchy_with_fixed_ties_is_flagged():
    from bitvote.train.loop import biased_deep_hierarchy

    assert biased_deep_hierarchy(bitvote.models.create("reactnet18", voter="tap,groups=2", width=0.125))
    assert not biased_deep_hierarchy(bitvote.models.create("reactnet18", voter="tap,groups=2", width=0.125, tie="first"))
    assert not biased_deep_hierarchy(bitvote.models.create("reactnet18", voter="tap", width=0.125))
