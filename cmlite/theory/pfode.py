r"""Facts about the probability-flow ODE that consistency models rely on, checked numerically.

* :func:`marginal_check`: integrating the PF ODE from :math:`x_T \sim N(0, T^2 I)` down to t reproduces the
  analytic marginal :math:`p_t = p_{data} * N(0, t^2 I)` (a two-sample energy-distance permutation test
  against exact draws of p_t, at a stated level).
* :func:`round_trip_check`: the ODE map is invertible: encoding x (at eps) to T and decoding back returns x,
  to the accuracy of the solver (editing and interpolation rely on this). With the RK4 reference the
  round-trip error is at the level of its truncation and round-off errors. With a one-step method of
  order p on the same grid both ways, the leading local errors of the forward step (+C h^{p+1}) and of the
  backward step (C (-h)^{p+1}) cancel when p is even, so the round trip of Heun (p = 2) converges like
  Delta t^3, and that of Euler (p = 1), where they add, like Delta t.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ..schedules import EPS, T_MAX, karras_boundaries, max_gap
from .common import DTYPE, _rk4_through, fit_slope, get_toy


def integrate(D, x: Tensor, ts, solver) -> Tensor:
    """Run ``solver`` through the time points ``ts`` (either direction): :func:`cmlite.ode.solve` for a
    named solver, the same loop for a callable step (e.g. a deliberately wrong one)."""
    if isinstance(solver, str):
        from ..ode import solve
        return solve(D, x, ts, solver)
    for a, b in zip(ts[:-1], ts[1:]):
        x = solver(D, x, float(a), float(b))
    return x


# ---------------------------------------------------------------- two-sample test
def energy_distance_test(a: Tensor, b: Tensor, permutations: int = 500, seed: int = 0) -> tuple[float, float]:
    r"""Energy distance :math:`\mathcal E = 2E\|X-Y\| - E\|X-X'\| - E\|Y-Y'\|` (V-statistic) between samples
    a (n, d) and b (m, d), and its permutation p-value :math:`(1 + \#\{\mathcal E_\pi \ge \mathcal E\})/(1 +
    \text{permutations})`. Under H0 (same law) the p-value is uniform, so a test at level alpha wrongly
    rejects with probability alpha."""
    z = torch.cat([a, b]).to(DTYPE)
    n, m = a.shape[0], b.shape[0]
    Dm = torch.cdist(z, z)
    rows = Dm.sum(1)
    total = rows.sum()
    g = torch.Generator().manual_seed(seed)
    labels = [torch.arange(n + m) < n] + [torch.randperm(n + m, generator=g) < n for _ in range(permutations)]
    F = torch.stack(labels, 1).to(DTYPE)              # (n+m, 1+permutations), 1 for the first sample
    DF = Dm @ F
    s_aa = (F * DF).sum(0)                             # sum over pairs inside the first sample
    s_ab = (rows @ F) - s_aa                           # pairs across
    s_bb = total - s_aa - 2 * s_ab
    E = 2 * s_ab / (n * m) - s_aa / n ** 2 - s_bb / m ** 2
    obs = float(E[0])
    return obs, (1 + int((E[1:] >= E[0]).sum())) / (1 + permutations)


def start_mismatch_tv_bound(mixture, T: float = T_MAX) -> float:
    r"""Upper bound on the total variation between the sampler's start N(0, T^2 I) and the true p_T:
    by convexity of KL and Pinsker,

    .. math:: TV \le \sqrt{\tfrac12 \sum_k w_k \Big[\tfrac d2\big(r_k - 1 - \ln r_k\big) + \frac{\|\mu_k\|^2}{2T^2}\Big]},
              \quad r_k = \frac{s_k^2 + T^2}{T^2}.

    The PF ODE is a bijection that maps p_T to p_t, so the pushed-forward start differs from p_t by the
    same TV: this bounds the bias of the marginal check."""
    w, m, s2 = mixture.weights, mixture.means, mixture.stds ** 2
    d = mixture.dim
    r = (s2 + T ** 2) / T ** 2
    kl = (w * (d / 2 * (r - 1 - torch.log(r)) + (m ** 2).sum(1) / (2 * T ** 2))).sum()
    return float(torch.sqrt(kl / 2))


def marginal_check(toy="mixture", times: Sequence[float] = (EPS, 0.5, 2.0), n: int = 1000, N: int = 128,
                   solver="heun", alpha: float = 0.01, permutations: int = 500, seed: int = 0) -> dict:
    r"""PF ODE from N(0, T^2 I) to each t in ``times`` (``cmlite.ode.solve`` through a Karras grid of N
    points from T down to t), compared with n exact draws x + t z of p_t by the energy-distance permutation
    test. The family of len(times) tests has level ``alpha`` (Bonferroni: each at alpha / len(times)).

    Why the test can pass at all: the two biases are far below what n samples resolve. The start mismatch
    (N(0, T^2 I) instead of p_T) has TV <= :func:`start_mismatch_tv_bound` (~0.01 for the toys) and the
    Heun discretisation error at N = 128 is ~1e-3 in sup norm (:mod:`cmlite.theory.theorem1`), while with
    n = 1000 per sample the energy test needs a shift of order 0.1 standard deviations to reject reliably.
    """
    T = get_toy(toy)
    g = T.mixture
    gen = torch.Generator().manual_seed(seed)
    level = alpha / len(times)
    rows = []
    x_T = T_MAX * torch.randn(n, g.dim, generator=gen, dtype=DTYPE)
    for i, t in enumerate(times):
        x = integrate(g, x_T, karras_boundaries(N, eps=float(t)).flip(0), solver)
        exact = g.sample(n, t=float(t), generator=gen, dtype=DTYPE)
        stat, p = energy_distance_test(x, exact, permutations, seed + i)
        rows.append({"t": float(t), "energy_distance": stat, "p_value": p, "rejected": p < level})
    return {"toy": T.name, "n": n, "N": N, "solver": solver if isinstance(solver, str) else "custom",
            "alpha": alpha, "per_test_level": level, "permutations": permutations,
            "start_tv_bound": start_mismatch_tv_bound(g), "rows": rows,
            "passed": not any(r["rejected"] for r in rows)}


# ---------------------------------------------------------------- round trip
def round_trip_check(toy="mixture", Ns: Sequence[int] = (32, 64, 128, 256), solver="heun", n: int = 256,
                     seed: int = 0, reference_h: float = 0.02, fit_range: tuple[int, int] = (64, 256),
                     reference: bool = True) -> dict:
    r"""Encode x ~ p_eps to T and decode back, and report max_j ||x_j - x_j^{round trip}||_2.

    * Reference: RK4 in ln t with steps of at most ``reference_h`` both ways. Its round-trip error should
      be of the order of the RK4 truncation error (its Richardson estimate is reported) or round-off.
    * ``solver`` on the Karras grid of each N (ascending for encoding, descending for decoding): error
      falls like Delta t^q with q = p + 1 for even p and q = p for odd p (Heun: 3, Euler: 1; see the
      module docstring); the fitted slope over ``fit_range`` is reported.

    ``reference=False`` skips the RK4 part (the slow one). ``reference_tolerance`` = 4 x the Richardson estimate (for the O(h^4) leading term it is the error
    itself; the factor covers a pre-asymptotic ratio) + the round-off bound steps x 2.2e-16 x max|x| along
    the path (max|x| is at t = T). ``passed`` says the reference round trip is within it.
    """
    T = get_toy(toy)
    g = T.mixture
    x0 = g.sample(n, t=EPS, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    ref_err = ref_rich = tol = None
    if reference:
        up = _rk4_through(g, x0, [EPS, T_MAX], reference_h)[-1]
        back = _rk4_through(g, up, [T_MAX, EPS], reference_h)[-1]
        up2 = _rk4_through(g, x0, [EPS, T_MAX], 2 * reference_h)[-1]
        back2 = _rk4_through(g, up2, [T_MAX, EPS], 2 * reference_h)[-1]
        ref_err = float((back - x0).norm(dim=-1).max())
        ref_rich = float((back2 - back).norm(dim=-1).max()) / 15
        steps = 2 * math.ceil(math.log(T_MAX / EPS) / reference_h)
        tol = 4 * ref_rich + steps * 2.2e-16 * float(up.norm(dim=-1).max())
    rows = []
    for N in sorted(Ns):
        t = karras_boundaries(N)
        x = integrate(g, integrate(g, x0, t, solver), t.flip(0), solver)
        rows.append({"N": N, "dt": max_gap(t), "error": float((x - x0).norm(dim=-1).max())})
    fit = [r for r in rows if fit_range[0] <= r["N"] <= fit_range[1] and r["error"] > 0]
    slope = fit_slope([r["dt"] for r in fit], [r["error"] for r in fit])[0] if len(fit) >= 2 else float("nan")
    expected = {"euler": 1, "heun": 3}.get(solver) if isinstance(solver, str) else None
    return {"toy": T.name, "n": n, "solver": solver if isinstance(solver, str) else "custom",
            "reference_round_trip_error": ref_err, "reference_richardson_estimate": ref_rich,
            "reference_tolerance": tol, "passed": None if ref_err is None else ref_err <= tol,
            "scale": float(x0.norm(dim=-1).max()), "rows": rows, "slope": slope, "expected_slope": expected,
            "regime": {"N": [fit[0]["N"], fit[-1]["N"]] if fit else None}}
