# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 8 — Training an image consistency model from a notebook cell
#
# Everything so far ran on 2D points. Nothing in the method cares about the dimension: $x$ has shape
# `(batch, ...)`, the loss compares $f_\theta(x_{t_{n+1}}, t_{n+1})$ with $f_{\theta^-}(\hat x_{t_n}, t_n)$
# per sample, and the boundary condition $f_\theta(x, \epsilon) = x$ is built into
# $f_\theta = c_{skip}(t)\,x + c_{out}(t)\,F_\theta(c_{in}(t)\,x, c_{noise}(t))$ for tensors of any shape.
# For images only three things change:
#
# * **the network** $F_\theta$: a U-Net (EDM's DDPM++ design: residual blocks, GroupNorm, SiLU, a noise
#   embedding, self-attention, dropout) instead of an MLP — `cmlite.image.unet.UNet`;
# * **the data**: pixels scaled to $[-1, 1]$, so $\sigma_{data} = 0.5$, held on the GPU as uint8 —
#   `cmlite.image.data`;
# * **the teacher** of distillation: no analytic denoiser exists, so we train one first, by denoising score
#   matching with EDM's weighting, with the *same* `Trainer`.
#
# This chapter does all of it in a few cells. On a GPU it trains on MNIST. On a CPU it trains a tiny U-Net
# on a synthetic data set that it makes itself. With `CMLITE_FAST=1` (the test suite), the whole chapter takes
# about 105 s of one core (measured on 2026-12-05: 30 s for 300 teacher steps, 55 s for 300 distillation
# steps); a machine busy with other work takes proportionally longer. Without it, the CPU run trains 10 times
# as many teacher steps and 5 times as many distillation steps, at twice the batch.

# %%
import json
import os
import re
import time
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import cmlite
from cmlite import (ConsistencyDistillationLoss, ConsistencyModel, DenoisingScoreMatchingLoss, EDMDenoiser,
                    FixedSchedule, TrainConfig, Trainer, karras_boundaries, multistep_sample, solve)
from cmlite.image.callbacks import SampleGrid
from cmlite.image.data import GPUBatches, ImageData, load_dataset, make_grid, synthetic_dataset, to_uint8
from cmlite.image.fid import FIDScorer
from cmlite.image.classifier import classifier_features, train_classifier
from cmlite.image.recipes import CD_MU, CD_STUDENT, Recipe
from cmlite.image.run import load_run, load_train_test
from cmlite.image.unet import UNet, count_parameters, unet_config
from cmlite.threads import set_small_model_threads

FAST = os.environ.get("CMLITE_FAST") == "1"
GPU = torch.cuda.is_available() and not FAST
device = torch.device("cuda" if GPU else "cpu")
REPO = Path(cmlite.__file__).resolve().parents[1]   # the checkout: docs/results, pretrained weights
if not GPU:
    set_small_model_threads()
torch.manual_seed(0)


def show(images, title, nrow=8, ax=None):
    """Show uint8 images (n, C, H, W) as a grid."""
    g = make_grid(images, nrow=nrow).permute(1, 2, 0).numpy()
    ax = ax or plt.figure(figsize=(4, 4)).gca()
    ax.imshow(g[..., 0] if g.shape[-1] == 1 else g, cmap="gray", vmin=0, vmax=255)
    ax.set_title(title)
    ax.axis("off")


# %% [markdown]
# ## The data, and pretrained weights
#
# On a GPU: MNIST from local files (`load_dataset("mnist")` looks in `$CMLITE_DATA`, `./data` and
# `~/.cache/cmlite`, and `download=True` fetches it with torchvision). On a CPU: four classes of shapes
# (disc, square, bar, cross) at $16 \times 16$, small enough to learn in a few minutes. `GPUBatches` keeps the
# whole set on the device as uint8 and draws each batch there (no data loader, no host copies).
#
# **Pretrained weights.** The repository's `pretrained/` folder holds an MNIST teacher and a CD model trained on
# a GPU (`mnist-teacher/`, `mnist-cd/`: run folders as `cmlite train` writes them, with fp16 weights; its README
# says how good they are). On a CPU the chapter loads them instead of training the tiny model when the MNIST
# files are at hand too (`load_dataset("mnist")`: `$CMLITE_DATA`, `./data` or `~/.cache/cmlite`), and every
# later cell uses them. Otherwise it trains the tiny model as described.

# %%
PRETRAINED = REPO / "pretrained"             # mnist-teacher/ and mnist-cd/ run folders; used on a CPU when present
pretrained = None
if not GPU and all((PRETRAINED / r / "ema.safetensors").is_file() for r in ("mnist-teacher", "mnist-cd")):
    teacher_run, teacher_info = load_run(PRETRAINED / "mnist-teacher")
    try:
        real, held_out = load_train_test(Recipe.from_dict(teacher_info["recipe"]))
        pretrained = {"teacher": teacher_run, "cd": load_run(PRETRAINED / "mnist-cd")[0]}
    except FileNotFoundError as e:
        print(f"pretrained MNIST models in {PRETRAINED}, but no MNIST files here ({str(e).splitlines()[0]}); "
              "training the tiny model instead")
if GPU:
    real, held_out = load_dataset("mnist"), load_dataset("mnist", split="test")
    net_cfg = unet_config("mnist")
    TEACHER_STEPS, CD_STEPS, BATCH = 3000, 2000, 256
elif pretrained:
    net_cfg = pretrained["teacher"].net.config
    TEACHER_STEPS, CD_STEPS, BATCH = 0, 0, 256
else:
    real = synthetic_dataset(2048, channels=1, resolution=16, num_classes=4, seed=0)
    held_out = synthetic_dataset(1024, channels=1, resolution=16, num_classes=4, seed=1)   # >= the FID's n
    net_cfg = unet_config("tiny", img_resolution=16, in_channels=1, model_channels=16)
    TEACHER_STEPS, CD_STEPS, BATCH = (300, 300, 32) if FAST else (3000, 1500, 64)
data = ImageData(real.images, None, 0, real.name)  # unconditional: drop the labels for training
C, H, W = data.images.shape[1:]
print(f"{len(data)} images of shape {C}x{H}x{W}; U-Net with {count_parameters(UNet(net_cfg)):,} parameters"
      + (f"; pretrained weights from {PRETRAINED}" if pretrained else ""))
show(data.images[:32], "training images")

# %% [markdown]
# ## Step 1: the teacher, a diffusion model
#
# $D_\phi(x, t) = c_{skip}(t)x + c_{out}(t)F_\phi(c_{in}(t)x, c_{noise}(t))$ with EDM's scalings ($\epsilon = 0$),
# trained by denoising score matching:
#
# $$\mathcal L_{DSM} = \mathbb E\, \lambda(t) \|D_\phi(x + t z, t) - x\|^2,\quad \ln t \sim \mathcal N(-1.2, 1.2^2),
# \quad \lambda(t) = \frac{t^2 + \sigma_d^2}{(t\sigma_d)^2}.$$
#
# `Trainer.fit` shows a live bar (loss, images per second, time left with a budget) and, through the
# `SampleGrid` callback, a grid of the EMA network's samples (Heun on the Karras grid; the cell prints how many
# network evaluations) that updates in place.

# %%
fast_cfg = dict(device=str(device), precision="bf16" if GPU else "fp32", channels_last=GPU, compile=GPU,
                log_every=50 if GPU else 10)
GRID_N = 10 if FAST else 18                          # Heun grid points of the live grid: 2(N - 1) evaluations
if pretrained:
    teacher_ema, teacher_history = pretrained["teacher"], None
    print(f"teacher: loaded from {PRETRAINED / 'mnist-teacher'}")
else:
    teacher = Trainer(EDMDenoiser(UNet(net_cfg)), DenoisingScoreMatchingLoss(), GPUBatches(data, BATCH, device),
                      TrainConfig(steps=TEACHER_STEPS, batch_size=BATCH, lr=2e-3 if not GPU else 1e-3,
                                  ema_rate=0.995 if not GPU else 0.999, **fast_cfg))
    print(f"live grid: the teacher's Heun ODE on {GRID_N} points, {2 * (GRID_N - 1)} network evaluations per sample")
    t0 = time.time()
    teacher.fit(desc="teacher", callback=SampleGrid((C, H, W), n=32, teacher_N=GRID_N),
                callback_every=TEACHER_STEPS // 2)
    print(f"teacher: {teacher.step} steps in {time.time() - t0:.0f} s")
    teacher_ema, teacher_history = teacher.ema, teacher.history

# %% [markdown]
# ## Step 2: consistency distillation from it (Algorithm 2)
#
# The online network starts from the teacher's weights (as the official code does). Each step takes one
# Heun step of the teacher's PF ODE from $t_{n+1}$ to $t_n$ on the $N = 18$ Karras grid, and pulls
# $f_\theta(x_{t_{n+1}}, t_{n+1})$ towards the target $f_{\theta^-}(\hat x_{t_n}, t_n)$. The grid shows
# one-step samples.
#
# The settings are those of cmlite's CD recipes (`cmlite.image.recipes`):
#
# * **The target lags the online network**: $\theta^- \leftarrow \mu\theta^- + (1-\mu)\theta$ after every step,
#   with $\mu$ = `CD_MU` = 0.95 (the official ImageNet-64 and LSUN setting; the paper's CIFAR-10 run uses
#   $\mu = 0$ with an LPIPS distance).
# * **The student has no dropout** (`CD_STUDENT`), as in the official CD commands.
#
# With $\mu = 0$ the target is the online network itself under stop-gradient, and with dropout every target
# carries a fresh dropout mask. Short L2 distillation runs with both leave speckle in the one-step samples.
# A toy-scale ablation and a CIFAR-10 run on an H100 measured this; `docs/image-results.md` has both.

# %%
if pretrained:
    cd_ema, cd_history = pretrained["cd"], None
    print(f"CD model: loaded from {PRETRAINED / 'mnist-cd'}")
else:
    net = UNet(replace(net_cfg, **CD_STUDENT))        # the student: the teacher's network without dropout
    net.load_state_dict(teacher_ema.net.state_dict())
    cd = Trainer(ConsistencyModel(net), ConsistencyDistillationLoss(teacher_ema.requires_grad_(False), solver="heun"),
                 GPUBatches(data, BATCH, device, seed=1),
                 TrainConfig(steps=CD_STEPS, batch_size=BATCH, lr=2e-4 if GPU else 5e-4,
                             ema_rate=0.99 if not GPU else 0.999, **fast_cfg), FixedSchedule(N=18, mu=CD_MU))
    t0 = time.time()
    cd.fit(desc="CD", callback=SampleGrid((C, H, W), n=32), callback_every=CD_STEPS // 2)
    print(f"CD (target EMA mu = {CD_MU}): {cd.step} steps in {time.time() - t0:.0f} s")
    cd_ema, cd_history = cd.ema, cd.history

# %%
if teacher_history and cd_history:
    fig, ax = plt.subplots(1, 2, figsize=(9, 3))
    ax[0].plot(teacher_history["step"], teacher_history["loss"])
    ax[0].set(title="teacher: DSM loss", xlabel="step", yscale="log")
    ax[1].plot(cd_history["step"], cd_history["loss"])
    ax[1].set(title="CD loss (squared L2 between f_theta and its target)", xlabel="step", yscale="log")
    plt.tight_layout()

# %% [markdown]
# ## Samples: the teacher's ODE against one and two consistency steps
#
# From the *same* noise $x_T = T z$: the teacher needs tens of evaluations of its network; the consistency
# model one ($x = f_\theta(x_T, T)$) or two (add noise back to $\tau = 0.585$ and apply $f_\theta$ again).

# %%
g = torch.Generator(device=device).manual_seed(0)
xT = 80.0 * torch.randn((32, C, H, W), generator=g, device=device)
with torch.no_grad():
    ode = solve(teacher_ema, xT, karras_boundaries(18).flip(0), "heun")
    one = multistep_sample(cd_ema, xT, [80.0])
    two = multistep_sample(cd_ema, xT, [80.0, 0.585], generator=torch.Generator(device=device).manual_seed(1))
fig, ax = plt.subplots(1, 3, figsize=(12, 4))
for a, (x, title) in zip(ax, [(ode, "teacher, Heun ODE (34 NFE)"), (one, "CD, 1 step (1 NFE)"),
                              (two, "CD, 2 steps (2 NFE)")]):
    show(to_uint8(x).cpu(), title, ax=a)
plt.tight_layout()

# %% [markdown]
# ## How good? A Fréchet distance with its floor
#
# FID compares feature statistics of generated and real images. The standard one uses Inception-v3
# (`cmlite eval` uses it when the `fid` extra is installed); here we use the cheaper second score cmlite
# offers everywhere: the Fréchet distance in the features of a small classifier trained on the same data.
# A number means little alone, so it is printed beside its **floor**: the same distance for real images
# the generator never saw, at the same sample size.

# %%
width = 64 if GPU else 32 if pretrained else 16      # narrower on a CPU: the shapes need little, MNIST some more
clf, acc = train_classifier(real, held_out, steps=60 if FAST else 1000, batch_size=128, width=width, device=device)
cap = None if GPU else 2048                          # a CPU: features of at most 2048 reference and floor images
scorer = FIDScorer(classifier_features(clf), real.images[:cap], device, floor_images=held_out.images[:cap])
if GPU:
    n = 10000
elif pretrained:    # the MNIST U-Net on a CPU: the teacher's 34 evaluations per sample dominate the cost
    n = 64 if FAST else 500
else:
    n = 256 if FAST else 1000
g = torch.Generator(device=device).manual_seed(2)
with torch.no_grad():
    xT = 80.0 * torch.randn((n, C, H, W), generator=g, device=device)
    results = {"teacher Heun ODE (34 NFE)": solve(teacher_ema, xT, karras_boundaries(18).flip(0), "heun"),
               "CD 1 step": multistep_sample(cd_ema, xT, [80.0]),
               "CD 2 steps": multistep_sample(cd_ema, xT, [80.0, 0.585], generator=g)}
floor = scorer.floor(n)["fid"]
print(f"classifier test accuracy {acc:.3f}; {n} samples each; floor (held-out real images) {floor:.3f}")
for name, x in results.items():
    print(f"  {name:28s} classifier FID {scorer.score(to_uint8(x).cpu()):.3f}")

# %% [markdown]
# ## The same from the command line
#
# The cells above are what `cmlite train` runs, with the settings kept in small dataclass recipes
# (`cmlite.image.recipes`): on a GPU,
#
# ```bash
# cmlite train mnist-teacher --minutes 10
# cmlite train mnist-cd --teacher runs/mnist-teacher --minutes 10
# cmlite sample runs/mnist-cd --n 64 --steps 2     # runs/mnist-cd/samples-2.npz and .png
# cmlite eval runs/mnist-cd                        # Inception and classifier FIDs, 10k samples, with floors
# cmlite train mnist-ict --teacher runs/mnist-teacher --minutes 10   # iCT started from the teacher's weights
# ```
#
# The last line is consistency *training* that starts from the diffusion model instead of from scratch, the
# idea that ECT (Geng et al., 2024) builds on. ECT also shrinks the gap between the two noise levels as
# training goes on; iCT's curriculum does the same in steps (its grid starts at N = 10 points and doubles).
# Whether this beats distillation at a budget of minutes has not been measured here yet.
#
# `docs/image-results.md` lists what these runs measured on H100s. What a short run can and cannot do:
# the paper trains CD for 800k steps of batch 512 with an LPIPS distance; minutes of training reach
# recognisable one-step samples, not the paper's FIDs.

# %% [markdown]
# ## What a few minutes on a GPU gave
#
# The GPU runs behind `docs/image-results.md` left their `eval.json` files in the checkout's `docs/results/`,
# one folder per group of runs, named by date (`gpu-2026-11-26`, then `…b` and `…c`, then `2026-12-05-h200`,
# `2026-12-05-h200-10min` and `2026-12-05-h200-shared`, whose runs shared one GPU and include the
# teacher-free ECT, sCT, iCT and CT, then runs alone on an H100: `2026-12-05-h100-sct` (MNIST sCT),
# `2026-12-06-h100` (the MNIST teacher), `2026-12-06-h100-b` (the CIFAR-10 teacher and CD) and
# `2026-12-06-h100-c` (the same from an empty compile cache, and CIFAR-10 sCT), then on an H200
# `2026-12-06-h200` (a 10-minute CIFAR-10 teacher and CIFAR-10 ECT), `2026-12-06-h100-d` (MNIST CD alone) and
# `2026-12-06-h100-e`, `2026-12-06-h100-f` and `2026-12-06-h200-b` (MNIST ECT, iCT and CT alone), then
# `2026-12-07-h100` (CIFAR-10 iCT alone) and `2026-12-07-h200` (CIFAR-10 CT alone, MNIST ECT with CUDA graphs)).
# Each holds, for
# 10,000 samples, the Fréchet distance to the training set in two feature spaces (Inception-v3 and
# cmlite's own classifier) and the *floor*: the same distance for real images the model never saw. The
# plot puts each teacher's FID against its number of network evaluations (Heun on 2 … 18 grid points)
# and the consistency models' one- and two-step samples beside it. What to look for: the teacher needs
# 18–34 evaluations to get close to its best; distillation buys the one-step end of that curve, at a
# price that shrinks with training (these runs had 1–10 minutes; the paper's, days). Each folder's
# floor is drawn in its colour.

# %%
RESULTS = REPO / "docs" / "results"   # beside the cmlite package in a checkout (not in an installed wheel)
runs = {}
for f in sorted(RESULTS.glob("*/*/eval.json")):
    e = json.loads(f.read_text())
    if isinstance(e, dict) and "rows" in e:           # one run's `cmlite eval` (not a bench's list of runs)
        e["folder"] = f.parent.parent.name
        runs[f"{e['recipe']}, {e['folder']}"] = e


def folder_date(name: str) -> str:
    """The date in a results folder's name: the folders sort by it (then by name)."""
    m = re.search(r"\d{4}-\d{2}-\d{2}", name)
    return m.group() if m else ""


folders = sorted({e["folder"] for e in runs.values()}, key=lambda name: (folder_date(name), name))
MARKER = {"teacher": "o-", "cd": "s--", "ict": "^--", "ct": "v--", "ect": "D--", "sct": "P--", "cct": "X--"}
# colour: the results folder (tab20's dark shades, then its light ones: more folders than the default cycle's 10);
# marker: the method
COLOUR = {folder: plt.cm.tab20([*range(0, 20, 2), *range(1, 20, 2)][i % 20]) for i, folder in enumerate(folders)}
if not runs:
    print(f"no stored GPU results in {RESULTS}: this cell reads docs/results/gpu-*/*/eval.json of a checkout of "
          "the cmlite repository (an installed package does not carry them)")
else:
    print(f"{len(runs)} evaluated GPU runs in {RESULTS}")
    fig, axes = plt.subplots(2, 2, figsize=(15, 9))
    for row, ds in enumerate(("mnist", "cifar10")):
        for col, space in enumerate(("inception", "classifier")):
            ax = axes[row, col]
            these = [(name, e) for name, e in runs.items() if e["recipe"].startswith(ds + "-")]
            for name, e in these:
                nfe = [r["nfe"] for r in e["rows"]]
                fid = [r[f"fid_{space}"] for r in e["rows"]]
                ax.plot(nfe, fid, MARKER[e["recipe"].split("-")[-1]], color=COLOUR[e["folder"]],
                        label=name)
            floors = {}                                  # each folder's own floor, one line per distinct value
            for _, e in these:
                floors.setdefault(round(e["floors"][space]["fid"], 3), e["folder"])
            for floor, folder in floors.items():
                ax.axhline(floor, color=COLOUR[folder], lw=0.8, ls=":")
                ax.annotate(f"floor {floor:.3g}", (1, floor), xycoords=("axes fraction", "data"), ha="right",
                            va="bottom", fontsize=7, color=COLOUR[folder])
            ax.set(xscale="log", yscale="log", xlabel="network evaluations per sample", ylabel=f"{space} FID",
                   title=f"{ds}: {space} FID (10k samples)")
            if col == 1:                                 # one legend per data set, beside its two panels
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    plt.tight_layout()
    plt.show()

for name, e in runs.items():
    best = min(e["rows"], key=lambda r: r["fid_inception"])
    print(f"{name:34s} best Inception FID {best['fid_inception']:7.1f} at {best['nfe']:2d} NFE; "
          f"classifier FID {best['fid_classifier']:7.2f} (floors {e['floors']['inception']['fid']:.2f}, "
          f"{e['floors']['classifier']['fid']:.3f})")
