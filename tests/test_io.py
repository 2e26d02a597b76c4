"""bitvote.io: atomic writes, the one-writer folder lock, the cache root."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bitvote.errors import BitvoteError
from bitvote.io import atomic_write_bytes, cache_root, hold_folder

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    f = tmp_path / "sub" / "x.json"
    atomic_write_bytes(f, b"old")
    atomic_write_bytes(f, b"new contents")
    assert f.read_bytes() == b"new contents"
    assert sorted(p.name for p in f.parent.iterdir()) == ["x.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert f.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual mode, not mkstemp's 0600


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    f = tmp_path / "x.bin"
    atomic_write_bytes(f, b"old")

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(BitvoteError, match="no space left .* previous file is intact"):
        atomic_write_bytes(f, b"new")
    assert f.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_cache_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BITVOTE_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.setenv("BITVOTE_CACHE", "")
    assert cache_root() == Path.home() / ".cache" / "bitvote"
    monkeypatch.delenv("BITVOTE_CACHE")
    assert cache_root() == Path.home() / ".cache" / "bitvote"


def test_every_cache_is_a_subfolder_of_the_root(monkeypatch, tmp_path):
    from bitvote.packed import build
    from bitvote.hw import synth

    monkeypatch.setenv("BITVOTE_CACHE", str(tmp_path))
    assert synth.cache_dir() == tmp_path / "hw"
    assert build.cache_dir() == tmp_path / "engine"
    assert build.cache_dir().is_dir()


def test_hold_folder_refuses_a_second_holder(tmp_path):
    run = tmp_path / "run"
    code = ("import sys\nfrom bitvote.io import hold_folder\n"
            f"with hold_folder({str(run)!r}, 'bitvote test'):\n    print('held', flush=True)\n    sys.stdin.read()\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": SRC})
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(BitvoteError, match=rf"in use by another bitvote train \(pid {p.pid}\)"):
            with hold_folder(run, "bitvote train"):
                pass
    finally:
        p.stdin.close()
        p.wait(timeout=30)
    with hold_folder(run):  # released when the holder exits
        (run / "f").write_text("x")
    assert (run / "f").exists()


def test_hold_folder_removes_a_folder_it_created_and_left_empty(tmp_path):
    with hold_folder(tmp_path / "new"):
        pass
    assert not (tmp_path / "new").exists()
    with hold_folder(tmp_path / "kept"):
        (tmp_path / "kept" / "a").write_text("x")
    assert (tmp_path / "kept" / "a").exists()
