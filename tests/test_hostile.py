"""Hostile and careless inputs: nothing runs from a data file, damage is detected, nothing is
silently wrong (changed options on resume, ignored options, vacuous checks, shifted labels),
and a full disk during a checkpoint write keeps the previous checkpoint.
"""

import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from bitvote import data as D
from bitvote import models
from bitvote.cli import main
from bitvote.engine import graph as G
from bitvote.errors import BitvoteError
from bitvote.train import TrainConfig, train
from bitvote.train import checkpoint as C

from test_data import make_cifar_python, make_image_folder


class _Payload:
    """Unpickling this creates ``marker``: what a hostile data file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _cli(argv, capsys):
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    c = capsys.readouterr()
    return rc, c.out, c.err


def _one_line(rc, err, *words):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bitvote: error:"), err
    for w in words:
        assert w in lines[0], lines[0]


def _flip_bit_in(path: Path, needle: bytes, bit: int = 3) -> None:
    """Flip one bit inside the first occurrence of ``needle`` (a tensor's raw bytes) in the file."""
    blob = bytearray(path.read_bytes())
    at = blob.find(needle)
    assert at >= 0, "tensor bytes not found in the file"
    blob[at + len(needle) // 2] ^= 1 << bit
    path.write_bytes(bytes(blob))


def _tiny_model(**kw):
    return models.create("reactnet18", width=0.125, **kw)


# ---------------------------------------------------------------------------------------------
# 1. no code runs from an input file


def test_hostile_cifar_pickle_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    folder, _ = make_cifar_python(tmp_path / "data", n_train=10, n_test=10)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _Payload(marker), b"labels": [0]}, f)
    with pytest.raises(BitvoteError, match="refused CIFAR file .*test_batch.*builtins.exec") as e:
        D.load("cifar10", "test", tmp_path / "data")
    assert "\n" not in str(e.value) and not marker.exists()
    rc, _, err = _cli(["train", "--width", "0.125", "--epochs", "1", "--data", tmp_path / "data", "--no-download",
                       "--quiet", "--out", tmp_path / "run"], capsys)
    _one_line(rc, err, "test_batch", "refused")
    assert not marker.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("payload", ["object-array", "os-system", "other-codec"])
def test_other_hostile_pickles_are_refused(tmp_path, payload):
    folder, _ = make_cifar_python(tmp_path / "data", n_train=10, n_test=10)
    if payload == "object-array":
        body = pickle.dumps({b"data": np.array([1, "x"], dtype=object), b"labels": [0]})
    elif payload == "os-system":
        body = b"cos\nsystem\n(S'touch " + str(tmp_path / "PWNED").encode() + b"'\ntR."
    else:  # _codecs.encode is admitted for latin-1 only
        body = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R."
    (folder / "test_batch").write_bytes(body)
    with pytest.raises(BitvoteError, match="test_batch"):
        D.load("cifar10", "test", tmp_path / "data")
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_official_files_of_every_protocol_still_load(tmp_path, protocol):
    """What the official archive holds (Python 2 era, protocol 2) and what numpy writes today."""
    folder, (xtr, ytr, xte, yte) = make_cifar_python(tmp_path / "data", n_train=10, n_test=6)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in yte], b"data": xte,
                     b"filenames": [b"a.png"] * len(yte)}, f, protocol=protocol)
    s = D.load("cifar10", "test", tmp_path / "data")
    assert torch.equal(s.x, torch.from_numpy(xte).view(-1, 3, 32, 32)) and s.y.tolist() == list(yte)


# ---------------------------------------------------------------------------------------------
# 2. integrity: a flipped bit is one error naming the file; no digest is one note


def test_flipped_bit_in_a_checkpoint(tmp_path, capsys):
    m = _tiny_model()
    p = tmp_path / "m.pt"
    C.save(p, C.model_checkpoint(m))
    assert C.read(p)["config"]["name"] == "reactnet18"  # the good file loads, digest checked
    w = m.state_dict()["fc.weight"]
    _flip_bit_in(p, w.numpy().tobytes())
    with pytest.raises(BitvoteError, match=r"m\.pt is damaged") as e:
        C.read(p)
    assert "\n" not in str(e.value)
    rc, _, err = _cli(["hw", "units", p], capsys)
    _one_line(rc, err, "m.pt", "damaged")


def test_flipped_bit_in_an_engine_graph(tmp_path, capsys):
    g = G.compile_model(_tiny_model(voter="mv"))
    p = tmp_path / "m.bvm"
    G.save(g, p)
    G.load(p)
    _flip_bit_in(p, g["blocks"][3]["convs"][0]["wbits"].numpy().tobytes())
    with pytest.raises(BitvoteError, match=r"m\.bvm.* is damaged"):
        G.load(p)
    rc, _, err = _cli(["run", p, "--data", "synthetic:2"], capsys)
    _one_line(rc, err, "m.bvm", "damaged")


def test_flipped_bit_in_an_image_cache_is_noticed_and_rebuilt(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BITVOTE_CACHE", str(tmp_path / "cache"))
    root = make_image_folder(tmp_path / "img")
    good = D.load("cifar10", "test", root)
    (cache,) = (tmp_path / "cache" / "image-folders").glob("test-*.npz")
    _flip_bit_in(cache, good.x.numpy().tobytes())
    capsys.readouterr()
    again = D.load("cifar10", "test", root)
    err = capsys.readouterr().err
    assert torch.equal(again.x, good.x) and torch.equal(again.y, good.y)
    assert err.count("\n") == 1 and "damaged" in err and cache.name in err
    # the rebuilt cache is good: read without a note
    assert torch.equal(D.load("cifar10", "test", root).x, good.x) and capsys.readouterr().err == ""


def test_a_checkpoint_without_digest_loads_with_one_note(tmp_path, capsys):
    m = _tiny_model()
    p = tmp_path / "foreign.pt"
    torch.save({"model": m.state_dict(), "config": m.config}, p)  # another tool's file
    rc, out, err = _cli(["hw", "units", p, "--json"], capsys)
    assert rc == 0 and json.loads(out)["model"] == "reactnet18"
    assert err.count("\n") == 1 and err.startswith("bitvote: note:") and "foreign.pt" in err and "digest" in err


@pytest.mark.parametrize("case,change,words", [
    ("name-is-a-number", lambda ck: ck["config"].update(name=5), "model name"),
    ("config-is-a-list", lambda ck: ck.update(config=[1, 2]), "config"),
    ("width-is-text", lambda ck: ck["config"].update(width="wide"), "width"),
    ("voter-is-a-number", lambda ck: ck["config"].update(voter=7), "voter"),
    ("option-is-a-tensor", lambda ck: ck["config"].update(width=torch.ones(2)), "'width'"),
    ("model-is-a-list", lambda ck: ck.update(model=[1]), "state dict"),
    ("classes-huge", lambda ck: ck["config"].update(num_classes=10**12), "num_classes"),
    ("width-huge", lambda ck: ck["config"].update(width=1e9), "width"),
])
def test_wrong_types_inside_a_checkpoint(tmp_path, capsys, case, change, words):
    m = _tiny_model()
    ck = C.model_checkpoint(m)
    change(ck)
    p = tmp_path / f"{case}.pt"
    torch.save(ck, p)
    for argv in (["eval", p], ["hw", "units", p], ["compile", p, "--out", tmp_path / "x.bvm"]):
        rc, _, err = _cli(argv, capsys)
        _one_line(rc, err, p.name, words)
    assert not (tmp_path / "x.bvm").exists()


# ---------------------------------------------------------------------------------------------
# 3. silent-wrong cases


def test_image_folder_class_lists_must_match(tmp_path, capsys):
    root = make_image_folder(tmp_path / "img")
    os.rename(root / "test" / "class03", root / "test" / "class03-renamed")
    for split in ("train", "test"):
        with pytest.raises(BitvoteError, match=r"only in (train|test)/: class03") as e:
            D.load("cifar10", split, root)
        assert "class03-renamed" in str(e.value)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run stopped after 2 steps (last.pt mid-epoch), and its data."""
    root = tmp_path_factory.mktemp("resume")
    mp = pytest.MonkeyPatch()
    mp.setenv("BITVOTE_CACHE", str(root / "cache"))
    mp.delenv("BITVOTE_DATA", raising=False)
    make_cifar_python(root / "data", n_train=32, n_test=8)
    cfg = dict(width=0.125, data=str(root / "data"), epochs=2, batch_size=8, lr=2e-3, seed=1, quiet=True,
               download=False, threads=1)
    train(TrainConfig(out=str(root / "run"), stop_after_steps=2, **cfg))
    yield root, cfg
    mp.undo()


def _resume_argv(root, out, *extra):
    return ["train", "--width", "0.125", "--data", root / "data", "--no-download", "--quiet", "--threads", "1",
            "--out", out, "--resume", *extra]


def test_every_training_option_has_a_resume_rule():
    """A new TrainConfig field must say whether a resumed run may change it: fixed by the
    saved model, changing the result (refused unless --override), or runtime only."""
    import dataclasses

    from bitvote.train import resume

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    lists = (set(resume.FIXED), set(resume.RESULT), set(resume.RUNTIME))
    assert fields == set().union(*lists), fields ^ set().union(*lists)
    assert not (lists[0] & lists[1] or lists[0] & lists[2] or lists[1] & lists[2])


def test_resume_names_every_changed_option(run, capsys):
    root, _ = run
    before = (root / "run" / "last.pt").read_bytes()
    rc, _, err = _cli(_resume_argv(root, root / "run", "--lr", "0.01", "--epochs", "3", "--seed", "1"), capsys)
    _one_line(rc, err, "--lr 0.002 (given 0.01)", "--epochs 2 (given 3)", "--override")
    assert "--seed" not in err  # the same value is no difference
    rc, _, err = _cli(_resume_argv(root, root / "run", "--lr", "1e-3"), capsys)  # the default, given explicitly
    _one_line(rc, err, "--lr 0.002 (given 0.001)")
    rc, _, err = _cli(_resume_argv(root, root / "run", "--voter", "mv", "--override"), capsys)
    _one_line(rc, err, "--voter 'popcount' (given 'mv')", "saved weights")
    assert (root / "run" / "last.pt").read_bytes() == before


def test_resume_with_override_applies_the_new_values(run, capsys, tmp_path):
    root, cfg = run
    out = tmp_path / "run"
    shutil.copytree(root / "run", out)
    rc, _, err = _cli(_resume_argv(root, out, "--lr", "0.01", "--epochs", "3", "--override",
                                   "--stop-after-steps", "1"), capsys)
    assert rc == 0, err
    ck = C.load(out / "last.pt")
    assert ck["args"]["lr"] == 0.01 and ck["args"]["epochs"] == 3 and ck["step"] == 3
    assert ck["scheduler"]["base_lr"] == 0.01


def test_resume_with_the_same_options_continues(run, capsys, tmp_path):
    root, cfg = run
    out = tmp_path / "run"
    shutil.copytree(root / "run", out)
    rc, _, err = _cli(_resume_argv(root, out, "--lr", "0.002", "--epochs", "2", "--batch-size", "8",
                                   "--stop-after-steps", "1"), capsys)
    assert rc == 0, err
    assert C.load(out / "last.pt")["step"] == 3


def test_resume_from_a_malformed_checkpoint(run, capsys, tmp_path):
    root, _ = run
    out = tmp_path / "run"
    shutil.copytree(root / "run", out)
    ck = torch.load(out / "last.pt", weights_only=True)
    ck.pop("digest")
    ck["rng"] = {"torch": "not a state"}
    torch.save(ck, out / "last.pt")
    rc, _, err = _cli(_resume_argv(root, out), capsys)
    _one_line(rc, err, "last.pt", "random-generator")


def test_hw_units_applies_the_voter_to_a_checkpoint(tmp_path, capsys):
    p = tmp_path / "m.pt"
    C.save(p, C.model_checkpoint(_tiny_model()))
    rc, out, _ = _cli(["hw", "units", p, "--json"], capsys)
    plain = json.loads(out)
    rc, out, _ = _cli(["hw", "units", p, "--voter", "mv", "--json"], capsys)
    mv = json.loads(out)
    assert rc == 0 and plain["voter"] != mv["voter"] and "mv" in json.dumps(mv["layers"][0])


@pytest.fixture()
def files(tmp_path):
    ck = tmp_path / "m.pt"
    C.save(ck, C.model_checkpoint(_tiny_model(voter="mv")))
    (tmp_path / "bad.json").write_bytes(b'{"rows": [\xff\xfe]}')
    torch.save(torch.zeros(2, 32, 32), tmp_path / "flat.pt")
    torch.save({"x": torch.zeros(3, 3, 32, 32), "y": torch.tensor([0, 1])}, tmp_path / "short.pt")
    torch.save({"x": torch.zeros(2, 3, 32, 32), "y": torch.tensor([0, 10])}, tmp_path / "label.pt")
    torch.save({"x": torch.full((2, 3, 32, 32), float("nan"))}, tmp_path / "nan.pt")
    (tmp_path / "junk.pt").write_text("junk")
    (tmp_path / "row.json").write_text(json.dumps([{"model": "reactnet18", "voter": "mv", "top1": "high"}]))
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    return tmp_path


# (id, argv, words the one error line must hold): refusals after parsing
REFUSED = [
    ("hw-check-no-vectors", lambda t: ["hw", "check", "--n", "9", "--vectors", "0"], "--vectors"),
    ("verify-atol-nan", lambda t: ["verify", t / "m.pt", "--data", "synthetic:2", "--atol", "nan"], "--atol"),
    ("verify-eps-negative", lambda t: ["verify", t / "m.pt", "--data", "synthetic:2", "--eps", "-1"], "--eps"),
    ("run-limit-negative", lambda t: ["run", t / "m.pt", "--data", "synthetic:4", "--limit", "-3"], "--limit"),
    ("models-voter-without-model", lambda t: ["models", "--voter", "mv"], "--voter"),
    ("voter-n-and-channels-disagree", lambda t: ["voter", "mv", "--n", "100", "-C", "3"], "disagree"),
    ("bench-voter-without-model", lambda t: ["bench", "--voter", "tap"], "--model"),
    ("appendix-with-voters", lambda t: ["reproduce", "--table", "appendix", "--voters", "mv", "--out", t / "r"],
     "--voters"),
    ("seed-table-with-datasets", lambda t: ["reproduce", "--datasets", "cifar100", "--out", t / "r"], "--datasets"),
    ("override-without-resume", lambda t: ["train", "--out", t / "o", "--override"], "--override"),
    ("sync-bn-one-process", lambda t: ["train", "--out", t / "o", "--sync-bn"], "--sync-bn"),
    ("label-smoothing-with-teacher", lambda t: ["train", "--width", "0.125", "--out", t / "o", "--no-download",
                                                "--data", t / "nodata", "--label-smoothing", "0.1", "--teacher",
                                                t / "m.pt"], "--label-smoothing"),
    ("epilogue-without-popcount", lambda t: ["hw", "rtl", "--n", "9", "--voter", "mv", "--epilogue", "bn",
                                             "--out", t / "rtl"], "--epilogue"),
    ("tie-on-popcount", lambda t: ["hw", "rtl", "--n", "9", "--voter", "popcount", "--tie", "first",
                                   "--out", t / "rtl"], "--tie"),
    ("voter-tie-on-popcount", lambda t: ["voter", "popcount", "--tie", "first"], "--tie"),
    ("convert-tie-on-popcount", lambda t: ["convert", t / "m.pt", "--voter", "popcount", "--tie", "-1"], "--tie"),
    ("synth-json-and-table", lambda t: ["hw", "synth", "--n", "9", "--json", "--table"], "--json"),
    ("units-width-with-checkpoint", lambda t: ["hw", "units", t / "m.pt", "--width", "0.5"], "--width"),
    ("run-threads-on-cuda", lambda t: ["run", t / "m.pt", "--data", "synthetic:2", "--device", "cuda",
                                       "--threads", "2"], "--threads"),
    ("convert-onto-itself", lambda t: ["convert", t / "m.pt", "--voter", "mv", "--out", t / "m.pt"], "input"),
    ("compile-onto-itself", lambda t: ["compile", t / "m.pt", "--out", t / "m.pt"], "input"),
    ("report-onto-its-input", lambda t: ["hw", "report", t / "bad.json", "--json", t / "bad.json"], "--json"),
    ("report-row-types", lambda t: ["hw", "report", t / "row.json"], "top1"),
    ("report-deep-json", lambda t: ["hw", "report", t / "deep.json"], "deep.json"),
    ("voter-not-utf8", lambda t: ["voter", "mv\udcff"], "UTF-8"),
    ("report-not-utf8", lambda t: ["hw", "report", t / "bad.json"], "UTF-8"),
    ("data-not-images", lambda t: ["verify", t / "m.pt", "--data", t / "flat.pt"], "flat.pt"),
    ("data-labels-short", lambda t: ["verify", t / "m.pt", "--data", t / "short.pt"], "short.pt"),
    ("data-labels-range", lambda t: ["verify", t / "m.pt", "--data", t / "label.pt"], "label.pt"),
    ("data-nan", lambda t: ["verify", t / "m.pt", "--data", t / "nan.pt"], "nan.pt"),
    ("data-junk", lambda t: ["verify", t / "m.pt", "--data", t / "junk.pt"], "junk.pt"),
]


@pytest.mark.parametrize("argv,words", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_with_one_line(files, capsys, argv, words):
    before = sorted(files.rglob("*"))
    rc, _, err = _cli(argv(files), capsys)
    _one_line(rc, err, words)
    assert sorted(files.rglob("*")) == before


def test_rtl_refuses_a_folder_in_place_of_its_file(tmp_path, capsys):
    rc, out, _ = _cli(["hw", "rtl", "--n", "9", "--out", tmp_path / "rtl"], capsys)
    assert rc == 0
    v = next((tmp_path / "rtl").glob("*.v"))
    v.unlink()
    v.mkdir()
    rc, _, err = _cli(["hw", "rtl", "--n", "9", "--out", tmp_path / "rtl"], capsys)
    _one_line(rc, err, v.name, "folder")


def test_uint8_images_are_normalized_not_fed_raw(tmp_path):
    from bitvote.cli.engine import load_data

    x8 = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    torch.save(x8, tmp_path / "u8.pt")
    x, _ = load_data(str(tmp_path / "u8.pt"))
    assert torch.allclose(x, D.normalize(x8, "cifar10"))


# ---------------------------------------------------------------------------------------------
# 5. a full disk during a checkpoint write


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                           capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def test_full_disk_keeps_the_previous_checkpoint_and_resume_is_exact(run, tmp_path, capsys):
    root, cfg = run
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "8m"):
        pytest.skip("mounting a tmpfs needs root (mount -t tmpfs)")
    try:
        out = disk / "run"
        shutil.copytree(root / "run", out)
        before = (out / "last.pt").read_bytes()
        free = shutil.disk_usage(disk).free
        filler = disk / "filler"
        filler.write_bytes(b"\0" * max(free - len(before) // 2, 0))  # room for small files, not a checkpoint
        rc, _, err = _cli(_resume_argv(root, out, "--ckpt-every-steps", "1", "--stop-after-steps", "1"), capsys)
        _one_line(rc, err, "last.pt", "no space left")
        assert (out / "last.pt").read_bytes() == before
        assert not list(out.glob(".*.tmp")), "a temp file was left behind"
        with open(disk / "filler2", "wb") as f:  # now no byte is left: a fresh run fails cleanly too
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        fresh = ["train", "--width", "0.125", "--epochs", "1", "--batch-size", "8", "--data", root / "data",
                 "--no-download", "--quiet", "--threads", "1", "--out", disk / "fresh"]
        rc, _, err = _cli(fresh, capsys)
        _one_line(rc, err, "no space left")
        assert not (disk / "fresh").exists()
        filler.unlink()
        (disk / "filler2").unlink()
        rc, _, err = _cli(_resume_argv(root, out), capsys)
        assert rc == 0, err
        ref = train(TrainConfig(out=str(tmp_path / "ref"), **cfg))
        got = C.load(out / "last.pt")
        want = C.load(Path(ref["last"]))
        for k in want["model"]:
            assert torch.equal(got["model"][k], want["model"][k]), k
        assert got["step"] == want["step"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=20)
