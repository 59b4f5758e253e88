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
# # Chapter 4 — Theorem 1 in practice
#
# Consistency distillation (Chapter 3) never shows the network the exact consistency function: it only
# asks $f_\theta$ to agree with itself one *teacher ODE step* apart. So even a perfect optimiser can
# only be as good as the solver that links neighbouring time points. Theorem 1 of Song et al. (2023)
# says how good that is: the error is of the order of the solver, $O(\Delta t)$ for Euler and
# $O(\Delta t^2)$ for Heun.
#
# This chapter measures that statement instead of trusting it. On analytic toys the function with
# **zero** CD loss is known exactly, so its distance to the exact consistency function can be
# computed for any grid; we fit the slopes, find where the asymptotic regime starts (and one toy where
# it starts late), check the solvers' local orders, and finally compare with small networks trained by
# CD, whose error has a second part that Theorem 1 does not speak about: optimisation.
#
# Everything runs in float64 on the tools of `cmlite.theory` (toys, exact reference trajectories, the
# zero-loss construction, slope fits). Set `CMLITE_FAST=1` in the environment for a quick, smaller run
# (used by the test suite); the statements in the text refer to the full run.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import NullFormatter

import cmlite
from cmlite.threads import set_small_model_threads
from cmlite import ConsistencyDistillationLoss, karras_boundaries, solve
from cmlite.theory import (end_points, fit_slope, get_toy, learned_cd_experiment, lipschitz_on_test_set,
                           local_error_order, theorem1_table, trajectories, zero_loss_consistency)

FAST = os.environ.get("CMLITE_FAST") == "1"
set_small_model_threads()  # one torch thread for tiny tensors (CMLITE_THREADS overrides; see cmlite.threads)
torch.manual_seed(0)
np.random.seed(0)
EPS, T = cmlite.EPS, cmlite.T_MAX

NS = (8, 16, 32, 64, 128) if FAST else (8, 16, 32, 64, 128, 256, 512)      # grid sizes of the error tables
FIT = (32, 128) if FAST else (64, 512)                                       # N range of the slope fits
NS_NARROW = (16, 32, 64, 128, 256) if FAST else (16, 32, 64, 128, 256, 512, 1024)
M_TEST = 16 if FAST else 32                                                  # test trajectories per toy
LEARNED = dict(Ns=(6, 24), steps=200, seeds=(0,), M=128) if FAST else \
    dict(Ns=(6, 12, 24, 48, 96), steps=1000, seeds=(0,), M=256)
print(f"fast mode: {FAST};  N up to {NS[-1]} (narrow toy: {NS_NARROW[-1]}), slope fits over N = {FIT[0]}..{FIT[1]}, "
      f"{M_TEST} test trajectories; learned networks: N in {LEARNED['Ns']}, {LEARNED['steps']} training steps")

# %% [markdown]
# ## 1. The theorem
#
# Take the Karras grid $\epsilon = t_1 < t_2 < \dots < t_N = T$ (Chapter 1) and write
# $\Delta t = \max_n (t_{n+1} - t_n)$ for its largest gap (near $T$). Let $\Phi_n$ be one step of the
# teacher's ODE solver from $t_{n+1}$ down to $t_n$, and $f(x, t) = f(x, t; \phi)$ the exact consistency
# function of the teacher's PF ODE.
#
# > **Theorem 1** (Song et al. 2023). If the solver has local error
# > $\|\Phi_n(x) - x^{\rm exact}(t_n)\| = O\big((t_{n+1} - t_n)^{p+1}\big)$ and $f_\theta$ is
# > $L$-Lipschitz in $x$, then $\mathcal L^N_{CD}(\theta, \theta) = 0$ implies
# > $$\sup_{n,\,x}\ \big\| f_\theta(x, t_n) - f(x, t_n; \phi) \big\| = O\big((\Delta t)^p\big).$$
# > Euler has $p = 1$, Heun $p = 2$.
#
# **Proof idea.** Write $e_n = \sup_x \|f_\theta(x, t_n) - f(x, t_n)\|$; the boundary condition gives
# $e_1 = 0$. Zero loss means $f_\theta(x, t_{n+1}) = f_\theta(\Phi_n(x), t_n)$, and the exact $f$ is
# constant along exact trajectories, $f(x, t_{n+1}) = f(x^{\rm exact}(t_n), t_n)$. Subtract and insert
# $\pm f_\theta(x^{\rm exact}(t_n), t_n)$:
#
# $$e_{n+1} \le \underbrace{L\,\|\Phi_n(x) - x^{\rm exact}(t_n)\|}_{\text{local error, magnified by } L}
#   + \underbrace{e_n}_{\text{error inherited}}
#   \quad\Longrightarrow\quad
#   e_n \le L C \sum_{k < n} (t_{k+1} - t_k)^{p+1} \le L C\, (\Delta t)^p \sum_k (t_{k+1} - t_k)
#   = L C\,(T - \epsilon)\,(\Delta t)^p .$$
#
# Each step adds one local error, stretched by at most $L$, and there are $O(1/\Delta t)$ steps: one
# power of $\Delta t$ is lost in the sum, exactly as for the global error of an ODE solver. The constant
# $L C (T - \epsilon)$ matters in practice: a large Lipschitz constant means the $(\Delta t)^p$ behaviour
# only shows once $\Delta t$ is small (section 4).
#
# ## 2. The function with zero CD loss
#
# Zero CD loss on the grid, $f_\theta(x, t_{n+1}) = f_\theta(\Phi_n(x), t_n)$ for every $x$, together with
# the boundary condition $f_\theta(x, t_1) = x$, determines $f_\theta$ on the grid completely, by induction:
#
# $$f^N(x, t_n) = \Phi_1 \circ \Phi_2 \circ \dots \circ \Phi_{n-1}(x),$$
#
# "run the solver from $t_n$ down to $\epsilon$" (`cmlite.theory.zero_loss_consistency`). No training is
# needed to know what a perfectly trained consistency model computes: it is the teacher's ODE solver on
# the training grid, compressed into one function evaluation.
#
# We check this with the library's own loss. `ConsistencyDistillationLoss` calls `model(x, t)` with one
# grid time per sample, so we wrap $f^N$ (a few lines: group the samples by grid index) and evaluate the
# CD loss on 4096 data points of the single Gaussian $\mathcal N(0, 0.5^2 I)$, whose exact consistency
# function is closed-form (Chapter 2).

# %%
gauss = get_toy("gaussian").mixture
N_DEMO = 18


def zero_loss_model(D, N, solver):
    """f^N of the N-point Karras grid as a callable model(x, t) with per-sample grid times t, shape (B,)."""
    grid = karras_boundaries(N)

    def f(x, t):
        idx = torch.searchsorted(grid, t.double())
        assert torch.equal(grid[idx], t.double()), "f^N is only defined at the grid times"
        out = torch.empty_like(x)
        for n in idx.unique().tolist():
            out[idx == n] = zero_loss_consistency(D, x[idx == n], n, grid, solver)
        return out
    return f


x_data = gauss.sample(4096, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
candidates = {
    "f^N from Euler": zero_loss_model(gauss, N_DEMO, "euler"),
    "f^N from Heun": zero_loss_model(gauss, N_DEMO, "heun"),
    "exact consistency function f": lambda x, t: gauss.consistency_function(x, t),
}
print(f"CD loss (squared L2 per coordinate, uniform weighting) on the N = {N_DEMO} grid, 4096 data points, "
      "the same noise and indices for every entry:")
for solver in ("euler", "heun"):
    loss = ConsistencyDistillationLoss(gauss, solver=solver)
    for name, f in candidates.items():
        value = float(loss(f, x_data, N=N_DEMO, generator=torch.Generator().manual_seed(2)).mean())
        print(f"  CD loss with the {solver:5s} teacher step, f_theta = {name:29s}: {value:.3e}")

# %% [markdown]
# Each solver's $f^N$ has CD loss exactly **zero** for its own solver, to the last bit: the online side
# runs the same floating-point operations as the target side plus one step. The *exact* consistency
# function does **not**: its loss is small but positive, because one solver step does not land exactly
# on the trajectory. CD therefore does not aim at $f$ at all; it aims at $f^N$, and Theorem 1 is a
# statement about the distance between the two. (And $f^N$ of one solver is not a minimiser for the
# other solver's loss.)
#
# The picture: one trajectory of the 4-component mixture (means on the unit circle, component std 0.25)
# and the $N = 6$ grid. From each grid point $x(t_n)$ of the exact trajectory, $f^N$ runs the solver's
# polygon down to $\epsilon$; where that polygon ends is $f^N(x(t_n), t_n)$. The exact consistency
# function would send all of them to the same point $x(\epsilon)$; the spread of the end points is the
# error Theorem 1 bounds, and its sup over $n$ (and over trajectories) is what we measure below.

# %%
mix_toy = get_toy("mixture")
mix = mix_toy.mixture
grid6 = karras_boundaries(6)
x_end = end_points(mix_toy, 8, seed=0)[1:2]                 # one trajectory, ending near the mode (-1, 0)
t_fine = torch.logspace(np.log10(EPS), np.log10(T), 400, dtype=torch.float64)
path, _ = trajectories(mix_toy, x_end, [float(v) for v in t_fine])          # exact trajectory, (400, 1, 2)
on_grid, _ = trajectories(mix_toy, x_end, [float(v) for v in grid6])         # x(t_n) at the grid times


def polygon(D, x, grid, n, solver):
    """The solver's path from grid[n] down to grid[0]: n + 1 vertices (times, points)."""
    pts = [x]
    solve(D, x, grid[: n + 1].flip(0), solver, callback=lambda info: pts.append(info["x"]))
    return grid[: n + 1].flip(0), torch.stack(pts)


def scale(tt):
    """Plot x / sqrt(1 + t^2): equal to x for t << 1, to the noise direction x / t for t >> 1."""
    return torch.sqrt(1 + tt ** 2)


fig, axes = plt.subplots(1, 3, figsize=(17, 5), gridspec_kw={"width_ratios": [1.2, 1.2, 1]})
ends, mismatch = {}, 0.0
for ax, solver in zip(axes[:2], ("euler", "heun")):
    ax.plot(t_fine, path[:, 0, 0] / scale(t_fine), "k-", lw=2.5, label="exact trajectory $x(t)$")
    ends[solver] = []
    for n in range(1, 6):
        tt, pts = polygon(mix, on_grid[n], grid6, n, solver)
        col = plt.cm.viridis(n / 6)
        ax.plot(tt, pts[:, 0, 0] / scale(tt), "o-", color=col, ms=5, lw=1.3,
                label=f"solver from $t_{n + 1}$ = {float(grid6[n]):.3g}")
        ends[solver].append(pts[-1, 0])
        # the polygon's end is exactly zero_loss_consistency(x(t_n), t_n)
        mismatch = max(mismatch, float((pts[-1] - zero_loss_consistency(mix, on_grid[n], n, grid6, solver)).abs().max()))
    ax.plot(grid6, on_grid[:, 0, 0] / scale(grid6), "ks", ms=4, label="$x(t_n)$ on the grid")
    ax.set_xscale("log"); ax.set_xlim(EPS * 0.7, T * 1.4)
    ax.set_xlabel("t (log scale)"); ax.set_ylabel(r"$x^{(1)} / \sqrt{1 + t^2}$")
    ax.set_title(f"{solver}: $f^N(x(t_n), t_n)$ = end of the polygon (N = 6)")
    ax.legend(fontsize=7, loc="upper right")
ax = axes[2]
ux = torch.linspace(-2.1, 0.3, 160, dtype=torch.float64)
uy = torch.linspace(-1.2, 1.2, 160, dtype=torch.float64)
Xg, Yg = torch.meshgrid(ux, uy, indexing="xy")
dens = mix.log_prob(torch.stack([Xg.ravel(), Yg.ravel()], 1), t=EPS).exp().reshape(Xg.shape)
ax.contourf(Xg, Yg, dens, levels=15, cmap="Greys")
for solver, mk in (("euler", "o"), ("heun", "s")):
    e = torch.stack(ends[solver])
    ax.scatter(e[:, 0], e[:, 1], marker=mk, s=55, zorder=3, c=[plt.cm.viridis(n / 6) for n in range(1, 6)],
               edgecolors="k", linewidths=0.6, label=f"{solver}: $f^N(x(t_n), t_n)$ (colours as left)")
ax.plot(x_end[0, 0], x_end[0, 1], "k*", ms=14, zorder=4, label=r"exact: $x(\epsilon)$")
ax.set_xlim(-2.1, 0.3); ax.set_ylim(-1.2, 1.2)
ax.set_aspect("equal"); ax.legend(fontsize=7, loc="lower left")
ax.set_title("where the polygons from $t_2, \\dots, t_6$ end, over $p_{\\rm data}$")
lims = [a.get_ylim() for a in axes[:2]]
for a in axes[:2]:  # the same vertical scale for both solvers
    a.set_ylim(min(lo for lo, _ in lims), max(hi for _, hi in lims))
fig.tight_layout()
plt.show()
print(f"max |end of the plotted polygon - zero_loss_consistency(x(t_n), t_n)| = {mismatch:.1e} (the same computation)")
for solver in ("euler", "heun"):
    dist = [float((e - x_end[0]).norm()) for e in ends[solver]]
    print(f"{solver:5s}, N = 6: distance of f^N(x(t_n), t_n) to x(eps) for t_n = "
          + ", ".join(f"{float(grid6[n]):.3g}" for n in range(1, 6)) + ":  "
          + ", ".join(f"{d:.3f}" for d in dist) + "  (data units; the modes are 1 apart from the origin)")

# %% [markdown]
# (The vertical axis shows $x^{(1)}/\sqrt{1 + t^2}$, so that the whole trajectory fits: it is $x^{(1)}$
# itself for $t \ll 1$ and the noise direction $x^{(1)}/t$ for $t \gg 1$.) Above $t \approx 6$ the trajectory
# is a straight ray, $x \propto t$, which both solvers follow almost exactly: the polygons from $t_5 = 24$
# and $t_6 = 80$ end at the same point. The damage is done by the two long steps through
# $t \approx 1$, where the trajectory bends towards its mode. With only six grid points Euler misses
# $x(\epsilon)$ by up to 0.39 and Heun by up to 0.70, a large fraction of the distance between modes;
# Heun's predictor step overshoots badly on such coarse steps, and its second order does not help yet.
# The longer the path (larger $t_n$), the more local errors it collects, as in the proof.
#
# ## 3. The error against $\Delta t$: Gaussian and mixture
#
# `theorem1_table` measures, for each $N$,
#
# $$e(N) = \max_{n}\ \max_{j}\ \big\| f^N(x_j(t_n), t_n) - x_j(\epsilon) \big\|_2 ,$$
#
# the Euclidean error, maximised over every grid time and over a **test set of exact trajectories**
# $x_j(t)$: their end points $x_j(\epsilon) \sim p_\epsilon$ are drawn with a fixed seed and the trajectories
# computed forwards, so that at each grid time the test points $x_j(t_n)$ are typical points of
# $p_{t_n}$ and the exact value $f(x_j(t_n), t_n) = x_j(\epsilon)$ is known without solving backwards. The
# sup over *all* $x \in \mathbb R^2$ in the theorem is replaced by this finite set; we return to that choice in section 4.
# The reference is closed-form for the Gaussian and RK4 in $\ln t$ for the mixture (its own error is
# estimated and printed). The slope $p$ of $\log e$ against $\log \Delta t$ is fitted over the finest grids.

# %%
tables = {name: theorem1_table(name, Ns=NS, M=M_TEST, fit_range=FIT) for name in ("gaussian", "mixture")}


def print_table(tab):
    print(f"toy '{tab['toy']}': {tab['description']}")
    print(f"  reference: {tab['reference']}, estimated error {tab['reference_error']:.1e}; "
          f"Lipschitz constant of f on the test set >= {tab['lipschitz_estimate']:.3g}")
    print(f"  {'N':>5} {'dt':>8} | {'Euler error':>11} {'local slope':>11} | {'Heun error':>11} {'local slope':>11} "
          f"{'t of max':>8}")
    eu, he = tab["solvers"]["euler"]["rows"], tab["solvers"]["heun"]["rows"]
    for a, b in zip(eu, he):
        sa = "" if a["local_slope"] is None else f"{a['local_slope']:.3f}"
        sb = "" if b["local_slope"] is None else f"{b['local_slope']:.3f}"
        print(f"  {a['N']:>5} {a['dt']:>8.3g} | {a['error']:>11.3e} {sa:>11} | {b['error']:>11.3e} {sb:>11} "
              f"{b['argmax_t']:>8.3g}")
    lo, hi = tab["regime"]["N"]
    print(f"  fitted slopes over N = {lo}..{hi} (dt = {tab['regime']['dt'][0]:.3g}..{tab['regime']['dt'][1]:.3g}): "
          f"Euler {tab['solvers']['euler']['slope']:.3f} (theory 1), Heun {tab['solvers']['heun']['slope']:.3f} (theory 2)")


def regime_start(rows, p, tol=0.1):
    """Describe where the asymptotic regime starts: the first refinement N_prev -> N from which every local
    slope is within tol of p."""
    for i in range(1, len(rows)):
        if all(r["local_slope"] is not None and abs(r["local_slope"] - p) <= tol for r in rows[i:]):
            return (f"local slopes within {tol} of {p} for every refinement from N = {rows[i - 1]['N']} -> "
                    f"{rows[i]['N']} (dt = {rows[i]['dt']:.3g}) on")
    return f"local slopes not yet within {tol} of {p} in this N range"


for tab in tables.values():
    print_table(tab)
    for solver, p in (("euler", 1), ("heun", 2)):
        print(f"  {solver}: {regime_start(tab['solvers'][solver]['rows'], p)}")
    print()

# %% [markdown]
# How to read the table: *error* is $e(N)$ in data units (the Gaussian has std 0.5, the mixture's modes
# lie on the unit circle); *local slope* is $\log(e_{i}/e_{i-1}) / \log(\Delta t_{i}/\Delta t_{i-1})$
# between neighbouring rows; *t of max* is the grid time where Heun's sup over $n$ is attained. The
# sup sits at $t_N = T$: the longest polygon, from $T$ down, collects the most local errors.
# $\Delta t$ is the largest gap, the one next to $T$; on the Karras grid every gap shrinks like $1/N$,
# so the slopes would be the same whichever gap we called $\Delta t$.

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
for ax, (name, tab) in zip(axes, tables.items()):
    dts = np.array([r["dt"] for r in tab["solvers"]["euler"]["rows"]])
    for solver, col in (("euler", "C0"), ("heun", "C3")):
        res = tab["solvers"][solver]
        err = [r["error"] for r in res["rows"]]
        ax.loglog(dts, err, "o", color=col, ms=6, label=f"{solver}: $e(N)$")
        fit_dt = np.array(tab["regime"]["dt"])
        ax.loglog(fit_dt, np.exp(res["intercept"]) * fit_dt ** res["slope"], "-", color=col, lw=2,
                  label=f"{solver}: fitted slope {res['slope']:.2f} (N = {FIT[0]}..{FIT[1]})")
    # reference lines of slope exactly 1 and 2, anchored at the smallest Delta t
    anchor = {"euler": 2.0, "heun": 0.5}
    for solver, p, ls in (("euler", 1, "--"), ("heun", 2, ":")):
        e0 = tab["solvers"][solver]["rows"][-1]["error"]
        ax.loglog(dts, anchor[solver] * e0 * (dts / dts[-1]) ** p, ls, color="0.4", lw=1,
                  label=f"slope {p} (reference)")
    ax.set_xlabel(r"$\Delta t = \max_n (t_{n+1} - t_n)$")
    ax.set_title(f"{name}: {'closed-form' if name == 'gaussian' else 'RK4'} reference, "
                 f"{M_TEST} typical trajectories")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
axes[0].set_ylabel(r"$\max_{n,j} \|f^N(x_j(t_n), t_n) - x_j(\epsilon)\|$")
fig.suptitle("Theorem 1 with zero CD loss: error of the solver's consistency function against $\\Delta t$")
fig.tight_layout()
plt.show()

# %% [markdown]
# On both toys the measured slopes are the theorem's: 1.01 for Euler and 2.05 for Heun over
# $N = 64..512$ ($\Delta t$ from 6.7 down to 0.85), on the Gaussian and on the mixture alike. The local
# slopes show where the asymptotic regime starts: Euler's are within 0.1 of 1 from $N = 32$
# ($\Delta t \approx 13$) on, Heun's within 0.2 of 2 from $N = 64$ and within 0.1 from $N = 128$
# ($\Delta t \approx 3.4$). On coarser grids Heun's error falls *faster* than $\Delta t^2$ (local slopes
# near 3): at $N = 8$ it is not in the asymptotic regime at all, and is even larger than Euler's. Past
# the crossover the second order pays off: at $N = 512$ Heun is about 100 times more accurate than Euler
# for twice the cost per step. (In fast mode the grids stop at $N = 128$ and the fits use $N = 32..128$,
# which still contains part of Heun's pre-asymptotic bend: read the printed numbers.)
#
# ## 4. Narrow, well-separated modes: the asymptotic regime starts late
#
# The constant in $O(\Delta t^p)$ contains the Lipschitz constant $L$ of $f_\theta$; for $f^N$, which
# converges to $f$, it is essentially that of the exact consistency function. For a mixture of narrow,
# well-separated modes, the exact consistency function is very steep near the *separatrix*, the set of
# points whose trajectories end between the modes: two nearby noisy points there go to different
# modes. The `narrow` toy makes this extreme: two modes $\mathcal N((\pm 1, 0), 0.2^2 I)$, ten standard
# deviations apart. Its `segment` test set places the trajectory end points evenly on the bridge
# between the two means, so the trajectories run close to the separatrix $x^{(1)} = 0$; that is
# exactly where the sup of Theorem 1 lives.
#
# `lipschitz_on_test_set` gives a lower estimate of $L$ from the test trajectories:
# $\max_{j \ne k} \|x_j(\epsilon) - x_k(\epsilon)\| / \|x_j(t) - x_k(t)\|$. Applied one time slice at a
# time, it shows *where in time* the stretching happens.

# %%
narrow = get_toy("narrow")
E_seg = end_points(narrow, 32, "segment")
t_slices = torch.logspace(np.log10(EPS), np.log10(T), 50 if FAST else 120, dtype=torch.float64)
X_seg, _ = trajectories(narrow, E_seg, [float(v) for v in t_slices])
stretch = {"narrow, bridge (segment) test set": (X_seg, E_seg)}
for name in ("gaussian", "mixture"):
    E = end_points(name, 32, "typical")
    stretch[f"{name}, typical test set"] = (trajectories(name, E, [float(v) for v in t_slices])[0], E)
E_nt = end_points(narrow, 32, "typical")
stretch["narrow, typical test set"] = (trajectories(narrow, E_nt, [float(v) for v in t_slices])[0], E_nt)

fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
ax = axes[0]
show_t = t_slices <= 3.0
for j in range(32):
    ax.plot(t_slices[show_t], X_seg[show_t, j, 0], color=plt.cm.coolwarm(j / 31), lw=1)
ax.set_xscale("log"); ax.set_xlabel("t (log scale)"); ax.set_ylabel("first coordinate $x^{(1)}$")
ax.set_title("narrow toy: 32 exact trajectories ending on the bridge between the modes")
ax = axes[1]
for (name, (X, E)), col in zip(stretch.items(), ("C3", "C0", "C2", "C1")):
    lip_t = [lipschitz_on_test_set(X[k:k + 1], E) for k in range(len(t_slices))]
    ax.loglog(t_slices, lip_t, color=col, label=f"{name}: max {max(lip_t):.3g}")
ax.set_xlabel("t (log scale)"); ax.set_ylabel(r"$\max_{j \ne k} \|x_j(\epsilon) - x_k(\epsilon)\| / \|x_j(t) - x_k(t)\|$")
ax.set_title("how much the exact $f(\\cdot, t)$ stretches distances on each test set")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Left: the trajectories that end near the middle of the bridge (light colours) run within a hair of
# $x^{(1)} = 0$ down to $t \approx 0.3$, and only then fan out over the bridge: at larger $t$ the noise
# has not yet decided which mode they belong to. Right: the resulting stretch factor, slice by slice.
# On typical points of the Gaussian and of the 4-mode mixture (and even of the narrow toy) it stays
# between about 1 and 6; on the narrow toy's bridge it rises to about $3 \times 10^4$ around
# $t \approx 1$, where the two modes separate. A local error made there is magnified by that much
# before it reaches $\epsilon$.
#
# So the asymptotic regime of Theorem 1 must start late on this test set. We extend the grid to larger
# $N$ to see it:

# %%
tab_narrow = theorem1_table(narrow, Ns=NS_NARROW, M=32, test_set="segment", fit_range=NS_NARROW[-2:])
tab_narrow["toy"] = "narrow (segment test set)"
print_table(tab_narrow)
same_range = [r for r in tab_narrow["solvers"]["euler"]["rows"] if FIT[0] <= r["N"] <= FIT[1]]
print(f"  fitted over N = {FIT[0]}..{FIT[1]}, the range used for the other two toys: "
      + ", ".join(f"{solver} {fit_slope([r['dt'] for r in rows], [r['error'] for r in rows])[0]:.3f}"
                  for solver in ("euler", "heun")
                  for rows in [[r for r in tab_narrow['solvers'][solver]['rows'] if FIT[0] <= r['N'] <= FIT[1]]]))
for solver, p in (("euler", 1), ("heun", 2)):
    print(f"  {solver}: {regime_start(tab_narrow['solvers'][solver]['rows'], p)}")

# %%
fig, ax = plt.subplots(figsize=(7.5, 4.6))
styles = {"gaussian": ("C0", "o"), "mixture": ("C2", "s"), "narrow (segment test set)": ("C3", "^")}
for tab in list(tables.values()) + [tab_narrow]:
    col, mk = styles[tab["toy"]]
    for solver, ls in (("euler", "--"), ("heun", "-")):
        rows = tab["solvers"][solver]["rows"][1:]
        ax.semilogx([r["dt"] for r in rows], [r["local_slope"] for r in rows], ls, marker=mk, color=col, ms=5,
                    label=f"{tab['toy']}, {solver}")
for p in (1, 2):
    ax.axhline(p, color="0.5", lw=0.8)
ax.invert_xaxis()
ax.set_xlabel(r"$\Delta t$ (finer grids to the right)"); ax.set_ylabel("local slope of log error vs log $\\Delta t$")
ax.set_title("where the asymptotic regime starts (Euler dashed, Heun solid)")
ax.legend(fontsize=7, ncol=2)
plt.show()

# %% [markdown]
# On the Gaussian and the 4-mode mixture the local slopes settle at their theoretical values once
# $\Delta t \lesssim 3$–7 ($N \ge 64$–128). On the narrow toy's bridge they approach 1 and 2 from
# *below*, and slowly: in the full run they are 0.95 (Euler) and 1.94 (Heun) only at $N = 1024$
# ($\Delta t \approx 0.43$), still rising. Fitted over $N = 64..512$ like the other toys they give about
# 0.86 and 1.75, numbers that would seem to contradict the theorem although nothing is wrong: the
# constant $L C$ is simply huge, and the higher-order terms are not yet negligible. For Heun the sup is
# now attained near $t \approx 0.5$ (column *t of max*), inside the region where the stretch factor is
# large, no longer at $T$.
#
# Which numbers should be quoted, then? The theorem is about the sup over **all** $x$; a test set of
# typical points underestimates that sup wherever the data have low-density bridges, and a finite test
# set can never certify it. The honest statement is a triple: the toy, the test set and norm (here: the
# Euclidean norm, max over grid times and over the listed trajectories), and the $\Delta t$ range of the fit.
#
# ## 5. The local error orders
#
# The hypothesis of the theorem is a *local* error $O(h^{p+1})$ per step. Two independent checks:
# `local_error_order` takes **one** step of the library's `euler_step` / `heun_step` from $t = 1$ to
# $1 - h$ on the Gaussian PF ODE (closed-form flow) and fits the slope of the error against $h$;
# `cmlite.theory.symbolic.local_truncation_order` expands a step and the exact solution in powers of
# $h$ with sympy, on a generic ODE $dx/dt = g(x, t)$ and on the Gaussian PF ODE, and reports the
# first power at which they differ.

# %%
import cmlite.theory.symbolic as sym

lte = {solver: local_error_order(solver) for solver in ("euler", "heun")}
fig, ax = plt.subplots(figsize=(5.5, 4))
for (solver, r), col in zip(lte.items(), ("C0", "C3")):
    ax.loglog(r["h"], r["error"], "o-", color=col, label=f"{solver}: slope {r['slope']:.2f}")
    print(f"{solver:5s}: one step from t = 1 to 1 - h, max error over 64 points of p_1 for h = "
          + ", ".join(f"{h:g}" for h in r["h"]) + ": " + ", ".join(f"{e:.2e}" for e in r["error"])
          + f";  fitted slope {r['slope']:.2f} (theory {2 if solver == 'euler' else 3})")
ax.set_xticks(lte["euler"]["h"], [f"{h:g}" for h in lte["euler"]["h"]])
ax.xaxis.set_minor_formatter(NullFormatter())
ax.set_xlabel("step h (from t = 1 to 1 - h)"); ax.set_ylabel("local error of one step"); ax.legend()
ax.set_title("local truncation error, Gaussian PF ODE")
fig.tight_layout()
plt.show()
for solver in ("euler", "heun"):
    for ode in ("generic", "gaussian"):
        r = sym.local_truncation_order(solver, ode)
        print(f"sympy, {solver:5s} on the {ode:8s} ODE: step - exact = O(h^{r['order']}) "
              f"(leading coefficient: {r['leading_coefficient']}), so global order p = {r['global_order']}")

# %% [markdown]
# Both checks agree: Euler's local error is $O(h^2)$ and Heun's $O(h^3)$, so $p = 1$ and $p = 2$,
# matching the global slopes of section 3. The Gaussian's leading coefficient is proportional to
# $x - \mu$: the farther a point is from the mean, the larger its local error.
#
# ## 6. Theorem 1 with learned networks
#
# A trained network does not reach zero loss. Its error against the exact $f$ has two parts:
#
# * **discretisation**: the distance from $f^N$ to $f$, Theorem 1's $O(\Delta t^p)$, computed exactly above;
# * **optimisation**: the distance from $f_\theta$ to $f^N$, set by the network, the training budget
#   and the bootstrapped targets of CD.
#
# `learned_cd_experiment` trains a small MLP consistency model (skip parameterisation, float64,
# hidden width 64, 2 layers, Adam $10^{-3}$, batch 256, target EMA $\mu = 0.95$) by CD with the exact
# Gaussian teacher, for each solver and $N$, and reports the RMS error of its evaluation-EMA weights over
# (grid times $t_2..t_N$) × (typical test trajectories). For reference it also gives the zero-loss RMS
# error of the same solver and grid, and an **optimisation floor**: the same network and budget trained
# by plain regression onto the exact closed-form $f$ at the grid times (no discretisation error at all).
# We use RMS here rather than the sup: a network's error has outliers of its own, and the RMS is what
# the floor estimates.

# %%
learned = learned_cd_experiment("gaussian", solvers=("euler", "heun"), **LEARNED)
print(f"{learned['training']}")
print(f"{'solver':>6} {'N':>4} {'dt':>7} | {'learned RMS':>11} {'zero-loss RMS':>13} {'floor RMS':>9} | "
      f"{'learned / zero-loss':>19}  dominated by")
for r in learned["summary"]:
    print(f"{r['solver']:>6} {r['N']:>4} {r['dt']:>7.3g} | {r['learned_rms_mean']:>11.4f} {r['zero_loss_rms']:>13.4f} "
          f"{r['floor_rms']:>9.4f} | {r['learned_rms_mean'] / r['zero_loss_rms']:>19.2f}  {r['dominated_by']}")

# %% [markdown]
# Is the error at the finest grids limited by the training budget? Train the
# Heun models of the two finest grids again, from the same initialisation and seed, three times as long:

# %%
long_run = learned_cd_experiment("gaussian", solvers=("heun",), Ns=LEARNED["Ns"][-2:], seeds=(0,),
                                 steps=3 * LEARNED["steps"], M=LEARNED["M"], floor=False)
for r_long in long_run["summary"]:
    r_short = next(r for r in learned["summary"] if r["solver"] == "heun" and r["N"] == r_long["N"])
    print(f"heun, N = {r_long['N']:3d}: learned RMS error {r_short['learned_rms_mean']:.4f} after {LEARNED['steps']} "
          f"steps, {r_long['learned_rms_mean']:.4f} after {3 * LEARNED['steps']} steps "
          f"(zero-loss discretisation error {r_long['zero_loss_rms']:.4f})")

# %%
fig, ax = plt.subplots(figsize=(10.5, 4.8))
for solver, col in (("euler", "C0"), ("heun", "C3")):
    rows = [r for r in learned["summary"] if r["solver"] == solver]
    dts = [r["dt"] for r in rows]
    ax.loglog(dts, [r["zero_loss_rms"] for r in rows], "--", color=col, marker="x",
              label=f"{solver}: zero CD loss ($f^N$), discretisation only")
    ax.loglog(dts, [r["learned_rms_mean"] for r in rows], "-", color=col, marker="o", lw=2,
              label=f"{solver}: trained MLP")
rows = [r for r in learned["summary"] if r["solver"] == "euler"]
ax.loglog([r["dt"] for r in rows], [r["floor_rms"] for r in rows], ":", color="0.3", marker="d",
          label="same MLP regressed onto the exact $f$ (optimisation floor)")
rows = long_run["summary"]
ax.loglog([r["dt"] for r in rows], [r["learned_rms_mean"] for r in rows], "o", mfc="none", mec="C3", ms=10, mew=1.5,
          label=f"heun: trained MLP, {3 * LEARNED['steps']} steps")
ax.invert_xaxis()
rows = [r for r in learned["summary"] if r["solver"] == "euler"]
ax.set_xticks([r["dt"] for r in rows], [f"{r['dt']:.3g}\nN = {r['N']}" for r in rows])
ax.xaxis.set_minor_formatter(NullFormatter())
ax.set_xlabel(r"$\Delta t$ (finer grids to the right)")
ax.set_ylabel(r"RMS $\|f_\theta(x_j(t_n), t_n) - x_j(\epsilon)\|$")
ax.set_title("Gaussian toy: trained CD models against Theorem 1's zero-loss error")
ax.grid(True, which="both", alpha=0.3); ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
fig.tight_layout()
plt.show()

# %% [markdown]
# Reading the plot from the left (coarse grids) to the right, with the numbers of the full run:
#
# * On coarse grids the trained networks sit **on** the dashed zero-loss curves (learned / zero-loss
#   ratio between 0.88 and 1.04 for Euler at $N = 6..48$ and Heun at $N = 6, 12$): the network has learned
#   $f^N$, and what separates it from $f$ is discretisation. Refining the grid lowers the error as
#   Theorem 1 predicts; Euler's halves with each doubling of $N$ (0.28, 0.13, 0.064, 0.029).
# * Heun's discretisation error falls faster (0.079, 0.016, 0.0037 at $N = 12, 24, 48$), and the trained
#   error stops following it: 0.022 at $N = 24$, 0.017 at $N = 48$, four to five times the zero-loss
#   error there. From that point on the error is **optimisation**, not discretisation. Euler's
#   discretisation error is larger, so it stays the dominant part up to $N = 48$.
# * The regression floor (dotted, about 0.002–0.003) shows that the same network *can* represent $f$
#   much more accurately within the same budget. CD gets there more slowly, because its targets are its own
#   outputs one link further down: the anchor at $\epsilon$ has to travel through the $N - 1$ links of the
#   chain. Three times the training steps bring Heun at $N = 48$ from 0.017 to about 0.008, still
#   above both its zero-loss error and the regression floor.
# * At the largest $N$, with the same 1000 steps, the error goes back **up**, for both solvers (about
#   0.14). It is the budget: three times as many steps bring it down to 0.010 (open circle), the
#   discretisation error there being below 0.001. Finer grids only pay if the training budget grows
#   with them, one reason why consistency *training* (Chapter 5) lets $N$ grow during training.
#
# So Theorem 1 is the right guide to the *discretisation* part, and no more: with an exact teacher and
# these settings it is the dominant part for Euler up to $N = 48$ and for Heun up to $N = 12$; at $N = 24$
# both parts are comparable (the library's `dominated_by` column).

# %% [markdown]
# ## Summary
#
# * Zero CD loss on an $N$-point grid pins $f_\theta$ down completely: $f^N$ = "run the teacher's solver from
#   $t_n$ down to $\epsilon$". The library's CD loss of $f^N$ is exactly 0; that of the exact consistency
#   function is not.
# * Its error against the exact consistency function falls as $\Delta t^p$: measured slopes 1.01 (Euler) and
#   2.05 (Heun), fitted over $N = 64..512$, on a Gaussian (closed-form reference) and on a 4-mode mixture
#   (RK4 reference) alike. Heun's local slopes are within 0.1 of 2 only from $N = 128$; on coarser grids
#   Heun is not better than Euler.
# * The constant hides a Lipschitz constant. On trajectories through the bridge between two narrow,
#   well-separated modes the exact $f$ stretches distances by about $3 \times 10^4$, and the local slopes
#   reach 0.95 and 1.94 only at $N = 1024$: state the toy, the test set and the $\Delta t$ range with every slope.
# * The solvers' local errors are $O(h^2)$ and $O(h^3)$, numerically and symbolically.
# * Trained networks follow the zero-loss curve while discretisation dominates (Euler up to $N = 48$, Heun
#   up to $N = 12$), then meet an optimisation floor, and with a fixed budget get worse again for large $N$.
#
# **Next (Chapter 5):** consistency training replaces the teacher's ODE step by the noise that made the
# training pair; Theorem 2 says how close that is to CD.
