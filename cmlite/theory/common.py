r"""Shared pieces of the theory checks: the analytic toys, the test sets, exact reference trajectories,
slope fits.

Everything here works in float64.

**Test sets made of exact trajectories.** A consistency function is constant along PF-ODE trajectories,
so the cleanest test set is a bundle of M exact trajectories :math:`x_j(t)`, fixed by their end points
:math:`x_j(\epsilon)`. At every grid time :math:`t_n` the test points are :math:`x_j(t_n)` and the exact
value of the consistency function there is known without solving anything backwards:

.. math:: f(x_j(t_n), t_n) = x_j(\epsilon).

The trajectories are computed *forwards* (from :math:`\epsilon` up to T), where the flow is contracting in
the directions that matter, so the reference is accurate even where f itself is steep. Two kinds of end
points:

* ``"typical"``: :math:`x_j(\epsilon) \sim p_\epsilon` (seeded). Then :math:`x_j(t_n) \sim p_{t_n}` exactly
  (the PF ODE transports the marginals), so the test points are typical points of every :math:`p_{t_n}`.
* ``"segment"``: :math:`x_j(\epsilon)` evenly spaced on the segment between the first two component means
  (the low-density bridge between two modes). Their trajectories run close to the separatrix, where the
  consistency function of a well-separated mixture has a huge Lipschitz constant: a stress test.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..ode import rk4_step_logt
from ..schedules import EPS
from ..toys import Gaussian, GaussianMixture

DTYPE = torch.float64


# ---------------------------------------------------------------- toys
@dataclass
class Toy:
    """An analytic toy: a Gaussian mixture (its exact denoiser is the teacher) and a description."""
    name: str
    mixture: GaussianMixture
    description: str

    @property
    def closed_form(self) -> bool:
        """True for a single Gaussian, whose consistency function is closed-form."""
        return isinstance(self.mixture, Gaussian)


def get_toy(toy) -> Toy:
    r"""A :class:`Toy` by name, or wrap a :class:`~cmlite.toys.GaussianMixture` (or pass a Toy through).

    Names:

    * ``"gaussian"``: N(0, 0.5^2 I) in 2D (s = sigma_data); closed-form consistency function
      :math:`f(x,t) = \mu + (x - \mu)\sqrt{(s^2+\epsilon^2)/(s^2+t^2)}`.
    * ``"mixture"``: 4 equal components N(mu_k, 0.25^2 I), mu_k = (cos k pi/2, sin k pi/2) on the unit
      circle (moderate separation: neighbouring means sqrt(2) = 5.7 s apart).
    * ``"narrow"``: 2 equal components N((+-1, 0), 0.2^2 I) (separation 10 s). Near the separatrix x_1 = 0
      the consistency function f(., t) stretches distances by about
      :math:`\exp(\mu^2/2(s^2+\epsilon^2) - \mu^2/2(s^2+t^2))\sqrt{(s^2+\epsilon^2)/(s^2+t^2)}`
      (linearisation of the PF ODE at x_1 = 0, |mu| = 1): ~3e4 at its peak near t = 1 (the measured lower
      estimate on the 'segment' test set is 2.9e4), so the asymptotic regime of Theorem 1 starts late there.
    """
    if isinstance(toy, Toy):
        return toy
    if isinstance(toy, GaussianMixture):
        kind = "Gaussian" if isinstance(toy, Gaussian) else "Gaussian mixture"
        return Toy("custom", toy, f"custom {kind} with {toy.means.shape[0]} component(s) in {toy.dim}D")
    if toy == "gaussian":
        return Toy("gaussian", Gaussian([0.0, 0.0], 0.5),
                   "single Gaussian N(0, 0.5^2 I) in 2D; exact consistency function in closed form")
    if toy == "mixture":
        a = torch.arange(4, dtype=DTYPE) * math.pi / 2
        return Toy("mixture", GaussianMixture(torch.stack([a.cos(), a.sin()], 1), 0.25),
                   "4 equal Gaussians N(mu_k, 0.25^2 I), mu_k = (cos k pi/2, sin k pi/2) (2D); "
                   "reference: RK4 in log t on the exact denoiser")
    if toy == "narrow":
        return Toy("narrow", GaussianMixture([[-1.0, 0.0], [1.0, 0.0]], 0.2),
                   "2 equal Gaussians N((+-1, 0), 0.2^2 I) (2D), well separated (10 s); "
                   "reference: RK4 in log t on the exact denoiser")
    raise ValueError(f"unknown toy {toy!r}; choose 'gaussian', 'mixture', 'narrow' or pass a GaussianMixture")


# ---------------------------------------------------------------- end points of the test trajectories
def end_points(toy, M: int = 32, kind: str = "typical", seed: int = 0, eps: float = EPS) -> Tensor:
    """The M end points x_j(eps) of the test trajectories (see the module docstring), float64 (M, d)."""
    toy = get_toy(toy)
    g = toy.mixture
    if kind == "typical":
        return g.sample(M, t=eps, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    if kind == "segment":
        if g.means.shape[0] < 2:
            raise ValueError("the 'segment' test set needs at least two mixture components")
        u = torch.linspace(0, 1, M, dtype=DTYPE)[:, None]
        return (1 - u) * g.means[0] + u * g.means[1]
    raise ValueError(f"unknown test set {kind!r}; choose 'typical' or 'segment'")


def describe_test_set(kind: str, M: int, seed: int) -> str:
    if kind == "typical":
        return (f"M={M} exact PF-ODE trajectories x_j(t) with end points x_j(eps) ~ p_eps (torch seed {seed}); "
                "at grid time t_n the test points are x_j(t_n) (distributed as p_{t_n}) and the exact "
                "consistency value is x_j(eps)")
    return (f"M={M} exact PF-ODE trajectories whose end points x_j(eps) are evenly spaced on the segment "
            "between the first two component means (the bridge between two modes: stress test); "
            "test points x_j(t_n), exact value x_j(eps)")


# ---------------------------------------------------------------- exact trajectories
def _rk4_through(D, x0: Tensor, times: list[float], h_max: float, refine: int = 1) -> Tensor:
    # classical RK4 in s = ln t (the library's reference step) through the given times, in order
    # (ascending or descending), with m = ceil(|interval| / h_max) * refine equal steps per interval in ln t
    # (refine = 2 halves every step, also on intervals shorter than h_max); returns the states at all times
    out, x = [x0], x0
    for a, b in zip(times[:-1], times[1:]):
        sa, sb = math.log(a), math.log(b)
        m = max(1, math.ceil(abs(sb - sa) / h_max)) * refine
        for i in range(m):
            x = rk4_step_logt(D, x, sa + (sb - sa) * i / m, sa + (sb - sa) * (i + 1) / m)
        out.append(x)
    return torch.stack(out)


def trajectories(toy, x_eps: Tensor, times, h_max: float = 0.01, eps: float = EPS) -> tuple[Tensor, float]:
    r"""Exact PF-ODE trajectories through the end points ``x_eps`` (M, d), at the ascending ``times``
    (all >= eps). Returns ``(X, err)`` with X of shape (len(times), M, d).

    Gaussian: closed form :math:`x(t) = \mu + (x_\epsilon - \mu)\sqrt{(s^2+t^2)/(s^2+\epsilon^2)}`, err = 0.
    Mixture: classical RK4 in s = ln t (local error O(h^5)) forwards from eps through every requested time,
    with at most ``h_max`` per step in ln t, run twice, the second time with every step halved; X is the
    finer run and ``err`` = max |X(h) - X(h/2)| / 15, the Richardson estimate of the coarser run's error
    (an upper estimate for X).
    """
    toy = get_toy(toy)
    g = toy.mixture
    x_eps = x_eps.to(DTYPE)
    ts = torch.as_tensor(times, dtype=DTYPE)
    if (ts[1:] < ts[:-1]).any() or float(ts[0]) < eps * (1 - 1e-12):
        raise ValueError("times must be ascending and >= eps")
    if toy.closed_form:
        s2, mu = float(g.stds[0]) ** 2, g.means[0]
        r = torch.sqrt((s2 + ts ** 2) / (s2 + eps ** 2))
        return mu + (x_eps - mu)[None] * r[:, None, None], 0.0
    full = [eps] + [float(v) for v in ts]
    X_coarse = _rk4_through(g, x_eps, full, h_max)[1:]
    X = _rk4_through(g, x_eps, full, h_max, refine=2)[1:]
    return X, float((X - X_coarse).abs().max()) / 15


def consistency_reference(toy, x: Tensor, t: float, steps: int = 2000, eps: float = EPS) -> Tensor:
    """The exact consistency function f(x, t) at points x (B, d), time t: closed form for a Gaussian,
    else RK4 in ln t from t down to eps on ``steps`` equal steps (:func:`cmlite.ode.reference_solve`)."""
    toy = get_toy(toy)
    x = x.to(DTYPE)
    if toy.closed_form:
        return toy.mixture.consistency_function(x, t, eps=eps)
    from ..ode import reference_solve
    return reference_solve(toy.mixture, x, float(t), eps, steps=steps)


def lipschitz_on_test_set(X: Tensor, E: Tensor) -> float:
    r"""A lower estimate of the Lipschitz constant of the exact consistency function on the test set:
    :math:`\max_n \max_{j \ne k} \|x_j(\epsilon) - x_k(\epsilon)\| / \|x_j(t_n) - x_k(t_n)\|`."""
    dE = torch.cdist(E, E)
    best = 0.0
    for Xn in X:
        dX = torch.cdist(Xn, Xn)
        mask = dX > 0
        if mask.any():
            best = max(best, float((dE[mask] / dX[mask]).max()))
    return best


# ---------------------------------------------------------------- slopes
def fit_slope(dt, err) -> tuple[float, float]:
    r"""Least-squares fit of :math:`\log e = a + p \log \Delta t`; returns (p, a)."""
    x = torch.log(torch.as_tensor(dt, dtype=DTYPE))
    y = torch.log(torch.as_tensor(err, dtype=DTYPE))
    if x.numel() < 2:
        raise ValueError("need at least two points to fit a slope")
    xm, ym = x.mean(), y.mean()
    p = float(((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum())
    return p, float(ym - p * xm)


def local_slopes(dt, err) -> list[float | None]:
    """Slopes between consecutive points, log(e_{i+1}/e_i) / log(dt_{i+1}/dt_i); None for the first."""
    out: list[float | None] = [None]
    for i in range(1, len(dt)):
        out.append(math.log(err[i] / err[i - 1]) / math.log(dt[i] / dt[i - 1])
                   if err[i] > 0 and err[i - 1] > 0 else None)
    return out
