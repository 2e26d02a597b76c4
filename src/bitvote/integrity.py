"""Digests inside the files bitvote writes and reads back (checkpoints, ``.bvm`` graphs, caches).

A torch file is a zip whose members are read without checking their CRC, and one flipped bit
in a weight loads fine and gives a plausible, wrong accuracy. So every dict that bitvote
saves carries ``"digest": "sha256:..."``: SHA-256 over a canonical walk of everything else in
it (keys, plain values by type and ``repr``, tensors by dtype, shape and raw bytes). Reading
recomputes it; a mismatch is one error naming the file. A file without a digest (hand-made,
from another tool, or from an older bitvote) still loads, with a one-line note on stderr,
because refusing it would only push people to strip checks rather than keep them.

Only torch and numpy here, so every layer (data, train, engine) can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
from typing import Tuple

import numpy as np
import torch

from .errors import BitvoteError

__all__ = ["KEY", "digest", "seal", "unseal", "note_unsealed", "deferred_notes", "array_digest"]

KEY = "digest"
_PREFIX = "sha256:"
_noted = set()
_pending = None  # a list while the CLI defers notes to the end of a command (see deferred_notes)


def _feed(h, v) -> None:
    if torch.is_tensor(v):
        t = v.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(v, np.ndarray):
        a = np.ascontiguousarray(v)
        h.update(f"A{a.dtype.str}{a.shape}|".encode())
        h.update(memoryview(a).cast("B"))
    elif isinstance(v, dict):
        h.update(f"D{len(v)}|".encode())
        for k, x in v.items():
            _feed(h, k)
            _feed(h, x)
    elif isinstance(v, (list, tuple)):
        h.update(f"L{len(v)}|".encode())
        for x in v:
            _feed(h, x)
    else:
        r = repr(v)
        h.update(f"V{type(v).__name__}:{len(r)}:{r}|".encode("utf-8", "surrogatepass"))


def digest(obj) -> str:
    """``"sha256:<hex>"`` of ``obj`` (nested dicts, lists, tensors, arrays and plain values)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return _PREFIX + h.hexdigest()


def array_digest(**arrays: np.ndarray) -> str:
    """The digest of named numpy arrays (an ``.npz`` cache stores it beside them)."""
    return digest({k: arrays[k] for k in sorted(arrays)})


def seal(state: dict) -> dict:
    """``state`` plus its digest (any digest it already had is recomputed)."""
    body = {k: v for k, v in state.items() if k != KEY}
    return {**body, KEY: digest(body)}


def unseal(state: dict, path, what: str) -> Tuple[dict, bool]:
    """``(state without its digest, whether it had one)``; a digest that does not match is
    one :class:`BitvoteError` naming ``what`` and ``path``."""
    if KEY not in state:
        return state, False
    stored = state[KEY]
    body = {k: v for k, v in state.items() if k != KEY}
    if not isinstance(stored, str) or digest(body) != stored:
        raise BitvoteError(f"{what} {path} is damaged: its contents do not match the SHA-256 digest stored in it "
                           "(a changed bit or a partial copy); use a good copy")
    return body, True


def note_unsealed(path, what: str) -> None:
    """The one-line note for a file without a digest (once per file and process)."""
    key = (what, str(path))
    line = (f"bitvote: note: {what} {path} carries no digest (not written by this bitvote): "
            "loaded without an integrity check")
    if _pending is not None:
        if key not in _noted and (key, line) not in _pending:
            _pending.append((key, line))
    elif key not in _noted:
        _noted.add(key)
        print(line, file=sys.stderr)


@contextlib.contextmanager
def deferred_notes():
    """Collect notes during a command and print them after it, only if it did not fail: a
    refused input is then exactly one error line, not a note about a file that never loaded."""
    global _pending
    outer, _pending = _pending, []
    notes = _pending
    try:
        yield
    except BaseException:
        _pending = outer
        raise
    _pending = outer
    for key, line in notes:
        _noted.add(key)
        print(line, file=sys.stderr)
