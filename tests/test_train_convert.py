"""Conversion: voter swap keeps the weights, BN recalibration, retraining from a popcount
checkpoint, and one-line errors for bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bitvote import models
from bitvote.train.convert import convert_checkpoint, convert_model, recalibrate_bn, resolved
from bitvote.data import load
from bitvote.errors import BitvoteError
from bitvote.train import TrainConfig, load_checkpoint, load_model, model_checkpoint, save_checkpoint, train
from bitvote.train.checkpoint import set_binary_weights
from bitvote.train.loop import build_model

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture()
def data(tiny_data):
    return tiny_data(n_train=48, n_test=20)


def _popcount_ckpt(path, model="reactnet18", step2=True):
    torch.manual_seed(0)
    net = models.create(model, width=0.125)
    if not step2:
        set_binary_weights(net, False)
    # non-trivial BN statistics, so that loading them is visible
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    save_checkpoint(path, model_checkpoint(net, dataset="cifar10"))
    return net


def test_convert_keeps_weights_and_reports_rows(data, tmp_path):
    src = tmp_path / "pop.pt"
    net = _popcount_ckpt(src)
    res = convert_checkpoint(src, "tap,groups=4", tmp_path / "mv.pt", tie="first", recalibrate=16, data=str(data),
                             download=False)
    assert [r["mode"] for r in res["rows"]] == ["before", "converted", "recalibrated"]
    assert res["rows"][0]["voter"] == "popcount" and res["rows"][1]["voter"] == "tap,groups=4"
    assert res["rows"][1]["resolved"].startswith("M9(M4(M2))")  # width 1/8: C = 8 in the first stage
    for r in res["rows"]:
        assert 0 <= r["top1"] <= r["top5"] <= 100 and r["n"] == 20
    conv, ck = load_model(tmp_path / "mv.pt")
    assert ck["config"]["voter"] == "tap,groups=4" and ck["recalibrated_bn"] == 16
    assert resolved(conv) == res["rows"][1]["resolved"]
    before = net.state_dict()
    for k, v in conv.state_dict().items():
        if "running" in k or "num_batches" in k:
            continue
        assert torch.equal(v, before[k]), k  # every learned weight is the baseline's


def test_recalibrate_bn_is_a_plain_average_without_gradients(data):
    torch.manual_seed(0)
    net = models.create("reactnet18", width=0.125, voter="mv")
    split = load("cifar10", "train", str(data), download=False)
    params = {k: v.clone() for k, v in net.named_parameters()}
    recalibrate_bn(net, split, 24)
    a = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    for m in net.modules():  # poison the old statistics: the result must not depend on them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(7.0)
    recalibrate_bn(net, split, 24)
    b = {k: v for k, v in net.state_dict().items() if "running" in k}
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    assert not net.training
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    for k, v in net.named_parameters():
        assert torch.equal(v, params[k]) and v.grad is None
    with pytest.raises(BitvoteError, match="positive"):
        recalibrate_bn(net, split, 0)


def test_convert_model_pad_value_and_tie_are_recorded():
    net = models.create("reactnet18", width=0.125)
    convert_model(net, "mv", "first", pad_value=1.0)
    assert net.config["voter"] == "mv" and net.config["tie"] == "first" and net.config["pad_value"] == 1.0
    assert resolved(net) == "M72 / M144 / M288 / M576"


def test_retrain_from_popcount_checkpoint_loads_everything(data, tmp_path):
    """`train --init POPCOUNT --voter ...` starts from every weight and BN statistic of the file."""
    src = tmp_path / "pop.pt"
    _popcount_ckpt(src)
    ck = load_checkpoint(src)
    cfg = TrainConfig(init=str(src), voter="tap,groups=4", tie="first", surrogate="ste", sigma="valid",
                      data=str(data), out=str(tmp_path / "rt"), epochs=1, batch_size=8, quiet=True, download=False,
                      threads=1)
    net = build_model(cfg, 10)
    state = net.state_dict()
    assert state.keys() == ck["model"].keys()
    for k, v in ck["model"].items():
        assert torch.equal(state[k], v), k
    layers = [m for _, m in models.voter_layers(net)]
    assert all(m.hierarchy is not None and m.sigma == "valid" for m in layers)
    res = train(cfg)
    assert res["voter"] == "tap,groups=4" and 0 <= res["top1"] <= 100
    assert load_checkpoint(tmp_path / "rt" / "last.pt")["config"]["surrogate"] == "ste"


def _cli(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC, "BITVOTE_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "bitvote", *args], capture_output=True, text=True, env=env, timeout=120)


def test_convert_cli_prints_before_and_after(data, tmp_path):
    src = tmp_path / "pop.pt"
    _popcount_ckpt(src)
    r = _cli(["convert", str(src), "--voter", "mv", "--out", str(tmp_path / "mv.pt"), "--recalibrate-bn", "8",
              "--data", str(data), "--no-download", "--threads", "1"], tmp_path)
    assert r.returncode == 0, r.stderr
    for word in ("| before | popcount", "| converted | mv | M72", "| recalibrated | mv", "mv.pt"):
        assert word in r.stdout
    r = _cli(["convert", str(src), "--voter", "tap", "--data", str(data), "--no-download", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert [x["mode"] for x in json.loads(r.stdout)["rows"]] == ["before", "converted"]


@pytest.mark.parametrize("case,match", [
    ("missing", "does not exist"),
    ("voter", "voter"),
    ("misfit", "does not fit layer"),
    ("step1", "binary weights"),
    ("same-out", "is the input checkpoint"),
])
def test_convert_bad_input_is_one_line(data, tmp_path, case, match):
    src = tmp_path / "pop.pt"
    _popcount_ckpt(src, step2=case != "step1")
    args = ["convert", str(src), "--voter", "mv", "--data", str(data), "--no-download"]
    if case == "missing":
        args[1] = str(tmp_path / "nope.pt")
    elif case == "voter":
        args[3] = "majority9000"
    elif case == "misfit":
        args[3] = "tap,leaf=16"  # width 1/8: 8 channels in the first stage
    elif case == "same-out":
        args += ["--out", str(src)]
    r = _cli(args, tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bitvote: error:") and match in lines[0], r.stderr
    assert "Traceback" not in r.stderr
