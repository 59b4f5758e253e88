r"""Sample-quality metrics for low-dimensional samples (shape (n, d)).

FID needs Inception weights and images; on toy data we can do better: compare sample sets directly.

* :func:`sliced_wasserstein` -- SW_p, the L^p average over random directions of 1-D Wasserstein distances.
* :func:`mmd` -- unbiased squared maximum mean discrepancy with an RBF kernel.
* :func:`energy_distance` -- unbiased squared energy distance.
* :func:`log_likelihood` -- mean log-density of samples under an analytic density (GaussianMixture).
* :func:`off_mode_fraction` -- the share of samples further than k standard deviations from every mode of a
  Gaussian mixture (samples "between modes"), with :func:`off_mode_fraction_expected` for data itself.
* :func:`consistency_error` -- sup / RMS error of a model against an exact consistency function.
* :func:`data_floor` -- a metric between two independent data samples: the best a model can score at n.

Two-sample statistics are noisy at finite n; always compare a model's number with :func:`data_floor`.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from ._checks import as_time, check_time_range
from .schedules import EPS, T_MAX


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------

def _as_samples(x, name: str, min_n: int = 1) -> Tensor:
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception:
            raise ValueError(f"{name} must be a tensor or array of shape (n, d); got {type(x).__name__}") from None
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d) (n samples of dimension d); got shape {tuple(x.shape)}. "
                         "Flatten images with x.flatten(1).")
    if x.shape[0] < min_n:
        raise ValueError(f"{name} needs at least {min_n} sample(s); got {x.shape[0]}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one dimension (d >= 1); got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    x = x.detach()
    return x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float64)


def _as_pair(x, y, min_n: int = 1) -> tuple[Tensor, Tensor]:
    x, y = _as_samples(x, "x", min_n), _as_samples(y, "y", min_n)
    if x.shape[1] != y.shape[1]:
        raise ValueError("x and y must have the same trailing dimension d; "
                         f"got x: {tuple(x.shape)}, y: {tuple(y.shape)}")
    return x, y.to(x.device)


def _as_generator(generator) -> torch.Generator:
    if generator is None:
        return torch.Generator().manual_seed(0)
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise ValueError(f"generator must be a torch.Generator, an int seed or None; got {generator!r}")


# ----------------------------------------------------------------------------------------------
# sliced Wasserstein
# ----------------------------------------------------------------------------------------------

def _wasserstein_1d_pp(xs: Tensor, ys: Tensor, p: float) -> Tensor:
    r"""W_p^p between the empirical distributions of the columns of xs (n, L) and ys (m, L), each
    column sorted ascending. Exact: W_p^p = int_0^1 |F^{-1}(u) - G^{-1}(u)|^p du, where both quantile
    functions are step functions, constant between consecutive points of {i/n} U {j/m}."""
    n, m = xs.shape[0], ys.shape[0]
    if n == m:  # sort-matching
        return (xs - ys).abs().pow(p).mean(0)
    dev = xs.device
    u = torch.cat([torch.arange(1, n + 1, dtype=torch.float64, device=dev) / n,
                   torch.arange(1, m + 1, dtype=torch.float64, device=dev) / m]).sort().values
    u = torch.cat([torch.zeros(1, dtype=torch.float64, device=dev), u])
    w = u[1:] - u[:-1]                      # interval lengths (some are 0: shared break points)
    mid = (u[1:] + u[:-1]) / 2              # quantile index on each interval
    ix = torch.clamp((mid * n).floor().long(), max=n - 1)
    iy = torch.clamp((mid * m).floor().long(), max=m - 1)
    return (w[:, None] * (xs[ix] - ys[iy]).abs().pow(p)).sum(0)


def sliced_wasserstein(x, y, n_projections: int = 256, generator=None, p: float = 2, chunk: int = 64) -> float:
    r"""Sliced Wasserstein-p distance between two sample sets x (n, d) and y (m, d):

    .. math:: SW_p(\mu, \nu) = \left( \mathbb E_{\theta \sim U(S^{d-1})}
              W_p^p(\theta^\top_\# \mu, \theta^\top_\# \nu) \right)^{1/p}

    estimated with ``n_projections`` random unit directions. Each 1-D W_p between the empirical
    distributions is exact: sort-matching when n = m, otherwise the quantile functions are compared
    on the common grid of break points {i/n} U {j/m}, where both are constant (this equals
    sort-matching of the two sets each repeated to lcm(n, m) points).

    Args:
        generator: torch.Generator or int seed for the directions. ``None`` means seed 0, so that
            repeated calls (e.g. several models against the same data) use the same directions.
        p: order, >= 1. chunk: directions processed at a time (memory (n + m) x chunk).

    Returns a Python float (0 for identical sets). For N(0, I) vs N(delta, I), SW_2 = |delta|/sqrt(d).
    """
    x, y = _as_pair(x, y)
    if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections must be a positive integer; got {n_projections!r}")
    if not (isinstance(p, (int, float)) and math.isfinite(p) and p >= 1):
        raise ValueError(f"p must be a finite number >= 1; got {p!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be positive; got {chunk}")
    g = _as_generator(generator)
    x, y = x.double(), y.double()  # sorting is cheap: always float64
    d = x.shape[1]
    theta = torch.randn(n_projections, d, generator=g, dtype=torch.float64)
    theta = (theta / theta.norm(dim=1, keepdim=True)).to(x.device)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, n_projections, chunk):
        th = theta[i:i + chunk].T                               # (d, L)
        xs = (x @ th).sort(dim=0).values
        ys = (y @ th).sort(dim=0).values
        total = total + _wasserstein_1d_pp(xs, ys, p).sum()
    return float((total / n_projections) ** (1.0 / p))


# ----------------------------------------------------------------------------------------------
# kernel two-sample statistics
# ----------------------------------------------------------------------------------------------

def _pairwise_sum(a: Tensor, b: Tensor | None, fn: Callable[[Tensor], Tensor], chunk: int) -> Tensor:
    """sum_{i, j} fn(||a_i - b_j||^2) (b = None: b = a, using the symmetry), block by block so that
    memory stays ~ chunk^2 numbers. Blocks are computed in a's dtype and summed in float64."""
    sym = b is None
    b = a if sym else b
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    a2, b2 = (a * a).sum(1), (b * b).sum(1)
    for i in range(0, a.shape[0], chunk):
        ai, ai2 = a[i:i + chunk], a2[i:i + chunk]
        for j in range(i if sym else 0, b.shape[0], chunk):
            bj, bj2 = b[j:j + chunk], b2[j:j + chunk]
            sq = torch.addmm(ai2[:, None] + bj2[None, :], ai, bj.T, alpha=-2).clamp_min_(0)
            if sym and j == i:
                sq.fill_diagonal_(0)  # exact zeros despite rounding
            s = fn(sq).sum().double()  # torch sums blockwise-pairwise: accurate in float32 too
            total = total + (2 * s if sym and j != i else s)
    return total


def _work_dtype(x: Tensor, y: Tensor) -> torch.dtype:
    # float32 inputs (model samples) take the fast path; float64 inputs get float64 throughout
    return torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32


def _check_chunk(chunk) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer; got {chunk!r}")
    return chunk


def median_bandwidth(x, y, max_points: int = 1000) -> float:
    r"""Median heuristic: the median pairwise distance ||z_i - z_j|| (i < j) of the pooled samples,
    using at most ``max_points`` of them (an evenly strided, deterministic subset)."""
    x, y = _as_pair(x, y)
    z = torch.cat([x, y])
    if z.shape[0] > max_points:
        z = z[torch.linspace(0, z.shape[0] - 1, max_points).long()]
    dist = torch.pdist(z)
    h = float(dist.median()) if dist.numel() else 0.0
    if not h > 0:
        raise ValueError("median heuristic failed: all pooled samples coincide; pass bandwidths explicitly")
    return h


def mmd(x, y, bandwidths: float | Sequence[float] | None = None, chunk: int = 2048) -> float:
    r"""Unbiased estimate of the squared maximum mean discrepancy with an RBF kernel
    (Gretton et al. 2012, eq. 3):

    .. math:: \widehat{MMD}^2 = \frac{1}{n(n-1)}\sum_{i \ne j} k(x_i, x_j)
              + \frac{1}{m(m-1)}\sum_{i \ne j} k(y_i, y_j) - \frac{2}{nm}\sum_{i, j} k(x_i, y_j),
              \quad k(a, b) = \frac{1}{|H|}\sum_{h \in H} e^{-\|a - b\|^2 / (2h^2)}

    Args:
        bandwidths: one h or a list H (the kernel is their average); ``None`` = median heuristic
            (:func:`median_bandwidth`).
        chunk: block size; memory ~ chunk^2 floats, so 10k x 10k runs in a few tens of MB.

    Returns a float; its expectation is 0 iff the distributions are equal, so small negative values
    occur by chance. Its spread at a given n is best read off :func:`data_floor`.
    """
    x, y = _as_pair(x, y, min_n=2)
    chunk = _check_chunk(chunk)
    if bandwidths is None:
        H = [median_bandwidth(x, y)]
    else:
        H = [float(bandwidths)] if isinstance(bandwidths, (int, float)) else [float(h) for h in bandwidths]
        if len(H) == 0 or not all(math.isfinite(h) and h > 0 for h in H):
            raise ValueError(f"bandwidths must be positive finite numbers; got {bandwidths!r}")
    wd = _work_dtype(x, y)
    x, y = x.to(wd), y.to(wd)
    n, m, est = x.shape[0], y.shape[0], 0.0
    for h in H:
        def k(sq: Tensor, c=-1.0 / (2 * h * h)) -> Tensor:
            return sq.mul_(c).exp_()
        # k(z, z) = 1: remove the diagonal from the within-sample sums
        kxx = (_pairwise_sum(x, None, k, chunk) - n) / (n * (n - 1))
        kyy = (_pairwise_sum(y, None, k, chunk) - m) / (m * (m - 1))
        kxy = _pairwise_sum(x, y, k, chunk) / (n * m)
        est += float(kxx + kyy - 2 * kxy) / len(H)
    return est


def energy_distance(x, y, chunk: int = 2048) -> float:
    r"""Unbiased estimate of the squared energy distance (Szekely & Rizzo 2013):

    .. math:: D^2 = 2\,\mathbb E\|X - Y\| - \mathbb E\|X - X'\| - \mathbb E\|Y - Y'\|,

    with U-statistics (i != j) for the within-sample terms. D^2 >= 0 with equality iff the
    distributions are equal (the estimate can be slightly negative). Chunked like :func:`mmd`.
    """
    x, y = _as_pair(x, y, min_n=2)
    chunk = _check_chunk(chunk)
    wd = _work_dtype(x, y)
    x, y = x.to(wd), y.to(wd)
    n, m = x.shape[0], y.shape[0]
    dist = torch.sqrt_
    exy = _pairwise_sum(x, y, dist, chunk) / (n * m)
    exx = _pairwise_sum(x, None, dist, chunk) / (n * (n - 1))  # diagonal terms are ~0
    eyy = _pairwise_sum(y, None, dist, chunk) / (m * (m - 1))
    return float(2 * exy - exx - eyy)


# ----------------------------------------------------------------------------------------------
# likelihood and consistency error
# ----------------------------------------------------------------------------------------------

def log_likelihood(x, density, t: float = 0.0) -> tuple[float, float]:
    r"""Mean log-density of samples under an analytic density and its standard error:

    .. math:: \bar\ell = \frac1n \sum_i \log p_t(x_i), \qquad
              \mathrm{se} = \frac{\mathrm{std}_i \log p_t(x_i)}{\sqrt n}

    ``density`` needs ``.log_prob(x, t=0.0)`` (e.g. :class:`cmlite.toys.GaussianMixture`). For samples
    of the density itself, the expectation is minus its differential entropy; samples that collapse
    onto the modes score *higher*, so read this together with a two-sample metric. Returns (mean, se).
    """
    x = _as_samples(x, "x", min_n=2)
    if not callable(getattr(density, "log_prob", None)):
        raise ValueError(f"density must have a .log_prob(x, t) method; got {type(density).__name__}")
    dim = getattr(density, "dim", None)
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"x must have shape (n, {dim}) to match the density; got {tuple(x.shape)}")
    lp = density.log_prob(x, t=t).double()
    if lp.shape != (x.shape[0],):
        raise ValueError(f"density.log_prob must return shape (n,) = ({x.shape[0]},); got {tuple(lp.shape)}")
    return float(lp.mean()), float(lp.std() / math.sqrt(lp.numel()))


def off_mode_fraction(x, mixture, k: float = 3.0) -> float:
    r"""Fraction of the samples x (n, d) that lie further than ``k`` standard deviations from *every* mode
    of an isotropic Gaussian mixture: :math:`\frac1n \#\{i : \|x_i - \mu_j\| > k s_j \ \forall j\}`.

    It counts the samples between modes (the "bridges" of a one-step sampler), which the sliced
    Wasserstein distance barely sees. Data drawn from the mixture itself scores
    :func:`off_mode_fraction_expected` (1.1% in 2D at k = 3), up to the binomial noise
    sqrt(q (1 - q) / n). ``mixture`` needs ``means`` (K, d) and ``stds`` (K,), e.g.
    :class:`cmlite.toys.GaussianMixture`.
    """
    x = _as_samples(x, "x")
    means = torch.as_tensor(mixture.means) if hasattr(mixture, "means") and hasattr(mixture, "stds") else None
    if means is None or means.ndim != 2:
        raise ValueError("mixture must have .means of shape (K, d) and .stds of shape (K,) "
                         f"(e.g. cmlite.GaussianMixture); got {type(mixture).__name__}")
    if x.shape[1] != means.shape[1]:
        raise ValueError(f"x must have shape (n, {means.shape[1]}) to match the mixture; got {tuple(x.shape)}")
    if not (isinstance(k, (int, float)) and math.isfinite(k) and k > 0):
        raise ValueError(f"k must be a positive number; got {k!r}")
    dist = torch.cdist(x.double(), means.double().to(x.device))          # (n, K)
    scaled = dist / torch.as_tensor(mixture.stds, dtype=torch.float64, device=x.device)[None]
    return float((scaled > k).all(1).double().mean())


def off_mode_fraction_expected(mixture, k: float = 3.0) -> float:
    r"""What :func:`off_mode_fraction` gives for data of the mixture itself, if its modes are well separated
    (each k s_j ball holds only its own component): :math:`P(\chi_d > k) = Q(d/2, k^2/2)`, the upper
    regularised incomplete gamma function; :math:`e^{-k^2/2}` = 1.11% for d = 2, k = 3."""
    d = int(torch.as_tensor(mixture.means).shape[1])
    return float(torch.special.gammaincc(torch.tensor(d / 2, dtype=torch.float64),
                                         torch.tensor(k * k / 2, dtype=torch.float64)))


def consistency_error(model, f_exact, x: Tensor, t) -> dict[str, float]:
    r"""Error of a consistency model against an exact consistency function at the points (x, t):

    * ``'sup'``: max_{i, k} |f_theta(x_i, t_i)_k - f(x_i, t_i)_k| (sup norm over samples and coordinates),
    * ``'max_l2'``: max_i ||f_theta(x_i, t_i) - f(x_i, t_i)||_2 (Theorem 1's sup over x of the norm),
    * ``'rms'``: sqrt(mean_{i, k} (f_theta - f)^2),
    * ``'mean_l2'``: mean_i ||f_theta(x_i, t_i) - f(x_i, t_i)||_2.

    ``f_exact(x, t)`` is e.g. :meth:`cmlite.toys.Gaussian.consistency_function`; ``t`` a number or a (B,)
    tensor in [eps, T] (``model.eps``/``model.T`` when present).
    """
    if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a tensor of shape (batch, ...); got {getattr(x, 'shape', type(x).__name__)}")
    eps, T = float(getattr(model, "eps", EPS)), float(getattr(model, "T", T_MAX))
    t = as_time(t, x)
    check_time_range(t, eps, T)
    with torch.no_grad():
        out, ref = model(x, t), f_exact(x, t)
    if out.shape != x.shape or ref.shape != x.shape:
        raise ValueError(f"model and f_exact must return x's shape {tuple(x.shape)}; "
                         f"got {tuple(out.shape)} and {tuple(ref.shape)}")
    diff = (out.double() - ref.double()).flatten(1)
    norms = diff.norm(dim=1)
    return {"sup": float(diff.abs().max()), "max_l2": float(norms.max()),
            "rms": float(diff.pow(2).mean().sqrt()), "mean_l2": float(norms.mean())}


# ----------------------------------------------------------------------------------------------
# data-vs-data floor
# ----------------------------------------------------------------------------------------------

def data_floor(sample_fn: Callable[..., Tensor], metric: Callable[..., float], n: int, repeats: int = 5,
               generator: torch.Generator | int | None = None, m: int | None = None, **metric_kwargs) -> dict:
    r"""The metric between two *independent* data samples of sizes n and m (default m = n), repeated:
    the floor a perfect model would score with n samples against m data points.

    ``sample_fn(n, generator=g)`` draws n samples of shape (n, d) (e.g. ``GaussianMixture.sample``;
    wrap others in a lambda). ``metric(x, y, **metric_kwargs)`` returns a float (e.g.
    :func:`sliced_wasserstein`). ``generator``: torch.Generator or int seed (None = seed 0).

    Returns ``{'mean', 'std', 'values'}`` over ``repeats`` independent pairs (std with ddof = 1;
    the standard error of the mean is std / sqrt(repeats)).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}")
    m = n if m is None else m
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be a positive integer; got {m!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
        raise ValueError(f"repeats must be an integer >= 2 (to estimate a spread); got {repeats!r}")
    g = _as_generator(generator)
    values = []
    for _ in range(repeats):
        a, b = sample_fn(n, generator=g), sample_fn(m, generator=g)
        values.append(float(metric(a, b, **metric_kwargs)))
    v = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "values": values}
