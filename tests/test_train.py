"""Training: exact resume after a kill, checkpoints, two-step training, KD, eval, the demo."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bitvote import models
from bitvote.errors import BitvoteError
from bitvote.train import TrainConfig, distribution_loss, evaluate_checkpoint, load_checkpoint, train
from bitvote.train.loop import SimulatedKill
from bitvote.train.optim import lr_at, make_optimizer

from fakedata import make_cifar_python

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture()
def data(tiny_data):
    return tiny_data(n_train=48, n_test=20)


def _cfg(data, out, **kw):
    base = dict(model="reactnet18", width=0.125, data=str(data), out=str(out), epochs=2, batch_size=8,
                lr=2e-3, seed=1, quiet=True, download=False, threads=1)
    return TrainConfig(**{**base, **kw})


def _same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("stop", [7, 9])  # inside epoch 2 after a mid-epoch checkpoint; right after one
def test_resume_after_kill_is_bit_exact(data, tmp_path, stop):
    ref = train(_cfg(data, tmp_path / "ref", ckpt_every_steps=4))
    with pytest.raises(SimulatedKill):
        train(_cfg(data, tmp_path / "run", ckpt_every_steps=4), _stop_after=stop)
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["step"] < stop and not ck["finished"]
    res = train(_cfg(data, tmp_path / "run", ckpt_every_steps=4, resume=True))
    a = load_checkpoint(tmp_path / "ref" / "last.pt")
    b = load_checkpoint(tmp_path / "run" / "last.pt")
    _same_state(a["model"], b["model"])
    assert a["step"] == b["step"] == 12
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    assert res["top1"] == ref["top1"] and res["top5"] == ref["top5"]


def _cli(args, env_extra=None, **kw):
    env = {**os.environ, "PYTHONPATH": SRC, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "bitvote", *args], capture_output=True, text=True, env=env,
                          timeout=120, **kw)


def test_sigkill_mid_epoch_then_resume_matches(data, tmp_path):
    """A real SIGKILL (possibly inside a checkpoint write), then --resume: same final weights."""
    args = ["train", "--model", "reactnet18", "--width", "0.125", "--data", str(data), "--epochs", "3",
            "--batch-size", "8", "--seed", "2", "--threads", "1", "--no-download", "--quiet",
            "--ckpt-every-steps", "1"]
    env = {"BITVOTE_CACHE": str(tmp_path / "cache")}
    ref = _cli(args + ["--out", str(tmp_path / "ref")], env)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "bitvote", *args, "--out", str(run)],
                         env={**os.environ, "PYTHONPATH": SRC, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (run / "last.pt").exists() and time.time() - t0 < 60:
        time.sleep(0.01)
    time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = load_checkpoint(run / "last.pt")
    assert not killed_at["finished"], "the run finished before the kill: the test proves nothing"
    res = _cli(args + ["--out", str(run), "--resume"], env)
    assert res.returncode == 0, res.stderr
    _same_state(load_checkpoint(tmp_path / "ref" / "last.pt")["model"], load_checkpoint(run / "last.pt")["model"])


def test_checkpoint_files_and_weights_only(data, tmp_path):
    res = train(_cfg(data, tmp_path / "r", epochs=1))
    out = tmp_path / "r"
    assert {p.name for p in out.iterdir()} == {"last.pt", "best.pt", "log.csv", "result.json", ".lock"}
    ck = torch.load(out / "last.pt", weights_only=True)
    for k in ("model", "config", "optimizer", "scheduler", "epoch", "step", "rng", "args", "history"):
        assert k in ck
    assert ck["config"]["name"] == "reactnet18" and ck["config"]["voter"] == "popcount"
    assert json.loads((out / "result.json").read_text())["top1"] == res["top1"]
    lines = (out / "log.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,step,lr,train_loss") and len(lines) == 2
    # a finished run resumed is a no-op that returns the stored result
    assert train(_cfg(data, out, epochs=1, resume=True))["top1"] == res["top1"]


def test_eval_cli_json(data, tmp_path):
    train(_cfg(data, tmp_path / "r", epochs=1, voter="tap"))
    r = _cli(["eval", str(tmp_path / "r" / "best.pt"), "--data", str(data), "--json"],
             {"BITVOTE_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    assert {"top1", "top5", "model", "voter", "dataset", "n"} <= obj.keys()
    assert obj["model"] == "reactnet18" and obj["voter"] == "tap" and obj["dataset"] == "cifar10" and obj["n"] == 20
    assert 0 <= obj["top1"] <= obj["top5"] <= 100


def test_two_step_training(data, tmp_path):
    s1 = train(_cfg(data, tmp_path / "s1", epochs=1, step=1))
    ck = load_checkpoint(tmp_path / "s1" / "best.pt")
    assert ck["binary_weights"] is False
    assert ck["optimizer"]["param_groups"][0]["weight_decay"] == 1e-5  # ReActNet's step-1 WD
    # eval rebuilds a step-1 model (real weights) from the file alone
    assert evaluate_checkpoint(tmp_path / "s1" / "best.pt", data, download=False)["top1"] == s1["top1"]
    s2 = train(_cfg(data, tmp_path / "s2", epochs=1, init=str(tmp_path / "s1" / "best.pt"), model=None, width=None,
                    voter="mv", surrogate="ste", sigma="fanin"))
    ck2 = load_checkpoint(tmp_path / "s2" / "last.pt")
    assert ck2["binary_weights"] is True and ck2["config"]["voter"] == "mv" and ck2["config"]["width"] == 0.125
    assert ck2["optimizer"]["param_groups"][0]["weight_decay"] == 0.0
    assert s2["voter"] == "mv"
    with pytest.raises(BitvoteError, match="needs binary weights"):
        train(_cfg(data, tmp_path / "bad", epochs=1, step=1, voter="mv"))


def test_step1_hook_real_weights():
    from bitvote.nn import BinaryConv2d

    layer = BinaryConv2d(8, 4, 3, 1, 1, weight_scale=True)
    layer.binary_weights = False
    x = torch.randn(2, 8, 6, 6)
    xb = torch.where(x >= 0, 1.0, -1.0)
    assert torch.allclose(layer(x), torch.nn.functional.conv2d(xb, layer.weight, None, 1, 1), atol=1e-5)
    assert "binary_weights=False" in repr(layer)
    with pytest.raises(BitvoteError, match="binary weights"):
        layer.set_voter("mv")
    layer.binary_weights = True
    layer.set_voter("mv")
    with pytest.raises(BitvoteError, match="binary weights"):
        layer.binary_weights = False


def test_kd_from_teacher(data, tmp_path):
    train(_cfg(data, tmp_path / "t", epochs=1, model="resnet18"))
    res = train(_cfg(data, tmp_path / "s", epochs=1, teacher=str(tmp_path / "t" / "best.pt")))
    assert math.isfinite(load_checkpoint(tmp_path / "s" / "last.pt")["history"][0]["train_loss"])
    assert res["model"] == "reactnet18"
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    ref = -(torch.softmax(t, 1) * torch.log_softmax(s, 1)).sum(1).mean()
    assert torch.allclose(distribution_loss(s, t), ref)


def test_weight_decay_only_on_conv_and_linear():
    m = models.create("reactnet18", width=0.125)
    opt = make_optimizer(m, 1e-3, 1e-5)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in m.named_parameters() if id(p) in decayed}
    assert "fc.weight" in names and "stem.0.weight" in names and "layer1.0.conv.weight" in names
    assert not any(("bn" in n or "bias" in n or ".sign." in n or ".act." in n or n.endswith("stem.1.weight")) for n in names)


def test_lr_schedules():
    assert lr_at(0, 10, 1.0, "linear") == 1.0 and lr_at(5, 10, 1.0, "linear") == 0.5
    assert abs(lr_at(5, 10, 1.0, "cosine") - 0.5) < 1e-12 and lr_at(10, 10, 1.0, "cosine") < 1e-12
    assert lr_at(7, 10, 0.3, "constant") == 0.3


def test_progress_degrades_to_one_line_per_epoch(data, tmp_path):
    r = _cli(["train", "--model", "reactnet18", "--width", "0.125", "--data", str(data), "--epochs", "2",
              "--batch-size", "16", "--threads", "1", "--no-download", "--out", str(tmp_path / "r")],
             {"BITVOTE_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 2 and "img/s" in lines[0] and "test top1" in lines[0] and "\r" not in r.stderr
    assert "top1" in r.stdout


def test_demo_tiny(data, tmp_path, capsys):
    from bitvote.experiments.demo import run_demo

    res = run_demo(str(data), str(tmp_path / "demo"), threads=1, download=False, width=0.125, epochs=1,
                   subset=16, test_subset=16, batch_size=8)
    out = capsys.readouterr().out
    assert "| Models | Top-1 (%) | Top-5 (%) |" in out and "bitvote eval" in out
    assert res["baseline"]["n"] == 16
    # a second demo reuses the finished stage
    assert run_demo(str(data), str(tmp_path / "demo"), threads=1, download=False, width=0.125, epochs=1,
                    subset=16, test_subset=16, batch_size=8, quiet=True)["baseline"]["top1"] == res["baseline"]["top1"]


# ---------------------------------------------------------------------------------------------
# bad input: one line naming the input, non-zero exit, no traceback


def _bad(args, tmp_path, match, capsys=None):
    """Run the CLI (in-process when ``capsys`` is given, else as a subprocess) and check the error."""
    if capsys is not None:
        from bitvote.cli import main

        capsys.readouterr()
        rc = main(args)
        err = capsys.readouterr().err
    else:
        r = _cli(args, {"BITVOTE_CACHE": str(tmp_path / "cache")})
        rc, err = r.returncode, r.stderr
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bitvote: error:"), err
    assert match in lines[0], lines[0]


def _train_args(data, out, *extra):
    return ["train", "--width", "0.125", "--data", str(data), "--epochs", "1", "--batch-size", "16",
            "--no-download", "--quiet", "--out", str(out), *extra]


def test_bad_model_and_voter(data, tmp_path):
    _bad(_train_args(data, tmp_path / "a", "--model", "reactnet19"), tmp_path, "reactnet19")
    _bad(_train_args(data, tmp_path / "b", "--voter", "M3(M7"), tmp_path, "M3(M7")


def test_bad_data_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BITVOTE_CACHE", str(tmp_path / "cache"))
    _bad(_train_args(tmp_path / "nope", tmp_path / "a"), tmp_path, str(tmp_path / "nope"))
    bad = tmp_path / "bad"
    (bad / "train" / "x").mkdir(parents=True)
    _bad(_train_args(bad, tmp_path / "b"), tmp_path, "malformed image folder", capsys)
    py = tmp_path / "py" / "cifar-10-batches-py"
    py.mkdir(parents=True)
    (py / "data_batch_1").write_bytes(b"not a pickle")
    _bad(_train_args(py, tmp_path / "c"), tmp_path, "data_batch_1", capsys)


def test_bad_checkpoints(data, tmp_path, capsys):
    train(_cfg(data, tmp_path / "r", epochs=1))
    good = tmp_path / "r" / "last.pt"
    blob = good.read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(blob[: len(blob) // 2])
    _bad(["eval", str(trunc), "--data", str(data)], tmp_path, "trunc.pt")  # one real subprocess
    _bad(["eval", str(tmp_path / "none.pt"), "--data", str(data)], tmp_path, "none.pt", capsys)
    # a checkpoint whose weights belong to another model
    ck = torch.load(good, weights_only=True)
    ck["config"]["name"] = "birealnet18"
    other = tmp_path / "other.pt"
    torch.save(ck, other)
    _bad(["eval", str(other), "--data", str(data)], tmp_path, "other.pt", capsys)
    # --init / --resume from a run of another model
    _bad(_train_args(data, tmp_path / "x", "--model", "resnet18", "--init", str(good)), tmp_path, "reactnet18", capsys)
    _bad(_train_args(data, tmp_path / "r", "--model", "resnet18", "--resume"), tmp_path, "reactnet18", capsys)
    # an existing run without --resume
    _bad(_train_args(data, tmp_path / "r"), tmp_path, "--resume", capsys)


def test_train_cifar100_and_image_folder(tmp_path, monkeypatch):
    from fakedata import make_image_folder

    monkeypatch.setenv("BITVOTE_CACHE", str(tmp_path / "cache"))
    make_cifar_python(tmp_path / "c100", "cifar100", n_train=100, n_test=100)
    res = train(_cfg(tmp_path / "c100", tmp_path / "r100", dataset="cifar100", epochs=1, batch_size=50))
    assert res["dataset"] == "cifar100" and res["n"] == 100
    assert load_checkpoint(tmp_path / "r100" / "last.pt")["config"]["num_classes"] == 100
    make_image_folder(tmp_path / "imgs")
    res = train(_cfg(tmp_path / "imgs", tmp_path / "rimg", epochs=1, model="birealnet18", voter="tap"))
    assert res["n"] == 20 and res["voter"] == "tap"


def test_progress_bar_on_a_terminal():
    import io

    from bitvote.train.progress import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    s = Tty()
    p = Progress(epochs=3, steps=10, stream=s)
    p.update(0, 5, 1.23, 0.5, 99.0, 125.0, force=True)
    p.epoch_end({"epoch": 1, "train_loss": 1.0, "train_acc": 50.0, "test_top1": 40.0, "test_top5": 90.0,
                 "images_per_s": 99.0, "epoch_s": 10.0}, 20.0)
    text = s.getvalue()
    assert text.startswith("\repoch 1/3 [##########..........] 5/10 loss 1.230 acc 50.0% 99 img/s ETA 2:05")
    assert "test top1 40.00%" in text and text.endswith("\n")


def test_model_checkpoint_round_trip(tmp_path):
    from bitvote.train import load_model, model_checkpoint, save_checkpoint, set_binary_weights

    m = models.create("reactnet18", width=0.125, voter="tap", pad_value=1)
    save_checkpoint(tmp_path / "m.pt", model_checkpoint(m, dataset="cifar10"))
    m2, ck = load_model(tmp_path / "m.pt")
    assert ck["config"] == m.config and m2.config["voter"] == "tap"
    _same_state(m.state_dict(), m2.state_dict())
    s1 = set_binary_weights(models.create("reactnet18", width=0.125), False)
    save_checkpoint(tmp_path / "s1.pt", model_checkpoint(s1))
    m3, _ = load_model(tmp_path / "s1.pt")
    assert all(not l.binary_weights for _, l in models.voter_layers(m3))


def test_a_folder_held_by_another_run_is_refused(data, tmp_path, capsys):
    """Two trainers resuming one folder would overwrite each other's last.pt: one line instead."""
    from bitvote.io import hold_folder
    from bitvote.cli import main

    out = tmp_path / "held"
    with hold_folder(out, "x"):
        code = main(["train", "--data", str(data), "--out", str(out), "--width", "0.0625", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "is in use by another bitvote train" in err and "Traceback" not in err
    assert not (out / "last.pt").exists()


def test_a_refused_option_leaves_no_folder_behind(data, tmp_path, capsys):
    from bitvote.cli import main

    out = tmp_path / "never"
    assert main(["train", "--data", str(data), "--out", str(out), "--lr", "-1"]) == 2
    assert "--lr must be a positive finite number" in capsys.readouterr().err
    assert not out.exists()


def test_cpu_training_keeps_freed_memory_in_the_heap(data, tmp_path, monkeypatch):
    from bitvote.train import loop

    calls = []
    monkeypatch.setattr(loop.heap, "keep_freed_memory", lambda: calls.append(1) or True)
    train(_cfg(data, tmp_path / "run", epochs=1))
    assert calls == [1]
