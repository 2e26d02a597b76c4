"""One writer per run folder: two processes resuming the same stages would race on them."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import BitvoteError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock, as before
    fcntl = None

__all__ = ["hold_folder"]


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
