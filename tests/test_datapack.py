"""bitvote.datapack and ``bitvote data pack``: one file that decodes exactly like its folder."""

import pickle

import numpy as np
import pytest
import torch

from bitvote import data as D
from bitvote import datapack as P
from bitvote.cli import main
from bitvote.errors import BitvoteError

PIL = pytest.importorskip("PIL.Image", reason="the image folders here need Pillow")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BITVOTE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BITVOTE_DATA", raising=False)


def _pixels(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def make_folder(root, classes=10, per_class=(3, 2)):
    """A tiny image folder, JPEG and PNG mixed, names that sort differently from creation order."""
    for split, n, seed in (("train", per_class[0], 1), ("test", per_class[1], 2)):
        px = _pixels(n * classes, seed)
        for k in range(n * classes):
            d = root / split / f"c{k % classes:02d}"
            d.mkdir(parents=True, exist_ok=True)
            ext = ".jpg" if k % 3 else ".png"
            PIL.fromarray(px[k]).save(d / f"{(7 * k) % 97:03d}{ext}", quality=75)
    return root


def make_official(root, n_train=25, n_test=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    parts = np.array_split(np.arange(n_train), 5)
    ramp = np.add.outer(np.arange(32), np.arange(32)).ravel()  # smooth images, so JPEG stays close
    xtr = ((rng.integers(0, 120, (n_train, 3, 1)) + ramp * 2).reshape(n_train, 3072) % 256).astype(np.uint8)
    for i, idx in enumerate(parts, 1):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": xtr[idx], b"labels": [int(v) % 10 for v in idx]}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
                     b"labels": [v % 10 for v in range(n_test)]}, f)
    return folder


def test_pack_of_an_image_folder_decodes_identically(tmp_path):
    src = make_folder(tmp_path / "imgs")
    out = tmp_path / "c10.bvd"
    r = D.pack_folder(src, out)
    assert r["count"] == 50 and r["splits"] == {"train": 30, "test": 20} and not r["lossy"]
    assert r["classes"] == [f"c{i:02d}" for i in range(10)]
    for split in ("train", "test"):
        want = D.load("cifar10", split, src)
        got = D.load("cifar10", split, out)
        assert torch.equal(got.x, want.x) and torch.equal(got.y, want.y)
        assert got.x.dtype == torch.uint8 and got.source == str(out)
    # the files' bytes are stored as they are (never re-encoded)
    meta, offsets, _, payload, digest = P._open(out)
    first = sorted((src / "train" / "c00").iterdir())[0]
    assert bytes(payload[offsets[0]:offsets[1]]) == first.read_bytes()
    assert digest == r["digest"] == P.read_meta(out)["digest"]


def test_pack_of_the_official_folder_is_lossless_unless_asked(tmp_path):
    make_official(tmp_path / "raw")
    out = tmp_path / "c10.bvd"
    r = D.pack_folder(tmp_path / "raw", out)  # the folder holding cifar-10-batches-py
    assert r["classes"][0] == "airplane" and len(r["classes"]) == 10 and not r["lossy"]
    for split in ("train", "test"):
        want, got = D.load("cifar10", split, tmp_path / "raw"), D.load("cifar10", split, out)
        assert torch.equal(got.x, want.x) and torch.equal(got.y, want.y)
    lossy = tmp_path / "c10q.bvd"
    r2 = D.pack_folder(tmp_path / "raw" / "cifar-10-batches-py", lossy, jpeg_quality=90)
    assert r2["lossy"] and "JPEG quality 90" in r2["origin"]
    got = D.load("cifar10", "train", lossy)
    want = D.load("cifar10", "train", tmp_path / "raw")
    assert got.x.shape == want.x.shape and torch.equal(got.y, want.y)
    err = (got.x.float() - want.x.float()).abs().mean()
    assert 0 < err < 8  # lossy, but the same images


def test_reading_never_unpickles_and_caches_by_digest(tmp_path, monkeypatch):
    src = make_folder(tmp_path / "imgs", per_class=(2, 1))
    out = tmp_path / "c10.bvd"
    D.pack_folder(src, out)
    boom = lambda *a, **k: (_ for _ in ()).throw(AssertionError("pickle used"))  # noqa: E731
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    first = D.load("cifar10", "train", out)
    monkeypatch.setattr(P, "decode_image", lambda *a: (_ for _ in ()).throw(AssertionError("decoded again")))
    monkeypatch.setenv("BITVOTE_DATA", str(out))  # the env var may name a pack too
    assert torch.equal(D.load("cifar10", "train").x, first.x)


def test_cli_pack_and_info(tmp_path, capsys):
    src = make_folder(tmp_path / "imgs", per_class=(2, 1))
    out = tmp_path / "sub" / "c10.bvd"
    out.parent.mkdir()  # an output's folder must exist (checked before any work)
    assert main(["data", "pack", str(src), "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert cap.out.count("\n") == 1 and "30 images (train 20, test 10)" in cap.out and "sha256" in cap.out
    assert "bitvote data pack: 30/30 images" in cap.err  # progress, on stderr
    assert main(["data", "info", str(out)]) == 0
    assert "(checked)" in capsys.readouterr().out
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temp file left


def _one_line_error(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bitvote: error:") and "Traceback" not in err[0], err
    for w in words:
        assert w in err[0], err[0]


def test_bad_sources_are_one_line_errors(tmp_path, capsys):
    _one_line_error(capsys, ["data", "pack", str(tmp_path / "nope"), "--out", "x.bvd"], "does not exist")
    (tmp_path / "f.txt").write_text("x")
    _one_line_error(capsys, ["data", "pack", str(tmp_path / "f.txt"), "--out", "x.bvd"], "not a folder")
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, ["data", "pack", str(tmp_path / "empty"), "--out", "x.bvd"], "holds neither")
    src = make_folder(tmp_path / "imgs", per_class=(1, 1))
    _one_line_error(capsys, ["data", "pack", str(src), "--out", str(tmp_path)], "is a folder")
    _one_line_error(capsys, ["data", "pack", str(src), "--out", str(tmp_path / "f.txt" / "x.bvd")],
                    "is a file, not a folder")
    _one_line_error(capsys, ["data", "pack", str(src), "--out", "x.bvd", "--jpeg-quality", "80"], "as they are")
    make_official(tmp_path / "raw")
    _one_line_error(capsys, ["data", "pack", str(tmp_path / "raw"), "--out", "x.bvd", "--jpeg-quality", "0"],
                    "--jpeg-quality", "at least 1")
    (src / "test" / "c00" / "zz.jpg").write_bytes(b"not a jpeg")
    _one_line_error(capsys, ["data", "pack", str(src), "--out", "x.bvd"], "cannot decode image", "zz.jpg")
    (src / "test" / "c00" / "zz.jpg").unlink()
    PIL.fromarray(np.zeros((16, 32, 3), np.uint8)).save(src / "train" / "c01" / "small.png")
    _one_line_error(capsys, ["data", "pack", str(src), "--out", "x.bvd"], "small.png", "expected 32x32")
    (src / "train" / "c01" / "small.png").unlink()
    (src / "test" / "c99").mkdir()
    _one_line_error(capsys, ["data", "pack", str(src), "--out", "x.bvd"], "different class folders")


def test_failed_pack_leaves_the_old_file(tmp_path):
    src = make_folder(tmp_path / "imgs", per_class=(1, 1))
    out = tmp_path / "c10.bvd"
    D.pack_folder(src, out)
    before = out.read_bytes()
    (src / "train" / "c03" / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(BitvoteError, match="cannot decode"):
        D.pack_folder(src, out)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c10.bvd", "imgs"]


def test_damaged_packs_are_refused(tmp_path):
    src = make_folder(tmp_path / "imgs", per_class=(1, 1))
    out = tmp_path / "c10.bvd"
    D.pack_folder(src, out)
    good = out.read_bytes()

    def load_bytes(b, dataset="cifar10", split="train"):
        p = tmp_path / "x.bvd"
        p.write_bytes(b)
        return D.load(dataset, split, p)

    with pytest.raises(BitvoteError, match="cannot read packed data .*missing.bvd"):
        D.load("cifar10", "train", tmp_path / "missing.bvd")  # never a download into a folder of that name
    assert not (tmp_path / "missing.bvd").exists()
    with pytest.raises(BitvoteError, match="not a packed dataset"):
        load_bytes(b"hello, world" * 10)
    with pytest.raises(BitvoteError, match="not a packed dataset"):
        load_bytes(good[:20])
    with pytest.raises(BitvoteError, match="SHA-256 does not match"):
        load_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one bit of one image
    with pytest.raises(BitvoteError, match="damaged or truncated|truncated"):
        load_bytes(good[: len(good) // 2])
    with pytest.raises(BitvoteError, match="holds 10 classes; cifar100 has 100"):
        load_bytes(good, dataset="cifar100")


def _rewrite(path, meta=None, offsets=None, labels=None, payload=None):
    """A pack with chosen tables and a *valid* digest: the checks past the digest must hold alone."""
    import hashlib
    import json

    m, o, lab, pay, _ = P._open(path)
    m = dict(m, **(meta or {}))
    mb = json.dumps(m).encode()
    mb += b" " * (-len(mb) % 8)
    o = np.asarray(o if offsets is None else offsets, "<i8")
    lab = np.asarray(lab if labels is None else labels, "<u2")
    body = mb + o.tobytes() + lab.tobytes() + bytes(pay if payload is None else payload)
    path.write_bytes(P._HEAD.pack(P.MAGIC, len(mb), hashlib.sha256(body).digest()) + body)


@pytest.mark.parametrize("change,msg", [
    (dict(meta={"version": 99}), "newer than this bitvote reads"),
    (dict(meta={"format": "other"}), "malformed metadata"),
    (dict(meta={"splits": {"train": 1, "test": 1}}), "malformed metadata"),
    (dict(meta={"classes": ["a"] * 10}), "malformed metadata"),
    (dict(labels=[12] * 20), "past its 10 classes"),
    (dict(offsets=[0] * 21), "offsets do not cover"),
])
def test_tables_are_checked_behind_a_valid_digest(tmp_path, change, msg):
    src = make_folder(tmp_path / "imgs", per_class=(1, 1))
    out = tmp_path / "c10.bvd"
    D.pack_folder(src, out)
    _rewrite(out, **change)
    with pytest.raises(BitvoteError, match=msg):
        D.load("cifar10", "test", out)


def test_a_pack_without_a_split(tmp_path):
    src = make_folder(tmp_path / "imgs", per_class=(1, 1))
    import shutil

    shutil.rmtree(src / "test")
    out = tmp_path / "train-only.bvd"
    assert D.pack_folder(src, out)["splits"] == {"train": 10}
    assert len(D.load("cifar10", "train", out)) == 10
    with pytest.raises(BitvoteError, match="has no test split"):
        D.load("cifar10", "test", out)


def test_run_and_verify_read_a_pack_like_its_folder(tmp_path, capsys):
    import json

    from bitvote import models as M

    src = make_folder(tmp_path / "imgs")
    pack = tmp_path / "c10.bvd"
    D.pack_folder(src, pack)
    torch.manual_seed(0)
    net = M.create("reactnet18", voter="mv", width=0.125).eval()
    ck = tmp_path / "ck.pt"
    torch.save({"model": net.state_dict(), "config": net.config}, ck)
    bvm = tmp_path / "m.bvm"
    assert main(["compile", str(ck), "--out", str(bvm)]) == 0
    capsys.readouterr()
    got = {}
    for name, where in (("folder", src), ("pack", pack)):
        assert main(["run", str(bvm), "--data", str(where), "--json"]) == 0
        got[name] = json.loads(capsys.readouterr().out)["predictions"]
    assert got["pack"] == got["folder"] and len(got["pack"]) == 20
    assert main(["verify", str(ck), "--data", str(pack), "--limit", "4"]) == 0
    assert "PASSED" in capsys.readouterr().out
    (tmp_path / "plain.bin").write_bytes(b"x")
    assert main(["run", str(bvm), "--data", str(tmp_path / "plain.bin")]) == 2
    assert ".bvd pack" in capsys.readouterr().err
