r"""Sampling from a consistency model (Algorithm 1) and choosing multistep time points.

Every sampler has the k-diffusion signature ``(model, x, ts, ..., callback=None, disable=None)``, where
``x`` is the starting noise already at the scale of ``ts[0]`` (x = T z for sampling from scratch).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._checks import check_time_range
from .ode import solve
from .schedules import EPS, T_MAX, karras_boundaries


def _times(model, ts) -> tuple[Tensor, float]:
    eps, T = getattr(model, "eps", EPS), getattr(model, "T", T_MAX)
    ts = torch.as_tensor(ts, dtype=torch.float64).reshape(-1)
    if len(ts) == 0:
        raise ValueError("ts must hold at least one time point (ts = [T] is one-step sampling)")
    check_time_range(ts, eps, T, "ts")
    if len(ts) > 1 and not (ts[1:] < ts[:-1]).all():
        raise ValueError(f"ts must be strictly decreasing; got {ts.tolist()}")
    return ts, eps


@torch.no_grad()
def multistep_sample(model, x: Tensor, ts: Sequence[float], generator: torch.Generator | None = None,
                     callback=None, disable: bool | None = None, extra_args: dict | None = None) -> Tensor:
    r"""Multistep consistency sampling (Algorithm 1).

    .. math:: x \leftarrow f_\theta(x, \tau_1);\quad \text{for } n \ge 2:\;
              x \leftarrow f_\theta\big(x + \sqrt{\tau_n^2 - \epsilon^2}\, z,\; \tau_n\big),\; z \sim \mathcal N(0, I)

    ``ts = [T]`` is one-step generation. ``x`` must be noise at scale ts[0] (x = ts[0] z).
    Costs len(ts) network evaluations. ``extra_args`` (e.g. ``{"class_labels": y}``) go to the model.
    """
    ts, eps = _times(model, ts)
    extra_args = extra_args or {}
    for i in tqdm(range(len(ts)), disable=True if disable is None else disable, desc="consistency sampling"):
        tau = float(ts[i])
        if i > 0:
            z = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
            x = x + math.sqrt(tau ** 2 - eps ** 2) * z
        x = model(x, tau, **extra_args)
        if callback is not None:
            callback({"i": i, "t": tau, "x": x})
    return x


def sample(model, shape, ts: Sequence[float] | None = None, generator: torch.Generator | None = None,
           device=None, dtype=torch.float32, extra_args: dict | None = None) -> Tensor:
    """Draw samples of the given shape (batch, ...): x_T = T z, then :func:`multistep_sample` with
    ``ts`` (default ``[T]``: one step)."""
    T = getattr(model, "T", T_MAX)
    ts = [T] if ts is None else list(ts)
    x = T * torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
    if ts[0] != T:
        raise ValueError(f"sampling from scratch starts at ts[0] = T = {T}; got ts[0] = {ts[0]}")
    return multistep_sample(model, x, ts, generator=generator, extra_args=extra_args)


@torch.no_grad()
def ode_sample(denoiser, shape, N: int = 18, solver: str = "heun", generator=None, eps: float = EPS,
               T: float = T_MAX, device=None, dtype=torch.float32, extra_args: dict | None = None) -> Tensor:
    """Baseline diffusion sampler: solve the PF ODE from x_T = T z down to eps on the N-point Karras grid
    (N - 1 steps; NFE = N - 1 for Euler, 2(N - 1) for Heun). ``extra_args`` go to the denoiser."""
    x = T * torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
    ts = karras_boundaries(N, eps, T).flip(0)
    D = (lambda y, t: denoiser(y, t, **extra_args)) if extra_args else denoiser
    return solve(D, x, ts, solver)


def ternary_search_times(model, score: Callable[[Tensor], float], n_steps: int, shape, seed: int = 0,
                         iters: int = 12, lo: float | None = None, device=None,
                         dtype=torch.float32, trail: list | None = None) -> tuple[list[float], list[float]]:
    r"""Greedy ternary search for multistep time points (the paper's §6 procedure).

    tau_1 = T. Each further tau_j is chosen by a ternary search over log tau in (eps, tau_{j-1}) that
    minimises ``score(samples)`` (lower is better, e.g. a sliced Wasserstein distance to data), with the
    earlier points fixed; it assumes the score is unimodal in tau_j. Every evaluation uses the same
    random numbers (``seed``), so the search compares like with like. Each added tau_j is the *best* time
    the search scored for it (the lowest score among its 2 ``iters`` evaluations), with that score: a
    noisy score (FID of finite samples) need not be unimodal, and the midpoint of the last bracket (the
    winner of the last comparison only) can score worse than a time evaluated earlier. Returns (times,
    score after each added step), the first score being the one-step score; costs 1 + 2 ``iters``
    (n_steps - 1) evaluations. If ``trail`` is a list, every evaluation is appended to it as ``(times,
    score)``, to plot what the search did. A time that ends next to ``lo`` means that a further step did
    not help (it is then nearly a no-op).
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1; got {n_steps}")
    eps, T = getattr(model, "eps", EPS), getattr(model, "T", T_MAX)
    lo = eps * 1.0001 if lo is None else lo

    def evaluate(ts):
        g = torch.Generator(device=device or "cpu").manual_seed(seed)
        value = float(score(sample(model, shape, ts, generator=g, device=device, dtype=dtype)))
        if trail is not None:
            trail.append((list(ts), value))
        return value

    times, scores = [T], [evaluate([T])]
    for _ in range(1, n_steps):
        a, b = math.log(lo), math.log(times[-1]) - 1e-6
        scored = []                                   # (score, tau) of every evaluation for this tau_j
        for _ in range(iters):
            m1, m2 = a + (b - a) / 3, b - (b - a) / 3
            s1, s2 = (evaluate(times + [math.exp(m)]) for m in (m1, m2))
            scored += [(s1, math.exp(m1)), (s2, math.exp(m2))]
            if s1 < s2:
                b = m2
            else:
                a = m1
        best, tau = min(scored) if scored else (evaluate(times + [math.exp((a + b) / 2)]), math.exp((a + b) / 2))
        times.append(tau)
        scores.append(best)
    return times, scores
