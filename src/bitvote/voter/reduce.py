"""The reduction: leaf sums -> votes through a hierarchy's levels (SPEC.md, "Output modes").

:func:`reduce_votes` is the single implementation of the voters: the PyTorch layers, the
packed engine's verify and the RTL check all call it with leaf sums they compute their own
way. The segment helpers (:func:`segment_sum`, :func:`first_nonzero`, :func:`first_true`,
:func:`segment_starts`) are public because the layers' functional core forms leaf sums and
first terms with them; the spec side (what a hierarchy is) is :mod:`bitvote.voter.spec`.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch

from .._fuse import fused
from ..binarize import SurrogateLike, get_surrogate
from ..errors import BitvoteError
from .spec import SIGMA_RULES, Hierarchy, SigmaLike, Tie, sigma_parts, sigma_without_flat, split_sigma

__all__ = [
    "reduce_votes",
    "flat_surrogate",
    "flat_changes",
    "vote",
    "vote_dtype",
    "segment_sum",
    "segment_starts",
    "first_nonzero",
    "first_true",
    "first_live",
    "sigma_for",
]


class _VoteFn(torch.autograd.Function):
    """The vote on integer sums ``s``: ``sign(s + fill / 2)``.

    ``fill`` (+1, -1 or 0, a scalar or a tensor) is the output wanted where ``s == 0``; since
    ``s`` is an integer, adding half of it never changes a non-zero sign. Backward is the
    surrogate's ``F'(s / sigma) / sigma``.
    """

    @staticmethod
    def forward(ctx, s, fill, surrogate, sigma):
        ctx.save_for_backward(s)
        ctx.surrogate, ctx.sigma = surrogate, sigma
        if isinstance(fill, tuple):  # a first term as the broadcast product of two factors
            return _vote_forward_product(s, *fill)
        if torch.is_tensor(fill):
            fill = fill.to(s.dtype)
        elif s.device.type == "cpu":  # a 0-d tensor: one compiled loop for +1 and -1 (see _fuse)
            fill = torch.tensor(float(fill), dtype=s.dtype)
        return _vote_forward(s, fill)

    @staticmethod
    def backward(ctx, g):
        (s,) = ctx.saved_tensors
        return ctx.surrogate.backward(g, s, ctx.sigma), None, None, None


class _FlatGradFn(torch.autograd.Function):
    """Forward ``votes`` unchanged; backward the surrogate of one MV at the total sum ``s``.

    ``votes`` come from a no-grad pass, so the hierarchy's own chain rule never runs: every
    term's gradient is ``F'(s / sigma) / sigma`` times the incoming one, as in an MV.
    """

    @staticmethod
    def forward(ctx, votes, s, surrogate, sigma):
        ctx.save_for_backward(s)
        ctx.surrogate, ctx.sigma = surrogate, sigma
        return votes.clone()

    @staticmethod
    def backward(ctx, g):
        (s,) = ctx.saved_tensors
        return None, ctx.surrogate.backward(g.to(s.dtype), s, ctx.sigma), None, None


def flat_surrogate(votes: torch.Tensor, total: torch.Tensor, valid: Optional[torch.Tensor], n: int,
                   surrogate: SurrogateLike, sigma: SigmaLike) -> torch.Tensor:
    """``votes`` (exact, no grad) with the backward of one MV over all ``n`` terms.

    ``total``: the sum of every valid term of each output (the popcount ``s``, differentiable),
    shaped like ``votes``; ``valid``: its valid-term counts (``None``: all valid). The width
    comes from the base of ``sigma`` (its ``leaf=``/``flat`` options do not apply to one MV).
    """
    base = sigma_parts(sigma)[0]
    sig = sigma_for(base, [n], valid, total, 0)
    return _FlatGradFn.apply(votes, total, get_surrogate(surrogate), sig)


def _vote_forward_pure(s, fill):
    return torch.add(s, fill, alpha=0.5).sign()


def _vote_forward_eager(s, fill):
    return (torch.add(s, fill, alpha=0.5) if torch.is_tensor(fill) else s + 0.5 * fill).sign_()


_vote_forward = fused(_vote_forward_pure, _vote_forward_eager)


def _vote_forward_product_pure(s, a, b):
    return torch.add(s, a * b, alpha=0.5).sign()


# the leaf tie 'first' of tap blocks: (input value) x (weight row), never materialized
_vote_forward_product = fused(_vote_forward_product_pure, flatten=False)


def vote(s: torch.Tensor, tie=1, surrogate: SurrogateLike = "approxsign", sigma=1.0) -> torch.Tensor:
    """One majority vote on sums ``s`` (no abstention): +1, -1, or ``tie`` where ``s == 0``."""
    if torch.is_tensor(tie):
        fill = tie
    else:
        tie = Tie.parse(tie)
        if tie.is_first:
            raise BitvoteError("vote(): tie 'first' needs the first terms; use reduce_votes with leaf_first")
        fill = tie.fill
    return _VoteFn.apply(s, fill, get_surrogate(surrogate), sigma)


def segment_sum(x: torch.Tensor, groups: Sequence[int], dim: int) -> torch.Tensor:
    """Sum consecutive runs of ``groups`` sizes along ``dim``."""
    if len(set(groups)) == 1:
        g = groups[0]
        if g == 1:
            return x
        return x.unflatten(dim, (len(groups), g)).sum(dim + 1)
    return torch.stack([c.sum(dim) for c in x.split(list(groups), dim)], dim)


def first_nonzero(x: torch.Tensor, groups: Sequence[int], dim: int) -> torch.Tensor:
    """The first non-zero entry of each run along ``dim`` (0 where a run is all zero)."""

    def first(chunk, d):
        g = chunk.shape[d]
        if g <= 64:  # a select/where chain: argmax over a strided dim is ~20x slower on the CPU
            out = chunk.select(d, 0)
            for k in range(1, g):
                out = torch.where(out == 0, chunk.select(d, k), out)
            return out
        idx = (chunk != 0).to(torch.uint8).argmax(d, keepdim=True)
        return torch.gather(chunk, d, idx).squeeze(d)

    if len(set(groups)) == 1:
        return first(x.unflatten(dim, (len(groups), groups[0])), dim + 1)
    return torch.stack([first(c, dim) for c in x.split(list(groups), dim)], dim)


def segment_starts(groups: Sequence[int]) -> List[int]:
    out, acc = [], 0
    for g in groups:
        out.append(acc)
        acc += g
    return out


def first_true(mask: torch.Tensor, groups, dim: int) -> torch.Tensor:
    """Index (along ``dim``, absolute) of the first True of each run; the run's start if none."""
    starts = torch.tensor(segment_starts(groups), device=mask.device)
    shape = [1] * mask.dim()
    shape[dim] = len(groups)
    if len(set(groups)) == 1:
        rel = mask.unflatten(dim, (len(groups), groups[0])).to(torch.uint8).argmax(dim + 1)
    else:
        rel = torch.stack([c.to(torch.uint8).argmax(dim) for c in mask.split(list(groups), dim)], dim)
    return rel + starts.view(shape)


def first_live(v: torch.Tensor, c: Optional[torch.Tensor], groups: Sequence[int], dim: int) -> torch.Tensor:
    """Each node's first non-abstaining child vote (0 if all abstain): ``first`` ties above a leaf.

    A child abstains (votes 0) exactly when its valid count ``c`` is 0, and ``c`` depends only
    on the output position, so the index is found on the small ``c`` and the votes gathered
    once, instead of a select/where chain over the full tensor.
    """
    if c is None:  # nothing abstains: the first child
        return v.index_select(dim, torch.tensor(segment_starts(groups), device=v.device))
    idx = first_true(c > 0, groups, dim)
    shape = list(v.shape)
    shape[dim] = len(groups)
    return v.gather(dim, idx.expand(shape))


def sigma_for(rule: SigmaLike, groups: Sequence[int], valid: Optional[torch.Tensor], ref: torch.Tensor, dim: int):
    """The surrogate width of each voter of a level (:data:`~bitvote.voter.spec.SIGMA_RULES`),
    shaped to broadcast against ``ref`` along ``dim``; ``valid`` is the level's valid counts."""
    def fanin():
        if len(set(groups)) == 1:
            return math.sqrt(groups[0])
        shape = [1] * ref.dim()
        shape[dim] = len(groups)
        return torch.tensor(groups, dtype=ref.dtype, device=ref.device).sqrt().view(shape)

    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        f = fanin()
        return f * float(rule)
    if rule == "fanin":
        return fanin()
    if rule == "unit":
        return 1.0
    if rule == "valid":
        if valid is None:
            return fanin()
        return valid.to(ref.dtype).clamp(min=1.0).sqrt()
    raise BitvoteError(f"unknown sigma rule {rule!r}: use one of {', '.join(SIGMA_RULES)} or a number")


def flat_changes(hier: Hierarchy) -> bool:
    """Whether the ``flat`` backward differs from the chain rule for this tree.

    ``flat`` gives the root the terms of its inputs directly: a voting (``M``) root then is
    one MV over all terms; a counting (``P``) root counts its children, each one MV over its
    own terms, which is the chain rule already when the children are leaves (``P(M3)``).
    Deeper trees under a ``P`` root are refused (one line).
    """
    if hier.depth == 1:
        return False
    if hier.root == "P":
        if hier.depth == 2:
            return False
        raise BitvoteError(f"sigma rule '...,flat' under a counting root is defined over leaves only: "
                           f"{hier.describe()} has {hier.depth} levels")
    return True


def vote_dtype(hier: Hierarchy, dtype: torch.dtype) -> torch.dtype:
    """The narrowest dtype in which this hierarchy's votes are exact: ``dtype`` or fp32.

    Every sum a voter forms is an integer no larger than its fan-in, and ``s + fill / 2`` a
    half-integer: exact in bf16 (8 significant bits) up to fan-in 127, in fp16 up to 1023.
    Small-leaf hierarchies then keep their many leaf sums in half the memory; only the
    surrogate's magnitudes round, as they do for every other op under autocast.
    """
    limit = {torch.bfloat16: 127, torch.float16: 1023}.get(dtype)
    if limit is None or max(max(lv.groups) for lv in hier.levels) > limit:
        return torch.float32
    return dtype


def _may_abstain(c: torch.Tensor) -> bool:
    """Whether some voter of a level has no valid input (valid counts ``c`` of 0).

    Counts depend only on the output position, so ``c`` is small; on the CPU one look at it
    spares a pass over the full vote tensor for the usual layer whose every output sees a
    valid term. Elsewhere (a device sync) and inside a compiled graph: assume it may.
    """
    if c.device.type != "cpu" or torch.compiler.is_compiling():
        return True
    return bool((c == 0).any())


def reduce_votes(
    hier: Hierarchy,
    leaf_sums: torch.Tensor,
    leaf_valid: Optional[torch.Tensor] = None,
    leaf_first: Optional[torch.Tensor] = None,
    *,
    dim: int = -1,
    surrogate: SurrogateLike = "approxsign",
    sigma: SigmaLike = "fanin",
) -> torch.Tensor:
    """Votes of a hierarchy from its leaf sums: the one implementation of SPEC.md's voters.

    ``leaf_sums``: the sum of the valid terms of each leaf, leaves along ``dim`` in flat
    order. ``leaf_valid``: the number of valid terms per leaf (broadcastable; ``None`` when
    every term is valid, i.e. +1/-1 padding). ``leaf_first``: the value (+/-1) of each leaf's
    first valid term (0 for a leaf without valid terms), needed only when the leaf level's tie
    rule is ``first``; it may also be a pair of tensors whose broadcast product it is. Sums may
    be bf16/fp16 where :func:`vote_dtype` allows it.

    Returns the root's output with ``dim`` removed: +/-1 votes, or for a ``P`` root the sum of
    its children's votes. Differentiable: each vote's derivative is the surrogate's
    ``F'(s / sigma) / sigma``.
    """
    surrogate = get_surrogate(surrogate)
    nd = leaf_sums.dim()
    dim = dim % nd
    if leaf_sums.shape[dim] != len(hier.leaf_sizes):
        raise ValueError(f"expected {len(hier.leaf_sizes)} leaves along dim {dim}, got {leaf_sums.shape[dim]}")
    if sigma_parts(sigma)[2]:  # "...,flat": exact votes, one MV's backward
        own = sigma_without_flat(sigma)
        if not flat_changes(hier):
            return reduce_votes(hier, leaf_sums, leaf_valid, leaf_first, dim=dim, surrogate=surrogate, sigma=own)
        detach = lambda t: t.detach() if torch.is_tensor(t) else t  # noqa: E731
        first = tuple(detach(t) for t in leaf_first) if isinstance(leaf_first, tuple) else detach(leaf_first)
        with torch.no_grad():
            votes = reduce_votes(hier, leaf_sums.detach(), leaf_valid, first, dim=dim, surrogate=surrogate, sigma=own)
        total = leaf_sums.float().sum(dim)
        valid = None if leaf_valid is None else leaf_valid.float().sum(dim).expand_as(total)
        return flat_surrogate(votes.float(), total, valid, hier.n, surrogate, sigma).to(votes.dtype)
    s = leaf_sums
    c = leaf_valid  # valid inputs per node; abstention depends only on it, never on term values
    first = leaf_first
    v = None
    last = hier.depth - 1
    sigma, leaf_mult = split_sigma(sigma)  # "fanin,leaf=2": the leaf level of a hierarchy twice as wide
    for li, level in enumerate(hier.levels):
        if li > 0:
            first = first_live(v, c, level.groups, dim) if level.tie.is_first else None
            s = segment_sum(v, level.groups, dim)
            if c is not None:
                c = segment_sum((c > 0).to(s.dtype), level.groups, dim)
        if li == last and hier.root == "P":
            return s.squeeze(dim)
        if level.tie.is_first:
            if first is None:
                raise ValueError("tie rule 'first' at the leaf level needs leaf_first")
            fill = first
        else:
            fill = level.tie.fill
        if c is not None and not (level.tie.is_first and li != last) and _may_abstain(c):
            if isinstance(fill, tuple):
                fill = fill[0] * fill[1]  # the root's abstention below needs it whole
            # A voter with no valid input abstains (0); a root that abstains takes its tie
            # value (+1 under 'first'). Below the root a 'first' fill is 0 there already
            # (no valid term, or only abstaining children): no pass over the full tensor.
            abstain = float(level.tie.abstain_fill) if li == last else 0.0
            fill = torch.where(c == 0, torch.full((), abstain, dtype=s.dtype, device=s.device),
                               fill if torch.is_tensor(fill) else torch.full((), fill, dtype=s.dtype, device=s.device))
        sig = sigma_for(sigma, level.groups, c, s, dim)
        if li == 0 and last > 0 and leaf_mult != 1.0:
            sig = sig * leaf_mult
        v = _VoteFn.apply(s, fill, surrogate, sig)
    return v.squeeze(dim)
