"""Helpers of the native-kernel tests: one layer's forward and backward under a path switch,
and the fp32 closeness their gradients are held to."""


def run_layer(layer, x, g, native, monkeypatch):
    """``(votes, input gradient, weight gradient)`` of ``(layer(x) * g).sum()``, on the native
    kernels (``BITVOTE_NATIVE_VOTE=all``) or the float path."""
    monkeypatch.setenv("BITVOTE_NATIVE_VOTE", "all" if native else "0")
    x = x.clone().requires_grad_(True)
    layer.weight.grad = None
    y = layer(x)
    (y * g).sum().backward()
    return y.detach(), x.grad, layer.weight.grad.clone()


def close_fp32(a, b):
    """Equal up to fp32 summation order: within 1e-5 of the reference's largest value (or 1)."""
    scale = max(1.0, b.abs().max().item())
    return (a - b).abs().max().item() <= 1e-5 * scale
