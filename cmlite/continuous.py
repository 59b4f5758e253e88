r"""Continuous-time consistency models: the limit N -> infinity of consistency distillation and training,
sCM (TrigFlow) and ECT's shrinking pairs. Every loss is called by the :class:`~cmlite.training.Trainer`
like the discrete ones, ``loss(model, x, target=None, N=None, ...)``, and returns per-sample losses (B,).

**Continuous-time CD / CT** (Song et al. 2023, Appendix B.3). For t = tau(u), u ~ U[0, 1], the discrete
loss with squared L2 and the target f_{theta^-} = sg(f_theta) has, as N -> infinity,
(N - 1) grad L^N -> grad L^infinity with the pseudo-objective

.. math:: \mathcal L^\infty = \mathbb E\Big[\, 2\,\lambda(t)\,\tau'(u)\;
          \tfrac1d\, f_\theta(x_t, t)^\top \mathrm{sg}(g) \Big],\qquad
          g = \frac{d}{dt} f_{\theta^-}(x_t, t) = \partial_t f_{\theta^-} + \partial_x f_{\theta^-}\, v

along the PF ODE, v = dx_t/dt: CD uses the teacher, v = (x_t - D_phi(x_t, t)) / t; CT the one-sample
estimate v = (x_t - x) / t = z. (1/d as :func:`cmlite.losses.l2`.) The tangent g is one forward-mode
derivative (:func:`jvp` over (x_t, t) with tangents (v, 1)), computed with the target weights and
no gradient; then f_theta(x_t, t) is evaluated with gradient. The value of L^infinity means nothing (it
can be negative); its gradient is the point. The losses therefore expose ``last_metrics`` (0-d tensors:
the tangent's size), which the Trainer logs.

**sCM** (Lu & Song 2025, "Simplifying, stabilizing and scaling continuous-time consistency models"): a
TrigFlow model (``ConsistencyModel(net, parameterization="trigflow")``), tangent normalisation, tangent
warm-up, a learned adaptive weighting and the JVP rearrangement; see :class:`SCMLoss`.

**ECT** (Geng et al. 2024, "Consistency Models Made Easy"): a discrete pair r < t whose gap shrinks in
stages towards continuous time, no JVP; see :class:`ECTLoss` and :class:`cmlite.schedules.ECTSchedule`.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
import torch.autograd.forward_ad as fwAD

from ._checks import append_dims
from .devices import device_rng_state, set_device_rng_state
from .losses import check_teacher, draw, get_distance, lambda_weight
from .parameterization import trigflow_c_noise
from .schedules import EPS, RHO, SIGMA_DATA, T_MAX

# ---------------------------------------------------------------- times


def karras_time(u: Tensor, eps: float = EPS, T: float = T_MAX, rho: float = RHO) -> Tensor:
    r"""The Karras map tau(u) = (eps^{1/rho} + u (T^{1/rho} - eps^{1/rho}))^rho, u in [0, 1]: the continuous
    version of :func:`cmlite.schedules.karras_boundaries` (t_i = tau((i - 1) / (N - 1)))."""
    a, b = eps ** (1 / rho), T ** (1 / rho)
    return (a + u * (b - a)) ** rho


def karras_time_derivative(u: Tensor, eps: float = EPS, T: float = T_MAX, rho: float = RHO) -> Tensor:
    r"""tau'(u) = rho (T^{1/rho} - eps^{1/rho}) (eps^{1/rho} + u (T^{1/rho} - eps^{1/rho}))^{rho - 1}."""
    a, b = eps ** (1 / rho), T ** (1 / rho)
    return rho * (b - a) * (a + u * (b - a)) ** (rho - 1)


def _normal_cdf(z: float) -> float:
    """Phi(z) as a Python float (erfc keeps the lower tail's relative accuracy; no tensor, so no host-device copy)."""
    return 0.5 * math.erfc(-z / math.sqrt(2))


def truncated_lognormal(B: int, P_mean: float, P_std: float, lo: float, hi: float, device=None,
                        dtype=torch.float32, generator=None) -> Tensor:
    r"""B times with ln t ~ N(P_mean, P_std^2) conditioned on lo <= t <= hi, by inverse-CDF sampling:
    t = exp(P_mean + P_std Phi^{-1}(Phi(a) + U (Phi(b) - Phi(a)))), a, b = (ln lo - P_mean) / P_std, (ln hi ...).
    (No clamping, so no mass piles up at the ends.)"""
    a, b = _normal_cdf((math.log(lo) - P_mean) / P_std), _normal_cdf((math.log(hi) - P_mean) / P_std)
    u = torch.rand(B, dtype=torch.float64, device=device, generator=generator)
    p = (a + u * (b - a)).clamp(1e-300, 1 - 1e-16)
    t = torch.exp(P_mean + P_std * torch.special.ndtri(p))
    return t.clamp(lo, hi).to(dtype)


class _RNGState:
    """The global RNG state (CPU, and the device's on CUDA or mps) at construction; :meth:`restore` rewinds to it,
    so that two forward passes draw the same dropout masks (ECT's shared mask; the JVP and the online
    pass of the continuous losses differentiate the same function)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.dev = device_rng_state(device)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        set_device_rng_state(self.device, self.dev)


def _unwrap(model):
    """The module inside a DistributedDataParallel wrapper (for passes that need no gradient)."""
    return getattr(model, "module", model)


def _per_sample_norm(g: Tensor) -> Tensor:
    return g.flatten(1).norm(dim=1)


def jvp(fn: Callable, primals: tuple, tangents: tuple) -> tuple[Tensor, Tensor]:
    r"""(fn(*primals), J_fn(primals) tangents): one forward-mode pass with dual tensors
    (``torch.autograd.forward_ad``), the product ``torch.func.jvp`` computes. The module's parameters enter
    as constants (zero tangent); run it under ``torch.no_grad()`` when no gradient is wanted. (The first
    forward-mode pass of a process imports torch's compiler stack, which tensor-scalar arithmetic on dual
    tensors goes through: a few seconds, once.)"""
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, torch.empty_like(p).copy_(t)) for p, t in zip(primals, tangents)]
        out, tangent = fwAD.unpack_dual(fn(*duals))
        return out, torch.zeros_like(out) if tangent is None else tangent


def module_jvp(module: Callable, primals: tuple, tangents: tuple, **cond) -> tuple[Tensor, Tensor]:
    """(module(*primals, **cond), its JVP along ``tangents``) by ``torch.func.jvp``: the form of :func:`jvp`
    that ``torch.compile`` traces (:class:`CompiledJVP`)."""
    return torch.func.jvp(lambda *a: module(*a, **cond), primals, tangents)


class CompiledJVP:
    """:func:`module_jvp` compiled with ``torch.compile`` (Inductor), for the continuous-time losses' tangent
    pass when the rest of the step is compiled (the losses' ``compile_jvp``).

    Compiling the whole ``torch.func.jvp`` call is what gives correct tangents: calling a network compiled
    in place with dual tensors (``torch.autograd.forward_ad``) does not (its graph drops their tangents).
    ``options`` are Inductor's; the losses pass ``fallback_random=True`` (:data:`JVP_COMPILE_OPTIONS`) for
    this graph and the network's, so that both draw their dropout masks with torch's own random ops from
    the same RNG state, as in eager mode."""

    def __init__(self, options: dict | None = None):
        # static shapes: a recompilation (another module, another batch size) must not turn the sizes
        # symbolic, which forward-mode AD cannot trace in torch 2.13 (make_dual needs concrete strides)
        self.fn = torch.compile(module_jvp, dynamic=False, options=dict(options or {}) or None)

    def __call__(self, module: Callable, primals: tuple, tangents: tuple, **cond) -> tuple[Tensor, Tensor]:
        return self.fn(module, primals, tangents, **cond)


#: Inductor options of a compiled step with a JVP pass: torch's random ops (``fallback_random``), so that
#: the compiled JVP graph and the compiled network draw the same dropout masks after an RNG replay.
JVP_COMPILE_OPTIONS = {"fallback_random": True}


def tangent_pass(module: Callable, primals: tuple, tangents: tuple, compiled: CompiledJVP | None = None,
                 **cond) -> tuple[Tensor, Tensor]:
    """(module(*primals, **cond), its JVP along ``tangents``), without gradient: by ``compiled`` (a
    :class:`CompiledJVP`) when given, else by eager forward mode (:func:`jvp`)."""
    with torch.no_grad():
        if compiled is not None:
            return compiled(module, primals, tangents, **cond)
        return jvp(lambda *a: module(*a, **cond), primals, tangents)


def consistency_tangent(f: Callable, x_t: Tensor, t: Tensor, v: Tensor, compiled: CompiledJVP | None = None,
                        **cond) -> tuple[Tensor, Tensor]:
    r"""(f(x_t, t), g) with g = d/dt f(x_t, t) along dx_t/dt = v, i.e. the Jacobian-vector product

    .. math:: g = \partial_t f(x_t, t) + \partial_x f(x_t, t)\, v

    computed by one forward-mode pass (:func:`tangent_pass` over (x_t, t) with tangents (v, 1): eager, or
    ``compiled``, a :class:`CompiledJVP`), without gradient. ``f`` is a consistency model (e.g. the target
    network); ``cond`` goes to it."""
    return tangent_pass(f, (x_t, t), (v, torch.ones_like(t)), compiled, **cond)


class _JVPPass:
    """The tangent pass of a continuous-time loss: eager forward mode by default; :meth:`compile_jvp` makes it
    a :class:`CompiledJVP` (the :class:`~cmlite.training.Trainer` calls it when it compiles the network, with
    the network's Inductor options merged with :attr:`compile_options`)."""

    #: Inductor options the network needs beside this loss's compiled JVP pass (the Trainer merges them)
    compile_options = JVP_COMPILE_OPTIONS
    compiled_jvp: CompiledJVP | None = None

    def compile_jvp(self, options: dict | None = None) -> None:
        """Compute the tangent with a :class:`CompiledJVP` with ``options`` (plus :attr:`compile_options`)."""
        self.compiled_jvp = CompiledJVP({**(options or {}), **self.compile_options})


# ---------------------------------------------------------------- continuous-time CD and CT (CM, Appendix B.3)
class ContinuousConsistencyLoss(_JVPPass):
    r"""Shared machinery of :class:`ContinuousCTLoss` and :class:`ContinuousCDLoss`.

    Args:
        weighting: lambda(t), a name of :func:`cmlite.losses.lambda_weight` ('uniform', 'snr', ...), 'ict' or
            'ict_huber'. The per-sample factor is w = lambda(t) tau'(u) (the limit of (N - 1) L^N for uniform n).
            'ict' (lambda = 1/(t_{n+1} - t_n) with squared L2) gives w = 1, the limit of L^N itself, since
            lambda Delta t = 1. 'ict_huber' is improved CT's lambda with its pseudo-Huber distance where
            ||Delta f|| >> c (most pairs): the distance's gradient is then the unit vector Delta f / ||Delta f||
            -> g / ||g|| (use ``normalize``) and nothing cancels lambda = 1/Delta t ~ 1/tau'(u), so
            w = (1/t)^{(rho - 1)/rho} (tau'(u) up to its constant, scaled to w(1) = 1).
        time_sampling: 'uniform' (u ~ U[0, 1], t = tau(u) on the Karras map: CM's continuous-time losses)
            or 'lognormal' (ln t ~ N(P_mean, P_std^2) truncated to [eps, T]: the limit of improved CT's
            discretised lognormal indices; needs weighting 'ict' or 'ict_huber').
        normalize: None, or c > 0 to replace g by g / (||g|| + c) (per sample, full norm): sCM's tangent
            normalisation, and the limit of a pseudo-Huber distance whose c shrinks with the gap (its
            gradient, Delta t g / sqrt(Delta t^2 ||g||^2 + c^2 Delta t^2), is g / sqrt(||g||^2 + c^2)).
        share_dropout: replay the RNG state so that the JVP and the online pass draw the same dropout masks.

    ``last_metrics`` after a call: ``tangent_rms`` (batch mean of ||g|| / sqrt(d), before normalisation)
    and ``weight`` (batch mean of w), 0-d tensors.
    """

    def __init__(self, weighting: str = "uniform", time_sampling: str = "uniform", eps: float = EPS,
                 T: float = T_MAX, rho: float = RHO, sigma_data: float = SIGMA_DATA, P_mean: float = -1.1,
                 P_std: float = 2.0, normalize: float | None = None, share_dropout: bool = True):
        if time_sampling not in ("uniform", "lognormal"):
            raise ValueError(f"time_sampling must be 'uniform' or 'lognormal'; got {time_sampling!r}")
        if weighting not in ("ict", "ict_huber"):
            lambda_weight(weighting, torch.ones(1), 2 * torch.ones(1))  # fail early on an unknown name
            if time_sampling == "lognormal":
                raise ValueError("time_sampling='lognormal' needs weighting='ict' or 'ict_huber' (the limits of "
                                 "improved CT's loss); other weightings are defined for time_sampling='uniform'")
        if normalize is not None and not normalize > 0:
            raise ValueError(f"normalize must be None or a positive constant c; got {normalize!r}")
        self.weighting, self.time_sampling = weighting, time_sampling
        self.eps, self.T, self.rho, self.sigma_data = eps, T, rho, sigma_data
        self.P_mean, self.P_std, self.normalize, self.share_dropout = P_mean, P_std, normalize, share_dropout
        self.last_metrics: dict[str, Tensor] = {}

    def sample_times(self, B: int, device=None, dtype=torch.float32, generator=None) -> tuple[Tensor, Tensor]:
        """(t, w): B times and their weights w (see the class docstring)."""
        if self.time_sampling == "lognormal":
            t = truncated_lognormal(B, self.P_mean, self.P_std, self.eps, self.T, device, torch.float64, generator)
            return t.to(dtype), self.weight(t).to(dtype)
        u = torch.rand(B, dtype=torch.float64, device=device, generator=generator)
        t = karras_time(u, self.eps, self.T, self.rho)
        return t.to(dtype), self.weight(t, u).to(dtype)

    def weight(self, t: Tensor, u: Tensor | None = None) -> Tensor:
        """w = lambda(t) tau'(u) for uniform u; w = 1 for 'ict'; w = t^{-(rho - 1)/rho} for 'ict_huber'."""
        if self.weighting == "ict":
            return torch.ones_like(t)
        if self.weighting == "ict_huber":
            return t ** (-(self.rho - 1) / self.rho)
        return lambda_weight(self.weighting, t, t, self.sigma_data) * karras_time_derivative(
            u, self.eps, self.T, self.rho)

    def velocity(self, x: Tensor, z: Tensor, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        """v = dx_t/dt, the PF-ODE velocity at (x_t, t) (CT: z; CD: the teacher's)."""
        raise NotImplementedError

    def __call__(self, model, x: Tensor, target=None, N=None, generator=None, shard=None, **cond) -> Tensor:
        """Draw t (with its weight) and z (see :func:`cmlite.losses.draw` for ``shard``) and return
        :meth:`at`'s per-sample losses. ``N`` is ignored (continuous time)."""
        B, rest = x.shape[0], x.shape[1:]
        tw = draw(lambda b: torch.stack(self.sample_times(b, x.device, x.dtype, generator), 1), B, shard)
        z = draw(lambda b: torch.randn((b, *rest), dtype=x.dtype, device=x.device, generator=generator), B, shard)
        return self.at(model, x, z, tw[:, 0], tw[:, 1], target, **cond)

    def at(self, model, x: Tensor, z: Tensor, t: Tensor, w: Tensor, target=None, **cond) -> Tensor:
        r"""The per-sample pseudo-objective 2 w f_theta(x_t, t)^T sg(g) / d for given noise z, times t and
        weights w (shape (B,)); g by :func:`consistency_tangent` with the target (``None``: the online
        weights under stop-gradient, mu = 0)."""
        x_t = x + append_dims(t, x.ndim) * z
        with torch.no_grad():
            v = self.velocity(x, z, x_t, t, **cond)
        rng = _RNGState(x.device) if self.share_dropout else None
        _, g = consistency_tangent(_unwrap(model if target is None else target), x_t, t, v,
                                   compiled=self.compiled_jvp, **cond)
        if rng is not None:
            rng.restore()
        d = x[0].numel()
        g_norm = _per_sample_norm(g)
        self.last_metrics = {"tangent_rms": (g_norm / math.sqrt(d)).mean().detach(), "weight": w.mean().detach()}
        if self.normalize is not None:
            g = g / append_dims(g_norm + self.normalize, g.ndim)
        f = model(x_t, t, **cond)
        return 2 * w * (f * g).flatten(1).sum(1) / d


class ContinuousCTLoss(ContinuousConsistencyLoss):
    r"""Continuous-time consistency training (Song et al. 2023, Appendix B.3): the N -> infinity limit of
    Algorithm 3 with squared L2 and a stop-gradient target; v = (x_t - x)/t = z, no teacher.

    ``ContinuousCTLoss()`` is the paper's form (uniform u on the Karras map, lambda = 1). The limit of improved
    CT is ``ContinuousCTLoss(weighting="ict", time_sampling="lognormal")``, optionally with ``normalize=c``.
    Use with ``schedule=None`` (or any schedule with mu = 0)."""

    def velocity(self, x, z, x_t, t, **cond):
        return z


class ContinuousCDLoss(ContinuousConsistencyLoss):
    r"""Continuous-time consistency distillation (Song et al. 2023, Appendix B.3): the N -> infinity limit of
    Algorithm 2 with squared L2; v = (x_t - D_phi(x_t, t)) / t from the teacher denoiser D_phi (for any ODE
    solver: its order does not matter in the limit)."""

    def __init__(self, teacher: Callable, **kw):
        check_teacher(teacher)
        super().__init__(**kw)
        self.teacher = teacher

    def velocity(self, x, z, x_t, t, **cond):
        return (x_t - self.teacher(x_t, t, **cond)) / append_dims(t, x_t.ndim)


# ---------------------------------------------------------------- sCM (TrigFlow)
class SCMLoss(_JVPPass):
    r"""sCM's continuous-time objective (Lu & Song 2025, Algorithm 1) for a TrigFlow model
    (``ConsistencyModel(net, parameterization="trigflow", adaptive_weight=True)``).

    With TrigFlow time s, x_s = cos(s) x_0 + sin(s) sigma_d z, f_theta = cos(s) x_s - sin(s) sigma_d F_theta and
    F^- = F_{theta^-}(x_s / sigma_d, c_noise(s)) (stop-gradient), the tangent

    .. math:: g = \cos(s)\,\frac{d f_{\theta^-}}{ds}
              = -\cos^2(s)\,(\sigma_d F^- - v) \;-\; r\,\cos(s)\sin(s)\,\Big(x_s + \sigma_d \frac{dF^-}{ds}\Big),
              \qquad v = \frac{dx_s}{ds}

    (v = cos(s) sigma_d z - sin(s) x_0 for sCT; v = (cos(s) x_s - D_phi(x_s / cos s, sigma_d tan s)) / sin(s)
    for sCD from an EDM teacher D_phi), is normalised, g <- g / (||g|| + c), and the per-sample loss is

    .. math:: \mathcal L = \frac{e^{w_\phi(s)}}{D}\,\big\| F_\theta - F^- - g \big\|^2 - w_\phi(s)

    (w_phi = 0 for a model without ``adaptive_weight``). Its gradient in theta at theta^- = theta is
    -2 e^{w} g^T dF_theta / D: the continuous-time consistency gradient with weight 1/(sigma_d tan s).
    Time: ln(sigma_d tan s) ~ N(P_mean, P_std^2), i.e. s = arctan(e^tau / sigma_d) (EDM's lognormal).

    * Tangent warm-up: r ramps 0 -> 1 (:class:`cmlite.schedules.TangentWarmupSchedule`, passed as ``N``;
      ``N=None``: r = 1). r multiplies the term with dF^-/ds, the unstable one early in training.
    * JVP rearrangement: the tangent inputs of the network's own forward-mode pass are pre-multiplied by the
      bounded factor sigma_d cos(s) sin(s): (x_s / sigma_d, c_noise) get tangents (cos s sin s v,
      sigma_d cos s sin s c_noise'(s)), so the JVP returns sigma_d cos(s) sin(s) dF^-/ds directly. Computing
      dF^-/ds first and multiplying after would form the large intermediates v / sigma_d and c_noise'(s)
      (1 / (4 sin s cos s) for c_noise = ln(sigma_d tan s) / 4, unbounded at both ends; here sigma_d / 4).

    ``last_metrics``: ``tangent_rms`` (||g|| / sqrt(D) before normalisation), ``adaptive_weight`` (mean
    w_phi), ``residual`` (||F_theta - F^- - g||^2 / D), ``warmup`` (r).
    """

    def __init__(self, teacher: Callable | None = None, P_mean: float = -1.0, P_std: float = 1.4,
                 tangent_c: float = 0.1, share_dropout: bool = True):
        if teacher is not None and (isinstance(teacher, Tensor) or not callable(teacher)):
            raise TypeError("teacher must be None (sCT) or a callable EDM denoiser D(x, t) (sCD); "
                            f"got {type(teacher).__name__}")
        if not tangent_c > 0:
            raise ValueError(f"tangent_c must be positive; got {tangent_c!r}")
        self.teacher, self.P_mean, self.P_std = teacher, P_mean, P_std
        self.tangent_c, self.share_dropout = tangent_c, share_dropout
        self.last_metrics: dict[str, Tensor] = {}

    @staticmethod
    def _check(m) -> None:
        if getattr(m, "parameterization", None) != "trigflow":
            raise ValueError("the sCM loss needs a TrigFlow model: ConsistencyModel(net, parameterization='trigflow'"
                             ", adaptive_weight=True); got "
                             f"{getattr(m, 'parameterization', type(m).__name__)!r}")

    def __call__(self, model, x: Tensor, target=None, N=None, generator=None, shard=None, **cond) -> Tensor:
        """Draw s and z (``shard`` as :func:`cmlite.losses.draw`) and return :meth:`at`'s per-sample losses.
        ``N``: the tangent warm-up factor r in [0, 1] (None: 1)."""
        m = _unwrap(model)
        self._check(m)
        B, rest = x.shape[0], x.shape[1:]
        tau = draw(lambda b: torch.randn(b, dtype=x.dtype, device=x.device, generator=generator), B, shard)
        s = torch.atan(torch.exp(tau * self.P_std + self.P_mean) / m.sigma_data)
        z = draw(lambda b: torch.randn((b, *rest), dtype=x.dtype, device=x.device, generator=generator), B, shard)
        return self.at(model, x, z, s, target, r=1.0 if N is None else float(N), **cond)

    def velocity(self, x: Tensor, z: Tensor, x_s: Tensor, s: Tensor, sigma_data: float, **cond) -> Tensor:
        """v = dx_s/ds: sCT cos(s) sigma_d z - sin(s) x_0; sCD (cos(s) x_s - D_phi(x_s / cos s, sigma_d tan s)) / sin s."""
        c, sn = (append_dims(a, x.ndim) for a in (torch.cos(s), torch.sin(s)))
        if self.teacher is None:
            return c * sigma_data * z - sn * x
        D = self.teacher(x_s / c, sigma_data * torch.tan(s), **cond)
        return (c * x_s - D) / sn

    def tangent(self, tm, x_s: Tensor, s: Tensor, v: Tensor, r: float, **cond) -> tuple[Tensor, Tensor]:
        r"""(F^-, g) for the target TrigFlow model ``tm``, g before normalisation, by the rearranged JVP."""
        sd = tm.sigma_data
        c, sn = torch.cos(s), torch.sin(s)
        cs = append_dims(c * sn, x_s.ndim)
        c_noise_dot = {"t": sd * c * sn, "edm": torch.full_like(s, sd / 4)}[tm.trig_c_noise]  # sd cos sin c_noise'
        F_minus, sdcs_dF = tangent_pass(tm.net, (x_s / sd, trigflow_c_noise(s, tm.trig_c_noise, sd)),
                                        (cs * v, c_noise_dot), self.compiled_jvp, **cond)
        with torch.no_grad():
            c2 = append_dims(c * c, x_s.ndim)
            g = -c2 * (sd * F_minus - v) - r * (cs * x_s + sdcs_dF)
        return F_minus, g

    def at(self, model, x: Tensor, z: Tensor, s: Tensor, target=None, r: float = 1.0, **cond) -> Tensor:
        """The per-sample sCM loss for given noise z (shaped like x) and TrigFlow times s (shape (B,))."""
        m = _unwrap(model)
        self._check(m)
        tm = _unwrap(model if target is None else target)
        sd = m.sigma_data
        x_s = append_dims(torch.cos(s), x.ndim) * x + append_dims(torch.sin(s), x.ndim) * sd * z
        with torch.no_grad():
            v = self.velocity(x, z, x_s, s, sd, **cond)
        rng = _RNGState(x.device) if self.share_dropout else None
        F_minus, g = self.tangent(tm, x_s, s, v, r, **cond)
        if rng is not None:
            rng.restore()
        D = x[0].numel()
        g_norm = _per_sample_norm(g)
        g = g / append_dims(g_norm + self.tangent_c, g.ndim)
        F, w = model(x_s, s, raw=True, **cond)
        err = (F - F_minus - g).flatten(1).pow(2).sum(1) / D
        self.last_metrics = {"tangent_rms": (g_norm / math.sqrt(D)).mean().detach(),
                             "residual": err.mean().detach(),
                             "warmup": torch.full((), float(r), device=x.device)}
        if w is None:
            return err
        self.last_metrics["adaptive_weight"] = w.mean().detach()
        return torch.exp(w) * err - w


class SCTLoss(SCMLoss):
    """sCT: :class:`SCMLoss` without a teacher (v = cos(s) sigma_d z - sin(s) x_0)."""

    def __init__(self, **kw):
        super().__init__(teacher=None, **kw)


class SCDLoss(SCMLoss):
    """sCD: :class:`SCMLoss` with a teacher EDM denoiser D_phi(x, t)."""

    def __init__(self, teacher: Callable, **kw):
        if teacher is None:
            raise TypeError("SCDLoss needs a teacher denoiser D(x, t); for training without one use SCTLoss")
        super().__init__(teacher=teacher, **kw)


# ---------------------------------------------------------------- ECT
def ect_pair(t: Tensor, N, k: float = 8.0, b: float = 1.0, eps: float = EPS) -> Tensor:
    r"""ECT's second time r < t (Geng et al. 2024, the mapping function p(r | t, stage)):

    .. math:: r = \max\Big(t\,\big(1 - \tfrac{n(t)}{N}\big),\ \epsilon\Big),\qquad n(t) = 1 + k\,\mathrm{sigmoid}(-b\,t)

    with N = q^stage from :class:`cmlite.schedules.ECTSchedule`. A pair with r = eps has the boundary value
    f(x_eps, eps) = x_eps as its target (the official code clamps at 0 and uses x_0): early stages are
    denoising, diffusion training, and the gap shrinks by q per stage towards continuous time."""
    N = float(N)
    if not N >= 1:
        raise ValueError(f"ECT's level N = q^stage must be >= 1 (from ECTSchedule); got {N!r}")
    n = 1 + k * torch.sigmoid(-b * t)
    return torch.clamp(t * (1 - n / N), min=eps)


class ECTLoss:
    r"""Easy consistency tuning's loss (Geng et al. 2024): t from the lognormal (P_mean = -1.1, P_std = 2.0,
    truncated to [eps, T]), r = :func:`ect_pair` (t, N), one shared noise z for both points and the same
    dropout mask for both passes (the RNG state is replayed),

    .. math:: \mathcal L = \lambda(t, r)\, d\big(f_\theta(x + t z, t),\ \mathrm{sg}\, f_\theta(x + r z, r)\big)

    with lambda = 1/(t - r) (``weighting="ict"``, the paper's; any :func:`cmlite.losses.lambda_weight` name
    with (t_n, t_{n+1}) = (r, t), e.g. 'karras' = 1/t^2 + 1/sigma_d^2 as the official code) and d pseudo-Huber
    (or any distance of :func:`cmlite.losses.get_distance`). Discrete, no JVP. Use with
    :class:`cmlite.schedules.ECTSchedule`, whose N = q^stage the Trainer passes as ``N``.

    ``last_metrics``: ``gap`` (batch mean of (t - r) / t) and ``boundary_share`` (share of pairs with r = eps).
    """

    def __init__(self, distance="pseudo_huber", weighting: str = "ict", P_mean: float = -1.1, P_std: float = 2.0,
                 k: float = 8.0, b: float = 1.0, eps: float = EPS, T: float = T_MAX,
                 sigma_data: float = SIGMA_DATA, share_dropout: bool = True):
        lambda_weight(weighting, torch.ones(1), 2 * torch.ones(1))  # fail early on an unknown name
        self.distance = get_distance(distance)
        self.weighting, self.P_mean, self.P_std, self.k, self.b = weighting, P_mean, P_std, k, b
        self.eps, self.T, self.sigma_data, self.share_dropout = eps, T, sigma_data, share_dropout
        self.last_metrics: dict[str, Tensor] = {}

    def __call__(self, model, x: Tensor, target=None, N=2, generator=None, shard=None, **cond) -> Tensor:
        """Draw t and z (``shard`` as :func:`cmlite.losses.draw`), pair r = ect_pair(t, N), return :meth:`at`."""
        if N is None:
            raise ValueError("ECTLoss needs N = q^stage from a schedule: Trainer(..., schedule=ECTSchedule(K))")
        B, rest = x.shape[0], x.shape[1:]
        t = draw(lambda b: truncated_lognormal(b, self.P_mean, self.P_std, self.eps * (1 + 1e-6), self.T, x.device,
                                               x.dtype, generator), B, shard)
        z = draw(lambda b: torch.randn((b, *rest), dtype=x.dtype, device=x.device, generator=generator), B, shard)
        r = ect_pair(t, N, self.k, self.b, self.eps)
        return self.at(model, x, z, t, r, target, **cond)

    def at(self, model, x: Tensor, z: Tensor, t: Tensor, r: Tensor, target=None, **cond) -> Tensor:
        """The per-sample ECT loss for given noise z and times r < t (shape (B,))."""
        tm = model if target is None else target
        rng = _RNGState(x.device) if self.share_dropout else None
        f_t = model(x + append_dims(t, x.ndim) * z, t, **cond)
        if rng is not None:
            rng.restore()
        with torch.no_grad():
            f_r = tm(x + append_dims(r, x.ndim) * z, r, **cond)
        self.last_metrics = {"gap": ((t - r) / t).mean().detach(), "boundary_share": (r <= self.eps).float().mean()}
        return lambda_weight(self.weighting, r, t, self.sigma_data) * self.distance(f_t, f_r)
