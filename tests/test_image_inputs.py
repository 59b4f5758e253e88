"""Bad input files and arrays get a clear error that names the file and says what was wrong: corrupt or truncated
data files (MNIST npz and idx, CIFAR-10's JPEG archive and python batches, image folders), a damaged
ema.safetensors, and images to edit of the wrong shape, dtype or range (read by `cmlite edit` or given to
cmlite.image.edit)."""
import gzip
import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from cmlite.image import edit as E
from cmlite.image.data import check_images, load_dataset, read_images, save_npz


# no default data root of the machine is searched (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("isolated_data_roots")


def _truncate(path, keep=0.5):
    raw = path.read_bytes()
    path.write_bytes(raw[:int(len(raw) * keep)])


def _mnist_npz(path, n=20):
    g = np.random.default_rng(0)
    np.savez(path, x_train=g.integers(0, 256, (n, 28, 28), dtype=np.uint8), y_train=g.integers(0, 10, n),
             x_test=g.integers(0, 256, (4, 28, 28), dtype=np.uint8), y_test=g.integers(0, 10, 4))


# --------------------------------------------------------------------------------------------- data files
def test_truncated_or_incomplete_mnist_npz_names_the_file(tmp_path):
    f = tmp_path / "mnist_uint8.npz"
    _mnist_npz(f)
    _truncate(f)
    with pytest.raises(ValueError, match=r"mnist_uint8\.npz: not a readable \.npz file.*corrupt or truncated"):
        load_dataset("mnist", root=tmp_path)
    np.savez(f, x_train=np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"mnist_uint8\.npz: no array y_train \(it holds x_train\)"):
        load_dataset("mnist", root=tmp_path)


def test_truncated_idx_file_names_the_file(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    for name, arr in (("train-images-idx3-ubyte.gz", x), ("train-labels-idx1-ubyte.gz", np.arange(5, dtype=np.uint8))):
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())
    assert len(load_dataset("mnist", root=tmp_path)) == 5
    raw = gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-100])                                            # a valid gzip of a cut idx file
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: 3820 bytes of data for an array of "
                                         r"shape \(5, 28, 28\) \(3920 bytes\)"):
        load_dataset("mnist", root=tmp_path)
    _truncate(tmp_path / "train-images-idx3-ubyte.gz")                 # a cut gzip stream
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: cannot read this idx file"):
        load_dataset("mnist", root=tmp_path)


def _jpg(rgb):
    import io
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), rgb).save(buf, format="JPEG", quality=95)
    return np.frombuffer(buf.getvalue(), np.uint8)


def test_corrupt_cifar10_jpeg_archive_names_the_file_and_the_image(tmp_path):
    f = tmp_path / "cifar10_train_jpgbytes.npz"
    blobs = [_jpg((200, 0, 0)), np.frombuffer(b"not a jpeg at all" * 20, np.uint8)]
    off = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    np.savez(f, data=np.concatenate(blobs), offsets=off, labels=np.array([0, 1], np.uint8))
    with pytest.raises(ValueError, match=r"cifar10_train_jpgbytes\.npz: image 1 \(bytes \d+\.\.\d+\) is not a "
                                         r"readable JPEG"):
        load_dataset("cifar10", root=tmp_path)
    np.savez(f, data=np.concatenate(blobs[:1]), offsets=np.array([0, 10 ** 6]), labels=np.array([0], np.uint8))
    with pytest.raises(ValueError, match=r"cifar10_train_jpgbytes\.npz: 2 offsets \(increasing, within the"):
        load_dataset("cifar10", root=tmp_path)
    np.savez(f, data=np.concatenate(blobs[:1]), offsets=off[:2], labels=np.array([0], np.uint8))
    _truncate(f)
    with pytest.raises(ValueError, match=r"cifar10_train_jpgbytes\.npz: not a readable \.npz file"):
        load_dataset("cifar10", root=tmp_path)


def test_corrupt_cifar10_python_batch_names_the_file(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        (d / name).write_bytes(b"\x80\x04garbage, not a pickle")
    with pytest.raises(ValueError, match=r"data_batch_1: not a CIFAR-10 python batch"):
        load_dataset("cifar10", root=tmp_path)


def test_corrupt_images_in_a_folder_name_the_file(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(3):
        Image.new("L", (8, 8), 10 * i).save(root / f"{i}.png")
    assert len(load_dataset(f"folder:{root}")) == 3
    _truncate(root / "1.png", 0.6)                                     # header readable, pixel data cut
    with pytest.raises(ValueError, match=r"1\.png: cannot decode this image.*corrupt or truncated"):
        load_dataset(f"folder:{root}")
    (root / "1.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"1\.png: not a readable image"):
        load_dataset(f"folder:{root}")


def test_damaged_ema_safetensors_names_the_file(tmp_path):
    from safetensors.torch import save_file
    from cmlite.image.recipes import build_net, get_recipe
    from cmlite.image.run import load_run
    run = tmp_path / "run"
    run.mkdir()
    recipe = get_recipe("tiny-ct")
    (run / "recipe.json").write_text(json.dumps({"recipe": recipe.to_dict(), "shape": [1, 16, 16], "num_classes": 0}))
    net = build_net(recipe, 1, 16)
    save_file({f"net.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(run / "ema.safetensors"))
    load_run(run)                                                      # the intact file loads
    for damage in ("truncate", "garbage"):
        if damage == "truncate":
            _truncate(run / "ema.safetensors", 0.7)
        else:
            (run / "ema.safetensors").write_bytes(b"\x00" * 100)
        with pytest.raises(ValueError, match=r"ema\.safetensors: not a readable safetensors file.*corrupt or "
                                             r"truncated"):
            load_run(run)


# ------------------------------------------------------------------------------------------ images to edit
def test_read_images_errors_name_the_file_and_the_fix(tmp_path):
    imgs = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    save_npz(tmp_path / "ok.npz", imgs)
    assert torch.equal(read_images([str(tmp_path / "ok.npz")]), imgs)
    cases = {
        "float.npz": (dict(images=imgs.numpy().astype(np.float32) / 127.5 - 1), r"float.npz: `images` must be uint8.*"
                      r"\(floats in \[-1, 1\]: save"),
        "int64.npz": (dict(images=imgs.numpy().astype(np.int64)), r"int64.npz: `images` must be uint8 .* got int64"),
        "hwc.npz": (dict(images=imgs.numpy().transpose(0, 2, 3, 1).repeat(3, -1)), r"hwc.npz: .*channels last\?"),
        "nokey.npz": (dict(x=imgs.numpy()), r"nokey.npz: no array images \(it holds x\).*under the name `images`"),
    }
    for name, (arrays, msg) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(ValueError, match=msg):
            read_images([str(tmp_path / name)])
    _truncate(tmp_path / "ok.npz")
    with pytest.raises(ValueError, match=r"ok.npz: not a readable \.npz file"):
        read_images([str(tmp_path / "ok.npz")])
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    Image.new("L", (6, 8)).save(tmp_path / "b.png")
    (tmp_path / "c.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="different shapes"):
        read_images([str(tmp_path / "a.png"), str(tmp_path / "b.png")])
    with pytest.raises(ValueError, match=r"c.png: not a readable image file"):
        read_images([str(tmp_path / "a.png"), str(tmp_path / "c.png")])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_images([str(tmp_path / "missing.png")])


def test_edit_inputs_of_the_wrong_dtype_shape_or_range_are_refused():
    shape = (1, 8, 8)
    good = torch.rand(2, 1, 8, 8) * 2 - 1
    E.problem_from_input("inpaint", good, shape)                        # floats in [-1, 1]: fine
    with pytest.raises(ValueError, match=r"float images must lie in \[-1, 1\].*\[0, 255\] pixel values"):
        E.problem_from_input("inpaint", good * 127.5 + 127.5, shape)
    with pytest.raises(ValueError, match=r"torch.int32 images"):
        E.problem_from_input("inpaint", torch.zeros(2, 1, 8, 8, dtype=torch.int32), shape)
    with pytest.raises(ValueError, match="NaN or inf"):
        E.problem_from_input("inpaint", good.masked_fill(good > 0.5, float("nan")), shape)
    with pytest.raises(ValueError, match=r"shape \(n, C, H, W\) or \(n, H, W\)"):
        E.problem_from_input("inpaint", torch.zeros(8, 8, dtype=torch.uint8), shape)
    with pytest.raises(ValueError, match="model makes 1x8x8"):
        E.problem_from_input("inpaint", torch.zeros(2, 3, 8, 8, dtype=torch.uint8), shape)
    noisy = good + 0.5 * torch.randn(2, 1, 8, 8)                       # an observed noisy image may leave [-1, 1]
    E.problem_from_input("denoise", noisy * 2, shape, observed=True, sigma=0.5)
    with pytest.raises(ValueError, match="must lie in"):
        check_images(noisy * 2)


def test_edit_takes_uint8_images_in_0_255():
    """uint8 references are scaled to [-1, 1] (not used as floats in [0, 255]): the same result as the floats."""
    f = lambda x, t: torch.tanh(x) * 0.9  # noqa: E731  (a stand-in f_theta)
    f.eps, f.T = 0.002, 80.0
    u8 = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    kw = dict(mask="box", ts=[80.0, 1.0])
    a = E.edit(f, "inpaint", u8, generator=torch.Generator().manual_seed(1), **kw)
    b = E.edit(f, "inpaint", u8.float() / 127.5 - 1, generator=torch.Generator().manual_seed(1), **kw)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        E.edit(f, "inpaint", u8.float(), **kw)


def test_cmlite_edit_reports_a_corrupt_input_file_without_a_traceback(tmp_path, monkeypatch, capsys):
    from cmlite.cli import main
    from cmlite.image import run as R
    from cmlite.image.recipes import build_net, get_recipe
    from cmlite.parameterization import ConsistencyModel
    recipe = get_recipe("tiny-ct")
    info = {"recipe": recipe.to_dict(), "shape": [1, 16, 16], "num_classes": 0}
    model = ConsistencyModel(build_net(recipe, 1, 16)).eval()
    monkeypatch.setattr(R, "load_run", lambda run, device="cpu": (model, info))
    save_npz(tmp_path / "in.npz", torch.zeros(2, 1, 16, 16, dtype=torch.uint8))
    _truncate(tmp_path / "in.npz")
    assert main(["edit", str(tmp_path), "inpaint", "--input", str(tmp_path / "in.npz"), "--out",
                 str(tmp_path / "o.npz"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "cmlite edit: error:" in err and "in.npz: not a readable .npz file" in err and "Traceback" not in err
