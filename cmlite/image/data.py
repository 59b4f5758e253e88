r"""Image data sets as uint8 tensors, device-resident batching, and image output.

:func:`load_dataset` returns an :class:`ImageData` (uint8 ``(n, C, H, W)`` on the CPU). Search order,
first hit wins; every place tried is listed in the error when nothing is found:

* roots: ``root=`` if given (then only it), else ``$CMLITE_DATA`` (if set), ``./data``, ``~/.cache/cmlite``;
* ``mnist`` / ``fashion-mnist``, in each root: ``mnist_uint8.npz`` / ``fashion_mnist_uint8.npz``
  (``x_train, y_train, x_test, y_test``), torchvision's ``MNIST/raw/`` / ``FashionMNIST/raw/``, then
  idx files directly in the root (``train-`` / ``t10k-images-idx3-ubyte[.gz]`` + labels); Fashion-MNIST
  finally in Debian's ``/usr/share/datasets/fashion-mnist/`` (package ``dataset-fashion-mnist``);
* ``cifar10``, in each root: ``cifar10_train_jpgbytes.npz`` (train only; JPEG bytes + offsets),
  torchvision's ``cifar-10-batches-py/``, then an image folder ``cifar10/<split>/<class>/*.png``;
* ``folder:PATH`` (or ``name="folder", root=PATH``): every png/jpg/jpeg/bmp/webp under PATH; the
  immediate subfolder is the class.

``download=True`` fetches MNIST / Fashion-MNIST / CIFAR-10 with torchvision when nothing is found. A file
that is found but cannot be read (corrupt, truncated, wrong layout) raises ``ValueError`` naming it.

:func:`hold_out_floor` splits a data set that has no test split here (CIFAR-10's JPEG archive, image
folders) into training images and a fixed held-out set of real images that no model trains on: the FID
floor's images (:mod:`cmlite.image.evaluate`). :func:`read_images` reads images to edit (an .npz or image
files) and :func:`check_images` validates images given to the editing code.
:class:`GPUBatches` keeps a whole data set on the device and draws reproducible, resumable batches
there; :func:`synthetic_dataset` makes a small data set of shapes for tests and CPU runs.
"""
from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..devices import cache_folder, file_sha1

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_ALIASES = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "fashion_mnist": "fashion-mnist",
            "fashionmnist": "fashion-mnist", "cifar10": "cifar10", "cifar-10": "cifar10"}
_TITLE = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}


@dataclass
class ImageData:
    """A labelled (or unlabelled) image data set: ``images`` uint8 (n, C, H, W), ``labels`` int64 (n,) or None.
    ``source`` says in words which images these are (e.g. "MNIST test split"), for reports."""

    images: Tensor
    labels: Tensor | None = None
    num_classes: int = 0
    name: str = ""
    source: str = ""

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (n, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels is not None:
            self.labels = torch.as_tensor(self.labels).long()
            if self.labels.shape != (len(self.images),):
                raise ValueError(f"{len(self.images)} images but labels of shape {tuple(self.labels.shape)}")
            if self.num_classes == 0 and len(self.labels):
                self.num_classes = int(self.labels.max()) + 1
            if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
                raise ValueError(f"labels outside [0, {self.num_classes})")

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def resolution(self) -> int | tuple[int, int]:
        """Side length (an int) for square images, else (H, W)."""
        h, w = self.images.shape[-2:]
        return h if h == w else (h, w)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> ImageData:
        """The images (and labels) at ``idx`` (index tensor, list or slice)."""
        idx = torch.as_tensor(idx) if isinstance(idx, (list, np.ndarray)) else idx
        lab = None if self.labels is None else self.labels[idx]
        return ImageData(self.images[idx], lab, self.num_classes, self.name, self.source)

    def split(self, n_holdout: int, seed: int = 0) -> tuple[ImageData, ImageData]:
        """(train, holdout): a random holdout of ``n_holdout`` images, deterministic in ``seed``; order kept."""
        if not 0 <= n_holdout <= len(self):
            raise ValueError(f"n_holdout={n_holdout} not in [0, {len(self)}]")
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.subset(perm[n_holdout:].sort().values), self.subset(perm[:n_holdout].sort().values)


#: Images held out of a training split that has no test split beside it, for the FID floor (and the
#: classifier's test accuracy): CIFAR-10's 50,000 training images become 40,000 to train on and 10,000
#: floor images. At most a fifth of a smaller data set is held out.
FLOOR_HOLDOUT = 10_000
FLOOR_SEED = 0


def hold_out_floor(train: ImageData, n: int | None = None, seed: int = FLOOR_SEED) -> tuple[ImageData, ImageData]:
    """(training images, floor images) of a data set that has no test split here: ``n`` images (default
    min(:data:`FLOOR_HOLDOUT`, len // 5)) chosen by ``torch.randperm`` with ``seed`` (fixed: 0), the rest kept.

    Why: an FID's floor (the score of real images at the same n) must come from real images that are *not*
    the reference set and that the generator never saw; a subset of the reference itself is biased low
    (down to 0 when it is the whole reference). The image recipes train on the first part only
    (:func:`cmlite.image.run.load_train_test`), so the held-out images are unseen by every model trained
    here. The choice is fixed (the same seed everywhere), so training, ``cmlite eval`` and the benchmarks
    agree on it. The trade-off: the models train on fewer images (40k of CIFAR-10's 50k), and a run trained
    on all of them elsewhere has seen the floor images (``cmlite eval`` compares the run's ``train_images``
    with the reference and says so).
    """
    n = min(FLOOR_HOLDOUT, len(train) // 5) if n is None else int(n)
    if not 2 <= n < len(train):
        raise ValueError(f"cannot hold out {n} of {len(train)} images for the FID floor: the data set is too small "
                         "(it needs at least 10 images)")
    rest, held = train.split(n, seed)
    what = train.source or f"the {len(train)} {train.name} training images"
    rest.source = f"{what} less {n} held-out images ({len(rest)})"
    held.source = f"{n} images held out of {what} (seed {seed}; never trained on)"
    return rest, held


# ----------------------------------------------------------------------------------------------- readers
_REFETCH = "the file is corrupt or truncated (an interrupted download or copy?): delete it and fetch it again"


def _unreadable(path, what: str, err: BaseException | None = None) -> ValueError:
    """The error for a data file that exists but cannot be read: names the file, what was wrong, the fix."""
    why = f" ({type(err).__name__}: {err})" if err is not None else ""
    return ValueError(f"{path}: {what}{why}; {_REFETCH}")


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (plain or .gz): magic 0x0000 08 ndim, big-endian int32 dims, then uint8 data."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise _unreadable(path, "cannot read this idx file", e) from None
    magic = int.from_bytes(raw[:4], "big")
    ndim = magic & 0xFF
    if len(raw) < 4 or magic >> 8 != 0x08 or ndim == 0:
        raise _unreadable(path, f"not a uint8 idx file (magic {magic:#010x})")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    have, need = len(raw) - 4 - 4 * ndim, math.prod(dims)
    if have != need:
        raise _unreadable(path, f"{have} bytes of data for an array of shape {tuple(dims)} ({need} bytes)")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


def _npz_arrays(path: Path, keys: tuple[str, ...]) -> list[np.ndarray]:
    """The arrays ``keys`` of an .npz file, or a ValueError naming the file (unreadable, or a key missing)."""
    import zipfile
    import zlib
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise ValueError(f"{path}: no array {', '.join(missing)} (it holds {', '.join(z.files) or 'nothing'}); "
                                 f"expected {', '.join(keys)}")
            return [z[k] for k in keys]
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError) as e:
        raise _unreadable(path, "not a readable .npz file", e) from None
    except ValueError as e:
        if str(e).startswith(str(path)):
            raise
        raise _unreadable(path, "not a readable .npz file", e) from None


def _idx_pair(d: Path, split: str):
    """(place, loader or None) for idx images + labels of ``split`` in folder ``d``."""
    pre = "train" if split == "train" else "t10k"

    def find(stem):
        return next((p for p in (d / stem, d / f"{stem}.gz") if p.is_file()), None)
    img, lab = find(f"{pre}-images-idx3-ubyte"), find(f"{pre}-labels-idx1-ubyte")
    place = f"{d}/{pre}-images-idx3-ubyte[.gz] + {pre}-labels-idx1-ubyte[.gz]"
    return place, (lambda: (_read_idx(img), _read_idx(lab))) if img and lab else None


def _npz_pair(path: Path, split: str):
    def load():
        x, y = _npz_arrays(path, (f"x_{split}", f"y_{split}"))
        if x.ndim != 3 or len(y) != len(x):
            raise _unreadable(path, f"x_{split} of shape {x.shape} (expected (n, 28, 28) uint8) with "
                                    f"{len(y)} labels")
        return x, y
    return str(path), load if path.is_file() else None


def _pmap(fn, items: list, workers: int | None = None) -> list:
    """``[fn(x) for x in items]`` on a thread pool (Pillow releases the GIL while decoding), in chunks."""
    workers = workers or min(8, os.cpu_count() or 1)
    if workers == 1 or len(items) < 64:
        return [fn(x) for x in items]
    size = math.ceil(len(items) / (4 * workers))
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    with ThreadPoolExecutor(workers) as ex:
        return [y for part in ex.map(lambda ch: [fn(x) for x in ch], chunks) for y in part]


DECODED_VERSION = 1   # part of the decoded copies' names: raise it when the decoding changes


def decoded_cache_dir() -> Path:
    """Where decoded copies of JPEG data sets are kept: ``$XDG_CACHE_HOME/cmlite/decoded``, else
    ``~/.cache/cmlite/decoded`` (:func:`cmlite.devices.cache_folder`)."""
    return Path(cache_folder("decoded"))


def _cached_decode(path: Path, decode):
    """``decode()`` -> (images, labels), kept as an uncompressed .npz in :func:`decoded_cache_dir` under the
    sha1 of ``path``'s bytes, so a second load reads the arrays back instead of decoding again (CIFAR-10's
    50,000 JPEGs: 6-7 s to decode, 150 MB decoded). A changed file has another sha1 and is decoded anew; a
    copy that cannot be read is decoded again and replaced; where the folder cannot be written, every load
    decodes."""
    copy = decoded_cache_dir() / f"{path.stem}-v{DECODED_VERSION}-{file_sha1(path)[:20]}.npz"
    try:
        with np.load(copy) as z:                     # zip CRCs: a damaged copy raises here
            x, y = z["images"], z["labels"]
        if x.dtype == np.uint8 and x.ndim == 4 and len(y) == len(x):
            return x, y
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        pass
    x, y = decode()
    tmp = copy.with_name(f"{copy.name}.{os.getpid()}.tmp")
    try:
        copy.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, images=x, labels=y)
        os.replace(tmp, copy)                        # atomic: a reader sees the whole copy or none
    except OSError:                                  # e.g. a read-only home: decode again next time
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
    return x, y


def _load_jpgbytes(path: Path):
    """(images (n, 3, H, W) uint8 RGB, labels) from JPEG bytes: image i is data[offsets[i]:offsets[i + 1]].
    Decoded once per file: later loads read the decoded copy (:func:`_cached_decode`)."""
    return _cached_decode(path, lambda: _decode_jpgbytes(path))


def _decode_jpgbytes(path: Path):
    from PIL import Image
    data, off, labels = _npz_arrays(path, ("data", "offsets", "labels"))
    if len(off) != len(labels) + 1 or (len(off) and (off[0] < 0 or off[-1] > len(data) or (np.diff(off) <= 0).any())):
        raise _unreadable(path, f"{len(off)} offsets (increasing, within the {len(data)} bytes of data) for "
                                f"{len(labels)} labels")
    blobs = [data[off[i]:off[i + 1]].tobytes() for i in range(len(labels))]

    def decode(i):
        try:
            with Image.open(io.BytesIO(blobs[i])) as im:
                return np.asarray(im.convert("RGB"))      # (H, W, 3): rows, columns, R G B
        except (OSError, ValueError, SyntaxError) as e:
            raise _unreadable(path, f"image {i} (bytes {off[i]}..{off[i + 1]}) is not a readable JPEG", e) from None
    imgs = _pmap(decode, list(range(len(labels))))
    if len({a.shape for a in imgs}) > 1:
        raise _unreadable(path, f"images of different sizes {sorted({a.shape for a in imgs})[:3]}")
    return np.stack(imgs).transpose(0, 3, 1, 2), labels   # (n, H, W, 3) -> (n, 3, H, W)


def _load_cifar_batches(d: Path, split: str):
    # pickle: these are the official CIFAR-10 "python version" files (pickled dicts); only load files you trust
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for n in names:
        try:
            with open(d / n, "rb") as f:
                b = pickle.load(f, encoding="bytes")
            x = np.asarray(b.get(b"data", b.get("data")), np.uint8).reshape(-1, 3, 32, 32)  # rows: R, G, B planes
            y = np.asarray(b.get(b"labels", b.get("labels")))
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, TypeError, ValueError) as e:
            raise _unreadable(d / n, "not a CIFAR-10 python batch (a pickled dict with data (n, 3072) and labels)",
                              e) from None
        if len(y) != len(x):
            raise _unreadable(d / n, f"{len(x)} images but {len(y)} labels")
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _image_mode(mode: str) -> str:
    return "L" if mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"


def _load_folder(path: Path, resolution: int | None = None):
    """(images (n, C, H, W) uint8, labels or None, class names) from every image file under ``path``."""
    from PIL import Image
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTS)}) under {path}")
    parts = [f.relative_to(path).parts for f in files]
    classes, labels = [], None
    if any(len(p) > 1 for p in parts):
        if any(len(p) == 1 for p in parts):
            raise ValueError(f"{path} has images both directly inside and in class subfolders")
        classes = sorted({p[0] for p in parts})
        labels = np.array([classes.index(p[0]) for p in parts])
    heads = []
    for f in files:
        try:
            with Image.open(f) as im:
                heads.append((_image_mode(im.mode), im.size))
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"{f}: not a readable image ({type(e).__name__}: {e}); replace or delete it") from None
    modes, sizes = [m for m, _ in heads], {s for _, s in heads}
    c = Counter(modes)
    mode = "L" if c["L"] > c["RGB"] else "RGB"
    if resolution is None and len(sizes) > 1:
        raise ValueError(f"images under {path} have {len(sizes)} different sizes (e.g. {sorted(sizes)[:3]}): "
                         "resize them to one size, or pass resolution=N to center-crop and resize")

    def decode(f):
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                return np.asarray(_crop_resize(im, resolution) if resolution else im)
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"{f}: cannot decode this image ({type(e).__name__}: {e}); the file is corrupt or "
                             "truncated: replace or delete it") from None
    x = np.stack(_pmap(decode, files))
    return (x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)), labels, classes


def _crop_resize(im, res: int):
    """Center-crop a Pillow image to a square and resize it to res x res (Lanczos)."""
    from PIL import Image
    w, h = im.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return im.crop(box).resize((res, res), Image.LANCZOS)


def _to_data(x: np.ndarray, y, name: str, num_classes: int = 0) -> ImageData:
    """uint8 images (n, H, W) or (n, C, H, W) and labels -> ImageData."""
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise ValueError(f"{name}: images must be uint8, got {x.dtype}")
    x = x[:, None] if x.ndim == 3 else x
    if x.ndim != 4:
        raise ValueError(f"{name}: images of shape {x.shape}, expected (n, H, W) or (n, C, H, W)")
    lab = None if y is None else torch.from_numpy(np.asarray(y).astype(np.int64))
    return ImageData(torch.from_numpy(np.ascontiguousarray(x)), lab, num_classes, name)


# ------------------------------------------------------------------------------------------- load_dataset
def _roots(root) -> list[Path]:
    if root is not None:
        return [Path(root).expanduser()]
    env = os.environ.get("CMLITE_DATA")
    return ([Path(env).expanduser()] if env else []) + [Path("data").absolute(), Path.home() / ".cache" / "cmlite"]


def _places(name: str, r: Path, split: str):
    """(place, loader or None) for every format of ``name`` under root ``r``, in search order."""
    if name in ("mnist", "fashion-mnist"):
        yield _npz_pair(r / f"{name.replace('-', '_')}_uint8.npz", split)
        yield _idx_pair(r / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw", split)
        yield _idx_pair(r, split)
    else:
        if split == "train":
            p = r / "cifar10_train_jpgbytes.npz"
            yield str(p), (lambda: _load_jpgbytes(p)) if p.is_file() else None
        d = r / "cifar-10-batches-py"
        ok = all((d / f).is_file() for f in ([f"data_batch_{i}" for i in range(1, 6)] if split == "train"
                                             else ["test_batch"]))
        yield f"{d}/{'data_batch_1..5' if split == 'train' else 'test_batch'}", \
            (lambda: _load_cifar_batches(d, split)) if ok else None
        f = r / "cifar10" / split
        yield f"{f}/<class>/*.png", (lambda: _load_cifar_folder(f)) if f.is_dir() else None


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _load_cifar_folder(path: Path):
    x, y, classes = _load_folder(path)
    if y is None or not set(classes) <= set(CIFAR10_CLASSES):
        raise ValueError(f"{path}: expected class subfolders named {', '.join(CIFAR10_CLASSES)}")
    return x, np.array([CIFAR10_CLASSES.index(c) for c in classes])[y]


def _download(name: str, root: Path) -> None:
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise ImportError(f"download=True needs torchvision, which is not installed: `pip install torchvision` "
                          f"(the build matching your torch), or fetch {_TITLE[name]} yourself") from None
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    for train in (True, False):
        cls(str(root), train=train, download=True)


def _missing(name: str, split: str, places: list[str], droot: Path) -> FileNotFoundError:
    how = [f"load_dataset('{name}', download=True) (`--download` on the cmlite command line) fetches it with "
           f"torchvision into {droot}",
           "or pass root=DIR / set CMLITE_DATA to a folder holding one of the formats above"]
    if name == "cifar10":
        how.insert(1, "or put cifar10_train_jpgbytes.npz (data, offsets, labels; train split only) in a root")
    else:
        npz = f"{name.replace('-', '_')}_uint8.npz"
        how.insert(1, f"or put {npz} (x_train, y_train, x_test, y_test as uint8) in a root")
    if name == "fashion-mnist":
        how.append("or on Debian/Ubuntu: `apt-get install dataset-fashion-mnist` "
                   f"(idx files in {DEBIAN_FASHION_MNIST})")
    return FileNotFoundError(f"{_TITLE[name]} ({split} split) not found. Looked in:\n"
                             + "".join(f"  - {p}\n" for p in places) + "To get it:\n"
                             + "".join(f"  * {h}\n" for h in how))


def load_dataset(name: str, root=None, split: str = "train", download: bool = False,
                 resolution: int | None = None) -> ImageData:
    """Load ``name`` ("mnist", "fashion-mnist", "cifar10", "folder:PATH" or "folder" with root=PATH).

    Args:
        root: the one folder to search; default ``$CMLITE_DATA``, ``./data``, ``~/.cache/cmlite`` in turn.
        split: "train" or "test" (ignored for folders).
        download: fetch with torchvision (into root, else $CMLITE_DATA, else ~/.cache/cmlite) if not found.
        resolution: center-crop and resize every image to resolution x resolution (Pillow, Lanczos).
    Raises FileNotFoundError listing every place looked and how to get the data.
    """
    if name.startswith("folder:") or name == "folder":
        if name == "folder" and root is None:
            raise ValueError('name="folder" needs root=PATH (or use name="folder:PATH")')
        path = Path(name[7:] if name.startswith("folder:") else root).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"image folder {str(path)!r} does not exist")
        x, y, classes = _load_folder(path, resolution)
        data = _to_data(x, y, f"folder:{path}", len(classes))
        data.source = f"the images under {path}"
        return data
    key = _ALIASES.get(name.lower())
    if key is None:
        raise ValueError(f"unknown data set {name!r}: use mnist, fashion-mnist, cifar10 or folder:PATH")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    roots = _roots(root)
    droot = Path(root or os.environ.get("CMLITE_DATA") or Path.home() / ".cache" / "cmlite").expanduser()
    for attempt in range(2):
        places = []
        for r in roots:
            for place, loader in _places(key, r, split):
                places.append(place)
                if loader is not None:
                    return _finish(loader(), key, resolution, split)
        if key == "fashion-mnist":
            place, loader = _idx_pair(DEBIAN_FASHION_MNIST, split)
            places.append(place)
            if loader is not None:
                return _finish(loader(), key, resolution, split)
        if not download or attempt:
            raise _missing(key, split, places, droot)
        _download(key, droot)
        roots = [droot]


def _finish(xy, name: str, resolution: int | None, split: str) -> ImageData:
    data = _to_data(*xy, name=name, num_classes=10)
    if resolution and tuple(data.images.shape[-2:]) != (resolution, resolution):
        from PIL import Image
        arr = data.images.permute(0, 2, 3, 1).numpy()
        arr = arr[..., 0] if data.channels == 1 else arr
        out = np.stack(_pmap(lambda a: np.asarray(_crop_resize(Image.fromarray(a), resolution)), list(arr)))
        data = _to_data(out if out.ndim == 3 else out.transpose(0, 3, 1, 2), data.labels.numpy(), name, 10)
    data.source = f"the {_TITLE[name]} {split} split"
    return data


# --------------------------------------------------------------------------------------------- GPUBatches
class GPUBatches:
    """Batches drawn on the device from a whole uint8 data set held there.

    Calling it returns ``(x, y)``: x float32 (B, C, H, W) in [-1, 1] (optionally channels_last, randomly
    left-right flipped with ``flip=True``), y int64 (B,) or None. Sampling is by epochs: a permutation of
    all images per epoch (batches run across epoch ends), drawn with a ``torch.Generator`` on ``device``
    seeded with ``seed``; no host synchronisation. Data parallel: every rank uses the same seed and draws
    the *global* batch of ``batch_size * world_size`` indices (and flips); rank r keeps the r-th slice of
    size ``batch_size``. So the ranks' batches concatenated in rank order equal the batch of a single
    process with batch ``batch_size * world_size`` and the same seed (on the same kind of device).
    ``state_dict()`` / ``load_state_dict()`` resume the exact stream. A *batch source* for
    :class:`~cmlite.training.Trainer` (labels go to the model as ``class_labels``).
    """
    is_batch_source = True

    def __init__(self, data: ImageData, batch_size: int, device="cpu", *, flip: bool = False,
                 channels_last: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = None if data.labels is None else data.labels.to(self.device)
        self.n, self.batch_size, self.rank, self.world_size = len(data), batch_size, rank, world_size
        self.global_batch = batch_size * world_size
        self.flip, self.channels_last = flip, channels_last
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._perm: Tensor | None = None   # permutation of the current epoch
        self._pos = 0                      # position in it
        self._epochs = 0                   # permutations drawn so far

    @property
    def epoch(self) -> float:
        """Passes over the data so far (global, fractional)."""
        return max(self._epochs - 1, 0) + self._pos / self.n

    def _global_indices(self) -> Tensor:
        parts, need = [], self.global_batch
        while need:                        # Python ints only: no device sync
            if self._perm is None or self._pos == self.n:
                self._perm = torch.randperm(self.n, generator=self.generator, device=self.device)
                self._pos, self._epochs = 0, self._epochs + 1
            take = min(need, self.n - self._pos)
            parts.append(self._perm[self._pos:self._pos + take])
            self._pos, need = self._pos + take, need - take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def __call__(self) -> tuple[Tensor, Tensor | None]:
        idx = self._global_indices()
        sl = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        if self.flip:
            flips = torch.rand(self.global_batch, generator=self.generator, device=self.device)[sl] < 0.5
        idx = idx[sl]
        u8 = self.images.index_select(0, idx)
        if self.flip:
            u8 = torch.where(flips.view(-1, 1, 1, 1), u8.flip(-1), u8)
        x = u8.to(torch.float32).div_(127.5).sub_(1.0)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, None if self.labels is None else self.labels.index_select(0, idx)

    def __iter__(self):
        while True:
            yield self()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": None if self._perm is None else self._perm.cpu(),
                "pos": self._pos, "epochs": self._epochs, "n": self.n, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n or state["global_batch"] != self.global_batch:
            raise ValueError(f"state for n={state['n']}, global batch {state['global_batch']}; "
                             f"this has n={self.n}, global batch {self.global_batch}")
        self.generator.set_state(state["generator"].cpu())
        self._perm = None if state["perm"] is None else state["perm"].to(self.device)
        self._pos, self._epochs = state["pos"], state["epochs"]


# ------------------------------------------------------------------------------------------------- output
def to_uint8(x: Tensor) -> Tensor:
    """Images in [-1, 1] -> uint8 in [0, 255]: round((x + 1) * 127.5), clamped. So -1 -> 0, 1 -> 255, the
    level u / 127.5 - 1 -> u exactly (the inverse of the data scaling u / 127.5 - 1), anything nearer to level
    u than to its neighbours -> u, and exact ties to the even level (torch.round: 0 -> 127.5 -> 128)."""
    return ((x.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def make_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: int = 0) -> Tensor:
    """uint8 (n, C, H, W) -> one uint8 (C, H', W') grid with ``nrow`` images per row."""
    images = torch.as_tensor(images)
    n, c, h, w = images.shape
    ncol, rows = min(nrow, n), math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value,
                      dtype=images.dtype)
    for i in range(n):
        r, k = divmod(i, nrow)
        y0, x0 = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, y0:y0 + h, x0:x0 + w] = images[i].cpu()
    return grid


def save_png(path, grid: Tensor) -> None:
    """Write a uint8 (C, H, W) image, C = 1 or 3, as PNG (parent folders are created)."""
    from PIL import Image
    a = torch.as_tensor(grid).cpu().numpy()
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[0] not in (1, 3):
        raise ValueError(f"save_png wants uint8 (1 or 3, H, W), got {a.dtype} {a.shape}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(path)


def save_npz(path, images: Tensor, compressed: bool = False, **extra) -> None:
    """Save uint8 images (n, C, H, W) as ``images`` in an .npz (zip-deflated with ``compressed``), plus any
    ``extra`` arrays/tensors."""
    conv = {k: (v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v)) for k, v in extra.items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compressed else np.savez)(path, images=torch.as_tensor(images).cpu().numpy(), **conv)


def check_images(images, what: str = "images", value_range: bool = True) -> Tensor:
    """Validate images given to the image code and return them as a tensor (n, C, H, W) (a (n, H, W) batch
    gets its channel axis): uint8 in [0, 255], or floating point, finite and (with ``value_range``) in
    [-1, 1] (1e-3 of slack for rounding; noisy observations may lie outside). Raises ValueError saying what
    ``what`` holds and how to fix it (e.g. [0, 255] floats, or int32 images)."""
    x = torch.as_tensor(images) if not isinstance(images, Tensor) else images
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or 0 in x.shape:
        raise ValueError(f"{what}: expected images of shape (n, C, H, W) or (n, H, W); got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if not x.is_floating_point():
        lo, hi = int(x.min()), int(x.max())
        raise ValueError(f"{what}: {x.dtype} images (values {lo}..{hi}); give uint8 images in [0, 255] "
                         "(e.g. numpy's a.astype(np.uint8) after checking the range) or floats in [-1, 1]")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what}: the images contain NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if value_range and (lo < -1 - 1e-3 or hi > 1 + 1e-3):
        hint = " (they look like [0, 255] pixel values: pass them as uint8, or as x / 127.5 - 1)" if hi > 2 else ""
        raise ValueError(f"{what}: float images must lie in [-1, 1]; these span [{lo:.4g}, {hi:.4g}]{hint}")
    return x


def read_images(paths) -> Tensor:
    """uint8 images (n, C, H, W) from one .npz (array ``images``: uint8 (n, C, H, W) or (n, H, W), as ``cmlite
    sample`` writes) or from image files (PNG, JPEG, ...; one image each, all of one size). Errors name the
    file and say what was wrong: unreadable or truncated files, a missing ``images`` array, another dtype,
    shape or value range, images of different sizes."""
    paths = [str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not paths:
        raise ValueError("no input files given")
    npz = [p for p in paths if p.endswith(".npz")]
    if npz:
        if len(paths) > 1:
            raise ValueError("give one .npz, or image files, not both (nor several .npz files)")
        if not Path(paths[0]).is_file():
            raise FileNotFoundError(f"{paths[0]}: no such file")
        try:
            (a,) = _npz_arrays(Path(paths[0]), ("images",))
        except ValueError as e:
            raise ValueError(f"{e}. Write uint8 images (n, C, H, W) under the name `images`, as `cmlite sample` "
                             "does") from None
        if a.dtype != np.uint8:
            raise ValueError(f"{paths[0]}: `images` must be uint8 (n, C, H, W) in [0, 255]; got {a.dtype} "
                             f"{a.shape}" + (" (floats in [-1, 1]: save ((a + 1) * 127.5).round().astype(np.uint8))"
                                             if a.dtype.kind == "f" else ""))
        if a.ndim not in (3, 4) or 0 in a.shape or (a.ndim == 4 and a.shape[1] not in (1, 3)):
            raise ValueError(f"{paths[0]}: `images` must have shape (n, C, H, W) with C = 1 or 3, or (n, H, W); "
                             f"got {a.shape}" + (" (channels last? use a.transpose(0, 3, 1, 2))"
                                                 if a.ndim == 4 and a.shape[-1] in (1, 3) else ""))
        return torch.from_numpy(np.ascontiguousarray(a[:, None] if a.ndim == 3 else a))
    from PIL import Image
    imgs = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"{p}: no such file")
        try:
            with Image.open(p) as im:
                a = np.asarray(im.convert(_image_mode(im.mode)))
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"{p}: not a readable image file ({type(e).__name__}: {e})") from None
        imgs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    if len({a.shape for a in imgs}) > 1:
        raise ValueError(f"the input images have different shapes (C, H, W): {sorted({a.shape for a in imgs})}; "
                         "give images of one size")
    return torch.from_numpy(np.stack(imgs))


# ---------------------------------------------------------------------------------------------- synthetic
SHAPES = ("disc", "square", "bar", "cross", "ring", "diamond")


def synthetic_dataset(n: int = 2048, channels: int = 1, resolution: int = 16, num_classes: int = 4,
                      seed: int = 0, noise: float = 0.03) -> ImageData:
    """Bright shapes on a dark background, class k = ``SHAPES[k]`` (balanced), at random positions and sizes.

    Anti-aliased edges, slight Gaussian noise; RGB images get a random bright colour per image.
    Deterministic in ``seed``; learnable by a tiny model on a CPU.
    """
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in [1, {len(SHAPES)}]")
    if channels not in (1, 3):
        raise ValueError("channels must be 1 or 3")
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    R = resolution
    r = R * (0.2 + 0.12 * torch.rand(n, generator=g))                       # half-size in pixels
    ctr = r[:, None] + torch.rand(n, 2, generator=g) * (R - 1 - 2 * r)[:, None]
    fg = 0.75 + 0.25 * torch.rand(n, generator=g)
    bg = 0.04 + 0.08 * torch.rand(n, generator=g)
    colour = 0.25 + 0.75 * torch.rand(n, 3, generator=g)
    colour = colour / colour.amax(1, keepdim=True)
    eps = torch.randn(n, channels, R, R, generator=g)
    coord = torch.arange(R, dtype=torch.float32)
    dx = (coord[None, None, :] - ctr[:, 0, None, None]).abs()
    dy = (coord[None, :, None] - ctr[:, 1, None, None]).abs()
    r3 = r[:, None, None]
    d = (dx ** 2 + dy ** 2).sqrt()

    def box(a, b):
        return torch.maximum(dx - a, dy - b)
    sdfs = [lambda: d - r3, lambda: box(0.8 * r3, 0.8 * r3), lambda: box(r3, 0.3 * r3),
            lambda: torch.minimum(box(r3, 0.3 * r3), box(0.3 * r3, r3)),
            lambda: (d - 0.7 * r3).abs() - 0.3 * r3, lambda: (dx + dy) / 1.2 - r3]
    sdf = sdfs[0]()                                                            # signed distance in pixels
    for k in range(1, num_classes):
        sdf = torch.where((labels == k)[:, None, None], sdfs[k](), sdf)
    cover = (0.5 - sdf).clamp(0, 1)[:, None]                                   # ~1 pixel anti-aliasing
    tint = colour[:, :, None, None] if channels == 3 else 1.0
    img = bg[:, None, None, None] + cover * (fg[:, None, None, None] * tint - bg[:, None, None, None])
    img = (img + noise * eps).clamp(0, 1)
    return ImageData((img * 255).round().to(torch.uint8), labels, num_classes, f"shapes{R}",
                     f"{n} synthetic shapes (seed {seed})")
