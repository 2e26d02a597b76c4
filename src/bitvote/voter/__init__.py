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

Two modules, one per job:

* :mod:`bitvote.voter.spec` (no torch): the grammar (:func:`parse_spec`, :class:`VoterSpec`),
  the tie rules (:class:`Tie`), :func:`resolve` to a layer's :class:`Hierarchy` and its
  ``to_dict``/``from_dict`` codec, and the predicates :func:`is_popcount` / :func:`is_mv`;
* :mod:`bitvote.voter.reduce` (torch): :func:`reduce_votes`, the single implementation of
  the reduction that the PyTorch layers, the packed engine's verify and the RTL check all
  call with leaf sums they compute their own way.

Specs are strings (for the CLI and configs) or :class:`VoterSpec` objects (for code), resolved
per layer by :func:`resolve`:

===================  ===========================================================
``popcount``         the integer sum (also ``pop``, ``none``)
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

The reduction's names are imported on first use, so ``from bitvote.voter import parse_spec``
(and :mod:`bitvote.hw.design`) works without torch.
"""

from __future__ import annotations

from .spec import (
    CM,
    MAX_SPEC_CHARS,
    MAX_SPEC_DEPTH,
    MAX_SPEC_DIGITS,
    SIGMA_RULES,
    TAP,
    Hierarchy,
    Level,
    Tie,
    VoterSpec,
    check_sigma,
    sigma_is_flat,
    sigma_parts,
    sigma_without_flat,
    split_sigma,
    is_mv,
    is_popcount,
    parse_spec,
    parse_tie,
    resolve,
    tie_text,
)

__all__ = [
    "VoterSpec",
    "Hierarchy",
    "Level",
    "Tie",
    "parse_spec",
    "parse_tie",
    "resolve",
    "is_popcount",
    "is_mv",
    "tie_text",
    "check_sigma",
    "sigma_is_flat",
    "sigma_parts",
    "sigma_without_flat",
    "split_sigma",
    "reduce_votes",
    "vote",
    "vote_dtype",
    "SIGMA_RULES",
]

_REDUCE = {"reduce_votes", "vote", "vote_dtype", "segment_sum", "segment_starts", "first_nonzero",
           "first_true", "first_live", "sigma_for"}


def __getattr__(name):
    if name in _REDUCE or name == "reduce":
        import importlib

        reduce = importlib.import_module(".reduce", __name__)
        if name == "reduce":
            return reduce
        value = getattr(reduce, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
