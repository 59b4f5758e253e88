"""Data parallelism on a CPU: 2 processes (gloo, the environment torchrun sets) train the tiny CT recipe
with a global batch of 2B; the result must equal one process with batch 2B, ranks must agree exactly,
only rank 0 may write files, and the checkpoint must resume in one process.

Why a tolerance and not bitwise equality: both runs see the same images, flips and noise (GPUBatches and
the losses draw the global batch and slice it per rank), but the gradient is summed in another order
(two half-batch means averaged by DDP's all-reduce, against one mean over 2B; convolutions blocked for
another batch size): float32 rounding, ~1e-7 relative. Adam turns a gradient g into an update of about
lr * g / (|g| + eps), so rounding changes most updates by ~1e-7 of themselves, but where g itself is at
rounding level (a few weights per layer) the update can change by a sizeable part of lr. Hence two
bounds, measured here with margins of 7x and 30x: 99% of the weights agree to 1e-3 of their own
change (a rank training on other data, or on the wrong share, changes most weights by O(1) of that), and
no weight differs by more than 1% of the largest change (bounded by lr per step in any case)."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from cmlite.image.recipes import build_net, get_recipe
from cmlite.image.run import train
from cmlite.training import load_checkpoint

STEPS, B = 3, 8            # per-rank batch B; global batch 2B in both runs
NAME = "tiny-ct"           # tiny U-Net, dropout 0 (dropout masks are per process), CT schedule and EMA target
OVERRIDES = [f"train.batch_size={2 * B}"]

WORKER = r"""
import json, os, sys, torch
torch.set_num_threads(1)
import cmlite.training
from cmlite.image.recipes import get_recipe
from cmlite.image.run import train
name, out, steps, dump, overrides = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
if steps == 0:  # a 15-second budget on fake clocks: a step takes 0.25 s on rank 0 and 8 s on rank 1
    now = [0.0]
    dt = 8.0 if os.environ["RANK"] == "1" else 0.25
    step = cmlite.training.Trainer.train_step
    def timed_step(self):
        rec = step(self)
        now[0] += dt
        return rec
    cmlite.training.Trainer.train_step = timed_step
    summary = train(get_recipe(name).with_overrides(overrides), out, minutes=0.25, progress=False,
                    clock=lambda: now[0])
    print("STEPS", summary["steps"], summary["K"], summary["calibration_steps"], flush=True)
    torch.distributed.destroy_process_group()
    sys.exit(0)

def keep(tr):  # this rank's state after the last step
    if tr.step == steps:
        torch.save({"rank": tr.rank, "world_size": tr.world_size, "ddp": tr.ddp is not None,
                    "model": tr.model.state_dict(), "target": tr.target.state_dict(), "ema": tr.ema.state_dict()},
                   dump)

train(get_recipe(name).with_overrides(overrides), out, steps=steps, progress=False, callback=keep,
      callback_every=steps)
torch.distributed.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(tmp_path, steps=STEPS, overrides=OVERRIDES):
    """Run WORKER as ranks 0 and 1 (what torchrun sets: MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK).
    Each rank is given its own --out folder, so a file written by rank 1 would show up in run1/.
    Returns each rank's output."""
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1",
               "CMLITE_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        if sys.platform.startswith("linux"):
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        cmd = [sys.executable, "-c", WORKER, NAME, str(tmp_path / f"run{rank}"), str(steps),
               str(tmp_path / f"rank{rank}.pt"), json.dumps(overrides)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the 2-process run did not finish in 240 s (a hang in a collective?)")
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{out[-3000:]}"
    return outs


def _assert_close_runs(a: dict, b: dict, init: dict, what: str, slack: float = 1.0) -> None:
    """a, b: state dicts of two runs from the same initial weights ``init``: see the module docstring."""
    d, u = [], []
    for k in a:
        if a[k].is_floating_point():
            d.append((a[k].double() - b[k].double()).abs().flatten())
            u.append((a[k].double() - init[k].double()).abs().flatten())
    d, u = torch.cat(d), torch.cat(u)
    moved = float(u.max())
    assert moved > 1e-4, f"{what}: the weights did not move"
    rel99 = float((d / (u + 1e-9)).quantile(0.99))
    print(f"{what}: max |diff| {float(d.max()):.3g} (largest change {moved:.3g}), 99% of weights within "
          f"{rel99:.3g} of their change")
    assert float(d.max()) <= 1e-2 * moved * slack, f"{what}: max |diff| {float(d.max()):.3g} vs change {moved:.3g}"
    assert rel99 <= 1e-3 * slack, f"{what}: 99th percentile of |diff| / |change| is {rel99:.3g}"


def test_two_processes_equal_one_with_the_doubled_batch_and_resume_in_one(tmp_path):
    _two_processes(tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["ddp"]) for r in ranks] == [(0, 2, True), (1, 2, True)]
    for part in ("model", "target", "ema"):  # all-reduced gradients: the ranks' copies are bitwise equal
        for k, v in ranks[0][part].items():
            assert torch.equal(v, ranks[1][part][k]), f"{part}.{k} differs between the ranks"

    # only rank 0 writes: rank 1 was pointed at its own folder and nothing may appear there
    assert not (tmp_path / "run1").exists()
    info = json.loads((tmp_path / "run0" / "recipe.json").read_text())
    assert info["world_size"] == 2 and info["steps"] == STEPS and info["recipe"]["train"]["batch_size"] == 2 * B
    assert (tmp_path / "run0" / "ema.safetensors").is_file()
    ckpt2 = load_checkpoint(tmp_path / "run0" / "checkpoint.pt")
    assert ckpt2["world_size"] == 2 and ckpt2["step"] == STEPS

    # one process, the same global batch: the same weights up to float32 summation order
    recipe = get_recipe(NAME).with_overrides(OVERRIDES)
    torch.manual_seed(recipe.train.seed)  # train() seeds like this before it builds the net
    init = {f"net.{k}": v.clone() for k, v in build_net(recipe, 1, 16).state_dict().items()}
    one = {}

    def keep(tr):
        if tr.step == STEPS:
            one.update({p: {k: v.clone() for k, v in getattr(tr, p).state_dict().items()}
                        for p in ("model", "target", "ema")})
    train(recipe, tmp_path / "one", steps=STEPS, progress=False, callback=keep, callback_every=STEPS)
    for part in ("model", "target", "ema"):  # all three start as copies of the initial weights
        _assert_close_runs(ranks[0][part], one[part], init, f"{part} after {STEPS} steps, 2 processes vs 1")

    # the 2-process checkpoint resumes in 1 process and continues as the 1-process run does
    train(recipe, tmp_path / "run0", steps=2 * STEPS, resume=True, progress=False)
    train(recipe, tmp_path / "one", steps=2 * STEPS, resume=True, progress=False)
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("run0", "one"))
    assert a["step"] == b["step"] == 2 * STEPS and a["world_size"] == b["world_size"] == 1
    for part in ("model", "target", "ema"):
        _assert_close_runs(a[part], b[part], init, f"{part} resumed to {2 * STEPS} steps in 1 process", slack=2)


def test_ranks_stop_a_time_budget_at_the_same_step(tmp_path):
    # Fake clocks (nothing depends on the machine's speed): a step takes 0.25 s on rank 0 and 8 s on rank 1.
    # Rank 0 decides the calibration (5 + 5 steps on a CPU: 2.5 s of the 15) and K from its 0.25 s a step
    # (K = 10 + (12.5 s - the sample grid's 0.33 s) / 0.25 = 58); rank 1 is then already past the budget.
    # Left to itself rank 1 would stop at once, and rank 0 would wait in an all-reduce for a rank that is
    # gone: the Trainer agrees on the stop at the first log step, the same on both, long before K.
    log_every = 2
    outs = _two_processes(tmp_path, steps=0, overrides=OVERRIDES + [f"train.log_every={log_every}"])
    (s0, k0, c0), (s1, k1, c1) = ([int(v) for v in o.split("STEPS")[-1].split()[:3]] for o in outs)
    assert k0 == k1 == 58 and c0 == c1 == 10, outs
    assert s0 == s1 == c0 + log_every < k0, outs
    assert json.loads((tmp_path / "run0" / "recipe.json").read_text())["steps"] == s0


def test_run_summary_has_a_steady_state_throughput(tmp_path, monkeypatch):
    # what bench/scale.sh compares across GPU counts: images/s over the log steps after the first 10 steps
    # (start-up and compilation excluded), next to the whole-process figure. A fake clock (a step takes
    # 0.5 s; the first, "compiling", 5 s more) makes every figure exact.
    from cmlite.training import Trainer
    now, step = [0.0], Trainer.train_step

    def timed_step(tr):
        rec = step(tr)
        now[0] += 0.5 + 5.0 * (tr.step == 1)
        return rec
    monkeypatch.setattr(Trainer, "train_step", timed_step)
    r = get_recipe(NAME).with_overrides(["train.log_every=2"])
    s = train(r, tmp_path / "run", steps=16, progress=False, clock=lambda: now[0])
    B = r.train.batch_size
    assert s["steady_steps"] == 6 and s["steady_images_per_second"] == pytest.approx(6 * B / (6 * 0.5))
    assert s["images_per_second"] == pytest.approx(16 * B / (16 * 0.5 + 5))
    assert s["startup_s"] == pytest.approx(5.5) and s["startup_seconds"] == pytest.approx(10 * 0.5 + 5)
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["steady_steps"] == 6
