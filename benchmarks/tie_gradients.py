"""Why hierarchies use tie ``first``: the largest gradient of the first retraining step.

Converts a popcount checkpoint to a hierarchy with each tie rule and prints the loss and the
largest |gradient| of one train-mode step on 128 training images. With +1 at every level,
small leaves tie often, ties compound toward +1, votes become nearly constant, and BN divides
by a near-zero batch variance.

    PYTHONPATH=src python benchmarks/tie_gradients.py CKPT --data PATH [--voter 'tap,groups=4']
"""

import argparse

import torch
import torch.nn.functional as F

from bitvote import data as D
from bitvote.train.convert import convert_model
from bitvote.train import load_model

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("checkpoint")
p.add_argument("--data")
p.add_argument("--voter", default="tap,groups=4")
p.add_argument("--ties", nargs="+", default=["1", "first"])
p.add_argument("--images", type=int, default=128)
a = p.parse_args()
torch.set_num_threads(1)
tr = D.subset(D.load("cifar10", "train", a.data), a.images, 0)
x, y = D.normalize(tr.x, "cifar10"), tr.y
for tie in a.ties:
    m, _ = load_model(a.checkpoint)
    convert_model(m, a.voter, tie)
    m.train()
    loss = F.cross_entropy(m(x), y)
    loss.backward()
    g = max(q.grad.abs().max().item() for q in m.parameters() if q.grad is not None)
    print(f"{a.voter} tie {tie}: loss {loss.item():.3f}  max |grad| {g:.3g}", flush=True)
