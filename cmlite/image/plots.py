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
    return _finish(fig, title, show)


def search_trails(searches: dict, title: str | None = None, ncols: int = 3, show: bool = True):
    """The trails of time searches (:func:`cmlite.image.timesearch.search_times` results, by name), one
    panel each: every evaluated tau_2, then every tau_3 with tau_2 fixed, against its FID, beside the
    one-step FID and the official two-step choice tau_2 = 0.585. Shows the figure unless ``show=False``,
    and returns it."""
    import matplotlib.pyplot as plt
    cols = min(len(searches), ncols)
    rows = -(-len(searches) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(searches):]:
        ax.set_visible(False)
    for ax, (name, s) in zip(axes.flat, searches.items()):
        for k in (2, 3):
            pts = sorted((e["ts"][k - 1], e["fid"]) for e in s["trail"]
                         if len(e["ts"]) == k and e["ts"][:k - 1] == s["times"][:k - 1])
            if pts:
                ax.plot(*zip(*pts), "o-", ms=3, label=f"searching tau_{k}")
        ax.axhline(s["fid"][0], c="k", ls=":", lw=1, label="one step")
        if s.get("official"):
            ax.plot([s["official"]["ts"][1]], [s["official"]["fid"]], "r*", ms=10, label="tau_2 = 0.585")
        ax.set_xscale("log"), ax.set_xlabel("tau"), ax.set_ylabel("classifier FID")
        ax.set_title(f"{name}: times {', '.join(f'{t:.3g}' for t in s['times'])}", fontsize=9)
        ax.legend(fontsize=7)
    return _finish(fig, title, show)


def _finish(fig, title: str | None, show: bool):
    """Title, tight layout, ``plt.show()`` unless ``show=False``; returns the figure."""
    import matplotlib.pyplot as plt
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if show:
        plt.show()
    return fig
