r"""Low-dimensional data with exact references, and classic 2D data sets.

* :class:`GaussianMixture`: p_data = sum_k w_k N(mu_k, s_k^2 I). Then p_t = sum_k w_k N(mu_k, (s_k^2 + t^2) I),
  so the score, the denoiser D(x, t) = E[x_0 | x_t = x] and log p_t are all closed-form.
* :class:`Gaussian`: one component, whose consistency function is closed-form too.
* :class:`EmpiricalDenoiser`: the exact denoiser of a finite data set (it memorises).
* :func:`toy_2d`: two moons, swiss roll, checkerboard, rings, spirals, for which a teacher must be
  learned (:mod:`cmlite.teacher`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import append_dims, as_time
from .schedules import EPS


class GaussianMixture:
    r"""Isotropic Gaussian mixture sum_k w_k N(mu_k, s_k^2 I) in R^d, with exact p_t for every t.

    Args:
        means: (K, d) component means mu_k.
        stds: (K,) or scalar component standard deviations s_k.
        weights: (K,) mixture weights w_k (normalised here); uniform by default.

    Calling the object is its denoiser, so it can be passed wherever a teacher ``D(x, t)`` is expected.
    """

    def __init__(self, means, stds, weights=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError(f"means must have shape (K, d); got {tuple(self.means.shape)}")
        K = self.means.shape[0]
        self.stds = torch.as_tensor(stds, dtype=torch.float64).expand(K).clone()
        if (self.stds < 0).any():
            raise ValueError("stds must be non-negative")
        w = torch.ones(K, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (K,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be K={K} non-negative numbers with a positive sum")
        self.weights = w / w.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def std(self) -> float:
        """Overall per-coordinate standard deviation of p_data (a natural sigma_data)."""
        w, m = self.weights, self.means
        mean = (w[:, None] * m).sum(0)
        var = (w[:, None] * ((m - mean) ** 2 + self.stds[:, None] ** 2)).sum(0)
        return float(var.mean().sqrt())

    def _check_x(self, x: Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (batch, {self.dim}); got {tuple(x.shape)}")

    def sample(self, n: int, t: float = 0.0, generator: torch.Generator | None = None,
               dtype=torch.float32) -> Tensor:
        """Draw n samples of p_t (p_data for t = 0): x_0 ~ p_data, then x_t = x_0 + t z."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        var = self.stds[k, None] ** 2 + t ** 2
        return (self.means[k] + var.sqrt() * z).to(dtype)

    def _log_components(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        # log w_k + log N(x; mu_k, v_k I), shape (B, K); and v_k, shape (B, K)
        x64 = x.double()
        v = self.stds[None, :] ** 2 + t.double()[:, None] ** 2
        sq = torch.cdist(x64, self.means) ** 2
        logn = -0.5 * sq / v - 0.5 * self.dim * torch.log(2 * math.pi * v)
        return torch.log(self.weights)[None, :] + logn, v

    def log_prob(self, x: Tensor, t=0.0) -> Tensor:
        r"""log p_t(x) = log sum_k w_k N(x; mu_k, (s_k^2 + t^2) I). Shape (B,)."""
        self._check_x(x)
        lc, _ = self._log_components(x, as_time(t, x))
        return torch.logsumexp(lc, dim=1).to(x.dtype)

    def denoiser(self, x: Tensor, t) -> Tensor:
        r"""D(x, t) = E[x_0 | x_t = x] = sum_k r_k(x, t) (mu_k + s_k^2/(s_k^2 + t^2) (x - mu_k)),
        with posterior responsibilities r_k = softmax_k(log w_k + log N(x; mu_k, (s_k^2+t^2) I))."""
        self._check_x(x)
        t = as_time(t, x)
        lc, v = self._log_components(x, t)
        r = torch.softmax(lc, dim=1)  # (B, K)
        x64 = x.double()
        shrink = self.stds[None, :] ** 2 / v  # (B, K)
        post_means = self.means[None] + shrink[..., None] * (x64[:, None, :] - self.means[None])
        return (r[..., None] * post_means).sum(1).to(x.dtype)

    __call__ = denoiser

    def score(self, x: Tensor, t) -> Tensor:
        r"""grad_x log p_t(x) = (D(x, t) - x) / t^2."""
        t = as_time(t, x)
        return (self.denoiser(x, t) - x) / append_dims(t, x.ndim) ** 2


class Gaussian(GaussianMixture):
    r"""A single isotropic Gaussian N(mu, s^2 I), whose PF ODE integrates in closed form."""

    def __init__(self, mean, std: float):
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
        super().__init__(mean, [std])

    def consistency_function(self, x: Tensor, t, eps: float = EPS) -> Tensor:
        r"""The exact consistency function (solution of the PF ODE from (x, t) down to eps):

        .. math:: f(x, t) = \mu + (x - \mu) \sqrt{\frac{s^2 + \epsilon^2}{s^2 + t^2}}

        since dx/dt = t (x - mu)/(s^2 + t^2) is linear in x.
        """
        self._check_x(x)
        t = as_time(t, x).double()
        s2 = float(self.stds[0]) ** 2
        ratio = torch.sqrt((s2 + eps ** 2) / (s2 + t ** 2))
        mu = self.means[0]
        return (mu + (x.double() - mu) * ratio[:, None]).to(x.dtype)


class EmpiricalDenoiser:
    r"""Exact denoiser of the empirical distribution of a finite data set {x^(j)}:

    .. math:: D(x, t) = \sum_j \operatorname{softmax}_j\left(-\frac{\|x - x^{(j)}\|^2}{2 t^2}\right) x^{(j)}

    Its PF ODE maps noise onto the training points themselves: it memorises.
    """

    def __init__(self, data: Tensor, chunk: int = 4096):
        if data.ndim < 2:
            raise ValueError(f"data must have shape (n, ...); got {tuple(data.shape)}")
        self.data = data.flatten(1)
        self.shape = data.shape[1:]
        self.chunk = chunk

    def __call__(self, x: Tensor, t) -> Tensor:
        if x.shape[1:] != self.shape:
            raise ValueError(f"x must have shape (batch, {', '.join(map(str, self.shape))}); got {tuple(x.shape)}")
        t = as_time(t, x)
        xf = x.flatten(1).to(self.data.dtype)
        out = []
        for i in range(0, xf.shape[0], self.chunk):
            xi, ti = xf[i:i + self.chunk], t[i:i + self.chunk].to(self.data.dtype)
            logits = -torch.cdist(xi, self.data) ** 2 / (2 * ti[:, None] ** 2)
            out.append(torch.softmax(logits, dim=1) @ self.data)
        return torch.cat(out).reshape(x.shape).to(x.dtype)


def ring_mixture(K: int = 8, radius: float = 1.0, std: float = 0.1) -> GaussianMixture:
    """K equal Gaussians evenly spaced on a circle: the demo's 2D mixture."""
    a = torch.arange(K, dtype=torch.float64) * 2 * math.pi / K
    return GaussianMixture(radius * torch.stack([a.cos(), a.sin()], 1), std)


def _moons(n, g):
    k = torch.randint(0, 2, (n,), generator=g)
    a = torch.rand(n, generator=g) * math.pi
    x = torch.stack([a.cos(), a.sin()], 1)
    x = torch.where(k[:, None] == 0, x, torch.stack([1 - a.cos(), 0.5 - a.sin()], 1))
    return x + 0.05 * torch.randn(n, 2, generator=g)


def _swiss_roll(n, g):
    a = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    x = torch.stack([a * a.cos(), a * a.sin()], 1)
    return x + 0.5 * torch.randn(n, 2, generator=g)


def _checkerboard(n, g):
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g) * 2.0
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1)


def _rings(n, g):
    r = torch.randint(1, 5, (n,), generator=g).float()
    a = torch.rand(n, generator=g) * 2 * math.pi
    return r[:, None] * torch.stack([a.cos(), a.sin()], 1) + 0.08 * torch.randn(n, 2, generator=g)


def _spirals(n, g):
    a = torch.sqrt(torch.rand(n, generator=g)) * 3 * math.pi
    sign = torch.randint(0, 2, (n,), generator=g) * 2.0 - 1
    x = sign[:, None] * torch.stack([a * a.cos(), a * a.sin()], 1)
    return x + 0.3 * torch.randn(n, 2, generator=g)


_TOYS = {"moons": _moons, "swiss_roll": _swiss_roll, "checkerboard": _checkerboard,
         "rings": _rings, "spirals": _spirals}
# rough per-data-set standard deviations (100k samples), to rescale each to std ~= scale
_TOY_STD = {}


def toy_2d(name: str, n: int, generator: torch.Generator | None = None, scale: float = 0.5) -> Tensor:
    """n samples of a classic 2D data set, centred and scaled so that the per-coordinate standard
    deviation is about ``scale`` (0.5 = sigma_data). Names: moons, swiss_roll, checkerboard, rings, spirals."""
    if name not in _TOYS:
        raise ValueError(f"unknown 2D data set {name!r}; choose one of {sorted(_TOYS)}")
    if name not in _TOY_STD:
        ref = _TOYS[name](100_000, torch.Generator().manual_seed(0))
        _TOY_STD[name] = (ref.mean(0), float(ref.std(0).mean()))
    mean, std = _TOY_STD[name]
    return ((_TOYS[name](n, generator) - mean) / std * scale).float()


TOY_NAMES = tuple(_TOYS)
