"""Networks F_theta(x_in, c_noise) for low-dimensional data. (Image U-Nets live in their own module.)"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    """Embed a scalar c_noise (shape (B,)) as [cos(w_i c), sin(w_i c)] with geometric frequencies
    w_i from 1 to ``max_freq``."""

    def __init__(self, dim: int = 64, max_freq: float = 16.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even; got {dim}")
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(max_freq), dim // 2)), persistent=False)

    def forward(self, c: Tensor) -> Tensor:
        a = c[:, None].to(self.freqs.dtype) * self.freqs[None]
        return torch.cat([a.cos(), a.sin()], dim=1)


class MLP(nn.Module):
    """A residual MLP with a time embedding added in every block, for data of shape (B, dim).

    ``forward(x, c_noise)``; ``dropout`` as in improved CT."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, emb_dim: int = 64,
                 dropout: float = 0.0, max_freq: float = 16.0):
        super().__init__()
        self.dim = dim
        self.embed = nn.Sequential(SinusoidalEmbedding(emb_dim, max_freq), nn.Linear(emb_dim, hidden), nn.SiLU(),
                                   nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)) for _ in range(depth))
        self.emb_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP expects x of shape (batch, {self.dim}); got {tuple(x.shape)}")
        e = self.embed(c_noise.to(x.dtype))
        h = self.inp(x)
        for block, proj in zip(self.blocks, self.emb_proj):
            h = h + block(h + proj(e))
        return self.out(h)
