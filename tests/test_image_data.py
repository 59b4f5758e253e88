"""cmlite.image.data: every loader format from tiny files made here, GPUBatches on the CPU, output helpers."""
import gzip
import io
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from cmlite.image import data as D
from cmlite.image.data import (GPUBatches, ImageData, load_dataset, make_grid, save_npz, save_png,
                               synthetic_dataset, to_uint8)

RNG = np.random.default_rng(0)


def _digits(n, h=6, w=5):
    return RNG.integers(0, 256, (n, h, w), dtype=np.uint8), RNG.integers(0, 10, n).astype(np.uint8)


def _write_idx(path, arr, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(raw)


def _write_mnist_idx(folder, split, x, y, gz):
    pre, ext = ("train" if split == "train" else "t10k"), (".gz" if gz else "")
    _write_idx(folder / f"{pre}-images-idx3-ubyte{ext}", x, gz)
    _write_idx(folder / f"{pre}-labels-idx1-ubyte{ext}", y, gz)


def _check(d, x, y, name):
    assert d.images.dtype == torch.uint8 and d.labels.dtype == torch.int64
    assert d.images.shape == (len(x), 1) + x.shape[1:] and d.channels == 1 and d.name == name
    assert np.array_equal(d.images[:, 0].numpy(), x) and np.array_equal(d.labels.numpy(), y)


# no default data root of the machine is searched (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("isolated_data_roots")


# ------------------------------------------------------------------------------------------------ loaders
@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_npz(tmp_path, split):
    x, y = _digits(7)
    xt, yt = _digits(3)
    np.savez(tmp_path / "mnist_uint8.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    d = load_dataset("mnist", root=tmp_path, split=split)
    _check(d, *((x, y) if split == "train" else (xt, yt)), "mnist")
    assert d.num_classes == 10 and len(d) == len(d.labels)
    r = load_dataset("mnist", root=tmp_path, split=split, resolution=4)   # center-crop + resize
    assert r.images.shape[1:] == (1, 4, 4) and torch.equal(r.labels, d.labels)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_plain_idx_and_test_split(tmp_path, gz):
    x, y = _digits(5)
    xt, yt = _digits(2)
    _write_mnist_idx(tmp_path, "train", x, y, gz)
    _write_mnist_idx(tmp_path, "test", xt, yt, gz)
    _check(load_dataset("mnist", root=tmp_path), x, y, "mnist")
    _check(load_dataset("mnist", root=tmp_path, split="test"), xt, yt, "mnist")


def test_torchvision_mnist_layout_and_env_root(tmp_path, monkeypatch):
    x, y = _digits(4)
    _write_mnist_idx(tmp_path / "store" / "MNIST" / "raw", "train", x, y, gz=False)
    _check(load_dataset("mnist", root=tmp_path / "store"), x, y, "mnist")
    monkeypatch.setenv("CMLITE_DATA", str(tmp_path / "store"))       # found through the environment
    _check(load_dataset("mnist"), x, y, "mnist")
    with pytest.raises(FileNotFoundError):                           # Fashion-MNIST is not MNIST's folder
        load_dataset("fashion-mnist")


def test_fashion_mnist_torchvision_layout_and_debian(tmp_path, monkeypatch):
    x, y = _digits(4)
    _write_mnist_idx(tmp_path / "a" / "FashionMNIST" / "raw", "train", x, y, gz=True)
    _check(load_dataset("fashion-mnist", root=tmp_path / "a"), x, y, "fashion-mnist")
    xt, yt = _digits(3)
    deb = tmp_path / "debian"
    _write_mnist_idx(deb, "test", xt, yt, gz=True)                  # Debian ships the .gz idx files
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", deb)
    _check(load_dataset("fashion_mnist", root=tmp_path / "empty", split="test"), xt, yt, "fashion-mnist")


def _cifar_pickles(folder):
    folder.mkdir(parents=True)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = RNG.integers(0, 256, (2, 3072), dtype=np.uint8)
        labels = RNG.integers(0, 10, 2).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": labels, b"batch_label": name.encode()}, f)
        out[name] = (x, labels)
    return out


def test_cifar_batches_py(tmp_path):
    raw = _cifar_pickles(tmp_path / "cifar-10-batches-py")
    d = load_dataset("cifar10", root=tmp_path)
    assert d.images.shape == (10, 3, 32, 32) and d.channels == 3 and d.resolution == 32
    x1, l1 = raw["data_batch_1"]                                      # rows are R plane, G plane, B plane
    assert torch.equal(d.images[0, 1], torch.from_numpy(x1[0, 1024:2048].reshape(32, 32)))
    assert d.labels[:2].tolist() == l1 and d.labels[-2:].tolist() == raw["data_batch_5"][1]
    t = load_dataset("cifar-10", root=tmp_path, split="test")
    assert len(t) == 2 and t.labels.tolist() == raw["test_batch"][1]


def test_cifar_jpgbytes_npz(tmp_path):
    colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250)]
    _write_jpgbytes(tmp_path / "cifar10_train_jpgbytes.npz", colours)   # labels 0, 1, 2
    d = load_dataset("cifar10", root=tmp_path)
    assert d.images.shape == (3, 3, 32, 32) and d.labels.tolist() == [0, 1, 2]
    means = d.images.float().mean((2, 3))
    assert (means - torch.tensor(colours, dtype=torch.float32)).abs().max() < 8
    with pytest.raises(FileNotFoundError, match="train split only"):   # no test split in this format
        load_dataset("cifar10", root=tmp_path, split="test")


def _write_jpgbytes(path, colours):
    blobs = []
    for c in colours:
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), c).save(buf, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    np.savez(path, data=np.concatenate(blobs), offsets=offsets, labels=np.arange(len(colours), dtype=np.uint8))


def test_cifar_jpgbytes_decoded_once_per_file(tmp_path, monkeypatch):
    """The JPEGs are decoded once per file content: the next load reads the decoded copy (no decoding),
    with the same arrays; a changed file, a damaged copy or an unwritable cache folder decode again."""
    from cmlite.image import data as D
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    f = tmp_path / "cifar10_train_jpgbytes.npz"
    _write_jpgbytes(f, [(250, 10, 10), (10, 250, 10)])
    decodes = []
    real = D._decode_jpgbytes
    monkeypatch.setattr(D, "_decode_jpgbytes", lambda p: decodes.append(p) or real(p))
    a = load_dataset("cifar10", root=tmp_path)
    copies = list(D.decoded_cache_dir().glob("*.npz"))
    assert len(decodes) == 1 and len(copies) == 1 and D.decoded_cache_dir() == tmp_path / "xdg/cmlite/decoded"
    b = load_dataset("cifar10", root=tmp_path)
    assert len(decodes) == 1                                              # read back, not decoded
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    _write_jpgbytes(f, [(10, 10, 250), (10, 250, 10), (250, 10, 10)])    # another file: decoded anew
    c = load_dataset("cifar10", root=tmp_path)
    assert len(decodes) == 2 and len(c) == 3 and c.images[0, 2].float().mean() > 200
    copy = max(D.decoded_cache_dir().glob("*.npz"), key=lambda p: p.stat().st_mtime_ns)
    copy.write_bytes(copy.read_bytes()[:-200])                            # a damaged copy: decoded again
    assert torch.equal(load_dataset("cifar10", root=tmp_path).images, c.images) and len(decodes) == 3
    assert torch.equal(load_dataset("cifar10", root=tmp_path).images, c.images) and len(decodes) == 3
    (tmp_path / "not-a-folder").write_text("")                            # no cache folder: still loads
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    assert torch.equal(load_dataset("cifar10", root=tmp_path).images, c.images) and len(decodes) == 4


def _png(path, size=(6, 6), mode="RGB", value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(path)


def test_image_folder_classes_modes_and_sizes(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "dog" / "a.png", value=10)
    _png(root / "cat" / "b.jpg", value=20)
    _png(root / "cat" / "c.png", mode="L", value=30)
    d = load_dataset(f"folder:{root}")
    assert d.images.shape == (3, 3, 6, 6)                            # majority RGB: the L image converted
    assert d.labels.tolist() == [0, 0, 1] and d.num_classes == 2     # sorted classes: cat 0, dog 1
    assert d.images[1, :, 0, 0].tolist() == [30, 30, 30]                # cat/c.png: L -> grey RGB
    assert d.images[2, :, 0, 0].tolist() == [10, 0, 0] and abs(int(d.images[0, 0, 0, 0]) - 20) < 8

    flat = tmp_path / "flat"
    for i in range(2):
        _png(flat / f"{i}.bmp", mode="L", value=50 + i)
    f = load_dataset("folder", root=flat)
    assert f.images.shape == (2, 1, 6, 6) and f.labels is None and f.num_classes == 0

    _png(flat / "big.png", size=(10, 8), mode="L")
    with pytest.raises(ValueError, match="resolution="):
        load_dataset(f"folder:{flat}")
    r = load_dataset(f"folder:{flat}", resolution=4)
    assert r.images.shape == (3, 1, 4, 4)


def test_cifar_folder_fallback_uses_official_class_indices(tmp_path):
    _png(tmp_path / "cifar10" / "train" / "truck" / "0.png", size=(32, 32))
    _png(tmp_path / "cifar10" / "train" / "cat" / "0.png", size=(32, 32))
    d = load_dataset("cifar10", root=tmp_path)
    assert d.labels.tolist() == [3, 9] and d.num_classes == 10


def test_missing_data_lists_every_place_and_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("mnist", root=tmp_path / "nowhere")
    msg = str(e.value)
    assert "MNIST" in msg and "download=True" in msg and "mnist_uint8.npz" in msg
    for place in ["nowhere/mnist_uint8.npz", "nowhere/MNIST/raw/train-images-idx3-ubyte",
                  "nowhere/train-images-idx3-ubyte"]:
        assert place in msg
    monkeypatch.setenv("CMLITE_DATA", str(tmp_path / "envroot"))
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("cifar10")
    msg = str(e.value)
    for root in [tmp_path / "envroot", tmp_path / "data", tmp_path / "home" / ".cache" / "cmlite"]:
        assert f"{root}/cifar10_train_jpgbytes.npz" in msg and f"{root}/cifar-10-batches-py" in msg
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist", root=tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "torchvision", None)   # torchvision absent
    with pytest.raises(ImportError, match="pip install torchvision"):
        load_dataset("mnist", root=tmp_path, download=True)


def test_validation():
    with pytest.raises(ValueError):
        ImageData(torch.zeros(2, 1, 4, 4))                             # not uint8
    with pytest.raises(ValueError):
        ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3))
    with pytest.raises(ValueError):
        load_dataset("imagenet")


def test_subset_and_split_deterministic():
    d = synthetic_dataset(50, seed=1)
    tr, ho = d.split(10, seed=3)
    tr2, ho2 = d.split(10, seed=3)
    assert len(tr) == 40 and len(ho) == 10 and torch.equal(ho.images, ho2.images) and torch.equal(tr.labels, tr2.labels)
    both = torch.cat([tr.images, ho.images]).flatten(1)
    assert len({tuple(r.tolist()) for r in both}) == 50                 # disjoint, nothing lost
    assert torch.equal(d.subset([0, 2]).images, d.images[[0, 2]])


# ---------------------------------------------------------------------------------------------- batches
def _asym(n=10):
    """Images whose left half is bright and right half dark, so a flip is visible."""
    x = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    x[..., :2] = 255
    return ImageData(x, torch.arange(n) % 3)


def test_batches_range_dtype_shape_and_flips():
    d = synthetic_dataset(40, channels=3, resolution=8, seed=0)
    x, y = GPUBatches(d, 16, channels_last=True)()
    assert x.dtype == torch.float32 and x.shape == (16, 3, 8, 8) and y.dtype == torch.int64 and y.shape == (16,)
    assert x.min() >= -1 and x.max() <= 1 and x.is_contiguous(memory_format=torch.channels_last)
    a = _asym()
    for _ in range(3):                                                 # no flips unless asked
        x, _ = GPUBatches(a, 10)()
        assert (x[..., 0] == 1).all() and (x[..., -1] == -1).all()
    b = GPUBatches(a, 10, flip=True, seed=0)
    flipped = torch.cat([(b()[0][:, 0, 0, 0] == -1) for _ in range(20)]).float().mean()
    assert 0.3 < flipped < 0.7
    x = GPUBatches(ImageData(a.images), 4)()[0]
    assert set(x.unique().tolist()) == {-1.0, 1.0}
    assert GPUBatches(ImageData(a.images), 4)()[1] is None


def test_batches_epochs_deterministic_and_resumable():
    d = synthetic_dataset(10, seed=0)
    b = GPUBatches(d, 4, flip=True, seed=5)
    first = [b() for _ in range(3)]
    assert b.epoch == pytest.approx(1.2)
    c = GPUBatches(d, 4, flip=True, seed=5)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(first, (c() for _ in range(3))))
    assert not torch.equal(GPUBatches(d, 4, flip=True, seed=6)()[0], first[0][0])
    state = b.state_dict()
    ahead = [b() for _ in range(5)]
    r = GPUBatches(d, 4, flip=True, seed=99)
    r.load_state_dict(state)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(ahead, (r() for _ in range(5))))
    # each image once per epoch: labels of 10 images drawn in 10 = 2.5 batches of 4
    e = GPUBatches(ImageData(d.images, torch.arange(10)), 5, seed=2)
    assert sorted(torch.cat([e()[1], e()[1]]).tolist()) == list(range(10))


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_union_equals_single_process_big_batch(world_size):
    """Rank r's batch is the r-th slice of the single-process batch of size B * world_size, same seed."""
    d = ImageData(_asym(11).images * 0 + torch.arange(11, dtype=torch.uint8).view(-1, 1, 1, 1), torch.arange(11))
    d.images[..., :2] = 200                                           # asymmetric: flips matter
    B = 3
    single = GPUBatches(d, B * world_size, flip=True, seed=7)
    ranks = [GPUBatches(d, B, flip=True, seed=7, rank=r, world_size=world_size) for r in range(world_size)]
    for _ in range(6):                                                 # crosses several epoch ends (n = 11)
        xs, ys = single()
        parts = [g() for g in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), xs) and torch.equal(torch.cat([p[1] for p in parts]), ys)
    with pytest.raises(ValueError):
        GPUBatches(d, B, rank=2, world_size=2)


# ----------------------------------------------------------------------------------------------- output
def test_to_uint8_round_trip_grid_png_npz(tmp_path):
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(to_uint8(u.float() / 127.5 - 1), u)
    assert to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]
    imgs = synthetic_dataset(10, channels=3, resolution=8).images
    g = make_grid(imgs, nrow=4, padding=2)
    assert g.dtype == torch.uint8 and g.shape == (3, 3 * 10 + 2, 4 * 10 + 2)
    assert torch.equal(g[:, 2:10, 2:10], imgs[0]) and torch.equal(g[:, 12:20, 2:10], imgs[4])
    save_png(tmp_path / "out" / "g.png", g)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "g.png")), g.permute(1, 2, 0).numpy())
    g1 = make_grid(synthetic_dataset(3, channels=1, resolution=8).images, nrow=8)
    assert g1.shape == (1, 12, 32)
    save_png(tmp_path / "g1.png", g1)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g1.png")), g1[0].numpy())
    save_npz(tmp_path / "s.npz", imgs, labels=torch.arange(10))
    z = np.load(tmp_path / "s.npz")
    assert np.array_equal(z["images"], imgs.numpy()) and z["labels"].tolist() == list(range(10))


def test_synthetic_dataset_structure():
    d = synthetic_dataset(240, channels=1, resolution=16, num_classes=4, seed=0)
    assert torch.equal(d.images, synthetic_dataset(240, 1, 16, 4, seed=0).images)
    assert not torch.equal(d.images, synthetic_dataset(240, 1, 16, 4, seed=1).images)
    assert d.labels.bincount().tolist() == [60] * 4 and d.num_classes == 4
    bright = (d.images > 128).float().mean((1, 2, 3))
    assert (bright > 0.02).all() and (bright < 0.6).all()              # a shape on a dark background
    means = torch.stack([d.images[d.labels == k].float().mean(0) for k in range(4)])
    # classes differ in area: a bar covers less than a square
    area = torch.stack([bright[d.labels == k].mean() for k in range(4)])
    assert area[2] < area[1] and area[3] < area[1] and means.shape == (4, 1, 16, 16)
    rgb = synthetic_dataset(12, channels=3, resolution=8, num_classes=6)
    assert rgb.images.shape == (12, 3, 8, 8) and rgb.labels.max() == 5
