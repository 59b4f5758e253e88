r"""Consistency losses, one small class each (Song et al. 2023, Algorithms 2 and 3; improved CT).

Every loss is called as ``loss(model, x, target=None, N=18)`` and returns per-sample losses of shape (B,):

.. math:: \mathcal L = \lambda(t_n)\, d\big(f_\theta(x_{t_{n+1}}, t_{n+1}),\; f_{\theta^-}(\hat x_{t_n}, t_n)\big)

with n drawn over the N-point Karras grid, and the target f_{theta^-} evaluated under ``torch.no_grad``
(stop-gradient; ``stop_gradient=False`` lets gradients through the target, for ablations only). ``target=None`` uses the online model itself as the target (mu = 0). The deterministic
core, ``loss.at(model, x, z, n, t, target)``, takes the noise z and the indices n explicitly, for
common-random-number experiments (Theorem 2).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ._checks import append_dims
from .ode import Denoiser, get_solver
from .schedules import EPS, RHO, SIGMA_DATA, T_MAX, karras_boundaries, lognormal_index_probs


# ---------------------------------------------------------------- random draws, optionally one rank's share
def draw(fn, B: int, shard: tuple[int, int] | None = None):
    """Call ``fn(B)`` (a random draw with B rows), or, for data-parallel rank r of w (``shard = (r, w)``),
    draw ``fn(w * B)`` from the same random stream as a single process with the w-times larger batch and
    keep rows r*B ... (r+1)*B - 1. So w processes with batch B see exactly the noise of one process with
    batch w*B (the extra draws cost little next to a network evaluation)."""
    if shard is None or shard[1] == 1:
        return fn(B)
    r, w = shard
    return fn(w * B)[r * B:(r + 1) * B]


# ---------------------------------------------------------------- distances d(a, b), per sample
def _flat(a: Tensor, b: Tensor) -> Tensor:
    if a.shape != b.shape:
        raise ValueError(f"distance between tensors of different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return (a - b).flatten(1)


def l2(a: Tensor, b: Tensor) -> Tensor:
    """Squared L2 distance averaged over the non-batch dimensions, mean ||a - b||^2 / d
    (the official code's ``mean_flat``; the paper's squared L2 up to the constant 1/d)."""
    return _flat(a, b).pow(2).mean(1)


def l1(a: Tensor, b: Tensor) -> Tensor:
    """L1 distance averaged over the non-batch dimensions, mean |a - b|."""
    return _flat(a, b).abs().mean(1)


class PseudoHuber:
    r"""Pseudo-Huber distance d(a, b) = sqrt(||a - b||^2 + c^2) - c (improved CT), with the full
    Euclidean norm. Default c = 0.00054 sqrt(d), d = number of data dimensions."""

    def __init__(self, c: float | None = None):
        self.c = c

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        diff = _flat(a, b)
        c = 0.00054 * math.sqrt(diff.shape[1]) if self.c is None else self.c
        return torch.sqrt(diff.pow(2).sum(1) + c ** 2) - c


DISTANCES = {"l2": l2, "l1": l1, "pseudo_huber": PseudoHuber()}


def get_distance(d) -> Callable[[Tensor, Tensor], Tensor]:
    """A distance by name ('l2', 'l1', 'pseudo_huber') or any callable d(a, b) -> (B,) (e.g. LPIPS)."""
    if callable(d):
        return d
    try:
        return DISTANCES[d]
    except KeyError:
        raise ValueError(f"unknown distance {d!r}; choose one of {sorted(DISTANCES)} or pass a callable") from None


# ---------------------------------------------------------------- weightings lambda(t_n)
def lambda_weight(name: str, t_n: Tensor, t_np1: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    r"""The weight lambda for the pair (t_n, t_{n+1}):

    ``uniform`` 1 (all published CD/CT recipes); ``snr`` t_n^{-2}; ``snr+1`` t_n^{-2} + 1;
    ``karras`` t_n^{-2} + sigma_data^{-2}; ``truncated_snr`` max(t_n^{-2}, 1);
    ``ict`` 1 / (t_{n+1} - t_n) (improved CT).
    """
    if name == "uniform":
        return torch.ones_like(t_n)
    if name == "snr":
        return t_n ** -2
    if name == "snr+1":
        return t_n ** -2 + 1
    if name == "karras":
        return t_n ** -2 + sigma_data ** -2
    if name == "truncated_snr":
        return torch.clamp(t_n ** -2, min=1.0)
    if name == "ict":
        return 1 / (t_np1 - t_n)
    raise ValueError(f"unknown weighting {name!r}; choose uniform, snr, snr+1, karras, truncated_snr or ict")


# ---------------------------------------------------------------- the losses
def check_teacher(teacher) -> None:
    """Raise a TypeError that says what to pass unless ``teacher`` is a callable denoiser D(x, t)."""
    if isinstance(teacher, Tensor):
        raise TypeError("teacher must be a denoiser D(x, t), not a Tensor of data; for the exact denoiser of a "
                        "finite data set use cmlite.toys.EmpiricalDenoiser(data) (or train one with "
                        "cmlite.DenoisingScoreMatchingLoss)")
    if not callable(teacher):
        raise TypeError(f"teacher must be a callable denoiser D(x, t) -> x_0 estimate (e.g. a GaussianMixture, "
                        f"an EDMDenoiser or cmlite.toys.EmpiricalDenoiser); got {type(teacher).__name__}")


class _ConsistencyLoss:
    """Shared machinery: the Karras grid, the index distribution, and the loss of Algorithms 2/3."""

    def __init__(self, distance="l2", weighting: str = "uniform", index_sampling: str = "uniform",
                 eps: float = EPS, T: float = T_MAX, rho: float = RHO, sigma_data: float = SIGMA_DATA,
                 P_mean: float = -1.1, P_std: float = 2.0, stop_gradient: bool = True):
        if index_sampling not in ("uniform", "lognormal"):
            raise ValueError(f"index_sampling must be 'uniform' or 'lognormal'; got {index_sampling!r}")
        self.distance = get_distance(distance)
        self.weighting, self.index_sampling = weighting, index_sampling
        self.eps, self.T, self.rho, self.sigma_data = eps, T, rho, sigma_data
        self.P_mean, self.P_std = P_mean, P_std
        self.stop_gradient = stop_gradient  # False only for the ablation: gradients then flow through the target
        lambda_weight(weighting, torch.ones(1), 2 * torch.ones(1))  # fail early on an unknown name

    def _cached(self, key: tuple, make: Callable[[], Tensor]) -> Tensor:
        """A small per-loss cache of grids on the device: a fresh copy from the host every step would wait
        for the device (a blocking host-to-device copy) and cost a host synchronisation per step."""
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            if len(cache) >= 1024:  # N(k) takes a few hundred values at most; never grow without bound
                cache.clear()
            cache[key] = make()
        return cache[key]

    def grid(self, N: int, x: Tensor) -> Tensor:
        """The N Karras boundaries t_1 = eps < ... < t_N = T, in x's dtype and device (cached: do not
        modify the returned tensor in place)."""
        key = ("grid", N, self.eps, self.T, self.rho, x.dtype, x.device)
        return self._cached(key, lambda: karras_boundaries(N, self.eps, self.T, self.rho).to(dtype=x.dtype,
                                                                                              device=x.device))

    def sample_indices(self, B: int, N: int, device=None, generator=None) -> Tensor:
        """0-based indices n in {0, ..., N-2} (the pair t_n < t_{n+1}): uniform (Algorithms 2, 3) or the
        discretised lognormal of improved CT (:func:`cmlite.schedules.lognormal_index_probs`).

        Lognormal on the CPU: ``torch.multinomial``. On an accelerator: inverse-CDF sampling (``searchsorted``
        of uniform draws in the cumulative probabilities), the same distribution without the host
        synchronisations of ``torch.multinomial``'s input checks."""
        if self.index_sampling == "uniform":
            return torch.randint(0, N - 1, (B,), device=device, generator=generator)
        device = torch.device("cpu") if device is None else torch.device(device)
        key = (N, self.eps, self.T, self.rho, self.P_mean, self.P_std)
        p = self._cached(("p",) + key, lambda: lognormal_index_probs(
            karras_boundaries(N, self.eps, self.T, self.rho), self.P_mean, self.P_std))
        if device.type == "cpu":
            return torch.multinomial(p.float(), B, replacement=True, generator=generator)
        cdf = self._cached(("cdf", device) + key, lambda: p.cumsum(0)[:-1].float().to(device))
        u = torch.rand(B, device=device, generator=generator)
        return torch.searchsorted(cdf, u, right=True)  # n = #{k < N-2 : cdf_k <= u}, in {0, ..., N-2}

    def __call__(self, model, x: Tensor, target=None, N: int = 18, generator=None, shard=None, **cond) -> Tensor:
        """Draw n and z (see :func:`draw` for ``shard``) and return :meth:`at`'s per-sample losses."""
        t = self.grid(N, x)
        B, rest = x.shape[0], x.shape[1:]
        n = draw(lambda b: self.sample_indices(b, N, x.device, generator), B, shard)
        z = draw(lambda b: torch.randn((b, *rest), dtype=x.dtype, device=x.device, generator=generator), B, shard)
        return self.at(model, x, z, n, t, target, **cond)

    def previous_point(self, x: Tensor, z: Tensor, x_np1: Tensor, t_n: Tensor, t_np1: Tensor, **cond) -> Tensor:
        """x_hat_{t_n}: the estimate of the trajectory point at t_n (CD: an ODE step; CT: x + t_n z)."""
        raise NotImplementedError

    def at(self, model, x: Tensor, z: Tensor, n: Tensor, t: Tensor, target=None, **cond) -> Tensor:
        """The loss for given noise z (shaped like x) and indices n (shape (B,)) on the grid t.
        ``cond`` (e.g. ``class_labels=y``) is passed to every network evaluation."""
        target = model if target is None else target
        t_n, t_np1 = t[n], t[n + 1]
        x_np1 = x + append_dims(t_np1, x.ndim) * z
        with torch.no_grad():
            x_hat = self.previous_point(x, z, x_np1, t_n, t_np1, **cond)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.stop_gradient):
            f_target = target(x_hat, t_n, **cond)
        f_online = model(x_np1, t_np1, **cond)
        return lambda_weight(self.weighting, t_n, t_np1, self.sigma_data) * self.distance(f_online, f_target)


class ConsistencyDistillationLoss(_ConsistencyLoss):
    r"""Consistency distillation (Algorithm 2): x_hat_{t_n} is one step of the PF-ODE solver
    (``"euler"`` or ``"heun"``) from x_{t_{n+1}} = x + t_{n+1} z to t_n with the teacher denoiser D_phi.
    Paper's CIFAR-10 recipe: Heun, N = 18, LPIPS, uniform weighting, mu = 0."""

    def __init__(self, teacher: Denoiser, solver: str = "heun", **kw):
        check_teacher(teacher)
        super().__init__(**kw)
        self.teacher, self.solver = teacher, solver
        self.step = get_solver(solver)

    def previous_point(self, x, z, x_np1, t_n, t_np1, **cond):
        teacher = (lambda y, s: self.teacher(y, s, **cond)) if cond else self.teacher
        return self.step(teacher, x_np1, t_np1, t_n)


class ConsistencyTrainingLoss(_ConsistencyLoss):
    r"""Consistency training (Algorithm 3): no teacher. x_{t_n} = x + t_n z and x_{t_{n+1}} = x + t_{n+1} z
    share x and z; this is CD with the Euler solver and the one-sample score estimate -(x_t - x)/t^2.
    Pair it with :class:`cmlite.schedules.CTSchedule` (N(k), mu(k))."""

    def previous_point(self, x, z, x_np1, t_n, t_np1, **cond):
        return x + append_dims(t_n, x.ndim) * z


class ImprovedConsistencyTrainingLoss(ConsistencyTrainingLoss):
    r"""Improved CT (Song & Dhariwal 2023): pseudo-Huber d with c = 0.00054 sqrt(d), lambda = 1/(t_{n+1} - t_n),
    n from the discretised lognormal (P_mean = -1.1, P_std = 2.0). Pair it with
    :class:`cmlite.schedules.ICTSchedule` (N doubling from 10 to 1280, mu = 0) and dropout in the network."""

    def __init__(self, distance="pseudo_huber", weighting="ict", index_sampling="lognormal", **kw):
        super().__init__(distance=distance, weighting=weighting, index_sampling=index_sampling, **kw)
