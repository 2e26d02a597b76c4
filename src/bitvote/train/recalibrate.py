"""BN recalibration: running statistics re-estimated on training images, weights untouched.

After a voter replaces a popcount, BN still holds the statistics of the popcount sums; the
conversion (:mod:`.convert`) and the training loop's voter stages (:mod:`.loop`) both
re-estimate them with :func:`recalibrate_bn`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import data as D
from ..errors import BitvoteError

__all__ = ["recalibrate_bn"]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, split: D.Split, n: int, batch_size: int = 250, seed: int = 0) -> nn.Module:
    """Re-estimate every BN's running mean/var on ``n`` training images; no weight changes.

    Running statistics are reset and averaged cumulatively (momentum ``None``) over
    un-augmented, normalized images in train-mode BN, so the result is the plain average over
    the ``n`` images and does not depend on the old statistics. The model ends in eval mode.
    """
    if n < 1:
        raise BitvoteError(f"--recalibrate-bn needs a positive number of images, got {n}")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model.eval()
    sub = D.subset(split, n, seed)
    dev = next(model.parameters()).device
    model.eval()
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for i in range(0, len(sub), batch_size):
            model(D.normalize(sub.x[i : i + batch_size].to(dev), sub.dataset))
    finally:
        for m, mom in saved:
            m.momentum = mom
        model.eval()
    return model
