"""The committed fp16 MNIST models load and sample on a CPU (pretrained/, see its README)."""
from pathlib import Path

import json

import pytest
import torch

from cmlite.cli import main
from cmlite.image.run import load_run, sample_images

ROOT = Path(__file__).resolve().parents[1] / "pretrained"
RUNS = ("mnist-teacher", "mnist-cd", "mnist-sct")


@pytest.mark.parametrize("name", RUNS)
def test_pretrained_folder_is_small_fp16_and_documented(name):
    from safetensors import safe_open
    run = ROOT / name
    weights = run / "ema.safetensors"
    assert weights.stat().st_size <= 4 * 2 ** 20, "pretrained weights must stay under 4 MiB"
    with safe_open(str(weights), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.float16}
    ev = json.loads((run / "eval.json").read_text())
    assert all("fid_inception" in r and "floor_inception" in r for r in ev["rows"])


def test_pretrained_cd_samples_digits_on_cpu():
    """One-step samples of the CD model look like MNIST, not like noise: MNIST has ~19% of its pixels above
    128 and ~80% at exactly 0 (dark background). Noise or a blank image misses both bands by far; the
    bands below are wide (a 16-image sample of 12,544 pixels has a standard error under 1%)."""
    torch.manual_seed(0)
    model, info = load_run(ROOT / "mnist-cd", "cpu")
    assert next(model.parameters()).dtype == torch.float32      # fp16 on disk, fp32 in memory
    imgs = sample_images(model, info, 16, steps=1, device="cpu", seed=0)
    assert imgs.shape == (16, 1, 28, 28) and imgs.dtype == torch.uint8
    bright = (imgs > 128).float().mean().item()
    dark = (imgs < 32).float().mean().item()
    assert 0.08 < bright < 0.35, bright
    assert dark > 0.6, dark


@pytest.mark.parametrize("name", ["mnist-cd", "mnist-sct"])
def test_cmlite_sample_and_edit_load_the_pretrained_consistency_models_on_cpu(name, tmp_path, capsys):
    """`cmlite sample` writes uint8 digits-shaped samples, and `cmlite edit` inpaints them keeping the known
    pixels exactly (Algorithm 4 replaces them at every step; float32 leaves them unchanged)."""
    import numpy as np
    samples = tmp_path / "s.npz"
    assert main(["sample", str(ROOT / name), "--n", "8", "--steps", "1", "--device", "cpu", "--out", str(samples)]) == 0
    imgs = np.load(samples)["images"]
    assert imgs.shape == (8, 1, 28, 28) and imgs.dtype == np.uint8
    edited = tmp_path / "e.npz"
    assert main(["edit", str(ROOT / name), "inpaint", "--input", str(samples), "--device", "cpu",
                 "--out", str(edited)]) == 0
    z = np.load(edited)
    assert z["images"].shape == (8, 1, 28, 28) and float(z["known_part_error"]) < 1e-5
    assert "known part kept" in capsys.readouterr().out
