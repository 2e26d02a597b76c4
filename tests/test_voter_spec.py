"""The torch-free spec side of bitvote.voter: tie rules, the Hierarchy codec, the predicates,
the size limits, and the layering they make possible (hw from a Hierarchy, engine without gpu)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitvote.errors import BitvoteError
from bitvote.voter import (MAX_SPEC_CHARS, MAX_SPEC_DEPTH, Hierarchy, Level, Tie, VoterSpec, is_mv, is_popcount,
                           parse_spec, parse_tie, resolve)

SRC = Path(__file__).resolve().parents[1] / "src"

_BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name in ("numpy", "triton"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, _NoTorch())
"""


def _run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK_TORCH + code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, timeout=60)


def test_spec_module_and_hw_design_import_without_torch():
    r = _run_without_torch(
        "import bitvote.voter.spec as S\n"
        "from bitvote.voter import parse_spec, resolve, is_popcount, Tie\n"
        "from bitvote.hw.design import make_design, design_for\n"
        "h = resolve('tap,groups=2', 36, 9, 'first')\n"
        "assert S.Hierarchy.from_dict(h.to_dict()) == h and not is_popcount('tap')\n"
        "assert make_design(36, 'tap,groups=2', 3, 'first').hier == h\n"
        "assert 'torch' not in sys.modules and 'bitvote.voter.reduce' not in sys.modules\n"
        "print('ok')\n")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_the_reduction_needs_torch_and_says_so():
    r = _run_without_torch("from bitvote.voter import reduce_votes\n")
    assert r.returncode != 0 and "blocked: torch" in r.stderr


# --------------------------------------------------------------------------------------------
# Tie rules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tie, spellings, code, rtl, text", [
    (Tie.PLUS, [1, 1.0, "1", "+1", "+", " +1 "], 1, "p", "1"),
    (Tie.MINUS, [-1, -1.0, "-1", "-"], -1, "m", "-1"),
    (Tie.FIRST, ["first", "FIRST", " First "], 0, "f", "first"),
])
def test_tie_codes_names_and_spellings(tie, spellings, code, rtl, text):
    for s in spellings:
        assert Tie.parse(s) is tie and tie == s
    assert tie.code == code and int(tie) == code and tie.rtl_name == rtl
    assert str(tie) == text and f"{tie}" == text and f"{tie:>6}" == text.rjust(6)
    assert Tie.parse(str(tie)) is tie and Tie.parse(tie.plain) is tie and Tie(tie.code) is tie
    assert json.loads(json.dumps(tie.plain)) == tie.plain  # the plain form is JSON
    assert hash(tie) == hash(tie.plain) and {tie.plain: "x"}[tie] == "x"


def test_tie_rules_are_distinct_and_bad_ones_refused():
    assert len({Tie.PLUS, Tie.MINUS, Tie.FIRST}) == 3
    assert Tie.FIRST != 0 and Tie.PLUS != Tie.MINUS and Tie.FIRST != "1"
    assert Tie.FIRST.abstain_fill == 1 and Tie.MINUS.abstain_fill == -1 and Tie.PLUS.fill == 1.0
    for bad in (0, 2, True, "last", "", None, 0.5, "x" * 10000):
        with pytest.raises(BitvoteError, match="tie"):
            Tie.parse(bad)
    assert parse_tie("first, 1,-1") == (Tie.FIRST, Tie.PLUS, Tie.MINUS)
    assert parse_tie(["-1"]) is Tie.MINUS and parse_tie(-1) is Tie.MINUS


def test_levels_normalize_their_tie():
    lv = Level((4, 4), "first")
    assert lv.tie is Tie.FIRST and lv == Level((4, 4), Tie.FIRST)
    h = resolve("M2(M3(M4))", 24, 1, "first,1,-1")
    assert h.ties == ("first", 1, -1) and h.tie_codes == (-1, 1, 0)
    assert all(isinstance(t, Tie) for t in h.ties)


# --------------------------------------------------------------------------------------------
# The Hierarchy codec
# --------------------------------------------------------------------------------------------


@st.composite
def hierarchies(draw):
    """Any consistent tree: fan-ins drawn top-down, leaves of 1..9 terms, mixed ties."""
    depth = draw(st.integers(1, 4))
    counts = [1]  # voters per level, root first
    top_down = []
    for _ in range(depth - 1):
        groups = [draw(st.integers(1, 3)) for _ in range(counts[-1])]
        top_down.append(groups)
        counts.append(sum(groups))
    top_down.append([draw(st.integers(1, 9)) for _ in range(counts[-1])])
    ties = [draw(st.sampled_from(list(Tie))) for _ in range(depth)]
    levels = tuple(Level(tuple(g), t) for g, t in zip(reversed(top_down), ties))
    root = draw(st.sampled_from(["M", "P"])) if depth > 1 else "M"
    return Hierarchy(n=sum(top_down[-1]), levels=levels, order=draw(st.sampled_from(["tap", "cm"])), root=root)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hierarchies())
def test_hierarchy_dict_round_trip(h):
    d = h.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain types only
    back = Hierarchy.from_dict(json.loads(json.dumps(d)))
    assert back == h and back.describe() == h.describe() and back.ties == h.ties
    assert all(isinstance(t, Tie) for t in back.ties)


def test_from_dict_reads_the_stored_format():
    # what .bvm files hold: ties as 1 / -1 / "first", bottom-up
    d = {"n": 36, "order": "tap", "root": "M", "groups": [[2] * 18, [2] * 9, [9]], "ties": ["first", -1, 1]}
    h = Hierarchy.from_dict(d)
    assert h == resolve("tap,groups=2", 36, 9, "1,-1,first") and h.to_dict() == d


@pytest.mark.parametrize("d", [
    None, [], {"n": 4},
    {"n": 8, "order": "tap", "root": "M", "groups": [[4, 4], [2]], "ties": [1]},  # ties per level
    {"n": 9, "order": "tap", "root": "M", "groups": [[4, 4], [2]], "ties": [1, 1]},  # leaves != n
    {"n": 8, "order": "tap", "root": "M", "groups": [[4, 4], [3]], "ties": [1, 1]},  # fan-ins != voters below
    {"n": 8, "order": "tap", "root": "M", "groups": [[4, 4], [1, 1]], "ties": [1, 1]},  # two roots
    {"n": 8, "order": "tap", "root": "M", "groups": [[4, 0, 4], [3]], "ties": [1, 1]},
    {"n": 8, "order": "tap", "root": "M", "groups": [["4", "4"], [2]], "ties": [1, 1]},
    {"n": 8, "order": "diag", "root": "M", "groups": [[4, 4], [2]], "ties": [1, 1]},
    {"n": 8, "order": "tap", "root": "M", "groups": [[4, 4], [2]], "ties": [1, "last"]},
])
def test_from_dict_refuses_malformed_trees(d):
    with pytest.raises(BitvoteError):
        Hierarchy.from_dict(d)


# --------------------------------------------------------------------------------------------
# Predicates
# --------------------------------------------------------------------------------------------


POPCOUNT = ["popcount", "POPCOUNT", "pop", " Pop ", "none", "", None, parse_spec("pop"), {"*": "pop", "a": "none"}]
MV = ["mv", "MV", " mv ", "M36", "m36", parse_spec("mv"), resolve("mv", 36, 9), resolve("tap", 8, 1)]
OTHER = ["tap", "groups=4", "tap,leaf=2", "M9(M4)", "cm:M4(M9)", "P(M9)", parse_spec("tap"), resolve("tap", 36, 9),
         {"*": "mv"}]


@pytest.mark.parametrize("spec", POPCOUNT)
def test_every_popcount_spelling(spec):
    assert is_popcount(spec) and not is_mv(spec)


@pytest.mark.parametrize("spec", MV)
def test_every_mv_spelling(spec):
    assert is_mv(spec) and not is_popcount(spec)


@pytest.mark.parametrize("spec", OTHER)
def test_hierarchies_are_neither(spec):
    assert not is_mv(spec) and not is_popcount(spec)


def test_predicates_agree_with_resolve():
    for text in ["pop", "none", "mv", "M36", "tap", "groups=3", "tap,leaf=2", "P(M4)"]:
        h = resolve(text, 36, 9)
        assert is_popcount(text) == (h is None)
        assert is_mv(text) <= (h is not None and h.is_mv)
    with pytest.raises(BitvoteError, match="malformed"):
        is_popcount("M4(")


# --------------------------------------------------------------------------------------------
# Size limits
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [
    "M1(" * 200 + "M1" + ")" * 200,  # deep nesting
    "M" + "9" * 5000,  # thousands of digits (beyond int()'s default digit limit)
    "groups=" + "1" * 12,
    "tap,leaf=" + "7" * 100,
    "M4(" + ", ".join(["M2"] * 2000) + ")",  # a huge string
    "mv" + " " * (MAX_SPEC_CHARS + 1),
])
def test_pathological_specs_get_one_clear_error(spec):
    with pytest.raises(BitvoteError, match="too large") as e:
        parse_spec(spec)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 300 and "limits" in msg


def test_specs_within_the_limits_still_parse():
    deep = "M1(" * (MAX_SPEC_DEPTH - 1) + "M3" + ")" * (MAX_SPEC_DEPTH - 1)
    assert resolve(deep, 3).describe() == "M3"
    assert resolve("M" + "1" * 9, 111111111).n == 111111111
    wide = "M100(" + ", ".join(["M1"] * 100) + ")"
    assert resolve(wide, 100) == resolve("mv", 100)  # a leaf level of single terms is dropped


def test_tie_sequences_have_limits_too():
    with pytest.raises(BitvoteError, match="too large"):
        parse_tie(",".join(["1"] * (MAX_SPEC_DEPTH + 1)))
    with pytest.raises(BitvoteError, match="too large"):
        parse_tie("1" * (MAX_SPEC_CHARS + 1))


def test_a_tree_standing_for_far_more_voters_than_terms_is_refused_at_once():
    with pytest.raises(BitvoteError, match="covers"):
        resolve("M999999(M999999(M999999(M9)))", 36, 9)


def test_voter_spec_objects_pass_through():
    vs = parse_spec("tap,groups=2")
    assert isinstance(vs, VoterSpec) and parse_spec(vs) is vs and resolve(vs, 36, 9) == resolve("tap,groups=2", 36, 9)


# --------------------------------------------------------------------------------------------
# Layering
# --------------------------------------------------------------------------------------------


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    pkg = "bitvote." + ".".join(path.relative_to(SRC / "bitvote").with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod
            yield from (f"{mod}.{a.name}" for a in node.names)


def test_engine_never_imports_gpu():
    files = sorted((SRC / "bitvote" / "engine").glob("*.py"))
    assert files
    for f in files:
        bad = [m for m in _imports(f) if m == "bitvote.gpu" or m.startswith("bitvote.gpu.")]
        assert not bad, (f.name, bad)


def test_spec_module_and_hw_design_import_no_torch_in_source():
    for f in (SRC / "bitvote" / "voter" / "spec.py", SRC / "bitvote" / "hw" / "design.py"):
        assert not [m for m in _imports(f) if m.split(".")[0] in ("torch", "numpy")], f


def test_layer_design_uses_the_layers_hierarchy(monkeypatch):
    """hw builds a layer's design from its resolved Hierarchy: no spec text is parsed again."""
    from bitvote import BinaryConv2d
    from bitvote.hw import design as D
    from bitvote.hw.units import layer_design

    layer = BinaryConv2d(8, 4, 3, 1, 1, voter="tap,leaf=4", tie="first,-1,1")
    want = D.make_design(72, "tap,leaf=4", 3, "first,-1,1", xnor=False)

    def no_parsing(*a, **k):
        raise AssertionError("spec text parsed again")

    monkeypatch.setattr(D, "parse_spec", no_parsing)
    monkeypatch.setattr(D, "resolve", no_parsing)
    d = layer_design(layer)
    assert d.hier is layer.hierarchy and d == want and d.name == want.name
    assert D.design_for(None, 72, 3).kind == "popcount"
    with pytest.raises(BitvoteError, match="does not cover"):
        D.design_for(layer.hierarchy, 36, 3)


# --------------------------------------------------------------------------------------------
# Every caller accepts every spelling
# --------------------------------------------------------------------------------------------


def test_step1_training_accepts_pop_like_popcount(tmp_path, monkeypatch, capsys):
    """`bitvote train --step 1 --voter pop` is the popcount model, as the grammar says."""
    from bitvote.cli import main
    from bitvote.train import load_checkpoint

    from test_data import tiny_data_root

    data = tiny_data_root(tmp_path, monkeypatch, n_train=16, n_test=8)
    out = tmp_path / "s1"
    rc = main(["train", "--step", "1", "--voter", "pop", "--width", "0.125", "--epochs", "1", "--batch-size", "8",
               "--data", str(data), "--out", str(out), "--no-download", "--quiet", "--threads", "1",
               "--stop-after-steps", "1"])
    assert rc in (0, None)
    ck = load_checkpoint(out / "last.pt")
    assert ck["binary_weights"] is False and is_popcount(ck["config"]["voter"])
    capsys.readouterr()
    assert main(["train", "--step", "1", "--voter", "M4(M2)", "--width", "0.125", "--epochs", "1",
                 "--data", str(data), "--out", str(tmp_path / "bad"), "--no-download", "--quiet"]) == 2
    assert "needs binary weights" in capsys.readouterr().err


def test_model_configs_keep_ties_plain():
    """Tie objects passed in code land in a model's config as 1 / -1 / "first" text, never as the
    type (a checkpoint's config is read with weights_only=True and written as JSON)."""
    from bitvote import models

    m = models.create("reactnet18", voter="tap", width=0.125, tie=parse_tie("first,1"))
    assert m.config["tie"] == "first,1"
    models.set_voter(m, "mv", Tie.MINUS)
    assert m.config["tie"] == -1 and type(m.config["tie"]) is int
    assert json.loads(json.dumps(m.config))["tie"] == -1


def test_verify_checks_the_engine_it_is_given():
    import torch

    from bitvote import models
    from bitvote.engine.graph import EngineModel
    from bitvote.engine.verify import verify

    torch.manual_seed(0)
    m = models.create("reactnet18", voter="tap,groups=2", width=0.125, tie="first").eval()
    x = torch.randn(1, 3, 8, 8)
    built = []

    def factory(graph):
        built.append(graph)
        return EngineModel(graph)

    r = verify(m, x, engine=factory)
    assert r["passed"] and r["layer_mismatches"] == 0 and len(built) == 1

    class InvertedInput(EngineModel):  # feeds every layer the complement of its input bits
        def pack_input(self, x, threads=1):
            return ~super().pack_input(x, threads)

    bad = verify(m, x, engine=InvertedInput)
    assert not bad["passed"] and bad["layer_mismatches"] > 0
