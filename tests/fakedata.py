"""Tiny generated datasets in the official CIFAR formats, for the tests.

The images' mean colour depends on the class, so a tiny net can learn something in a few
steps. :func:`tiny_data_root` is what the ``tiny_data`` fixture (conftest.py) calls.
"""

import pickle

import numpy as np

from bitvote import data as D


def images(n, classes, seed):
    """Images whose mean colour depends on the class, so a tiny net can learn something."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    base = (y[:, None] * 255 // max(classes - 1, 1)).astype(np.int64)
    x = rng.integers(0, 60, (n, 3 * 32 * 32)) + base
    return np.clip(x, 0, 255).astype(np.uint8), y


def make_cifar_python(root, dataset="cifar10", n_train=60, n_test=20):
    spec = D.DATASETS[dataset]
    folder = root / spec.folder
    folder.mkdir(parents=True)
    xtr, ytr = images(n_train, spec.classes, 1)
    xte, yte = images(n_test, spec.classes, 2)
    key = spec.label_key
    parts = np.array_split(np.arange(n_train), len(spec.train_files))
    for name, idx in zip(spec.train_files, parts):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": xtr[idx], key: [int(v) for v in ytr[idx]]}, f)
    with open(folder / spec.test_files[0], "wb") as f:
        pickle.dump({b"data": xte, key: [int(v) for v in yte]}, f)
    return folder, (xtr, ytr, xte, yte)


def tiny_data_root(tmp_path, monkeypatch, n_train=48, n_test=20):
    """A private CIFAR-10 folder of generated images, its own cache, no $BITVOTE_DATA: the
    ``data`` fixture of the training, conversion and reproduction tests."""
    monkeypatch.setenv("BITVOTE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BITVOTE_DATA", raising=False)
    make_cifar_python(tmp_path / "data", n_train=n_train, n_test=n_test)
    return tmp_path / "data"


def make_image_folder(root, classes=10, per_class=(4, 2)):
    from PIL import Image

    names = [f"class{c:02d}" for c in range(classes)]
    for split, n in zip(("train", "test"), per_class):
        x, y = images(n * classes, classes, 3 if split == "train" else 4)
        for k in range(len(y)):
            d = root / split / names[y[k]]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[k].reshape(3, 32, 32).transpose(1, 2, 0)).save(d / f"{k:04d}.png")
    return root
