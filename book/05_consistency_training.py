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
# # Chapter 5 — Consistency training: no teacher
#
# Consistency distillation (Chapter 3) needs a pre-trained diffusion model to take one ODE step.
# **Consistency training** (CT, Song et al. 2023, Algorithm 3) drops the teacher altogether: it replaces
# the teacher's ODE step by the one thing every training pair already knows, the noise $z$ that made it.
# This chapter
#
# 1. shows that CT is CD with a one-sample score estimate, and why that is enough (Theorem 2, measured);
# 2. plots the schedules that make CT work, $N(k)$ and $\mu(k)$, in the paper's and the official code's form;
# 3. introduces *improved* CT (iCT: lognormal index distribution, pseudo-Huber distance, $\mu = 0$);
# 4. trains CT and iCT from scratch on a 2D Gaussian mixture and on a 2D data set, and compares their
#    samples with the data-vs-data floor.
#
# Set `CMLITE_FAST=1` in the environment for a quick, smaller run (used by the test suite).

# %%
import math
import os

import matplotlib.pyplot as plt
import numpy as np
import torch

import cmlite
from cmlite.threads import set_small_model_threads
from cmlite import (ConsistencyModel, ConsistencyTrainingLoss, CTSchedule, FixedSchedule, ICTSchedule,
                    ImprovedConsistencyTrainingLoss, MLP, PseudoHuber, Trainer, TrainConfig, ct_mu, ct_N,
                    euler_step, ict_N, karras_boundaries, l2, lognormal_index_probs, ring_mixture, sample,
                    toy_2d)
from cmlite.metrics import data_floor, log_likelihood, mmd, off_mode_fraction, off_mode_fraction_expected, sliced_wasserstein
from cmlite.theory import posterior_noise_quadrature, theorem2_table

FAST = os.environ.get("CMLITE_FAST") == "1"
set_small_model_threads()  # one torch thread for tiny tensors (CMLITE_THREADS overrides; see cmlite.threads)
torch.manual_seed(0)
np.random.seed(0)
EPS, T = cmlite.EPS, cmlite.T_MAX
STEPS = 300 if FAST else 3000         # training steps per model
BATCH = 256 if FAST else 512          # batch size
N_EVAL = 1000 if FAST else 4000       # samples per quality measurement
TH2_NS = (8, 16, 32, 64) if FAST else (8, 16, 32, 64, 128, 256, 512)   # grids for Theorem 2
TH2_B = 512 if FAST else 2048                                           # outer samples for Theorem 2
print(f"fast mode: {FAST};  {STEPS} training steps per model, batch {BATCH}, {N_EVAL} samples per measurement")

# %% [markdown]
# ## 1. From CD to CT: the noise knows the score
#
# CD with the Euler solver moves $x_{t_{n+1}} = x + t_{n+1} z$ one step along the PF ODE,
#
# $$\hat x^{\rm CD}_{t_n} = x_{t_{n+1}} + (t_n - t_{n+1})\,\frac{x_{t_{n+1}} - D(x_{t_{n+1}}, t_{n+1})}{t_{n+1}}
#   = x_{t_{n+1}} - (t_n - t_{n+1})\, t_{n+1}\, \nabla \log p_{t_{n+1}}(x_{t_{n+1}}).$$
#
# The true score is unknown without a teacher, but for this one training pair we know where
# $x_{t_{n+1}}$ came from: $x$ and $z$. Replacing the denoiser $D(x_{t_{n+1}}, t_{n+1}) = \mathbb E[x \mid x_{t_{n+1}}]$
# by the single sample $x$ (equivalently the score by $-(x_{t_{n+1}} - x)/t_{n+1}^2 = -z/t_{n+1}$) gives
#
# $$\hat x^{\rm CT}_{t_n} = x_{t_{n+1}} + (t_n - t_{n+1})\, z = x + t_n z ,$$
#
# the same data point noised with the **same** $z$ at the smaller level. The CT loss (Algorithm 3) is
#
# $$\mathcal L_{CT}^N(\theta, \theta^-) = \mathbb E\Big[\lambda(t_n)\, d\big(f_\theta(x + t_{n+1} z,\ t_{n+1}),\ f_{\theta^-}(x + t_n z,\ t_n)\big)\Big].$$
#
# The library's own Euler step, fed a "denoiser" that always answers $x$, lands exactly on $x + t_n z$:

# %%
gmm = ring_mixture(K=8, radius=1.0, std=0.1)      # the ring of eight Gaussians of Chapters 1-3
g = torch.Generator().manual_seed(0)
x = gmm.sample(5, generator=g, dtype=torch.float64)
z = torch.randn(5, 2, generator=g, dtype=torch.float64)
t_np1, t_n = 1.3, 0.9
one_sample_denoiser = lambda x_t, t: x          # noqa: E731  (D(x_t, t) := the x that made x_t)
x_hat = euler_step(one_sample_denoiser, x + t_np1 * z, t_np1, t_n)
print(f"max |Euler step with the one-sample denoiser - (x + t_n z)| = {float((x_hat - (x + t_n * z)).abs().max()):.1e}"
      "  (zero to rounding: CT is CD with Euler and this score estimate)")

# %% [markdown]
# **Why a one-sample estimate can be enough.** Given $x_{t_{n+1}}$, the pair $(x, z)$ is random: $x$ is
# any data point that could have produced $x_{t_{n+1}}$. Tweedie's formula says the CD target point is the
# *average* of the CT target points over that posterior:
# $\mathbb E[\hat x^{\rm CT}_{t_n} \mid x_{t_{n+1}}] = \hat x^{\rm CD}_{t_n}$ (Euler, true score).
# The picture below takes one noisy point between two modes and draws the posterior of the clean point
# $x$ (exact quadrature nodes of $x \mid x_{t_{n+1}}$ from `cmlite.theory.posterior_noise_quadrature`,
# sized by their weights), the CT target points $x + t_n z$, and the CD (Euler) target, their mean.
# (With $t_n = t_{n+1}/2$, each CT target is the midpoint between $x_{t_{n+1}}$ and its clean point $x$.)

# %%
x_np1 = torch.tensor([[0.95, 0.38]], dtype=torch.float64)      # a noisy point between two modes of the ring
tq_np1, tq_n = 0.6, 0.3
zq, wq = posterior_noise_quadrature(gmm, x_np1, torch.tensor([tq_np1], dtype=torch.float64), nodes=5)
zq, wq = zq[0], wq[0]
x_cd = euler_step(gmm, x_np1, tq_np1, tq_n)   # CD target: Euler step with the true denoiser
# the mean over *all* quadrature nodes (Gauss-Hermite is exact for this first moment)
mean_ct = (wq[:, None] * (x_np1 - tq_np1 * zq + tq_n * zq)).sum(0)
print(f"weighted mean of the CT targets: ({mean_ct[0]:.6f}, {mean_ct[1]:.6f});  "
      f"CD Euler target: ({x_cd[0, 0]:.6f}, {x_cd[0, 1]:.6f});  "
      f"difference {float((mean_ct - x_cd[0]).norm()):.0e} (rounding: Tweedie's formula holds exactly)")
keep = wq > 1e-3 * wq.max()                   # for the plot only: drop nodes of negligible weight
zq, wq = zq[keep], wq[keep] / wq[keep].sum()
x_clean = x_np1 - tq_np1 * zq                 # the data points x that go with each noise node
x_ct = x_clean + tq_n * zq                    # CT targets x + t_n z

fig, ax = plt.subplots(figsize=(5.5, 5.5))
bg = gmm.sample(3000, generator=torch.Generator().manual_seed(1))
ax.scatter(*bg.T, s=1, c="0.8", label="data")
sz = 400 * wq / wq.max()
ax.scatter(*x_clean.T, s=sz, c="tab:blue", alpha=0.5, label=r"posterior of $x$ given $x_{t_{n+1}}$")
ax.scatter(*x_ct.T, s=sz, c="tab:orange", alpha=0.5, label=r"CT targets $x + t_n z$")
ax.scatter(*x_np1.T, marker="x", s=120, c="k", label=rf"$x_{{t_{{n+1}}}}$ ($t_{{n+1}}$ = {tq_np1})")
ax.scatter(*x_cd.T, marker="*", s=250, c="tab:red", label=rf"CD target (Euler to $t_n$ = {tq_n})")
ax.set_xlim(-1.5, 1.5), ax.set_ylim(-1.5, 1.5), ax.set_aspect("equal")
ax.legend(fontsize=8, loc="lower left")
ax.set_title("CT targets scatter around the CD target")
plt.show()

# %% [markdown]
# ## 2. Theorem 2, measured
#
# **Theorem 2** (Song et al. 2023). With the true score and the Euler solver,
#
# $$\mathcal L_{CD}^N(\theta, \theta^-) = \mathcal L_{CT}^N(\theta, \theta^-) + o(\Delta t), \qquad \Delta t = \max_n |t_{n+1} - t_n| .$$
#
# The reason is the picture above: $\delta = \hat x^{\rm CT} - \hat x^{\rm CD} = (t_n - t_{n+1})(z - \mathbb E[z \mid x_{t_{n+1}}])$
# is $O(\Delta t)$ with conditional mean zero, so in a Taylor expansion of the target
# $f_{\theta^-}(\hat x^{\rm CT}) = f_{\theta^-}(\hat x^{\rm CD}) + J\delta + O(\delta^2)$ the first-order term
# averages out and only $O(\Delta t^2)$ is left. Two honest remarks before measuring:
#
# * with squared $L_2$ and a smooth $f_\theta$ **both** losses are themselves $O(\Delta t^2)$, so "loss gap
#   $= o(\Delta t)$" would hold for any teacher. The sharp check is the **gradient** with respect to
#   $\theta$: $\nabla_\theta \mathcal L_{CD}$ is $O(\Delta t)$, and the gap $\nabla_\theta(\mathcal L_{CD} - \mathcal L_{CT})$ is $O(\Delta t^2)$,
#   so the *relative* gradient gap should fall like $\Delta t^1$ — and stay $O(1)$ if the teacher's score is wrong;
# * a plain Monte Carlo estimate of the gap has $O(\Delta t)$ noise against an $O(\Delta t^2)$ signal.
#   `cmlite.theory.theorem2` therefore also averages the CT loss exactly over $z \mid x_{t_{n+1}}$
#   (Gauss–Hermite quadrature, fed through the library's own `ConsistencyTrainingLoss.at`), with common
#   random numbers across all $N$.
#
# `theorem2_table` does all of this on a 2D mixture of four Gaussians (a fixed, randomly initialised
# $f_\theta$; $\theta^- = \theta$), once with the exact teacher and once with a deliberately wrong one
# (component widths 0.35 instead of 0.25).

# %%
th2 = theorem2_table("mixture", Ns=TH2_NS, B=TH2_B, fit_range=(TH2_NS[-4], TH2_NS[-1]))
toy = cmlite.theory.get_toy("mixture").mixture
wrong = cmlite.GaussianMixture(toy.means, 0.35)               # the same means, wrong widths
th2_wrong = theorem2_table("mixture", Ns=TH2_NS, B=TH2_B, teacher=wrong, fit_range=(TH2_NS[-4], TH2_NS[-1]))
print(th2["description"])
print(f"{'N':>5}{'Delta t':>9}{'L_CD':>11}{'L_CT':>11}{'L_CD - L_CT':>14}{'(s.e.)':>10}"
      f"{'rel. grad gap':>15}{'wrong teacher':>15}")
for r, w in zip(th2["rows"], th2_wrong["rows"]):
    print(f"{r['N']:>5}{r['dt']:>9.3f}{r['loss_cd']:>11.3e}{r['loss_ct']:>11.3e}{r['loss_gap']:>14.3e}"
          f"{r['loss_gap_se']:>10.1e}{r['rel_grad_gap']:>15.4f}{w['rel_grad_gap']:>15.4f}")
print(f"\nfitted slopes over N in {th2['regime']['N']}: |loss gap| ~ Delta t^{th2['loss_gap_slope']:.2f} "
      f"(theory 2: o(Delta t) means > 1);  relative gradient gap ~ Delta t^{th2['rel_grad_gap_slope']:.2f} "
      f"(theory 1);  with the wrong teacher ~ Delta t^{th2_wrong['rel_grad_gap_slope']:.2f} (no decay expected)")

# %%
dt = np.array([r["dt"] for r in th2["rows"]])
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
ax = axes[0]
ax.loglog(dt, [r["loss_cd"] for r in th2["rows"]], "o-", label=r"$\mathcal{L}_{CD}$ (Euler, true score)")
ax.loglog(dt, [r["loss_ct"] for r in th2["rows"]], "s-", label=r"$\mathcal{L}_{CT}$")
ax.errorbar(dt, [abs(r["loss_gap"]) for r in th2["rows"]], yerr=[2 * r["loss_gap_se"] for r in th2["rows"]],
            fmt="^-", label=r"$|\mathcal{L}_{CD} - \mathcal{L}_{CT}|$ ($\pm$2 s.e.)")
ax.loglog(dt, abs(th2["rows"][-1]["loss_gap"]) * (dt / dt[-1]) ** 2, "k:", label=r"slope 2")
ax.loglog(dt, abs(th2["rows"][-1]["loss_gap"]) * (dt / dt[-1]), "k--", lw=0.8, label=r"slope 1 (the $O(\Delta t)$ that is ruled out)")
ax.set_xlabel(r"$\Delta t$ (largest grid gap)"), ax.set_title("losses and their gap")
ax.legend(fontsize=7)
ax = axes[1]
for res, lab, mk in [(th2, "exact teacher", "o-"), (th2_wrong, "wrong teacher (widths 0.35)", "s-")]:
    ax.errorbar(dt, [r["rel_grad_gap"] for r in res["rows"]], yerr=[2 * r["rel_grad_gap_se"] for r in res["rows"]],
                fmt=mk, label=lab)
ax.loglog(dt, th2["rows"][-1]["rel_grad_gap"] * dt / dt[-1], "k:", label="slope 1")
ax.set_xscale("log"), ax.set_yscale("log")
ax.set_xlabel(r"$\Delta t$"), ax.set_ylabel(r"$\|\nabla_\theta(\mathcal{L}_{CD} - \mathcal{L}_{CT})\| / \|\nabla_\theta \mathcal{L}_{CD}\|$")
ax.set_title("relative gradient gap"), ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Read the two panels together. Left: both losses shrink like $\Delta t^2$ and so does their gap
# (CT is the larger: it carries the extra variance of the one-sample estimate). Right: with the true score
# the gradients of CD and CT agree better and better as the grid is refined, at the predicted rate; with a
# wrong score the relative gap levels off — CD then distils the *teacher's* trajectories, CT still those
# of the data. That is the content of Theorem 2: for small $\Delta t$, training on $\mathcal L_{CT}$ is
# training on $\mathcal L_{CD}$ with the *exact* teacher, which nobody has.
#
# The catch is the noise: the per-sample difference is $O(\Delta t)$ with mean zero, so CT gradients are
# noisier than CD gradients, and a small $\Delta t$ (large $N$) makes the *signal* small too. That is what
# the schedules of the next section manage.
#
# ## 3. The schedules $N(k)$ and $\mu(k)$
#
# CT changes the grid during training (Song et al. 2023, Appendix C): at step $k$ of $K$,
#
# $$N(k) = \Big\lceil \sqrt{\tfrac{k}{K}\big((s_1 + 1)^2 - s_0^2\big) + s_0^2} - 1 \Big\rceil + 1,
#   \qquad \mu(k) = \exp\Big(\frac{s_0 \ln \mu_0}{N(k)}\Big),$$
#
# (CIFAR-10: $s_0 = 2$, $s_1 = 150$, $\mu_0 = 0.9$). Early on, a coarse grid gives large, low-variance
# differences and a fast-moving target (small $\mu$); later a fine grid reduces the bias of the
# discretisation and a slow target (large $\mu$) averages the noise. The official code divides by
# $N(k) - 1$ instead of $N(k)$ (`ct_mu(..., official=True)`), so that $\mu = \mu_0$ exactly at the start.
# Improved CT (Song & Dhariwal 2023) doubles $N$ in equal stages from $s_0 = 10$ to $s_1 = 1280$ and sets $\mu = 0$:
#
# $$N(k) = \min\big(s_0\, 2^{\lfloor k / K' \rfloor},\ s_1\big) + 1, \qquad K' = \Big\lfloor \frac{K}{\log_2\lfloor s_1 / s_0\rfloor + 1} \Big\rfloor .$$

# %%
K_paper = 800_000
ks = np.unique(np.geomspace(1, K_paper, 3000).astype(int)) - 1        # log-spaced steps, from k = 0
N_ct = [ct_N(k, K_paper) for k in ks]
N_ict = [ict_N(k, K_paper) for k in ks]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
axes[0].plot(ks + 1, N_ct, label=r"CT: $N(k)$, $s_0 = 2$, $s_1 = 150$")
axes[0].plot(ks + 1, N_ict, label=r"iCT: $s_0 = 10$, $s_1 = 1280$ (doubling)")
axes[0].set_ylabel("N(k)"), axes[0].set_yscale("log"), axes[0].set_title("discretisation schedule")
axes[1].plot(ks + 1, [ct_mu(n) for n in N_ct], label=r"paper: $\exp(s_0 \ln\mu_0 / N)$")
axes[1].plot(ks + 1, [ct_mu(n, official=True) for n in N_ct], "--", label=r"official code: $\exp(s_0 \ln\mu_0 / (N-1))$")
axes[1].axhline(0, c="tab:green", lw=2, label=r"iCT: $\mu = 0$")
axes[1].set_ylabel(r"target EMA $\mu(k)$"), axes[1].set_title("target-network EMA schedule")
for ax in axes:
    ax.set_xscale("log"), ax.set_xlabel("training step k + 1 (K = 800k, log scale)"), ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
for k in (0, K_paper // 100, K_paper):
    N = ct_N(k, K_paper)
    print(f"CT at k = {k:>6}: N = {N:>3}, mu = {ct_mu(N):.5f} (paper, /N) vs {ct_mu(N, official=True):.5f} "
          f"(official code, /(N - 1))")

# %% [markdown]
# Both schedules start at $N(0) = s_0 = 2$: the very first pairs are $(\epsilon, T)$, i.e. CT begins by
# learning to denoise from pure noise in one jump. The two $\mu$ variants differ only while $N$ is small:
# at the start the paper's form gives $\mu_0 = 0.9$ and the official code's $\mu_0^{s_0} = 0.81$; after 1% of
# training they agree to about $10^{-3}$, and at the end both are $\approx 0.9986$.
#
# ## 4. Improved consistency training
#
# iCT keeps Algorithm 3 and changes five things:
#
# * **no EMA target**, $\mu = 0$ ($\theta^- = \operatorname{stopgrad}\theta$), with $N$ doubling as above;
# * **which pairs are trained**: the index $n$ is drawn from a discretised lognormal over the boundaries,
#   $p(n) \propto \operatorname{erf}\frac{\ln t_{n+1} - P_{\rm mean}}{\sqrt2 P_{\rm std}} - \operatorname{erf}\frac{\ln t_n - P_{\rm mean}}{\sqrt2 P_{\rm std}}$,
#   $P_{\rm mean} = -1.1$, $P_{\rm std} = 2$ — the mass a lognormal puts on $[t_n, t_{n+1}]$ (`lognormal_index_probs`);
# * **weighting** $\lambda(t_n) = 1/(t_{n+1} - t_n)$, so that the per-pair loss does not vanish as the grid is refined;
# * **distance**: pseudo-Huber $d(a, b) = \sqrt{\|a - b\|^2 + c^2} - c$ with $c = 0.00054\sqrt{d}$ instead of squared $L_2$ or LPIPS;
# * **dropout** in the network during training (a sizeable rate in the U-Net; the iCT paper found it
#   important on images, where the consistency target is a noisy, high-variance regression label and a
#   large network overfits it). `MLP(..., dropout=p)` has it. In 2D it does not help: with our small MLP,
#   dropout 0.1 raised the share of one-step samples between the modes from 9.5% to 39%
#   (`bench/demo_ct_sweep.py`, configurations `ict` and `ict_dropout`), so the runs below use none.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for N in (11, 41, 161, 641, 1281):
    t = karras_boundaries(N)
    p = lognormal_index_probs(t)
    t_mid = torch.sqrt(t[1:] * t[:-1])
    # probability per unit of log t, so that grids of different N are comparable
    axes[0].plot(t_mid, p / torch.log(t[1:] / t[:-1]), label=f"N = {N}")
t = karras_boundaries(161)
t_mid = torch.sqrt(t[1:] * t[:-1])
axes[0].plot(t_mid, torch.full_like(t_mid, 1 / 160) / torch.log(t[1:] / t[:-1]), "k--",
             label="uniform n (CT), N = 161")
axes[0].set_xscale("log"), axes[0].set_xlabel(r"$t$ (geometric midpoint of $[t_n, t_{n+1}]$)"), axes[0].set_ylabel(r"$p(n) / \Delta \ln t$")
axes[0].set_title(r"which pairs $(t_n, t_{n+1})$ are trained"), axes[0].legend(fontsize=8)
for N in (11, 161, 1281):
    t = karras_boundaries(N)
    p = lognormal_index_probs(t)
    axes[1].step(np.arange(N - 1) / (N - 2), torch.cumsum(p, 0), where="post", label=f"N = {N}")
axes[1].set_xlabel(r"index position $n / (N - 2)$ on the grid"), axes[1].set_ylabel("cumulative probability")
axes[1].set_title("the same, as a CDF over grid positions"), axes[1].legend(fontsize=8)
fig.tight_layout()
plt.show()
t = karras_boundaries(161)
p = lognormal_index_probs(t)
print(f"N = 161: P(t_n < 0.1) = {float(p[t[:-1] < 0.1].sum()):.2f}, P(t_n > 10) = {float(p[t[:-1] > 10].sum()):.3f} "
      f"under the lognormal; uniform n gives {float((t[:-1] < 0.1).double().mean()):.2f} and "
      f"{float((t[:-1] > 10).double().mean()):.3f}")

# %% [markdown]
# On a log-$t$ axis the lognormal is the same bell for every $N$ (left): it concentrates training on
# $t \approx e^{-1.1} \approx 0.33$ and thins out the largest noise levels, where uniform sampling over the
# Karras grid spends a large share of its pairs.
#
# **Pseudo-Huber versus $L_2$.** For a residual $r = \|a - b\|$, the squared $L_2$ distance grows like $r^2$
# and its gradient like $2r$: one badly wrong pair dominates the batch. Pseudo-Huber behaves like
# $r^2 / 2c$ for $r \ll c$ and like $r - c$ for $r \gg c$, with a gradient bounded by 1: large residuals
# count, but linearly. (cmlite's `l2` averages over the $d$ coordinates, `PseudoHuber` uses the full norm;
# below both are evaluated on the same pairs of points.)

# %%
r = torch.logspace(-4, 1, 300, dtype=torch.float64)
a = torch.stack([r, torch.zeros_like(r)], 1).requires_grad_(True)     # pairs (a, 0) in 2D, ||a - 0|| = r
b = torch.zeros_like(a)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
curves = {"squared L2 (sum over coordinates)": lambda u, v: 2 * l2(u, v)}
for c in (0.00054 * math.sqrt(2), 0.00054 * math.sqrt(3 * 32 * 32), 0.1):
    curves[f"pseudo-Huber, c = {c:.4f}"] = PseudoHuber(c)
for name, d in curves.items():
    val = d(a, b)
    grad = torch.autograd.grad(val.sum(), a)[0][:, 0]
    axes[0].loglog(r, val.detach(), label=name)
    axes[1].loglog(r, grad, label=name)
axes[0].set_xlabel(r"$\|a - b\|$"), axes[0].set_ylabel("d(a, b)"), axes[0].set_title("distance")
axes[1].set_xlabel(r"$\|a - b\|$"), axes[1].set_ylabel(r"$\partial d / \partial \|a-b\|$")
axes[1].set_title("gradient: bounded by 1 for pseudo-Huber")
axes[0].legend(fontsize=7)
fig.tight_layout()
plt.show()
print(f"defaults: c = 0.00054 sqrt(d) = {0.00054 * math.sqrt(2):.5f} for 2D points, "
      f"{0.00054 * math.sqrt(3072):.4f} for CIFAR-10 images (d = 3072)")

# %% [markdown]
# ## 5. Training CT and iCT on the ring of Gaussians
#
# Both models are the skip-parameterised `ConsistencyModel` around the same residual `MLP`, trained by
# the same `Trainer` for the same number of steps; only the loss and the schedule differ:
#
# * **CT**: `ConsistencyTrainingLoss()` (squared $L_2$, uniform $n$ and $\lambda$) with `CTSchedule(K, s0=2, s1=40, mu0=0.9)`;
# * **iCT**: `ImprovedConsistencyTrainingLoss()` (pseudo-Huber, lognormal $n$, $\lambda = 1/\Delta t_n$) with
#   `ICTSchedule(K, s0=10, s1=160)` ($N$ = 11, 21, 41, 81, 161 in five equal stages);
# * **iCT with squared $L_2$**: the same, but `distance="l2"` — the pseudo-Huber ablation.
#
# The final grid sizes are scaled down from the paper's ($s_1$ = 150 and 1280 for 400k–800k steps) to our
# few thousand steps: a finer grid makes each pair's difference smaller and the gradient noisier, which
# a short run cannot average away. Adam with a cosine learning-rate decay, and an evaluation EMA of the
# weights (rate 0.995) for sampling.

# %%
def train(loss, schedule, data, lr, steps=STEPS, seed=0):
    """Train a consistency model on `data` with the given loss and (N, mu) schedule; return the Trainer."""
    torch.manual_seed(seed)
    model = ConsistencyModel(MLP(2, hidden=128, depth=3), sigma_data=0.5)
    cfg = TrainConfig(steps=steps, batch_size=BATCH, lr=lr, lr_schedule="cosine", ema_rate=0.995, seed=seed)
    trainer = Trainer(model, loss, data, cfg, schedule)
    trainer.fit(progress=False)
    return trainer


recipes = {
    "CT": lambda data: train(ConsistencyTrainingLoss(), CTSchedule(STEPS, s0=2, s1=40, mu0=0.9), data, lr=2e-3),
    "iCT": lambda data: train(ImprovedConsistencyTrainingLoss(), ICTSchedule(STEPS, s0=10, s1=160), data, lr=1e-3),
    "iCT, squared L2": lambda data: train(ImprovedConsistencyTrainingLoss(distance="l2"), ICTSchedule(STEPS, s0=10, s1=160),
                                          data, lr=1e-3),
}
trainers = {name: make(gmm) for name, make in recipes.items()}
print("trained:", ", ".join(f"{k} ({v.step} steps, final N = {v.history['N'][-1]}, final mu = {v.history['mu'][-1]:.4f})"
                            for k, v in trainers.items()))

# %%
def smooth(steps, v, w=50):
    """Moving average of v over w logged steps; returns (steps, averages) aligned."""
    w = max(1, min(w, len(v) // 5))
    return np.asarray(steps[w - 1:]), np.convolve(np.asarray(v, dtype=float), np.ones(w) / w, mode="valid")


fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
for (name, tr), ls in zip(trainers.items(), ("-", "-", "--")):
    h = tr.history
    axes[0].semilogy(*smooth(h["step"], h["loss"]), ls, label=name)
    axes[1].plot(h["step"], h["N"], ls, label=name)
    axes[2].plot(h["step"], h["mu"], ls, label=name)
axes[0].set_title("training loss (moving average)\n(different losses: compare shapes, not levels)")
axes[1].set_title("N(k) actually used"), axes[1].set_yscale("log")
axes[2].set_title(r"target EMA $\mu(k)$ actually used")
for ax in axes:
    ax.set_xlabel("step"), ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Loss values are no measure of sample quality. Look at iCT with squared $L_2$ (in full mode): its loss
# drops by about half at every doubling of $N$, not because the model got better at that moment but
# because neighbouring times got closer, so the two outputs differ less. iCT's weighting
# $\lambda = 1/(t_{n+1} - t_n)$ is designed to cancel that, and its pseudo-Huber loss stays roughly flat for the
# whole run while the samples improve. CT's loss falls as $N(k)$ grows for the same reason. Samples,
# not losses, are the measure.
#
# **Measuring samples.** We draw samples with one step ($\tau = (T)$), two steps
# ($\tau = (T, 0.585)$, the official CIFAR-10 choice) and three steps ($\tau = (T, 2, 0.3)$; Chapter 6
# chooses such times properly) from the same noise for every model, and compare them with fresh data by the sliced Wasserstein-2 distance and
# MMD$^2$ (`cmlite.metrics`). Two independent data sets of the same size do not score zero, so each
# number is read against the **data-vs-data floor** (`data_floor`: mean ± std over 5 pairs of data sets).

# %%
TWO_STEP = [T, 0.585]
THREE_STEP = [T, 2.0, 0.3]
data_ref = gmm.sample(N_EVAL, generator=torch.Generator().manual_seed(11))
floor = data_floor(gmm.sample, sliced_wasserstein, N_EVAL, repeats=5, generator=12)
floor_mmd = data_floor(gmm.sample, mmd, N_EVAL, repeats=5, generator=13)
print(f"data-vs-data floor at n = {N_EVAL}: sliced W2 {floor['mean']:.4f} ± {floor['std']:.4f}, "
      f"MMD^2 {floor_mmd['mean']:.1e} ± {floor_mmd['std']:.1e}  (what a perfect sampler would score)")


def evaluate(model, ref, density=None):
    """1- and 2-step samples from fixed noise, and their distances to the reference data."""
    out = {}
    for label, ts in (("1 step", [T]), ("2 steps", TWO_STEP), ("3 steps", THREE_STEP)):
        xs = sample(model, (N_EVAL, 2), ts=ts, generator=torch.Generator().manual_seed(21))
        row = {"x": xs, "sw2": sliced_wasserstein(xs, ref), "mmd": mmd(xs, ref)}
        if density is not None:
            row["loglik"] = log_likelihood(xs, density)[0]
            row["off"] = off_mode_fraction(xs, density)   # share of samples > 3 std from every mode
        out[label] = row
    return out


results = {name: evaluate(tr.ema, data_ref, gmm) for name, tr in trainers.items()}
data_fresh = gmm.sample(N_EVAL, generator=torch.Generator().manual_seed(14))
ll_data = log_likelihood(data_fresh, gmm)[0]
print(f"{'model':<18}{'steps':>8}{'sliced W2':>11}{'MMD^2':>11}{'mean log p':>12}{'off-mode':>10}")
print(f"{'data (floor)':<18}{'':>8}{floor['mean']:>11.4f}{floor_mmd['mean']:>11.1e}{ll_data:>12.3f}"
      f"{100 * off_mode_fraction(data_fresh, gmm):>9.1f}%")
for name, res in results.items():
    for label, row in res.items():
        print(f"{name:<18}{label:>8}{row['sw2']:>11.4f}{row['mmd']:>11.1e}{row['loglik']:>12.3f}{100 * row['off']:>9.1f}%")
print("(sliced W2 and MMD^2: lower is better, the floor is the best possible at this n; "
      "mean log p_data of the samples: data scores the value in the first row, samples off the modes score far lower;\n"
      f" off-mode: share of samples further than 3 std from every mode, {100 * off_mode_fraction_expected(gmm):.1f}% "
      "for data)")

# %%
def scatter_panels(results, ref, title, lim, fl):
    names = list(results)
    labels = list(results[names[0]])
    fig, axes = plt.subplots(len(labels), len(names) + 1, figsize=(3.1 * (len(names) + 1), 3.1 * len(labels)))
    for row, label in enumerate(labels):
        axes[row, 0].scatter(*ref.T, s=1, alpha=0.3, c="0.3")
        axes[row, 0].set_title("data")
        for j, name in enumerate(names, 1):
            r = results[name][label]
            axes[row, j].scatter(*r["x"].T, s=1, alpha=0.3)
            axes[row, j].set_title(f"{name}, {label}\nsliced W2 {r['sw2']:.3f}", fontsize=9)
    for ax in axes.flat:
        ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title + f"  (sliced W2 of data vs data: {fl['mean']:.3f})")
    fig.tight_layout()
    plt.show()


scatter_panels(results, data_ref, "ring of 8 Gaussians, no teacher", 1.6, floor)

# %% [markdown]
# What to look for. The numbers printed above are this run's; the description is of a full-mode run
# (3000 steps; fast mode trains ten times less and everything is further from the data). One-step CT
# samples fill a disc around the ring: in our full-mode run 55% of them lie further than 3 std from every
# mode (data: 1%). One-step iCT samples sit on the ring, the eight modes as dense spots joined by thin
# bridges, with 10% between modes, on a ring slightly smaller than the data's. The second step helps every
# model a lot (CT to 33% off-mode, iCT's sliced W2 from 4.8x to 2.3x the floor) — the sampler re-noises to
# a smaller $\tau$ and lets $f_\theta$ correct its first guess; a third step (at untuned times) helps less,
# or not at all. iCT stays ahead of CT at each step count, and neither reaches the floor in this budget.
# The pseudo-Huber ablation is a tie on the sliced W2 (one-step 0.106 against 0.101 with squared $L_2$,
# within what a single training seed can resolve), but not between the modes: with squared $L_2$ 26% of
# the one-step samples lie there, against 10%, and the mean log-density (−2.55 against −0.84) says the same.
#
# For comparison, CD with the *exact* teacher (Chapter 3, and `cmlite demo`) reaches the floor in one step
# on this data with the same network and budget: CT pays for the missing teacher with noisier gradients,
# as Theorem 2's discussion predicts.
#
# **Why one-step CT fills a disc, and what separates the modes.** CT regresses $f_\theta(x_{t_{n+1}}, t_{n+1})$
# onto $f_{\theta^-}(x + t_n z, t_n)$, a target that is random given $x_{t_{n+1}}$; at the fixed point of the
# squared loss, $f$ at $t_{n+1}$ is the conditional *mean* of $f$ at $t_n$ over that spread. Where $f$ jumps from
# one mode to the next (the boundaries between basins, Chapter 2), a mean over a spread that straddles the
# boundary lands between the modes; chained down the grid, the jumps become ramps and the ring a disc.
# Theorem 2 says this vanishes as $\Delta t \to 0$, but the original recipe stops at $N = 41$ and weights all
# pairs alike, so the pairs at small $t$, where the modes separate and the per-pair losses are tiny, barely
# steer the gradient. The same averaging, seen from far, is why iCT's one-step ring is too small: the mean
# of points spread along an arc lies inside the circle.
#
# `bench/demo_ct_sweep.py` took the improved recipe apart on `cmlite demo`'s settings (this ring, batch 512,
# 3000 steps, width 128, the same evaluation; one to three training seeds; the table in the README lists
# them all). Share of one-step samples further than 3 std from every mode (data: 1.1%):
#
# | recipe | one-step off-mode | two-step off-mode |
# | --- | ---: | ---: |
# | CT, $N(k)$ to 41, $\mu(k)$, pseudo-Huber (the demo's CT until now) | 43% (3 seeds) | 16% |
# | CT with lognormal $n$ | 33% | 10% |
# | **iCT** (lr $10^{-3}$) | **12%** (10–18%, 3 seeds) | **9%** |
# | iCT with $\lambda = 1$ instead of $1/\Delta t_n$ | 46% | 56% |
# | iCT with uniform $n$ instead of lognormal (lr $2\times10^{-3}$, clipped gradients; lognormal: 10%) | 37% | 40% |
# | iCT with dropout 0.1 | 39% | 18% |
# | iCT, lr $2\times10^{-3}$ / $5\times10^{-4}$ | 13–45% (unstable) / 39% | 29% / 10% |
# | iCT, final $N$ = 81, 321, 641 | 9–18% | 8–10% |
#
# So in 2D the decisive ingredient is the weighting $\lambda = 1/(t_{n+1} - t_n)$, with the lognormal index
# distribution next; both put the training signal where the ring's modes separate. With them, one-step CT
# separates the modes about as well as one-step CD with the exact teacher (11% between modes in
# `cmlite demo`), within the same budget, and `cmlite demo` now trains its CT with this recipe
# (`cmlite demo --ct ct` runs the old one). What it does not fix in this budget is the shrunken ring, which
# a second step corrects.

# %%
for name, res in results.items():
    print(f"{name:<16} sliced W2 / floor: " + ",  ".join(f"{lab} {row['sw2'] / floor['mean']:4.1f}x" for lab, row in res.items())
          + "  (1.0x = as good as a fresh data set)")

# %% [markdown]
# ### The stop-gradient, once more: a random target
#
# Chapter 3 trained CD with the *exact* teacher with and without the stop-gradient, and the run without it
# was the best: the target $\hat x_{t_n}$ was a fixed function of $x_{t_{n+1}}$. CT's target point
# $x + t_n z$ is random given $x_{t_{n+1}}$ (the picture of Section 1), and then the full gradient of the
# squared loss also shrinks $\mathbb E\,\operatorname{Var}[f_\theta(x + t_n z, t_n) \mid x_{t_{n+1}}]$, which it can do
# by making $f_\theta$ ignore its input. The same ablation as in Chapter 3 ($\mu = 0$, $N = 18$, squared $L_2$,
# same seed and budget), with and without the stop-gradient:

# %%
sg_runs = {sg: train(ConsistencyTrainingLoss(stop_gradient=sg), FixedSchedule(N=18, mu=0.0), gmm, lr=2e-3)
           for sg in (True, False)}
data_spread = float(data_ref.std(0).mean())
for sg, tr in sg_runs.items():
    xs = sample(tr.ema, (N_EVAL, 2), generator=torch.Generator().manual_seed(21))
    print(f"CT, mu = 0, {'with   ' if sg else 'without'} stop-gradient: one-step sliced W2 {sliced_wasserstein(xs, data_ref):.3f}, "
          f"std of the samples {float(xs.std(0).mean()):.3f} (data {data_spread:.3f}), "
          f"off-mode {100 * off_mode_fraction(xs, gmm):.0f}%")

# %% [markdown]
# Without the stop-gradient CT collapses: the samples shrink to a small blob around the centre of the ring,
# between all the modes (in our runs, fast and full mode alike, a sample std of about 0.2 against the
# data's 0.7, and every sample off-mode). With a random target the stop-gradient is what makes the update a regression
# onto the *conditional mean* of the target, the quantity Theorem 2 is about.
#
# ## 6. A data set without an analytic density: two moons
#
# `toy_2d("moons")` is two interleaved half-circles: thin curved manifolds, nothing a small Gaussian mixture
# describes, and no score in closed form. For CT nothing else is needed — the training loop only ever
# sees samples. Same recipes, same step budget (the pseudo-Huber ablation is skipped here).

# %%
moons = lambda n, generator=None: toy_2d("moons", n, generator)   # noqa: E731
moons_trainers = {name: recipes[name](moons) for name in ("CT", "iCT")}
moons_ref = moons(N_EVAL, torch.Generator().manual_seed(31))
moons_floor = data_floor(moons, sliced_wasserstein, N_EVAL, repeats=5, generator=32)
moons_results = {name: evaluate(tr.ema, moons_ref) for name, tr in moons_trainers.items()}
print(f"data-vs-data floor at n = {N_EVAL}: sliced W2 {moons_floor['mean']:.4f} ± {moons_floor['std']:.4f}")
for name, res in moons_results.items():
    for label, row in res.items():
        print(f"{name:<6}{label:>8}: sliced W2 {row['sw2']:.4f} ({row['sw2'] / moons_floor['mean']:.1f}x floor), "
              f"MMD^2 {row['mmd']:.1e}")

# %%
scatter_panels(moons_results, moons_ref, "two moons, no teacher", 1.5, moons_floor)

# %% [markdown]
# In our full-mode run, one-step samples have the rough extent of the moons but fill the space between
# them: CT's are a blob, iCT's a twisted band. With two and three steps iCT's two arcs separate and come
# within a small factor of the floor (the rest is mostly samples strung across the gap), while CT's stay
# fuzzy. At one step the sliced W2 even prefers CT's blob to iCT's band: a distance between distributions
# is a summary, not a judge of shape — look at the pictures too.
#
# ## 7. Where consistency training went next (no code here)
#
# * **Improved CT** (iCT, Song & Dhariwal 2023) is Section 4: the same discrete-time Algorithm 3 with a better
#   curriculum, weighting, index distribution, distance and dropout. It brought one-step CT on CIFAR-10 from
#   FID 8.70 to 2.83, without a teacher, and past CD (3.55).
# * **Continuous time.** Letting $N \to \infty$, the difference between the outputs at neighbouring times
#   becomes the time derivative of $f_\theta$ along the PF-ODE trajectory,
#   $\frac{d}{dt} f_\theta(x_t, t) = \partial_t f_\theta + \partial_x f_\theta \cdot \frac{dx_t}{dt}$, and the
#   training signal asks this derivative to vanish. The consistency-models paper already derives
#   continuous-time CD and CT (with $\theta^- = \operatorname{stopgrad}\theta$, the gradient of the discrete loss
#   multiplied by $N - 1$ converges). No discretisation error is left, but each step needs a Jacobian-vector
#   product (forward-mode differentiation through the network) instead of a second forward pass, and
#   training proved unstable at scale.
# * **ECT** (Geng et al. 2024, "Consistency models made easy") starts from a pre-trained diffusion model, which
#   is a consistency model for the largest possible gap (pairs $(t, r = 0)$: denoising), and shrinks the gap
#   $t - r$ between the two times during training towards the continuous-time limit. Tuning that way
#   reached a two-step CIFAR-10 FID of 2.73 in about one A100-hour (2.11 with a longer run).
# * **sCM** (Lu & Song 2024, sCT / sCD) made continuous-time training stable: the TrigFlow formulation
#   ($x_t = \cos t\, x_0 + \sin t\, z$, which unifies EDM and flow matching), normalised time derivatives,
#   an adaptive weighting and network changes that keep the Jacobian-vector products well behaved. It
#   scaled to 1.5 billion parameters on ImageNet 512; on CIFAR-10 sCT reaches a one-step FID of 2.97 and a
#   two-step FID of 2.06.
#
# cmlite implements the discrete-time algorithms of the paper and iCT; the FIDs above are the papers' own
# (the project's reference sheet, `method.md` §9), not reproduced here.
#
# ## Summary
#
# * CT is CD with the Euler solver and the one-sample score estimate $-z/t_{n+1}$: the target point is just
#   $x + t_n z$ (Algorithm 3). No teacher, no ODE solver, one extra forward pass per step.
# * Theorem 2, measured: with the true score, CD and CT losses differ by $O(\Delta t^2)$ and their gradients
#   agree to a relative $O(\Delta t)$; a wrong teacher's gap does not vanish. CT's price is variance.
# * The schedules manage that variance: $N(k)$ grows, $\mu(k)$ rises toward 1 (paper: $/N$, official:
#   $/(N - 1)$); iCT instead doubles $N$, drops the EMA target, reweights pairs by $1/\Delta t_n$, samples
#   them lognormally in $t$ and uses the pseudo-Huber distance.
# * On the ring, in a few thousand steps, the original CT recipe does *not* give a usable one-step generator:
#   its one-step samples fill a disc, most of them between the modes. iCT's does: its one-step samples sit on
#   the modes (on a slightly shrunken ring), because $\lambda = 1/\Delta t_n$ and the lognormal index
#   distribution train the times where the modes separate. Two steps close much of the remaining gap to
#   the data-vs-data floor for both; Chapter 6 studies that choice of steps.
# * Without a teacher the stop-gradient is not optional: with CT's random target the full gradient collapses
#   the model (Chapter 3's exact teacher was the exception).
