"""Whole models through the engine: compile, run, verify (library and CLI)."""

import json

import pytest
import torch

import bitvote
from bitvote.cli import main

graph = pytest.importorskip("bitvote.engine.graph")
from bitvote.engine.verify import verify  # noqa: E402


def _trained_like(name, voter, **kw):
    """A small model with non-trivial BN statistics (as after training)."""
    torch.manual_seed(0)
    m = bitvote.models.create(name, voter=voter, width=0.125, **kw).eval()
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1, generator=g)
            mod.running_var.uniform_(0.5, 2, generator=g)
            mod.weight.data.uniform_(-1, 1, generator=g)
            mod.bias.data.uniform_(-1, 1, generator=g)
        if isinstance(mod, bitvote.RSign):
            mod.shift.bias.data.uniform_(-0.3, 0.3, generator=g)
    return m


@pytest.mark.parametrize("name,voter,kw", [
    ("reactnet18", "mv", {}),
    ("reactnet18", "tap,leaf=4", {"tie": -1}),
    ("birealnet18", "popcount", {"pad_value": 1}),
    ("xnornet18", "P(M9)", {}),
    ("xnornet18", "popcount", {}),
])
def test_verify_passes(name, voter, kw):
    m = _trained_like(name, voter, **kw)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    r = verify(m, x, labels=torch.tensor([0, 1, 2, 3]))
    assert r["passed"], {k: v for k, v in r.items() if k != "layers"}
    assert r["layer_mismatches"] == 0 and all(l["outputs"] > 0 for l in r["layers"])
    assert r["top1_agree"] == 4


def test_cli_compile_run_verify(tmp_path, capsys):
    m = _trained_like("reactnet18", "tap")
    ck = tmp_path / "ck.pt"
    torch.save({"model": m.state_dict(), "config": m.config}, ck)
    out = tmp_path / "m.bvm"
    assert main(["compile", str(ck), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    g = torch.load(out, weights_only=True)
    assert graph.binary_sizes(g)["ratio_weights"] >= 20, text
    x = torch.randn(6, 3, 32, 32)
    data = tmp_path / "d.pt"
    torch.save({"x": x, "y": torch.arange(6) % 10}, data)
    assert main(["run", str(out), "--data", str(data), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    with torch.no_grad():
        assert res["predictions"] == m(x).argmax(1).tolist()
    assert main(["verify", str(ck), "--data", str(data)]) == 0
    assert "PASSED" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["compile", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.bvm")]) == 2
    err = capsys.readouterr().err
    assert "missing.pt" in err and "Traceback" not in err
    assert main(["run", str(tmp_path / "none.bvm"), "--data", "synthetic:2"]) == 2


def test_bench_rows_have_the_fields():
    from bitvote.engine.bench import bench_layers

    rows = bench_layers(batches=(1,), threads=(1,), reps=1, quick=True)
    for r in rows:
        assert {"layer", "batch", "threads", "ms", "fp32_ms", "speedup", "gbmacs"} <= set(r)


def test_engine_data_reads_dataset_folders(tmp_path, monkeypatch):
    """`bitvote run/verify --data FOLDER` takes the test split through bitvote.data."""
    from fakedata import make_cifar_python

    from bitvote.cli.engine import load_data

    monkeypatch.setenv("BITVOTE_CACHE", str(tmp_path / "cache"))
    make_cifar_python(tmp_path, "cifar10", n_train=10, n_test=12)
    x, y = load_data(str(tmp_path), limit=5, num_classes=10)
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (5,)
    assert abs(float(x.mean())) < 3  # normalized, not raw 0..255


def test_engine_refuses_step1_checkpoint(tmp_path, capsys):
    """A step-1 checkpoint has real weights: compiling its signs would be a silent wrong result."""
    m = bitvote.models.create("reactnet18", width=0.125)
    ck = tmp_path / "step1.pt"
    torch.save({"model": m.state_dict(), "config": m.config, "binary_weights": False}, ck)
    assert main(["compile", str(ck), "--out", str(tmp_path / "m.bvm")]) == 2
    err = capsys.readouterr().err
    assert "real weights" in err and "Traceback" not in err and err.count("\n") == 1
