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
# # Chapter 10 — Continuous time: letting $N \to \infty$
#
# Every loss so far compared $f_\theta$ at two neighbouring grid times $t_n < t_{n+1}$. Theorem 1 (Chapter 4)
# says the grid costs $O(\Delta t^p)$; Theorem 2 (Chapter 5) says CT matches CD up to $o(\Delta t)$. Both invite
# the obvious question: what happens when the grid gets infinitely fine? Appendix B of Song et al. (2023)
# answers it with four limit theorems (Theorems 3–6): the difference of neighbouring outputs becomes a
# **time derivative** of $f_\theta$ along the PF ODE, computed by one Jacobian-vector product, and the loss
# becomes an integral over $t$. This chapter
#
# 1. derives the limit by a Taylor expansion and checks each step numerically;
# 2. computes the tangent $\frac{d}{dt} f_\theta$ by forward-mode differentiation and draws its field;
# 3. measures Theorems 3–6: the scaled discrete losses and gradients converge at order 1 in $1/N$;
# 4. shows why the stop-gradient version is a *pseudo-objective*: its value is meaningless, its gradient right;
# 5. shows why CT *without* the stop-gradient has the wrong limit: a posterior-covariance bias;
# 6. introduces TrigFlow and sCM's stabilisers (Lu & Song 2025), each with what it is meant to fix, tried in 2D;
# 7. trains continuous-time CT and sCT on the ring of Chapter 5, side by side with discrete improved CT and ECT.
#
# Sections 1–5 run in float64 on the analytic toys of `cmlite.theory` (exact denoisers, no training); the
# library code is `cmlite.continuous` (losses, tangents) and `cmlite.theory.continuous` (the limit theorems).
# Set `CMLITE_FAST=1` in the environment for a quick, smaller run (used by the test suite); the statements
# in the text refer to the full run.

# %%
import copy
import json
import math
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import NullFormatter

import cmlite
from cmlite import (ConsistencyModel, ContinuousCDLoss, ContinuousCTLoss, ECTLoss, ECTSchedule, ICTSchedule,
                    ImprovedConsistencyTrainingLoss, MLP, SCTLoss, TangentWarmupSchedule, TrainConfig, Trainer,
                    consistency_tangent, euler_step, get_scalings, karras_boundaries, multistep_sample,
                    pf_ode_drift, ring_mixture)
from cmlite.continuous import karras_time, karras_time_derivative, truncated_lognormal
from cmlite.metrics import data_floor, log_likelihood, off_mode_fraction, off_mode_fraction_expected, sliced_wasserstein
from cmlite.theory import continuous as C
from cmlite.theory import get_toy
from cmlite.threads import set_small_model_threads

FAST = os.environ.get("CMLITE_FAST") == "1"
set_small_model_threads()  # one torch thread for tiny tensors (CMLITE_THREADS overrides; see cmlite.threads)
torch.manual_seed(0)
np.random.seed(0)
EPS, T = cmlite.EPS, cmlite.T_MAX
F64 = torch.float64

NS = (16, 32, 64, 128, 256) if FAST else (16, 32, 64, 128, 256, 512)   # grid sizes of the limit theorems
B_TH = 64 if FAST else 256                                               # samples (x, z) per toy for them
STEPS = 150 if FAST else 3000          # training steps per 2D model (sections 6 and 7)
HIDDEN = 64 if FAST else 128           # MLP width (3 residual blocks), as `cmlite demo`
BATCH = 128 if FAST else 512
N_EVAL = 1000 if FAST else 4000        # samples per quality measurement
print(f"fast mode: {FAST};  limit theorems: N = {NS[0]}..{NS[-1]}, {B_TH} samples per toy;  "
      f"2D training: {STEPS} steps, width {HIDDEN}, batch {BATCH}, {N_EVAL} samples per measurement")

# %% [markdown]
# ## 1. From the discrete loss to its limit
#
# **The grid.** The Karras boundaries (Chapter 1) are the values of one smooth map at equally spaced points,
# $t_n = \tau(u_n)$ with $u_n = (n-1)/(N-1)$ and
#
# $$\tau(u) = \big(\epsilon^{1/\rho} + u\,(T^{1/\rho} - \epsilon^{1/\rho})\big)^\rho, \qquad \rho = 7 .$$
#
# With $k = 1/(N-1)$, Taylor's theorem at $u_{n+1}$ gives the gaps
#
# $$t_{n+1} - t_n = \tau(u_{n+1}) - \tau(u_{n+1} - k) = \tau'(u_{n+1})\,k - \tfrac12 \tau''(u_{n+1})\,k^2 + O(k^3)
#   = \frac{\tau'(u_{n+1})}{N-1} + O\Big(\frac1{N^2}\Big).$$
#
# **The pair.** CD with the Euler step (Chapter 3) compares $f_\theta$ at $x_{t_{n+1}} = x + t_{n+1} z$ with
# $f_{\theta^-}$ at $\hat x_{t_n} = x_{t_{n+1}} - h\,v$, where $h = t_{n+1} - t_n$ and $v = (x_{t_{n+1}} - D(x_{t_{n+1}}, t_{n+1}))/t_{n+1}$
# is the PF-ODE velocity $dx_t/dt$. Both points lie on the line $s \mapsto (x_{t_{n+1}} - s v,\ t_{n+1} - s)$, so
# with $\theta^- = \theta$ one Taylor expansion in $s$ gives
#
# $$\Delta_n := f_\theta(x_{t_{n+1}}, t_{n+1}) - f_\theta(\hat x_{t_n}, t_n) = h\, g + O(h^2),\qquad
#   g(x_t, t) = \partial_t f_\theta(x_t, t) + \partial_x f_\theta(x_t, t)\, v = \frac{d}{dt} f_\theta(x_t, t)\Big|_{\rm PF\ ODE},$$
#
# the **tangent**: how fast $f_\theta$ changes along the ODE trajectory through $(x_t, t)$. The exact consistency
# function is constant along trajectories, so its tangent is zero; the limit losses ask $g = 0$.
#
# **The loss.** With squared $L_2$ and $n$ uniform on $1..N-1$,
#
# $$\mathcal L^N = \frac1{N-1}\sum_{n=1}^{N-1} \mathbb E\big[\lambda(t_n)\,\|\Delta_n\|^2\big]
#   = k \sum_n \mathbb E\big[\lambda(t_n)\, \tau'(u_{n+1})^2 k^2\, \|g\|^2\big] + O(k^3),$$
#
# a Riemann sum times $k^2$: the loss itself vanishes like $1/N^2$, and
#
# $$(N-1)^2\,\mathcal L^N \;\longrightarrow\; \mathcal L^\infty_{CD} = \mathbb E_{u \sim U[0,1]}\Big[\lambda(t)\,\tau'(u)^2\,\|g(x_t, t)\|^2\Big],
#   \quad t = \tau(u) \qquad \text{(Theorem 3)}.$$
#
# With the **stop-gradient** target only the online branch is differentiated:
# $\nabla_\theta \|\Delta_n\|^2 = 2(\partial_\theta f_\theta)^\top \Delta_n = 2h\,(\partial_\theta f_\theta)^\top g + O(h^2)$ — one power of
# $h$, not two — so the *gradient* converges after one factor $N-1$ (Theorem 5):
#
# $$(N-1)\,\nabla_\theta \mathcal L^N \;\longrightarrow\; \nabla_\theta\, \mathbb E\Big[2\,\lambda(t)\,\tau'(u)\, f_\theta(x_t, t)^\top \operatorname{sg}\big(g(x_t, t)\big)\Big].$$
#
# The $L_1$ distance gives $(N-1)\mathcal L^N \to \mathbb E[\lambda\tau'\|g\|_1]$ (Theorem 4), and CT's pair $x + t_n z$ lies on the
# noising line, direction $z$ instead of $v$: its tangent is $g_{CT} = \partial_t f_\theta + \partial_x f_\theta\, z$ (Theorem 6).
# Two numerical checks of these expansions, with the library's own grid and Euler step:

# %%
u0 = 0.5                                   # a fixed point of [0, 1]: t_{n+1} = tau(0.5) on every grid below
print(f"grid gaps at u = {u0} (t = {float(karras_time(torch.tensor(u0, dtype=F64))):.4f}) against tau'(u)/(N - 1):")
for N in (11, 41, 161, 641):               # N - 1 even, so that u = 0.5 is a grid point
    grid = karras_boundaries(N, dtype=F64)
    i = (N - 1) // 2                       # 0-based index of t_{n+1}, u_{n+1} = i / (N - 1) = 0.5
    gap = float(grid[i] - grid[i - 1])
    approx = float(karras_time_derivative(torch.tensor(u0, dtype=F64))) / (N - 1)
    print(f"  N = {N:>4}: t_(n+1) - t_n = {gap:.6e},  tau'(u)/(N-1) = {approx:.6e},  "
          f"relative difference x (N - 1) = {abs(gap - approx) / gap * (N - 1):.4f}")
print("(a constant last column: the difference is O(1/N) relative, the k^2 term tau''/2 of the expansion)")

# %%
mix = get_toy("mixture").mixture            # 4 Gaussians N(mu_k, 0.25^2 I) on the unit circle, exact denoiser
f_rand = C.make_model(seed=0)               # skip parameterisation around a fixed smooth tanh MLP, float64
x_t = torch.tensor([[0.7, -0.4]], dtype=F64)
t1 = torch.tensor([1.0], dtype=F64)
v = pf_ode_drift(mix, x_t, t1)                               # the PF-ODE velocity (x_t - D(x_t, t)) / t
f1, g1 = consistency_tangent(f_rand, x_t, t1, v)             # g = d/dt f along the ODE (section 2)
print(f"one point x_t = (0.7, -0.4) at t = 1: the finite difference Delta_n / h against the tangent g")
for h in (0.1, 0.03, 0.01, 0.003, 0.001):
    x_hat = euler_step(mix, x_t, t1, t1 - h)                 # the library's Euler step down to t_n = t - h
    with torch.no_grad():
        delta = f1 - f_rand(x_hat, t1 - h)
    err = float((delta / h - g1).norm() / g1.norm())
    print(f"  h = {h:<6}: |Delta/h - g| / |g| = {err:.2e}   (divided by h: {err / h:.3f})")
print("(error / h constant: Delta_n = h g + O(h^2), the first-order term of the expansion)")

# %% [markdown]
# ## 2. The tangent is one Jacobian-vector product
#
# $g = \partial_t f_\theta + \partial_x f_\theta\, v$ is the directional derivative of $(x, t) \mapsto f_\theta(x, t)$ in the
# direction $(v, 1)$: a **Jacobian-vector product**. Forward-mode automatic differentiation computes it in one
# pass that carries a derivative alongside every value ("dual numbers"), for about the cost of two to three
# forward passes and without ever forming the Jacobian. `cmlite.consistency_tangent(f, x_t, t, v)` does this
# with `torch.autograd.forward_ad`; the continuous-time losses call it with the target weights under no-grad.
#
# For the skip parameterisation $f_\theta = c_{\rm skip}(t)\,x + c_{\rm out}(t)\,F_\theta(c_{\rm in}(t)\,x,\ c_{\rm noise}(t))$
# the same derivative written out by the chain rule is
#
# $$g = c_{\rm skip}'\, x + c_{\rm skip}\, v + c_{\rm out}'\, F + c_{\rm out}\Big[\partial_1 F\,(c_{\rm in}'\, x + c_{\rm in}\, v)
#      + \partial_2 F\; c_{\rm noise}'\Big],$$
#
# which `cmlite.theory.continuous.skip_tangent_analytic` evaluates with derivatives of the scalings taken by
# hand and the network's Jacobian written out (no autodiff). `tangent_check` compares the JVP with it and with
# central finite differences at 64 random points; the planted bug `tangent_sign` (direction $(-v, 1)$ instead of
# $(v, 1)$) shows the check can fail.

# %%
for name in ("gaussian", "mixture"):
    ok = C.tangent_check(name)
    bad = C.tangent_check(name, mutation="tangent_sign")
    print(f"{name:>9}: jvp vs written out {ok['analytic_rel_err']:.1e}, vs finite differences {ok['fd_rel_err']:.1e}"
          f"  (relative, max over {ok['points']} points);  planted sign bug: {bad['analytic_rel_err']:.2f}")
print("(round-off ~1e-16 for the written-out derivative; the finite difference carries its own O(h^2) + "
      "round-off/h error, ~1e-10 at h = 1e-5 t)")

# %% [markdown]
# **The tangent field.** At a fixed time the tangent is a vector field over $x$. The figure shows, at $t = 1$ on
# the mixture toy, the PF-ODE velocity $v$ (where the trajectory through each point goes), and for a random
# $f_\theta$ the two parts of $g$ and their sum: $\partial_t f_\theta$ (how $f_\theta$ changes at a fixed point) and the
# transport term $\partial_x f_\theta\, v$ (how it changes because the point moves). Continuous-time training
# pushes their sum to zero everywhere.

# %%
field = C.tangent_field("mixture", t=1.0, lim=2.0, n=17, seed=0)
X = np.array(field["x"])
fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
panels = [("v", r"velocity $v = dx_t/dt$"), ("dt_f", r"$\partial_t f_\theta$"),
          ("J_v", r"transport $\partial_x f_\theta\, v$"), ("g", r"tangent $g = \partial_t f_\theta + \partial_x f_\theta v$")]
for ax, (key, title) in zip(axes, panels):
    V = np.array(field[key])
    n = np.linalg.norm(V, axis=-1)
    q = ax.quiver(X[..., 0], X[..., 1], V[..., 0] / (n + 1e-12), V[..., 1] / (n + 1e-12), n, cmap="viridis",
                  scale=25, width=0.006)
    fig.colorbar(q, ax=ax, fraction=0.046, label="length")
    ax.scatter(*mix.means.T, marker="x", c="r", s=60, label="means of the mixture")
    ax.set_title(title), ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])
axes[0].legend(fontsize=7, loc="lower left")
fig.suptitle("t = 1, mixture toy, random $f_\\theta$ (arrows: direction, colour: length)")
fig.tight_layout()
plt.show()
exact = C.tangent_field("gaussian", t=1.0, model="exact", n=17)
print(f"random f_theta: mean |g| over the grid {np.mean(field['norm']):.3f};  the exact consistency function of "
      f"the Gaussian toy: max |g| {np.max(exact['norm']):.1e}, max |d_t f| {np.max(np.linalg.norm(exact['dt_f'], axis=-1)):.3f}"
      " (the two parts cancel exactly)")

# %% [markdown]
# The velocity $v = (x - D(x, t))/t$ points away from the denoiser's estimate $D(x, t)$ (forward in time the ODE
# spreads the data out); at $t = 1$, larger than the width of the modes, that estimate lies near the centre for
# most $x$, so the field is nearly radial, and $|v|$ grows with the distance. For the random network the two parts
# of $g$ are of the same size and do not cancel; for the exact consistency function of the Gaussian toy each part
# is of order one and their sum is zero to round-off.
#
# ## 3. Theorems 3–6, measured
#
# `cmlite.theory.continuous.continuous_report` computes, on each toy and for each $N$, the discrete losses with the
# library's `ConsistencyDistillationLoss` (Euler, exact denoiser) and `ConsistencyTrainingLoss`, **summed exactly
# over all $N-1$ intervals** for each sample $(x_i, z_i)$, and the limit integrals over $u$ by Gauss–Legendre
# quadrature on the *same* samples. Every gap is then a deterministic function of the samples, with the
# Monte Carlo error common to both sides: the fitted orders are not buried in noise. $f_\theta$ is a fixed smooth
# random network (the theorems hold for every $\theta$), $\lambda = 1$.
#
# | | statement | expected order in $1/N$ |
# | --- | --- | --- |
# | Theorem 3 | $(N-1)^2\mathcal L^N_{CD} \to \mathbb E[\lambda\tau'^2\|g_{CD}\|^2]$ (squared $L_2$, $\theta^- = \theta$) | 1 |
# | Theorem 4 | $(N-1)\mathcal L^N_{CD} \to \mathbb E[\lambda\tau'\|g_{CD}\|_1]$ ($L_1$) | 1 |
# | Theorem 5 | $(N-1)\nabla_\theta\mathcal L^N_{CD} \to \nabla_\theta\, 2\mathbb E[\lambda\tau' f_\theta^\top \operatorname{sg}(g_{CD})]$ | 1 |
# | Theorem 6 | the same for CT, with $g_{CT}$ | 1 |
# | CT, $\theta^- = \theta$ | $(N-1)^2\mathcal L^N_{CT} \to \mathbb E[\lambda\tau'^2\|g_{CT}\|^2]$ (section 5) | 2 (midpoint rule) |
#
# Order 1 because the Riemann sum takes the integrand at the right end point $u_{n+1}$ and the expansion has an
# $O(h^2)$ remainder; CT's difference $F(u_{n+1}) - F(u_n)$ of the single smooth function
# $F(u) = f_\theta(x + \tau(u) z, \tau(u))$ is a *midpoint* rule, one order better.

# %%
t0 = time.perf_counter()
rep = C.continuous_report(toys=("gaussian", "mixture"), Ns=NS, B=B_TH)
print(f"continuous_report: {time.perf_counter() - t0:.1f} s;  {rep['setting']['model']};  "
      f"teacher: {rep['setting']['teacher']}")
print(f"\n{'':>26}{'expected':>9}{'fitted order':>15}{'':>11}{'limit (gaussian / mixture)':>30}")
print(f"{'':>26}{'order':>9}{'gaussian':>12}{'mixture':>9}")
rows = [("theorem3", "Th. 3 CD, L2, value", "slope"), ("theorem4", "Th. 4 CD, L1, value", "slope"),
        ("theorem5", "Th. 5 CD, sg, gradient", "grad_slope"), ("theorem6", "Th. 6 CT, sg, gradient", "grad_slope"),
        ("ct_same_target", "CT, theta^- = theta, value", "slope")]
for key, label, sk in rows:
    p = {toy: rep["per_toy"][toy][key] for toy in ("gaussian", "mixture")}
    lim = (" / ".join(f"{p[toy]['limit']:.4f}" for toy in p) if "limit" in p["mixture"] else
           " / ".join(f"|grad| {p[toy]['limit_grad_norm']:.3f}" for toy in p))
    print(f"{label:>26}{rep[key]['expected_order']:>9}{p['gaussian'][sk]:>12.2f}{p['mixture'][sk]:>9.2f}   {lim:>30}")
mx = rep["per_toy"]["mixture"]
print(f"\nmixture, N = {NS[-1]}: the scaled discrete loss is within {100 * mx['theorem3']['rows'][-1]['rel_gap']:.2f}% of "
      f"Theorem 3's limit; (N-1) grad L^N within {100 * mx['theorem5']['rows'][-1]['rel_grad_gap']:.2f}% (Th. 5) and "
      f"{100 * mx['theorem6']['rows'][-1]['rel_grad_gap']:.2f}% (Th. 6) of the limit gradient.")
print(f"library losses: ContinuousCDLoss / ContinuousCTLoss at the quadrature nodes give the limit gradient to "
      f"{mx['theorem5']['library_loss_rel_diff']:.0e} / {mx['theorem6']['library_loss_rel_diff']:.0e} (relative): "
      "they train on exactly these limits")
print(f"quadrature error of the limits (half the nodes): {mx['theorem3']['quadrature_error']:.0e} "
      f"(Monte Carlo s.e. of the limit itself, common to every N: {mx['theorem3']['limit_se']:.3f})")

# %%
fig, axes = plt.subplots(1, 5, figsize=(20, 4))
titles = {"theorem3": "Th. 3: $(N-1)^2 L^N$, $L_2$", "theorem4": "Th. 4: $(N-1) L^N$, $L_1$",
          "theorem5": r"Th. 5: $(N-1)\nabla L^N_{CD}$ (sg)", "theorem6": r"Th. 6: $(N-1)\nabla L^N_{CT}$ (sg)",
          "ct_same_target": r"CT, $\theta^-=\theta$: $(N-1)^2 L^N$"}
for ax, (key, label, sk) in zip(axes, rows):
    for toy, mk in (("gaussian", "o-"), ("mixture", "s-")):
        r = rep["per_toy"][toy][key]["rows"]
        k = np.array([row["k"] for row in r])
        y = np.array([abs(row["gap"]) if "gap" in row else row["rel_grad_gap"] for row in r])
        ax.loglog(k, y, mk, label=f"{toy} (order {rep['per_toy'][toy][key][sk]:.2f})")
    p = rep[key]["expected_order"]
    ax.loglog(k, y[-1] * (k / k[-1]) ** p, "k:", label=f"slope {p}")
    ax.set_xlabel("k = 1/(N - 1)"), ax.set_title(titles[key], fontsize=10), ax.legend(fontsize=7)
    ax.xaxis.set_minor_formatter(NullFormatter()), ax.yaxis.set_minor_formatter(NullFormatter())
axes[0].set_ylabel("|scaled discrete - limit|")
axes[2].set_ylabel("relative gradient gap")
fig.tight_layout()
plt.show()

# %% [markdown]
# All five gaps fall on straight lines of the predicted slope, on both toys; the fitted orders (printed above;
# full run: 0.95–1.10 for Theorems 3–6, 1.98–1.99 for CT without stop-gradient) are within a tenth of 1 and 2.
# At $N = 512$ the scaled discrete CD loss is within 0.5% of its limit on the mixture and the scaled gradients
# within 0.25%: a grid of a few hundred points already trains on (nearly) the continuous-time objective, and
# the rest is the ordinary $O(1/N)$ of a Riemann sum.
#
# The sanity check at the answer: for the single Gaussian the exact consistency function is known in closed
# form, its tangent vanishes, and so does $\mathcal L^\infty_{CD}$:

# %%
eg = rep["exact_gaussian"]
print(f"exact consistency function of N(0, 0.5^2 I): max |g_CD| = {eg['max_g_cd']:.1e} (the parts that cancel are "
      f"up to {eg['scale']:.2f}),  L_CD^inf = {eg['L_cd_inf']:.1e}")

# %% [markdown]
# ## 4. The stop-gradient objective is a pseudo-objective
#
# Theorem 5 says the *gradient* of $(N-1)\mathcal L^N$ converges to the gradient of
# $\mathcal P(\theta) = \mathbb E[2\lambda\tau' f_\theta^\top \operatorname{sg}(g)]$. The library's `ContinuousCDLoss` and `ContinuousCTLoss`
# return exactly this per-sample quantity, so it is what the Trainer logs as "loss". Its **value** means nothing:
#
# * $(N-1)\mathcal L^N$ itself tends to **zero** (the loss is $O(1/N^2)$), while its gradient tends to $\nabla\mathcal P \neq 0$;
# * with $\lambda = 1$, $\tau'(u)\,du = dt$, and because the PF ODE carries $p_t$ to $p_{t'}$, the value telescopes:
#   $\mathbb E_{p_t}[2 f_\theta^\top g] = \frac{d}{dt}\mathbb E_{p_t}\|f_\theta(x_t, t)\|^2$ along the flow, so
#
# $$\mathcal P(\theta) = \mathbb E\,\|f_\theta(x_T, T)\|^2 - \mathbb E\,\|x_\epsilon\|^2, \qquad x_T \sim p_T,\ x_\epsilon \sim p_\epsilon$$
#
#   (boundary condition $f_\theta(x, \epsilon) = x$). It compares second moments, is zero at the exact consistency
#   function (which maps $p_T$ onto $p_\epsilon$) — and is *lower*, not higher, for a network that shrinks its
#   outputs. Following the full gradient of this value would do exactly that; the stop-gradient makes the update
#   a different vector field, which is not the gradient of anything.
#
# Measured on the mixture toy for four random networks: the value $\mathcal P$ by quadrature with the library loss,
# the telescoped form by Monte Carlo, the discrete loss at $N = 256$, and the gradients.

# %%
B4 = 128 if FAST else 256
gen = torch.Generator().manual_seed(11)
x4 = mix.sample(B4, generator=gen, dtype=F64)
z4 = torch.randn(B4, 2, generator=gen, dtype=F64)
uq, wq = C.gauss_legendre(8, 16)               # composite Gauss-Legendre rule on [0, 1]
Q = uq.numel()
tq = karras_time(uq).repeat(B4)
xr, zr = x4.repeat_interleave(Q, 0), z4.repeat_interleave(Q, 0)
xT = mix.sample(50_000, generator=gen, dtype=F64) + T * torch.randn(50_000, 2, generator=gen, dtype=F64)
second_moment_eps = float((mix.sample(200_000, generator=gen, dtype=F64)
                           + EPS * torch.randn(200_000, 2, generator=gen, dtype=F64)).pow(2).sum(1).mean())
cd_loss = ContinuousCDLoss(mix)                # lambda = 1, w = tau'(u)


def pseudo_value(f):
    """Per-sample P: the library's pseudo-objective 2 w f.sg(g) / d, integrated over u (x d: a sum over coordinates)."""
    per = cd_loss.at(f, xr, zr, tq, wq.repeat(B4) * cd_loss.weight(tq, uq.repeat(B4))) * 2
    return per.reshape(B4, Q).sum(1)


N4 = 256
print(f"{'seed':>4}{'P (value)':>17}{'E|f(x_T,T)|^2 - E|x_eps|^2':>28}{'(N-1) L^N':>11}{'(N-1)^2 L^N':>13}"
      f"{'cos(grad P, (N-1) grad L^N)':>29}{'rel. diff':>10}{'cos(grad P, grad of value)':>28}")
for seed in range(4):
    f = C.make_model(seed=seed)
    params = list(f.parameters())
    P = pseudo_value(f)
    grad_P = torch.cat([q.reshape(-1) for q in torch.autograd.grad(P.mean(), params)])
    disc = C.discrete_sums(f, mix, x4, z4, N4, params=params)      # the library's discrete CD loss, all n
    fT = f(xT, torch.full((xT.shape[0],), T, dtype=F64))
    m2 = fT.pow(2).sum(1).mean()
    grad_value = torch.cat([q.reshape(-1) for q in torch.autograd.grad(m2, params)])  # full gradient of the value
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))          # noqa: E731
    P = P.detach()
    print(f"{seed:>4}{float(P.mean()):>10.3f} ± {float(P.std()) / math.sqrt(B4):.3f}"
          f"{float(m2.detach()) - second_moment_eps:>28.3f}{float(disc['cd_l2'].mean()) / (N4 - 1):>11.4f}"
          f"{float(disc['cd_l2'].mean()):>13.3f}{cos(grad_P, disc['grad_cd']):>29.5f}"
          f"{float((grad_P - disc['grad_cd']).norm() / grad_P.norm()):>10.4f}{cos(grad_P, grad_value):>28.3f}")
f_star = C.ExactGaussianConsistency(get_toy("gaussian").mixture)
cd_loss_g = ContinuousCDLoss(get_toy("gaussian").mixture)
per_star = (cd_loss_g.at(f_star, xr, zr, tq, wq.repeat(B4) * cd_loss_g.weight(tq, uq.repeat(B4))) * 2).reshape(B4, Q).sum(1)
print(f"\nexact consistency function of the Gaussian toy: P = {float(per_star.mean()):.1e}  "
      "(zero: f maps p_T onto p_eps, and its tangent is zero anyway)")

# %% [markdown]
# Read the table by columns. The value $\mathcal P$ is about $-1$ for every random network (the quadrature and the
# telescoped Monte Carlo form agree within the standard error): $\mathbb E\|x_\epsilon\|^2 \approx 1.125$ on this toy and a
# random network's outputs at $T$ are small. The exact answer scores 0, higher than these bad networks. The real
# discrete loss is positive, $(N-1)\mathcal L^N$ is already small at $N = 256$ and heads to zero, and
# $(N-1)^2\mathcal L^N$ is Theorem 3's quantity — a different number again. Yet the gradients of $\mathcal P$ and of
# $(N-1)\mathcal L^N$ point the same way (cosine 0.99998 or better, relative difference 0.3–0.6%, the $O(1/N)$ of
# Theorem 5), while the full gradient of the value points elsewhere (cosine between 0.0 and 0.3). So: never read a continuous-time
# consistency loss curve as a measure of progress (section 6 shows such curves); watch the tangent's size
# and the samples instead.
#
# ## 5. CT with $\theta^- = \theta$: a biased limit
#
# Without the stop-gradient, CT's scaled loss converges too (order 2, section 3), but not to CD's limit.
# Given $x_t$, the clean point $x$ is random, and so is $z = (x_t - x)/t$; by Tweedie's formula
# $\mathbb E[z \mid x_t] = (x_t - D(x_t, t))/t = v$. Write $J = \partial_x f_\theta(x_t, t)$. Then
#
# $$g_{CT} = \partial_t f_\theta + J\,\frac{x_t - x}{t} = g_{CD} + J\,(z - v), \qquad \mathbb E[z - v \mid x_t] = 0,$$
#
# and averaging the square over $x \mid x_t$ (the cross term vanishes),
#
# $$\mathbb E\Big[\Big\|J\,\frac{x_t - x}{t}\Big\|^2 \,\Big|\, x_t\Big] = \|J v\|^2 + \frac{\operatorname{tr}\big(J\,\mathrm{Cov}[x \mid x_t]\,J^\top\big)}{t^2},
#   \qquad
#   \mathbb E\big[\|g_{CT}\|^2 \mid x_t\big] = \|g_{CD}\|^2 + \frac{\operatorname{tr}\big(J\,\mathrm{Cov}[x \mid x_t]\,J^\top\big)}{t^2}.$$
#
# Hence
#
# $$\lim_{N\to\infty} (N-1)^2\mathcal L^N_{CT}(\theta, \theta) = \mathcal L^\infty_{CD}
#   + \underbrace{\mathbb E\Big[\lambda\tau'^2\,\frac{\operatorname{tr}(J\,\mathrm{Cov}[x \mid x_t]\,J^\top)}{t^2}\Big]}_{\text{bias} \;\ge\; 0}.$$
#
# The bias is positive wherever $f_\theta$ depends on $x$ and the posterior of $x$ given $x_t$ has any spread — also
# at the exact consistency function, where $\mathcal L^\infty_{CD} = 0$. So the exact answer does not minimise CT without
# the stop-gradient; the bias term is minimised by $J \to 0$, an $f_\theta$ that ignores its input. That is the
# collapse Chapter 5 trained (samples shrunk to a blob). With the stop-gradient (Theorem 6) the gradient is
# *linear* in $g_{CT}$, and $\mathbb E[g_{CT} \mid x_t] = g_{CD}$ removes the noise in expectation: no bias.
#
# For the mixture, $x \mid x_t$ is again a mixture of Gaussians and $\mathrm{Cov}[x \mid x_t]$ is in closed form
# (`cmlite.theory.continuous.posterior_covariance`: within-component spread plus the spread of the component
# means). Where is it large?

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 4))
grid_pts = np.linspace(-2, 2, 81)
XX = torch.tensor(np.stack(np.meshgrid(grid_pts, grid_pts), -1).reshape(-1, 2), dtype=F64)
for ax, tt in zip(axes, (0.1, 0.5, 2.0)):
    cov = C.posterior_covariance(mix, XX, torch.full((XX.shape[0],), tt, dtype=F64))
    tr = cov.diagonal(dim1=1, dim2=2).sum(1).sqrt().reshape(81, 81).numpy()
    im = ax.imshow(tr, origin="lower", extent=(-2, 2, -2, 2), cmap="magma")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.scatter(*mix.means.T, marker="x", c="c", s=50)
    ax.set_title(rf"$\sqrt{{\mathrm{{tr\,Cov}}[x \mid x_t]}}$ at $t$ = {tt}")
fig.tight_layout()
plt.show()

# %% [markdown]
# At small $t$ the posterior is narrow except on the boundaries between modes, where $x_t$ could have come from
# either neighbour (a spread of about the distance between means); at large $t$ it is wide everywhere. The
# numbers, from the same report as section 3: $\mathcal L^\infty_{CD}$, the bias term, and the limit of CT without
# stop-gradient, which must be their sum:

# %%
cases = []
for toy in ("gaussian", "mixture"):
    r = rep["per_toy"][toy]["ct_same_target"]
    cases.append((f"{toy}, random $f_\\theta$", r["cd_limit"], r["bias"], r["bias_se"], r["limit"], r["limit_se"],
                  r["identity_z"]))
cases.insert(0, ("gaussian, exact $f^*$", eg["L_cd_inf"], eg["bias_closed_form"], 0.0, eg["ct_limit"],
                 eg["ct_limit_se"], eg["ct_limit_z"]))
print(f"{'case':<28}{'L_CD^inf':>10}{'bias':>16}{'CT limit (theta^- = theta)':>30}{'z(CT - CD - bias)':>19}")
for name, cdl, b, bse, ctl, ctse, z in cases:
    print(f"{name.replace('$', '').replace(chr(92), ''):<28}{cdl:>10.4f}{b:>9.4f} ± {bse:.3f}{ctl:>23.4f} ± {ctse:.3f}{z:>19.2f}")
print("(bias of the exact Gaussian case: closed form lambda tau'^2 d s^2 (s^2 + eps^2) / (s^2 + t^2)^2, integrated; "
      "z: the identity CT = CD + bias, in standard errors over the samples, |z| < 3 expected)")

fig, axes = plt.subplots(1, 2, figsize=(13, 4))
ax = axes[0]
pos = np.arange(len(cases))
ax.bar(pos - 0.27, [c[1] for c in cases], 0.27, label=r"$\mathcal{L}^\infty_{CD}$")
ax.bar(pos, [c[2] for c in cases], 0.27, yerr=[2 * c[3] for c in cases], label="bias term (±2 s.e.)")
ax.bar(pos + 0.27, [c[4] for c in cases], 0.27, yerr=[2 * c[5] for c in cases],
       label=r"CT limit, $\theta^- = \theta$ (±2 s.e.)")
ax.bar(pos + 0.27, [c[1] for c in cases], 0.27, fill=False, hatch="//", edgecolor="k", lw=0, label="CD part of it")
ax.set_xticks(pos, [c[0] for c in cases])
ax.set_title("CT without stop-gradient = CD + bias"), ax.legend(fontsize=8)
ax = axes[1]
prof = rep["per_toy"]["mixture"]["profile"]
for key, lab in (("cd_l2", r"$\lambda\tau'^2\|g_{CD}\|^2$"),
                 ("ct_bias", r"bias: $\lambda\tau'^2\,\mathrm{tr}(J\,\mathrm{Cov}\,J^\top)/t^2$"),
                 ("ct_l2", r"$\lambda\tau'^2\|g_{CT}\|^2$")):
    ax.loglog(prof["t"], prof[key], label=lab)
ax.set_xlabel("t"), ax.set_title(r"integrands over $u$ (mixture, random $f_\theta$), sample means"), ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The identity holds within the sampling error in every case (|z| < 1 in the full run), and for the exact
# Gaussian consistency function the whole CT limit is bias: a strictly positive loss at the right answer. On the
# random networks the bias is of the same size as $\mathcal L^\infty_{CD}$ itself. The integrands (right; the factor
# $\tau'^2$ comes from measuring in $u$) peak together around $t \approx 0.5$; below $t \approx 0.1$ the bias is *larger*
# than the CD term — there the modes separate and the posterior straddles their boundaries — and above
# $t \approx 5$ it dies out, because $J \to 0$ for every $f_\theta$ of the skip form ($c_{\rm skip} \to 0$, $c_{\rm in} \to 0$).
#
# ## 6. TrigFlow and sCM's stabilisers
#
# The consistency-models paper already trained its continuous-time objectives (Appendix B), but they proved hard
# to train stably at scale; Lu & Song (2025, "sCM") traced the instability to the tangent and fixed it with a
# handful of changes.
#
# **TrigFlow.** Time $s \in [0, \pi/2]$ with $x_s = \cos(s)\,x_0 + \sin(s)\,\sigma_d z$ and
#
# $$f_\theta(x_s, s) = \cos(s)\, x_s - \sin(s)\,\sigma_d\, F_\theta(x_s/\sigma_d,\ c_{\rm noise}(s)).$$
#
# Under $t = \sigma_d \tan s$, $x_s = \cos(s)\,x_t$ this is EDM's skip form with $\epsilon = 0$ and $F \to -F$:
# $\cos^2 s = c_{\rm skip}$, $\sigma_d\sin s = c_{\rm out}$, $x_s/\sigma_d = c_{\rm in}\,x_t$. The boundary condition holds at $s = 0$
# ($t = 0$, the continuous-time convention) rather than at $t = \epsilon$, and all coefficients are bounded
# trigonometric functions, so their time derivatives are too (EDM's $c_{\rm noise}' = 1/(4t)$ is unbounded at
# $t \to 0$; TrigFlow's $c_{\rm noise}(s) = s$ has derivative 1).
#
# **sCM's loss** (`cmlite.SCTLoss`, `SCDLoss`): with $F^- = F_{\theta^-}$ and the tangent
# $g = \cos(s)\,\frac{d f_{\theta^-}}{ds} = -\cos^2(s)(\sigma_d F^- - v) - r\cos(s)\sin(s)\big(x_s + \sigma_d\,\frac{dF^-}{ds}\big)$,
#
# $$\mathcal L = \frac{e^{w_\phi(s)}}{D}\,\big\|F_\theta - F^- - \tfrac{g}{\|g\| + c}\big\|^2 - w_\phi(s),$$
#
# whose gradient at $\theta^- = \theta$ is the continuous-time consistency gradient. The stabilisers:
#
# * **tangent normalisation** $g \to g/(\|g\| + c)$, $c = 0.1$: per-sample tangents differ by orders of magnitude across
#   $t$, and a few large ones would dominate every batch;
# * **tangent warm-up**: $r$ ramps from 0 to 1 over the first 10% of training; $r$ multiplies the term with
#   $dF^-/ds$, the time derivative of a still-random network, which is the large and erratic part early on;
# * **adaptive weighting** $w_\phi(s)$ (a small learned network of $s$): the minimiser of $e^{w}\,\mathcal E - w$ over $w$ is
#   $e^{-w} = \mathcal E$, so the loss at each $s$ is divided by its own typical size, and no time range dominates;
# * the **JVP rearrangement** (inside `SCMLoss.tangent`): the forward-mode tangents are pre-multiplied by the bounded
#   factor $\sigma_d\cos s\sin s$, so no large intermediate ever forms — a matter of float16 range at scale.
#
# First the mapping, with the library's scalings:

# %%
tt = torch.tensor([0.01, 0.1, 0.5, 2.0, 80.0], dtype=F64)
s = torch.atan(tt / 0.5)
c_skip, c_out, c_in, _ = get_scalings(tt, 0.5, eps=0.0)
print(f"max |cos^2 s - c_skip(eps=0)| = {float((torch.cos(s) ** 2 - c_skip).abs().max()):.1e},  "
      f"max |sigma_d sin s - c_out| = {float((0.5 * torch.sin(s) - c_out).abs().max()):.1e},  "
      f"max |cos(s)/sigma_d - c_in| = {float((torch.cos(s) / 0.5 - c_in).abs().max()):.1e}")
trig = ConsistencyModel(MLP(2, 16, 1), parameterization="trigflow").double()
xb = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    print(f"TrigFlow boundary: max |f(x, s = 0) - x| = {float((trig.trigflow_f(xb, 0.0) - xb).abs().max()):.1e};  "
          f"in EDM time at t = eps: {float((trig(xb, EPS) - xb).abs().max()):.1e} (O(eps / sigma_d), not zero)")

# %% [markdown]
# ### Training in 2D: the continuous-time recipes and their ablations
#
# The ring of eight Gaussians of Chapter 5 (radius 1, std 0.1), the demo's network (a residual MLP of width
# 128) and optimiser (Adam, lr $10^{-3}$, cosine decay, evaluation EMA 0.995), one seed:
#
# * **cCT**, continuous-time CT in improved CT's limit (`ContinuousCTLoss(weighting="ict", time_sampling="lognormal")`):
#   lognormal $t$, weight 1 (iCT's $\lambda = 1/\Delta t$ times the $O(\Delta t)$ difference), the EDM skip parameterisation;
#   with the tangent normalised ($c = 0.1$) and raw;
# * **cCT, CM form**: the paper's Appendix B.3 version (`ContinuousCTLoss()`), $u$ uniform on the Karras map,
#   $\lambda = 1$, weight $\tau'(u)$; raw (as in the paper) and normalised;
# * **sCT** (`SCTLoss`, TrigFlow): with all stabilisers, without the warm-up, without the adaptive weight.
#
# Every run logs the tangent's size (`tangent_rms` $= \|g\|/\sqrt d$ before normalisation, batch mean) and the
# pseudo-objective's value.

# %%
RING = ring_mixture(K=8, radius=1.0, std=0.1)


def recipe(name, steps):
    """(model, loss, schedule) of each run; one network architecture and initialisation seed for all."""
    torch.manual_seed(0)
    trigflow = name.startswith("sCT")
    model = ConsistencyModel(MLP(2, HIDDEN, 3), parameterization="trigflow" if trigflow else "skip",
                             adaptive_weight=trigflow and name != "sCT, no adaptive weight")
    losses = {
        "cCT": (ContinuousCTLoss(weighting="ict", time_sampling="lognormal", normalize=0.1), None),
        "cCT, raw tangent": (ContinuousCTLoss(weighting="ict", time_sampling="lognormal"), None),
        "cCT, CM form (raw)": (ContinuousCTLoss(), None),
        "cCT, CM form, normalised": (ContinuousCTLoss(normalize=0.1), None),
        "sCT": (SCTLoss(), TangentWarmupSchedule(steps // 10)),
        "sCT, no warm-up": (SCTLoss(), TangentWarmupSchedule(0)),
        "sCT, no adaptive weight": (SCTLoss(), TangentWarmupSchedule(steps // 10)),
        "iCT": (ImprovedConsistencyTrainingLoss(), ICTSchedule(steps, 10, 160)),
        "ECT": (ECTLoss(), ECTSchedule(steps, stages=8, q=2)),
    }
    return (model,) + losses[name]


def train(name, steps=STEPS):
    model, loss, schedule = recipe(name, steps)
    cfg = TrainConfig(steps=steps, batch_size=BATCH, lr=1e-3, lr_schedule="cosine", ema_rate=0.995, seed=0,
                      log_every=max(steps // 50, 1))
    tr = Trainer(model, loss, RING, cfg, schedule)
    t0 = time.perf_counter()
    try:
        tr.fit(progress=False)
        tr.failed = None
    except FloatingPointError as e:          # a diverged run is a result too: keep what it learned until then
        tr.failed = str(e).split("\n")[0]
    tr.seconds = time.perf_counter() - t0
    return tr


ABLATIONS = ["cCT", "cCT, raw tangent", "cCT, CM form (raw)", "cCT, CM form, normalised",
             "sCT", "sCT, no warm-up", "sCT, no adaptive weight"]
runs = {}
for name in ABLATIONS:
    runs[name] = train(name)
    print(f"{name:<26} {runs[name].seconds:6.1f} s ({1000 * runs[name].seconds / STEPS:.0f} ms/step on this machine)"
          + (f"  stopped: {runs[name].failed}" if runs[name].failed else ""))

# %%
data_ref = RING.sample(N_EVAL, generator=torch.Generator().manual_seed(1))
floor = data_floor(RING.sample, sliced_wasserstein, N_EVAL, repeats=5, generator=3)
x_T = T * torch.randn(N_EVAL, 2, generator=torch.Generator().manual_seed(2))
TWO_STEP = [T, 0.585]                  # the official CIFAR-10 two-step time, as `cmlite demo`


def evaluate(model):
    """1- and 2-step samples from one fixed x_T, and their distances to the data."""
    out = {}
    for label, ts in (("1 step", [T]), ("2 steps", TWO_STEP)):
        xs = multistep_sample(model, x_T, ts, generator=torch.Generator().manual_seed(4))
        out[label] = {"x": xs, "sw2": sliced_wasserstein(xs, data_ref, generator=7),
                      "off": off_mode_fraction(xs, RING), "loglik": log_likelihood(xs, RING)[0]}
    return out


def metrics_table(results):
    print(f"{'':<26}{'1-step':>30}{'2-step':>30}")
    print(f"{'model':<26}" + f"{'sliced W2':>11}{'off-mode':>9}{'log p':>10}" * 2)
    for name, res in results.items():
        print(f"{name:<26}" + "".join(f"{r['sw2']:>11.3f}{100 * r['off']:>8.0f}%{r['loglik']:>10.2f}" for r in res.values()))
    print(f"(data: sliced W2 floor {floor['mean']:.3f} ± {floor['std']:.3f} at n = {N_EVAL}, off-mode "
          f"{100 * off_mode_fraction_expected(RING):.1f}%, log p {log_likelihood(data_ref, RING)[0]:.2f}; off-mode = share of "
          "samples further than 3 std from every mode)")


results = {name: evaluate(tr.ema) for name, tr in runs.items()}
metrics_table(results)
tau_p = karras_time_derivative(torch.tensor([0.0, 1.0], dtype=F64))
print(f"the CM form's weight tau'(u): {float(tau_p[0]):.3f} at t = eps, {float(tau_p[1]):.0f} at t = T")

# %%
groups = [("cCT (iCT limit)", ["cCT", "cCT, raw tangent"]), ("cCT, CM form", ["cCT, CM form (raw)", "cCT, CM form, normalised"]),
          ("sCT", ["sCT", "sCT, no warm-up", "sCT, no adaptive weight"])]
fig, axes = plt.subplots(1, 4, figsize=(19, 3.8))
for ax, (title, names) in zip(axes, groups):
    for name in names:
        h = runs[name].history
        ax.semilogy(h["step"], h["tangent_rms"], label=name)
    ax.set_title(f"{title}: tangent size"), ax.set_xlabel("step"), ax.legend(fontsize=8)
axes[0].set_ylabel(r"batch mean $\|g\| / \sqrt{d}$ (before normalisation)")
ax = axes[3]
for name in ("cCT", "sCT"):
    h = runs[name].history
    ax.plot(h["step"], h["loss"], label=f"{name}: logged loss")
ax.axhline(0, c="k", lw=0.5)
ax.set_title("the logged 'loss' is a pseudo-objective"), ax.set_xlabel("step"), ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# What the full run shows (3000 steps, one seed; the fast run is too short for most of it):
#
# * **The CM form diverges**, with and without normalisation: within the first 300 steps the tangent grows from
#   0.4 to about 100 and stays there, and the one-step samples end up tens of units away from the data (sliced W2
#   28.6 raw, 11.5 normalised). This is the instability that continuous-time consistency models are known for,
#   and it shows here in 2D. Its weight $\tau'(u)$ runs from 0.05 at $t = \epsilon$ to 437 at $t = T$ (printed above),
#   so the largest noise levels dominate every batch; we have not taken the failure apart further (at the one
#   learning rate, $10^{-3}$, of every run here). iCT's limit weighting avoids it.
# * **iCT's limit (cCT) trains, and normalisation matters**: with the raw tangent the tangent spikes (to 4.5 near
#   step 800) and the run ends far worse (one-step sliced W2 0.495, 73% of the samples between modes) than with the
#   normalised one (0.112, 35%). One seed, but a large gap.
# * **sCT trains with and without its stabilisers.** Its tangent spikes to 2–4 in the first third for all three
#   variants. Without the warm-up the one-step samples are worse (0.242 against 0.139), without the adaptive
#   weight no worse (0.148) — differences of the size one seed can produce, so no firm verdict on either.
# * The logged "loss" (right) is the pseudo-objective of section 4: cCT's hovers between 0 and 0.3, sCT's turns
#   negative; neither says anything about progress.
#
# **Why normalise at all: the tangent's size across time.** Per-sample $\|g\|$ against $t$ on one batch, at
# initialisation and after training (for sCT before its normalisation, with $r = 1$):

# %%
xs_b = RING.sample(2000, generator=torch.Generator().manual_seed(5))
zs_b = torch.randn(2000, 2, generator=torch.Generator().manual_seed(6))
ts_b = truncated_lognormal(2000, -1.1, 2.0, EPS, T, generator=torch.Generator().manual_seed(7))
ss_b = torch.atan(ts_b / 0.5)                                      # the same noise levels in TrigFlow time
sct_loss = SCTLoss()


def tangent_sizes(model):
    """Per-sample |g| of the model's own training tangent at (xs_b, zs_b, ts_b)."""
    if model.parameterization == "trigflow":
        x_s = torch.cos(ss_b)[:, None] * xs_b + torch.sin(ss_b)[:, None] * 0.5 * zs_b
        v = sct_loss.velocity(xs_b, zs_b, x_s, ss_b, 0.5)
        return sct_loss.tangent(model, x_s, ss_b, v, r=1.0)[1].norm(dim=1)
    return consistency_tangent(model, xs_b + ts_b[:, None] * zs_b, ts_b, zs_b)[1].norm(dim=1)


fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for ax, name in zip(axes, ("cCT", "sCT")):
    init = recipe(name, STEPS)[0]
    for model, lab, c in ((init, "initialisation", "0.6"), (runs[name].ema, "after training", "tab:blue")):
        with torch.no_grad():
            n = tangent_sizes(model)
        ax.loglog(ts_b, n, ".", ms=2, c=c, label=f"{lab} (max/median {float(n.max() / n.median()):.0f})")
    ax.set_xlabel("t (EDM noise level)"), ax.set_ylabel(r"$\|g\|$ per sample")
    ax.set_title(f"{name}: " + ("skip parameterisation, $g = df/dt$" if name == "cCT" else r"TrigFlow, $g = \cos s\, df/ds$"))
    ax.legend(fontsize=8, markerscale=4)
fig.tight_layout()
plt.show()

# %% [markdown]
# The tangent's size spans four orders of magnitude across $t$: about 1 below $t \approx 0.5$, then falling like a
# power of $t$ (to $10^{-4}$ at $t = 80$ for the skip form, $10^{-2}$ for TrigFlow, whose $g$ carries the bounded
# factor $\cos s$), and training widens the spread at large $t$. Within one noise level the spread is modest
# (largest over median 4–7 in the batch). So here the normalisation $g/(\|g\| + 0.1)$ is less about rare outliers
# than about capping each sample's pull: tangents below 0.1 (the large-$t$ ones) keep their size, larger ones are
# cut to length about 1, which bounds the update when the tangent spikes during training — the raw cCT run's
# spike is the event it guards against.
#
# **What the adaptive weight learned.** sCT's $w_\phi(s)$ is trained to $e^{-w_\phi(s)} \approx$ the mean squared residual at
# $s$. The learned curve against the residual measured per noise level on fresh samples (the library's
# per-sample loss is $e^{w}\mathcal E - w$, so $\mathcal E = (\mathcal L + w)\,e^{-w}$):

# %%
m_sct = runs["sCT"].ema
with torch.no_grad():
    loss_ps = sct_loss.at(m_sct, xs_b, zs_b, ss_b)                        # e^w E - w per sample
    w_ps = m_sct(torch.cos(ss_b)[:, None] * xs_b, ss_b, raw=True)[1]     # w_phi(s) per sample
    resid = (loss_ps + w_ps) * torch.exp(-w_ps)
edges = np.geomspace(EPS, T, 16)
idx = np.digitize(ts_b.numpy(), edges)
centres = [np.sqrt(edges[i - 1] * edges[i]) for i in range(1, len(edges)) if (idx == i).sum() >= 20]
binned = [float(resid[torch.as_tensor(idx == i)].mean()) for i in range(1, len(edges)) if (idx == i).sum() >= 20]
t_line = torch.tensor(np.geomspace(EPS, T, 200))
with torch.no_grad():
    w_line = m_sct.weight_net(torch.atan(t_line / 0.5).float())
fig, ax = plt.subplots(figsize=(6, 4))
ax.loglog(t_line, torch.exp(-w_line), label=r"learned $e^{-w_\phi(s)}$")
ax.loglog(centres, binned, "o", label="measured mean residual $\\mathcal{E}$ (binned)")
ax.set_xlabel(r"t = $\sigma_d \tan s$"), ax.legend(fontsize=8), ax.set_title("sCT's adaptive weight")
plt.show()
print(f"learned loss scale e^-w from {float(torch.exp(-w_line).min()):.3f} to {float(torch.exp(-w_line).max()):.3f} "
      f"across t: a reweighting by at most a factor {float(torch.exp(-w_line).max() / torch.exp(-w_line).min()):.1f}")

# %% [markdown]
# The learned $e^{-w_\phi}$ follows the measured residual where sCT draws its times (its lognormal, $P_{\rm mean} = -1$,
# $P_{\rm std} = 1.4$, puts little mass above $t \approx 5$, where the curve is extrapolation) and spans a factor of about 3.4
# in the full run: in 2D the reweighting is mild, consistent with the ablation above. Lu & Song report that it
# matters at image scale, where the residual varies far more across $t$.
#
# ## 7. Continuous against discrete in 2D
#
# The same ring, network and budget for discrete improved CT (iCT: $N$ doubling from 11 to 161, lognormal pairs,
# $\lambda = 1/\Delta t$, pseudo-Huber; `cmlite demo`'s CT) and for ECT (Geng et al. 2024: a pair $r < t$ whose gap
# shrinks by half in each of 8 stages, pseudo-Huber, $\lambda = 1/(t - r)$, no JVP), next to cCT and sCT from
# section 6. Same steps for all; a continuous-time step costs about twice a discrete one here (the JVP), which
# the timings below show.

# %%
for name in ("iCT", "ECT"):
    runs[name] = train(name)
    results[name] = evaluate(runs[name].ema)
MAIN = ["iCT", "ECT", "cCT", "sCT"]
for name in MAIN:
    print(f"{name:<5} {1000 * runs[name].seconds / STEPS:5.1f} ms per training step (this machine, this load)")
metrics_table({name: results[name] for name in MAIN})

# %%
fig, axes = plt.subplots(2, len(MAIN) + 1, figsize=(3.2 * (len(MAIN) + 1), 6.6))
for row, label in enumerate(("1 step", "2 steps")):
    axes[row, 0].scatter(*data_ref.T, s=1, alpha=0.3, c="0.3")
    axes[row, 0].set_title(f"data ({label} row)", fontsize=9)
    for j, name in enumerate(MAIN, 1):
        r = results[name][label]
        axes[row, j].scatter(*r["x"].T, s=1, alpha=0.3)
        axes[row, j].set_title(f"{name}, {label}\nsliced W2 {r['sw2']:.3f}, off-mode {100 * r['off']:.0f}%", fontsize=9)
for ax in axes.flat:
    ax.set_xlim(-1.6, 1.6), ax.set_ylim(-1.6, 1.6), ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])
fig.suptitle(f"ring of 8 Gaussians, {STEPS} steps each (sliced W2 of data vs data: {floor['mean']:.3f})")
fig.tight_layout()
plt.show()

# %% [markdown]
# What continuous-time training drives to zero is the tangent along the *true* PF ODE. On the ring the exact
# denoiser is known, so `cmlite.theory.continuous.cd_tangent` measures it for each trained model (the CD tangent
# $g_{CD}$, the same yardstick whichever loss trained the model), at points $x_t = x + t z$ drawn from $p_t$:

# %%
TS_G = (0.05, 0.5, 5.0)
x_g = RING.sample(2000, generator=torch.Generator().manual_seed(8), dtype=F64)
z_g = torch.randn(2000, 2, generator=torch.Generator().manual_seed(9), dtype=F64)
print(f"{'model':<8}" + "".join(f"{'t = ' + str(t_):>12}" for t_ in TS_G) + "   (RMS of |g_CD| over x_t ~ p_t)")
for name, model in [("init", recipe("cCT", STEPS)[0])] + [(n, runs[n].ema) for n in MAIN]:
    m64 = copy.deepcopy(model).double().eval()
    rms = []
    for t_ in TS_G:
        tt_ = torch.full((2000,), t_, dtype=F64)
        rms.append(float(C.cd_tangent(m64, RING, x_g + t_ * z_g, tt_)[1].pow(2).sum(1).mean().sqrt()))
    print(f"{name:<8}" + "".join(f"{v_:>12.3f}" for v_ in rms))

# %% [markdown]
# **What wins here** (full run: one seed, 3000 steps each, equal steps):
#
# * **The discrete methods, clearly.** ECT's one-step samples are the best of all (sliced W2 0.041 against the
#   data-vs-data floor 0.031, 11% between modes), iCT's next (0.097, 10%; its ring is a little too small, as in
#   Chapter 5); with two steps both reach the floor (0.029 and 0.027).
# * **Continuous time loses.** cCT's one-step samples form one lopsided ring with 35% of them between modes, sCT's a
#   fuzzy disc with 60%; a second step makes both *worse* (58%, 69%): their $f_\theta$ at the intermediate time
#   $\tau = 0.585$ is poor.
# * **The tangent table says the same in the theory's own terms.** The discrete-trained models end with the smallest
#   tangent along the true PF ODE (iCT: RMS 0.12 at $t = 0.05$, 0.11 at $t = 0.5$), while cCT and sCT, which train on
#   the tangent directly, stay close to their initial value at small $t$ (0.69 and 0.71, against 0.77 at
#   initialisation).
# * A continuous-time step costs 1.6–2x a discrete one here (the JVP), so at equal wall-clock time the gap is wider still.
#
# Why? The benchmark's ablations point at the missing **curriculum**. iCT's $N$ starts at 11 and ECT's first stage
# is plain denoising ($r = \epsilon$): both first learn the coarse map from large gaps, where the signal is strong,
# and then refine it. The continuous-time losses start at the infinitesimal gap, where the only signal is the
# local tangent — noisy by the posterior-covariance term of section 5 — which has to carry the boundary condition
# up from $t = \epsilon$ through the whole time range. In a one-seed run of `bench/continuous_2d.py`'s ablations (its
# table is printed below when present), ECT *without* its curriculum (its smallest gap from the first step) leaves
# 35% of the one-step samples between modes instead of 11%, and ECT's first half followed by continuous-time CT
# for the second half ends at 12%, level with iCT: continuous-time training keeps a good coarse map well, it is
# poor at building one. (One seed each: indicative, not settled.) The same run's `cct_cm` is this chapter's
# diverging CM form, to the digit. And the published continuous-time results (sCT: one-step CIFAR-10 FID 2.97)
# come from U-Nets trained for hundreds of thousands of steps, with network changes this 2D MLP does not have:
# this chapter shows what the same losses do on a small problem at a small budget, not that they cannot work.
#
# **The benchmark.** `bench/continuous_2d.py` runs the same four methods on the same settings for three seeds,
# at equal steps and at equal wall-clock time (a continuous-time method then gets fewer steps), plus the ablations
# named above, with more diagnostics (the gradient's signal-to-noise ratio, the error against the exact PF-ODE map
# over $t$). Its tables, as far as they have been run in this checkout (`docs/results/continuous-2d/`):

# %%
RESULTS = Path(cmlite.__file__).resolve().parents[1] / "docs" / "results" / "continuous-2d"
tables = sorted(RESULTS.glob("**/continuous_2d.md"))          # the main run and any ablation runs beside it
for md in tables:
    doc_path = md.with_suffix(".json")
    doc = json.loads(doc_path.read_text()) if doc_path.exists() else {}
    print(f"== {md.parent.relative_to(RESULTS.parents[2])}: {doc.get('date', '?')}, "
          f"`{doc.get('command', '?')}`, seeds {doc.get('settings', {}).get('seeds', '?')}")
    print(md.read_text())
if not tables:
    print(f"no benchmark results in {RESULTS} yet: run  python bench/continuous_2d.py --out docs/results/continuous-2d")

# %% [markdown]
# ## Summary
#
# * As $N \to \infty$ the difference of neighbouring outputs becomes $h$ times the tangent
#   $g = \partial_t f_\theta + \partial_x f_\theta\, v$, the time derivative of $f_\theta$ along the PF ODE (CT: along the
#   noising line, $v \to z$), and the grid gaps become $\tau'(u)/(N-1)$. The tangent is one forward-mode
#   Jacobian-vector product; the library's agrees with the chain rule written out to round-off.
# * Theorems 3–6, measured on analytic toys with common random numbers: $(N-1)^2\mathcal L^N$, $(N-1)\mathcal L^N$ ($L_1$) and
#   $(N-1)\nabla_\theta\mathcal L^N$ (stop-gradient, CD and CT) converge to their limits at order 1 in $1/N$; the library's
#   continuous-time losses have exactly the limit gradients.
# * The stop-gradient limit is a pseudo-objective: its value is $\mathbb E\|f_\theta(x_T, T)\|^2 - \mathbb E\|x_\epsilon\|^2$ (with
#   $\lambda = 1$), negative for random networks and 0 at the answer; only its gradient is meaningful.
# * CT without the stop-gradient converges (order 2) to the CD limit *plus* $\mathbb E[\lambda\tau'^2 \operatorname{tr}(J\,\mathrm{Cov}[x|x_t]\,J^\top)/t^2]$,
#   positive even at the exact consistency function; it pushes $\partial_x f_\theta$ towards zero, the collapse of Chapter 5.
# * TrigFlow rewrites EDM's skip form with bounded trigonometric coefficients; sCM adds tangent normalisation, a
#   tangent warm-up and an adaptive weighting. In 2D, continuous-time CT in the paper's original form (uniform $u$,
#   weight $\tau'$) diverges; in iCT's limit form it trains, and there the tangent normalisation made the difference;
#   the warm-up and the adaptive weight made no difference one seed can resolve.
# * On the ring, at equal steps, the discrete methods win clearly: ECT and iCT reach the data-vs-data floor in two
#   steps, while continuous-time CT and sCT leave 35–69% of their samples between the modes (one or two steps)
#   and cost up to twice as much per step. Continuous time removes the discretisation error of Theorem 1, but on this
#   problem the discretisation error was not what limited the discrete methods; what the continuous-time losses
#   lack is the curriculum from large gaps to small ones (the benchmark's one-seed ablations).
