r"""Multistep sampling times for image models, found by greedy ternary search on FID (the paper's §6).

:func:`search_times` drives :func:`cmlite.sampling.ternary_search_times` with a Fréchet distance
(:class:`cmlite.image.fid.FIDScorer`: the in-project classifier's features, or Inception's) of uint8
samples: tau_1 = T, then each further tau_j is chosen by a ternary search over log tau in
(eps, tau_{j-1}) with the earlier times fixed, every evaluation with the same noise (``seed``); each tau_j
is the best time the search scored (lowest FID), not the midpoint of its last bracket. It
returns the times, the FID after each added step (the first is the one-step FID), the trail of every
evaluation, and -- for comparison -- the FID of two-step sampling at the official CIFAR-10 choice
tau_2 = 0.585 (index 11 of the N = 18 Karras grid, counting from T = index 0) with the same noise.

    model, info = load_run("runs/cifar10-cd", "cuda")
    scorer = FIDScorer(classifier_features(clf), train.images, "cuda")
    result = search_times(model, info, scorer, n_steps=3, n=5000, iters=8)
    result["times"], result["fid"], result["official"]

Cost: 1 + 2 * iters * (n_steps - 1) evaluations of ``n`` samples each (33 for 3 steps and 8 iterations).
After ``iters`` iterations each tau is known to within a factor exp(ln(tau_{j-1}/eps) (2/3)^iters / 2)
(about x1.5 for the second time point after 8 iterations).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import Tensor

from ..sampling import sample, ternary_search_times
from ..schedules import EPS, T_MAX, karras_boundaries
from .data import to_uint8
from .edit import ModelFn

#: The official CIFAR-10 two-step time (Song et al. 2023): index 11 of the N = 18 Karras grid from T.
OFFICIAL_CIFAR10_TAU = 0.585


def grid_index(tau: float, N: int = 18) -> tuple[int, float]:
    """The index (0 = T) of the N-point Karras grid point nearest to tau in log time, and that point."""
    grid = karras_boundaries(N).flip(0)
    i = int((grid.log() - math.log(tau)).abs().argmin())
    return i, float(grid[i])


def fid_score(scorer) -> Callable[[Tensor], float]:
    """A score for :func:`~cmlite.sampling.ternary_search_times`: float samples in [-1, 1] -> uint8 -> FID.

    ``scorer``: an object with ``score(uint8 images) -> float`` (a :class:`~cmlite.image.fid.FIDScorer`)
    or such a callable."""
    fn = scorer.score if hasattr(scorer, "score") else scorer

    def score(x: Tensor) -> float:
        return float(fn(to_uint8(x)))
    return score


def search_times(model, info: dict, scorer, n_steps: int = 3, n: int = 2000, iters: int = 8, seed: int = 0,
                 device=None, batch_size: int = 1000, precision: str = "bf16", official_tau: float = OFFICIAL_CIFAR10_TAU,
                 class_labels: Tensor | None = None, clamp: bool = False, progress: bool = False) -> dict:
    """Greedy ternary search of ``n_steps`` sampling times on FID for a consistency model of a run.

    Args:
        model, info: from :func:`cmlite.image.run.load_run` (``info['shape']`` gives the image shape,
            ``info['num_classes']`` > 0: class labels cycle 0..K-1 unless ``class_labels`` is given).
        scorer: a :class:`~cmlite.image.fid.FIDScorer` (or a callable on uint8 images), lower is better.
        n: samples per evaluation; iters: ternary-search iterations per added time point; seed: the noise.
        device, batch_size, precision: where and how the network runs (bf16 autocast on CUDA).
        clamp: clamp every step's output to [-1, 1] (the official sampler does; ``cmlite sample`` and
            ``cmlite eval`` do not, so the default keeps the FIDs comparable with theirs).

    Returns ``{'times', 'fid', 'trail', 'official', 'grid_index', 'n', 'iters', 'evaluations', 'seconds'}``:
    ``times[k]`` (k >= 1) is the best time the search scored for step k + 1 and ``fid[k]`` its FID, the FID
    with the first k + 1 times; ``trail`` lists every evaluation as
    ``{'ts', 'fid'}``; ``official`` is ``{'ts': [T, official_tau], 'fid'}`` with the same noise;
    ``grid_index`` the nearest N = 18 grid index of each found time.
    """
    C, H, W = info["shape"]
    if device is None:
        params = getattr(model, "parameters", None)
        first = next(params(), None) if params is not None else None
        device = first.device if first is not None else "cpu"
    device = torch.device(device)
    K = int(info.get("num_classes", 0) or 0)
    if K and class_labels is None:
        class_labels = torch.arange(n, device=device) % K
    f = ModelFn(model, class_labels, clamp=clamp, precision=precision, batch_size=batch_size)
    base = fid_score(scorer)
    trail: list = []

    def score(x: Tensor) -> float:
        v = base(x)
        if progress:
            print(f"  [time search] evaluation {len(trail) + 1}: FID {v:.4g}", flush=True)
        return v
    t0 = time.monotonic()
    times, fids = ternary_search_times(f, score, n_steps, (n, C, H, W), seed=seed, iters=iters, device=device,
                                       trail=trail)
    seconds = time.monotonic() - t0
    official = None
    if official_tau is not None and EPS < official_tau < T_MAX:
        g = torch.Generator(device=device).manual_seed(seed)  # the search's noise: compare like with like
        x = sample(f, (n, C, H, W), [T_MAX, official_tau], generator=g, device=device)
        official = {"ts": [T_MAX, official_tau], "fid": base(x), "grid_index": grid_index(official_tau)[0]}
    return {"times": [float(t) for t in times], "fid": [float(v) for v in fids],
            "trail": [{"ts": [float(t) for t in ts], "fid": float(v)} for ts, v in trail],
            "official": official, "grid_index": [grid_index(t)[0] for t in times],
            "n": n, "iters": iters, "seed": seed, "evaluations": len(trail), "seconds": seconds}
