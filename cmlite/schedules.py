"""Time grids and training schedules.

Notation of Song et al. (2023): boundaries t_1 = eps < t_2 < ... < t_N = T (Karras et al. 2022,
rho = 7); CT schedules N(k), mu(k) (Appendix C); improved-CT curriculum and lognormal index
sampling (Song & Dhariwal 2023). Python indices are 0-based: ``t[0] = eps``, ``t[N-1] = T``.

Every schedule is a callable k -> (N, mu) that the Trainer passes to the loss as ``N``. The losses of
:mod:`cmlite.continuous` read that slot their own way: :class:`ECTSchedule` gives ECT's stage as
N = q^a (the gap ratio (t - r)/t is n(t)/N), :class:`TangentWarmupSchedule` gives sCM's tangent warm-up
factor r(k) in [0, 1] (a float); continuous-time CT needs no schedule at all (``schedule=None``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ._checks import check_N

EPS = 0.002
T_MAX = 80.0
SIGMA_DATA = 0.5
RHO = 7.0


def karras_boundaries(N: int, eps: float = EPS, T: float = T_MAX, rho: float = RHO,
                      dtype=torch.float64, device=None) -> Tensor:
    r"""The N time boundaries of Karras et al. (2022), ascending.

    .. math:: t_i = \left(\epsilon^{1/\rho} + \tfrac{i-1}{N-1}(T^{1/\rho} - \epsilon^{1/\rho})\right)^\rho,
              \quad i = 1, \dots, N

    so ``t[0] == eps`` and ``t[-1] == T`` exactly. Returns a tensor of shape (N,).
    """
    N = check_N(N)
    if not (0 < eps < T):
        raise ValueError(f"need 0 < eps < T; got eps={eps}, T={T}")
    i = torch.arange(N, dtype=torch.float64)
    t = (eps ** (1 / rho) + i / (N - 1) * (T ** (1 / rho) - eps ** (1 / rho))) ** rho
    t[0], t[-1] = eps, T  # exact end points despite rounding
    return t.to(dtype=dtype, device=device)


def max_gap(t: Tensor) -> float:
    """Delta t := max_n |t_{n+1} - t_n| (the largest gap; near T on a Karras grid)."""
    return float((t[1:] - t[:-1]).abs().max())


def ct_N(k: int, K: int, s0: int = 2, s1: int = 150) -> int:
    r"""Discretisation schedule of consistency training (Song et al. 2023, Appendix C):

    .. math:: N(k) = \left\lceil \sqrt{\tfrac{k}{K}((s_1+1)^2 - s_0^2) + s_0^2} - 1 \right\rceil + 1

    grows from N(0) = s0 to N(K) = s1 + 1.
    """
    if K <= 0:
        raise ValueError(f"K (total training steps) must be positive; got {K}")
    k = min(max(k, 0), K)
    return int(math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1)) + 1


def ct_mu(N: int, s0: int = 2, mu0: float = 0.9, official: bool = False) -> float:
    r"""EMA decay of the CT target network for discretisation N(k):

    .. math:: \mu(k) = \exp\left(\frac{s_0 \ln \mu_0}{N(k)}\right)

    (the paper). With ``official=True`` use the official code's N(k) - 1 in the denominator
    (its number of intervals), which gives a slightly smaller mu for the same N.
    """
    denom = N - 1 if official else N
    return math.exp(s0 * math.log(mu0) / denom)


def ict_N(k: int, K: int, s0: int = 10, s1: int = 1280) -> int:
    r"""Improved-CT curriculum (Song & Dhariwal 2023): N doubles from s0 to s1 in equal stages,

    .. math:: N(k) = \min\left(s_0 2^{\lfloor k / K' \rfloor}, s_1\right) + 1,\quad
              K' = \left\lfloor \frac{K}{\log_2\lfloor s_1/s_0 \rfloor + 1} \right\rfloor
    """
    if K <= 0:
        raise ValueError(f"K (total training steps) must be positive; got {K}")
    K_prime = max(1, math.floor(K / (math.log2(math.floor(s1 / s0)) + 1)))
    return int(min(s0 * 2 ** (k // K_prime), s1)) + 1


def lognormal_index_probs(t: Tensor, P_mean: float = -1.1, P_std: float = 2.0) -> Tensor:
    r"""Probabilities of the improved-CT index n (0-based, n = 0..N-2) over the N boundaries t:

    .. math:: p(n) \propto \operatorname{erf}\frac{\ln t_{n+1} - P_{mean}}{\sqrt 2 P_{std}}
              - \operatorname{erf}\frac{\ln t_n - P_{mean}}{\sqrt 2 P_{std}}

    i.e. the mass a lognormal(P_mean, P_std) puts on each interval [t_n, t_{n+1}].
    """
    lt = torch.log(t.double())
    cdf = torch.erf((lt - P_mean) / (math.sqrt(2.0) * P_std))
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()


@dataclass
class FixedSchedule:
    """Constant N and target EMA rate mu (consistency distillation; improved CT with fixed N)."""
    N: int = 18
    mu: float = 0.0

    def __call__(self, k: int) -> tuple[int, float]:
        return check_N(self.N), self.mu


@dataclass
class CTSchedule:
    """Algorithm 3's adaptive schedules: N(k) = :func:`ct_N`, mu(k) = :func:`ct_mu`."""
    K: int
    s0: int = 2
    s1: int = 150
    mu0: float = 0.9
    official: bool = False

    def __call__(self, k: int) -> tuple[int, float]:
        N = ct_N(k, self.K, self.s0, self.s1)
        return N, ct_mu(N, self.s0, self.mu0, self.official)


@dataclass
class ICTSchedule:
    """Improved CT: N(k) = :func:`ict_N`, no EMA target (mu = 0)."""
    K: int
    s0: int = 10
    s1: int = 1280

    def __call__(self, k: int) -> tuple[int, float]:
        return ict_N(k, self.K, self.s0, self.s1), 0.0


def ect_N(k: int, K: int, stages: int = 8, q: int = 2) -> int:
    r"""ECT's discretisation level (Geng et al. 2024, "Consistency Models Made Easy"): training is cut into
    ``stages`` equal stages of d = ceil(K / stages) steps, and in stage a = floor(k / d) + 1 = 1, 2, ...

    .. math:: N(k) = q^{a},\qquad \frac{t - r}{t} = \frac{n(t)}{N(k)},\quad n(t) = 1 + 8\,\mathrm{sigmoid}(-t)

    so the gap between the pair's times shrinks by the factor q per stage towards continuous time
    (:func:`cmlite.continuous.ect_pair`). ECT's d is the stage length in steps; its CIFAR-10 run uses q = 2."""
    if K <= 0:
        raise ValueError(f"K (total training steps) must be positive; got {K}")
    if stages < 1 or q < 2:
        raise ValueError(f"need stages >= 1 and q >= 2; got stages={stages}, q={q}")
    d = math.ceil(K / stages)
    return int(q ** (min(max(k, 0), K - 1) // d + 1))


@dataclass
class ECTSchedule:
    """ECT (Geng et al. 2024): N(k) = :func:`ect_N` (q^stage), no EMA target (mu = 0). Use with
    :class:`cmlite.continuous.ECTLoss`."""
    K: int
    stages: int = 8
    q: int = 2

    def __call__(self, k: int) -> tuple[int, float]:
        return ect_N(k, self.K, self.stages, self.q), 0.0


@dataclass
class Refitted:
    r"""A schedule whose horizon K was changed part-way through a run, continued from where it was.

    ``schedule`` is built for the new horizon K; at step ``k0`` the run was at ``schedule``'s step ``v0``
    (:func:`refit` finds it). Step k >= k0 then takes ``schedule``'s step

    .. math:: v(k) = v_0 + \left\lceil (K - v_0)\,\frac{\min(k, K) - k_0}{K - k_0} \right\rceil,

    which goes from v0 at k0 to K at K: the curriculum ends with the run, and N(k) never falls (for a
    non-decreasing ``schedule``). Built afresh instead, a K that grows would set N back: the eagerly
    calibrated K of a run that then goes on compiled (3× faster) is refitted upwards, and k / K falls."""
    schedule: Callable[[int], tuple]
    K: int
    k0: int = 0
    v0: int = 0

    def base_step(self, k: int) -> int:
        """The step of ``schedule`` that step k of the run takes: v(k)."""
        span = self.K - self.k0
        if span <= 0:
            return self.K
        d = min(max(k - self.k0, 0), span)
        return self.v0 + -(-(self.K - self.v0) * d // span)   # integer ceil: exact

    def __call__(self, k: int) -> tuple:
        return self.schedule(self.base_step(k))


def refit(old: Callable[[int], tuple], k0: int, K_old: int, new: Callable[[int], tuple], K: int) -> Refitted:
    """Continue the run's schedule ``old`` (horizon ``K_old``) at step ``k0`` with ``new``, built for the
    horizon ``K``: from the same share of the curriculum (``new``'s step ⌈v K / K_old⌉, v being ``old``'s
    step at k0), moved on by the few steps it may take until ``new``'s N is at least ``old``'s at k0 (the two
    round their stage lengths differently). See :class:`Refitted`."""
    if K_old < 1 or K < 1:
        raise ValueError(f"the horizons must be positive; got K_old={K_old}, K={K}")
    v = old.base_step(k0) if isinstance(old, Refitted) else min(max(k0, 0), K_old)
    v0 = min(-(-v * K // K_old), K)
    now = old(k0)[0]
    while v0 < K and new(v0)[0] < now:
        v0 += 1
    return Refitted(new, K, k0, v0)


@dataclass
class TangentWarmupSchedule:
    r"""sCM's tangent warm-up (Lu & Song 2025): r(k) = min(1, k / warmup_steps) multiplies the unstable
    term of the tangent (:class:`cmlite.continuous.SCMLoss`); returned in the N slot as a float, mu = 0
    (the target is stopgrad(theta)). ``warmup_steps = 0`` gives r = 1 from the start."""
    warmup_steps: int = 0

    def __call__(self, k: int) -> tuple[float, float]:
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0; got {self.warmup_steps}")
        return (1.0 if self.warmup_steps == 0 else min(1.0, max(k, 0) / self.warmup_steps)), 0.0
