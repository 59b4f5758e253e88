"""The continuous-time image recipes (tiny-cct, tiny-sct, tiny-ect; cmlite.continuous through
cmlite.image.recipes.build and the core Trainer) on a CPU: a few steps through the run API and the command
line, exact resume, the losses' own metrics in history.json, the speed options, data parallelism, and clear
errors for settings that cannot work."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from cmlite.continuous import ContinuousCTLoss, ECTLoss, SCTLoss
from cmlite.image.data import GPUBatches, ImageData, synthetic_dataset
from cmlite.image.recipes import RECIPES, build, build_net, get_recipe
from cmlite.image.run import load_run, train
from cmlite.schedules import ECTSchedule, TangentWarmupSchedule
from cmlite.training import Trainer, load_checkpoint

CONTINUOUS = ["tiny-cct", "tiny-sct", "tiny-ect"]
# each loss's metrics (besides the loss): what history.json must hold
METRICS = {"tiny-cct": {"tangent_rms", "weight"},
           "tiny-sct": {"tangent_rms", "residual", "warmup", "adaptive_weight"},
           "tiny-ect": {"gap", "boundary_share"}}


def _trainer(name, steps=6, dropout=0.1, batch_size=8):
    """A tiny continuous recipe's Trainer on 64 synthetic images, with dropout (the losses replay the RNG so
    that their passes share the masks: resume must restore that too)."""
    r = get_recipe(name).with_overrides([f"train.batch_size={batch_size}", f"net_overrides.dropout={dropout}"])
    r.train.steps = steps
    data = synthetic_dataset(64, channels=1, resolution=16, num_classes=4, seed=0)
    torch.manual_seed(0)
    model, loss, schedule = build(r, build_net(r, 1, 16), steps=steps)
    src = GPUBatches(ImageData(data.images, None, 0, "synthetic"), r.train.batch_size, "cpu", flip=True, seed=0)
    return Trainer(model, loss, src, r.train, schedule, meta={"recipe": r.name})


def test_recipes_build_the_continuous_losses():
    want = {"cct": (ContinuousCTLoss, type(None)), "sct": (SCTLoss, TangentWarmupSchedule),
            "ect": (ECTLoss, ECTSchedule)}
    names = {n for n, r in RECIPES.items() if r.method in want}
    assert {"tiny-cct", "tiny-sct", "tiny-ect", "mnist-sct", "mnist-ect", "cifar10-sct", "cifar10-ect"} <= names
    for name in sorted(names):
        r = get_recipe(name)
        with torch.device("meta"):
            net = build_net(r, 1 if "mnist" in name or name.startswith("tiny") else 3,
                            r.net_overrides.get("img_resolution", 28 if "mnist" in name else 32))
        model, loss, schedule = build(r, net, steps=1000)
        assert isinstance(loss, want[r.method][0]) and isinstance(schedule, want[r.method][1]), name
        assert model.parameterization == ("trigflow" if r.method == "sct" else "skip")
        if r.method == "sct":
            assert model.weight_net is not None and not r.init_from_teacher
            assert schedule.warmup_steps == 100                     # tangent_warmup = 0.1 of K
        if r.method == "ect":
            assert (schedule.K, schedule.stages, schedule.q) == (1000, 8, 2)
    # MNIST's continuous recipes use the network of the other MNIST recipes
    assert get_recipe("mnist-sct").net == get_recipe("mnist-ect").net == get_recipe("mnist-ict").net
    assert get_recipe("cifar10-sct").net == get_recipe("cifar10-ict").net


def test_continuous_recipes_refuse_settings_that_cannot_work():
    r = get_recipe("tiny-sct")
    net = build_net(r, 1, 16)
    with pytest.raises(ValueError, match="tangent_c > 0"):
        build(r.with_overrides(["tangent_c=None"]), net)
    with pytest.raises(ValueError, match="from scratch"):
        build(r.with_overrides(["init_from_teacher=True"]), net, teacher=torch.nn.Identity())
    with pytest.raises(ValueError, match="fraction"):
        build(r.with_overrides(["tangent_warmup=2.0"]), net)
    with pytest.raises(ValueError, match="lognormal"):
        build(get_recipe("tiny-cct").with_overrides(["weighting='uniform'"]), net)
    with pytest.raises(ValueError, match="tangent_c.*must be a number or None"):
        get_recipe("tiny-cct").with_overrides(["tangent_c='big'"])


@pytest.mark.parametrize("name", CONTINUOUS)
def test_resume_k_plus_k_equals_2k_bitwise(tmp_path, name):
    # noise, times, flips, dropout (replayed between the loss's passes) and the schedules all draw random
    # numbers or depend on the step: all must resume exactly
    full = _trainer(name, steps=6)
    full.fit(progress=False)
    half = _trainer(name, steps=6)
    for _ in half.steps(3):
        pass
    half.save(tmp_path / "c.pt")
    resumed = _trainer(name, steps=6)
    resumed.load(tmp_path / "c.pt")
    resumed.fit(progress=False)
    for part in ("model", "ema"):
        for (k, a), b in zip(getattr(full, part).state_dict().items(), getattr(resumed, part).state_dict().values()):
            assert torch.equal(a, b), f"{part}.{k}"
    assert full.history == resumed.history
    # and it trained: the weights moved away from the initial ones
    init = _trainer(name, steps=6).model.state_dict()
    assert any(not torch.equal(init[k], v) for k, v in full.model.state_dict().items())


@pytest.mark.parametrize("name", CONTINUOUS)
def test_run_api_trains_writes_metrics_and_samples(tmp_path, name):
    s = train(get_recipe(name).with_overrides(["train.batch_size=8"]), tmp_path / "run", steps=6, progress=False)
    assert s["steps"] == 6 and s["status"] == "done"
    h = json.loads((tmp_path / "run" / "history.json").read_text())
    assert METRICS[name] <= set(h), sorted(h)
    assert h["step"] == [0, 5]                                   # log_every = 5 (and step 0)
    for k in METRICS[name]:
        assert all(isinstance(v, float) and v == v for v in h[k]), (k, h[k])
    if name == "tiny-sct":
        assert h["warmup"] == [0.0, 1.0]                         # r ramps over 0.1 of K = 6: round(0.6) = 1 step
        assert h["N"] == h["warmup"]                             # the schedule's r goes in the N slot
    if name == "tiny-ect":
        assert h["N"] == [2, 2 ** 6] and all(0 < g <= 1 for g in h["gap"])  # K = 6 in 8 stages: q^(k+1)
    for k in ("tangent_rms",):
        if k in h:
            assert all(v > 0 for v in h[k])
    assert (tmp_path / "run" / "samples.png").is_file()
    model, info = load_run(tmp_path / "run")                     # the EMA weights, adaptive weight included
    assert model.parameterization == ("trigflow" if name == "tiny-sct" else "skip")
    with torch.no_grad():
        x = model(80.0 * torch.randn(2, 1, 16, 16), 80.0)
    assert x.shape == (2, 1, 16, 16) and torch.isfinite(x).all()


def test_run_stopped_by_a_signal_resumes_exactly(tmp_path):
    """sCT through the run API: SIGINT after step 3 of K = 6 (the run writes its checkpoint and stops), then
    ``resume=True``: weights, history (the warm-up r and every metric) equal one uninterrupted run's."""
    recipe = get_recipe("tiny-sct").with_overrides(["train.batch_size=8", "net_overrides.dropout=0.1"])

    def interrupt(tr):
        if tr.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "a", steps=6, progress=False, callback=interrupt, callback_every=1)
    assert load_checkpoint(tmp_path / "a" / "checkpoint.pt")["step"] == 3
    train(recipe, tmp_path / "a", resume=True, progress=False)
    train(recipe, tmp_path / "b", steps=6, progress=False)
    ha, hb = (json.loads((tmp_path / d / "history.json").read_text()) for d in "ab")
    assert ha == hb and ha["warmup"] == [0.0, 1.0]
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in "ab")
    assert a["step"] == b["step"] == 6
    for part in ("model", "ema"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), f"{part}.{k}"


@pytest.mark.slow
def test_cmlite_train_command(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "cmlite", "train", "tiny-ect", "--out", "run", "--steps", "2",
                        "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    h = json.loads((tmp_path / "run" / "history.json").read_text())
    assert {"gap", "boundary_share"} <= set(h) and h["step"] == [0]


def _one_step(name, precision, channels_last, compiled=False, dropout=0.0):
    """Loss and gradient of the first step of a tiny continuous recipe (weights moved off their near-zero
    initialisation, so that the losses see the network)."""
    r = get_recipe(name).with_overrides([f"train.precision={precision!r}", f"train.channels_last={channels_last}",
                                         f"train.compile={compiled}", f"net_overrides.dropout={dropout}"])
    torch.manual_seed(0)
    net = build_net(r, 1, 16)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model, loss, schedule = build(r, net, steps=10)
    data = synthetic_dataset(64, channels=1, resolution=16, num_classes=4, seed=0)
    src = GPUBatches(ImageData(data.images, None, 0, "s"), 16, "cpu", seed=0, channels_last=channels_last)
    r.train.batch_size, r.train.log_every = 16, 1
    tr = Trainer(model, loss, src, r.train, schedule)
    rec = tr.train_step()
    return rec["loss"], torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None])


@pytest.mark.parametrize("name", CONTINUOUS)
def test_bf16_channels_last_step_matches_fp32(name):
    # bf16 autocast + channels-last (the GPU recipes' settings) through the JVP (cct, sct) or the pair of
    # passes (ect): the same step as fp32 contiguous, to bf16 rounding (2^-8 per op, a few dozen layers:
    # ~1e-2 relative; measured <= 6e-3 for the gradient). The loss of cct is a pseudo-objective near 0, so
    # its tolerance is absolute, on the scale of its gradient's size (~1e-2 of a loss of order 0.04).
    loss0, grad0 = _one_step(name, "fp32", False)
    loss1, grad1 = _one_step(name, "bf16", True)
    assert abs(loss1 - loss0) <= 3e-2 * max(abs(loss0), 0.05), (loss0, loss1)
    assert float((grad1 - grad0).norm() / grad0.norm()) < 5e-2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-sct", "tiny-cct"])
def test_compiled_continuous_step_matches_eager_step(name):
    # Compiled, an sCT (or cCT) step is two Inductor graphs: the network's (forward and backward) and one compiled
    # torch.func.jvp for the tangent, both with torch's own random ops (fallback_random), so that after the
    # loss's RNG replay both drop the same units. The step must equal the eager one to float rounding
    # (Inductor fuses and reorders reductions: ~1e-6 relative per op, a few dozen ops deep; measured 8e-8 on
    # the gradient). With dropout 0.1, masks drawn by Inductor's own RNG (JVP_COMPILE_OPTIONS emptied) differ
    # between the two graphs: measured 1.5e-2 on the gradient, 15 times the tolerance (the loss, near its
    # minimum at initialisation, moves by only 1.4e-4).
    # cCT's JVP runs through the consistency model's wrapper: 2.6e-7 on the gradient, and 0.13 without
    # fallback_random.
    # cCT's loss is a pseudo-objective near 0: its tolerance is absolute, on the scale of the loss.
    # Run after sCT in one process, cCT recompiles the JVP function (another module): with automatic
    # dynamic shapes that recompilation made the sizes symbolic and forward-mode AD failed to trace.
    loss0, grad0 = _one_step(name, "fp32", True, dropout=0.1)
    loss_c, grad_c = _one_step(name, "fp32", True, compiled=True, dropout=0.1)
    assert abs(loss_c - loss0) <= 1e-4 * max(abs(loss0), 0.05), (loss0, loss_c)
    assert float((grad_c - grad0).norm() / grad0.norm()) < 1e-3


DDP_WORKER = r"""
import sys, torch
torch.set_num_threads(1)
from cmlite.image.recipes import get_recipe
from cmlite.image.run import train
out, dump = sys.argv[1], sys.argv[2]
def keep(tr):
    if tr.step == 2:
        torch.save({"rank": tr.rank, "model": tr.model.state_dict()}, dump)
train(get_recipe("tiny-sct").with_overrides(["train.batch_size=16"]), out, steps=2, progress=False, callback=keep,
      callback_every=2)
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_sct_trains_data_parallel(tmp_path):
    """2 processes (gloo, torchrun's environment): the JVP runs on each rank's unwrapped module, the online
    pass (network and adaptive weight) through DistributedDataParallel; after 2 steps the ranks' weights
    are bitwise equal and close to one process with the doubled batch (tests/test_ddp.py says why close,
    not equal: summation order; here the 99th percentile of |diff| / |change| must be below 1e-3)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1",
               "CMLITE_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "GLOO_SOCKET_IFNAME": "lo"}
        procs.append(subprocess.Popen([sys.executable, "-c", DDP_WORKER, str(tmp_path / f"run{rank}"),
                                       str(tmp_path / f"rank{rank}.pt")], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    for rank, p in enumerate(procs):
        try:
            out = p.communicate(timeout=240)[0]
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the 2-process run did not finish in 240 s")
        assert p.returncode == 0, f"rank {rank}:\n{out[-3000:]}"
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["model"] for r in (0, 1))
    assert all(torch.equal(v, r1[k]) for k, v in r0.items())
    assert "weight_net.linear.weight" in r0
    recipe = get_recipe("tiny-sct").with_overrides(["train.batch_size=16"])
    torch.manual_seed(recipe.train.seed)
    init = {f"net.{k}": v.clone() for k, v in build_net(recipe, 1, 16).state_dict().items()}
    one = {}
    train(recipe, tmp_path / "one", steps=2, progress=False, callback_every=2,
          callback=lambda tr: one.update({k: v.clone() for k, v in tr.model.state_dict().items()}))
    d = torch.cat([(r0[k].double() - one[k].double()).abs().flatten() for k in init])
    u = torch.cat([(one[k].double() - init[k].double()).abs().flatten() for k in init])
    assert float(u.max()) > 1e-4
    assert float((d / (u + 1e-9)).quantile(0.99)) < 1e-3
