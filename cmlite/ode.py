r"""The probability-flow ODE of the variance-exploding (EDM) diffusion and its solvers.

Forward noising x_t = x + t z gives p_t = p_data * N(0, t^2 I) and the PF ODE

.. math:: \frac{dx}{dt} = -t \nabla \log p_t(x) = \frac{x - D(x, t)}{t},

with the denoiser D(x, t) = E[x_0 | x_t = x] (Tweedie: grad log p_t = (D - x) / t^2).

A *denoiser* here is any callable ``D(x, t) -> Tensor`` with x of shape (B, ...) and t of shape (B,).
Every solver runs forwards or backwards in time: the direction is given by the time points.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._checks import append_dims, as_time

Denoiser = Callable[[Tensor, Tensor], Tensor]


def score_to_denoiser(score: Callable[[Tensor, Tensor], Tensor]) -> Denoiser:
    r"""Turn a score s(x, t) = grad log p_t(x) into a denoiser D(x, t) = x + t^2 s(x, t) (Tweedie)."""
    def D(x: Tensor, t: Tensor) -> Tensor:
        t = as_time(t, x)
        return x + append_dims(t, x.ndim) ** 2 * score(x, t)
    return D


def pf_ode_drift(D: Denoiser, x: Tensor, t) -> Tensor:
    r"""PF-ODE velocity dx/dt = (x - D(x, t)) / t  (Song et al. 2023, eq. 2 in EDM form)."""
    t = as_time(t, x)
    return (x - D(x, t)) / append_dims(t, x.ndim)


def euler_step(D: Denoiser, x: Tensor, t_from, t_to) -> Tensor:
    r"""One Euler step of the PF ODE from t_from to t_to (local error O(h^2)):

    .. math:: \hat x_{t_n} = x_{t_{n+1}} + (t_n - t_{n+1}) \frac{x_{t_{n+1}} - D(x_{t_{n+1}}, t_{n+1})}{t_{n+1}}

    With D from the true score this is the update of Algorithm 2 with the Euler solver.
    """
    t_from, t_to = as_time(t_from, x), as_time(t_to, x)
    h = append_dims(t_to - t_from, x.ndim)
    return x + h * pf_ode_drift(D, x, t_from)


def heun_step(D: Denoiser, x: Tensor, t_from, t_to) -> Tensor:
    r"""One Heun (2nd-order, EDM Algorithm 1) step of the PF ODE (local error O(h^3)):

    .. math:: d_1 = \frac{x - D(x, t_{n+1})}{t_{n+1}},\; x' = x + h d_1,\;
              d_2 = \frac{x' - D(x', t_n)}{t_n},\; \hat x = x + \tfrac h2 (d_1 + d_2),\; h = t_n - t_{n+1}.

    Falls back to Euler where t_to = 0 (d_2 is undefined there).
    """
    t_from, t_to = as_time(t_from, x), as_time(t_to, x)
    h = append_dims(t_to - t_from, x.ndim)
    d1 = pf_ode_drift(D, x, t_from)
    x_euler = x + h * d1
    safe_to = torch.where(t_to > 0, t_to, torch.ones_like(t_to))
    d2 = pf_ode_drift(D, x_euler, safe_to)
    x_heun = x + h * (d1 + d2) / 2
    return torch.where(append_dims(t_to > 0, x.ndim), x_heun, x_euler)


SOLVERS = {"euler": euler_step, "heun": heun_step}


def get_solver(name: str):
    """Look up a one-step PF-ODE solver by name ('euler' or 'heun')."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}") from None


def solve(D: Denoiser, x: Tensor, ts: Sequence[float] | Tensor, solver: str = "heun",
          callback=None, disable: bool | None = None) -> Tensor:
    """Integrate the PF ODE through the time points ``ts`` (ts[0] is x's time), with Euler or Heun.

    Descending ``ts`` (e.g. ``karras_boundaries(N).flip(0)``) is sampling: start from x_T ~ N(0, T^2 I).
    Ascending ``ts`` is encoding (data to noise). ``callback({'i', 't', 'x'})`` is called after each
    step. Costs len(ts)-1 (Euler) or 2(len(ts)-1) (Heun) denoiser evaluations.
    """
    step = get_solver(solver)
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if ts.ndim != 1 or len(ts) < 2:
        raise ValueError(f"ts must be a 1-d sequence of at least 2 time points; got shape {tuple(ts.shape)}")
    for i in tqdm(range(len(ts) - 1), disable=True if disable is None else disable, desc=f"{solver} ODE"):
        x = step(D, x, float(ts[i]), float(ts[i + 1]))
        if callback is not None:
            callback({"i": i, "t": float(ts[i + 1]), "x": x})
    return x


def rk4_step_logt(D: Denoiser, x: Tensor, s0: float, s1: float) -> Tensor:
    r"""One classical RK4 step (local error O(h^5)) of the PF ODE in s = ln t, from s0 to s1:
    dx/ds = t dx/dt = x - D(x, e^s), smooth in s over [ln eps, ln T]."""
    def g(y, s):
        return y - D(y, torch.full((y.shape[0],), math.exp(s), dtype=y.dtype, device=y.device))
    h = s1 - s0
    k1 = g(x, s0)
    k2 = g(x + h / 2 * k1, s0 + h / 2)
    k3 = g(x + h / 2 * k2, s0 + h / 2)
    k4 = g(x + h * k3, s1)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def reference_solve(D: Denoiser, x: Tensor, t_from: float, t_to: float, steps: int = 2000,
                    return_error: bool = False):
    r"""High-accuracy PF-ODE solution from t_from to t_to (scalars), for exact references.

    Classical RK4 (local error O(h^5)) in the variable s = ln t, where dx/ds = x - D(x, e^s) is
    smooth across the whole range [eps, T], on ``steps`` equal steps, in float64. With
    ``return_error=True`` also return an error estimate: the max abs difference from a run with half
    as many steps, divided by 15 (Richardson: the error of RK4 scales as 2^-4 per halving).
    """
    if t_from <= 0 or t_to <= 0:
        raise ValueError(f"reference_solve needs positive times; got t_from={t_from}, t_to={t_to}")
    x = x.double()

    def run(n):
        y = x
        s = torch.linspace(math.log(t_from), math.log(t_to), n + 1, dtype=torch.float64)
        for i in range(n):
            y = rk4_step_logt(D, y, float(s[i]), float(s[i + 1]))
        return y

    y = run(steps)
    if not return_error:
        return y
    err = float((y - run(steps // 2)).abs().max()) / 15
    return y, err
