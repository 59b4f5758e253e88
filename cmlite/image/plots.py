"""Figures of image batches for notebooks: labelled rows, one image per column."""
from __future__ import annotations

from torch import Tensor


def image_rows(rows: list[tuple[str, Tensor]], title: str | None = None, ncols: int | None = None,
               fontsize: int = 8, show: bool = True):
    """A grid of images with a label per row: ``rows = [(label, images (n, C, H, W) in [-1, 1]), ...]``,
    C = 1 (grey) or 3 (RGB); ``ncols`` images per row (default: the longest row). Shows the figure
    (``plt.show()``) unless ``show=False``, and returns it."""
    import matplotlib.pyplot as plt
    ncols = ncols or max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(ncols + 1.3, 1.05 * len(rows) + 0.3), squeeze=False)
    for i, (label, ims) in enumerate(rows):
        ims = ims.detach().float().clamp(-1, 1).cpu()
        for j in range(ncols):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j < len(ims):
                im = (ims[j].permute(1, 2, 0) + 1) / 2
                ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray", vmin=0, vmax=1,
                          interpolation="nearest")
        axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=fontsize)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if show:
        plt.show()
    return fig
