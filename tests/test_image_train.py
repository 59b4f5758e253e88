"""Image training on a CPU at tiny size: recipes through the core Trainer, exact resume, NaN handling,
refused checkpoints, class labels, and the train / sample / eval commands."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from cmlite.image.data import GPUBatches, ImageData, synthetic_dataset
from cmlite.image.recipes import RECIPES, build, build_net, get_recipe
from cmlite.image.run import load_run, sample_images, train
from cmlite.training import NotACheckpointError, Trainer, load_checkpoint


def _trainer(recipe_name="tiny-ict", steps=6, **over):
    r = get_recipe(recipe_name).with_overrides([f"train.{k}={v!r}" for k, v in over.items()])
    r.train.steps = steps
    data = synthetic_dataset(64, channels=1, resolution=16, num_classes=4, seed=0)
    data = ImageData(data.images, None, 0, "synthetic")  # unconditional: no labels to the model
    torch.manual_seed(0)
    net = build_net(r, 1, 16)
    model, loss, schedule = build(r, net, steps=steps)
    src = GPUBatches(data, r.train.batch_size, "cpu", flip=True, seed=0)
    return Trainer(model, loss, src, r.train, schedule, meta={"recipe": r.name})


def test_every_recipe_builds_and_names_its_method():
    for name, r in RECIPES.items():
        assert r.method in name and r.dataset
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("mnist-nope")
    with pytest.raises(ValueError, match="unknown recipe field"):
        get_recipe("tiny-ct").with_overrides(["train.nope=1"])
    assert get_recipe("tiny-ct").with_overrides(["train.lr=0.5", "N=7"]).train.lr == 0.5


def test_resume_k_plus_k_equals_2k_bitwise(tmp_path):
    # dropout, flips, lognormal indices and the iCT curriculum all draw random numbers: all must resume exactly
    full = _trainer(steps=8)
    full.fit(progress=False)
    half = _trainer(steps=8)
    for _ in half.steps(4):
        pass
    half.save(tmp_path / "c.pt")
    resumed = _trainer(steps=8)
    resumed.load(tmp_path / "c.pt")
    resumed.fit(progress=False)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)


def test_nan_loss_names_the_step_and_keeps_the_last_checkpoint(tmp_path):
    tr = _trainer(steps=20, log_every=5)
    tr.fit(steps=5, progress=False, checkpoint=tmp_path / "c.pt")
    before = (tmp_path / "c.pt").read_bytes()
    with torch.no_grad():  # poison the network: every later loss is NaN
        next(tr.model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="at step 5"):
        tr.fit(progress=False, checkpoint=tmp_path / "c.pt")
    assert (tmp_path / "c.pt").read_bytes() == before


def test_checkpoint_from_another_recipe_or_shape_is_refused(tmp_path):
    tr = _trainer("tiny-ict", steps=2)
    tr.fit(progress=False)
    tr.save(tmp_path / "c.pt")
    other = _trainer("tiny-ct", steps=2)
    with pytest.raises(ValueError, match="meta.recipe"):
        other.load(tmp_path / "c.pt")
    wide = _trainer("tiny-ict", steps=2)
    wide.meta = {}
    sd = load_checkpoint(tmp_path / "c.pt")
    sd["model"] = {k: torch.zeros(3) for k in sd["model"]}
    with pytest.raises(ValueError, match="do not fit"):
        wide.load_state_dict(sd)


def test_non_checkpoint_files_get_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(NotACheckpointError, match="not a readable cmlite checkpoint") as e:
        load_checkpoint(bad)
    assert "weights_only=False" not in str(e.value)
    torch.save({"hello": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(NotACheckpointError):
        load_checkpoint(tmp_path / "other.pt")


def test_resume_with_a_different_config_is_refused_naming_the_field(tmp_path):
    tr = _trainer(steps=2)
    tr.fit(progress=False)
    tr.save(tmp_path / "c.pt")
    other = _trainer(steps=2, lr=0.123)
    with pytest.raises(ValueError, match="lr: checkpoint"):
        other.load(tmp_path / "c.pt")
    other.load(tmp_path / "c.pt", strict_config=False)  # the explicit override


def test_class_conditional_training_and_sampling(tmp_path):
    r = get_recipe("tiny-teacher").with_overrides(["conditional=True"])
    summary = train(r, tmp_path / "run", steps=3, progress=False)
    assert summary["num_classes"] == 4
    model, info = load_run(tmp_path / "run")
    assert model.net.config.num_classes == 4
    imgs = sample_images(model, info, 8, steps=2, class_labels=torch.arange(8) % 4)
    assert imgs.shape == (8, 1, 16, 16) and imgs.dtype == torch.uint8


def test_train_refuses_existing_run_and_cd_without_teacher(tmp_path):
    train(get_recipe("tiny-ct"), tmp_path / "run", steps=2, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(get_recipe("tiny-ct"), tmp_path / "run", steps=2, progress=False)
    with pytest.raises(ValueError, match="--teacher"):
        train(get_recipe("tiny-cd"), tmp_path / "cd", steps=2, progress=False)
    with pytest.raises(ValueError, match="belongs to recipe"):
        train(get_recipe("tiny-ict"), tmp_path / "run", steps=2, progress=False, resume=True)


def _cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "cmlite", *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


@pytest.mark.slow
def test_cli_train_resume_sample_eval(tmp_path):
    _cli("train", "tiny-teacher", "--out", "runs/t", "--steps", "30", "--quiet", cwd=tmp_path)
    _cli("train", "tiny-cd", "--out", "runs/cd", "--teacher", "runs/t", "--steps", "4", "--quiet", cwd=tmp_path)
    _cli("train", "tiny-cd", "--out", "runs/cd", "--teacher", "runs/t", "--steps", "8", "--resume", "--quiet",
         cwd=tmp_path)
    info = json.loads((tmp_path / "runs/cd/recipe.json").read_text())
    assert info["steps"] == 8 and (tmp_path / "runs/cd/ema.safetensors").is_file()
    out = _cli("sample", "runs/cd", "--n", "12", "--steps", "2", "--out", "s.npz", cwd=tmp_path)
    assert "12 samples" in out
    imgs = np.load(tmp_path / "s.npz")["images"]
    assert imgs.shape == (12, 1, 16, 16) and imgs.dtype == np.uint8 and (tmp_path / "s.png").is_file()
    res = json.loads(_cli("eval", "runs/cd", "--n", "48", "--inception", "no", "--json", cwd=tmp_path))
    assert [r["nfe"] for r in res["rows"]] == [1, 2]
    assert all(r["fid_classifier"] > 0 and r["floor_classifier"] >= 0 for r in res["rows"])
    # several runs in one call share the data set's classifier and reference statistics: same numbers
    both = json.loads(_cli("eval", "runs/t", "runs/cd", "--n", "48", "--inception", "no", "--json", cwd=tmp_path))
    assert [b["recipe"] for b in both] == ["tiny-teacher", "tiny-cd"]
    assert [r["nfe"] for r in both[0]["rows"]] == [2, 4, 8, 18, 34]
    assert [r["fid_classifier"] for r in both[1]["rows"]] == [r["fid_classifier"] for r in res["rows"]]


def _one_step(recipe_name: str, precision: str, channels_last: bool, compiled: bool = False):
    """Loss and flattened gradient of the first training step of a tiny recipe: same batch, same noise,
    same initial weights whatever the speed options."""
    teacher = None
    if recipe_name == "tiny-cd":
        torch.manual_seed(5)
        from cmlite.parameterization import EDMDenoiser
        teacher = EDMDenoiser(build_net(get_recipe("tiny-teacher"), 1, 16)).eval()
    r = get_recipe(recipe_name).with_overrides([f"train.precision={precision!r}", f"train.channels_last={channels_last}",
                                                f"train.compile={compiled}"])
    torch.manual_seed(0)
    net = build_net(r, 1, 16)
    with torch.no_grad():  # move the near-zero output layers away from zero so that the loss sees the net
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model, loss, schedule = build(r, net, teacher=teacher, steps=10)
    data = synthetic_dataset(64, channels=1, resolution=16, num_classes=4, seed=0)
    src = GPUBatches(ImageData(data.images, None, 0, "s"), 16, "cpu", seed=0, channels_last=channels_last)
    r.train.batch_size, r.train.log_every = 16, 1
    tr = Trainer(model, loss, src, r.train, schedule)
    rec = tr.train_step()
    return rec["loss"], torch.cat([p.grad.flatten() for p in tr.model.parameters()])


@pytest.mark.parametrize("recipe_name", ["tiny-teacher", "tiny-ct", "tiny-cd"])
def test_fast_step_matches_fp32_eager_step(recipe_name):
    # The speed options (bf16 autocast, channels_last) must compute the same training step as fp32 eager.
    # bf16 keeps 8 mantissa bits (relative rounding 2^-8 = 0.4% per operation); through a few dozen layers
    # the loss moves by ~1e-2 relative, far below the change that a real bug makes (a wrong scaling or
    # layout changes the loss by O(1)); gradients likewise (5e-2, relative L2 of the whole gradient).
    loss0, grad0 = _one_step(recipe_name, "fp32", False)
    loss1, grad1 = _one_step(recipe_name, "bf16", True)
    assert loss1 == pytest.approx(loss0, rel=3e-2), (loss0, loss1)
    assert float((grad1 - grad0).norm() / grad0.norm()) < 5e-2


def test_compiled_step_matches_fp32_eager_step():
    # torch.compile (Inductor, with the channels-last layout that cmlite.training.compile_net forces) must
    # compute the eager step to float rounding: Inductor fuses and reorders reductions (~1e-6 relative per
    # op, a few dozen ops deep), while a wrong fusion, layout or dropped term moves the loss by O(1).
    # CT covers the online forward + backward and the target's forward. (bf16 + channels_last is the
    # previous test; a bf16 compile on top adds only the same rounding, and a minute of CPU compile.)
    loss0, grad0 = _one_step("tiny-ct", "fp32", False)
    loss_c, grad_c = _one_step("tiny-ct", "fp32", True, compiled=True)
    assert loss_c == pytest.approx(loss0, rel=1e-4), (loss0, loss_c)
    assert float((grad_c - grad0).norm() / grad0.norm()) < 1e-3


def test_cuda_graphs_compile_the_trained_networks_in_reduce_overhead_mode(monkeypatch):
    """train.cuda_graphs=True compiles the online and target networks with Inductor's 'reduce-overhead'
    options (CUDA graphs on a GPU; a CPU run skips the graphs), and only in one process."""
    import cmlite.training as training_mod
    from cmlite.training import inductor_options
    assert inductor_options(mode="reduce-overhead")["triton.cudagraphs"] is True
    modes = []
    monkeypatch.setattr(training_mod, "compile_net", lambda net, cl=False, mode=None, extra=None: modes.append(mode))
    _trainer(compile=True, cuda_graphs=True)
    _trainer(compile=True)
    assert modes == ["reduce-overhead"] * 2 + [None] * 2
    monkeypatch.setattr(training_mod, "world", lambda: (0, 2))   # as under torchrun
    with pytest.raises(ValueError, match="one process"):
        _trainer(compile=True, cuda_graphs=True)


def test_sample_grid_callback_writes_the_ema_samples(tmp_path):
    from PIL import Image
    from cmlite.image.callbacks import SampleGrid
    tr = _trainer(steps=4)
    grid = SampleGrid((1, 16, 16), n=6, nrow=3, path=tmp_path / "g.png", show=False)
    tr.fit(progress=False, callback=grid, callback_every=2)
    im = np.asarray(Image.open(tmp_path / "g.png"))
    assert im.shape[:2] == tuple(grid.last.shape[1:]) and grid.last.dtype == torch.uint8
    # the grid is the EMA network's one-step samples for the grid's fixed noise
    from cmlite.image.data import to_uint8
    from cmlite.sampling import multistep_sample
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        expected = to_uint8(multistep_sample(tr.ema, 80.0 * torch.randn((6, 1, 16, 16), generator=g), [80.0]))
    assert torch.equal(grid.images(tr.ema, tr.device), expected)
