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
# # Chapter 1 — Diffusion and the probability-flow ODE
#
# A diffusion model turns noise into data by integrating an ordinary differential equation, the
# *probability-flow ODE*, from a large noise level $T$ down to (almost) zero. Every step of the solver
# costs one or two evaluations of a neural network, and a good sample needs tens of steps.
# This chapter builds that picture on a 2D toy where **everything is exact** (the noisy densities,
# the scores, the denoiser), so that we can see the ODE, its trajectories, and how sample quality
# depends on the number of function evaluations (NFE) — the cost that consistency models remove.
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
from cmlite import karras_boundaries, ode_sample, reference_solve, ring_mixture, solve
from cmlite.metrics import data_floor, sliced_wasserstein

FAST = os.environ.get("CMLITE_FAST") == "1"
set_small_model_threads()  # one torch thread for tiny tensors (CMLITE_THREADS overrides; see cmlite.threads)
torch.manual_seed(0)
np.random.seed(0)
EPS, T = cmlite.EPS, cmlite.T_MAX
print(f"fast mode: {FAST};  time range [eps, T] = [{EPS}, {T}]")

# %% [markdown]
# ## 1. The data: a ring of eight Gaussians
#
# $p_{\rm data} = \frac18 \sum_{k=1}^{8} \mathcal N(\mu_k, s^2 I)$ with the means $\mu_k$ on the unit
# circle and $s = 0.1$: multimodal, so that a sampler can fail visibly (missing or smeared modes),
# yet every quantity below is available in closed form.

# %%
gmm = ring_mixture(K=8, radius=1.0, std=0.1)
g = torch.Generator().manual_seed(0)
x0 = gmm.sample(2000, generator=g)
print(f"{gmm.means.shape[0]} components in d = {gmm.dim}; per-coordinate std of the data = {gmm.std:.3f}")


def density_grid(mix, t, lim, n=200):
    """log p_t on an n x n grid of [-lim, lim]^2 (for plotting), from the mixture's exact log_prob."""
    u = torch.linspace(-lim, lim, n, dtype=torch.float64)
    X, Y = torch.meshgrid(u, u, indexing="xy")
    lp = mix.log_prob(torch.stack([X.ravel(), Y.ravel()], 1), t=t).reshape(n, n)
    return X.numpy(), Y.numpy(), lp.numpy()


fig, ax = plt.subplots(figsize=(4.2, 4.2))
X, Y, lp = density_grid(gmm, EPS, 1.6)
ax.contourf(X, Y, np.exp(lp), levels=30, cmap="Blues")
ax.scatter(*x0[:500].T, s=3, c="k", alpha=0.6, label="samples")
ax.set_aspect("equal"); ax.set_title(r"$p_{\rm data}$ (shaded) and 500 samples"); ax.legend(loc="upper right")
plt.show()

# %% [markdown]
# ## 2. Noising: $x_t = x + t\,z$
#
# The variance-exploding (EDM) forward process adds Gaussian noise of standard deviation $t$:
#
# $$x_t = x_0 + t\, z,\qquad z \sim \mathcal N(0, I), \qquad\text{so}\qquad p_t = p_{\rm data} \ast \mathcal N(0, t^2 I).$$
#
# For a mixture this convolution is again a mixture, with every component widened:
# $p_t = \sum_k w_k\, \mathcal N\big(\mu_k, (s^2 + t^2) I\big)$. At $t = T = 80$ the data are
# invisible: $p_T \approx \mathcal N(0, T^2 I)$, which is where sampling starts.
# Top row: the same data points $x_0$ and the same noise $z$ at growing $t$. Bottom row: the exact density $p_t$.

# %%
ts_show = [0.05, 0.2, 0.5, 1.0, 3.0]
z = torch.randn(x0.shape, generator=g)
fig, axes = plt.subplots(2, len(ts_show), figsize=(3.0 * len(ts_show), 6.0))
for j, t in enumerate(ts_show):
    lim = 1.6 + 2.5 * t
    xt = x0 + t * z
    axes[0, j].scatter(*xt[:1000].T, s=2, alpha=0.5)
    X, Y, lp = density_grid(gmm, t, lim, n=150)
    axes[1, j].contourf(X, Y, np.exp(lp), levels=30, cmap="Blues")
    for ax in axes[:, j]:
        ax.set_xlim(-lim, lim); ax.set_ylim(-lim, lim); ax.set_aspect("equal")
    axes[0, j].set_title(f"$x_t = x_0 + t z$, t = {t}")
    axes[1, j].set_title(f"$p_t$, t = {t}")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Score and denoiser
#
# Two equivalent descriptions of $p_t$ drive every sampler. The **score** $\nabla_x \log p_t(x)$ and
# the **denoiser** $D(x, t) = \mathbb E[x_0 \mid x_t = x]$, the best guess of the clean point.
# Tweedie's formula links them:
#
# $$\nabla_x \log p_t(x) = \frac{D(x, t) - x}{t^2}.$$
#
# For the mixture, $D$ is a softmax-weighted average of the components' posterior means
# (`GaussianMixture.denoiser`; calling the mixture object is its denoiser). We check Tweedie against
# automatic differentiation of the exact $\log p_t$:

# %%
xq = 2.0 * torch.randn(500, 2, generator=g, dtype=torch.float64)
worst = 0.0
for t in [0.01, 0.1, 1.0, 10.0]:
    x_req = xq.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gmm.log_prob(x_req, t=t).sum(), x_req)
    worst = max(worst, float((grad - gmm.score(xq, t)).abs().max() * t ** 2))
print(f"max |autograd grad log p_t - (D - x)/t^2| * t^2 over 500 points and t in (0.01, 0.1, 1, 10): {worst:.1e}"
      "  (float64 round-off: Tweedie holds exactly)")

# %% [markdown]
# The arrows below go from $x$ to $D(x, t)$. At small $t$ the denoiser moves each point to its own
# mode; at large $t$ the noise hides which mode a point came from and $D$ points at the average of
# all modes (here, the origin).

# %%
u = torch.linspace(-2.2, 2.2, 15, dtype=torch.float64)
grid = torch.stack(torch.meshgrid(u, u, indexing="xy"), -1).reshape(-1, 2)
fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
for ax, t in zip(axes, [0.1, 0.5, 2.0]):
    X, Y, lp = density_grid(gmm, t, 2.4, n=150)
    ax.contourf(X, Y, np.exp(lp), levels=20, cmap="Blues")
    d = gmm.denoiser(grid, t) - grid
    ax.quiver(grid[:, 0], grid[:, 1], d[:, 0], d[:, 1], angles="xy", scale_units="xy", scale=1,
              width=0.004, color="C3")
    ax.set_xlim(-2.4, 2.4); ax.set_ylim(-2.4, 2.4); ax.set_aspect("equal")
    ax.set_title(f"$x \\to D(x, t)$ over $p_t$, t = {t}")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. The probability-flow ODE
#
# Song et al. (2021) showed that the deterministic ODE
#
# $$\frac{dx}{dt} = -t\, \nabla_x \log p_t(x) = \frac{x - D(x, t)}{t}$$
#
# has the same marginals $p_t$ as the noising process: if $x_T \sim p_T$ and we integrate it from
# $T$ down to $\epsilon$, then $x_\epsilon \sim p_\epsilon \approx p_{\rm data}$. (We stop at
# $\epsilon = 0.002$ rather than 0, where the drift is singular.) Each noise vector $x_T$ is carried
# along one smooth *trajectory*. Below we integrate 300 of them accurately (Heun on a fine Karras grid,
# see section 5) with `cmlite.ode.solve`, recording every step through its callback.

# %%
n_traj = 300
xT = T * torch.randn(n_traj, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
ts_fine = karras_boundaries(120 if FAST else 400).flip(0)  # descending: T -> eps
path = [xT]
x_eps = solve(gmm, xT, ts_fine, solver="heun", callback=lambda info: path.append(info["x"]))
path = torch.stack(path)            # (steps + 1, n_traj, 2)
tt = ts_fine.numpy()
mode = (x_eps @ gmm.means.T).argmax(1).numpy()  # colour each trajectory by the mode it ends in

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1, 1.35]})
ax = axes[0]
X, Y, lp = density_grid(gmm, EPS, 2.8)
ax.contourf(X, Y, np.exp(lp), levels=20, cmap="Greys")
late = tt <= 3.0                     # the 2D picture of the last part, t <= 3 (earlier the points are far out)
for i in range(120):
    ax.plot(path[late, i, 0], path[late, i, 1], lw=0.7, color=plt.cm.tab10(mode[i] % 10), alpha=0.8)
ax.scatter(*path[late][0, :120].T, s=6, c="k", label="$x_t$ at t = 3")
ax.scatter(*x_eps[:120].T, s=8, c="r", label=r"$x_\epsilon$")
ax.set_xlim(-2.8, 2.8); ax.set_ylim(-2.8, 2.8); ax.set_aspect("equal"); ax.legend(loc="upper right", fontsize=8)
ax.set_title("PF-ODE trajectories in the plane (t from 3 to $\\epsilon$)")

ax = axes[1]
# background: the exact density of the first coordinate, itself a 1-D Gaussian mixture
marg = cmlite.GaussianMixture(gmm.means[:, :1], gmm.stds, gmm.weights)
tgrid = torch.logspace(math.log10(EPS), math.log10(T), 300, dtype=torch.float64)
ygrid = torch.linspace(-4, 4, 300, dtype=torch.float64)
Yg, Tg = torch.meshgrid(ygrid, tgrid, indexing="ij")
dens = marg.log_prob(Yg.reshape(-1, 1), t=Tg.reshape(-1)).exp().reshape(Yg.shape)
ax.pcolormesh(tgrid.numpy(), ygrid.numpy(), dens.sqrt().numpy(), cmap="Blues", shading="auto")
for i in range(60):
    ax.plot(tt, path[:, i, 0], lw=0.7, color=plt.cm.tab10(mode[i] % 10))
ax.set_xscale("log"); ax.set_ylim(-4, 4); ax.set_xlim(EPS, T)
ax.set_xlabel("t (log scale)"); ax.set_ylabel("first coordinate $x^{(1)}$")
ax.set_title("first coordinate of 60 trajectories over $\\sqrt{p_t(x^{(1)})}$")
fig.tight_layout()
plt.show()

# %% [markdown]
# Reading the figure: for $t \gtrsim 3$ the trajectories are nearly straight rays towards the origin
# (the noise dominates and $D$ is close to the global mean); *which* mode a trajectory ends in is
# decided for $t$ roughly between 0.3 and 3, and below $t \approx 0.1$ the points hardly move.
#
# Because the ODE is deterministic it is also **invertible**: integrating forwards in time from
# $x_\epsilon$ back to $T$ recovers the starting noise (up to solver error). The map
# "noise $\to$ data" is a bijection; this is what a consistency model will learn to evaluate in one shot.

# %%
x_back = solve(gmm, x_eps, ts_fine.flip(0), solver="heun")   # ascending times: data -> noise
rel = float(((x_back - xT).norm(dim=1) / xT.norm(dim=1)).max())
print(f"encode-decode round trip over {n_traj} trajectories: max |x_T' - x_T| / |x_T| = {rel:.1e}"
      f"  (relative, with the {len(ts_fine) - 1}-step Heun solver)")

# %% [markdown]
# ## 5. Discretising the ODE: the Karras grid, Euler and Heun
#
# A solver walks through time points $T = t_N > t_{N-1} > \dots > t_1 = \epsilon$. The Karras et
# al. (2022) grid with $\rho = 7$,
#
# $$t_i = \Big(\epsilon^{1/\rho} + \tfrac{i-1}{N-1}\big(T^{1/\rho} - \epsilon^{1/\rho}\big)\Big)^\rho ,$$
#
# puts most points at small $t$, where the trajectories bend.

# %%
fig, ax = plt.subplots(figsize=(6, 3.4))
for rho in [1.0, 3.0, 7.0]:
    ax.plot(np.arange(1, 19), karras_boundaries(18, rho=rho).numpy(), "o-", ms=3, label=f"rho = {rho:g}")
ax.set_yscale("log"); ax.set_xlabel("index i"); ax.set_ylabel("$t_i$"); ax.legend()
ax.set_title("N = 18 time points between eps = 0.002 and T = 80")
plt.show()

# %% [markdown]
# Between two time points, with $h = t_n - t_{n+1} < 0$:
#
# * **Euler** (1 denoiser evaluation per step, local error $O(h^2)$, global error $O(h)$):
#   $\hat x = x + h\, d_1$, with $d_1 = \dfrac{x - D(x, t_{n+1})}{t_{n+1}}$.
# * **Heun** (2 evaluations, local error $O(h^3)$, global error $O(h^2)$): take the Euler guess
#   $x' = x + h\, d_1$, evaluate the slope there, $d_2 = \dfrac{x' - D(x', t_n)}{t_n}$, and average:
#   $\hat x = x + \tfrac h2 (d_1 + d_2)$.
#
# `cmlite.sampling.ode_sample(D, shape, N, solver)` draws $x_T = T z$ and runs $N - 1$ steps, so it costs
# NFE $= N - 1$ (Euler) or $2(N - 1)$ (Heun) denoiser evaluations. Here are the paths of a few
# trajectories with coarse grids, against the accurate solution:

# %%
x_start = xT[:6]
fig, axes = plt.subplots(1, 2, figsize=(11, 5))
for ax, N in zip(axes, [4, 8]):
    X, Y, lp = density_grid(gmm, EPS, 2.5, n=150)
    ax.contourf(X, Y, np.exp(lp), levels=15, cmap="Greys")
    for solver, col in [("euler", "C0"), ("heun", "C3")]:
        pts = [x_start]
        solve(gmm, x_start, karras_boundaries(N).flip(0), solver=solver, callback=lambda d: pts.append(d["x"]))
        pts = torch.stack(pts)
        for i in range(len(x_start)):
            ax.plot(pts[:, i, 0], pts[:, i, 1], "o-", color=col, ms=4, lw=1,
                    label=f"{solver} ({(N - 1) * (1 if solver == 'euler' else 2)} NFE)" if i == 0 else None)
    for i in range(len(x_start)):
        ax.plot(path[:, i, 0], path[:, i, 1], "k-", lw=1.0, alpha=0.7, label="accurate" if i == 0 else None)
    ax.set_xlim(-2.5, 2.5); ax.set_ylim(-2.5, 2.5); ax.set_aspect("equal"); ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"N = {N} time points (window [-2.5, 2.5]$^2$)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Error against NFE, trajectory by trajectory
#
# Because the exact denoiser is known, we can measure the *solver* error alone: the distance between
# each solver's end point and a high-accuracy reference (`cmlite.ode.reference_solve`: RK4 in
# $\ln t$, float64) from the **same** $x_T$. On a log-log plot the slope is the order of the method.

# %%
n_err = 200 if FAST else 1000
xT_err = T * torch.randn(n_err, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
x_ref, ref_err = reference_solve(gmm, xT_err, T, EPS, steps=400 if FAST else 2000, return_error=True)
print(f"reference solution: estimated error {ref_err:.1e} (max abs, Richardson estimate)")

N_list_err = [3, 5, 9, 17, 33, 65] if FAST else [3, 5, 9, 17, 33, 65, 129, 257]
err = {"euler": [], "heun": []}
for solver in err:
    for N in N_list_err:
        xs = solve(gmm, xT_err, karras_boundaries(N).flip(0), solver=solver)
        err[solver].append(float((xs - x_ref).norm(dim=1).pow(2).mean().sqrt()))

nfe = {"euler": [N - 1 for N in N_list_err], "heun": [2 * (N - 1) for N in N_list_err]}
fig, ax = plt.subplots(figsize=(6, 4.2))
for solver, col in [("euler", "C0"), ("heun", "C3")]:
    ax.loglog(nfe[solver], err[solver], "o-", color=col, label=solver)
n0 = np.array([8.0, 512.0])
ax.loglog(n0, 0.6 * (n0 / 8) ** -1.0, "k--", lw=0.8, label="slope -1")
ax.loglog(n0, 0.3 * (n0 / 8) ** -2.0, "k:", lw=0.8, label="slope -2")
ax.set_xlabel("NFE (denoiser evaluations)"); ax.set_ylabel(r"RMS $\|x_\epsilon^{solver} - x_\epsilon^{ref}\|$")
ax.set_title("solver error against cost"); ax.legend()
plt.show()
for solver in err:
    print(f"{solver:5s}  NFE: " + "  ".join(f"{n:4d}" for n in nfe[solver]))
    print(f"{'':5s}  RMS end-point error: " + "  ".join(f"{e:.1e}" for e in err[solver]))
slope = {s: np.polyfit(np.log(nfe[s][-3:]), np.log(err[s][-3:]), 1)[0] for s in err}
print(f"fitted slopes over the three finest grids: Euler {slope['euler']:.2f} (order 1 expected), "
      f"Heun {slope['heun']:.2f} (order 2 expected)")
shared = sorted(set(nfe["euler"]) & set(nfe["heun"]))
heun_wins = [n for n in shared if err["heun"][nfe["heun"].index(n)] < err["euler"][nfe["euler"].index(n)]]
print(f"at equal NFE (compared at {shared}), Heun's error is the lower one at NFE = {heun_wins}")

# %% [markdown]
# The orders themselves can be derived symbolically: expand one step of each method and the exact
# solution in powers of the step $h$ and find the first power at which they differ
# (`cmlite.theory.symbolic.local_truncation_order`, on a generic $dx/dt = g(x, t)$ and on the PF ODE of a Gaussian).

# %%
import cmlite.theory.symbolic as sym

for solver in ("euler", "heun"):
    for ode in ("generic", "gaussian"):
        r = sym.local_truncation_order(solver, ode)
        print(f"{solver:5s} on the {ode:8s} ODE: local error O(h^{r['order']}), hence global error O(h^{r['global_order']})")

# %% [markdown]
# Both methods reach their textbook order, but only once the steps are small. With few steps Heun is
# the *worse* method here. The extreme case is a single Heun step over all of $[\epsilon, T]$: it
# averages the slope at $T$ (which points at the global mean) with the slope at $\epsilon$ (near the
# data, almost zero), and so removes only about half of the noise. More generally, the narrow modes
# ($s = 0.1$) make the drift change quickly for $t$ between about 0.1 and 1, and a second-order
# method needs steps short compared with that scale before its higher order pays off.
#
# ## 6. Sample quality against NFE: diffusion sampling is slow
#
# What a user cares about is whether the *distribution* of samples is right. We compare $n$ samples
# with $n$ fresh data points by the sliced Wasserstein-2 distance,
#
# $$SW_2(\mu, \nu) = \Big(\mathbb E_{\theta \sim U(S^{1})}\, W_2^2(\theta^\top_\#\mu,\ \theta^\top_\#\nu)\Big)^{1/2},$$
#
# (`cmlite.metrics.sliced_wasserstein`, in the units of the data; the ring has radius 1). Two finite
# samples of the *same* distribution are not at distance 0, so we first measure that **floor**
# (`cmlite.metrics.data_floor`): no sampler can be told apart from the data below it.

# %%
n_q = 1000 if FAST else 20000
floor = data_floor(gmm.sample, sliced_wasserstein, n_q, repeats=10, generator=3)
print(f"data-vs-data floor at n = {n_q}: sliced W2 = {floor['mean']:.4f} +- {floor['std']:.4f} "
      "(mean +- std over 10 pairs of independent data samples)")
data_ref = gmm.sample(n_q, generator=torch.Generator().manual_seed(4))

N_list = [2, 3, 4, 6, 9, 13, 17, 33] if FAST else [2, 3, 4, 5, 6, 8, 10, 13, 17, 21, 26, 33, 49, 65]
quality, samples = {"euler": [], "heun": []}, {}
for solver in quality:
    for N in N_list:
        xs = ode_sample(gmm, (n_q, 2), N=N, solver=solver, generator=torch.Generator().manual_seed(5))
        quality[solver].append(sliced_wasserstein(xs, data_ref))
        samples[solver, N] = xs
nfe_q = {"euler": [N - 1 for N in N_list], "heun": [2 * (N - 1) for N in N_list]}

# %%
fig, ax = plt.subplots(figsize=(6.5, 4.3))
for solver, col in [("euler", "C0"), ("heun", "C3")]:
    ax.loglog(nfe_q[solver], quality[solver], "o-", color=col, label=f"{solver} (ode_sample)")
ax.axhspan(floor["mean"] - 2 * floor["std"], floor["mean"] + 2 * floor["std"], color="0.8",
           label="data-vs-data floor (mean +- 2 std)")
ax.axhline(floor["mean"], color="0.4", lw=0.8)
ax.set_xlabel("NFE (denoiser evaluations per sample)"); ax.set_ylabel("sliced W2 to data")
ax.set_title(f"sample quality against cost (n = {n_q} samples)"); ax.legend(fontsize=8)
plt.show()

# %%
print("NFE and sliced W2 to data (lower is better; floor "
      f"{floor['mean']:.4f} +- {floor['std']:.4f}):")
for solver in quality:
    print(f"  {solver:5s} " + "  ".join(f"{n}:{q:.3f}" for n, q in zip(nfe_q[solver], quality[solver])))
ok = floor["mean"] + 3 * floor["std"]
for solver in quality:
    hits = [n for n, q in zip(nfe_q[solver], quality[solver]) if q <= ok]
    msg = f"{hits[0]} NFE" if hits else f"more than {nfe_q[solver][-1]} NFE"
    print(f"  {solver}: fewest NFE tried with sliced W2 within the floor's mean + 3 std ({ok:.4f}): {msg}")

# %% [markdown]
# And what the samples look like at a few budgets (shaded: the data density):

# %%
show_N = [2, 4, 9, 17] if FAST else [2, 4, 6, 10, 17, 33]
fig, axes = plt.subplots(2, len(show_N), figsize=(2.8 * len(show_N), 5.8))
Xd, Yd, lpd = density_grid(gmm, EPS, 1.8, n=150)
for r, solver in enumerate(["euler", "heun"]):
    for c, N in enumerate(show_N):
        ax = axes[r, c]
        ax.contourf(Xd, Yd, np.exp(lpd), levels=15, cmap="Blues")
        ax.scatter(*samples[solver, N][:1000].T, s=1.5, c="k", alpha=0.5)
        ax.set_xlim(-1.8, 1.8); ax.set_ylim(-1.8, 1.8); ax.set_aspect("equal"); ax.set_xticks([]); ax.set_yticks([])
        nf = (N - 1) * (1 if solver == "euler" else 2)
        ax.set_title(f"{solver}, NFE = {nf}\nSW2 = {quality[solver][N_list.index(N)]:.3f}", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Summary
#
# * Noising $x_t = x + t z$ blurs the data into $p_t = p_{\rm data} \ast \mathcal N(0, t^2 I)$; the
#   denoiser $D(x,t)$ and the score are two views of $p_t$, tied by Tweedie's formula.
# * The PF ODE $dx/dt = (x - D(x,t))/t$ carries noise $x_T$ deterministically and invertibly to data.
# * Solving it costs NFE denoiser evaluations. With the *exact* denoiser, the printed table above shows
#   how many evaluations each solver needs before its samples are indistinguishable from data at this
#   sample size; with one or two evaluations both solvers produce a collapsed or smeared ring.
#   On images, each evaluation is a large U-Net, and published diffusion samplers use tens to
#   hundreds of them.
#
# **Next (Chapter 2):** the map "$x_t \mapsto$ end point of its trajectory" is a function of
# $(x_t, t)$ — the *consistency function*. If a network could evaluate it directly, one evaluation
# would give a sample.
