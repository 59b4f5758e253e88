r"""Theorem 2 of Song et al. (2023), measured: consistency training matches consistency distillation.

**Statement** (method.md §8). With the true score and the Euler solver,
:math:`\mathcal L^N_{CD}(\theta, \theta^-) = \mathcal L^N_{CT}(\theta, \theta^-) + o(\Delta t)`.

**Why.** With :math:`x_{n+1} = x + t_{n+1} z`, the two targets are evaluated at

.. math:: \hat x^{CD} = x_{n+1} - (t_n - t_{n+1})\, \frac{x_{n+1} - D(x_{n+1}, t_{n+1})}{t_{n+1}},\qquad
          \hat x^{CT} = x + t_n z = x_{n+1} + (t_n - t_{n+1})\, z .

Tweedie's formula gives :math:`E[z \mid x_{n+1}] = (x_{n+1} - D(x_{n+1}, t_{n+1}))/t_{n+1}` for the *true*
denoiser D, so :math:`\delta = \hat x^{CT} - \hat x^{CD} = (t_n - t_{n+1})(z - E[z|x_{n+1}])` has conditional
mean zero and size O(h), h = t_{n+1} - t_n. Expanding the target :math:`f_{\theta^-}(\hat x^{CT})` around
:math:`\hat x^{CD}`, the first-order term averages out and the second-order term is O(h^2). Hence

* the loss gap :math:`\mathcal L_{CD} - \mathcal L_{CT}` is O(Delta t^2) (for squared L2 it equals minus the
  variance term :math:`E\|J\delta\|^2/d` to leading order: CT is the larger);
* the gradient gap with respect to the online parameters,
  :math:`\nabla_\theta \mathcal L_{CD} - \nabla_\theta \mathcal L_{CT} = O(\Delta t^2)`, while
  :math:`\nabla_\theta \mathcal L_{CD}` itself is O(Delta t) for a generic f_theta, so the *relative*
  gradient gap is O(Delta t): it shrinks with Delta t. With a wrong teacher score the first-order term no
  longer cancels and the relative gap stays O(1).

Honest caveat: for squared L2 and a smooth f_theta both losses are themselves O(Delta t^2), so
"loss gap = o(Delta t)" holds for *any* teacher; the relative gradient gap is the sharp check.

**Estimators.** Common random numbers: one outer sample (x, z, u) with n = floor(u (N - 1)) is shared by
CD and CT and by every N. Two CT estimators are reported:

* ``mc``: CT with the same z (plain Monte Carlo). Its per-sample gradient gap has an O(h) zero-mean part,
  so its noise is O(h / sqrt(B)) against an O(h^2) signal: it resolves the gap only for small N.
* ``rb`` (Rao-Blackwellised): the CT loss averaged exactly over z | x_{n+1} (a Gaussian mixture:
  z | x_t, component k ~ N(t (x_t - mu_k)/(s_k^2 + t^2), s_k^2/(s_k^2 + t^2) I)) by tensor Gauss-Hermite
  quadrature, fed through the library's own ``ConsistencyTrainingLoss.at``. Same expectation, with the
  O(h) noise removed, so the gap is resolved at every N.

Standard errors: loss gaps from the per-sample differences (i.i.d. outer samples); gradient norms from
``groups`` independent batches, with the squared norm of the mean estimated without noise bias by the
U-statistic :math:`\frac{1}{K(K-1)}\sum_{k \ne l} \langle g_k, g_l \rangle` and the ratio's standard error
by the jackknife over batches.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..schedules import karras_boundaries, max_gap
from ..toys import GaussianMixture
from .common import DTYPE, fit_slope, get_toy

DEFAULT_NS = (8, 16, 32, 64, 128, 256, 512)
DEFAULT_FIT_RANGE = (64, 512)


def posterior_noise_quadrature(mixture: GaussianMixture, x_t: Tensor, t: Tensor, nodes: int = 3
                               ) -> tuple[Tensor, Tensor]:
    r"""Quadrature nodes and weights for the exact conditional law of the noise z given x_t = x + t z
    under the mixture :math:`\sum_k w_k N(\mu_k, s_k^2 I)`:

    .. math:: z \mid x_t \sim \sum_k r_k(x_t)\, N\!\Big(\frac{t (x_t - \mu_k)}{s_k^2 + t^2},\;
              \frac{s_k^2}{s_k^2 + t^2} I\Big),\qquad r_k \propto w_k N(x_t; \mu_k, (s_k^2 + t^2) I).

    Each component gets a tensor Gauss-Hermite rule with ``nodes`` points per dimension (exact for
    polynomials of degree 2 nodes - 1 in each coordinate). Returns z (B, P, d) and weights (B, P) summing
    to 1, P = K nodes^d.
    """
    g = mixture
    x_t, t = x_t.to(DTYPE), t.to(DTYPE)
    B, d = x_t.shape
    v = g.stds[None, :] ** 2 + t[:, None] ** 2                                # (B, K)
    logr = (torch.log(g.weights)[None] - 0.5 * torch.cdist(x_t, g.means) ** 2 / v
            - 0.5 * d * torch.log(2 * math.pi * v))
    r = torch.softmax(logr, dim=1)
    mean = t[:, None, None] * (x_t[:, None, :] - g.means[None]) / v[..., None]  # (B, K, d)
    sd = torch.sqrt(g.stds[None, :] ** 2 / v)                                 # (B, K)
    u, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    grid = np.stack(np.meshgrid(*([u] * d), indexing="ij"), -1).reshape(-1, d)
    wgrid = np.prod(np.stack(np.meshgrid(*([w] * d), indexing="ij"), -1).reshape(-1, d), axis=1)
    G = torch.as_tensor(grid, dtype=DTYPE)
    W = torch.as_tensor(wgrid, dtype=DTYPE)
    z = mean[:, :, None, :] + sd[:, :, None, None] * G[None, None]             # (B, K, Q^d, d)
    wt = r[:, :, None] * W[None, None]
    return z.reshape(B, -1, d), wt.reshape(B, -1)


def _flat_grad(value: Tensor, params) -> Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params)])


def _u_sq_norm(G: Tensor) -> Tensor:
    # unbiased estimate of |E g|^2 from K i.i.d. rows: sum_{k != l} <g_k, g_l> / (K (K - 1))
    K = G.shape[0]
    S = G.sum(0)
    return (S.dot(S) - (G * G).sum()) / (K * (K - 1))


def relative_norm(num: Tensor, den: Tensor) -> dict:
    r"""sqrt(|E a|^2 / |E b|^2) from K batch rows of a (``num``) and b (``den``), each squared norm
    estimated by the U-statistic (no noise bias), with jackknife standard errors over the batches.

    Returns ``value`` (``None`` when the numerator's estimate is negative, i.e. pure noise: there is no
    estimate, only the bound), ``se`` (jackknife SE of the ratio; ``None`` with the value), ``resolved`` (the
    numerator's U-statistic exceeds twice its jackknife SE, i.e. the gap is distinguishable from zero at about
    the 2-sigma level), ``upper`` (the ratio with the numerator raised by two SEs: an approximate 97.5% upper
    bound, useful when the gap is not resolved) and ``text``: "value±se" when resolved, else
    "unresolved (< upper)"."""
    K = num.shape[0]
    Un, Ud = float(_u_sq_norm(num)), float(_u_sq_norm(den))
    loo_n, loo_d = [], []
    for k in range(K):
        keep = [i for i in range(K) if i != k]
        loo_n.append(float(_u_sq_norm(num[keep])))
        loo_d.append(float(_u_sq_norm(den[keep])))
    loo_n, loo_d = torch.tensor(loo_n, dtype=DTYPE), torch.tensor(loo_d, dtype=DTYPE)

    def jk(v):
        return math.sqrt((K - 1) / K * float(((v - v.mean()) ** 2).sum()))

    se_n = jk(loo_n)
    value = math.sqrt(Un / Ud) if Un > 0 else None
    se = jk(torch.sqrt(loo_n.clamp(min=0) / loo_d)) if value is not None else None
    resolved, upper = Un > 2 * se_n, math.sqrt(max(Un + 2 * se_n, 0.0) / Ud)
    text = f"{value:.3e}±{se:.1e}" if resolved else f"unresolved (< {upper:.2e})"
    return {"value": value, "se": se, "resolved": resolved, "upper": upper, "text": text}


def cd_ct_gap(model, teacher, mixture: GaussianMixture, x: Tensor, z: Tensor, u: Tensor, N: int,
              groups: int = 16, nodes: int = 3, solver: str = "euler", distance="l2",
              weighting: str = "uniform") -> dict:
    """CD-vs-CT loss and gradient gaps at one N with common random numbers (x, z, u); see the module
    docstring. ``teacher`` is the CD denoiser (the true one for Theorem 2), ``mixture`` the data
    distribution (it defines the exact conditional law of z used by the ``rb`` estimator)."""
    from ..losses import ConsistencyDistillationLoss, ConsistencyTrainingLoss
    cd = ConsistencyDistillationLoss(teacher, solver=solver, distance=distance, weighting=weighting)
    ct = ConsistencyTrainingLoss(distance=distance, weighting=weighting)
    t = karras_boundaries(N)
    n = torch.clamp((u * (N - 1)).long(), max=N - 2)
    params = [p for p in model.parameters() if p.requires_grad]
    B = x.shape[0]
    if B % groups:
        raise ValueError(f"the number of samples ({B}) must be a multiple of groups ({groups})")
    l_cd, l_mc, l_rb, g_cd, g_mc, g_rb = [], [], [], [], [], []
    for k in range(groups):
        sl = slice(k * B // groups, (k + 1) * B // groups)
        xs, zs, ns = x[sl], z[sl], n[sl]
        a = cd.at(model, xs, zs, ns, t)
        b = ct.at(model, xs, zs, ns, t)
        x_np1 = xs + t[ns + 1][:, None] * zs
        zq, wq = posterior_noise_quadrature(mixture, x_np1, t[ns + 1], nodes)
        P = zq.shape[1]
        zf = zq.reshape(-1, zq.shape[-1])
        xf = x_np1.repeat_interleave(P, 0) - t[ns + 1].repeat_interleave(P)[:, None] * zf
        c = (ct.at(model, xf, zf, ns.repeat_interleave(P), t).reshape(-1, P) * wq).sum(1)
        g_cd.append(_flat_grad(a.mean(), params))
        g_mc.append(_flat_grad(b.mean(), params))
        g_rb.append(_flat_grad(c.mean(), params))
        l_cd.append(a.detach()), l_mc.append(b.detach()), l_rb.append(c.detach())
    l_cd, l_mc, l_rb = torch.cat(l_cd), torch.cat(l_mc), torch.cat(l_rb)
    g_cd, g_mc, g_rb = torch.stack(g_cd), torch.stack(g_mc), torch.stack(g_rb)
    d_mc, d_rb = l_cd - l_mc, l_cd - l_rb
    rb, mc = relative_norm(g_cd - g_rb, g_cd), relative_norm(g_cd - g_mc, g_cd)
    return {"N": N, "dt": max_gap(t), "loss_cd": float(l_cd.mean()), "loss_ct": float(l_rb.mean()),
            "loss_ct_mc": float(l_mc.mean()),
            "loss_gap": float(d_rb.mean()), "loss_gap_se": float(d_rb.std() / math.sqrt(B)),
            "loss_gap_mc": float(d_mc.mean()), "loss_gap_mc_se": float(d_mc.std() / math.sqrt(B)),
            "grad_cd_norm": math.sqrt(max(float(_u_sq_norm(g_cd)), 0.0)),
            "rel_grad_gap": rb["value"], "rel_grad_gap_se": rb["se"], "rel_grad_gap_resolved": rb["resolved"],
            "rel_grad_gap_upper": rb["upper"], "rel_grad_gap_text": rb["text"],
            "rel_grad_gap_mc": mc["value"], "rel_grad_gap_mc_se": mc["se"],
            "rel_grad_gap_mc_resolved": mc["resolved"], "rel_grad_gap_mc_upper": mc["upper"],
            "rel_grad_gap_mc_text": mc["text"]}


def theorem2_table(toy="mixture", Ns: Sequence[int] = DEFAULT_NS, B: int = 2048, groups: int = 16,
                   nodes: int = 3, seed: int = 0, hidden: int = 64, depth: int = 2, model=None,
                   teacher=None, solver: str = "euler", distance="l2", weighting: str = "uniform",
                   fit_range: tuple[int, int] = DEFAULT_FIT_RANGE) -> dict:
    r"""CD (Euler, exact teacher) against CT for each N, on the same outer samples.

    ``model``: the online network f_theta (default: a freshly initialised float64
    ``ConsistencyModel(MLP(d, hidden, depth))`` with torch seed ``seed``; the target is the same network,
    mu = 0). ``teacher``: the CD denoiser (default: the toy's exact denoiser; pass a wrong one to see the
    check fail). Fits over ``fit_range``: the slope of |loss gap| against Delta t (o(Delta t) means > 1;
    the theory says 2) and of the relative gradient gap (the theory says 1).
    """
    T = get_toy(toy)
    g = T.mixture
    if model is None:
        from ..nets import MLP
        from ..parameterization import ConsistencyModel
        torch.manual_seed(seed)
        model = ConsistencyModel(MLP(g.dim, hidden, depth)).to(DTYPE)
    teacher = g if teacher is None else teacher
    gen = torch.Generator().manual_seed(seed + 1)
    x = g.sample(B, generator=gen, dtype=DTYPE)
    z = torch.randn(B, g.dim, generator=gen, dtype=DTYPE)
    u = torch.rand(B, generator=gen, dtype=DTYPE)
    rows = [cd_ct_gap(model, teacher, g, x, z, u, int(N), groups, nodes, solver, distance, weighting)
            for N in sorted(Ns)]
    fit = [r for r in rows if fit_range[0] <= r["N"] <= fit_range[1]]
    loss_slope = fit_slope([r["dt"] for r in fit], [abs(r["loss_gap"]) for r in fit])[0] \
        if len(fit) >= 2 else float("nan")
    pos = [r for r in fit if r["rel_grad_gap"] is not None]  # None: no estimate (clamped), only a bound
    grad_slope = fit_slope([r["dt"] for r in pos], [r["rel_grad_gap"] for r in pos])[0] \
        if len(pos) >= 2 else float("nan")
    return {"toy": T.name, "description": T.description,
            "teacher": "exact denoiser of the toy" if teacher is g else "custom",
            "solver": solver, "distance": distance if isinstance(distance, str) else "custom",
            "weighting": weighting, "samples": B, "groups": groups, "quadrature_nodes": nodes,
            "seed": seed,
            "estimators": {"rb": "CT averaged exactly over z | x_{t_{n+1}} (Gauss-Hermite), same outer samples",
                           "mc": "CT with the same z (plain common random numbers)"},
            "regime": {"N": [fit[0]["N"], fit[-1]["N"]] if fit else None,
                       "dt": [fit[-1]["dt"], fit[0]["dt"]] if fit else None},
            "loss_gap_slope": loss_slope, "rel_grad_gap_slope": grad_slope, "rows": rows}
