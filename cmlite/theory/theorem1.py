r"""Theorem 1 of Song et al. (2023), measured.

**Statement** (method.md §8). If the ODE solver has local error :math:`O((t_{n+1}-t_n)^{p+1})` and
:math:`f_\theta` is Lipschitz, then :math:`\mathcal L^N_{CD} = 0` implies

.. math:: \sup_{n, x} \| f_\theta(x, t_n) - f(x, t_n; \phi) \| = O((\Delta t)^p),
          \qquad \Delta t = \max_n |t_{n+1} - t_n|,

with p = 1 for Euler and p = 2 for Heun.

**The zero-loss function is known exactly.** :math:`\mathcal L^N_{CD} = 0` (with the noise x + t z covering
all of R^d) means :math:`f_\theta(x, t_{n+1}) = f_\theta(\Phi_n(x), t_n)` for every x, where
:math:`\Phi_n` is one solver step from t_{n+1} to t_n; with the boundary condition
:math:`f_\theta(x, t_1) = x` this forces, by induction,

.. math:: f_\theta(x, t_n) = \Phi_1 \circ \Phi_2 \circ \dots \circ \Phi_{n-1}(x),

"run the solver from t_n down to t_1 = eps" (:func:`zero_loss_consistency`). So the error of Theorem 1 can be
measured without training anything (:func:`theorem1_table`), and then compared with networks that are
trained to a small, nonzero loss (:func:`learned_cd_experiment`).

Norm and set used throughout: the Euclidean norm in R^d, the sup over every grid index n and over the M
test points of a bundle of exact trajectories (:mod:`cmlite.theory.common`).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..schedules import EPS, karras_boundaries, max_gap
from .common import (DTYPE, describe_test_set, end_points, fit_slope, get_toy, lipschitz_on_test_set,
                     local_slopes, trajectories)

#: N values of the default tables; Delta t runs from 45 (N = 8) to 0.85 (N = 512).
DEFAULT_NS = (8, 16, 32, 64, 128, 256, 512)
#: N range of the slope fits (the asymptotic regime on the 'gaussian' and 'mixture' toys: there the local
#: slopes of both solvers have settled to within 0.1 of each other from N = 64 on).
DEFAULT_FIT_RANGE = (64, 512)
#: order p of the global error of each named solver
ORDERS = {"euler": 1, "heun": 2}
NORM = "Euclidean norm in R^d; sup over every grid index n = 1..N and over the M test points"


def get_step(solver) -> Callable:
    """A one-step solver ``step(D, x, t_from, t_to)``: a name looked up in :mod:`cmlite.ode` at call time
    ('euler', 'heun'), or any callable with that signature (e.g. a deliberately wrong one)."""
    if callable(solver):
        return solver
    from .. import ode
    return ode.get_solver(solver)


def zero_loss_consistency(D, x: Tensor, n: int, t: Tensor, solver="euler") -> Tensor:
    r"""The consistency function with zero CD loss on the grid ``t`` (ascending, t[0] = eps), at time t[n]:

    .. math:: f^N(x, t_n) = \Phi_1 \circ \dots \circ \Phi_n(x),\qquad
              \Phi_k = \text{one solver step from } t_k \text{ to } t_{k-1}

    (0-based: n steps, from t[n] down to t[0]). ``D`` is the teacher's denoiser, ``x`` has shape (B, d),
    ``n`` is an int in 0..N-1 (n = 0 returns x: the boundary condition).
    """
    step = get_step(solver)
    if not 0 <= n < len(t):
        raise ValueError(f"n must be in 0..{len(t) - 1}; got {n}")
    for k in range(n, 0, -1):
        x = step(D, x, float(t[k]), float(t[k - 1]))
    return x


def zero_loss_errors(D, X: Tensor, F: Tensor, t: Tensor, solver="euler") -> Tensor:
    r"""Errors :math:`\|f^N(X_{n,j}, t_n) - F_{n,j}\|_2` of the zero-loss function for all n at once.

    ``X`` (N, M, d): test points at each grid time; ``F``: exact consistency values, (N, M, d) or (M, d)
    (the same for every n, as on trajectories). Returns (N, M). Equivalent to calling
    :func:`zero_loss_consistency` for each n, but sweeps the grid once from the top: at step k every
    point that started at or above t_k moves from t_k to t_{k-1} together (cost ~ N^2 M / 2 steps).
    """
    step = get_step(solver)
    N, M, d = X.shape
    if len(t) != N:
        raise ValueError(f"X has {N} time slices but the grid has {len(t)} points")
    Y = X.clone()
    for k in range(N - 1, 0, -1):
        Y[k:] = step(D, Y[k:].reshape(-1, d), float(t[k]), float(t[k - 1])).reshape(N - k, M, d)
    return (Y - F).norm(dim=-1)


def _union_times(Ns: Sequence[int], eps: float) -> list[float]:
    return sorted({float(v) for N in Ns for v in karras_boundaries(N, eps=eps)})


def theorem1_table(toy="gaussian", solvers: Sequence = ("euler", "heun"), Ns: Sequence[int] = DEFAULT_NS,
                   M: int = 32, test_set: str = "typical", seed: int = 0,
                   fit_range: tuple[int, int] = DEFAULT_FIT_RANGE, h_max: float = 0.01) -> dict:
    r"""Error of the zero-loss consistency function against the exact one, for each solver and N.

    For each N: e(N) = sup_{n, j} ||f^N(x_j(t_n), t_n) - x_j(eps)||_2 on the Karras grid of N points, with
    the trajectory test set of :mod:`cmlite.theory.common`. The slope p of log e against log Delta t is
    fitted by least squares over ``fit_range`` (inclusive) and local slopes between consecutive N are
    listed, so one sees where the asymptotic regime starts. Each row also has ``error_rms`` (RMS over
    n >= 1 and j), ``error_t_le_1`` (the sup restricted to t_n <= 1, where the modes of a mixture separate)
    and ``argmax_t`` (the grid time where the sup is attained).

    ``solvers``: names ('euler', 'heun') or ``{label: callable}``. Returns a JSON-ready dict.
    """
    T = get_toy(toy)
    Ns = sorted(int(N) for N in Ns)
    solver_items = list(solvers.items()) if isinstance(solvers, dict) else [(s, s) for s in solvers]
    E = end_points(T, M, test_set, seed)
    times = _union_times(Ns, EPS)
    X_all, ref_err = trajectories(T, E, times, h_max=h_max)
    where = {v: i for i, v in enumerate(times)}
    grids = {N: karras_boundaries(N) for N in Ns}
    X_of = {N: X_all[[where[float(v)] for v in grids[N]]] for N in Ns}
    lo, hi = fit_range
    fit_Ns = [N for N in Ns if lo <= N <= hi]
    out = {
        "toy": T.name, "description": T.description, "test_set": describe_test_set(test_set, M, seed),
        "test_set_kind": test_set, "M": M, "seed": seed, "norm": NORM,
        "grid": "Karras boundaries (rho = 7, eps = 0.002, T = 80); Delta t = max_n (t_{n+1} - t_n)",
        "reference": "closed form" if T.closed_form else f"RK4 in ln t, h <= {h_max} (forwards from eps)",
        "reference_error": ref_err,
        "lipschitz_estimate": lipschitz_on_test_set(X_of[Ns[-1]], E),
        "regime": {"N": [fit_Ns[0], fit_Ns[-1]] if fit_Ns else None,
                   "dt": [max_gap(grids[fit_Ns[-1]]), max_gap(grids[fit_Ns[0]])] if fit_Ns else None},
        "solvers": {},
    }
    for label, solver in solver_items:
        rows = []
        for N in Ns:
            t = grids[N]
            err = zero_loss_errors(T.mixture, X_of[N], E, t, solver)
            per_n = err.max(dim=1).values
            rows.append({"N": N, "dt": max_gap(t), "error": float(per_n.max()),
                         "error_rms": float(err[1:].pow(2).mean().sqrt()),
                         "error_t_le_1": float(per_n[t <= 1.0].max()),
                         "argmax_t": float(t[int(per_n.argmax())])})
        ls = local_slopes([r["dt"] for r in rows], [r["error"] for r in rows])
        for r, s in zip(rows, ls):
            r["local_slope"] = s
        fit = [r for r in rows if r["N"] in fit_Ns and r["error"] > 0]
        slope, intercept = fit_slope([r["dt"] for r in fit], [r["error"] for r in fit]) if len(fit) >= 2 \
            else (float("nan"), float("nan"))
        out["solvers"][str(label)] = {"expected_order": ORDERS.get(label) if isinstance(label, str) else None,
                                      "slope": slope, "intercept": intercept, "rows": rows}
    return out


def local_error_order(solver="euler", t: float = 1.0, hs: Sequence[float] = (0.08, 0.04, 0.02, 0.01),
                      x: Tensor | None = None) -> dict:
    r"""Numerical local truncation error of a library step on the Gaussian toy's PF ODE, whose exact flow
    is closed-form: :math:`\ell(h) = \max_x \|\Phi_h(x) - x(t-h)\|` for one step from t to t - h.
    Returns the errors and the fitted slope of log l against log h: p + 1 (2 for Euler, 3 for Heun).
    Complements the symbolic expansion in :mod:`cmlite.theory.symbolic` by testing the actual code."""
    T = get_toy("gaussian")
    g = T.mixture
    step = get_step(solver)
    if x is None:
        x = g.sample(64, t=t, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    s2, mu = float(g.stds[0]) ** 2, g.means[0]
    errs = []
    for h in hs:
        exact = mu + (x - mu) * math.sqrt((s2 + (t - h) ** 2) / (s2 + t ** 2))
        errs.append(float((step(g, x, t, t - h) - exact).norm(dim=-1).max()))
    p, _ = fit_slope(list(hs), errs)
    return {"h": list(hs), "error": errs, "slope": p}


# ---------------------------------------------------------------- learned networks
def learned_cd_experiment(toy="gaussian", solvers: Sequence[str] = ("euler", "heun"),
                          Ns: Sequence[int] = (6, 12, 24, 48), seeds: Sequence[int] = (0,),
                          steps: int = 1000, batch_size: int = 256, hidden: int = 64, depth: int = 2,
                          lr: float = 1e-3, mu: float = 0.95, M: int = 256, test_seed: int = 123,
                          floor: bool = True, progress: bool = False) -> dict:
    r"""Theorem 1 with learned networks: small MLP consistency models trained by CD.

    For each solver, N and seed: a :class:`~cmlite.parameterization.ConsistencyModel` around an
    :class:`~cmlite.nets.MLP` (float64) is trained by :class:`~cmlite.losses.ConsistencyDistillationLoss`
    (teacher = the toy's exact denoiser, squared L2, uniform weighting) with :class:`~cmlite.training.Trainer`,
    a fixed N and target EMA ``mu``. Its evaluation-EMA network is compared with the exact consistency
    function on the trajectory test set (M typical trajectories, seed ``test_seed``) at the grid times
    t_2..t_N:

    * ``learned_rms`` / ``learned_sup``: RMS / sup over (n, j) of ||f_theta(x_j(t_n), t_n) - x_j(eps)||;
    * ``zero_loss_rms`` / ``zero_loss_sup``: the same for the zero-loss function of that solver and N,
      i.e. the *discretisation error* Theorem 1 is about (exact, no training);
    * ``floor_rms`` (Gaussian toy, ``floor=True``): the same network and budget trained by plain regression
      on the exact consistency function at the grid times: an estimate of the *optimisation floor*
      (what this network and budget can reach with no discretisation error at all).

    ``dominated_by`` in the summary: ``"discretisation"`` if zero_loss_rms >= 0.8 learned_rms (the learned
    error is essentially the discretisation error), ``"optimisation"`` if zero_loss_rms <= 0.3 learned_rms
    (the discretisation error is a small part), ``"both"`` in between.

    Measured with the defaults and seeds (0, 1) (about 5 minutes on one CPU core): Euler tracks the
    zero-loss error at every N (0.280, 0.133, 0.064, 0.031 RMS against 0.280, 0.133, 0.066, 0.033), while
    Heun's falls faster (0.407, 0.082, 0.023, 0.016 against 0.397, 0.079, 0.016, 0.0037) and meets CD's
    optimisation floor, ~0.015 RMS, by N = 48. That floor is well above the regression floor (~0.003):
    CD's bootstrapped targets add error at each of the N - 1 links.
    """
    from ..losses import ConsistencyDistillationLoss
    from ..nets import MLP
    from ..parameterization import ConsistencyModel
    from ..schedules import FixedSchedule
    from ..training import Trainer, TrainConfig

    T = get_toy(toy)
    g = T.mixture
    E = end_points(T, M, "typical", test_seed)
    Ns = sorted(int(N) for N in Ns)
    grids = {N: karras_boundaries(N) for N in Ns}
    times = _union_times(Ns, EPS)
    X_all, ref_err = trajectories(T, E, times)
    where = {v: i for i, v in enumerate(times)}
    X_of = {N: X_all[[where[float(v)] for v in grids[N]]] for N in Ns}

    def data(n, gen):
        return g.sample(n, generator=gen, dtype=DTYPE)

    def evaluate(model, N):
        t = grids[N]
        with torch.no_grad():
            out = torch.stack([model(X_of[N][n], float(t[n])) for n in range(1, N)])
        err = (out - E[None]).norm(dim=-1)
        return float(err.pow(2).mean().sqrt()), float(err.max())

    def make_model(seed):
        torch.manual_seed(seed)
        return ConsistencyModel(MLP(g.dim, hidden, depth)).to(DTYPE)

    def train(loss, N, seed):
        cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed)
        tr = Trainer(make_model(seed), loss, data, cfg, FixedSchedule(N, mu))
        tr.fit(progress=progress, desc=f"N={N}")
        return tr.ema

    rows = []
    floors = {}
    if floor and T.closed_form:
        for N in Ns:
            vals = [evaluate(train(_RegressionLoss(g), N, s), N) for s in seeds]
            floors[N] = sum(v[0] for v in vals) / len(vals)
    for solver in solvers:
        for N in Ns:
            zl = zero_loss_errors(g, X_of[N], E, grids[N], solver)[1:]
            zl_rms, zl_sup = float(zl.pow(2).mean().sqrt()), float(zl.max())
            for seed in seeds:
                rms, sup = evaluate(train(ConsistencyDistillationLoss(g, solver=solver), N, seed), N)
                rows.append({"solver": solver, "N": N, "dt": max_gap(grids[N]), "seed": seed,
                             "learned_rms": rms, "learned_sup": sup, "zero_loss_rms": zl_rms,
                             "zero_loss_sup": zl_sup, "floor_rms": floors.get(N)})
    summary = []
    for solver in solvers:
        for N in Ns:
            rs = [r for r in rows if r["solver"] == solver and r["N"] == N]
            v = torch.tensor([r["learned_rms"] for r in rs], dtype=DTYPE)
            zl = rs[0]["zero_loss_rms"]
            mean = float(v.mean())
            dom = "discretisation" if zl >= 0.8 * mean else "optimisation" if zl <= 0.3 * mean else "both"
            summary.append({"solver": solver, "N": N, "dt": rs[0]["dt"], "learned_rms_mean": mean,
                            "learned_rms_std": float(v.std()) if len(v) > 1 else None,
                            "zero_loss_rms": zl, "floor_rms": floors.get(N), "dominated_by": dom})
    return {"toy": T.name, "description": T.description,
            "test_set": describe_test_set("typical", M, test_seed) + "; grid times t_2..t_N",
            "norm": "RMS and sup over (n, j) of the Euclidean error", "reference_error": ref_err,
            "training": {"steps": steps, "batch_size": batch_size, "hidden": hidden, "depth": depth, "lr": lr,
                         "mu": mu, "seeds": list(seeds), "distance": "l2", "weighting": "uniform",
                         "network": "ConsistencyModel(MLP), skip parameterisation, float64, EMA weights"},
            "rows": rows, "summary": summary}


class _RegressionLoss:
    """Regression on the exact (closed-form) consistency function at the grid times: the floor reference."""

    def __init__(self, gaussian):
        self.g = gaussian

    def __call__(self, model, x, target=None, N=18, generator=None):
        t = karras_boundaries(N).to(x)
        n = torch.randint(1, N, (x.shape[0],), generator=generator)
        xt = x + t[n][:, None] * torch.randn(x.shape, dtype=x.dtype, generator=generator)
        return (model(xt, t[n]) - self.g.consistency_function(xt, t[n])).pow(2).mean(1)
