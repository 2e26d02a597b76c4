"""Files a run shares with its future self and with other processes.

Three things every writer in bitvote uses:

- :func:`atomic_write_bytes`: a reader (or a resumed run after a kill) sees the old file or the
  whole new one, never half of it;
- :func:`hold_folder`: one writer per run folder, since two processes resuming the same stages
  would race on them;
- :func:`cache_root`: the one cache folder (``$BITVOTE_CACHE``, else ``~/.cache/bitvote``);
  each user takes its own subfolder (``image-folders``, ``engine``, ``hw``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time
from pathlib import Path

from .errors import BitvoteError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None

__all__ = ["atomic_write_bytes", "hold_folder", "cache_root"]


def cache_root() -> Path:
    """The cache folder: ``$BITVOTE_CACHE``, else ``~/.cache/bitvote`` (not created here).

    Never inside a data folder: shared dataset folders are often read-only.
    """
    return Path(os.environ.get("BITVOTE_CACHE") or Path.home() / ".cache" / "bitvote").expanduser()


def _test_write_delay() -> float:
    """``$BITVOTE_TEST_WRITE_DELAY`` seconds of sleep inside each atomic write: a test hook that
    makes the write slow enough for a randomly timed kill to land inside it."""
    try:
        return max(float(os.environ.get("BITVOTE_TEST_WRITE_DELAY") or 0), 0.0)
    except ValueError:
        return 0.0


#: write failures that are the machine's state, not a bug: one line naming the file
_WRITE_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
                 errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                 errno.EPERM: "permission denied", errno.EFBIG: "the file is too large for the file system"}


def atomic_write_bytes(path, data: bytes) -> None:
    """Write a file so that readers see the old one or the whole new one: temp, fsync, rename.

    The temp file (``.NAME.XXXX.tmp``) lives beside the target, so the rename stays on one file
    system; an interrupted write leaves at most that temp file behind. A full disk (or a
    read-only one) is one :class:`BitvoteError` naming the file; the previous file is left as it
    was and the temp file is removed.
    """
    try:
        _atomic_write_bytes(Path(path), data)
    except OSError as e:
        if e.errno not in _WRITE_ERRORS:
            raise
        kept = " (the previous file is intact)" if Path(path).exists() else ""
        raise BitvoteError(f"cannot write {path}: {_WRITE_ERRORS[e.errno]}{kept}") from None


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        delay = _test_write_delay()
        with os.fdopen(fd, "wb") as f:
            if delay:  # widen the window a kill can land in (fault-tolerance test only)
                f.write(data[: len(data) // 2])
                f.flush()
                time.sleep(delay)
                data = data[len(data) // 2 :]
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if delay:
            time.sleep(delay)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def hold_folder(folder, what: str = "bitvote"):
    """Hold ``folder/.lock`` for the duration; refuse (one line) if another process holds it.

    An advisory ``flock``: released by the OS when the holder exits, even on SIGKILL, so a
    killed run never leaves a stale lock behind. A folder this call created and the run left
    empty (a bad option refused before anything was written) is removed again.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    path = folder / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise BitvoteError(f"{folder} is in use by another {what} (pid {holder}): wait for it to end, "
                               f"or stop it, then re-run to resume") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError:  # a full disk: the pid only names the holder in the message above
            pass
        yield
    finally:
        if created and [p.name for p in folder.iterdir()] == [".lock"]:
            path.unlink()
            folder.rmdir()
        os.close(fd)  # closing the descriptor releases the lock
