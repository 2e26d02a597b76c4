"""`bitvote reproduce --table appendix`: the 4 x 3 grid of bn forms, resumable, seed layout."""

import json

import pytest

from bitvote.experiments.appendix import SEED_APPENDIX, reproduce_appendix
from bitvote.cli import main
from bitvote.errors import BitvoteError


@pytest.fixture()
def data(tiny_data):
    return tiny_data(n_train=16, n_test=8)


def test_appendix_grid_smoke(data, tmp_path, capsys):
    out = tmp_path / "app"
    rc = main(["reproduce", "--table", "appendix", "--preset", "smoke", "--models", "reactnet18,xnornet18",
               "--data", str(data), "--out", str(out), "--threads", "1", "--no-download"])
    assert rc == 0
    text = (out / "appendix.md").read_text()
    rows = json.loads((out / "appendix.json").read_text())
    assert sorted((r["model"], r["bn"]) for r in rows) == sorted(
        (m, b) for m in ("reactnet18", "xnornet18") for b in ("bn", "none", "free"))
    assert all(0 <= r["top1"] <= 100 for r in rows)
    assert "| ReActNet-18 |" in text and "/ 92.31 |" in text and "CIFAR10 BN-Free" in text
    assert "ReActNet-18" in capsys.readouterr().out
    # a re-run trains nothing: every cell's stage file is found
    again = reproduce_appendix("smoke", models=["reactnet18", "xnornet18"], data=str(data), out=str(out),
                               threads=1, download=False, quiet=True)
    assert again == rows


def test_appendix_bad_input(data, tmp_path):
    with pytest.raises(BitvoteError, match="appendix grid"):
        reproduce_appendix("smoke", models=["resnet18"], data=str(data), out=str(tmp_path / "x"), quiet=True)
    with pytest.raises(BitvoteError, match="preset"):
        reproduce_appendix("huge", data=str(data), out=str(tmp_path / "x"), quiet=True)
    assert set(SEED_APPENDIX["cifar100"]) == {"xnornet18", "birealnet18", "reactnet18", "reactneta"}
