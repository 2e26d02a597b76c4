"""CIFAR in one file (``.bvd``): both splits' encoded images, labels and class names.

An image folder is 60,000 small files and the official ``cifar-10-batches-py`` is pickles
of raw pixels (180 MB); neither travels well to a machine that has no dataset and takes a
bounded upload. A pack holds the images' *encoded bytes* (an image folder's files as they
are: the CIFAR-10 JPEG copy is about 55 MB) behind a small binary header, and is read with
NumPy and Pillow only, never with pickle. :func:`bitvote.data.load` takes a pack wherever
it takes a data root (``--data cifar10.bvd``), and decodes it exactly as it decodes the
folder the pack came from (same order, same Pillow decode), so the tensors are identical.
This module is the format and its one image decoder, below :mod:`bitvote.data`, which reads
packs and writes them from any source (:func:`bitvote.data.pack_folder`, ``bitvote data pack``).

Layout (little-endian)::

    offset   size        field
    0        8           magic b"BVDPACK1"
    8        8           uint64 M: length of the metadata
    16       32          SHA-256 of every byte after these 48 (metadata and body)
    48       M           metadata: UTF-8 JSON, space-padded to a multiple of 8 bytes
    48+M     8 (N+1)     int64 offsets into the payload: 0, ..., payload length
             2 N         uint16 labels
             ...         payload: the N encoded images, the train split first, then test

Metadata keys: ``format`` ("bitvote-data-pack"), ``version`` (1), ``count`` (N),
``splits`` ({"train": n, "test": n}), ``classes`` (names; label i is ``classes[i]``),
``encoding`` ("image": bytes Pillow decodes; "raw": 3x32x32 uint8 CHW), ``lossy`` (true
when the pixels were re-encoded lossily while packing), ``origin`` (what was packed).
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .errors import BitvoteError
from .io import atomic_write_bytes, cache_root

__all__ = ["MAGIC", "SUFFIX", "IMG_EXT", "CLASS_NAMES", "decode_image", "write_pack", "read_meta", "read_split"]

MAGIC = b"BVDPACK1"
SUFFIX = ".bvd"
VERSION = 1
_HEAD = struct.Struct("<8sQ32s")
_MAX_META = 1 << 24  # metadata is a few KB; a larger length field is damage, not data
SHAPE = (3, 32, 32)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster
man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck
pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk
skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television
tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split())
CLASS_NAMES = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}


#: the image files an image folder may hold
IMG_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def decode_image(src, what) -> np.ndarray:
    """An image (a path or a binary file object) as (3, 32, 32) uint8 RGB; ``what`` names it in
    errors. The one decoder of image folders and of packed files, so both give the same pixels."""
    from PIL import Image

    try:
        with Image.open(src) as im:
            a = np.asarray(im.convert("RGB"))
    except Exception:
        raise BitvoteError(f"cannot decode image {what}") from None
    if a.shape != (32, 32, 3):
        raise BitvoteError(f"image {what} is {a.shape[1]}x{a.shape[0]}, expected 32x32")
    return a.transpose(2, 0, 1)


# ---------------------------------------------------------------------------------------------
# writing


def write_pack(out, blobs: List[bytes], labels: List[int], splits: Dict[str, int], classes: List[str],
               encoding: str = "image", lossy: bool = False, origin: str = "") -> str:
    """Write a pack atomically (readers see no file or the whole file); returns its SHA-256."""

    n = len(blobs)
    if len(labels) != n or sum(splits.values()) != n:
        raise BitvoteError(f"pack {out}: {n} images, {len(labels)} labels, splits {splits}: they must agree")
    if len(classes) > 65535:
        raise BitvoteError(f"pack {out}: {len(classes)} classes do not fit the uint16 labels")
    meta = {"format": "bitvote-data-pack", "version": VERSION, "count": n,
            "splits": {"train": int(splits.get("train", 0)), "test": int(splits.get("test", 0))},
            "classes": list(classes), "encoding": encoding, "shape": list(SHAPE), "lossy": bool(lossy),
            "origin": origin}
    mb = json.dumps(meta, ensure_ascii=True, sort_keys=True).encode()
    mb += b" " * (-len(mb) % 8)
    offsets = np.zeros(n + 1, "<i8")
    np.cumsum([len(b) for b in blobs], out=offsets[1:])
    body = [mb, offsets.tobytes(), np.asarray(labels, "<u2").tobytes(), *blobs]
    h = hashlib.sha256()
    for part in body:
        h.update(part)
    digest = h.digest()
    try:
        atomic_write_bytes(Path(out), b"".join([_HEAD.pack(MAGIC, len(mb), digest), *body]))
    except OSError as e:
        raise BitvoteError(f"pack: cannot write {out}: {e.strerror or e}") from None
    return digest.hex()


# ---------------------------------------------------------------------------------------------
# reading


def _open(path: Path) -> Tuple[Dict, np.ndarray, np.ndarray, memoryview, str]:
    """(metadata, offsets, labels, payload, digest) of a checked pack, or a one-line error."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BitvoteError(f"cannot read packed data {path}: {e.strerror}") from None
    bad = f"packed data {path}"
    if len(raw) < _HEAD.size or raw[: len(MAGIC)] != MAGIC:
        raise BitvoteError(f"data path {path} is a file but not a packed dataset (`bitvote data pack` makes one)")
    _, mlen, digest = _HEAD.unpack_from(raw)
    if mlen > min(_MAX_META, len(raw) - _HEAD.size) or mlen % 8:
        raise BitvoteError(f"{bad} is truncated or damaged (metadata length {mlen})")
    view = memoryview(raw)
    if hashlib.sha256(view[_HEAD.size:]).digest() != digest:
        raise BitvoteError(f"{bad} is damaged or truncated: its SHA-256 does not match the one it records")
    try:
        meta = json.loads(bytes(view[_HEAD.size:_HEAD.size + mlen]).decode())
    except (UnicodeDecodeError, ValueError):
        raise BitvoteError(f"{bad}: malformed metadata (not JSON)") from None
    _check_meta(meta, bad)
    n = meta["count"]
    start = _HEAD.size + mlen
    need = 8 * (n + 1) + 2 * n
    if len(raw) - start < need:
        raise BitvoteError(f"{bad} is truncated: {n} images need {need} bytes of tables")
    offsets = np.frombuffer(raw, "<i8", n + 1, start)
    labels = np.frombuffer(raw, "<u2", n, start + 8 * (n + 1))
    payload = view[start + need:]
    if offsets[0] != 0 or offsets[-1] != len(payload) or (np.diff(offsets) < 0).any():
        raise BitvoteError(f"{bad}: offsets do not cover the payload")
    if n and int(labels.max()) >= len(meta["classes"]):
        raise BitvoteError(f"{bad}: a label is past its {len(meta['classes'])} classes")
    if meta["encoding"] == "raw" and (np.diff(offsets) != int(np.prod(SHAPE))).any():
        raise BitvoteError(f"{bad}: raw images must be {int(np.prod(SHAPE))} bytes each")
    return meta, offsets, labels, payload, digest.hex()


def _check_meta(meta, bad: str) -> None:
    if not isinstance(meta, dict) or meta.get("format") != "bitvote-data-pack":
        raise BitvoteError(f"{bad}: malformed metadata (no bitvote-data-pack format field)")
    v = meta.get("version")
    if not isinstance(v, int) or v < 1:
        raise BitvoteError(f"{bad}: malformed metadata (version {v!r})")
    if v > VERSION:
        raise BitvoteError(f"{bad}: format version {v} is newer than this bitvote reads ({VERSION}); upgrade")
    n, sp, cl = meta.get("count"), meta.get("splits"), meta.get("classes")
    ok = (isinstance(n, int) and n >= 0 and isinstance(sp, dict) and set(sp) == {"train", "test"}
          and all(isinstance(c, int) and c >= 0 for c in sp.values()) and sum(sp.values()) == n
          and isinstance(cl, list) and cl and all(isinstance(c, str) for c in cl) and len(set(cl)) == len(cl)
          and meta.get("encoding") in ("image", "raw") and meta.get("shape") == list(SHAPE))
    if not ok:
        raise BitvoteError(f"{bad}: malformed metadata (count, splits, classes, encoding or shape)")


def read_meta(path) -> Dict:
    """A pack's metadata plus ``digest`` and ``bytes``, after checking the whole file."""
    path = Path(path).expanduser()
    meta, _, _, _, digest = _open(path)
    return {**meta, "digest": digest, "bytes": path.stat().st_size}


def read_split(path, split: str, dataset: str, progress: Optional[Callable[[int, int], None]] = None):
    """``(x, y)``: uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)`` of one split of a pack.

    Decoded once and cached under :func:`bitvote.io.cache_root` (keyed by the pack's
    SHA-256, which is verified on every read: a changed file never meets a stale cache).
    """
    path = Path(path).expanduser()
    meta, offsets, labels, payload, digest = _open(path)
    bad = f"packed data {path}"
    classes = len(CLASS_NAMES[dataset])
    if len(meta["classes"]) != classes:
        raise BitvoteError(f"{bad} holds {len(meta['classes'])} classes; {dataset} has {classes}")
    ntr, nte = meta["splits"]["train"], meta["splits"]["test"]
    lo, hi = (0, ntr) if split == "train" else (ntr, ntr + nte)
    if hi == lo:
        raise BitvoteError(f"{bad} has no {split} split")
    y = labels[lo:hi].astype(np.int64)
    cache = cache_root() / "packed" / f"{split}-{digest[:16]}.npz"
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if z["x"].shape == (hi - lo, *SHAPE) and np.array_equal(z["y"], y):
                    return z["x"], y
        except Exception:
            pass  # a damaged cache is rebuilt below
    x = np.empty((hi - lo, *SHAPE), np.uint8)
    for k in range(lo, hi):
        blob = payload[offsets[k]:offsets[k + 1]]
        if meta["encoding"] == "raw":
            x[k - lo] = np.frombuffer(blob, np.uint8).reshape(SHAPE)
        else:
            x[k - lo] = decode_image(io.BytesIO(bytes(blob)), f"#{k} of {path}")
        if progress is not None:
            progress(k - lo + 1, hi - lo)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    try:
        atomic_write_bytes(cache, buf.getvalue())
    except OSError:
        pass  # the cache only saves the next decode; a read-only or full cache folder is no error
    return x, y
