"""CIFAR-10/100 as uint8 tensors on the training device, with batched augmentation.

Like airbench, the whole split lives on the device as one ``(N, 3, 32, 32)`` uint8 tensor;
pad-4 random crop, horizontal flip and normalization are a few batched tensor ops (one
gather), never a per-image Python loop. Three sources, tried in this order under a root:

1. the official python-format folders ``cifar-10-batches-py`` / ``cifar-100-python``;
2. an image-folder tree ``train/<class>/*``, ``test/<class>/*`` (classes sorted by name give
   the labels), decoded once with Pillow and cached as ``.npz`` under :func:`bitvote.io.cache_root`;
3. the official archive, downloaded into the root and verified by its MD5 before use.

The root is ``--data PATH``, else ``$BITVOTE_DATA``, else ``~/.cache/bitvote/data``; a root
that is a file is a packed dataset (``.bvd``, :mod:`bitvote.datapack`), decoded like source 2.
:func:`pack_folder` writes such a pack from sources 1 and 2 (``bitvote data pack``).
Augmentation is a pure function of ``(seed, epoch, sample index)`` so that a resumed or
sharded run sees exactly the same images.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .datapack import CLASS_NAMES, IMG_EXT, SUFFIX, decode_image, read_split, write_pack
from .errors import BitvoteError
from .io import atomic_write_bytes, cache_root

__all__ = ["Split", "DATASETS", "load", "data_root", "augment", "normalize", "epoch_plan", "pack_folder"]

@dataclass(frozen=True)
class _Spec:
    classes: int
    folder: str  # official python-format folder name
    url: str
    md5: str  # of the archive, as published next to it
    train_files: tuple
    test_files: tuple
    label_key: bytes
    mean: tuple
    std: tuple


DATASETS = {
    "cifar10": _Spec(10, "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                     "c58f30108f718f92721af3b95e74349a", tuple(f"data_batch_{i}" for i in range(1, 6)),
                     ("test_batch",), b"labels", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": _Spec(100, "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                      "eb9058c3a382ffc7106e4002c42a8d85", ("train",), ("test",), b"fine_labels",
                      (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass
class Split:
    """One split on its device: ``x`` uint8 (N, 3, 32, 32), ``y`` int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor
    dataset: str
    source: str  # where it came from, for logs and results

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def num_classes(self) -> int:
        return DATASETS[self.dataset].classes

    def to(self, device) -> "Split":
        return Split(self.x.to(device), self.y.to(device), self.dataset, self.source)


# ---------------------------------------------------------------------------------------------
# where things live


def data_root(path=None) -> Path:
    """The data root: ``path``, else ``$BITVOTE_DATA``, else ``~/.cache/bitvote/data``."""
    if path:
        return Path(path).expanduser()
    if os.environ.get("BITVOTE_DATA"):
        return Path(os.environ["BITVOTE_DATA"]).expanduser()
    return Path.home() / ".cache" / "bitvote" / "data"


# ---------------------------------------------------------------------------------------------
# loading


def load(dataset: str, split: str, root=None, *, device="cpu", download: bool = True) -> Split:
    """Load ``split`` ("train" or "test") of ``dataset`` from ``root`` onto ``device``."""
    if dataset not in DATASETS:
        raise BitvoteError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise BitvoteError(f"unknown split {split!r}: choose train or test")
    spec = DATASETS[dataset]
    root = data_root(root)
    if root.is_file() or root.suffix == ".bvd":  # one packed file (``bitvote data pack``, bitvote.datapack)
        x, y = read_split(root, split, dataset)
        return Split(torch.from_numpy(x).to(device), torch.from_numpy(y).long().to(device), dataset, str(root))
    if root.exists() and not root.is_dir():
        raise BitvoteError(f"data path {root} is a file, not a folder")
    official = _find_official(root, spec)
    if official is not None:
        x, y = _read_official(official, spec, split)
        source = str(official)
    elif (root / "train").is_dir() or (root / "test").is_dir():
        x, y = _read_image_folder(root, split, spec)
        source = str(root)
    else:
        if not download:
            raise BitvoteError(f"no {dataset} data under {root}: expected {spec.folder}/ or train/ and test/ "
                               "class folders (download disabled)")
        official = _download(root, spec)
        x, y = _read_official(official, spec, split)
        source = str(official)
    return Split(torch.from_numpy(x).to(device), torch.from_numpy(y).long().to(device), dataset, source)


def _find_official(root: Path, spec: _Spec) -> Optional[Path]:
    for cand in (root, root / spec.folder):
        if cand.name == spec.folder and cand.is_dir():
            return cand
    return None


class _CifarUnpickler(pickle.Unpickler):
    """Admits exactly what the official python-format files hold, so reading one runs no code.

    Those files are a dict of bytes keys mapping to a uint8 numpy array, lists of ints and
    bytes; the only globals their pickle names are numpy's array reconstructors and
    ``numpy.dtype`` (plus ``_codecs.encode`` for latin-1 bytes, as Python 3 writes them at
    protocol 2). Any other global - ``os.system``, ``builtins.exec``, a class with a hostile
    ``__reduce__`` - is refused before it is called; a dtype other than an integer one
    (object arrays would unpickle arbitrary items) is refused too.
    """

    _ARRAYS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        if (module, name) in self._ARRAYS:
            return np.zeros(1).__reduce__()[0] if name == "_reconstruct" else np.zeros(1).__reduce_ex__(5)[0]
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return _int_dtype
        if (module, name) == ("_codecs", "encode"):
            return _latin1
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR file never does")


def _int_dtype(spec, *args):
    dt = np.dtype(spec, *args)
    if dt.kind not in "ui" or dt.names is not None or dt.subdtype is not None:
        raise pickle.UnpicklingError(f"it holds a {dt} array, not integers")
    return dt


def _latin1(text, encoding="latin1", *errors):
    if str(encoding).lower().replace("-", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"it decodes bytes with {encoding!r}")
    return text.encode("latin1")


def _plain(v, depth=0) -> bool:
    """Only the types an official file holds (after the unpickler, a belt-and-braces check)."""
    if isinstance(v, (bytes, str, int, float)) or v is None:
        return True
    if isinstance(v, np.ndarray):
        return v.dtype.kind in "ui"
    if isinstance(v, (list, tuple)) and depth < 2:
        return all(_plain(e, depth + 1) for e in v)
    return False


def _unpickle(path: Path):
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise BitvoteError(f"malformed CIFAR folder: {path} is missing") from None
    except IsADirectoryError:
        raise BitvoteError(f"malformed CIFAR folder: {path} is a folder, not a file") from None
    except pickle.UnpicklingError as e:
        msg = str(e).splitlines()[0] if str(e) else "UnpicklingError"
        if msg.startswith("it "):
            raise BitvoteError(f"refused CIFAR file {path}: {msg} (reading it could run code)") from None
        raise BitvoteError(f"malformed CIFAR file {path}: UnpicklingError") from None
    except Exception as e:
        raise BitvoteError(f"malformed CIFAR file {path}: {type(e).__name__}") from None
    if not (isinstance(d, dict) and all(isinstance(k, (bytes, str)) and _plain(v) for k, v in d.items())):
        raise BitvoteError(f"malformed CIFAR file {path}: not a dict of arrays and lists")
    return {k.encode() if isinstance(k, str) else k: v for k, v in d.items()}


def _read_official(folder: Path, spec: _Spec, split: str):
    xs, ys = [], []
    for name in spec.train_files if split == "train" else spec.test_files:
        d = _unpickle(folder / name)
        try:
            x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(d[spec.label_key], dtype=np.int64)
        except Exception:
            raise BitvoteError(f"malformed CIFAR file {folder / name}: no 32x32x3 data / labels") from None
        if len(x) != len(y) or (len(y) and (y.min() < 0 or y.max() >= spec.classes)):
            raise BitvoteError(f"malformed CIFAR file {folder / name}: labels do not match the images")
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _listing(root: Path, split: str, classes: int) -> List[tuple]:
    """``[(class_index, path)]`` of an image-folder split, checked against the class count."""
    top = root / split
    if not top.is_dir():
        raise BitvoteError(f"malformed image folder {root}: {split}/ is missing")
    names = _class_names(top)
    if len(names) != classes:
        raise BitvoteError(f"malformed image folder {top}: {len(names)} class folders, expected {classes}")
    files = []
    for i, name in enumerate(names):
        imgs = sorted(p for p in (top / name).iterdir() if p.suffix.lower() in IMG_EXT)
        if not imgs:
            raise BitvoteError(f"malformed image folder {top / name}: no images")
        files += [(i, p) for p in imgs]
    return files


def _class_names(top: Path) -> List[str]:
    return sorted(p.name for p in top.iterdir() if p.is_dir())


def _check_same_classes(root: Path, split: str) -> None:
    """Labels are class indices in name order, so train and test must name the same classes:
    one renamed folder would otherwise shift every label after it, silently."""
    other = "test" if split == "train" else "train"
    if not (root / other).is_dir():
        return
    mine, theirs = _class_names(root / split), _class_names(root / other)
    if mine != theirs:
        only_mine = sorted(set(mine) - set(theirs))
        only_theirs = sorted(set(theirs) - set(mine))
        diff = "; ".join(f"only in {s}/: {', '.join(v[:5])}{' ...' if len(v) > 5 else ''}"
                         for s, v in ((split, only_mine), (other, only_theirs)) if v)
        raise BitvoteError(f"malformed image folder {root}: train/ and test/ name different classes ({diff}); "
                           "labels follow the sorted class names, so they must match")


def _read_image_folder(root: Path, split: str, spec: _Spec):
    files = _listing(root, split, spec.classes)
    _check_same_classes(root, split)
    # The cache key covers the folder, its files and their sizes/mtimes: edits invalidate it.
    h = hashlib.sha1(str(root.resolve()).encode())
    for i, p in files:
        st = p.stat()
        h.update(f"{i}/{p.name}/{st.st_size}/{st.st_mtime_ns}".encode())
    cache = cache_root() / "image-folders" / f"{split}-{h.hexdigest()[:16]}.npz"
    if cache.exists():
        from .integrity import array_digest

        try:
            with np.load(cache, allow_pickle=False) as z:
                x, y, stored = z["x"], z["y"], str(z["digest"])
            if stored == array_digest(x=x, y=y) and x.shape == (len(files), 3, 32, 32) and y.shape == (len(files),):
                return x, y
            reason = "its digest does not match"
        except Exception as e:  # noqa: BLE001 - whatever the damage, the cache is rebuilt below
            reason = type(e).__name__
        print(f"bitvote: note: cache {cache} is damaged ({reason}): decoding the images again", file=sys.stderr)
    try:
        import PIL.Image  # noqa: F401 - Pillow present: one clear line otherwise
    except ImportError:  # pragma: no cover
        raise BitvoteError("reading an image folder needs Pillow: pip install pillow") from None
    x = np.empty((len(files), 3, 32, 32), np.uint8)
    y = np.fromiter((i for i, _ in files), np.int64, len(files))
    for k, (_, p) in enumerate(files):
        x[k] = decode_image(p, p)
    from .integrity import array_digest

    buf = io.BytesIO()
    np.savez(buf, x=x, y=y, digest=np.array(array_digest(x=x, y=y)))
    atomic_write_bytes(cache, buf.getvalue())
    return x, y


def _download(root: Path, spec: _Spec) -> Path:
    """Fetch the official archive, check its MD5, unpack it atomically into ``root``."""
    archive = root / Path(spec.url).name
    if not archive.exists():
        try:
            with urllib.request.urlopen(spec.url, timeout=60) as r:
                data = r.read()
        except Exception as e:
            reason = getattr(e, "reason", e)
            raise BitvoteError(f"no {spec.folder} under {root} and downloading {spec.url} failed ({reason}): "
                               "pass --data with the data") from None
        atomic_write_bytes(archive, data)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    if md5 != spec.md5:
        archive.unlink()
        raise BitvoteError(f"downloaded {archive.name} has MD5 {md5}, expected {spec.md5}: removed it, try again")
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                if m.name.startswith(("/", "..")) or ".." in Path(m.name).parts or not (m.isfile() or m.isdir()):
                    raise BitvoteError(f"refusing to unpack {archive}: unsafe member {m.name!r}")
            if hasattr(tarfile, "data_filter"):  # Python >= 3.12 and security backports
                tar.extractall(tmp, filter="data")
            else:
                tar.extractall(tmp)
        if not (tmp / spec.folder).is_dir():
            raise BitvoteError(f"archive {archive} holds no {spec.folder}/")
        os.replace(tmp / spec.folder, root / spec.folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / spec.folder


def subset(split: Split, n: Optional[int], seed: int = 0) -> Split:
    """A fixed random subset of ``n`` samples (the same for every run with this seed)."""
    if not n or n >= len(split):
        return split
    if n < 1:
        raise BitvoteError(f"--subset must be positive, got {n}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(split), generator=g)[:n].sort().values.to(split.x.device)
    return Split(split.x[idx], split.y[idx], split.dataset, split.source)


# ---------------------------------------------------------------------------------------------
# order and augmentation


def _gen(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 7 + stream)


def epoch_plan(n: int, seed: int, epoch: int):
    """Data order and augmentation of one epoch: ``(perm, dy, dx, flip)`` on the CPU.

    ``dy``/``dx`` (crop offsets in [0, 8]) and ``flip`` are indexed by *sample* index, so a
    sample's augmentation depends only on (seed, epoch, index), not on batching or sharding.
    """
    perm = torch.randperm(n, generator=_gen(seed, epoch, 0))
    g = _gen(seed, epoch, 1)
    crops = torch.randint(0, 9, (2, n), generator=g)
    flip = torch.randint(0, 2, (n,), generator=g).bool()
    return perm, crops[0], crops[1], flip


def augment(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Pad-``pad`` (zeros) random crop + horizontal flip of a uint8 batch, as one gather."""
    B, C, H, W = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dev = x.device
    ar_h = torch.arange(H, device=dev)
    ar_w = torch.arange(W, device=dev)
    rows = dy.to(dev)[:, None] + ar_h  # (B, H)
    cols = torch.where(flip.to(dev)[:, None], W - 1 - ar_w, ar_w) + dx.to(dev)[:, None]  # (B, W)
    b = torch.arange(B, device=dev)[:, None, None, None]
    c = torch.arange(C, device=dev)[None, :, None, None]
    return xp[b, c, rows[:, None, :, None], cols[:, None, None, :]]


def normalize(x: torch.Tensor, dataset: str, dtype=torch.float32) -> torch.Tensor:
    """uint8 -> float, per-channel mean/std of ``dataset``."""
    spec = DATASETS[dataset]
    mean = torch.tensor(spec.mean, device=x.device, dtype=dtype).view(1, 3, 1, 1) * 255
    std = torch.tensor(spec.std, device=x.device, dtype=dtype).view(1, 3, 1, 1) * 255
    return (x.to(dtype) - mean) / std


# ---------------------------------------------------------------------------------------------
# packing a source into one file (bitvote data pack)


def _class_dirs(top: Path) -> List[str]:
    return sorted(p.name for p in top.iterdir() if p.is_dir())


class _Progress:
    """One line per few seconds on stderr while packing: 60,000 images take a while."""

    def __init__(self, total: int, stream=None, every_s: float = 2.0):
        self.total, self.stream, self.every_s = total, stream, every_s
        self.t0 = self.last = time.monotonic()

    def __call__(self, done: int, force: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if force or now - self.last >= self.every_s:
            self.last = now
            print(f"bitvote data pack: {done}/{self.total} images ({now - self.t0:.0f} s)", file=self.stream,
                  flush=True)


def _image_folder(src: Path, progress) -> Tuple[List[bytes], List[int], Dict[str, int], List[str]]:
    present = [s for s in ("train", "test") if (src / s).is_dir()]
    names = None
    listing = []
    for split in present:
        got = _class_dirs(src / split)
        if not got:
            raise BitvoteError(f"malformed image folder {src / split}: no class folders")
        if names is not None and got != names:
            raise BitvoteError(f"malformed image folder {src}: train/ and test/ have different class folders")
        names = got
        files = []
        for i, name in enumerate(names):
            imgs = sorted(p for p in (src / split / name).iterdir() if p.suffix.lower() in IMG_EXT)
            if not imgs:
                raise BitvoteError(f"malformed image folder {src / split / name}: no images")
            files += [(i, p) for p in imgs]
        listing.append((split, files))
    prog = _Progress(sum(len(f) for _, f in listing), progress)
    blobs, labels, splits, done = [], [], {}, 0
    for split, files in listing:
        splits[split] = len(files)
        for i, p in files:
            try:
                data = p.read_bytes()
            except OSError as e:
                raise BitvoteError(f"cannot read image {p}: {e.strerror}") from None
            decode_image(io.BytesIO(data), p)  # a bad file is refused now, not on the GPU machine
            blobs.append(data)
            labels.append(i)
            done += 1
            prog(done)
    prog(done, force=True)
    return blobs, labels, splits, names


def _official(src: Path, jpeg_quality: Optional[int], progress):
    from PIL import Image

    for dataset, spec in DATASETS.items():
        if src.name == spec.folder or (src / spec.folder).is_dir():
            break
    else:  # pragma: no cover - the caller checked
        raise AssertionError(src)
    fmt = "JPEG" if jpeg_quality is not None else "PNG"
    opts = {"quality": int(jpeg_quality)} if jpeg_quality is not None else {}
    splits = {}
    parts = []
    for split in ("train", "test"):
        s = load(dataset, split, src, download=False)
        splits[split] = len(s)
        parts.append((s.x.numpy(), s.y.numpy()))
    prog = _Progress(sum(splits.values()), progress)
    blobs, labels, done = [], [], 0
    for x, y in parts:
        for k in range(len(y)):
            buf = io.BytesIO()
            Image.fromarray(x[k].transpose(1, 2, 0)).save(buf, format=fmt, **opts)
            blobs.append(buf.getvalue())
            labels.append(int(y[k]))
            done += 1
            prog(done)
    prog(done, force=True)
    origin = spec.folder + (f" re-encoded as JPEG quality {jpeg_quality}" if jpeg_quality is not None else
                            " encoded as PNG (lossless)")
    return blobs, labels, splits, list(CLASS_NAMES[dataset]), origin


def _check_writable(out: Path) -> None:
    """Refuse an ``--out`` that cannot be written before reading 60,000 images, not after."""
    import os

    anc = out.absolute().parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise BitvoteError(f"pack: cannot write {out}: {anc} is not a folder")
    if not os.access(anc, os.W_OK):
        raise BitvoteError(f"pack: cannot write {out}: {anc} is not writable")


def pack_folder(src, out, jpeg_quality: Optional[int] = None, progress=None) -> Dict:
    """Pack ``src`` (an image folder ``train/<class>/*``, ``test/<class>/*``, or the official
    ``cifar-10-batches-py`` / ``cifar-100-python`` folder, or a folder holding one) into ``out``.

    Image-folder files are stored as they are (never re-encoded). Official pixels are stored
    as PNG (lossless: decoding gives the pixels back exactly; about 135 MB for CIFAR-10) or,
    with ``jpeg_quality``, re-encoded as JPEG (lossy; the pack says so). Returns the metadata
    written plus ``digest`` and ``bytes``. ``progress``: a stream for progress lines, or None.
    """
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not src.exists():
        raise BitvoteError(f"pack: {src} does not exist")
    if not src.is_dir():
        raise BitvoteError(f"pack: {src} is not a folder (an image folder or cifar-10-batches-py)")
    if out.is_dir():
        raise BitvoteError(f"pack: --out {out} is a folder; give a file name such as cifar10{SUFFIX}")
    _check_writable(out)
    if jpeg_quality is not None and not 1 <= int(jpeg_quality) <= 95:
        raise BitvoteError(f"pack: --jpeg-quality must be 1..95, got {jpeg_quality}")
    try:
        import PIL  # noqa: F401
    except ImportError:  # pragma: no cover
        raise BitvoteError("packing needs Pillow: pip install pillow") from None
    official = any(src.name == s.folder or (src / s.folder).is_dir() for s in DATASETS.values())
    if official:
        blobs, labels, splits, classes, origin = _official(src, jpeg_quality, progress)
        lossy = jpeg_quality is not None
    elif (src / "train").is_dir() or (src / "test").is_dir():
        if jpeg_quality is not None:
            raise BitvoteError("pack: --jpeg-quality re-encodes official CIFAR pixels; an image folder's files "
                               "are packed as they are")
        try:
            blobs, labels, splits, classes = _image_folder(src, progress)
        except OSError as e:  # an unreadable class folder, say
            raise BitvoteError(f"pack: cannot read {e.filename or src}: {e.strerror or e}") from None
        origin, lossy = "image folder", False
    else:
        raise BitvoteError(f"pack: {src} holds neither train/ and test/ class folders nor "
                           f"{' / '.join(s.folder for s in DATASETS.values())}")
    digest = write_pack(out, blobs, labels, splits, classes, "image", lossy, origin)
    return {"count": len(blobs), "splits": splits, "classes": classes, "lossy": lossy, "origin": origin,
            "digest": digest, "bytes": out.stat().st_size}
