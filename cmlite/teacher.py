r"""A diffusion teacher for data without an analytic score: denoising score matching with EDM's
weighting (Karras et al. 2022), trained by the same loop as the consistency models.

.. math:: \mathcal L_{DSM} = \mathbb E_{x, t, z}\; \lambda(t)\, \| D_\phi(x + t z, t) - x \|^2,\quad
          \ln t \sim \mathcal N(P_{mean}, P_{std}^2),\quad \lambda(t) = \frac{t^2 + \sigma_d^2}{(t \sigma_d)^2}
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._checks import append_dims
from .losses import draw
from .schedules import SIGMA_DATA


class DenoisingScoreMatchingLoss:
    """EDM's denoising score-matching loss (P_mean = -1.2, P_std = 1.2), per sample, averaged over
    the data dimensions. Called like the consistency losses: ``loss(model, x, target=None, N=None)``;
    ``target`` and ``N`` are ignored (a diffusion model needs neither)."""

    def __init__(self, sigma_data: float = SIGMA_DATA, P_mean: float = -1.2, P_std: float = 1.2):
        self.sigma_data, self.P_mean, self.P_std = sigma_data, P_mean, P_std

    def __call__(self, model, x: Tensor, target=None, N=None, generator=None, shard=None, **cond) -> Tensor:
        B, rest = x.shape[0], x.shape[1:]
        rnd = draw(lambda b: torch.randn(b, dtype=x.dtype, device=x.device, generator=generator), B, shard)
        t = torch.exp(rnd * self.P_std + self.P_mean)
        z = draw(lambda b: torch.randn((b, *rest), dtype=x.dtype, device=x.device, generator=generator), B, shard)
        return self.at(model, x, z, t, **cond)

    def at(self, model, x: Tensor, z: Tensor, t: Tensor, **cond) -> Tensor:
        """The loss for given noise z and times t (shape (B,)); ``cond`` goes to the model."""
        lam = (t ** 2 + self.sigma_data ** 2) / (t * self.sigma_data) ** 2
        D = model(x + append_dims(t, x.ndim) * z, t, **cond)
        return lam * (D - x).flatten(1).pow(2).mean(1)
