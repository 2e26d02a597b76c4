"""The frontier's pieces: retraining recipes, per-layer voter maps, `bitvote search`, `bitvote frontier`.

Tiny data (24 training / 12 test images, width 1/8, batch 8: 3 steps an epoch), so every
training here takes seconds; one popcount parent is trained once for the module.
"""

import importlib.util
import itertools
import json

import pytest
import torch
from hypothesis import given, settings, strategies as st

from bitvote import models as M
from bitvote.cli import main
from bitvote.errors import BitvoteError
from bitvote.experiments.recipes import parse_recipe, recipe_options, recipe_slug
from bitvote.experiments.reproduce import PRESETS, reproduce
from bitvote.hw.cost import model_area, unit_estimate
from bitvote.hw.design import make_design
from bitvote.hw.search import choose
from bitvote.train import TrainConfig, train
from bitvote.train.loop import SimulatedKill, plateaued, stage_at, voter_stages
from bitvote.voter import check_sigma, parse_tie, reduce_votes, resolve, split_sigma

from fakedata import make_cifar_python


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """(data root, a trained popcount checkpoint, scratch folder), with a private cache."""
    root = tmp_path_factory.mktemp("frontier")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BITVOTE_CACHE", str(root / "cache"))
        mp.delenv("BITVOTE_DATA", raising=False)
        make_cifar_python(root / "data", n_train=24, n_test=12)
        res = train(_cfg(root / "data", root / "base", epochs=1, lr=2e-3))
        yield root / "data", res["best"], root


def _cfg(data, out, **kw):
    base = dict(model="reactnet18", width=0.125, data=str(data), epochs=1, batch_size=8, lr=1e-3, out=str(out),
                download=False, quiet=True, threads=1, ckpt_every_s=1e9)
    base.update(kw)
    return TrainConfig(**base)


# -- per-level surrogate width ----------------------------------------------------------------

def test_sigma_rule_text_round_trips_and_bad_rules_fail():
    assert check_sigma("fanin,leaf=2") == "fanin,leaf=2"
    assert check_sigma(" Valid , leaf=0.5 ") == "valid,leaf=0.5"
    assert check_sigma("fanin,leaf=1") == "fanin"
    assert split_sigma("1.5,leaf=3") == (1.5, 3.0)  # the factor as a number, as sigma_for takes it
    for bad in ("fanin,leaf=0", "fanin,leaf=x", "fanin,root=2", "bogus,leaf=2", "fanin,leaf"):
        with pytest.raises(BitvoteError):
            check_sigma(bad)


def test_leaf_sigma_lets_a_4_term_leaf_pass_gradient_off_ties():
    """sigma = sqrt(4) = 2: a leaf sum of +-2 (not a tie) has u = +-1, where ApproxSign's slope
    is 0; with the leaf x2 (sigma 4) it is 0.25. The root level and a flat MV keep theirs."""
    h = resolve("M2(M4)", 8, 1, parse_tie("first"))
    s = torch.tensor([[2.0, -2.0]], requires_grad=True)
    first = torch.ones(1, 2)
    root_slope = 2 / 2 ** 0.5  # the root M2 sees +1 and -1: a tie, u = 0, slope 2 / sigma
    for rule, leaf_slope in (("fanin", 0.0), ("fanin,leaf=2", 0.25)):
        s.grad = None
        reduce_votes(h, s, None, first, dim=1, sigma=rule).sum().backward()
        assert torch.allclose(s.grad.abs(), torch.full_like(s, leaf_slope * root_slope)), rule
    mv = resolve("mv", 8, 1, parse_tie(1))
    grads = []
    for rule in ("fanin", "fanin,leaf=4"):
        x = torch.tensor([[1.0]], requires_grad=True)
        reduce_votes(mv, x, dim=1, sigma=rule).sum().backward()
        grads.append(float(x.grad))
    assert grads[0] == grads[1] > 0


def test_leaf_sigma_reaches_every_voter_layer_of_a_run(parent, tmp_path):
    data, ckpt, _ = parent
    train(_cfg(data, tmp_path / "r", init=ckpt, voter="tap", tie="first", sigma="fanin,leaf=2"))
    from bitvote.train import load_model

    model, _ = load_model(tmp_path / "r" / "last.pt")
    assert {layer.sigma for _, layer in M.voter_layers(model)} == {"fanin,leaf=2"}


# -- voter maps -------------------------------------------------------------------------------

def test_voter_argument_is_a_spec_or_a_mapping():
    assert M.parse_voter_map("tap,leaf=4") == "tap,leaf=4"
    assert M.parse_voter_map("groups=4") == "groups=4"
    assert M.parse_voter_map("cm:M(M3(M3))") == "cm:M(M3(M3))"
    assert M.parse_voter_map("layer1.*=tap,leaf=4;*=mv") == {"layer1.*": "tap,leaf=4", "*": "mv"}
    assert M.parse_voter_map("layer4.3.conv=mv") == {"layer4.3.conv": "mv"}
    m = {"layer1.*": "tap,leaf=4", "*": "mv"}
    assert M.parse_voter_map(M.voter_map_text(m)) == m
    for bad in ("layer1.*=;*=mv", "=mv;x=1", "a.*=mv;a.*=tap", ";;", " "):
        with pytest.raises(BitvoteError):
            M.parse_voter_map(bad)


def test_convert_cli_takes_a_mapping_and_a_map_file(parent, tmp_path, capsys):
    data, ckpt, _ = parent
    rc = main(["convert", str(ckpt), "--voter", "layer1.*=tap,leaf=4;layer4.*=mv", "--tie", "first", "--data",
               str(data), "--no-download", "--json"])
    assert rc == 0
    row = json.loads(capsys.readouterr().out)["rows"][-1]
    assert row["voter"] == "layer1.*=tap,leaf=4;layer4.*=mv"
    assert row["resolved"] == "M9(M2(M4)) / popcount / M288 / M576"
    f = tmp_path / "map.json"
    f.write_text(json.dumps({"layer2.*": "tap"}))
    assert main(["convert", str(ckpt), "--voter-map", str(f), "--data", str(data), "--no-download", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][-1]["resolved"] == "popcount / M9(M8) / M9(M16)"
    for argv, what in ((["--voter", "mv", "--voter-map", str(f)], "use one"),
                       (["--voter", "layer9.*=mv"], "matches no voter layer"),
                       ([], "--voter"),
                       (["--voter-map", str(tmp_path / "none.json")], "does not exist")):
        assert main(["convert", str(ckpt), "--data", str(data), "--no-download", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("bitvote: error:") and what in err and "Traceback" not in err
    f.write_text("[1, 2]")
    assert main(["convert", str(ckpt), "--voter-map", str(f), "--data", str(data), "--no-download"]) == 2
    assert "JSON object" in capsys.readouterr().err


# -- schedules --------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 6))
def test_stages_are_in_order_cover_the_run_and_end_on_the_target(total, k):
    got = [stage_at(i, total, k) for i in range(total)]
    assert got == sorted(got) and got[-1] == k - 1
    assert all(b - a <= 1 for a, b in zip(got, got[1:])) or total < k
    if total >= k:
        assert set(got) == set(range(k))


def test_voter_stages():
    names = ["layer1.0.conv", "layer1.1.conv", "layer2.0.conv", "layer3.0.conv"]
    assert voter_stages("tap", None, names) == ["tap"]
    assert voter_stages("tap,leaf=4", "mv;tap", names) == ["mv", "tap", "tap,leaf=4"]
    st_ = voter_stages({"layer1.*": "tap", "*": "mv"}, "layers", names)
    assert st_[0] == {"layer1.0.conv": "tap", "layer1.1.conv": "tap", "layer2.0.conv": "popcount",
                      "layer3.0.conv": "popcount"}
    assert st_[1]["layer2.0.conv"] == "mv" and st_[1]["layer3.0.conv"] == "popcount"
    assert st_[-1] == {"layer1.*": "tap", "*": "mv"} and len(st_) == 3
    with pytest.raises(BitvoteError):
        voter_stages("tap", "popcount;mv", names)


def test_plateau_rule():
    assert not plateaued([3.0, 2.0, 1.0], 1, 1e-3)
    assert plateaued([3.0, 2.0, 2.0], 1, 1e-3)
    assert not plateaued([3.0, 2.0, 2.0], 2, 1e-3)
    assert plateaued([3.0, 2.0, 2.1, 2.05], 2, 1e-3)
    assert not plateaued([3.0, 3.0], 0, 1e-3)


def test_progressive_run_switches_voters_recalibrates_and_resumes_exactly(parent, tmp_path, monkeypatch):
    """Two stages (mv, then the target) over 6 steps; BN re-estimated at each switch; a kill
    right after the switch and a resume give the uninterrupted run's weights."""
    import bitvote.train.loop as loop

    data, ckpt, _ = parent
    calls = []
    real = loop.recalibrate_bn
    monkeypatch.setattr(loop, "recalibrate_bn", lambda *a, **k: calls.append(1) or real(*a, **k))
    kw = dict(init=ckpt, voter="tap", tie="first", progressive="mv", recalibrate_bn=8, epochs=2,
              ckpt_every_steps=1)
    whole = train(_cfg(data, tmp_path / "a", **kw))
    assert len(calls) == 2 and whole["voter"] == "tap"
    with pytest.raises(SimulatedKill):
        train(_cfg(data, tmp_path / "b", **kw), _stop_after=4)
    train(_cfg(data, tmp_path / "b", resume=True, **kw))
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["voter_stages"] == ["mv", "tap"] and a["voter_stage"] == 1
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_self_distillation_uses_the_parent_as_teacher(parent, tmp_path, monkeypatch):
    import bitvote.train.loop as loop

    data, ckpt, _ = parent
    seen = []
    real = loop.distribution_loss
    monkeypatch.setattr(loop, "distribution_loss", lambda s, t: seen.append(t.detach().clone()) or real(s, t))
    train(_cfg(data, tmp_path / "kd", init=ckpt, voter="mv", self_distill=True))
    assert len(seen) == 3  # every step, against the parent's logits
    from bitvote.train import load_model

    parent_net, _ = load_model(ckpt)
    assert M.voter_layers(parent_net)[0][1].hierarchy is None  # the teacher is the popcount parent
    train(_cfg(data, tmp_path / "plain", init=ckpt, voter="mv"))
    assert len(seen) == 3
    with pytest.raises(BitvoteError, match="needs --init"):
        train(_cfg(data, tmp_path / "x", voter="mv", self_distill=True))


def test_plateau_stops_early_and_says_so(parent, tmp_path):
    data, ckpt, _ = parent
    res = train(_cfg(data, tmp_path / "p", init=ckpt, voter="mv", epochs=5, patience=1, min_delta=0.9))
    assert res["stopped"] == "plateau" and res["epochs_run"] == 2 and res["top1"] is not None
    again = train(_cfg(data, tmp_path / "p", init=ckpt, voter="mv", epochs=5, patience=1, min_delta=0.9,
                       resume=True))
    assert again["epochs_run"] == 2


def test_train_cli_recipe_options(parent, tmp_path, capsys):
    data, ckpt, _ = parent
    rc = main(["train", "--init", str(ckpt), "--voter", "layer1.*=tap,leaf=4;*=mv", "--tie", "first",
               "--progressive", "layers", "--recalibrate-bn", "8", "--self-distill", "--patience", "2",
               "--sigma", "fanin,leaf=2", "--epochs", "1", "--batch-size", "8", "--data", str(data),
               "--out", str(tmp_path / "cli"), "--no-download", "--quiet", "--json", "--threads", "1"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["voter"] == {"layer1.*": "tap,leaf=4", "*": "mv"}
    for argv, what in ((["--self-distill"], "needs --init"), (["--recalibrate-bn", "-1"], "recalibrate-bn"),
                       (["--patience", "-2"], "patience"), (["--sigma", "fanin,leaf=-1"], "leaf=F")):
        assert main(["train", "--data", str(data), "--out", str(tmp_path / "bad"), "--no-download", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("bitvote: error:") and what in err, (argv, err)


# -- recipes and the ablation -----------------------------------------------------------------

def test_recipe_grammar():
    p = {"sigma": "fanin", "recalibrate": 100, "retrain_epochs": 4}
    assert recipe_options("plain", p, "tap") == ({"sigma": "fanin"}, 4)
    opts, ep = recipe_options("recal+kd+leafsigma=2+prog+plateau=3+long=2", p, "tap,leaf=4")
    assert opts == {"sigma": "fanin,leaf=2", "recalibrate_bn": 100, "self_distill": True, "progressive": "mv",
                    "patience": 3} and ep == 8
    assert recipe_options("prog=mv/tap", p, "tap,leaf=4")[0]["progressive"] == "mv;tap"
    assert "progressive" not in recipe_options("prog", p, "mv")[0]
    assert recipe_options("layers", p, "tap")[0]["progressive"] == "layers"
    assert recipe_slug("recal+leafsigma=2.5") == "recal_leafsigma2p5"
    for bad in ("", "fast", "plain+kd", "kd+kd", "leafsigma", "leafsigma=-1", "plateau=0", "kd=2", "prog+layers"):
        with pytest.raises(BitvoteError):
            parse_recipe(bad)


def test_ablation_table_runs_each_recipe_from_one_baseline(parent, tmp_path):
    data, _, _ = parent
    out = tmp_path / "abl"
    rows = reproduce("smoke", data=str(data), out=str(out), threads=1, download=False, quiet=True,
                     table="ablation", recipes=["plain", "leafsigma=2"], voters=["tap"])
    modes = [(r["mode"], r.get("recipe")) for r in rows]
    assert modes == [("baseline", None), ("converted", None), ("recalibrated", None), ("retrained", "plain"),
                     ("retrained", "leafsigma=2")]
    assert rows[-1]["sigma"] == "fanin,leaf=2" and rows[-1]["stopped"] == "budget"
    text = (out / "ablation.md").read_text()
    assert "| leafsigma=2 |" in text and "`tap` (tie first)" in text
    assert "each row's recipe in its row" in text and "recipe `plain`)" not in text
    assert len(json.loads((out / "ablation.json").read_text())) == 5
    assert (out / "stages" / "reactnet18" / "tap-tiefirst--leafsigma2.retrained.json").is_file()
    assert (out / "stages" / "reactnet18" / "tap-tiefirst.retrained.json").is_file()
    assert PRESETS["smoke"]["ablation_voters"] == ("tap,leaf=4",)  # without voters=: the preset's cheapest row


def test_frontier_preset_prices_every_design_at_every_layer():
    p = PRESETS["frontier-cpu"]
    assert {"mv", "groups=4", "tap", "tap,groups=4", "tap,leaf=4", "tap,leaf=8", "cm:M(M3(M3))",
            "cm:P(M3)"} <= set(p["voters"]) and p["pad_variant"]
    for model in p["models"]:
        for v in p["voters"]:
            net = M.create(model, voter=v, width=p["width"], tie="first")
            assert all(layer.hierarchy is not None for _, layer in M.voter_layers(net)), (model, v)
    parse_recipe(p["recipe"])
    for r in p["ablation_recipes"]:
        parse_recipe(r)


# -- cost and search --------------------------------------------------------------------------

def test_unit_gate_model_ranks_designs_as_synthesis_does():
    """Synthesis (docs/results.md): popcount + threshold > mv > tap > tap,leaf=8 > cm:M{C}(M3(M3))."""
    order = ["popcount", "mv", "tap", "tap,leaf=8", "cm:M(M3(M3))"]
    t = [unit_estimate(make_design(576, v, k=3, tie="first"))["transistors"] for v in order]
    assert t == sorted(t, reverse=True) and len(set(t)) == len(t)
    a = model_area("reactnet18", "mv", 0.125, "1", source="units")
    assert a["source"] == "units" and 0.9 < a["fraction"] < 1.0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 20), st.integers(1, 20), st.floats(-2, 10), st.floats(-2, 10)),
                min_size=1, max_size=4), st.floats(0.3, 1.0))
def test_knapsack_choice_is_the_best_feasible_one(layers, frac):
    areas, losses = {}, {}
    for i, (a1, a2, l1, l2) in enumerate(layers):
        n = f"l{i}"
        areas[n] = {"popcount": {"area_T": 20.0}, "x": {"area_T": float(a1)}, "y": {"area_T": float(a2)}}
        losses[n] = {"x": l1, "y": l2}
    total = 20.0 * len(layers)
    budget = frac * total
    options = [[(s, a["area_T"], 0.0 if s == "popcount" else losses[n][s]) for s, a in areas[n].items()] for n in areas]
    feasible = [c for c in itertools.product(*options) if sum(o[1] for o in c) <= budget]
    if not any(sum(o[1] for o in c) <= budget for c in itertools.product(*options)) or \
            min(sum(o[1] for o in c) for c in itertools.product(*options)) > budget:
        with pytest.raises(BitvoteError):
            choose(areas, losses, budget)
        return
    try:
        got = choose(areas, losses, budget, resolution=100000)
    except BitvoteError:  # only the rounding of a near-exact fit may refuse
        assert min(sum(o[1] for o in c) for c in feasible) > budget - total / 1000
        return
    area = sum(areas[n][s]["area_T"] for n, s in got.items())
    loss = sum(0.0 if s == "popcount" else losses[n][s] for n, s in got.items())
    assert area <= budget + 1e-9
    assert loss <= min(sum(o[2] for o in c) for c in feasible) + 1e-6


def test_search_writes_a_mapping_under_budget_that_train_and_frontier_read(parent, tmp_path, capsys, monkeypatch):
    data, ckpt, _ = parent
    out = tmp_path / "s"
    rc = main(["search", str(ckpt), "--budget", "0.8", "--candidates", "cm:M(M3(M3))", "--cost", "units",
               "--holdout", "6", "--recalibrate-bn", "6", "--data", str(data), "--out", str(out), "--no-download",
               "--quiet", "--json", "--threads", "1"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["area_fraction"] <= 0.8 and res["area_source"] == "units"
    assert set(res["voter"]) == {n for n, _ in M.voter_layers(M.create("reactnet18", width=0.125))}
    assert set(res["voter"].values()) <= {"popcount", "cm:M(M3(M3))"}
    assert "| layer |" in (out / "search.md").read_text()
    rows = json.loads((out / "results.json").read_text())
    assert [r["mode"] for r in rows] == ["baseline", "recalibrated"]
    # the mapping file feeds --voter-map, and the rows feed the frontier
    assert main(["convert", str(ckpt), "--voter-map", str(out / "mapping.json"), "--data", str(data),
                 "--no-download", "--json"]) == 0
    capsys.readouterr()
    fr = tmp_path / "fr"
    labels = []
    if importlib.util.find_spec("matplotlib"):
        import matplotlib.axes

        real = matplotlib.axes.Axes.set_xlabel
        monkeypatch.setattr(matplotlib.axes.Axes, "set_xlabel", lambda ax, t, **k: labels.append(t) or real(ax, t, **k))
    assert main(["frontier", str(out / "results.json"), "--out", str(fr), "--cost", "units", "--modes", "all",
                 "--quiet"]) == 0
    assert labels or not importlib.util.find_spec("matplotlib")
    assert all("unit-count model" in t and "Yosys" not in t for t in labels)
    got = json.loads((fr / "frontier.json").read_text())
    searched = next(r for r in got if not r["baseline"])
    assert abs(searched["vs_baseline"] + 1 - res["area_fraction"]) < 1e-9 and searched["dtop1"] is not None
    assert "unit-count model" in (fr / "frontier.md").read_text()
    pytest.importorskip("matplotlib")
    assert (fr / "frontier.png").stat().st_size > 1000
    for argv, what in ((["--budget", "0"], "--budget"), (["--budget", "0.01"], "cheapest mapping"),
                       (["--budget", "0.5", "--candidates", "popcount"], "always a candidate")):
        assert main(["search", str(ckpt), "--cost", "units", "--data", str(data), "--out", str(tmp_path / "e"),
                     "--no-download", "--quiet", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("bitvote: error:") and what in err, (argv, err)


def test_frontier_rejects_bad_input(tmp_path, capsys):
    f = tmp_path / "r.json"
    f.write_text(json.dumps([{"model": "reactnet18", "voter": "mv", "top1": 1.0, "mode": "converted"}]))
    assert main(["frontier", str(f), "--out", str(tmp_path / "o"), "--cost", "units"]) == 2
    assert "no row of mode" in capsys.readouterr().err
    assert main(["frontier", str(f), "--out", str(tmp_path / "o"), "--cost", "units", "--modes", "bogus"]) == 2
    assert "--modes" in capsys.readouterr().err


def test_reproduce_rows_for_per_layer_mappings_and_bad_recipes(capsys, tmp_path):
    from bitvote.experiments.reproduce import voter_rows

    m = {f"layer{i}.{j}.conv": "tap,leaf=4" for i in range(1, 5) for j in range(4)}
    rows = voter_rows(["mv", M.voter_map_text(m)])
    assert [r.tie for r in rows] == ["1", "1", "first"] and rows[-1].voter == m
    assert len(rows[-1].slug) < 60 and rows[-1].slug != voter_rows([M.voter_map_text({"layer1.*": "mv"})])[0].slug
    for argv, what in ((["--recipe", "fast"], "unknown part"), (["--table", "ablation", "--recipes", "kd+kd"], "twice"),
                       (["--retrain-epochs", "0"], "--retrain-epochs")):
        assert main(["reproduce", "--preset", "smoke", "--out", str(tmp_path / "r"), "--no-download", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("bitvote: error:") and what in err, (argv, err)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_synthesized_areas_agree_with_the_unit_count_ranking():
    """With yosys: the synthesized fractions of popcount + threshold rank the designs as the
    unit-count model does (tens of seconds of synthesis the first time, cached after)."""
    import shutil

    if not shutil.which("yosys"):
        pytest.skip("yosys is not installed")
    order = ["mv", "tap", "tap,leaf=4"]
    synth = [model_area("reactnet18", v, 0.125, "first", source="synth")["fraction"] for v in order]
    units = [model_area("reactnet18", v, 0.125, "first", source="units")["fraction"] for v in order]
    assert synth == sorted(synth, reverse=True) and units == sorted(units, reverse=True)
    assert synth[0] < 1.0 and synth[-1] < 0.6  # small leaves save over 40 %
