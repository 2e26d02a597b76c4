"""bitvote.data: the three sources, the cache, the download's checksum, batched augmentation."""

import hashlib
import tarfile

import numpy as np
import pytest
import torch

from bitvote import data as D
from bitvote.errors import BitvoteError

from fakedata import make_cifar_python, make_image_folder, tiny_data_root  # noqa: F401  (also imported from here)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BITVOTE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BITVOTE_DATA", raising=False)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_official_python_format(tmp_path, dataset):
    n_classes = D.DATASETS[dataset].classes
    folder, (xtr, ytr, xte, yte) = make_cifar_python(tmp_path, dataset, n_train=2 * n_classes, n_test=n_classes)
    for root in (tmp_path, folder):  # the parent or the folder itself
        tr = D.load(dataset, "train", root, download=False)
        te = D.load(dataset, "test", root, download=False)
        assert tr.x.dtype == torch.uint8 and tr.x.shape == (2 * n_classes, 3, 32, 32)
        assert np.array_equal(tr.x.reshape(len(tr), -1).numpy(), xtr)
        assert np.array_equal(tr.y.numpy(), ytr) and np.array_equal(te.y.numpy(), yte)
        assert tr.num_classes == n_classes


def test_image_folder_decoded_once_and_cached(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "imgs")
    tr = D.load("cifar10", "train", root, download=False)
    assert tr.x.shape == (40, 3, 32, 32) and sorted(set(tr.y.tolist())) == list(range(10))
    caches = list((tmp_path / "cache" / "image-folders").glob("train-*.npz"))
    assert len(caches) == 1 and not list(caches[0].parent.glob(".*tmp"))
    # the second load must not decode: make decoding impossible
    import PIL.Image

    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded again")))
    again = D.load("cifar10", "train", root, download=False)
    assert torch.equal(again.x, tr.x) and torch.equal(again.y, tr.y)


def test_env_var_chooses_root(tmp_path, monkeypatch):
    make_cifar_python(tmp_path)
    monkeypatch.setenv("BITVOTE_DATA", str(tmp_path))
    assert len(D.load("cifar10", "test", None, download=False)) == 20


def _archive(tmp_path, dataset="cifar10"):
    src = tmp_path / "src"
    make_cifar_python(src, dataset)
    arch = tmp_path / "served" / "cifar-10-python.tar.gz"
    arch.parent.mkdir()
    with tarfile.open(arch, "w:gz") as tar:
        tar.add(src / D.DATASETS[dataset].folder, arcname=D.DATASETS[dataset].folder)
    return arch, hashlib.md5(arch.read_bytes()).hexdigest()


def test_download_verifies_checksum(tmp_path, monkeypatch):
    arch, md5 = _archive(tmp_path)
    spec = D.DATASETS["cifar10"]
    monkeypatch.setitem(D.DATASETS, "cifar10", spec.__class__(**{**spec.__dict__, "url": arch.as_uri(), "md5": md5}))
    root = tmp_path / "data"
    tr = D.load("cifar10", "train", root)
    assert len(tr) == 60 and (root / "cifar-10-batches-py" / "data_batch_1").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_download_bad_checksum_is_refused(tmp_path, monkeypatch):
    arch, _ = _archive(tmp_path)
    spec = D.DATASETS["cifar10"]
    monkeypatch.setitem(D.DATASETS, "cifar10", spec.__class__(**{**spec.__dict__, "url": arch.as_uri(), "md5": "0" * 32}))
    root = tmp_path / "data"
    with pytest.raises(BitvoteError, match="MD5"):
        D.load("cifar10", "train", root)
    assert not (root / "cifar-10-batches-py").exists() and not (root / arch.name).exists()


def test_download_failure_names_the_url(tmp_path, monkeypatch):
    spec = D.DATASETS["cifar10"]
    missing = (tmp_path / "nowhere.tar.gz").as_uri()
    monkeypatch.setitem(D.DATASETS, "cifar10", spec.__class__(**{**spec.__dict__, "url": missing}))
    with pytest.raises(BitvoteError, match="nowhere.tar.gz"):
        D.load("cifar10", "train", tmp_path / "data")


def test_malformed_folders(tmp_path):
    with pytest.raises(BitvoteError, match="no cifar10 data under"):
        D.load("cifar10", "train", tmp_path / "missing", download=False)
    bad = tmp_path / "bad"
    (bad / "train" / "only-one-class").mkdir(parents=True)
    with pytest.raises(BitvoteError, match="class folders"):
        D.load("cifar10", "train", bad, download=False)
    folder, _ = make_cifar_python(tmp_path / "py")
    (folder / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(BitvoteError, match="data_batch_3"):
        D.load("cifar10", "train", folder, download=False)
    (folder / "test_batch").unlink()
    with pytest.raises(BitvoteError, match="test_batch"):
        D.load("cifar10", "test", folder, download=False)


def test_augment_matches_per_image_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 32, 32), generator=g, dtype=torch.uint8)
    perm, dy, dx, flip = D.epoch_plan(6, seed=3, epoch=1)
    out = D.augment(x, dy, dx, flip)
    for i in range(6):
        p = torch.nn.functional.pad(x[i], (4, 4, 4, 4))
        ref = p[:, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
    assert out.dtype == torch.uint8


def test_epoch_plan_is_a_function_of_seed_epoch_index():
    a = D.epoch_plan(100, 1, 2)
    b = D.epoch_plan(100, 1, 2)
    c = D.epoch_plan(100, 1, 3)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert sorted(a[0].tolist()) == list(range(100))


def test_subset_is_fixed():
    s = D.Split(torch.zeros(50, 3, 32, 32, dtype=torch.uint8), torch.arange(50), "cifar10", "x")
    a, b = D.subset(s, 10, 0), D.subset(s, 10, 0)
    assert torch.equal(a.y, b.y) and len(a) == 10


def test_normalize():
    x = torch.full((1, 3, 2, 2), 128, dtype=torch.uint8)
    y = D.normalize(x, "cifar10")
    assert y.dtype == torch.float32
    assert abs(float(y[0, 0, 0, 0]) - (128 / 255 - 0.4914) / 0.2470) < 1e-5
