"""Fixtures shared by the test modules.

``tiny_data``: a factory for a private CIFAR-10 folder of generated images (``fakedata``),
with its own ``$BITVOTE_CACHE`` and no ``$BITVOTE_DATA``, so no test reads or writes the
user's caches. Modules that train set their own sizes in a one-line ``data`` fixture.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fakedata, oracle

from fakedata import tiny_data_root  # noqa: E402

@pytest.fixture()
def tiny_data(tmp_path, monkeypatch):
    """``tiny_data(n_train=48, n_test=20)`` -> the data root (written under ``tmp_path``)."""

    def make(n_train: int = 48, n_test: int = 20) -> Path:
        return tiny_data_root(tmp_path, monkeypatch, n_train=n_train, n_test=n_test)

    return make
