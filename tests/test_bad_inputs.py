"""A catalogue of bad inputs: each is one ``bitvote: error: ...`` line naming the input, exit 2, no traceback.

CLI cases run in-process (``bitvote.cli.main``) so the catalogue costs no torch start-up per case;
API cases expect a one-line :class:`~bitvote.errors.BitvoteError`. A checkpoint crafted to run
code on load must not run it. A run whose loss or weights stop being finite stops with the step
named and leaves the last good ``last.pt``.
"""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bitvote import data as D
from bitvote import models
from bitvote.cli import main
from bitvote.errors import BitvoteError
from bitvote.train import TrainConfig, load_checkpoint, load_model, train

from test_data import make_cifar_python, make_image_folder


class _Payload:
    """Unpickling this runs ``exec`` and creates ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """The world the cases run in: data folders good and bad, a finished run, bad checkpoints."""
    root = tmp_path_factory.mktemp("bad")
    mp = pytest.MonkeyPatch()
    mp.setenv("BITVOTE_CACHE", str(root / "cache"))
    mp.delenv("BITVOTE_DATA", raising=False)
    p = {"root": root, "marker": root / "PWNED"}
    make_cifar_python(root / "data", n_train=32, n_test=10)
    p["data"] = root / "data"
    train(TrainConfig(model="reactnet18", width=0.125, data=str(root / "data"), out=str(root / "run"), epochs=1,
                      batch_size=16, threads=1, quiet=True, download=False))
    p["run"], p["good"] = root / "run", root / "run" / "last.pt"
    blob = p["good"].read_bytes()
    # data folders
    (root / "empty").mkdir()
    (root / "afile").write_text("not a folder")
    make_image_folder(root / "img9")
    import shutil

    shutil.rmtree(root / "img9" / "train" / "class09")
    make_image_folder(root / "imgnone")
    for f in (root / "imgnone" / "train" / "class03").iterdir():
        f.unlink()
    make_image_folder(root / "imgbroken")
    next((root / "imgbroken" / "train" / "class01").iterdir()).write_bytes(b"\x89PNG not really")
    make_image_folder(root / "imgsize")
    from PIL import Image

    Image.new("RGB", (40, 30)).save(next((root / "imgsize" / "train" / "class02").iterdir()))
    py = root / "notpickle" / "cifar-10-batches-py"
    make_cifar_python(root / "notpickle")
    (py / "data_batch_2").write_bytes(b"not a pickle")
    make_cifar_python(root / "missing")
    (root / "missing" / "cifar-10-batches-py" / "data_batch_4").unlink()
    make_cifar_python(root / "labels")
    with open(root / "labels" / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 12]}, f)
    # checkpoints
    (root / "empty.pt").write_bytes(b"")
    (root / "trunc.pt").write_bytes(blob[: len(blob) // 2])
    (root / "text.pt").write_text("hello\n")
    torch.save({"conv.weight": torch.zeros(3)}, root / "foreign.pt")  # a plain state dict, not ours
    ck = torch.load(p["good"], weights_only=True)
    ck["config"]["name"] = "birealnet18"
    torch.save(ck, root / "other.pt")  # another model's name over these weights
    torch.save({"format": "bitvote-checkpoint/1", "model": {}, "config": {}, "x": _Payload(p["marker"])},
               root / "evil.pt")
    with open(root / "evil.pkl", "wb") as f:  # the same payload as a legacy (non-zip) pickle
        pickle.dump({"x": _Payload(p["marker"])}, f)
    (root / "corruptrun").mkdir()
    (root / "corruptrun" / "last.pt").write_bytes(blob[:1000])
    assert not p["marker"].exists()
    yield p
    mp.undo()


def _train(w, out, *extra, data=None):
    return ["train", "--width", "0.125", "--data", str(data or w["data"]), "--epochs", "1", "--batch-size", "16",
            "--threads", "1", "--no-download", "--quiet", "--out", str(w["root"] / out), *extra]


def _ev(w, ck):
    return ["eval", str(w["root"] / ck), "--data", str(w["data"]), "--no-download"]


# (id, argv(w), the text the error line must contain)
CLI = [
    # voter specs: malformed, unknown, not fitting a layer (width 1/8: n = 8 channels x 9 taps = 72)
    ("voter-malformed", lambda w: _train(w, "out/a", "--voter", "M3(M7"), "M3(M7"),
    ("voter-unknown", lambda w: _train(w, "out/a", "--voter", "bogus"), "bogus"),
    ("voter-too-few-terms", lambda w: _train(w, "out/a", "--voter", "M7(M7)"), "M7(M7)"),
    ("voter-too-many-terms", lambda w: _train(w, "out/a", "--voter", "M9(M4(M128))"), "M9(M4(M128))"),
    ("voter-groups-do-not-divide", lambda w: _train(w, "out/a", "--voter", "groups=5"), "groups=5"),
    ("voter-leaf-does-not-divide", lambda w: _train(w, "out/a", "--voter", "tap,leaf=3"), "tap,leaf=3"),
    ("voter-cgroups-zero", lambda w: _train(w, "out/a", "--voter", "cgroups=0"), "cgroups=0"),
    ("tie-unknown", lambda w: _train(w, "out/a", "--tie", "2"), "'2'"),
    ("sigma-unknown", lambda w: _train(w, "out/a", "--sigma", "wide"), "wide"),
    ("pad-value", lambda w: _train(w, "out/a", "--pad-value", "0.5"), "0.5"),
    ("surrogate-unknown", lambda w: _train(w, "out/a", "--surrogate", "tanh"), "tanh"),
    ("teacher-model-with-voter", lambda w: _train(w, "out/a", "--model", "resnet18", "--voter", "mv"), "resnet18"),
    ("step1-with-voter", lambda w: _train(w, "out/a", "--step", "1", "--voter", "mv"), "mv"),
    # unknown models, options, commands
    ("model-unknown", lambda w: _train(w, "out/a", "--model", "reactnet19"), "reactnet19"),
    ("option-unknown", lambda w: _train(w, "out/a", "--frobnicate"), "--frobnicate"),
    ("command-unknown", lambda w: ["frob"], "frob"),
    ("bn-unknown", lambda w: _train(w, "out/a", "--bn", "layer"), "layer"),
    ("dataset-unknown", lambda w: _train(w, "out/a", "--dataset", "mnist"), "mnist"),
    # numbers
    ("epochs-negative", lambda w: _train(w, "out/a", "--epochs", "-1"), "--epochs"),
    ("epochs-not-a-number", lambda w: _train(w, "out/a", "--epochs", "ten"), "ten"),
    ("batch-size-zero", lambda w: _train(w, "out/a", "--batch-size", "0"), "--batch-size"),
    ("width-zero", lambda w: _train(w, "out/a", "--width", "0"), "width"),
    ("width-negative", lambda w: _train(w, "out/a", "--width", "-0.5"), "-0.5"),
    ("lr-nan", lambda w: _train(w, "out/a", "--lr", "nan"), "--lr"),
    ("lr-negative", lambda w: _train(w, "out/a", "--lr", "-1e-3"), "--lr"),
    ("subset-zero", lambda w: _train(w, "out/a", "--subset", "0"), "--subset"),
    ("threads-zero", lambda w: _train(w, "out/a", "--threads", "0"), "--threads"),
    ("label-smoothing", lambda w: _train(w, "out/a", "--label-smoothing", "1.5"), "--label-smoothing"),
    ("ckpt-every-steps-negative", lambda w: _train(w, "out/a", "--ckpt-every-steps", "-2"), "--ckpt-every-steps"),
    ("nproc-zero", lambda w: _train(w, "out/a", "--nproc", "0"), "--nproc"),
    ("step-3", lambda w: _train(w, "out/a", "--step", "3"), "--step"),
    # devices
    ("device-unknown", lambda w: _train(w, "out/a", "--device", "tpu"), "tpu"),
    ("device-index", lambda w: _train(w, "out/a", "--device", "cuda:99"), "cuda:99"),
    ("eval-device-unknown", lambda w: _ev(w, "run/last.pt") + ["--device", "gpu0"], "gpu0"),
    # data folders
    ("data-missing", lambda w: _train(w, "out/a", data=w["root"] / "nope"), "nope"),
    ("data-empty", lambda w: _train(w, "out/a", data=w["root"] / "empty"), "empty"),
    ("data-is-a-file", lambda w: _train(w, "out/a", data=w["root"] / "afile"), "afile"),
    ("data-class-count", lambda w: _train(w, "out/a", data=w["root"] / "img9"), "9 class folders"),
    ("data-class-without-images", lambda w: _train(w, "out/a", data=w["root"] / "imgnone"), "class03"),
    ("data-undecodable-image", lambda w: _train(w, "out/a", data=w["root"] / "imgbroken"), "class01"),
    ("data-image-size", lambda w: _train(w, "out/a", data=w["root"] / "imgsize"), "40x30"),
    ("data-batch-not-a-pickle", lambda w: _train(w, "out/a", data=w["root"] / "notpickle"), "data_batch_2"),
    ("data-batch-missing", lambda w: _train(w, "out/a", data=w["root"] / "missing"), "data_batch_4"),
    ("data-labels-out-of-range", lambda w: _train(w, "out/a", data=w["root"] / "labels"), "data_batch_1"),
    # checkpoints
    ("ckpt-missing", lambda w: _ev(w, "none.pt"), "none.pt"),
    ("ckpt-empty", lambda w: _ev(w, "empty.pt"), "empty.pt"),
    ("ckpt-truncated", lambda w: _ev(w, "trunc.pt"), "trunc.pt"),
    ("ckpt-text", lambda w: _ev(w, "text.pt"), "text.pt"),
    ("ckpt-foreign", lambda w: _ev(w, "foreign.pt"), "foreign.pt"),
    ("ckpt-other-model", lambda w: _ev(w, "other.pt"), "other.pt"),
    ("ckpt-code-on-load", lambda w: _ev(w, "evil.pt"), "evil.pt"),
    ("ckpt-code-on-load-legacy", lambda w: _ev(w, "evil.pkl"), "evil.pkl"),
    ("init-code-on-load", lambda w: _train(w, "out/a", "--init", str(w["root"] / "evil.pt")), "evil.pt"),
    ("init-truncated", lambda w: _train(w, "out/a", "--init", str(w["root"] / "trunc.pt")), "trunc.pt"),
    ("init-other-model", lambda w: _train(w, "out/a", "--model", "resnet18", "--init", str(w["good"])), "reactnet18"),
    ("teacher-foreign", lambda w: _train(w, "out/a", "--teacher", str(w["root"] / "foreign.pt")), "foreign.pt"),
    ("resume-corrupt-last", lambda w: _train(w, "corruptrun", "--resume"), "last.pt"),
    ("resume-other-model", lambda w: _train(w, "run", "--model", "resnet18", "--resume"), "reactnet18"),
    ("existing-run-without-resume", lambda w: _train(w, "run"), "--resume"),
    ("out-is-a-file", lambda w: _train(w, "afile"), "afile"),
]


def _cli(argv, capsys):
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    return rc, capsys.readouterr().err


def _one_line(rc, err, match):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bitvote: error:"), err
    assert match in lines[0], lines[0]


@pytest.mark.parametrize("case,argv,match", CLI, ids=[c[0] for c in CLI])
def test_cli(w, capsys, case, argv, match):
    argv = [str(w["root"] / "out" / case) if a == str(w["root"] / "out/a") else a for a in argv(w)]
    if "cuda" in str(argv) and torch.cuda.is_available():
        pytest.skip("a CUDA machine has devices")
    rc, err = _cli(argv, capsys)
    _one_line(rc, err, match)
    assert not w["marker"].exists(), "a checkpoint ran code on load"


def test_code_on_load_is_refused_with_a_reason(w):
    for name in ("evil.pt", "evil.pkl"):
        with pytest.raises(BitvoteError, match="refused") as e:
            load_checkpoint(w["root"] / name)
        assert "\n" not in str(e.value) and name in str(e.value)
    assert not w["marker"].exists()


def test_corrupt_last_is_not_overwritten(w, capsys):
    before = (w["root"] / "corruptrun" / "last.pt").read_bytes()
    _cli(_train(w, "corruptrun", "--resume"), capsys)
    assert (w["root"] / "corruptrun" / "last.pt").read_bytes() == before


def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(w, capsys):
    """A huge LR makes the weights inf after step 1: step 2 stops the run; last.pt (step 1) stays good."""
    out = w["root"] / "out" / "nan"
    rc, err = _cli(_train(w, "out/nan", "--lr", "1e36", "--ckpt-every-steps", "1", "--epochs", "3"), capsys)
    _one_line(rc, err, "training diverged at step 2")
    assert str(out / "last.pt") in err
    ck = load_checkpoint(out / "last.pt")
    assert ck["step"] == 1 and all(torch.isfinite(t).all() for t in ck["model"].values() if t.is_floating_point())
    # an overflow inside the optimizer (step size > float32) is the same kind of stop
    rc, err = _cli(_train(w, "out/nan2", "--lr", "1e38"), capsys)
    _one_line(rc, err, "training diverged at step 1")


def test_nan_loss_injected(w, monkeypatch):
    """A NaN loss (whatever its cause) stops the run at that step; the mid-epoch checkpoint before it stays."""
    import bitvote.train.loop as L

    real, calls = L.optimizer_step, []

    def step(*a, **k):
        loss, logits = real(*a, **k)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 2 else loss), logits

    monkeypatch.setattr(L, "optimizer_step", step)
    out = w["root"] / "out" / "nan3"
    with pytest.raises(BitvoteError, match=r"at step 2 .*the loss is nan.*\(step 1\)"):
        train(TrainConfig(model="reactnet18", width=0.125, data=str(w["data"]), out=str(out), epochs=1,
                          batch_size=8, threads=1, quiet=True, download=False, ckpt_every_steps=1))
    assert load_checkpoint(out / "last.pt")["step"] == 1


def test_debug_shows_the_traceback(w):
    with pytest.raises(BitvoteError, match="reactnet19"):
        main(["--debug", *_train(w, "out/a", "--model", "reactnet19")])


API = [
    ("create-unknown-model", lambda w: models.create("reactnet19"), "reactnet19"),
    ("create-bad-width", lambda w: models.create("reactnet18", width=0), "width"),
    ("create-unknown-option", lambda w: models.create("reactnet18", width=0.125, dropout=0.5), "dropout"),
    ("create-malformed-voter", lambda w: models.create("reactnet18", width=0.125, voter="M3(M7"), "M3(M7"),
    ("set-voter-not-fitting", lambda w: models.set_voter(models.create("reactnet18", width=0.125), "M5"), "M5"),
    ("set-voter-pattern", lambda w: models.set_voter(models.create("reactnet18", width=0.125), {"nope.*": "mv"}), "nope.*"),
    ("data-unknown-dataset", lambda w: D.load("cifar11", "train", w["data"]), "cifar11"),
    ("data-unknown-split", lambda w: D.load("cifar10", "val", w["data"]), "val"),
    ("load-truncated", lambda w: load_model(w["root"] / "trunc.pt"), "trunc.pt"),
    ("load-foreign", lambda w: load_checkpoint(w["root"] / "foreign.pt"), "foreign.pt"),
    ("train-zero-batch", lambda w: train(TrainConfig(data=str(w["data"]), out=str(w["root"] / "out" / "z"),
                                                     batch_size=0, download=False)), "--batch-size"),
    ("train-unknown-device", lambda w: train(TrainConfig(data=str(w["data"]), out=str(w["root"] / "out" / "d"),
                                                         device="npu", download=False)), "npu"),
]


@pytest.mark.parametrize("fn,match", [c[1:] for c in API], ids=[c[0] for c in API])
def test_api(w, fn, match):
    with pytest.raises(BitvoteError) as e:
        fn(w)
    assert match in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_code_on_load_in_a_real_process(w):
    """The same refusal from a real ``bitvote eval`` process: one stderr line (no torch warning), no marker."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
           "BITVOTE_CACHE": str(w["root"] / "cache")}
    r = subprocess.run([sys.executable, "-m", "bitvote", *_ev(w, "evil.pkl")], capture_output=True, text=True,
                       env=env, timeout=120)
    _one_line(r.returncode, r.stderr, "evil.pkl")
    assert "refused" in r.stderr and not w["marker"].exists()


def test_garbage_and_pickled_objects_get_different_messages(tmp_path):
    """A text file is corrupt; a pickle of a Python class is refused as unsafe: each says so."""
    from bitvote.train.checkpoint import read

    junk = tmp_path / "junk.pt"
    junk.write_text("garbage\n")
    with pytest.raises(BitvoteError, match="junk.pt is truncated or corrupt"):
        read(junk)
    obj = tmp_path / "obj.pt"
    torch.save({"model": {}, "config": {"name": "x"}, "extra": _Opaque()}, obj)
    with pytest.raises(BitvoteError, match="holds Python objects"):
        read(obj)


class _Opaque:
    pass
