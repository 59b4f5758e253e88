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
# # Chapter 3 — Consistency distillation
#
# Chapter 2 defined the consistency function $f(x_t, t) = x_\epsilon$ and built the boundary condition
# into a network $f_\theta$. What is left is to make $f_\theta$ **self-consistent**. Consistency
# distillation (CD, Song et al. 2023, Algorithm 2) does it with a pre-trained diffusion model, the
# *teacher*: one ODE step of the teacher links two neighbouring points of a trajectory, and the loss asks
# $f_\theta$ to give them the same output. At the end of this chapter we sample from a trained model
# in **one** network evaluation and compare with the teacher's multi-step ODE sampler.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import torch

import cmlite
from cmlite.threads import set_small_model_threads
from cmlite import (ConsistencyDistillationLoss, ConsistencyModel, DenoisingScoreMatchingLoss, EDMDenoiser,
                    FixedSchedule, MLP, Trainer, TrainConfig, karras_boundaries, ode_sample,
                    reference_solve, ring_mixture, sample, solve, ternary_search_times, toy_2d)
from cmlite.metrics import consistency_error, data_floor, sliced_wasserstein

FAST = os.environ.get("CMLITE_FAST") == "1"
set_small_model_threads()  # one torch thread for tiny tensors (CMLITE_THREADS overrides; see cmlite.threads)
torch.manual_seed(0)
np.random.seed(0)
EPS, T = cmlite.EPS, cmlite.T_MAX
STEPS = 200 if FAST else 3000           # CD training steps (main run and each ablation run)
N_EVAL = 1000 if FAST else 10000        # samples per quality measurement
EVAL_EVERY = STEPS // 10                # training steps between quality measurements
TEACHER_STEPS = 300 if FAST else 3000   # denoising-score-matching steps of the learned teacher
N_SEARCH = 1000 if FAST else 4000       # samples per evaluation in the search for multistep time points
print(f"fast mode: {FAST};  CD steps {STEPS}, teacher steps {TEACHER_STEPS}, {N_EVAL} samples per measurement")

# %% [markdown]
# ## 1. The loss (Algorithm 2)
#
# Take the Karras grid $\epsilon = t_1 < \dots < t_N = T$ of Chapter 1. Each training step:
#
# 1. draw data $x$, an index $n \sim \mathcal U\{1, \dots, N-1\}$ and noise $z$; set $x_{t_{n+1}} = x + t_{n+1} z$;
# 2. move it one step of the teacher's PF-ODE solver (Heun here) to $\hat x_{t_n}$: an estimate of the
#    point of the same trajectory at the earlier time $t_n$;
# 3. minimise
#
# $$\mathcal L_{CD}^N(\theta, \theta^-) = \mathbb E\Big[\lambda(t_n)\, d\big(f_\theta(x_{t_{n+1}}, t_{n+1}),\ f_{\theta^-}(\hat x_{t_n}, t_n)\big)\Big],$$
#
# 4. update the **target** network $\theta^- \leftarrow \operatorname{stopgrad}\big(\mu\,\theta^- + (1 - \mu)\,\theta\big)$.
#
# Here $d$ is the squared $L_2$ distance, $\lambda \equiv 1$, $N = 18$. The loss only compares
# neighbours, but the boundary condition anchors the chain: at $n = 1$ the target is
# $f_{\theta^-}(\hat x_{\epsilon}, \epsilon) = \hat x_\epsilon$ exactly, and consistency propagates that
# anchor up the grid, one interval at a time.
#
# In cmlite: `ConsistencyDistillationLoss(teacher, solver="heun")` is steps 1–3 (the target term is
# computed under `torch.no_grad`), `FixedSchedule(N, mu)` supplies $N$ and $\mu$, and `Trainer` runs the
# loop and keeps the target $\theta^-$ and an evaluation EMA of $\theta$ (the weights we sample with).
#
# ### The other choices: the distance $d$ and the weighting $\lambda(t)$
#
# **Why LPIPS.** The paper's best CD models use LPIPS (Zhang et al. 2018) as $d$: the distance between the
# activations of a pre-trained VGG network on the two images, rather than between their pixels. Squared
# $L_2$ in pixel space treats every pixel error alike and, when the target is uncertain, rewards the
# blurry average; LPIPS measures differences of structure much as people (and FID's Inception features)
# do, and gave clearly better FIDs for images. Its costs: pre-trained ImageNet weights (not downloadable
# here), a second network in every loss evaluation, and a bias that improved CT (Chapter 5) cites for dropping it,
# since a loss and an evaluation metric that both rest on ImageNet features reward each other.
# iCT's pseudo-Huber distance does without it. For 2D points there are no features to compare, so this
# book uses $L_2$ and pseudo-Huber; `ConsistencyDistillationLoss(..., distance=my_lpips)` takes any callable
# $d(a, b)$ returning one value per sample, an LPIPS module included.
#
# **The weighting $\lambda(t_n)$.** The per-pair loss lives on very different scales across the grid: near
# $\epsilon$ both outputs are almost the input and differ by little, near $T$ they can differ a lot. $\lambda$
# decides which pairs dominate the gradient. `cmlite.lambda_weight` offers `uniform` ($\lambda = 1$, what
# every published CD/CT recipe uses), `snr` ($t_n^{-2}$), `snr+1`, `karras` ($t_n^{-2} + \sigma_{\rm data}^{-2}$,
# EDM's denoising weight), `truncated_snr` ($\max(t_n^{-2}, 1)$) and `ict` ($1/(t_{n+1} - t_n)$, improved CT).
# The SNR-type weights shift the effort to small $t$, where errors are most visible in the final sample;
# iCT's weight also keeps the loss from shrinking as the grid is refined. Pick it with
# `ConsistencyDistillationLoss(..., weighting="snr")`; in Chapter 5 it decides whether iCT works at all.
#
# ## 2. Distilling the exact teacher
#
# The first teacher is the *exact* denoiser of the ring mixture of Chapters 1–2 (calling the mixture
# object evaluates $D(x, t)$). Nothing is learned about the data except by $f_\theta$ itself.

# %%
gmm = ring_mixture()
data_val = gmm.sample(N_EVAL, generator=torch.Generator().manual_seed(100))    # for choices (time points)
data_test = gmm.sample(N_EVAL, generator=torch.Generator().manual_seed(101))   # for the reported numbers
floor = data_floor(gmm.sample, sliced_wasserstein, N_EVAL, repeats=10, generator=102)
print(f"data-vs-data floor at n = {N_EVAL}: sliced W2 = {floor['mean']:.4f} +- {floor['std']:.4f} "
      "(mean +- std over 10 pairs of independent data samples; no sampler can be told apart from data below it)")


def one_step_sw(model, data=data_val, seed=7):
    """Sliced W2 between N_EVAL one-step samples f(T z, T) and data (fixed noise: comparable across calls)."""
    return sliced_wasserstein(sample(model, (N_EVAL, 2), generator=torch.Generator().manual_seed(seed)), data)


def train_cd(teacher, data, mu, val=None, steps=STEPS, seed=0, stop_gradient=True):
    """CD with the Heun solver, N = 18 and target EMA mu. Returns the trainer and, if validation data
    `val` is given, the one-step quality (sliced W2 to `val`) of the evaluation EMA every EVAL_EVERY steps."""
    torch.manual_seed(seed)
    model = ConsistencyModel(MLP(hidden=128, depth=3))
    loss = ConsistencyDistillationLoss(teacher, solver="heun", stop_gradient=stop_gradient)
    trainer = Trainer(model, loss, data,
                      TrainConfig(steps=steps, batch_size=256, lr=1e-3, ema_rate=0.999, seed=seed),
                      FixedSchedule(N=18, mu=mu))
    curve = []
    for rec in trainer.steps(steps):
        if val is not None and (rec["step"] + 1) % EVAL_EVERY == 0:
            curve.append((rec["step"] + 1, one_step_sw(trainer.ema, val)))
    return trainer, curve


trainer, curve = train_cd(gmm, gmm, mu=0.95, val=data_val)
print(f"trained {trainer.step} steps; one-step sliced W2 of the EMA model at the end: {curve[-1][1]:.4f}")

# %% [markdown]
# The loss (per batch, smoothed over 50 steps) and, more telling, the quality of one-step samples
# measured during training:


# %%
def smooth(v, w=50):
    v = np.asarray(v, dtype=float)
    w = max(1, min(w, len(v) // 5))
    return np.convolve(v, np.ones(w) / w, mode="valid")


h = trainer.history
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
axes[0].semilogy(h["step"], h["loss"], color="C0", alpha=0.25, lw=0.5, label="per batch")
axes[0].semilogy(np.arange(len(smooth(h["loss"]))) + len(h["loss"]) - len(smooth(h["loss"])), smooth(h["loss"]),
                 color="C0", label="smoothed")
axes[0].set_xlabel("training step"); axes[0].set_ylabel(r"$\mathcal{L}_{CD}$ (mean squared L2 per coordinate)")
axes[0].set_title("CD loss, exact teacher, mu = 0.95"); axes[0].legend()
axes[1].semilogy(*zip(*curve), "o-")
axes[1].axhspan(floor["mean"] - 2 * floor["std"], floor["mean"] + 2 * floor["std"], color="0.85", label="data floor (+- 2 std)")
axes[1].set_xlabel("training step"); axes[1].set_ylabel("sliced W2 to data (validation set)")
axes[1].set_title("one-step sample quality during training"); axes[1].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The loss is not a quality measure: it compares $f_\theta$ with a target network that itself moves
# as $\theta$ learns, so its level depends on how fast the target follows (section 4) and it is noisy
# from batch to batch. The distance of the samples to the data is the number to watch.
#
# ## 3. One step against the teacher's ODE
#
# `cmlite.sample(model, shape)` draws $x_T = T z$ and returns $f_\theta(x_T, T)$: **one** network
# evaluation. With several time points, `sample(model, shape, ts=[T, tau_2, ...])` runs
# `multistep_sample` (Algorithm 1), which alternates denoising and re-noising,
# $x \leftarrow f_\theta(x + \sqrt{\tau_n^2 - \epsilon^2}\, z, \tau_n)$, trading a few more evaluations
# for quality. The paper chooses the intermediate times $\tau_n$ by a greedy ternary search on the
# sample metric; `ternary_search_times` does the same here, on the *validation* data (the numbers we
# report use separate test data).

# %%
model = trainer.ema
times, val_scores = ternary_search_times(model, lambda x: sliced_wasserstein(x, data_val), n_steps=2,
                                         shape=(N_SEARCH, 2), seed=7, iters=8 if FAST else 12)
print("time points chosen by ternary search: " + ", ".join(f"{t:.3f}" for t in times))

tau_grid = np.geomspace(0.01, 20, 12 if FAST else 30)
sweep = [sliced_wasserstein(sample(model, (N_SEARCH, 2), ts=[T, float(tau)], generator=torch.Generator().manual_seed(7)),
                            data_val) for tau in tau_grid]
fig, ax = plt.subplots(figsize=(6, 3.6))
ax.semilogx(tau_grid, sweep, "o-", ms=3, label=r"two-step samples, $(T, \tau)$")
ax.axhline(val_scores[0], color="C1", ls="--", label="one step")
ax.axvline(times[1], color="k", lw=0.8, label=f"ternary search: tau = {times[1]:.3f}")
ax.set_xlabel(r"$\tau$"); ax.set_ylabel("sliced W2 to validation data"); ax.legend(fontsize=8)
ax.set_title("choosing the second time point")
plt.show()

# %%
results = {}   # name -> (NFE, samples)
gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
results["teacher ODE, Euler, 1 step"] = (1, ode_sample(gmm, (N_EVAL, 2), N=2, solver="euler", generator=gen()))
results["teacher ODE, Euler, 2 steps"] = (2, ode_sample(gmm, (N_EVAL, 2), N=3, solver="euler", generator=gen()))
results["teacher ODE, Heun, N = 18"] = (34, ode_sample(gmm, (N_EVAL, 2), N=18, solver="heun", generator=gen()))
for k in (1, 2):
    results[f"consistency model, {k} step{'s' if k > 1 else ''}"] = (k, sample(model, (N_EVAL, 2), ts=times[:k], generator=gen()))
sw = {name: sliced_wasserstein(x, data_test) for name, (nfe, x) in results.items()}
print(f"sliced W2 to {N_EVAL} held-out data points (lower is better; data floor {floor['mean']:.4f} +- {floor['std']:.4f}):")
for name, (nfe, _) in results.items():
    print(f"  {name:32s} NFE = {nfe:3d}   sliced W2 = {sw[name]:.4f}")

# %%
u = torch.linspace(-1.7, 1.7, 150, dtype=torch.float64)
X, Y = torch.meshgrid(u, u, indexing="xy")
dens = gmm.log_prob(torch.stack([X.ravel(), Y.ravel()], 1), t=EPS).exp().reshape(X.shape)
show = ["teacher ODE, Euler, 1 step", "teacher ODE, Heun, N = 18", "consistency model, 1 step", "consistency model, 2 steps"]
fig, axes = plt.subplots(1, 5, figsize=(18, 3.9))
panels = [("data", 0, data_test)] + [(name, results[name][0], results[name][1]) for name in show]
for ax, (name, nfe, x) in zip(axes, panels):
    ax.contourf(X, Y, dens, levels=15, cmap="Blues")
    ax.scatter(*x[:2000].T, s=1.5, c="k", alpha=0.5)
    ax.set_xlim(-1.7, 1.7); ax.set_ylim(-1.7, 1.7); ax.set_aspect("equal"); ax.set_xticks([]); ax.set_yticks([])
    ax.set_title(name if name == "data" else f"{name}\nNFE = {nfe}, SW2 = {sw[name]:.3f}", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# At the same cost of one or two evaluations, the teacher's ODE sampler collapses the ring onto its
# centre or smears it (Chapter 1), while the consistency model puts its samples on the eight modes.
# Compare the printed distances with the floor and with the 34-evaluation Heun sampler.
#
# Some one-step samples land *between* modes, and some always will: a continuous network cannot map
# the connected plane of noise onto eight separate blobs. The exact consistency function jumps from one
# mode to the next at the boundaries between its basins (Chapter 2); $f_\theta$ can only make those
# jumps steep, so the noise near a boundary lands on the bridge.
#
# ### What did $f_\theta$ learn?
#
# On this toy we know the exact consistency function (`reference_solve`), so we can measure
# $\|f_\theta(x_t, t) - f(x_t, t)\|$ on samples $x_t \sim p_t$ at every grid time
# (`cmlite.metrics.consistency_error`). For comparison: a zero CD loss would make $f_\theta$ equal to
# "run the teacher's Heun solver from $t_n$ down to $\epsilon$ on the same grid"; its distance to the
# exact $f$ is the discretisation error that CD with $N = 18$ cannot remove (Theorem 1: $O(\Delta t^2)$ for Heun).

# %%
grid = karras_boundaries(18)
n_ce = 300 if FAST else 1000
idx = list(range(1, 18, 4 if FAST else 2))
err_model, err_solver = [], []
for k in idx:
    tk = float(grid[k])
    x_t = gmm.sample(n_ce, t=tk, generator=torch.Generator().manual_seed(200 + k))
    f_exact = lambda x, t: reference_solve(gmm, x, tk, EPS, steps=100 if FAST else 400)  # noqa: E731
    err_model.append(consistency_error(model, f_exact, x_t, tk)["mean_l2"])
    zero_loss = lambda x, t: solve(gmm, x.double(), grid[: k + 1].flip(0), "heun")  # noqa: E731
    err_solver.append(consistency_error(zero_loss, f_exact, x_t, tk)["mean_l2"])
fig, ax = plt.subplots(figsize=(6.5, 4))
ax.loglog(grid[idx], err_model, "o-", label=r"trained $f_\theta$ (EMA)")
ax.loglog(grid[idx], err_solver, "s--", label="zero-CD-loss solution (teacher's Heun on the N = 18 grid)")
ax.set_xlabel("t (grid points)"); ax.set_ylabel(r"mean $\|f(x_t,t) - f_{\rm exact}(x_t,t)\|$, $x_t \sim p_t$")
ax.set_title("error against the exact consistency function"); ax.legend(fontsize=8)
plt.show()
print(f"mean distance to the exact consistency function, averaged over the {len(idx)} grid times shown: "
      f"trained model {np.mean(err_model):.3f}, zero-loss Heun solution {np.mean(err_solver):.3f} (data units; ring radius 1)")

# %% [markdown]
# ## 4. The target network: EMA rate $\mu$ and the stop-gradient
#
# The target $f_{\theta^-}(\hat x_{t_n}, t_n)$ is a regression label, not a second prediction. Two
# mechanisms keep it that way:
#
# * **stop-gradient**: no gradient flows through the target term, so each step is a regression of
#   $f_\theta(x_{t_{n+1}}, t_{n+1})$ onto a fixed label. Without it, the loss can also be lowered by moving
#   the *label* towards the prediction. Whether that hurts depends on the target, as the ablation shows.
# * **EMA target** $\theta^- \leftarrow \mu\theta^- + (1-\mu)\theta$: with $\mu = 0$ the label comes from the
#   current weights (the paper's CIFAR-10 recipe); with $\mu$ close to 1 it moves slowly, which damps
#   the feedback loop of a network chasing its own output (the paper's ImageNet and LSUN recipe uses $\mu = 0.95$).
#
# cmlite applies the stop-gradient by default (the target term is computed under `torch.no_grad`);
# `stop_gradient=False` on the loss lets gradients through the target, for this ablation only. We rerun
# the same training (same seed, steps and learning rate) with $\mu = 0$, $\mu = 0.99$, and $\mu = 0$
# *without* the stop-gradient (the target is then the online network itself, differentiated on both
# sides), and compare with the $\mu = 0.95$ run above.

# %%
runs = {"mu = 0.95": (trainer, curve)}
for mu in (0.0, 0.99):
    runs[f"mu = {mu}"] = train_cd(gmm, gmm, mu=mu, val=data_val)
runs["mu = 0, no stop-gradient"] = train_cd(gmm, gmm, mu=0.0, val=data_val, stop_gradient=False)
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for label, col in [("mu = 0.0", "C3"), ("mu = 0.95", "C0"), ("mu = 0.99", "C2"), ("mu = 0, no stop-gradient", "C1")]:
    tr, cv = runs[label]
    ls = smooth(tr.history["loss"])
    axes[0].semilogy(np.arange(len(ls)) + len(tr.history["loss"]) - len(ls), ls, color=col, label=label)
    axes[1].semilogy(*zip(*cv), "o-", color=col, label=label)
axes[1].axhspan(floor["mean"] - 2 * floor["std"], floor["mean"] + 2 * floor["std"], color="0.85", label="data floor (+- 2 std)")
axes[0].set_xlabel("training step"); axes[0].set_ylabel("CD loss (smoothed)"); axes[0].legend()
axes[1].set_xlabel("training step"); axes[1].set_ylabel("one-step sliced W2 to data"); axes[1].legend(fontsize=8)
axes[0].set_title("loss: its level depends on mu"); axes[1].set_title("one-step quality of the EMA model")
fig.tight_layout()
plt.show()
final_sw = {}
for label, (tr, cv) in runs.items():
    last = [v for _, v in cv[-3:]]
    final_sw[label] = one_step_sw(tr.ema, data_test)
    print(f"{label:>26}: one-step sliced W2 over the last three measurements (steps {cv[-3][0]}-{cv[-1][0]}): "
          + ", ".join(f"{v:.4f}" for v in last)
          + f";  test-set value at the end: {final_sw[label]:.4f}")
print(f"\nwithout the stop-gradient (mu = 0): {final_sw['mu = 0, no stop-gradient']:.4f};  with it, mu = 0: "
      f"{final_sw['mu = 0.0']:.4f}, mu = 0.95: {final_sw['mu = 0.95']:.4f};  data floor {floor['mean']:.4f}")

# %% [markdown]
# In the full-length run (without `CMLITE_FAST`), with this learning rate ($10^{-3}$, Adam, batch 256):
# $\mu = 0$ stalls far above the data floor, with a loss that is larger and jumps around, a sign of
# the network chasing its own moving output; $\mu = 0.99$ starts slowest (its target lags behind)
# and is still catching up with $\mu = 0.95$ at the end. The paper's $\mu = 0$ recipe for CIFAR-10 uses a
# smaller learning rate ($4\times10^{-4}$, RAdam) and batch 512.
#
# **The run without stop-gradient is the best one here** (our full-mode run: one-step sliced W2 0.0266
# against 0.0300 for $\mu = 0.95$; in fast mode the gap is larger, 0.061 against 0.407, because it also
# converges faster; the last printed line has this run's numbers). That contradicts the naive story "without
# stop-gradient the loss collapses both sides", and the reason is this chapter's teacher:
#
# * **An exact, deterministic teacher.** $\hat x_{t_n}$ is a fixed function of $x_{t_{n+1}}$, so the loss
#   $\mathbb E\,\|f_\theta(x_{t_{n+1}}, t_{n+1}) - f_\theta(\hat x_{t_n}, t_n)\|^2$ is an ordinary objective
#   whose zeros are exactly the consistent functions of Theorem 1, and the boundary condition rules out
#   collapse: at $n = 1$ the label is $f_\theta(\hat x_\epsilon, \epsilon) = \hat x_\epsilon$, which no weights can
#   move. Plain gradient descent on that objective (gradients through both sides) then converges faster
#   than the stop-gradient update, which can only pass the anchor at $\epsilon$ up the grid one interval
#   at a time, through a label that itself lags behind.
# * **When the stop-gradient matters: a random target.** If $\hat x_{t_n}$ is random given
#   $x_{t_{n+1}}$ (consistency training's one-sample target $x + t_n z$, Chapter 5; a noisy learned
#   teacher), the full gradient of the squared loss also descends on
#   $\mathbb E\,\operatorname{Var}[f_\theta(\hat x_{t_n}, t_n) \mid x_{t_{n+1}}]$, a term that shrinks when $f_\theta$
#   stops depending on its input: a pull towards flat, collapsed outputs. With the stop-gradient the
#   label is a regression target and its conditional *mean* is what is learned (the content of Theorem 2).
#   Chapter 5 runs the same ablation for consistency training: without stop-gradient it collapses
#   (every one-step sample ends up between the modes).
# * Two practical reasons besides: with $\mu > 0$ the target is an EMA copy, not the network being trained,
#   so there is nothing to differentiate; and backpropagating through the target doubles the backward
#   cost (for images: a second U-Net and LPIPS pass). The paper always stops the gradient.
#
# ## 5. A learned teacher
#
# In practice there is no exact denoiser: the teacher is a diffusion model trained by denoising score
# matching (Karras et al. 2022),
#
# $$\mathcal L_{DSM} = \mathbb E_{x, t, z}\ \lambda(t)\,\big\|D_\phi(x + t z, t) - x\big\|^2,\qquad
#   \ln t \sim \mathcal N(-1.2,\ 1.2^2),\qquad \lambda(t) = \frac{t^2 + \sigma_d^2}{(t\,\sigma_d)^2},$$
#
# with $D_\phi$ the EDM-preconditioned network (`EDMDenoiser`), trained by the same `Trainer`
# (no target network, `schedule=None`). Here: the two-moons data set, scaled to standard deviation 0.5.

# %%
moons = lambda n, generator=None: toy_2d("moons", n, generator)  # noqa: E731
moons_val = moons(N_EVAL, torch.Generator().manual_seed(300))
moons_test = moons(N_EVAL, torch.Generator().manual_seed(301))
moons_floor = data_floor(moons, sliced_wasserstein, N_EVAL, repeats=10, generator=302)
print(f"two moons, data-vs-data floor at n = {N_EVAL}: sliced W2 = {moons_floor['mean']:.4f} +- {moons_floor['std']:.4f}")

torch.manual_seed(0)
teacher_trainer = Trainer(EDMDenoiser(MLP(hidden=128, depth=3)), DenoisingScoreMatchingLoss(), moons,
                          TrainConfig(steps=TEACHER_STEPS, batch_size=256, lr=1e-3, ema_rate=0.999))
teacher_trainer.fit(progress=False)
teacher = teacher_trainer.ema
dsm = smooth(teacher_trainer.history["loss"])
print(f"teacher: {TEACHER_STEPS} DSM steps, final smoothed loss {dsm[-1]:.3f} (EDM-weighted squared error per coordinate)")

# %%
student, _ = train_cd(teacher, moons, mu=0.95)
cm2 = student.ema
m_results = {
    "teacher ODE, Euler, 1 step": (1, ode_sample(teacher, (N_EVAL, 2), N=2, solver="euler", generator=gen())),
    "teacher ODE, Heun, N = 18": (34, ode_sample(teacher, (N_EVAL, 2), N=18, solver="heun", generator=gen())),
}
m_times, _ = ternary_search_times(cm2, lambda x: sliced_wasserstein(x, moons_val), n_steps=2, shape=(N_SEARCH, 2),
                                  seed=7, iters=8 if FAST else 12)
for k in (1, 2):
    m_results[f"consistency model, {k} step{'s' if k > 1 else ''}"] = (k, sample(cm2, (N_EVAL, 2), ts=m_times[:k], generator=gen()))
m_sw = {name: sliced_wasserstein(x, moons_test) for name, (nfe, x) in m_results.items()}
print(f"two moons, sliced W2 to held-out data (floor {moons_floor['mean']:.4f} +- {moons_floor['std']:.4f}); "
      f"two-step time point tau = {m_times[1]:.3f}:")
for name, (nfe, _) in m_results.items():
    print(f"  {name:32s} NFE = {nfe:3d}   sliced W2 = {m_sw[name]:.4f}")

# %%
fig, axes = plt.subplots(1, 6, figsize=(21, 3.8))
axes[0].plot(np.arange(len(dsm)), dsm, color="C4"); axes[0].set_title("teacher: DSM loss (smoothed)")
axes[0].set_xlabel("step"); axes[0].set_ylim(0, None)
panels = [("data", 0, moons_test)] + [(name, *m_results[name]) for name in m_results]
for ax, (name, nfe, x) in zip(axes[1:], panels):
    ax.scatter(*x[:3000].T, s=1, c="k", alpha=0.4)
    ax.set_xlim(-1.8, 1.8); ax.set_ylim(-1.8, 1.8); ax.set_aspect("equal"); ax.set_xticks([]); ax.set_yticks([])
    ax.set_title(name if name == "data" else f"{name}\nNFE = {nfe}, SW2 = {m_sw[name]:.3f}", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# The DSM loss does not go to zero: even the ideal denoiser cannot recover $x$ from $x + tz$ exactly,
# so the loss levels off at the irreducible posterior variance. The teacher's one-step Euler sample is
# $D_\phi(x_T, T)$, which at $T = 80$ is an extrapolation (training draws $\ln t \sim \mathcal N(-1.2, 1.2^2)$,
# so $t = 80$ is almost never seen) — a second reason why one ODE step of a diffusion model is useless.
#
# The student can only be as good as its teacher: CD distils the teacher's ODE, errors included.
# Compare the consistency model's numbers with the teacher's 34-evaluation ODE sampler rather than
# with the data; the gap between the teacher and the data floor is the teacher's own error.
#
# ## Summary
#
# * CD trains $f_\theta$ to agree with its target network at neighbouring points of a *teacher's*
#   PF-ODE trajectory, one Heun step apart; the built-in boundary condition anchors the chain at $\epsilon$.
# * After training, one evaluation of $f_\theta$ stands in for the teacher's tens of ODE steps: compare
#   the printed one-step distance with the teacher's 34-evaluation Heun sampler and with the teacher's
#   own one- and two-step samplers, which fail outright. A second step at a well-chosen $\tau$ helps a
#   little more; the $\tau$ sweep shows how much the choice matters.
# * The EMA target matters: in the full run, $\mu = 0$ stalls far above the data floor while
#   $\mu = 0.95$ and $0.99$ keep improving.
#   The stop-gradient is on by default; `stop_gradient=False` exists only for the ablation above, where
#   the exact, deterministic teacher makes the full gradient harmless (and even faster); with a random
#   target (CT, Chapter 5) it collapses the model.
# * With a learned teacher the recipe is the same; the student inherits the teacher's errors.
#
# **Next:** consistency *training* (CT) removes the teacher altogether. (Where the grid goes to $N \to \infty$,
# continuous-time CD and CT, and the follow-ups iCT, ECT and sCM: Chapter 5, Section 7.)
