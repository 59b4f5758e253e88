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
# # Chapter 2 — Consistency functions and the boundary condition
#
# Chapter 1 ended with a diffusion sampler that needs tens of denoiser evaluations, because it walks
# along a trajectory of the probability-flow ODE step by step. A **consistency model** learns the
# end point of the walk directly. This chapter defines the function it learns, shows its two defining
# properties (self-consistency and the boundary condition), shows how cmlite builds the boundary
# condition into a network *exactly*, and checks everything against a case with a closed-form answer.

# %%
import math
import os

import matplotlib.pyplot as plt
import numpy as np
import torch

import cmlite
from cmlite.threads import set_small_model_threads
from cmlite import (ConsistencyModel, EDMDenoiser, Gaussian, MLP, get_scalings, karras_boundaries,
                    reference_solve, ring_mixture, solve)

FAST = os.environ.get("CMLITE_FAST") == "1"
set_small_model_threads()  # one torch thread for tiny tensors (CMLITE_THREADS overrides; see cmlite.threads)
torch.manual_seed(0)
np.random.seed(0)
EPS, T, SIGMA_DATA = cmlite.EPS, cmlite.T_MAX, cmlite.SIGMA_DATA
REF_STEPS = 200 if FAST else 1000      # RK4 steps (in ln t) of the reference solver
print(f"fast mode: {FAST};  eps = {EPS}, T = {T}, sigma_data = {SIGMA_DATA}")

# %% [markdown]
# ## 1. The consistency function
#
# Take the PF ODE $\frac{dx}{dt} = \frac{x - D(x,t)}{t}$ of Chapter 1. Through every point
# $(x_t, t)$ with $t \in [\epsilon, T]$ passes exactly one trajectory $\{x_s\}_{s \in [\epsilon, T]}$.
# The **consistency function** returns that trajectory's origin:
#
# $$f(x_t, t) = x_\epsilon .$$
#
# Two properties follow at once, and they characterise $f$:
#
# * **self-consistency**: $f(x_t, t) = f(x_{t'}, t')$ for any two points of the same trajectory;
# * **boundary condition**: $f(x, \epsilon) = x$ (a trajectory that starts at time $\epsilon$ is already at its origin).
#
# On the ring mixture the exact $f$ has no closed form, but `cmlite.ode.reference_solve` (RK4 in $\ln t$,
# float64) evaluates it to about $10^{-8}$. We follow a few trajectories, mark points on each at
# several times, and map every marked point *independently* back to $\epsilon$.

# %%
gmm = ring_mixture()
g = torch.Generator().manual_seed(0)
xT = T * torch.randn(5, 2, generator=g, dtype=torch.float64)
ts_fine = karras_boundaries(120 if FAST else 400).flip(0)
path = [xT]
solve(gmm, xT, ts_fine, solver="heun", callback=lambda d: path.append(d["x"]))
path = torch.stack(path)                         # (len(ts_fine), 5, 2)

t_marks = [10.0, 2.0, 0.8, 0.3, 0.1, 0.03]
marked, origins = [], []
for tm in t_marks:
    x_t = reference_solve(gmm, xT, T, tm, steps=REF_STEPS)             # the trajectory's point at time tm
    marked.append(x_t)
    origins.append(reference_solve(gmm, x_t, tm, EPS, steps=REF_STEPS))  # f(x_t, tm), computed from x_t alone
marked, origins = torch.stack(marked), torch.stack(origins)  # (len(t_marks), 5, 2)
spread = (origins - origins.mean(0)).norm(dim=-1).max()
print(f"largest distance between f(x_t, t) of the {len(t_marks)} marked points of a trajectory: {spread:.1e}"
      "  (self-consistency, up to the reference solver's accuracy)")

# %%
fig, ax = plt.subplots(figsize=(6, 6))
u = torch.linspace(-2.6, 2.6, 150, dtype=torch.float64)
X, Y = torch.meshgrid(u, u, indexing="xy")
dens = gmm.log_prob(torch.stack([X.ravel(), Y.ravel()], 1), t=EPS).exp().reshape(X.shape)
ax.contourf(X, Y, dens, levels=15, cmap="Greys")
tt = ts_fine.numpy()
for j in range(path.shape[1]):
    col = f"C{j}"
    ax.plot(path[tt <= 12, j, 0], path[tt <= 12, j, 1], color=col, lw=1.2)
    for k, tm in enumerate(t_marks):
        ax.annotate("", xy=origins[k, j].tolist(), xytext=marked[k, j].tolist(),
                    arrowprops=dict(arrowstyle="->", color=col, lw=0.6, ls="--", alpha=0.6))
    ax.scatter(*marked[:, j].T, s=22, color=col, edgecolor="k", zorder=3)
    ax.scatter(*origins[:, j].T, s=90, marker="*", color=col, edgecolor="k", zorder=4)
for k, tm in enumerate(t_marks):
    if 0.3 <= tm <= 2.0:  # label a few marks of one trajectory (the others crowd near the star)
        ax.annotate(f"t = {tm}", marked[k, 0].tolist(), textcoords="offset points", xytext=(4, -10), fontsize=8)
ax.set_xlim(-2.6, 2.6); ax.set_ylim(-2.6, 2.6); ax.set_aspect("equal")
ax.set_title("marked points of a trajectory (dots, t = 10 ... 0.03)\nall map to its origin (star)")
plt.show()

# %% [markdown]
# ### The denoiser averages, the consistency function commits
#
# Both $D(x_t, t)$ and $f(x_t, t)$ turn a noisy point into a clean guess in one evaluation, but they
# answer different questions. The denoiser is the *posterior mean* $\mathbb E[x_0 \mid x_t]$: for a
# point that could have come from several modes it returns their average, which lies between modes.
# The consistency function follows the point's own trajectory and lands on *one* mode. Below: samples
# $x_t \sim p_t$ (top), their denoised means $D(x_t, t)$ (middle) and their origins $f(x_t, t)$ (bottom).
# Only the bottom row is distributed like the data, at every $t$.

# %%
ts_map = [0.1, 0.5, 2.0, 10.0]
n_map = 1000 if FAST else 3000
fig, axes = plt.subplots(3, len(ts_map), figsize=(3.3 * len(ts_map), 10))
for j, t in enumerate(ts_map):
    x_t = gmm.sample(n_map, t=t, generator=g, dtype=torch.float64)
    rows = [("$x_t \\sim p_t$", x_t), ("$D(x_t, t)$", gmm.denoiser(x_t, t)),
            ("$f(x_t, t)$", reference_solve(gmm, x_t, t, EPS, steps=REF_STEPS // 2))]
    for i, (name, pts) in enumerate(rows):
        ax = axes[i, j]
        ax.scatter(*pts.T, s=1.5, alpha=0.5, color=f"C{i}")
        lim = 1.6 + 2.5 * t if i == 0 else 1.6
        ax.set_xlim(-lim, lim); ax.set_ylim(-lim, lim); ax.set_aspect("equal")
        ax.set_title(f"{name}, t = {t}", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# If a network $f_\theta$ equals $f$, then $f_\theta(x_T, T)$ with $x_T \sim \mathcal N(0, T^2 I)$ is a
# sample of $p_\epsilon \approx p_{\rm data}$ in **one evaluation**. Consistency models are trained
# to enforce the two properties above; the boundary condition is the easy one, because it can be
# built into the architecture.
#
# ## 2. Building the boundary condition into $f_\theta$
#
# A free network $F_\theta(x, t)$ has no reason to satisfy $F_\theta(x, \epsilon) = x$. Song et al.
# give two ways to force it (`ConsistencyModel(net, parameterization=...)`):
#
# **Piecewise** (`'piecewise'`): $\quad f_\theta(x, t) = \begin{cases} x & t = \epsilon \\ F_\theta(x, t) & t \in (\epsilon, T] \end{cases}$
# — exact, but $f_\theta$ jumps at $t = \epsilon$ (cmlite uses the EDM denoiser form for $F_\theta$).
#
# **Skip connection** (`'skip'`, the default and what everyone uses):
#
# $$f_\theta(x, t) = c_{\rm skip}(t)\, x + c_{\rm out}(t)\, F_\theta\big(c_{\rm in}(t)\, x,\ c_{\rm noise}(t)\big),$$
#
# $$c_{\rm skip}(t) = \frac{\sigma_d^2}{(t - \epsilon)^2 + \sigma_d^2},\qquad
#   c_{\rm out}(t) = \frac{\sigma_d\,(t - \epsilon)}{\sqrt{\sigma_d^2 + t^2}},\qquad
#   c_{\rm in}(t) = \frac{1}{\sqrt{t^2 + \sigma_d^2}},\qquad c_{\rm noise}(t) = \tfrac14 \ln t,$$
#
# with $\sigma_d = 0.5$. Then $c_{\rm skip}(\epsilon) = 1$ and $c_{\rm out}(\epsilon) = 0$: the
# condition holds for *any* $F_\theta$, and $f_\theta$ is smooth in $t$.
#
# These are the EDM preconditioning scalings (Karras et al. 2022) with $t$ shifted by $\epsilon$ in
# $c_{\rm skip}$ and $c_{\rm out}$. EDM's own scalings are the same formulas with $\epsilon = 0$; they
# are right for a *denoiser*, but reused for a consistency model they give
# $c_{\rm out}(\epsilon) = \sigma_d\epsilon/\sqrt{\sigma_d^2+\epsilon^2} \approx \epsilon \ne 0$, and the
# boundary condition fails (a common bug in ports). `cmlite.parameterization.get_scalings(t, sigma_data, eps)`
# returns both (`eps=0` for EDM):

# %%
t = torch.logspace(math.log10(EPS), math.log10(T), 400, dtype=torch.float64)
cm = get_scalings(t, SIGMA_DATA, EPS)
edm = get_scalings(t, SIGMA_DATA, 0.0)
t_lin = torch.linspace(EPS, 5 * EPS, 200, dtype=torch.float64)
cm_lin, edm_lin = get_scalings(t_lin, SIGMA_DATA, EPS), get_scalings(t_lin, SIGMA_DATA, 0.0)

fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for k, name in [(0, r"c_{\rm skip}"), (1, r"c_{\rm out}")]:
    axes[0].plot(t, cm[k], color=f"C{k}", label=f"${name}$ (consistency model)")
    axes[0].plot(t, edm[k], color=f"C{k}", ls="--", label=f"${name}$ (EDM, eps = 0)")
axes[0].set_xscale("log"); axes[0].set_xlabel("t"); axes[0].legend(fontsize=8)
axes[0].set_title("skip-connection scalings over [eps, T]")
for ax, k, name in [(axes[1], 0, r"c_{\rm skip}"), (axes[2], 1, r"c_{\rm out}")]:
    ax.plot(t_lin, cm_lin[k], color=f"C{k}", label="consistency model")
    ax.plot(t_lin, edm_lin[k], color=f"C{k}", ls="--", label="EDM (eps = 0)")
    ax.axvline(EPS, color="0.5", lw=0.8); ax.set_xlabel("t (linear, near eps)"); ax.legend(fontsize=8)
    ax.set_title(f"${name}$ near $t = \\epsilon$")
fig.tight_layout()
plt.show()

c_skip_eps, c_out_eps, _, _ = get_scalings(torch.tensor([EPS], dtype=torch.float64), SIGMA_DATA, EPS)
e_skip_eps, e_out_eps, _, _ = get_scalings(torch.tensor([EPS], dtype=torch.float64), SIGMA_DATA, 0.0)
print(f"at t = eps: consistency model c_skip = {float(c_skip_eps):.17g}, c_out = {float(c_out_eps):.3g}  (exact 1 and 0)")
print(f"at t = eps: EDM scalings      c_skip = {float(e_skip_eps):.8f}, c_out = {float(e_out_eps):.3e}"
      "  (c_out != 0: the network still moves x at t = eps)")

# %% [markdown]
# ### $f_\theta(x, \epsilon) = x$, exactly
#
# The check needs no training: an untrained (random) network must already satisfy the boundary
# condition, bit for bit, in both parameterisations, while an EDM denoiser built on the same network
# does not.

# %%
x = torch.randn(4096, 2, generator=g)
for param in ["skip", "piecewise"]:
    torch.manual_seed(1)
    model = ConsistencyModel(MLP(hidden=64, depth=2), parameterization=param)
    gap = (model(x, EPS) - x).abs().max()
    print(f"{param:9s} consistency model, random weights: max |f_theta(x, eps) - x| over 4096 points = {gap.item()!r}")
torch.manual_seed(1)
edm_net = EDMDenoiser(MLP(hidden=64, depth=2))
print(f"EDM denoiser (eps = 0 scalings), same random net:    max |D(x, eps) - x| = {(edm_net(x, EPS) - x).abs().max():.2e}")

# %% [markdown]
# Both meet the condition, but not in the same way. Near $t = \epsilon$, the skip form moves $x$ by
# an amount that shrinks continuously to 0 (proportional to $t - \epsilon$), while the piecewise form
# moves it by $c_{\rm out}^{\rm EDM}(t) F_\theta \approx \epsilon F_\theta$ for every $t > \epsilon$
# and then jumps to exactly 0 at $t = \epsilon$: it is discontinuous there.

# %%
dt = torch.logspace(-9, -1, 60, dtype=torch.float64)            # t - eps
xs = torch.randn(512, 2, generator=g, dtype=torch.float64)
fig, ax = plt.subplots(figsize=(6.5, 4))
for param, col in [("skip", "C0"), ("piecewise", "C3")]:
    torch.manual_seed(1)
    model = ConsistencyModel(MLP(hidden=64, depth=2), parameterization=param).double()
    with torch.no_grad():
        move = [float((model(xs, EPS + float(d)) - xs).norm(dim=1).mean()) for d in dt]
        at_eps = float((model(xs, EPS) - xs).norm(dim=1).mean())
    ax.loglog(dt, move, "o-", ms=3, color=col, label=f"{param}  (value at t = eps exactly: {at_eps:g})")
ax.set_xlabel(r"$t - \epsilon$"); ax.set_ylabel(r"mean $\|f_\theta(x, t) - x\|$")
ax.set_title("untrained networks near the boundary"); ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 3. The same facts, symbolically
#
# Floating-point checks at a few points are reassuring; a symbolic check covers every $x$, every
# $\sigma_d$, every $\epsilon$ and — the point of a parameterisation — *every* network output $F$.
# `cmlite.theory.symbolic` writes the scalings in sympy, with $F(x, t)$ an undefined function. First,
# that these are the formulas the library computes:

# %%
import sympy as sp
from IPython.display import Math, display

import cmlite.theory.symbolic as sym

c_skip_s, c_out_s = sym.skip_scalings()
display(Math(r"c_{\rm skip}(t) = " + sp.latex(c_skip_s) + r",\qquad c_{\rm out}(t) = " + sp.latex(c_out_s)))
values = {sym.eps: EPS, sym.sd: SIGMA_DATA}
lib_skip, lib_out, _, _ = get_scalings(t, SIGMA_DATA, EPS)
sym_skip = sp.lambdify(sym.t, c_skip_s.subs(values), "numpy")(t.numpy())
sym_out = sp.lambdify(sym.t, c_out_s.subs(values), "numpy")(t.numpy())
print(f"max |sympy - cmlite.get_scalings| over {len(t)} times in [eps, T]: "
      f"c_skip {np.abs(sym_skip - lib_skip.numpy()).max():.1e}, c_out {np.abs(sym_out - lib_out.numpy()).max():.1e}")

# %% [markdown]
# Then the claims of section 2, for $f = c_{\rm skip}\,x + c_{\rm out}\,F(x, t)$ with an arbitrary $F$
# (`boundary_condition_check` returns the simplified expressions; we display them):

# %%
bc = sym.boundary_condition_check()
bc_edm = sym.boundary_condition_check(sym.edm_scalings)
F_locals = {"F": sym.G}


def show(label, expr_text):
    display(Math(label + sp.latex(sp.sympify(expr_text, locals=F_locals))))


show(r"\text{skip: }\ f(x, \epsilon) - x = ", bc["skip"]["f(x, eps) - x"])
show(r"\text{skip: }\ \partial_t f(x, t)\big|_{t = \epsilon^+} = ", bc["skip"]["d/dt f at eps+"])
show(r"\text{EDM scalings as a consistency model: }\ f(x, \epsilon) - x = ", bc_edm["skip"]["f(x, eps) - x"])
show(r"\text{piecewise: jump }\ \lim_{t \downarrow \epsilon} F_{\rm EDM}(x, t) - x\ \text{ (with } F = 0) = ",
     bc["piecewise"]["jump_at_eps_if_F_is_0"])
print(f"skip form: boundary condition for every F: {bc['skip']['boundary_condition']}, "
      f"differentiable at eps: {bc['skip']['differentiable_at_eps']}")
print(f"EDM scalings (eps = 0) used as a consistency model: boundary condition holds: {bc_edm['skip']['boundary_condition']}")
print(f"piecewise form: boundary condition by definition; continuous at eps: {bc['piecewise']['continuous_at_eps']}")

# %% [markdown]
# The skip form gives $f(x, \epsilon) - x = 0$ identically, with a finite slope at $\epsilon$; the
# EDM scalings leave a residual proportional to $\epsilon$ that depends on $F$; the piecewise form
# jumps even for $F = 0$.

# %% [markdown]
# ## 4. A consistency function in closed form
#
# For a single Gaussian $p_{\rm data} = \mathcal N(\mu, s^2 I)$ the denoiser is linear,
# $D(x, t) = \mu + \frac{s^2}{s^2 + t^2}(x - \mu)$, so the PF ODE becomes
# $\frac{dx}{dt} = \frac{t\,(x - \mu)}{s^2 + t^2}$, which integrates exactly:
#
# $$f(x, t) = \mu + (x - \mu)\sqrt{\frac{s^2 + \epsilon^2}{s^2 + t^2}} .$$
#
# The trajectories are straight rays into $\mu$, along which $(x - \mu)/\sqrt{s^2+t^2}$ stays constant.
# Symbolically (`cmlite.theory.symbolic.gaussian_consistency_check`, with the drift derived from $\log p_t$):
# the total derivative $\frac{d}{dt} f(x(t), t) = \partial_t f + \partial_x f \cdot \frac{dx}{dt}$ vanishes
# identically, and $f(x, \epsilon) = x$.

# %%
gc = sym.gaussian_consistency_check()
show(r"\frac{dx}{dt} = ", gc["drift"])
show(r"\frac{d}{dt} f(x(t), t) = ", gc["total_derivative"])
show(r"f(x, \epsilon) - x = ", gc["f(x, eps) - x"])
print(f"closed form is constant along trajectories: {gc['constant_along_trajectories']}; "
      f"boundary condition: {gc['boundary_condition']}")

# %% [markdown]
# `cmlite.Gaussian(mean, std).consistency_function` implements this formula. Numerically, we compare it
# with `reference_solve` at many times.

# %%
gauss = Gaussian([0.4, -0.3], 0.5)
x_test = 3.0 * torch.randn(500, 2, generator=g, dtype=torch.float64)
t_check = np.geomspace(2 * EPS, T, 8 if FAST else 16)
closed_err, ref_err_est = [], []
for tc in t_check:
    xt = x_test * math.sqrt(0.25 + tc ** 2) / 3.0 + gauss.means[0]   # points at the scale of p_t
    f_ref, e_ref = reference_solve(gauss, xt, float(tc), EPS, steps=REF_STEPS, return_error=True)
    closed_err.append(float((gauss.consistency_function(xt, float(tc)) - f_ref).abs().max()))
    ref_err_est.append(e_ref)
print(f"max |closed form - reference| over 500 points and {len(t_check)} times in [{2 * EPS}, {T}]: "
      f"{max(closed_err):.1e}  (the reference's own error estimate: up to {max(ref_err_est):.1e})")

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
ax = axes[0]
x_start = gauss.means[0] + T * torch.randn(12, 2, generator=g, dtype=torch.float64)
ts_plot = karras_boundaries(200).flip(0)
traj = [x_start]
solve(gauss, x_start, ts_plot, solver="heun", callback=lambda d: traj.append(d["x"]))
traj = torch.stack(traj)
for j in range(traj.shape[1]):
    ax.plot(traj[:, j, 0], traj[:, j, 1], lw=1, color=f"C{j % 10}")
    for tm in [3.0, 1.0, 0.3]:
        i = int((ts_plot - tm).abs().argmin())
        ax.scatter(*traj[i, j], s=12, color=f"C{j % 10}")
ax.scatter(*gauss.means[0], marker="*", s=200, c="k", zorder=4, label=r"$\mu$")
ax.set_xlim(-3, 3.5); ax.set_ylim(-3.5, 3); ax.set_aspect("equal"); ax.legend()
ax.set_title("Gaussian data: PF-ODE trajectories are straight rays")
ax = axes[1]
ax.loglog(t_check, closed_err, "o-", label="max |closed form - reference_solve|")
ax.loglog(t_check, ref_err_est, "x--", label="reference's own error estimate")
ax.set_xlabel("t"); ax.set_ylabel("max abs difference"); ax.legend(fontsize=8)
ax.set_title("the closed form agrees with the numerical solution")
fig.tight_layout()
plt.show()

# %% [markdown]
# One evaluation of the exact consistency function at $T$ turns noise into data: if
# $x_T \sim p_T = \mathcal N(\mu, (s^2 + T^2) I)$, then $f(x_T, T) = \mu + (x_T - \mu)\sqrt{(s^2+\epsilon^2)/(s^2+T^2)}$
# is distributed as $\mathcal N(\mu, (s^2 + \epsilon^2) I) = p_\epsilon$, exactly. (Samplers draw
# $x_T \sim \mathcal N(0, T^2 I)$ instead, which is indistinguishable from $p_T$ when $T = 80$ dwarfs the data.)

# %%
x_T = gauss.sample(100_000, t=T, generator=g, dtype=torch.float64)     # x_T ~ p_T
one_step = gauss.consistency_function(x_T, T)
print(f"one-step samples f(x_T, T), 100000 draws: mean = {one_step.mean(0).numpy().round(4)} "
      f"(mu = {gauss.means[0].numpy()}), per-coordinate std = {one_step.std(0).numpy().round(4)} "
      f"(target sqrt(s^2 + eps^2) = {math.sqrt(0.25 + EPS ** 2):.4f}; Monte Carlo error about 0.002)")

# %% [markdown]
# ## Summary
#
# * The consistency function $f(x_t, t) = x_\epsilon$ maps every point of a PF-ODE trajectory to its
#   origin; it is self-consistent along trajectories and satisfies $f(x, \epsilon) = x$.
# * cmlite builds the boundary condition into $f_\theta$ exactly: the skip form with
#   $c_{\rm skip}(\epsilon) = 1$, $c_{\rm out}(\epsilon) = 0$ (smooth in $t$), or the piecewise form
#   (exact but discontinuous). EDM's $\epsilon = 0$ scalings do **not** satisfy it.
# * For a Gaussian, $f$ is known in closed form and agrees with the numerical reference to the
#   reference's own accuracy — the kind of exact check that Chapter 3's training can be measured against.
#
# **Next (Chapter 3):** self-consistency is what the *loss* enforces: make $f_\theta$ agree on
# neighbouring points of a trajectory, obtained with one ODE step of a teacher.
