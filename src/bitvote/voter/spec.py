"""Voter specs: the grammar, tie rules and resolved hierarchies, with no torch in sight.

Everything here is plain Python, so the hardware generator, the CLI's argument checks and
any tool that only needs to know what a spec means can import it without torch. The
reduction that computes votes lives in :mod:`bitvote.voter.reduce`.

Three kinds of objects, from text to a layer's voter:

* :class:`VoterSpec`: a parsed spec before it meets a layer (``"tap,leaf=16"``,
  ``"M9(M4(M128))"``); :func:`parse_spec` is the one parser, and the predicates
  :func:`is_popcount` / :func:`is_mv` answer for every spelling it accepts.
* :class:`Tie`: a voter's tie rule (``+1``, ``-1``, ``first``); it carries the integer code
  the kernels and the RTL's ``TIE`` parameter use and the short name module names use, so no
  target keeps its own table.
* :class:`Hierarchy`: a spec resolved for one layer (:func:`resolve`), its levels bottom-up;
  :meth:`Hierarchy.to_dict` / :meth:`Hierarchy.from_dict` are the plain-dict form the engine
  graph (``.bvm``), the GPU path and reports share.

Specs come from users, so :func:`parse_spec` refuses text beyond :data:`MAX_SPEC_CHARS`,
nesting beyond :data:`MAX_SPEC_DEPTH` and numbers beyond :data:`MAX_SPEC_DIGITS` digits with
one :class:`~bitvote.errors.BitvoteError` instead of recursing or allocating without bound.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

from ..errors import BitvoteError

__all__ = [
    "Tie",
    "VoterSpec",
    "Hierarchy",
    "Level",
    "parse_spec",
    "parse_tie",
    "resolve",
    "is_popcount",
    "is_mv",
    "check_sigma",
    "split_sigma",
    "SIGMA_RULES",
    "TAP",
    "CM",
    "MAX_SPEC_CHARS",
    "MAX_SPEC_DEPTH",
    "MAX_SPEC_DIGITS",
]

TAP, CM = "tap", "cm"

#: Limits on a spec (and a tie sequence) a user may write. Real hierarchies are a few levels
#: deep with fan-ins of a few thousand; these bounds are far above that and far below what
#: would exhaust the parser's recursion or Python's integer parsing.
MAX_SPEC_CHARS = 4096
MAX_SPEC_DEPTH = 32
MAX_SPEC_DIGITS = 9

#: Named rules for the surrogate width sigma of each voter (SPEC.md, "Training through a voter").
#: ``fanin``: sqrt of the voter's nominal fan-in, the std of a sum of that many random +/-1
#: terms, so ``u = s / sigma`` is O(1) at initialization whatever the width (the default).
#: ``valid``: sqrt of the inputs that are actually valid (padding and abstentions subtracted).
#: ``unit``: sigma = 1 (the surrogate only sees ties and near-ties).
#: A number ``f`` means ``f * sqrt(fan-in)``.
SIGMA_RULES = ("fanin", "valid", "unit")

SigmaLike = Union[str, float]


def _limit_error(what: str, text: str, why: str) -> BitvoteError:
    shown = text if len(text) <= 40 else text[:37] + "..."
    return BitvoteError(f"{what} {shown!r} is too large: {why} (limits: {MAX_SPEC_CHARS} characters, "
                        f"{MAX_SPEC_DEPTH} levels of nesting, {MAX_SPEC_DIGITS}-digit numbers)")


# --------------------------------------------------------------------------------------------
# Tie rules
# --------------------------------------------------------------------------------------------


class Tie(enum.IntEnum):
    """What a majority voter outputs when its valid inputs sum to 0 (SPEC.md, "Output modes").

    ``PLUS`` and ``MINUS`` output +1 / -1; ``FIRST`` outputs its first non-abstaining input
    (an input term at the leaves, a child's vote above). The integer value is :attr:`code`,
    the encoding every kernel and the RTL's ``TIE`` parameter read (0 means ``first``).

    A tie compares equal to its plain spelling (``Tie.FIRST == "first"``, ``Tie.PLUS == 1``)
    and hashes like it, so configs and tables keyed by the spellings keep working; ``str``
    gives the command-line spelling (``"1"``, ``"-1"``, ``"first"``).
    """

    PLUS = 1
    MINUS = -1
    FIRST = 0

    @classmethod
    def parse(cls, tie) -> "Tie":
        """``1``, ``-1``, ``"+1"``, ``"+"``, ``"-"``, ``"first"`` (any case) or a :class:`Tie`."""
        if isinstance(tie, Tie):
            return tie
        if isinstance(tie, str):
            s = tie.strip().lower()
            if s == "first":
                return cls.FIRST
            if s in ("1", "+1", "+"):
                return cls.PLUS
            if s in ("-1", "-"):
                return cls.MINUS
        elif not isinstance(tie, bool) and isinstance(tie, (int, float)) and tie in (1, -1):
            return cls.PLUS if tie == 1 else cls.MINUS
        shown = tie if not isinstance(tie, str) or len(tie) <= 40 else tie[:37] + "..."
        raise BitvoteError(f"unknown tie rule {shown!r}: use 1, -1 or first")

    @property
    def code(self) -> int:
        """The kernels' and RTL's encoding: +1, -1, or 0 for ``first``."""
        return int(self)

    @property
    def rtl_name(self) -> str:
        """The letter generated module names use: ``p``, ``m`` or ``f``."""
        return {1: "p", -1: "m", 0: "f"}[int(self)]

    @property
    def plain(self) -> Union[int, str]:
        """The JSON/config form: ``1``, ``-1`` or ``"first"``."""
        return "first" if self is Tie.FIRST else int(self)

    @property
    def is_first(self) -> bool:
        return self is Tie.FIRST

    @property
    def fill(self) -> float:
        """The fixed output on a tie (+1.0 / -1.0); ``first`` has none (0.0: decided per input)."""
        return float(int(self))

    @property
    def abstain_fill(self) -> int:
        """What a root with no valid input outputs: its tie value, +1 under ``first``."""
        return 1 if self is Tie.FIRST else int(self)

    def __str__(self) -> str:
        return str(self.plain)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __repr__(self) -> str:
        return f"Tie.{self.name}"

    def __eq__(self, other) -> bool:
        if isinstance(other, Tie):
            return self is other
        if isinstance(other, str):
            try:
                return Tie.parse(other) is self
            except BitvoteError:
                return False
        if isinstance(other, (int, float)):
            return self.plain == other
        return NotImplemented

    def __ne__(self, other) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        return hash(self.plain)


def parse_tie(tie) -> Union[Tie, Tuple[Tie, ...]]:
    """``1``, ``-1``, ``"first"``, or a root-first sequence such as ``"first,1,-1"``."""
    if isinstance(tie, str) and len(tie) > MAX_SPEC_CHARS:
        raise _limit_error("tie sequence", tie, f"{len(tie)} characters")
    if isinstance(tie, str) and "," in tie:
        tie = tie.split(",")
    if isinstance(tie, (list, tuple)):
        if len(tie) > MAX_SPEC_DEPTH:
            raise _limit_error("tie sequence", ",".join(map(str, tie)), f"{len(tie)} entries")
        if len(tie) == 1:
            return Tie.parse(tie[0])
        return tuple(Tie.parse(t) for t in tie)
    return Tie.parse(tie)


def tie_text(tie) -> Union[int, str, None]:
    """A tie (or root-first sequence) in its plain config form: ``1``, ``"first"``, ``"first,1"``."""
    if isinstance(tie, (list, tuple)):
        return ",".join(map(str, tie))
    return tie.plain if isinstance(tie, Tie) else tie


# --------------------------------------------------------------------------------------------
# Resolved hierarchies
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    """One level of voters, bottom-up.

    ``groups[j]`` is the fan-in of voter j: terms at the leaf level, votes of the level
    below otherwise. ``tie`` is a :class:`Tie` (any spelling :meth:`Tie.parse` accepts is
    normalized to one).
    """

    groups: Tuple[int, ...]
    tie: Tie = Tie.PLUS

    def __post_init__(self):
        object.__setattr__(self, "tie", Tie.parse(self.tie))

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
    def ties(self) -> Tuple[Tie, ...]:
        """Tie rules root first, as they are written on the command line."""
        return tuple(lv.tie for lv in reversed(self.levels))

    @property
    def tie_codes(self) -> Tuple[int, ...]:
        """Tie codes bottom-up (:attr:`Tie.code`), the order the kernels walk the levels."""
        return tuple(lv.tie.code for lv in self.levels)

    def describe(self) -> str:
        """Canonical spec text, e.g. ``M9(M4(M128))`` or ``cm:P(M3)``."""
        text = _tree_text(self)
        return ("cm:" if self.order == CM and self.depth > 1 else "") + text

    def voters_per_level(self):
        """``[(count, fan-ins)]`` root first: what the hardware counts per output."""
        return [(len(lv.groups), lv.groups) for lv in reversed(self.levels)]

    def to_dict(self) -> dict:
        """Plain types only (ints, strings, lists), so JSON and ``torch.load(weights_only=True)``
        read it back: ``{"n", "order", "root", "groups": bottom-up lists, "ties": [1|-1|"first"]}``."""
        return {"n": self.n, "order": self.order, "root": self.root,
                "groups": [list(lv.groups) for lv in self.levels], "ties": [lv.tie.plain for lv in self.levels]}

    @classmethod
    def from_dict(cls, d) -> "Hierarchy":
        """The inverse of :meth:`to_dict`; a dict that is not a consistent tree is refused."""

        def bad(why):
            raise BitvoteError(f"stored voter hierarchy is malformed: {why}")

        if not isinstance(d, Mapping) or not {"n", "order", "root", "groups", "ties"} <= set(d):
            bad("expected a dict with n, order, root, groups and ties")
        groups, ties = d["groups"], d["ties"]
        if not isinstance(groups, (list, tuple)) or not isinstance(ties, (list, tuple)) or not groups \
                or len(groups) != len(ties):
            bad("groups and ties must be lists of one entry per level")
        try:
            levels = tuple(Level(tuple(_count(g) for g in gs), t) for gs, t in zip(groups, ties))
        except (TypeError, ValueError):
            bad("fan-ins must be positive integers")
        if d["order"] not in (TAP, CM) or d["root"] not in ("M", "P"):
            bad(f"order {d['order']!r} / root {d['root']!r}")
        for below, above in zip(levels, levels[1:]):
            if sum(above.groups) != len(below.groups):
                bad("a level's fan-ins must add up to the number of voters below it")
        if len(levels[-1].groups) != 1:
            bad("the top level must be a single root voter")
        n = _count(d["n"])
        if sum(levels[0].groups) != n:
            bad(f"the leaves cover {sum(levels[0].groups)} terms, not n = {n}")
        return cls(n=n, levels=levels, order=d["order"], root=d["root"])

    def __str__(self):
        return self.describe()


def _count(x) -> int:
    if isinstance(x, bool) or not isinstance(x, int) and not (isinstance(x, float) and x.is_integer()):
        raise TypeError(x)
    x = int(x)
    if x < 1:
        raise ValueError(x)
    return x


def _tree_text(h: Hierarchy) -> str:
    # Build nested node texts bottom-up, collapsing runs of identical children.
    if h.depth == 1 and h.root == "P":  # counts its terms; written as it parses back
        return f"P{h.levels[0].groups[0]}(M1)"
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

    @property
    def is_mv(self) -> bool:
        """One voter over all terms: ``mv``, or a lone leaf ``M{n}`` (which fits only n terms)."""
        return self.kind == "mv" or (self.kind == "tree" and not self.tree.children)

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
        raise BitvoteError(f"voter spec must be a string, got {type(spec).__name__} {spec!r}"[:200])
    if len(spec) > MAX_SPEC_CHARS:
        raise _limit_error("voter spec", spec, f"{len(spec)} characters")
    text = re.sub(r"\s+", "", spec)
    low = text.lower()
    if low in ("popcount", "pop", "none", ""):
        return VoterSpec("popcount", "popcount")
    if low == "mv":
        return VoterSpec("mv", "mv")
    long_number = re.search(r"\d{%d,}" % (MAX_SPEC_DIGITS + 1), low)
    if long_number:
        raise _limit_error("voter spec", spec, f"a {len(long_number.group())}-digit number")
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
    if body.count("(") > MAX_SPEC_DEPTH:
        # Nesting is at most the number of open brackets: refusing here keeps the recursive
        # parser below far from Python's recursion limit.
        depth = max_depth = 0
        for ch in body:
            depth += (ch == "(") - (ch == ")")
            max_depth = max(max_depth, depth)
        if max_depth > MAX_SPEC_DEPTH:
            raise _limit_error("voter spec", original, f"{max_depth} levels of nesting")

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


# --------------------------------------------------------------------------------------------
# Predicates: what a spec is, whatever its spelling
# --------------------------------------------------------------------------------------------


def is_popcount(spec) -> bool:
    """True for every spelling of the plain count: ``popcount``, ``pop``, ``none``, ``""``,
    ``None`` (what :func:`resolve` returns for it), a popcount :class:`VoterSpec`, and a
    per-layer mapping whose specs are all popcount. A resolved :class:`Hierarchy` never is."""
    if spec is None:
        return True
    if isinstance(spec, Hierarchy):
        return False
    if isinstance(spec, Mapping):
        return all(is_popcount(s) for s in spec.values())
    return parse_spec(spec).is_popcount


def is_mv(spec) -> bool:
    """True for one majority voter over all terms: ``mv`` in any case, a lone leaf ``M{n}``,
    such a :class:`VoterSpec`, or a resolved :class:`Hierarchy` of one ``M`` level (``tap`` on
    a 1x1 layer resolves to one). ``None`` (popcount) and per-layer mappings are not."""
    if spec is None or isinstance(spec, Mapping):
        return False
    if isinstance(spec, Hierarchy):
        return spec.is_mv
    return parse_spec(spec).is_mv


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

    def check_counts(node: _Node, is_root: bool):
        if node.count is None and not is_root:
            misfit("only the root's fan-in may be left out")
        if node.kind == "P" and not is_root:
            misfit("only the root may be P")
        for c in node.children:
            check_counts(c, False)

    def size(node: _Node) -> int:
        if not node.children:
            return node.count
        if len(node.children) == 1:
            return node.count * size(node.children[0])
        return sum(size(c) for c in node.children)

    root = tree
    if root.children and len(root.children) == 1 and root.count is None:
        for c in root.children:
            check_counts(c, False)
        csize = size(root.children[0])
        if n % csize:
            misfit(f"the root's children hold {csize} terms, which does not divide n")
        root = _Node(root.kind, n // csize, root.children)
    check_counts(root, True)
    # The size is checked before the tree is expanded level by level: a written tree can
    # stand for far more voters than n terms (M999999(M999999(M9))), and each expanded
    # level holds at most n nodes only once it covers n terms.
    total = size(root)
    if total != n:
        misfit(f"the hierarchy covers {total} terms")

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
            groups.append(len(kids))
            nxt.extend(kids)
        per_level.append(groups)
        frontier = nxt
    return list(reversed(per_level)), root.kind


# --------------------------------------------------------------------------------------------
# Surrogate width rules
# --------------------------------------------------------------------------------------------


def sigma_parts(rule: SigmaLike):
    """``(base rule, leaf multiplier, flat)`` of a sigma rule: ``"fanin,leaf=2"`` -> ``("fanin", 2.0, False)``.

    After the base rule come options, comma-separated:

    * ``leaf=F`` widens the surrogate of a hierarchy's leaf level only (hierarchies of two or
      more levels; a flat MV is its own root and keeps the base rule): with sigma =
      sqrt(fan-in) a leaf of 4 terms has u = s / 2 in {-2, -1, 0, 1, 2}, where ApproxSign's
      derivative is zero except at a tie, so small leaves pass almost no gradient.
    * ``flat``: the hierarchy's backward is that of one MV over all its terms (the surrogate
      at the popcount ``s`` with the base rule's width), while its forward stays the exact
      hierarchical vote. Every term then gets a gradient, as in an MV.
    """
    if isinstance(rule, str) and "," in rule:
        base, *opts = [t.strip().lower() for t in rule.split(",")]
        mult, flat = 1.0, False
        for o in opts:
            if o == "flat" and not flat:
                flat = True
                continue
            key, eq, val = o.partition("=")
            try:
                m = float(val) if key == "leaf" and eq else None
            except ValueError:
                m = None
            if m is None or not (0 < m < float("inf")):
                raise BitvoteError(f"sigma rule {rule!r}: after the base rule only leaf=F (a positive number) "
                                   f"and flat are allowed")
            mult = m
        if base not in SIGMA_RULES:  # a factor f (f * sqrt(fan-in)) written as text
            try:
                base = float(base)
            except ValueError:
                pass  # an unknown name: check_sigma / sigma_for name it
        return base, mult, flat
    return rule, 1.0, False


def split_sigma(rule: SigmaLike):
    """``(base rule, leaf multiplier)`` of a sigma rule (:func:`sigma_parts` without ``flat``)."""
    base, mult, _ = sigma_parts(rule)
    return base, mult


def sigma_is_flat(rule: SigmaLike) -> bool:
    """Whether the rule asks for the flat (one-MV) backward through a hierarchy."""
    return sigma_parts(rule)[2]


def sigma_without_flat(rule: SigmaLike) -> SigmaLike:
    """The rule the hierarchy's own votes use: ``"fanin,leaf=2,flat"`` -> ``"fanin,leaf=2"``."""
    base, mult, _ = sigma_parts(rule)
    return _sigma_text(base, mult, False)


def _sigma_text(base: SigmaLike, mult: float, flat: bool) -> SigmaLike:
    """The normal form of a parsed rule: the base alone when it has no options."""
    if mult == 1.0 and not flat:
        return base
    return f"{base}" + (f",leaf={mult:g}" if mult != 1.0 else "") + (",flat" if flat else "")


def check_sigma(rule: SigmaLike) -> SigmaLike:
    """Validate a sigma rule early (at layer construction), accepting numbers as strings;
    ``BASE,leaf=F,flat`` (:func:`sigma_parts`) comes back in its normal text form."""
    if isinstance(rule, str) and "," in rule:
        base, mult, flat = sigma_parts(rule)
        return _sigma_text(check_sigma(base), mult, flat)
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
