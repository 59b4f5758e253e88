"""Callbacks for :meth:`cmlite.training.Trainer.fit` on images: a periodic grid of samples.

``trainer.fit(callback=SampleGrid(shape, path="grid.png"), callback_every=500)`` draws a fixed set of
one-step samples (or ODE samples from a teacher) from the EMA network, shows the grid in a notebook
(updating one figure in place) and/or writes it as a PNG.
"""
from __future__ import annotations

import torch

from ..parameterization import EDMDenoiser
from ..schedules import T_MAX
from .data import make_grid, save_png, to_uint8
from .run import generate


class SampleGrid:
    """Draw ``n`` samples of ``shape`` (C, H, W) from ``trainer.ema`` with fixed noise (seed) and show them.

    Consistency models: Algorithm 1 at times ``ts`` (default [T]: one step). Diffusion teachers
    (:class:`EDMDenoiser`): Heun on ``teacher_N`` grid points. ``path``: write the grid there as PNG;
    ``show``: display it in a notebook (IPython), replacing the previous grid."""

    def __init__(self, shape, n: int = 32, nrow: int = 8, ts=None, teacher_N: int = 18, seed: int = 0,
                 path=None, show: bool = True, extra_args: dict | None = None):
        self.shape, self.n, self.nrow, self.ts, self.teacher_N = tuple(shape), n, nrow, ts, teacher_N
        self.seed, self.path, self.show, self.extra_args = seed, path, show, extra_args or {}
        self._handle = None
        self.last = None

    @torch.no_grad()
    def images(self, model, device) -> torch.Tensor:
        """The uint8 samples (n, C, H, W) of ``model`` for this grid's fixed noise."""
        g = torch.Generator(device=device).manual_seed(self.seed)
        x = T_MAX * torch.randn((self.n, *self.shape), generator=g, device=device)
        x = generate(model, x, teacher_N=self.teacher_N if isinstance(model, EDMDenoiser) else None,
                     ts=self.ts or [T_MAX], generator=g, extra_args=self.extra_args)
        return to_uint8(x).cpu()

    def __call__(self, trainer) -> None:
        grid = make_grid(self.images(trainer.ema, trainer.device), nrow=self.nrow)
        self.last = grid
        if self.path is not None:
            save_png(self.path, grid)
        if self.show:
            self._display(grid, trainer.step)

    def _display(self, grid, step) -> None:
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return
        if get_ipython() is None:
            return
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(4, 4 * grid.shape[1] / grid.shape[2]))
        img = grid.permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"EMA samples at step {step}")
        ax.axis("off")
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)
