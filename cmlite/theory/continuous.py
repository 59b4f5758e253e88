r"""The continuous-time limits of consistency distillation and training (Song et al. 2023, Appendix B,
Theorems 3-6), measured, plus the biased limit of consistency training without a stop-gradient.

**Setting.** The grid is :math:`t_n = \tau((n-1)/(N-1))`, n = 1..N, with the Karras map

.. math:: \tau(u) = \big(\epsilon^{1/\rho} + u\,(T^{1/\rho} - \epsilon^{1/\rho})\big)^\rho,\qquad
          \rho = 7,\ \epsilon = 0.002,\ T = 80,

so :math:`\tau'(u) = 1/(\tau^{-1})'(t)` at :math:`t = \tau(u)`. Write :math:`k = 1/(N-1)`, :math:`u_n = (n-1)k`
and :math:`h_n = t_{n+1} - t_n = \tau'(u_{n+1})\,k - \tfrac12\tau''(u_{n+1})\,k^2 + O(k^3)`. The losses are the
paper's,

.. math:: \mathcal L^N = \frac{1}{N-1}\sum_{n=1}^{N-1} E\big[\lambda(t_n)\,
          d\big(f_\theta(x_{t_{n+1}}, t_{n+1}),\, f_{\theta^-}(\hat x_{t_n}, t_n)\big)\big],\qquad
          x_{t_{n+1}} = x + t_{n+1} z,

with the paper's distances: squared L2 :math:`d(a,b) = \|a-b\|_2^2` and L1 :math:`d(a,b) = \|a-b\|_1` (the
library's ``l2``/``l1`` average over the d coordinates: they are these divided by d, and the code multiplies
back). CD uses one Euler step with the *exact* denoiser D of the toy, :math:`\hat x_{t_n} = x_{t_{n+1}} - h_n v`,
:math:`v = (x_{t_{n+1}} - D(x_{t_{n+1}}, t_{n+1}))/t_{n+1}` (the PF-ODE velocity); CT uses
:math:`\hat x_{t_n} = x + t_n z`. The discrete losses are computed by the library's own
:class:`~cmlite.losses.ConsistencyDistillationLoss` and :class:`~cmlite.losses.ConsistencyTrainingLoss`
(``.at``, target under stop-gradient), with the weighting :math:`\lambda(t_n)` of
:func:`cmlite.losses.lambda_weight`.

**Tangents.** Along the PF ODE and along the noising line:

.. math:: g_{CD}(x_t, t) = \partial_t f_\theta + (\partial_x f_\theta)\,v,\quad v = \frac{x_t - D(x_t,t)}{t};
          \qquad g_{CT}(x_t, t; x) = \partial_t f_\theta + (\partial_x f_\theta)\,\frac{x_t - x}{t}
          = \frac{d}{dt} f_\theta(x + t z, t).

Both are one forward-mode derivative, ``torch.func.jvp`` of :math:`(x, t) \mapsto f_\theta(x,t)` with tangent
(v, 1), resp. (z, 1) (:func:`tangent`); :func:`skip_tangent_analytic` writes out the same derivative of the
skip parameterisation by hand (:func:`scaling_derivatives`) as an independent check. Since
:math:`E[z \mid x_t] = v` (Tweedie), :math:`E[g_{CT} \mid x_t] = g_{CD}`.

**Theorem 3** (:math:`\theta^- = \theta`, squared L2, Euler). Expanding the target around
:math:`(x_{t_{n+1}}, t_{n+1})` along the Euler direction (v, 1),

.. math:: \Delta_n = f_\theta(x_{t_{n+1}}, t_{n+1}) - f_\theta(\hat x_{t_n}, t_n) = h_n\, g_{CD} - \tfrac{h_n^2}{2}\, q
          + O(h_n^3),\qquad q = \text{second derivative of } f_\theta \text{ along } (v, 1),

so :math:`\|\Delta_n\|^2 = h_n^2\|g_{CD}\|^2 - h_n^3\, g_{CD}\cdot q + O(k^4)` and

.. math:: (N-1)^2 \mathcal L^N = k \sum_n \lambda(t_n)\,\tau'(u_{n+1})^2\,\|g_{CD}(x_{t_{n+1}}, t_{n+1})\|^2 + O(k)
          \;\longrightarrow\; \mathcal L^\infty_{CD} = E\big[\lambda(t)\,\tau'(u)^2\,\|g_{CD}(x_t, t)\|^2\big],

u ~ U[0,1], t = tau(u) (the paper's :math:`\tfrac12 E[\lambda/((\tau^{-1})')^2\, g^\top G g]` with the Hessian
G = 2I of the squared L2 distance). The sum is a right-endpoint Riemann sum with O(k) corrections
(:math:`\lambda(t_n)` against :math:`\lambda(t_{n+1})`, :math:`\tau''`, q): the gap is O(1/N), **order 1**.

**Theorem 4** (L1). :math:`\|\Delta_n\|_1 = h_n\|g_{CD}\|_1 + O(h_n^2)` (also across sign changes of a
component, where the O(h^2) bound still holds), so
:math:`(N-1)\mathcal L^N \to E[\lambda(t)\,\tau'(u)\,\|g_{CD}\|_1]`, order 1.

**Theorem 5** (:math:`\theta^- = \mathrm{sg}(\theta)`, squared L2). Only the online branch is differentiated:
:math:`\nabla_\theta \|\Delta_n\|^2 = 2 (\partial_\theta f_\theta)^\top \Delta_n
= 2h_n (\partial_\theta f_\theta)^\top g_{CD} + O(k^2)`, hence

.. math:: (N-1)\nabla_\theta\mathcal L^N \to \nabla_\theta\, 2E\big[\lambda(t)\,\tau'(u)\, f_\theta(x_t,t)^\top
          \mathrm{sg}(g_{CD}(x_t,t))\big],

a *pseudo-objective*: its value means nothing (it is not a loss and can be negative), only its gradient.
Order 1.

**Theorem 6** (CT, :math:`\theta^- = \mathrm{sg}(\theta)`). Now :math:`\Delta_n = F(u_{n+1}) - F(u_n)` for
:math:`F(u) = f_\theta(x + \tau(u) z, \tau(u))`, whose derivative is :math:`\tau'(u)\, g_{CT}`, so
:math:`(N-1)\nabla_\theta\mathcal L^N_{CT} \to \nabla_\theta\, 2E[\lambda\tau' f_\theta^\top \mathrm{sg}(g_{CT})]`
(order 1: the gradient factor :math:`\partial_\theta f_\theta` sits at the right end point, the difference at
the midpoint). Because :math:`E[g_{CT} \mid x_t] = g_{CD}` and the rest of the integrand is a function of
:math:`x_t`, this limit equals Theorem 5's **in expectation** (with the exact score): the per-sample difference
has mean zero, and ``cd_ct_gap_z`` is its mean in standard errors.

**Beyond the paper: CT with** :math:`\theta^- = \theta` (no stop-gradient, squared L2). The value
:math:`(N-1)^2\mathcal L^N_{CT} = k\sum_n \lambda(t_n)\,\|F(u_{n+1}) - F(u_n)\|^2/k^2` and
:math:`F(u_{n+1}) - F(u_n) = k F'(m_n) + \tfrac{k^3}{24}F'''(m_n) + O(k^5)` at the midpoint :math:`m_n`, so

.. math:: (N-1)^2\mathcal L^N_{CT} = k\sum_n \lambda(t_n)\, \|F'(m_n)\|^2 + O(k^2)
          \;\longrightarrow\; E\big[\lambda(t)\,\tau'(u)^2\,\|g_{CT}\|^2\big],

a **midpoint rule: order 2** when :math:`\lambda` is constant. (Here :math:`\lambda(t_n)` against
:math:`\lambda(t)` matters: a non-constant :math:`\lambda` taken at the left end point :math:`t_n` instead of the
midpoint adds :math:`-\tfrac{k}{2}\lambda'` and the order drops to 1. For Theorems 3-6 the choice only changes
the O(1/N) constant.) This limit is *not* :math:`\mathcal L^\infty_{CD}`: with
:math:`g_{CT} = g_{CD} + J (z - E[z|x_t])`, :math:`J = \partial_x f_\theta`, and
:math:`\mathrm{Cov}[z \mid x_t] = \mathrm{Cov}[x \mid x_t]/t^2`,

.. math:: E\big[\lambda\tau'^2\|g_{CT}\|^2\big] = \mathcal L^\infty_{CD}
          + E\Big[\lambda\tau'^2\,\frac{\operatorname{tr}\big(J\,\mathrm{Cov}[x \mid x_t]\,J^\top\big)}{t^2}\Big],

a positive bias even at the true consistency function (where :math:`g_{CD} = 0`): without the stop-gradient, CT
also minimises the posterior spread seen through J, i.e. it shrinks :math:`f_\theta` (see
:func:`posterior_covariance` for the mixture's closed form).

**Estimators (common random numbers, no Monte Carlo in the orders).** One set of i.i.d. samples (x_i, z_i) is
shared by every N and by the limits. For each sample the discrete loss is summed *exactly* over all N - 1
intervals, and the limit integral over u is done by composite Gauss-Legendre quadrature on the same
(x_i, z_i) (the limit of the per-sample sum, since x_t = x_i + tau(u) z_i ~ p_t). So every gap is a
deterministic function of the samples: the Monte Carlo error of E over (x, z) is the same on both sides and
cancels, and the fitted order is not buried in noise. Only the two expectation identities (CD = CT for the
limit gradient; the bias formula) are statistical; they are checked by z-scores over the samples.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..continuous import ContinuousCDLoss, ContinuousCTLoss, consistency_tangent
from ..continuous import karras_time as tau
from ..continuous import karras_time_derivative as tau_prime
from ..losses import ConsistencyDistillationLoss, ConsistencyTrainingLoss, lambda_weight
from ..ode import pf_ode_drift
from ..parameterization import ConsistencyModel
from ..schedules import EPS, RHO, SIGMA_DATA, T_MAX, karras_boundaries, max_gap
from ..toys import Gaussian, GaussianMixture
from .common import DTYPE, fit_slope, get_toy, local_slopes

#: N values of the tables (k = 1/(N-1) from 1/15 to 1/511).
DEFAULT_NS = (16, 32, 64, 128, 256, 512)
#: planted bugs for the tests: each makes one limit wrong (see :func:`limit_pieces`)
MUTATIONS = ("tangent_sign", "no_tau_prime", "score_for_velocity", "within_only", "no_bias")
#: expected orders of the gaps in 1/N
ORDERS = {"theorem3": 1, "theorem4": 1, "theorem5": 1, "theorem6": 1, "ct_same_target": 2}


# ---------------------------------------------------------------- the Karras map
# tau(u) and tau'(u) = 1/(tau^{-1})'(t) are the library's (cmlite.continuous.karras_time and its derivative):
# tau((n-1)/(N-1)) is the grid of cmlite.schedules.karras_boundaries (tested).


def gauss_legendre(panels: int = 8, nodes: int = 16) -> tuple[Tensor, Tensor]:
    """Composite Gauss-Legendre rule on [0, 1]: ``panels`` equal panels of ``nodes`` points each (exact for
    polynomials of degree 2 nodes - 1 on every panel). Returns nodes u and weights w (sum 1), float64."""
    if panels < 1 or nodes < 1:
        raise ValueError(f"need panels >= 1 and nodes >= 1; got panels={panels}, nodes={nodes}")
    x, w = np.polynomial.legendre.leggauss(nodes)
    edges = np.linspace(0.0, 1.0, panels + 1)
    u = np.concatenate([a + (b - a) * (x + 1) / 2 for a, b in zip(edges[:-1], edges[1:])])
    ww = np.concatenate([(b - a) * w / 2 for a, b in zip(edges[:-1], edges[1:])])
    return torch.as_tensor(u, dtype=DTYPE), torch.as_tensor(ww, dtype=DTYPE)


def _lam(weighting: str, t: Tensor) -> Tensor:
    # lambda(t) of a weighting that depends on t only (the limit takes it at t = tau(u))
    if weighting == "ict":
        raise ValueError("the 'ict' weighting 1/(t_{n+1} - t_n) depends on N (it grows like N - 1), so the "
                         "continuous-time limits of Theorems 3-6 do not apply as stated; use 'uniform', 'snr', "
                         "'snr+1', 'karras' or 'truncated_snr'")
    return lambda_weight(weighting, t, t)


# ---------------------------------------------------------------- a smooth f_theta
class TanhMLP(nn.Module):
    r"""A small fixed network :math:`F(x_{in}, c_{noise})`: ``depth`` tanh layers of width ``hidden`` on the input
    :math:`[x_{in}, c_{noise}]`, then a linear layer to R^dim. Infinitely differentiable, so every Taylor
    expansion of the module docstring applies. Initialised from ``seed`` (weights N(0, 1/fan_in), biases
    N(0, 0.1^2)), float64; its Jacobian is written out in :meth:`jacobian`."""

    def __init__(self, dim: int = 2, hidden: int = 32, depth: int = 2, seed: int = 0):
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"need dim, hidden, depth >= 1; got {dim}, {hidden}, {depth}")
        g = torch.Generator().manual_seed(seed)
        sizes = [dim + 1] + [hidden] * depth + [dim]
        self.dim = dim
        self.layers = nn.ModuleList()
        for a, b in zip(sizes[:-1], sizes[1:]):
            lin = nn.Linear(a, b).to(DTYPE)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(b, a, generator=g, dtype=DTYPE) / math.sqrt(a))
                lin.bias.copy_(0.1 * torch.randn(b, generator=g, dtype=DTYPE))
            self.layers.append(lin)

    def forward(self, x_in: Tensor, c_noise: Tensor) -> Tensor:
        if x_in.ndim != 2 or x_in.shape[1] != self.dim:
            raise ValueError(f"TanhMLP expects x of shape (batch, {self.dim}); got {tuple(x_in.shape)}")
        h = torch.cat([x_in, c_noise.to(x_in.dtype)[:, None]], 1)
        for lin in self.layers[:-1]:
            h = torch.tanh(lin(h))
        return self.layers[-1](h)

    def jacobian(self, x_in: Tensor, c_noise: Tensor) -> tuple[Tensor, Tensor]:
        r"""The Jacobian written out (chain rule, :math:`\tanh' = 1 - \tanh^2`):
        :math:`\partial F/\partial[x_{in}, c] = W_L\,\mathrm{diag}(1-h_{L-1}^2)\,W_{L-1}\cdots
        \mathrm{diag}(1-h_1^2)\,W_1`. Returns (dF/dx_in of shape (B, dim, dim), dF/dc_noise of shape (B, dim))."""
        h = torch.cat([x_in, c_noise.to(x_in.dtype)[:, None]], 1)
        M = torch.eye(h.shape[1], dtype=h.dtype).expand(h.shape[0], -1, -1)
        for lin in self.layers[:-1]:
            h = torch.tanh(lin(h))
            M = (1 - h ** 2)[:, :, None] * (lin.weight @ M)
        M = self.layers[-1].weight @ M
        return M[:, :, :self.dim], M[:, :, self.dim]


def make_model(dim: int = 2, hidden: int = 32, depth: int = 2, seed: int = 0) -> ConsistencyModel:
    """The f_theta of the checks: the library's eps-shifted skip parameterisation
    (:class:`~cmlite.parameterization.ConsistencyModel`, sigma_data = 0.5, eps = 0.002) around a fixed
    :class:`TanhMLP`, float64."""
    return ConsistencyModel(TanhMLP(dim, hidden, depth, seed)).to(DTYPE)


class ExactGaussianConsistency(nn.Module):
    r"""The exact consistency function of a single Gaussian N(mu, s^2 I) as a module f(x, t) (closed form,
    method.md §2): :math:`f(x,t) = \mu + (x-\mu)\sqrt{(s^2+\epsilon^2)/(s^2+t^2)}`."""

    def __init__(self, gaussian: Gaussian, eps: float = EPS):
        super().__init__()
        if not isinstance(gaussian, Gaussian):
            raise TypeError("ExactGaussianConsistency needs a cmlite.toys.Gaussian (a single component)")
        self.g, self.eps = gaussian, eps

    def forward(self, x: Tensor, t) -> Tensor:
        return self.g.consistency_function(x, t, eps=self.eps)


# ---------------------------------------------------------------- tangents
def tangent(f, x: Tensor, t: Tensor, direction: Tensor) -> tuple[Tensor, Tensor]:
    r"""(f(x, t), d/ds f(x + s\,direction, t + s) at s = 0), without gradient: one ``torch.func.jvp`` with
    tangent (direction, 1) (the library's :func:`cmlite.continuous.consistency_tangent`)."""
    return consistency_tangent(f, x, t, direction.detach())


def velocity(teacher, x_t: Tensor, t: Tensor, mutation: str | None = None) -> Tensor:
    r"""The PF-ODE velocity :math:`v = (x_t - D(x_t, t))/t` (:func:`cmlite.ode.pf_ode_drift`). Planted bug
    ``mutation="score_for_velocity"``: the score :math:`(D - x_t)/t^2` instead (a classic mix-up)."""
    with torch.no_grad():
        if mutation == "score_for_velocity":
            return (teacher(x_t, t) - x_t) / t[:, None] ** 2
        return pf_ode_drift(teacher, x_t, t)


def cd_tangent(f, teacher, x_t: Tensor, t: Tensor, mutation: str | None = None) -> tuple[Tensor, Tensor]:
    r"""(f_theta(x_t, t), g_CD) with :math:`g_{CD} = \partial_t f_\theta + (\partial_x f_\theta) v`. Planted bugs:
    ``"tangent_sign"`` (tangent (-v, 1): :math:`\partial_t f - J v`), ``"score_for_velocity"`` (see
    :func:`velocity`)."""
    v = velocity(teacher, x_t, t, mutation)
    return tangent(f, x_t, t, -v if mutation == "tangent_sign" else v)


def ct_tangent(f, x: Tensor, x_t: Tensor, t: Tensor, mutation: str | None = None) -> tuple[Tensor, Tensor]:
    r"""(f_theta(x_t, t), g_CT) with :math:`g_{CT} = \partial_t f_\theta + (\partial_x f_\theta)(x_t - x)/t`
    (x the clean sample). ``"tangent_sign"`` flips the x-part as in :func:`cd_tangent`."""
    z = (x_t - x) / t[:, None]
    return tangent(f, x_t, t, -z if mutation == "tangent_sign" else z)


def scaling_derivatives(t: Tensor, sigma_data: float = SIGMA_DATA, eps: float = EPS):
    r"""d/dt of the skip scalings (:func:`cmlite.parameterization.get_scalings`), by hand:

    .. math:: c_{skip}' = \frac{-2\sigma^2 (t-\epsilon)}{((t-\epsilon)^2+\sigma^2)^2},\quad
              c_{out}' = \frac{\sigma(\sigma^2 + \epsilon t)}{(\sigma^2+t^2)^{3/2}},\quad
              c_{in}' = \frac{-t}{(\sigma^2+t^2)^{3/2}},\quad c_{noise}' = \frac{1}{4t}.

    (c_out' from the quotient rule: :math:`\sigma/\sqrt{\sigma^2+t^2} - \sigma(t-\epsilon)t/(\sigma^2+t^2)^{3/2}`.)
    Returns the four tensors, each shaped like t."""
    s2 = sigma_data ** 2
    d_skip = -2 * s2 * (t - eps) / ((t - eps) ** 2 + s2) ** 2
    d_out = sigma_data * (s2 + eps * t) / (s2 + t ** 2) ** 1.5
    d_in = -t / (s2 + t ** 2) ** 1.5
    d_noise = 1 / (4 * t)
    return d_skip, d_out, d_in, d_noise


def skip_tangent_analytic(model: ConsistencyModel, x: Tensor, t: Tensor, direction: Tensor) -> Tensor:
    r"""The derivative of :math:`f_\theta = c_{skip} x + c_{out} F(c_{in} x, c_{noise})` along (direction, 1),
    written out with :func:`scaling_derivatives` and the network's own :meth:`TanhMLP.jacobian` (no autodiff):

    .. math:: \frac{d}{ds} f_\theta = c_{skip}' x + c_{skip} v + c_{out}' F
              + c_{out}\big[\partial_1 F\,(c_{in}' x + c_{in} v) + \partial_2 F\, c_{noise}'\big]

    with v = direction.
    """
    if model.parameterization != "skip" or not hasattr(model.net, "jacobian"):
        raise ValueError("skip_tangent_analytic needs a skip-parameterised ConsistencyModel around a network "
                         "with a .jacobian(x_in, c_noise) method (e.g. TanhMLP)")
    c_skip, c_out, c_in, c_noise = model.get_scalings(t)
    d_skip, d_out, d_in, d_noise = scaling_derivatives(t, model.sigma_data, model.eps)
    x_in = c_in[:, None] * x
    F = model.net(x_in, c_noise)
    Jx, Jc = model.net.jacobian(x_in, c_noise)
    dx_in = d_in[:, None] * x + c_in[:, None] * direction
    dF = (Jx @ dx_in[:, :, None])[..., 0] + Jc * d_noise[:, None]
    return d_skip[:, None] * x + c_skip[:, None] * direction + d_out[:, None] * F + c_out[:, None] * dF


def fd_tangent(f, x: Tensor, t: Tensor, direction: Tensor, rel_step: float = 1e-5) -> Tensor:
    r"""Central finite difference :math:`(f(x + h v, t + h) - f(x - h v, t - h))/(2h)` with h = rel_step * t per
    point (error :math:`O(h^2) + O(10^{-16}/h)`); t - h must stay >= eps."""
    h = rel_step * t
    return (f(x + h[:, None] * direction, t + h) - f(x - h[:, None] * direction, t - h)) / (2 * h[:, None])


def x_jacobian(f, x_t: Tensor, t: Tensor) -> Tensor:
    r""":math:`J = \partial_x f(x_t, t)` of shape (B, d, d), one jvp per coordinate direction (time tangent 0)."""
    cols = []
    for j in range(x_t.shape[1]):
        e = torch.zeros_like(x_t)
        e[:, j] = 1
        cols.append(torch.func.jvp(lambda xx: f(xx, t), (x_t,), (e,))[1])
    return torch.stack(cols, 2)


def posterior_covariance(mixture: GaussianMixture, x_t: Tensor, t: Tensor, mutation: str | None = None) -> Tensor:
    r"""Cov[x | x_t] for x ~ :math:`\sum_k w_k N(\mu_k, s_k^2 I)` and x_t = x + t z, shape (B, d, d).

    Derivation. Given the component k, Bayes' rule for two Gaussians,
    :math:`p(x \mid x_t, k) \propto N(x; \mu_k, s_k^2 I)\,N(x_t; x, t^2 I)`, has precision
    :math:`1/s_k^2 + 1/t^2` and mean

    .. math:: m_k = \mu_k + \frac{s_k^2}{s_k^2 + t^2}(x_t - \mu_k),\qquad c_k = \frac{s_k^2 t^2}{s_k^2 + t^2}
              \ \text{(variance per coordinate)};

    the component is k with probability :math:`r_k(x_t) \propto w_k N(x_t; \mu_k, (s_k^2+t^2) I)`. So
    x | x_t is the mixture :math:`\sum_k r_k N(m_k, c_k I)`, and by the law of total covariance

    .. math:: \mathrm{Cov}[x \mid x_t] = \sum_k r_k c_k\, I + \sum_k r_k\, m_k m_k^\top - D D^\top,
              \qquad D = \sum_k r_k m_k = E[x \mid x_t]

    (within-component spread plus the spread of the component means). Tweedie's second-order identity
    :math:`\mathrm{Cov}[x \mid x_t] = t^2\, \partial D/\partial x_t` gives an independent check (tests).
    Planted bug ``mutation="within_only"``: the within-component term only (the between-component term
    dropped; right for a single Gaussian, wrong for a mixture)."""
    lc, v = mixture._log_components(x_t, t)                      # (B, K): log w_k N(x_t; mu_k, v_k I), v_k
    r = torch.softmax(lc, dim=1)
    s2 = mixture.stds[None, :] ** 2
    m = mixture.means[None] + (s2 / v)[..., None] * (x_t.double()[:, None, :] - mixture.means[None])  # (B, K, d)
    c = s2 * t.double()[:, None] ** 2 / v                        # (B, K)
    d = x_t.shape[1]
    eye = torch.eye(d, dtype=DTYPE)
    within = (r * c).sum(1)[:, None, None] * eye
    if mutation == "within_only":
        return within
    D = (r[..., None] * m).sum(1)
    between = torch.einsum("bk,bki,bkj->bij", r, m, m) - D[:, :, None] * D[:, None, :]
    return within + between


# ---------------------------------------------------------------- discrete losses, summed exactly over n
def discrete_sums(model, teacher, x: Tensor, z: Tensor, N: int, weighting: str = "uniform",
                  params: Sequence[Tensor] | None = None) -> dict:
    r"""For every sample (x_i, z_i), the discrete losses summed exactly over all N - 1 intervals, scaled to
    their limits, computed with the library's CD (Euler, exact ``teacher``) and CT losses:

    * ``cd_l2`` (B,): :math:`(N-1)^2 \mathcal L^N_{CD}` per sample (squared L2; Theorem 3; the value is the same
      for :math:`\theta^- = \theta` and :math:`\mathrm{sg}(\theta)`);
    * ``cd_l1`` (B,): :math:`(N-1) \mathcal L^N_{CD}` with the L1 distance (Theorem 4);
    * ``ct_l2`` (B,): :math:`(N-1)^2 \mathcal L^N_{CT}(\theta, \theta)` per sample;
    * ``grad_cd``, ``grad_ct`` (P,): :math:`(N-1)\nabla_\theta \mathcal L^N` with the target under stop-gradient
      (Theorems 5, 6), averaged over the samples (only if ``params`` is given).
    """
    B, d = x.shape
    t = karras_boundaries(N, dtype=x.dtype)
    n = torch.arange(N - 1).repeat(B)
    xr, zr = x.repeat_interleave(N - 1, 0), z.repeat_interleave(N - 1, 0)
    out = {}
    for name, loss, dist in (("cd_l2", ConsistencyDistillationLoss(teacher, solver="euler", distance="l2",
                                                                    weighting=weighting), "l2"),
                             ("ct_l2", ConsistencyTrainingLoss(distance="l2", weighting=weighting), "l2"),
                             ("cd_l1", ConsistencyDistillationLoss(teacher, solver="euler", distance="l1",
                                                                   weighting=weighting), "l1")):
        grad = params is not None and dist == "l2"
        with torch.set_grad_enabled(grad):
            per = (loss.at(model, xr, zr, n, t) * d).reshape(B, N - 1).sum(1)   # sum_n lambda(t_n) d(., .)
        scale = N - 1  # (N-1)^2 L^N = (N-1) sum_n for L2 values; (N-1) L^N = sum_n for L1 and gradients
        out[name] = (per.detach() * scale) if dist == "l2" else per.detach()
        if grad:
            out["grad_" + name[:2]] = _flat_grad(per.mean(), params)
    return out


def _flat_grad(value: Tensor, params, retain_graph: bool = False) -> Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params, retain_graph=retain_graph)])


# ---------------------------------------------------------------- limits, per sample, by quadrature in u
def limit_pieces(model, teacher, mixture: GaussianMixture, x: Tensor, z: Tensor, u: Tensor, w: Tensor,
                 weighting: str = "uniform", mutation: str | None = None, params: Sequence[Tensor] | None = None,
                 direction: Tensor | None = None) -> dict:
    r"""The continuous-time limits on the samples (x_i, z_i), integrated over u with the rule (u, w).

    At every node, :math:`t = \tau(u)`, :math:`x_t = x_i + t z_i` (so that, over the samples, x_t ~ p_t). Returns
    per-sample integrals (shape (B,)):

    * ``cd_l2``: :math:`\int_0^1 \lambda\tau'^2 \|g_{CD}\|^2 du` (Theorem 3); ``cd_l1``:
      :math:`\int \lambda\tau' \|g_{CD}\|_1 du` (Theorem 4);
    * ``ct_l2``: :math:`\int \lambda\tau'^2\|g_{CT}\|^2 du` (CT with :math:`\theta^-=\theta`);
    * ``ct_bias``: :math:`\int \lambda\tau'^2 \operatorname{tr}(J\,\mathrm{Cov}[x|x_t]\,J^\top)/t^2 du` and
      ``ct_identity``: ``ct_l2 - cd_l2 - ct_bias`` (mean zero over samples: the bias formula);

    and, with ``params``, the limit gradients ``grad_cd``, ``grad_ct`` (P,): the gradients of the
    pseudo-objectives :math:`2E[\lambda\tau' f_\theta^\top \mathrm{sg}(g)]` (Theorems 5, 6), averaged over samples,
    and ``lib_cd``, ``lib_ct``: the same from the library's training losses
    :class:`cmlite.continuous.ContinuousCDLoss` / :class:`~cmlite.continuous.ContinuousCTLoss` evaluated at the
    quadrature nodes (they must agree to round-off: the library trains on exactly these limits);
    with ``direction`` (P,), ``dir_cd``, ``dir_ct`` (B,): each sample's gradient projected on it (one forward-mode
    derivative over theta). ``integrand``: the sample means of the integrands at every node (for plots).

    Planted bugs (``mutation``): ``"tangent_sign"``, ``"score_for_velocity"`` (in g_CD and, for the first, g_CT),
    ``"no_tau_prime"`` (one factor tau' dropped from every limit), ``"within_only"`` (see
    :func:`posterior_covariance`), ``"no_bias"`` (the bias term dropped: the naive claim that CT without
    stop-gradient has the CD limit).
    """
    if mutation is not None and mutation not in MUTATIONS:
        raise ValueError(f"unknown mutation {mutation!r}; choose one of {MUTATIONS} or None")
    B, d = x.shape
    Q = u.numel()
    t = tau(u).repeat(B)                                          # (B*Q,), sample-major
    tp = tau_prime(u).repeat(B)
    if mutation == "no_tau_prime":
        tp = torch.ones_like(tp)
    lam = _lam(weighting, t)
    wq = w.repeat(B)
    xr, zr = x.repeat_interleave(Q, 0), z.repeat_interleave(Q, 0)
    x_t = xr + t[:, None] * zr
    with torch.no_grad():
        _, g_cd = cd_tangent(model, teacher, x_t, t, mutation)
        _, g_ct = ct_tangent(model, xr, x_t, t, mutation if mutation == "tangent_sign" else None)
        J = x_jacobian(model, x_t, t)
        C = posterior_covariance(mixture, x_t, t, mutation)
    w2 = wq * lam * tp ** 2
    per = lambda v: (v.reshape(B, Q)).sum(1)                      # noqa: E731  (sum over the nodes)
    tr = torch.einsum("bij,bjk,bik->b", J, C, J) / t ** 2         # tr(J Cov[z|x_t] J^T), Cov[z|x_t] = Cov[x|x_t]/t^2
    if mutation == "no_bias":
        tr = torch.zeros_like(tr)
    cd2, ct2 = (g_cd ** 2).sum(1), (g_ct ** 2).sum(1)
    out = {"cd_l2": per(w2 * cd2), "cd_l1": per(wq * lam * tp * g_cd.abs().sum(1)), "ct_l2": per(w2 * ct2),
           "ct_bias": per(w2 * tr)}
    out["ct_identity"] = out["ct_l2"] - out["cd_l2"] - out["ct_bias"]
    wt = lambda v: (v.reshape(B, Q)).mean(0)                      # noqa: E731  (sample mean at each node)
    out["integrand"] = {"cd_l2": wt(lam * tp ** 2 * cd2), "cd_l1": wt(lam * tp * g_cd.abs().sum(1)),
                        "ct_l2": wt(lam * tp ** 2 * ct2), "ct_bias": wt(lam * tp ** 2 * tr)}
    if params is not None:
        with torch.enable_grad():
            f = model(x_t, t)
            c = 2 * wq * lam * tp
            out["grad_cd"] = _flat_grad((c[:, None] * f * g_cd).sum() / B, params, retain_graph=True)
            out["grad_ct"] = _flat_grad((c[:, None] * f * g_ct).sum() / B, params)
            # the library's continuous-time losses at the same nodes, weighted by the quadrature: their
            # per-sample pseudo-objective is 2 w f.sg(g)/d with w = lambda(t) tau'(u), so the same gradient
            for key, loss in (("lib_cd", ContinuousCDLoss(teacher, weighting=weighting)),
                              ("lib_ct", ContinuousCTLoss(weighting=weighting))):
                val = loss.at(model, xr, zr, t, wq * loss.weight(t, u.repeat(B))) * d
                out[key] = _flat_grad(val.sum() / B, params)
    if direction is not None:
        names = [k for k, p in model.named_parameters() if p.requires_grad]
        shapes = [p.shape for k, p in model.named_parameters() if p.requires_grad]
        tangents, i = {}, 0
        for k, s in zip(names, shapes):
            m = int(np.prod(s)) if len(s) else 1
            tangents[k] = direction[i:i + m].reshape(s)
            i += m
        prim = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
        with torch.no_grad():
            _, df = torch.func.jvp(lambda p: torch.func.functional_call(model, p, (x_t, t)), (prim,), (tangents,))
        c = 2 * wq * lam * tp
        out["dir_cd"] = per(c * (df * g_cd).sum(1))
        out["dir_ct"] = per(c * (df * g_ct).sum(1))
    return out


# ---------------------------------------------------------------- one toy
def _z(v: Tensor) -> float:
    # mean in standard errors over i.i.d. samples
    return float(v.mean() / (v.std() / math.sqrt(v.numel())))


def _rows(Ns, vals, lims, key_gap="gap"):
    out = []
    for N, a in zip(Ns, vals):
        out.append({"N": N, "k": 1 / (N - 1), "dt": max_gap(karras_boundaries(N)), "discrete": a, "limit": lims,
                    key_gap: a - lims})
    return out


def _order(Ns, gaps, fit_range) -> tuple[float, list]:
    k = [1 / (N - 1) for N in Ns]
    fit = [(kk, abs(g)) for N, kk, g in zip(Ns, k, gaps) if fit_range[0] <= N <= fit_range[1]]
    slope = fit_slope([a for a, _ in fit], [b for _, b in fit])[0] if len(fit) >= 2 else float("nan")
    return slope, local_slopes(k, [abs(g) for g in gaps])


def toy_limits(toy="mixture", Ns: Sequence[int] = DEFAULT_NS, B: int = 256, seed: int = 0, model=None,
               weighting: str = "uniform", panels: int = 8, nodes: int = 16, mutation: str | None = None,
               fit_range: tuple[int, int] | None = None, B_direction: int = 64, cache: dict | None = None) -> dict:
    r"""Theorems 3-6 and the CT bias on one toy (see :func:`continuous_report` for the returned structure).

    ``model``: f_theta (default :func:`make_model` with ``seed``). Samples: x ~ p_data, z ~ N(0, I) from a
    generator seeded ``seed + 1``; the direction of ``cd_ct_gap_z`` is Theorem 5's limit gradient on
    ``B_direction`` independent samples (seed ``seed + 2``), so that it does not depend on the tested samples.
    ``cache``: a dict in which the discrete sums (the expensive part, which no ``mutation`` changes) are kept
    and reused between calls with the same toy, N, B, seed and weighting (default model only)."""
    T = get_toy(toy)
    g = T.mixture
    Ns = sorted(int(N) for N in Ns)
    fit_range = fit_range or (Ns[0], Ns[-1])
    default_model = model is None
    model = make_model(g.dim, seed=seed) if model is None else model
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(seed + 1)
    x = g.sample(B, generator=gen, dtype=DTYPE)
    z = torch.randn(B, g.dim, generator=gen, dtype=DTYPE)
    u, w = gauss_legendre(panels, nodes)
    u2, w2 = gauss_legendre(panels, nodes // 2)
    gen_d = torch.Generator().manual_seed(seed + 2)
    xd = g.sample(B_direction, generator=gen_d, dtype=DTYPE)
    zd = torch.randn(B_direction, g.dim, generator=gen_d, dtype=DTYPE)
    direction = limit_pieces(model, g, g, xd, zd, u, w, weighting, params=params)["grad_cd"] if params else None
    lim = limit_pieces(model, g, g, x, z, u, w, weighting, mutation, params=params or None, direction=direction)
    coarse = limit_pieces(model, g, g, x, z, u2, w2, weighting, mutation)
    key = (T.name, tuple(Ns), B, seed, weighting) if cache is not None and default_model else None
    if key is not None and key in cache:
        disc = cache[key]
    else:
        disc = [discrete_sums(model, g, x, z, N, weighting, params or None) for N in Ns]
        if key is not None:
            cache[key] = disc

    res = {"toy": T.name, "description": T.description.split("; ")[0], "samples": B, "seed": seed, "Ns": Ns,
           "fit_range": list(fit_range)}
    for key, th in (("cd_l2", "theorem3"), ("cd_l1", "theorem4"), ("ct_l2", "ct_same_target")):
        L = float(lim[key].mean())
        vals = [float(dd[key].mean()) for dd in disc]
        rows = _rows(Ns, vals, L)
        for r in rows:
            r["rel_gap"] = abs(r["gap"]) / abs(L) if L else None
        slope, loc = _order(Ns, [r["gap"] for r in rows], fit_range)
        for r, s in zip(rows, loc):
            r["local_slope"] = s
        res[th] = {"expected_order": ORDERS[th], "slope": slope, "limit": L,
                   "limit_se": float(lim[key].std() / math.sqrt(B)),
                   "quadrature_error": abs(L - float(coarse[key].mean())), "rows": rows}
    if params:
        for key, th in (("grad_cd", "theorem5"), ("grad_ct", "theorem6")):
            G = lim[key]
            gaps = [float((dd[key] - G).norm() / G.norm()) for dd in disc]
            slope, loc = _order(Ns, gaps, fit_range)
            lib = lim["lib_" + key[5:]]
            res[th] = {"expected_order": 1, "grad_slope": slope, "limit_grad_norm": float(G.norm()),
                       "library_loss_rel_diff": float((lib - G).norm() / G.norm()),
                       "rows": [{"N": N, "k": 1 / (N - 1), "dt": max_gap(karras_boundaries(N)), "rel_grad_gap": gp,
                                 "local_slope": s} for N, gp, s in zip(Ns, gaps, loc)]}
        diff = lim["dir_cd"] - lim["dir_ct"]
        res["theorem6"]["cd_ct_gap_z"] = _z(diff)
        res["theorem6"]["cd_ct_rel_diff"] = float((lim["grad_cd"] - lim["grad_ct"]).norm() / lim["grad_cd"].norm())
        res["theorem6"]["direction"] = (f"Theorem 5's limit gradient on {B_direction} independent samples "
                                        f"(seed {seed + 2})")
    ct = res["ct_same_target"]
    ct["cd_limit"] = res["theorem3"]["limit"]
    ct["bias"] = float(lim["ct_bias"].mean())
    ct["bias_se"] = float(lim["ct_bias"].std() / math.sqrt(B))
    ct["identity_z"] = _z(lim["ct_identity"])
    res["profile"] = {"u": u.tolist(), "t": tau(u).tolist(), "tau_prime": tau_prime(u).tolist(),
                      **{k: v.tolist() for k, v in lim["integrand"].items()}}
    return res


def exact_gaussian_check(B: int = 256, seed: int = 0, weighting: str = "uniform", panels: int = 8,
                         nodes: int = 16, mutation: str | None = None) -> dict:
    r"""Sanity at the Gaussian's exact consistency function :math:`f^*` (the 'gaussian' toy, s = 0.5):

    * the CD tangent vanishes, :math:`g_{CD} = (x-\mu) r' + r v = 0` with :math:`r = \sqrt{(s^2+\epsilon^2)/(s^2+t^2)}`,
      :math:`r' = -r t/(s^2+t^2)`, :math:`v = (x-\mu) t/(s^2+t^2)`: reports ``max_g_cd`` against
      ``scale`` = max :math:`\|\partial_t f^*\|` (the two terms that cancel), and :math:`\mathcal L^\infty_{CD}`;
    * the CT bias without stop-gradient is positive there: :math:`J = rI`,
      :math:`\mathrm{Cov}[x|x_t] = s^2t^2/(s^2+t^2)\,I`, so the integrand is
      :math:`\lambda\tau'^2\, d\, s^2(s^2+\epsilon^2)/(s^2+t^2)^2` (deterministic: ``bias_closed_form``), against
      the per-sample CT limit :math:`\int\lambda\tau'^2\|g_{CT}\|^2du` averaged over the samples (``ct_limit``,
      ``ct_limit_z`` = their difference in standard errors).
    """
    g = get_toy("gaussian").mixture
    f = ExactGaussianConsistency(g)
    gen = torch.Generator().manual_seed(seed + 1)
    x = g.sample(B, generator=gen, dtype=DTYPE)
    z = torch.randn(B, g.dim, generator=gen, dtype=DTYPE)
    u, w = gauss_legendre(panels, nodes)
    lim = limit_pieces(f, g, g, x, z, u, w, weighting, mutation)
    Q = u.numel()
    t = tau(u).repeat(B)
    x_t = x.repeat_interleave(Q, 0) + t[:, None] * z.repeat_interleave(Q, 0)
    with torch.no_grad():
        _, g_cd = cd_tangent(f, g, x_t, t, mutation)
        _, dtf = tangent(f, x_t, t, torch.zeros_like(x_t))
    s2, e = float(g.stds[0]) ** 2, EPS
    tu = tau(u)
    closed = float((w * _lam(weighting, tu) * tau_prime(u) ** 2 * g.dim * s2 * (s2 + e ** 2)
                    / (s2 + tu ** 2) ** 2).sum())
    ct = lim["ct_l2"]
    return {"max_g_cd": float(g_cd.norm(dim=1).max()), "scale": float(dtf.norm(dim=1).max()),
            "L_cd_inf": float(lim["cd_l2"].mean()), "bias": float(lim["ct_bias"].mean()),
            "bias_closed_form": closed, "ct_limit": float(ct.mean()), "ct_limit_se": float(ct.std() / math.sqrt(B)),
            "ct_limit_z": float((ct.mean() - closed) / (ct.std() / math.sqrt(B))), "samples": B}


def tangent_check(toy="mixture", B: int = 64, seed: int = 0, rel_step: float = 1e-5,
                  mutation: str | None = None) -> dict:
    r"""The jvp tangent g_CD against the skip derivative written out (:func:`skip_tangent_analytic`) and against
    central finite differences (:func:`fd_tangent`), at B points x_t = x + t z with t = tau(u), u ~ U[0.02, 1)
    (t - h >= eps for the difference). Returns the max relative errors ``analytic_rel_err`` and ``fd_rel_err``
    (max over points of ||difference|| / max ||g||)."""
    g = get_toy(toy).mixture
    model = make_model(g.dim, seed=seed)
    gen = torch.Generator().manual_seed(seed + 3)
    x = g.sample(B, generator=gen, dtype=DTYPE)
    z = torch.randn(B, g.dim, generator=gen, dtype=DTYPE)
    t = tau(0.02 + 0.98 * torch.rand(B, generator=gen, dtype=DTYPE))
    t = t.clamp(max=T_MAX / (1 + 2 * rel_step))
    x_t = x + t[:, None] * z
    with torch.no_grad():
        _, g_jvp = cd_tangent(model, g, x_t, t, mutation)
        v = velocity(g, x_t, t)
        g_an = skip_tangent_analytic(model, x_t, t, v)
        g_fd = fd_tangent(model, x_t, t, v, rel_step)
    scale = float(g_an.norm(dim=1).max())
    return {"analytic_rel_err": float((g_jvp - g_an).norm(dim=1).max()) / scale,
            "fd_rel_err": float((g_jvp - g_fd).norm(dim=1).max()) / scale, "points": B, "rel_step": rel_step}


def tangent_field(toy="mixture", t: float = 1.0, model=None, lim: float = 2.0, n: int = 21, seed: int = 0) -> dict:
    r"""The CD tangent field :math:`g_{CD}(x, t) = \partial_t f_\theta + (\partial_x f_\theta) v` on an n x n grid
    of x in [-lim, lim]^2 at one time t (for a quiver plot), with its two parts and the PF-ODE velocity.

    ``model``: f_theta (default :func:`make_model` with ``seed``); ``"exact"`` on the 'gaussian' toy uses the
    closed-form consistency function, whose field is zero. Returns a dict of nested lists: ``x`` (n, n, 2) grid
    points (``x[i][j] = (xs[j], xs[i])``), ``g`` (n, n, 2) the tangent, ``dt_f`` (n, n, 2) the time derivative
    :math:`\partial_t f_\theta`, ``J_v`` (n, n, 2) the transport term :math:`(\partial_x f_\theta) v`, ``v`` (n, n, 2)
    the velocity, ``norm`` (n, n) ||g||, and ``t``."""
    T = get_toy(toy)
    g = T.mixture
    if g.dim != 2:
        raise ValueError(f"tangent_field draws 2D fields; the toy has dimension {g.dim}")
    if model == "exact":
        if not T.closed_form:
            raise ValueError("model='exact' needs the closed-form 'gaussian' toy")
        model = ExactGaussianConsistency(g)
    model = make_model(2, seed=seed) if model is None else model
    xs = torch.linspace(-lim, lim, n, dtype=DTYPE)
    X = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
    tt = torch.full((X.shape[0],), float(t), dtype=DTYPE)
    with torch.no_grad():
        v = velocity(g, X, tt)
        _, gg = tangent(model, X, tt, v)
        _, dtf = tangent(model, X, tt, torch.zeros_like(X))
    sh = lambda a: a.reshape(n, n, -1).tolist()                   # noqa: E731
    return {"t": float(t), "x": sh(X), "g": sh(gg), "dt_f": sh(dtf), "J_v": sh(gg - dtf), "v": sh(v),
            "norm": gg.norm(dim=1).reshape(n, n).tolist()}


# ---------------------------------------------------------------- the report
def continuous_report(toys: Sequence[str] = ("gaussian", "mixture"), Ns: Sequence[int] = DEFAULT_NS, B: int = 256,
                      seed: int = 0, weighting: str = "uniform", panels: int = 8, nodes: int = 16,
                      mutation: str | None = None, primary: str = "mixture",
                      fit_range: tuple[int, int] | None = None) -> dict:
    r"""Theorems 3-6 and the stop-gradient-free CT bias, on each toy, as plain dicts (JSON-ready).

    Arguments: ``toys`` (names for :func:`cmlite.theory.get_toy`), ``Ns`` (grid sizes; ``fit_range`` = (N_lo,
    N_hi) of the order fits, default all), ``B`` samples (x, z) per toy shared by every N, ``weighting``
    (lambda, default uniform), the u-quadrature (``panels`` x ``nodes`` Gauss-Legendre; a rule with half the
    nodes gives the quadrature-error estimate), ``mutation`` (a planted bug, see :func:`limit_pieces`), the
    ``primary`` toy (whose numbers are the headline).

    Returns::

        {"setting": {...},                          # grid, eps, T, rho, N list, samples, weighting, model, quadrature
         "theorem3": {"slope", "expected_order", "toys": {toy: slope}},        # headline = primary toy
         "theorem4": {"slope", "expected_order", "toys": {toy: slope}},
         "theorem5": {"grad_slope", "expected_order", "toys": {toy: grad_slope}},
         "theorem6": {"grad_slope", "cd_ct_gap_z", "expected_order", "toys": {toy: grad_slope},
                      "cd_ct_gap_z_toys": {toy: z}},
         "ct_same_target": {"slope", "expected_order", "toys": {toy: slope}, "bias": primary bias,
                            "identity_z": primary z, "identity_z_toys": {toy: z}},
         "exact_gaussian": {...},                   # exact_gaussian_check(): g_CD = 0, L_CD^inf = 0, CT bias > 0
         "tangent_check": {toy: {...}},             # tangent_check(): jvp vs written-out vs finite differences
         "per_toy": {toy: {                          # the full tables
             "theorem3" | "theorem4" | "ct_same_target": {
                 "slope", "expected_order", "limit" (the per-sample limits averaged), "limit_se" (its Monte Carlo
                 standard error: the uncertainty of E over (x, z), common to every N), "quadrature_error" (|limit
                 - the same with half the nodes per panel|: a conservative estimate of the rule's error),
                 "rows": [{"N", "k" = 1/(N-1), "dt" = max gap, "discrete" (scaled loss averaged over the samples),
                           "limit", "gap" = discrete - limit, "rel_gap" = |gap|/|limit|, "local_slope"}]},
             "ct_same_target" also has "cd_limit" (= L_CD^inf), "bias", "bias_se" and "identity_z" (the mean of
                 ct - cd - bias over samples in standard errors: 0 in expectation),
             "theorem5" | "theorem6": {"grad_slope", "limit_grad_norm", "library_loss_rel_diff" (the gradient of
                 the library's ContinuousCDLoss / ContinuousCTLoss at the same nodes against the limit: round-off),
                 "rows": [{"N", "k", "dt", "rel_grad_gap" = |(N-1) grad L^N - grad L^inf| / |grad L^inf|,
                           "local_slope"}]},
             "theorem6" also has "cd_ct_gap_z" (CD-minus-CT limit gradient, projected on "direction", in standard
                 errors over samples) and "cd_ct_rel_diff" (|mean grad_CD - mean grad_CT| / |mean grad_CD|:
                 Monte Carlo noise around 0),
             "profile": {"u", "t", "tau_prime" (at the quadrature nodes), and the sample means of the integrands
                 "cd_l2" = lambda tau'^2 |g_CD|^2, "cd_l1" = lambda tau' |g_CD|_1, "ct_l2" = lambda tau'^2 |g_CT|^2,
                 "ct_bias" = lambda tau'^2 tr(J Cov J^T)/t^2}}}}

    Slopes are least-squares orders p of |gap| ~ C k^p, k = 1/(N-1) (:func:`cmlite.theory.fit_slope`).
    For the tangent field itself see :func:`tangent_field`.
    """
    per_toy = {name: toy_limits(name, Ns, B, seed, None, weighting, panels, nodes, mutation, fit_range)
               for name in toys}
    if primary not in per_toy:
        primary = next(iter(per_toy))
    P = per_toy[primary]

    def collect(th, key):
        return {name: r[th][key] for name, r in per_toy.items()}

    out = {"setting": {"grid": "t_n = tau((n-1)/(N-1)), tau(u) = (eps^(1/rho) + u (T^(1/rho) - eps^(1/rho)))^rho",
                       "eps": EPS, "T": T_MAX, "rho": RHO, "Ns": sorted(Ns), "samples": B, "seed": seed,
                       "weighting": weighting, "primary_toy": primary, "mutation": mutation,
                       "model": "skip parameterisation (sigma_data 0.5, eps-shifted) around a fixed tanh MLP "
                                "(2 layers of 32), float64",
                       "teacher": "exact denoiser of the toy (CD: one Euler step)",
                       "distances": "squared L2 ||a-b||^2 (Theorems 3, 5, 6, CT) and L1 ||a-b||_1 (Theorem 4)",
                       "quadrature": f"composite Gauss-Legendre in u: {panels} panels x {nodes} nodes, on the same "
                                     "samples as the discrete sums"},
           "theorem3": {"slope": P["theorem3"]["slope"], "expected_order": 1, "toys": collect("theorem3", "slope")},
           "theorem4": {"slope": P["theorem4"]["slope"], "expected_order": 1, "toys": collect("theorem4", "slope")},
           "theorem5": {"grad_slope": P["theorem5"]["grad_slope"], "expected_order": 1,
                        "toys": collect("theorem5", "grad_slope")},
           "theorem6": {"grad_slope": P["theorem6"]["grad_slope"], "cd_ct_gap_z": P["theorem6"]["cd_ct_gap_z"],
                        "expected_order": 1, "toys": collect("theorem6", "grad_slope"),
                        "cd_ct_gap_z_toys": collect("theorem6", "cd_ct_gap_z")},
           "ct_same_target": {"slope": P["ct_same_target"]["slope"], "expected_order": 2,
                              "toys": collect("ct_same_target", "slope"), "bias": P["ct_same_target"]["bias"],
                              "identity_z": P["ct_same_target"]["identity_z"],
                              "identity_z_toys": collect("ct_same_target", "identity_z")},
           "exact_gaussian": exact_gaussian_check(B, seed, weighting, panels, nodes, mutation),
           "tangent_check": {name: tangent_check(name, seed=seed) for name in toys},
           "per_toy": per_toy}
    return out
