"""A plain brute-force reference for SPEC.md, written for the tests only.

It imports nothing from bitvote: it builds every output's n terms with ``unfold``, walks an
explicit tree of group sizes node by node, and takes the votes with Python-level rules.
A tree is given bottom-up as ``levels``: ``levels[0]`` are the leaf sizes (terms), each later
list groups the nodes of the level below; ``ties`` bottom-up; ``root`` "M" or "P".
"""

import torch
import torch.nn.functional as F


def sign(x):
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def terms(x, w, stride, padding, pad_value, order="tap"):
    """(N, Co, L, n) products a_i * w_i and a (L, n) validity mask, flat order per SPEC.md."""
    xb, wb = sign(x), sign(w)
    N, C, H, W = xb.shape
    Co, _, kh, kw = wb.shape
    T = kh * kw
    xp = F.pad(xb, (padding, padding, padding, padding), value=float(pad_value))
    mask = F.pad(torch.ones(1, C, H, W), (padding,) * 4, value=0.0 if pad_value == 0 else 1.0)
    cols = F.unfold(xp, (kh, kw), stride=stride)  # (N, C*T, L) channel-major
    mcols = F.unfold(mask, (kh, kw), stride=stride)[0]  # (C*T, L)
    wflat = wb.reshape(Co, C * T)
    if order == "tap":
        perm = torch.tensor([c * T + t for t in range(T) for c in range(C)])
        cols, mcols, wflat = cols[:, perm], mcols[perm], wflat[:, perm]
    prod = cols.unsqueeze(1) * wflat.view(1, Co, C * T, 1)  # (N, Co, n, L)
    return prod.permute(0, 1, 3, 2), (mcols.t() > 0.5)


def _vote(s, c, first, tie, is_root):
    if s > 0:
        return 1
    if s < 0:
        return -1
    if c == 0:  # abstain
        if is_root:
            return 1 if tie == "first" else tie
        return 0
    return first if tie == "first" else tie


def eval_tree(term_vals, valid, levels, ties, root="M"):
    """One output: term_vals list of +/-1, valid list of bools."""
    nodes = []  # (value, active) per node at the current level
    pos = 0
    last = len(levels) - 1
    for size in levels[0]:
        vals = term_vals[pos : pos + size]
        ok = valid[pos : pos + size]
        pos += size
        s = sum(v for v, k in zip(vals, ok) if k)
        c = sum(ok)
        first = next((v for v, k in zip(vals, ok) if k), 0)
        if last == 0 and root == "P":
            return s
        nodes.append(_vote(s, c, first, ties[0], last == 0))
    for li in range(1, len(levels)):
        out, pos = [], 0
        for g in levels[li]:
            kids = nodes[pos : pos + g]
            pos += g
            s = sum(kids)
            c = sum(1 for k in kids if k != 0)
            first = next((k for k in kids if k != 0), 0)
            if li == last and root == "P":
                out.append(s)
            else:
                out.append(_vote(s, c, first, ties[li], li == last))
        nodes = out
    assert len(nodes) == 1
    return nodes[0]


def binary_conv(x, w, stride, padding, pad_value, levels=None, ties=None, root="M", order="tap"):
    """Reference output (N, Co, Ho, Wo): sums for levels=None, else the tree's votes."""
    prod, valid = terms(x, w, stride, padding, pad_value, order)
    N, Co, L, n = prod.shape
    Ho = (x.shape[2] + 2 * padding - w.shape[2]) // stride + 1
    Wo = (x.shape[3] + 2 * padding - w.shape[3]) // stride + 1
    if levels is None:
        return (prod * valid.unsqueeze(0).unsqueeze(0)).sum(-1).view(N, Co, Ho, Wo)
    out = torch.empty(N, Co, L)
    pv = prod.tolist()
    vm = valid.tolist()
    for a in range(N):
        for o in range(Co):
            for l in range(L):
                out[a, o, l] = eval_tree(pv[a][o][l], vm[l], levels, ties, root)
    return out.view(N, Co, Ho, Wo)


def voter_specs(C, T, deep=False):
    """Voter specs that fit a layer of C channels and T taps, for the kernel property tests."""
    n = C * T
    out = ["popcount", "mv", "tap", f"cm:M{C}(M{T})" if T > 1 else "mv", f"P(M{C})" if T > 1 else "mv"]
    for g in (2, 3, 4):
        if n % g == 0:
            out += [f"groups={g}", f"cgroups={g}"]
        if C % g == 0:
            out += [f"tap,groups={g}", f"tap,leaf={g}"]
    if n >= 3:
        a = n // 3
        out.append(f"M2(M{a}, M{n - a})")
    if deep and n % 8 == 0:
        out.append(f"M2(M2(M2(M{n // 8})))")  # depth 4
    return out
