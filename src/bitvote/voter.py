"""Voters: what a binary layer does with its n XNOR terms (SPEC.md, "Output modes").

For one output (one position, one output channel) a binary layer has n terms
``a_i * w_i`` in {+1, -1} (zero padding may make some invalid) in a fixed flat order
(tap-major ``i = tap * C + c`` by default, channel-major ``i = c * k*k + tap`` with ``cm:``).
Their sum ``s = sum_i a_i w_i`` is what every mode starts from:

* ``popcount``: ``s`` itself (an integer; BN etc. follow).
* ``mv`` (majority voter, ``M{n}``): ``+1`` if ``s > 0``, ``-1`` if ``s < 0``, the tie value
  if ``s == 0``.
* HMV (hierarchical majority voter): votes of votes. ``M9(M4(M128))`` on n = 4608 means leaf
  voters over 128 consecutive terms, 4 leaf votes voted on per group, 9 group votes voted on
  at the root. Each voter at each level is an MV with its own tie rule (``+1``, ``-1`` or
  ``first``: the first non-abstaining input decides). A voter with no valid term below it
  abstains (passes 0 up, not counted). A root ``P`` counts its children's votes instead of
  voting (an approximate popcount, as in MajorityNets).

What does ``M9(M4(M128))`` compute? Exactly :func:`reduce_votes` applied to the 36 leaf sums:

    v_leaf  = vote(s_leaf)                         # 36 votes per output
    v_group = vote(sum of 4 consecutive v_leaf)    #  9 votes per output
    out     = vote(sum of the 9 v_group)           #  1 vote  per output

This module is the single implementation of that reduction: the PyTorch layers, the packed
engine's verify and the RTL check all call :func:`reduce_votes` with leaf sums they compute
their own way.

Specs are strings (for the CLI and configs) or :class:`VoterSpec` objects (for code), resolved
per layer by :func:`resolve`:

===================  ===========================================================
``popcount``         the integer sum
``mv``               ``M{n}``
``M9(M4(M128))``     explicit tree, root first; ``M3(M200, M200, M176)`` uneven
``cm:M64(M3(M3))``   explicit tree over the channel-major order
``P(M9)``            root counts votes; a root fan-in may be left out (inferred)
``tap``              ``M{k*k}(M{C})``: one voter per kernel tap
``groups=G``         ``M{G}(M{n/G})`` over consecutive runs of the tap-major order
``tap,groups=G``     ``M{k*k}(M{G}(M{C/G}))``
``tap,leaf=L``       ``M{k*k}(M{C/L}(M{L}))``: the same leaf size at any width
``cgroups=G``        ``cm:M{G}(M{n/G})``: channel groups over all taps
===================  ===========================================================

Levels of fan-in 1 are the identity and are dropped (``tap`` on a 1x1 layer is ``mv``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import torch

from ._fuse import fused
from .binarize import Surrogate, SurrogateLike, get_surrogate
from .errors import BitvoteError

__all__ = [
    "VoterSpec",
    "Hierarchy",
    "Level",
    "parse_spec",
    "parse_tie",
    "resolve",
    "reduce_votes",
    "vote",
    "SIGMA_RULES",
]

TAP, CM = "tap", "cm"

TieRule = Union[int, str]  # +1, -1 or "first"

#: Named rules for the surrogate width sigma of each voter (SPEC.md, "Training through a voter").
#: ``fanin``: sqrt of the voter's nominal fan-in, the std of a sum of that many random +/-1
#: terms, so ``u = s / sigma`` is O(1) at initialization whatever the width (the default).
#: ``valid``: sqrt of the inputs that are actually valid (padding and abstentions subtracted).
#: ``unit``: sigma = 1 (the surrogate only sees ties and near-ties).
#: A number ``f`` means ``f * sqrt(fan-in)``.
SIGMA_RULES = ("fanin", "valid", "unit")

SigmaLike = Union[str, float]


# --------------------------------------------------------------------------------------------
# Resolved hierarchies
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    """One level of voters, bottom-up.

    ``groups[j]`` is the fan-in of voter j: terms at the leaf level, votes of the level
    below otherwise. ``tie`` is +1, -1 or ``"first"``.
    """

    groups: Tuple[int, ...]
    tie: TieRule = 1

    @property
    def uniform(self) -> bool:
        return len(set(self.groups)) == 1


@dataclass(frozen=True)
class Hierarchy:
    """A voter tree resolved for one layer: leaves cover consecutive runs of the flat order."""

    n: int
    levels: Tuple[Level, ...]  # bottom-up; levels[0] groups terms into leaves
    order: str = TAP  # "tap" or "cm"
    root: str = "M"  # "M" votes, "P" counts its children's votes

    @property
    def leaf_sizes(self) -> Tuple[int, ...]:
        return self.levels[0].groups

    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def is_mv(self) -> bool:
        return self.depth == 1 and self.root == "M"

    @property
    def ties(self) -> Tuple[TieRule, ...]:
        """Tie rules root first, as they are written on the command line."""
        return tuple(lv.tie for lv in reversed(self.levels))

    def describe(self) -> str:
        """Canonical spec text, e.g. ``M9(M4(M128))`` or ``cm:P(M3)``."""
        text = _tree_text(self)
        return ("cm:" if self.order == CM and self.depth > 1 else "") + text

    def voters_per_level(self):
        """``[(count, fan-ins)]`` root first: what the hardware counts per output."""
        return [(len(lv.groups), lv.groups) for lv in reversed(self.levels)]

    def __str__(self):
        return self.describe()


def _tree_text(h: Hierarchy) -> str:
    # Build nested node texts bottom-up, collapsing runs of identical children.
    texts = [f"M{g}" for g in h.levels[0].groups]
    for li, lv in enumerate(h.levels[1:], start=1):
        kind = h.root if li == h.depth - 1 else "M"
        out, pos = [], 0
        for g in lv.groups:
            kids = texts[pos : pos + g]
            pos += g
            if len(set(kids)) == 1:
                out.append(f"{kind}{g}({kids[0]})")
            else:
                out.append(f"{kind}{g}({', '.join(kids)})")
        texts = out
    return texts[0]


# --------------------------------------------------------------------------------------------
# Spec parsing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Node:
    kind: str  # "M" or "P"
    count: Optional[int]
    children: Tuple["_Node", ...] = ()


@dataclass(frozen=True)
class VoterSpec:
    """A voter spec before it meets a layer (string form: :attr:`text`)."""

    text: str
    kind: str  # "popcount", "mv", "rule", "tree"
    order: str = TAP
    rule: Optional[Tuple[str, int]] = None  # ("tap", 0), ("groups", G), ("tap,groups", G), ...
    tree: Optional[_Node] = field(default=None, compare=False)

    @property
    def is_popcount(self) -> bool:
        return self.kind == "popcount"

    def __str__(self):
        return self.text


_RULE_RE = re.compile(r"^(tap|groups=(\d+)|tap,groups=(\d+)|tap,leaf=(\d+)|cgroups=(\d+))$")


def parse_spec(spec: Union[str, VoterSpec, None]) -> VoterSpec:
    """Parse a voter spec string (or pass a :class:`VoterSpec` through)."""
    if isinstance(spec, VoterSpec):
        return spec
    if spec is None:
        spec = "popcount"
    if not isinstance(spec, str):
        raise BitvoteError(f"voter spec must be a string, got {type(spec).__name__} {spec!r}")
    text = re.sub(r"\s+", "", spec)
    low = text.lower()
    if low in ("popcount", "pop", "none", ""):
        return VoterSpec("popcount", "popcount")
    if low == "mv":
        return VoterSpec("mv", "mv")
    m = _RULE_RE.match(low)
    if m:
        if low == "tap":
            return VoterSpec("tap", "rule", rule=("tap", 0))
        name, val = low.split("=")
        g = int(val)
        if g < 1:
            raise BitvoteError(f"voter spec {spec!r}: {name} must be >= 1")
        order = CM if name == "cgroups" else TAP
        return VoterSpec(low, "rule", order=order, rule=(name, g))
    order = TAP
    body = text
    if low.startswith("cm:"):
        order, body = CM, text[3:]
    elif low.startswith("tap:"):
        body = text[4:]
    tree = _parse_tree(body, spec)
    canon = ("cm:" if order == CM else "") + _node_text(tree)
    return VoterSpec(canon, "tree", order=order, tree=tree)


def _node_text(node: _Node) -> str:
    head = node.kind + ("" if node.count is None else str(node.count))
    if not node.children:
        return head
    return head + "(" + ", ".join(_node_text(c) for c in node.children) + ")"


_TOKEN_RE = re.compile(r"\s*(?:([MPmp])(\d*)|(\()|(\))|(,))")


def _parse_tree(body: str, original: str) -> _Node:
    pos = 0

    def fail(msg):
        raise BitvoteError(
            f"malformed voter spec {original!r}: {msg} (expected e.g. 'mv', 'tap', "
            f"'groups=4', 'M4(M128)', 'M3(M200, M200, M176)', 'cm:M64(M3(M3))')"
        )

    def node():
        nonlocal pos
        m = _TOKEN_RE.match(body, pos)
        if not m or not m.group(1):
            fail(f"expected M<n> or P at position {pos}")
        pos = m.end()
        kind = m.group(1).upper()
        count = int(m.group(2)) if m.group(2) else None
        if count is not None and count < 1:
            fail("fan-ins must be >= 1")
        children = []
        m2 = _TOKEN_RE.match(body, pos)
        if m2 and m2.group(3):
            pos = m2.end()
            children.append(node())
            while True:
                m3 = _TOKEN_RE.match(body, pos)
                if m3 and m3.group(5):
                    pos = m3.end()
                    children.append(node())
                elif m3 and m3.group(4):
                    pos = m3.end()
                    break
                else:
                    fail(f"expected ',' or ')' at position {pos}")
        if not children:
            if kind == "P":
                fail("P counts votes, so it needs children, e.g. P(M9); use 'popcount' for a plain count")
            if count is None:
                fail("a leaf needs its size, e.g. M128")
        elif len(children) > 1 and count is not None and count != len(children):
            fail(f"{kind}{count} lists {len(children)} children")
        return _Node(kind, count, tuple(children))

    if not body:
        fail("empty")
    root = node()
    if body[pos:].strip():
        fail(f"unexpected text {body[pos:]!r}")
    return root


def parse_tie(tie) -> Union[TieRule, Tuple[TieRule, ...]]:
    """``1``, ``-1``, ``"first"``, or a root-first sequence such as ``"first,1,-1"``."""

    def one(t):
        if isinstance(t, str):
            s = t.strip().lower()
            if s == "first":
                return "first"
            if s in ("1", "+1", "+"):
                return 1
            if s in ("-1", "-"):
                return -1
            raise BitvoteError(f"unknown tie rule {t!r}: use 1, -1 or first")
        if isinstance(t, bool) or t not in (1, -1):
            raise BitvoteError(f"unknown tie rule {t!r}: use 1, -1 or first")
        return int(t)

    if isinstance(tie, str) and "," in tie:
        return tuple(one(t) for t in tie.split(","))
    if isinstance(tie, (list, tuple)):
        if len(tie) == 1:
            return one(tie[0])
        return tuple(one(t) for t in tie)
    return one(tie)


# --------------------------------------------------------------------------------------------
# Resolution against a layer
# --------------------------------------------------------------------------------------------


def resolve(
    spec,
    n: int,
    taps: int = 1,
    tie=1,
    layer: str = "layer",
) -> Optional[Hierarchy]:
    """Resolve ``spec`` for a layer with ``n = C * taps`` terms; ``None`` means popcount.

    ``tie`` is one rule for every level, or a root-first sequence with one entry per level
    of the spec as written (entries of dropped fan-in-1 levels are dropped with them).
    Raises :class:`BitvoteError` naming the layer, its n and the spec when it does not fit.
    """
    vs = parse_spec(spec)
    if vs.is_popcount:
        return None
    taps = int(taps)
    if n % taps:
        raise BitvoteError(f"layer {layer!r}: n = {n} is not a multiple of its {taps} taps")
    C = n // taps

    def misfit(why):
        raise BitvoteError(f"voter spec {vs.text!r} does not fit layer {layer!r} (n = {n} = {C} x {taps} taps): {why}")

    order = vs.order
    kind_root = "M"
    if vs.kind == "mv":
        raw = [[n]]
    elif vs.kind == "rule":
        name, g = vs.rule
        if name == "tap":
            raw = [[C] * taps, [taps]]
        elif name in ("groups", "cgroups"):
            if n % g:
                misfit(f"{g} groups do not divide n")
            raw = [[n // g] * g, [g]]
        elif name == "tap,groups":
            if C % g:
                misfit(f"{g} groups do not divide the {C} channels")
            raw = [[C // g] * (g * taps), [g] * taps, [taps]]
        elif name == "tap,leaf":
            if C % g:
                misfit(f"leaf size {g} does not divide the {C} channels")
            raw = [[g] * (C // g * taps), [C // g] * taps, [taps]]
        else:  # pragma: no cover - parse_spec guards this
            misfit("unknown rule")
    else:
        raw, kind_root = _tree_levels(vs.tree, n, misfit)

    # Tie rules: one per written level, root first.
    ties = parse_tie(tie)
    if isinstance(ties, tuple):
        if len(ties) != len(raw):
            raise BitvoteError(
                f"tie sequence {','.join(map(str, ties))!r} has {len(ties)} entries but voter "
                f"spec {vs.text!r} has {len(raw)} levels (layer {layer!r})"
            )
        ties_bottom_up = list(reversed(ties))
    else:
        ties_bottom_up = [ties] * len(raw)

    # Drop levels of fan-in 1 (identity voters). A leaf level of single terms is dropped too:
    # the level above then groups terms directly.
    levels = []
    root_dropped = False
    for li, (groups, t) in enumerate(zip(raw, ties_bottom_up)):
        if all(g == 1 for g in groups) and len(raw) > 1 and not (li == 0 and len(raw) == 1):
            root_dropped = li == len(raw) - 1
            continue
        levels.append(Level(tuple(groups), t))
    if not levels:  # e.g. M1(M1) on n = 1
        levels = [Level(tuple(raw[0]), ties_bottom_up[0])]
    if root_dropped:
        kind_root = "M"  # a P root over a single vote is that vote
    if len(levels) == 1:
        order = TAP  # one leaf over all terms: the order does not matter
    return Hierarchy(n=n, levels=tuple(levels), order=order, root=kind_root)


def _tree_levels(tree: _Node, n: int, misfit):
    """Explicit tree -> bottom-up group sizes per level, checking it covers n terms."""

    # Infer an omitted root fan-in: n / (size of the child).
    def size(node: _Node) -> int:
        if not node.children:
            return node.count
        if len(node.children) == 1:
            c = size(node.children[0])
            if node.count is None:
                return -c  # marker: inferred later
            return node.count * c
        return sum(size(c) for c in node.children)

    root = tree
    if root.children and len(root.children) == 1 and root.count is None:
        csize = size(root.children[0])
        if csize <= 0:
            misfit("only the root's fan-in may be left out")
        if n % csize:
            misfit(f"the root's children hold {csize} terms, which does not divide n")
        root = _Node(root.kind, n // csize, root.children)

    # Walk level by level, root first.
    frontier = [root]
    per_level = []  # root first: group sizes of each level's nodes
    while True:
        if all(not nd.children for nd in frontier):
            per_level.append([nd.count for nd in frontier])
            break
        if any(not nd.children for nd in frontier):
            misfit("all leaves must be at the same depth")
        groups, nxt = [], []
        for nd in frontier:
            kids = list(nd.children) * nd.count if len(nd.children) == 1 else list(nd.children)
            for k in kids:
                if k.count is None:
                    misfit("only the root's fan-in may be left out")
                if k.kind == "P":
                    misfit("only the root may be P")
            groups.append(len(kids))
            nxt.extend(kids)
        per_level.append(groups)
        frontier = nxt
    total = sum(per_level[-1])
    if total != n:
        misfit(f"the hierarchy covers {total} terms")
    return list(reversed(per_level)), root.kind


# --------------------------------------------------------------------------------------------
# The reduction: leaf sums -> votes
# --------------------------------------------------------------------------------------------


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
    fill = tie if torch.is_tensor(tie) else float(tie)
    return _VoteFn.apply(s, fill, get_surrogate(surrogate), sigma)


def _segsum(x: torch.Tensor, groups: Sequence[int], dim: int) -> torch.Tensor:
    """Sum consecutive runs of ``groups`` sizes along ``dim``."""
    if len(set(groups)) == 1:
        g = groups[0]
        if g == 1:
            return x
        return x.unflatten(dim, (len(groups), g)).sum(dim + 1)
    return torch.stack([c.sum(dim) for c in x.split(list(groups), dim)], dim)


def _first_nonzero(x: torch.Tensor, groups: Sequence[int], dim: int) -> torch.Tensor:
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


def _starts(groups: Sequence[int]) -> List[int]:
    out, acc = [], 0
    for g in groups:
        out.append(acc)
        acc += g
    return out


def _first_true(mask: torch.Tensor, groups, dim: int) -> torch.Tensor:
    """Index (along ``dim``, absolute) of the first True of each run; the run's start if none."""
    starts = torch.tensor(_starts(groups), device=mask.device)
    shape = [1] * mask.dim()
    shape[dim] = len(groups)
    if len(set(groups)) == 1:
        rel = mask.unflatten(dim, (len(groups), groups[0])).to(torch.uint8).argmax(dim + 1)
    else:
        rel = torch.stack([c.to(torch.uint8).argmax(dim) for c in mask.split(list(groups), dim)], dim)
    return rel + starts.view(shape)


def _first_live(v: torch.Tensor, c: Optional[torch.Tensor], groups: Sequence[int], dim: int) -> torch.Tensor:
    """Each node's first non-abstaining child vote (0 if all abstain): ``first`` ties above a leaf.

    A child abstains (votes 0) exactly when its valid count ``c`` is 0, and ``c`` depends only
    on the output position, so the index is found on the small ``c`` and the votes gathered
    once, instead of a select/where chain over the full tensor.
    """
    if c is None:  # nothing abstains: the first child
        return v.index_select(dim, torch.tensor(_starts(groups), device=v.device))
    idx = _first_true(c > 0, groups, dim)
    shape = list(v.shape)
    shape[dim] = len(groups)
    return v.gather(dim, idx.expand(shape))


def _sigma(rule: SigmaLike, groups: Sequence[int], valid: Optional[torch.Tensor], ref: torch.Tensor, dim: int):
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


def check_sigma(rule: SigmaLike) -> SigmaLike:
    """Validate a sigma rule early (at layer construction), accepting numbers as strings."""
    if isinstance(rule, str):
        r = rule.strip().lower()
        if r in SIGMA_RULES:
            return r
        try:
            rule = float(r)
        except ValueError:
            raise BitvoteError(
                f"unknown sigma rule {rule!r}: use one of {', '.join(SIGMA_RULES)} or a number"
            ) from None
    if isinstance(rule, bool) or not isinstance(rule, (int, float)) or not rule > 0:
        raise BitvoteError(f"sigma must be a named rule or a positive number, got {rule!r}")
    return float(rule)


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
    s = leaf_sums
    c = leaf_valid  # valid inputs per node; abstention depends only on it, never on term values
    first = leaf_first
    v = None
    last = hier.depth - 1
    for li, level in enumerate(hier.levels):
        if li > 0:
            first = _first_live(v, c, level.groups, dim) if level.tie == "first" else None
            s = _segsum(v, level.groups, dim)
            if c is not None:
                c = _segsum((c > 0).to(s.dtype), level.groups, dim)
        if li == last and hier.root == "P":
            return s.squeeze(dim)
        if level.tie == "first":
            if first is None:
                raise ValueError("tie rule 'first' at the leaf level needs leaf_first")
            fill = first
            if isinstance(fill, tuple) and c is not None and li == last:
                fill = fill[0] * fill[1]  # the root's abstention below needs it whole
        else:
            fill = float(level.tie)
        if c is not None and not (level.tie == "first" and li != last):
            # A voter with no valid input abstains (0); a root that abstains takes its tie
            # value (+1 under 'first'). Below the root a 'first' fill is 0 there already
            # (no valid term, or only abstaining children): no pass over the full tensor.
            abstain = (1.0 if level.tie == "first" else float(level.tie)) if li == last else 0.0
            fill = torch.where(c == 0, torch.full((), abstain, dtype=s.dtype, device=s.device),
                               fill if torch.is_tensor(fill) else torch.full((), fill, dtype=s.dtype, device=s.device))
        sig = _sigma(sigma, level.groups, c, s, dim)
        v = _VoteFn.apply(s, fill, surrogate, sig)
    return v.squeeze(dim)
