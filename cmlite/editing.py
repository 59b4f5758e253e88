r"""Zero-shot editing with a consistency model (Song et al. 2023, Algorithm 4).

An edit is described by an invertible linear map A (orthogonal here, so A^{-1} = A^T), and a mask
Omega in the transformed space: 1 = generate, 0 = keep. Given a reference y and times
tau_1 > tau_2 > ... in [eps, T], Algorithm 4 is

.. math::
    y &\leftarrow A^{-1}[(Ay) \odot (1 - \Omega)] \\
    x &\sim \mathcal N(y, \tau_1^2 I),\quad x \leftarrow f_\theta(x, \tau_1) \\
    x &\leftarrow A^{-1}[(Ay) \odot (1 - \Omega) + (Ax) \odot \Omega] \\
    &\text{for } n = 2, \dots:\quad x \sim \mathcal N(x, (\tau_n^2 - \epsilon^2) I),\;
      x \leftarrow f_\theta(x, \tau_n),\; \text{project again.}

So the output keeps the "known" part (Ay)(1 - Omega) exactly, and the model fills in the rest.
One exception: with Omega = 1 (stroke guidance) the first line would set y = 0, so there the first
noise is centred on y itself, as in SDEdit (:meth:`EditOperator.start`).

Operators (all share :class:`EditOperator`'s interface ``A(x)``, ``A_inv(x)``, ``mask(x)``):

* :class:`Inpaint` -- A = I, Omega = the missing pixels.
* :class:`Colorize` -- per-pixel 3x3 orthogonal A whose first row is the luminance direction.
* :class:`SuperResolve` -- per p x p patch orthogonal A whose first row is the patch mean direction.
* :class:`StrokeGuided` -- A = I, Omega = 1 everywhere (SDEdit-like; :data:`STROKE_TS`).
* :class:`KeepCoordinates` -- low-dimensional conditional generation: keep some coordinates.

plus :func:`denoise` and :func:`interpolate` (with :func:`slerp`), the paper's other zero-shot uses
(method.md section 7).
"""
from __future__ import annotations

import math
import operator
from typing import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._checks import as_time, check_time_range
from .schedules import EPS, T_MAX

#: ITU-R 601 luminance weights (R, G, B) used by the paper's colorization operator.
LUMINANCE = (0.2989, 0.5870, 0.1140)
#: The paper's two time points for stroke-guided generation.
STROKE_TS = (5.38, 2.24)


# ----------------------------------------------------------------------------------------------
# orthogonal matrices
# ----------------------------------------------------------------------------------------------

def orthogonal_completion(v, dtype=torch.float64) -> Tensor:
    r"""A deterministic n x n orthogonal matrix Q whose first row is v / ||v||.

    Built by Householder QR of the n x (n+1) matrix [v | I] (Gram-Schmidt of v, e_1, ..., e_n), with
    the sign of the first row fixed so that Q[0] = +v/||v||. Rows 2..n span the orthogonal complement
    of v; Q Q^T = Q^T Q = I to rounding.
    """
    v = torch.as_tensor(v, dtype=torch.float64).flatten()
    if v.numel() < 1 or not torch.isfinite(v).all() or float(v.norm()) == 0.0:
        raise ValueError("v must be a non-empty finite vector with a non-zero norm")
    n = v.numel()
    q, _ = torch.linalg.qr(torch.cat([v[:, None], torch.eye(n, dtype=torch.float64)], dim=1), mode="complete")
    Q = q.T.contiguous()  # rows = orthonormal basis, first row = +-v/|v|
    if float(Q[0] @ v) < 0:
        Q[0] = -Q[0]
    return Q.to(dtype)


def colorization_matrix(dtype=torch.float64) -> Tensor:
    r"""The per-pixel 3x3 orthogonal matrix of colorization (Algorithm 4 / method.md section 7).

    First row: (0.2989, 0.5870, 0.1140) / ||.||, so (A x)_1 = luminance(x) / ||w||; rows 2, 3 span
    the colour (chrominance) directions orthogonal to it. See :func:`orthogonal_completion`.
    """
    return orthogonal_completion(LUMINANCE, dtype=dtype)


def patch_matrix(p: int, dtype=torch.float64) -> Tensor:
    r"""The p^2 x p^2 orthogonal matrix of super-resolution, acting on a p x p patch flattened in
    row-major order. First row: (1, ..., 1) / p, so (A x)_1 = p * (patch mean); the other rows span
    the zero-mean patch patterns. See :func:`orthogonal_completion`.
    """
    p = _check_patch_size(p)
    return orthogonal_completion(torch.ones(p * p), dtype=dtype)


def _check_patch_size(p) -> int:
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise ValueError(f"patch size p must be a positive integer; got {p!r}")
    return p


# ----------------------------------------------------------------------------------------------
# operators
# ----------------------------------------------------------------------------------------------

class EditOperator:
    r"""Interface of an editing operator: an orthogonal linear map A, its inverse, and a mask Omega.

    Subclasses implement ``A(x)``, ``A_inv(x)`` (both shape-preserving: (B, ...) -> (B, ...)),
    ``mask(x)`` (Omega, broadcastable to ``A(x)``: 1 = generate, 0 = keep) and may extend ``check(x)``.
    ``default_ts`` is a suggested tuple of times (or None).
    """

    default_ts: tuple[float, ...] | None = None

    def check(self, x: Tensor) -> None:
        """Raise ValueError if x is not a valid input for this operator."""
        if not isinstance(x, Tensor):
            raise ValueError(f"expected a torch.Tensor; got {type(x).__name__}")
        if x.ndim < 2:
            raise ValueError(f"x must have shape (batch, ...) with at least 2 dims; got {tuple(x.shape)}")

    def A(self, x: Tensor) -> Tensor:
        """The orthogonal map A, applied to every sample of x (shape preserved)."""
        raise NotImplementedError

    def A_inv(self, x: Tensor) -> Tensor:
        """A^{-1} = A^T."""
        raise NotImplementedError

    def mask(self, x: Tensor) -> Tensor:
        """Omega in the transformed space, broadcastable to A(x): 1 = generate, 0 = keep."""
        raise NotImplementedError

    def keep(self, y: Tensor) -> Tensor:
        r"""The part of y that an edit keeps: A^{-1}[(A y) (1 - Omega)] (first line of Algorithm 4)."""
        self.check(y)
        return self.A_inv(self.A(y) * (1 - self.mask(y)))

    def start(self, y: Tensor) -> Tensor:
        r"""Centre of the first noise draw x ~ N(start(y), tau_1^2 I): :meth:`keep` (y) as in Algorithm 4,
        so the generated part of y never matters. :class:`StrokeGuided` overrides it."""
        return self.keep(y)

    def project(self, x: Tensor, y: Tensor) -> Tensor:
        r"""A^{-1}[(A y)(1 - Omega) + (A x) Omega]: x's generated part with y's kept part (Algorithm 4)."""
        self.check(x)
        if x.shape != y.shape:
            raise ValueError(f"x and y must have the same shape; got {tuple(x.shape)} and {tuple(y.shape)}")
        om = self.mask(x)
        return self.A_inv(self.A(y) * (1 - om) + self.A(x) * om)


def _as_binary_mask(mask, name="mask") -> Tensor:
    m = torch.as_tensor(mask)
    if m.dtype == torch.bool:
        m = m.double()
    m = m.double()
    if not ((m == 0) | (m == 1)).all():
        raise ValueError(f"{name} must contain only 0 and 1 (1 = generate, 0 = keep)")
    return m


def _broadcast_mask(m: Tensor, x: Tensor, what: str) -> Tensor:
    try:
        shape = torch.broadcast_shapes(m.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(f"{what} of shape {tuple(m.shape)} does not broadcast to the data shape {tuple(x.shape)}")
    return m.to(dtype=x.dtype, device=x.device)


class Inpaint(EditOperator):
    r"""Inpainting: A = I, Omega = ``mask`` (1 = missing pixel to generate, 0 = known pixel to keep).

    ``mask`` must broadcast to the data shape, e.g. (H, W), (1, 1, H, W) or (B, C, H, W) for images,
    (d,) for (B, d) data. Works on any data shape.
    """

    def __init__(self, mask):
        self.omega = _as_binary_mask(mask)

    def A(self, x: Tensor) -> Tensor:
        return x

    def A_inv(self, x: Tensor) -> Tensor:
        return x

    def mask(self, x: Tensor) -> Tensor:
        return _broadcast_mask(self.omega, x, "inpainting mask")


def box_mask(H: int, W: int, top: int, left: int, height: int, width: int) -> Tensor:
    """An (H, W) inpainting mask that is 1 (generate) inside the box [top:top+height, left:left+width]
    and 0 elsewhere."""
    if min(H, W, height, width) <= 0 or top < 0 or left < 0 or top + height > H or left + width > W:
        raise ValueError(f"box (top={top}, left={left}, height={height}, width={width}) must be non-empty "
                         f"and lie inside the {H}x{W} image")
    m = torch.zeros(H, W)
    m[top:top + height, left:left + width] = 1
    return m


class StrokeGuided(EditOperator):
    r"""Stroke-guided generation (SDEdit-like): A = I, Omega = 1 everywhere, so nothing is kept
    exactly; y (a stroke painting) only sets the starting point x ~ N(y, tau_1^2 I). Suggested times
    :data:`STROKE_TS` = (5.38, 2.24) (the paper's).

    Note: taken literally, line 1 of Algorithm 4, y <- A^{-1}[(Ay)(1 - Omega)], would set y = 0 when
    Omega = 1 and erase the strokes. Here (as in SDEdit) the first noise is centred on y itself
    (:meth:`start` returns y); every later projection is the identity, so the edit is multistep
    consistency sampling started from N(y, tau_1^2 I).
    """

    default_ts = STROKE_TS

    def start(self, y: Tensor) -> Tensor:
        self.check(y)
        return y

    def A(self, x: Tensor) -> Tensor:
        return x

    def A_inv(self, x: Tensor) -> Tensor:
        return x

    def mask(self, x: Tensor) -> Tensor:
        return torch.ones((), dtype=x.dtype, device=x.device)


class KeepCoordinates(EditOperator):
    r"""Conditional generation on low-dimensional data: A = I, keep the listed coordinates of y
    (Omega = 0 there) and generate the others (Omega = 1).

    ``keep`` indexes the features of a sample flattened, i.e. x.flatten(1)[:, keep]; for (B, d)
    data these are plain coordinates. Negative indices count from the end.
    """

    def __init__(self, keep: Sequence[int] | int):
        try:
            keep = [operator.index(keep)] if not hasattr(keep, "__len__") else [operator.index(k) for k in keep]
        except TypeError:
            raise ValueError(f"keep must be an integer or a list of integer coordinates; got {keep!r}") from None
        if len(keep) == 0:
            raise ValueError("keep must list at least one coordinate (otherwise use StrokeGuided)")
        self.keep_idx = keep

    def check(self, x: Tensor) -> None:
        super().check(x)
        d = x[0].numel()
        for k in self.keep_idx:
            if not -d <= k < d:
                raise ValueError(f"coordinate {k} is out of range for samples with {d} features")

    def A(self, x: Tensor) -> Tensor:
        return x

    def A_inv(self, x: Tensor) -> Tensor:
        return x

    def mask(self, x: Tensor) -> Tensor:
        self.check(x)
        m = torch.ones(x[0].numel(), dtype=x.dtype, device=x.device)
        m[self.keep_idx] = 0
        return m.reshape(x.shape[1:])


class Colorize(EditOperator):
    r"""Colorization: A acts on the channel dimension (dim 1, of size 3) of every pixel with the
    orthogonal matrix :func:`colorization_matrix` M, (A x)[:, i] = sum_j M_ij x[:, j]. Omega = channels 2
    and 3 of A x (the chrominance); channel 1 (luminance / ||w||) is kept, so an edit reproduces the
    luminance of y exactly. Works on (B, 3, H, W) images and on (B, 3, ...) in general (e.g. (B, 3)).

    Build y from a grayscale (luminance) image with :meth:`y_from_gray`.
    """

    def __init__(self):
        self.M = colorization_matrix()

    def check(self, x: Tensor) -> None:
        super().check(x)
        if x.shape[1] != 3:
            raise ValueError(f"colorization needs 3 channels in dim 1: shape (batch, 3, ...); got {tuple(x.shape)}")

    def _apply(self, M: Tensor, x: Tensor) -> Tensor:
        self.check(x)
        M = M.to(dtype=x.dtype, device=x.device)
        return torch.einsum("ij,bj...->bi...", M, x)

    def A(self, x: Tensor) -> Tensor:
        return self._apply(self.M, x)

    def A_inv(self, x: Tensor) -> Tensor:
        return self._apply(self.M.T, x)

    def mask(self, x: Tensor) -> Tensor:
        self.check(x)
        m = torch.tensor([0.0, 1.0, 1.0], dtype=x.dtype, device=x.device)
        return m.reshape((1, 3) + (1,) * (x.ndim - 2))

    @staticmethod
    def y_from_gray(gray: Tensor) -> Tensor:
        r"""A 3-channel reference y whose luminance is ``gray`` and whose chrominance is zero:
        y = gray * w / ||w||^2 with w = :data:`LUMINANCE`. ``gray`` has shape (B, 1, ...) or (B, ...)
        (then a channel dim is inserted)."""
        if gray.ndim < 1:
            raise ValueError("gray must have a batch dimension")
        if gray.ndim < 2 or gray.shape[1] != 1:
            gray = gray.unsqueeze(1)
        w = torch.tensor(LUMINANCE, dtype=gray.dtype, device=gray.device)
        w = (w / (w @ w)).reshape((1, 3) + (1,) * (gray.ndim - 2))
        return gray * w


def luminance(x: Tensor) -> Tensor:
    r"""Luminance 0.2989 R + 0.5870 G + 0.1140 B of x of shape (B, 3, ...); returns (B, 1, ...)."""
    if x.ndim < 2 or x.shape[1] != 3:
        raise ValueError(f"luminance needs shape (batch, 3, ...); got {tuple(x.shape)}")
    w = torch.tensor(LUMINANCE, dtype=x.dtype, device=x.device)
    return torch.einsum("j,bj...->b...", w, x).unsqueeze(1)


class SuperResolve(EditOperator):
    r"""Super-resolution by a factor p: every non-overlapping p x p patch v (flattened row-major) is
    mapped to P v with the orthogonal :func:`patch_matrix` P, and the p^2 coefficients are written
    back into the patch's pixels (coefficient k at row k // p, column k % p), so A keeps the shape
    (B, ..., H, W). Omega = all coefficients except the first (p * patch mean), which is kept: an edit
    reproduces the patch means of y exactly. H and W must be divisible by p.

    y is the low-resolution image upsampled by repetition: :meth:`y_from_low_res`.
    """

    def __init__(self, p: int):
        self.p = _check_patch_size(p)
        self.P = patch_matrix(self.p)

    def check(self, x: Tensor) -> None:
        super().check(x)
        if x.ndim < 3:
            raise ValueError(f"super-resolution needs images of shape (batch, ..., H, W); got {tuple(x.shape)}")
        H, W = x.shape[-2:]
        if H % self.p or W % self.p:
            raise ValueError(f"image size {H}x{W} is not divisible by the patch size p = {self.p}")

    def _to_patches(self, x: Tensor) -> Tensor:
        # (..., H, W) -> (..., H/p, W/p, p*p), patch flattened row-major
        p, (H, W) = self.p, x.shape[-2:]
        lead = x.shape[:-2]
        x = x.reshape(lead + (H // p, p, W // p, p)).movedim(-3, -2)
        return x.reshape(lead + (H // p, W // p, p * p))

    def _from_patches(self, v: Tensor) -> Tensor:
        p = self.p
        lead, (h, w) = v.shape[:-3], v.shape[-3:-1]
        v = v.reshape(lead + (h, w, p, p)).movedim(-2, -3)
        return v.reshape(lead + (h * p, w * p))

    def A(self, x: Tensor) -> Tensor:
        self.check(x)
        P = self.P.to(dtype=x.dtype, device=x.device)
        return self._from_patches(self._to_patches(x) @ P.T)

    def A_inv(self, x: Tensor) -> Tensor:
        self.check(x)
        P = self.P.to(dtype=x.dtype, device=x.device)
        return self._from_patches(self._to_patches(x) @ P)

    def mask(self, x: Tensor) -> Tensor:
        self.check(x)
        H, W = x.shape[-2:]
        m = torch.ones(self.p, self.p, dtype=x.dtype, device=x.device)
        m[0, 0] = 0
        return m.repeat(H // self.p, W // self.p).reshape((1,) * (x.ndim - 2) + (H, W))

    def y_from_low_res(self, low: Tensor) -> Tensor:
        """Upsample a low-resolution image (B, ..., h, w) by repetition to (B, ..., h*p, w*p)."""
        return upsample_repeat(low, self.p)

    def downsample(self, x: Tensor) -> Tensor:
        """Patch means of x: (B, ..., H, W) -> (B, ..., H/p, W/p) (what an edit keeps)."""
        self.check(x)
        return self._to_patches(x).mean(-1)


def upsample_repeat(low: Tensor, p: int) -> Tensor:
    """Nearest-neighbour (repetition) upsampling of the last two dims by an integer factor p."""
    p = _check_patch_size(p)
    if low.ndim < 3:
        raise ValueError(f"low must have shape (batch, ..., h, w); got {tuple(low.shape)}")
    return low.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)


# ----------------------------------------------------------------------------------------------
# Algorithm 4
# ----------------------------------------------------------------------------------------------

def _check_ts(ts, eps: float, T: float) -> list[float]:
    if isinstance(ts, (int, float)):
        ts = [float(ts)]
    ts_t = torch.as_tensor(ts, dtype=torch.float64)
    if ts_t.ndim != 1 or ts_t.numel() == 0:
        raise ValueError("ts must be a non-empty 1-d sequence of times tau_1 > tau_2 > ...; "
                         f"got shape {tuple(ts_t.shape)}")
    check_time_range(ts_t, eps, T, name="ts")
    if ts_t.numel() > 1 and not (ts_t[1:] < ts_t[:-1]).all():
        raise ValueError(f"ts must be strictly decreasing (tau_1 > tau_2 > ...); got {ts_t.tolist()}")
    return ts_t.tolist()


def edit(model: Callable[[Tensor, Tensor], Tensor], y: Tensor, op: EditOperator, ts: Sequence[float] | None = None,
         generator: torch.Generator | None = None, callback=None, disable: bool | None = None) -> Tensor:
    r"""Zero-shot editing with a consistency model (Song et al. 2023, Algorithm 4).

    .. math::
        y &\leftarrow A^{-1}[(Ay)\odot(1-\Omega)],\quad x \sim \mathcal N(y, \tau_1^2 I),\quad
            x \leftarrow f_\theta(x, \tau_1),\\
        x &\leftarrow A^{-1}[(Ay)\odot(1-\Omega) + (Ax)\odot\Omega],\\
        &\text{then for } n \ge 2:\; x \sim \mathcal N(x, (\tau_n^2 - \epsilon^2) I),\;
          x \leftarrow f_\theta(x, \tau_n),\; \text{project again.}

    Args:
        model: a consistency model f_theta(x, t) (any callable; ``model.eps``/``model.T`` are used
            when present, else 0.002 and 80).
        y: reference, shape (B, ...). Only its kept part A^{-1}[(Ay)(1-Omega)] matters (except for
            :class:`StrokeGuided`, whose first noise is centred on y itself: see ``op.start``).
        op: an :class:`EditOperator` (A, A^{-1}, Omega).
        ts: tau_1 > tau_2 > ... in [eps, T]; default ``op.default_ts`` if it has one.
        generator: torch.Generator for the Gaussian noise.
        callback: called as ``callback({'i': n, 't': tau_n, 'x': x})`` after each step (x projected).
        disable: show a tqdm bar only if ``disable=False`` (None means disabled).

    Returns the edited samples x, same shape as y. The kept part is reproduced exactly (to rounding).
    Costs len(ts) model evaluations.
    """
    eps, T = float(getattr(model, "eps", EPS)), float(getattr(model, "T", T_MAX))
    if ts is None:
        if op.default_ts is None:
            raise ValueError(f"ts is required for {type(op).__name__} (it has no default time points)")
        ts = op.default_ts
    ts = _check_ts(ts, eps, T)
    op.check(y)
    with torch.no_grad():
        x = op.start(y)   # = op.keep(y): line 1 of Algorithm 4 (y itself for stroke guidance)
        y = op.keep(y)
        for i in tqdm(range(len(ts)), disable=True if disable is None else disable, desc="edit"):
            tau = ts[i]
            z = torch.randn(y.shape, generator=generator, dtype=y.dtype,
                            device=generator.device if generator is not None else y.device).to(y.device)
            std = tau if i == 0 else math.sqrt(max(tau ** 2 - eps ** 2, 0.0))
            x = model(x + std * z, as_time(tau, x))
            x = op.project(x, y)
            if callback is not None:
                callback({"i": i, "t": tau, "x": x})
    return x


def inpaint(model, y: Tensor, mask, ts: Sequence[float], **kwargs) -> Tensor:
    """:func:`edit` with :class:`Inpaint` (mask: 1 = generate, 0 = keep)."""
    return edit(model, y, Inpaint(mask), ts, **kwargs)


def colorize(model, gray: Tensor, ts: Sequence[float], **kwargs) -> Tensor:
    """:func:`edit` with :class:`Colorize`, from a luminance image ``gray`` of shape (B, 1, H, W)."""
    return edit(model, Colorize.y_from_gray(gray), Colorize(), ts, **kwargs)


def super_resolve(model, low: Tensor, p: int, ts: Sequence[float], **kwargs) -> Tensor:
    """:func:`edit` with :class:`SuperResolve`, from a low-resolution image (B, C, h, w); returns
    (B, C, h*p, w*p)."""
    op = SuperResolve(p)
    return edit(model, op.y_from_low_res(low), op, ts, **kwargs)


def stroke_guided(model, strokes: Tensor, ts: Sequence[float] = STROKE_TS, **kwargs) -> Tensor:
    """:func:`edit` with :class:`StrokeGuided` from a stroke painting, default ts = (5.38, 2.24)."""
    return edit(model, strokes, StrokeGuided(), ts, **kwargs)


# ----------------------------------------------------------------------------------------------
# denoising and interpolation
# ----------------------------------------------------------------------------------------------

def denoise(model, y: Tensor, sigma) -> Tensor:
    r"""Zero-shot denoising (Song et al. 2023, zero-shot editing): x = f_theta(y, sigma) for y = clean + sigma z.

    ``sigma`` is a number or a (B,) tensor in [eps, T].
    """
    eps, T = float(getattr(model, "eps", EPS)), float(getattr(model, "T", T_MAX))
    if not isinstance(y, Tensor) or y.ndim < 1:
        raise ValueError("y must be a tensor of shape (batch, ...)")
    sigma = as_time(sigma, y)
    check_time_range(sigma, eps, T, name="sigma")
    with torch.no_grad():
        return model(y, sigma)


def slerp(z0: Tensor, z1: Tensor, alpha) -> Tensor:
    r"""Spherical linear interpolation, per sample (over all non-batch dims):

    .. math:: \mathrm{slerp}(z_0, z_1; \alpha) = \frac{\sin((1-\alpha)\theta)}{\sin\theta} z_0
              + \frac{\sin(\alpha\theta)}{\sin\theta} z_1,\quad
              \cos\theta = \frac{\langle z_0, z_1\rangle}{\|z_0\|\|z_1\|}

    (linear interpolation where theta ~ 0). For two independent high-dimensional Gaussians theta ~ 90
    degrees and the result keeps their typical norm, unlike a straight line. ``alpha`` is a number or
    a (B,) tensor; alpha = 0 gives z0 and alpha = 1 gives z1.
    """
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape; got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if z0.ndim < 1:
        raise ValueError("z0 and z1 must have a batch dimension: shape (batch, ...)")
    a = torch.as_tensor(alpha, dtype=z0.dtype, device=z0.device)
    if a.ndim == 0:
        a = a.expand(z0.shape[0])
    if a.shape != (z0.shape[0],):
        raise ValueError(f"alpha must be a number or have shape (batch,) = ({z0.shape[0]},); got {tuple(a.shape)}")
    a0, a1 = z0.flatten(1), z1.flatten(1)
    n0, n1 = a0.norm(dim=1), a1.norm(dim=1)
    if (n0 == 0).any() or (n1 == 0).any():
        raise ValueError("slerp needs non-zero vectors (the angle is undefined for zero)")
    cos = ((a0 * a1).sum(1) / (n0 * n1)).clamp(-1.0, 1.0)
    theta = torch.acos(cos)
    s = torch.sin(theta)
    small = s < 1e-6
    s_safe = torch.where(small, torch.ones_like(s), s)
    w0 = torch.where(small, 1 - a, torch.sin((1 - a) * theta) / s_safe)
    w1 = torch.where(small, a, torch.sin(a * theta) / s_safe)
    out = w0[:, None] * a0 + w1[:, None] * a1
    return out.reshape(z0.shape)


def interpolate(model, z0: Tensor, z1: Tensor, alphas: Sequence[float]) -> Tensor:
    r"""Zero-shot interpolation (Song et al. 2023, zero-shot editing): x(alpha) = f_theta(slerp(z0, z1; alpha), T).

    ``z0``, ``z1``: two noise tensors of shape (B, ...) *at scale T*, i.e. draws of x_T ~ N(0, T^2 I)
    (multiply standard normals by ``model.T``). ``alphas``: a 1-d sequence in [0, 1].
    Returns shape (len(alphas), B, ...); one batched model call.
    """
    T = float(getattr(model, "T", T_MAX))
    if z0.shape != z1.shape or z0.ndim < 1:
        raise ValueError("z0 and z1 must have the same shape (batch, ...); "
                         f"got {tuple(z0.shape)} and {tuple(z1.shape)}")
    al = torch.as_tensor(alphas, dtype=torch.float64)
    if al.ndim != 1 or al.numel() == 0:
        raise ValueError(f"alphas must be a non-empty 1-d sequence; got shape {tuple(al.shape)}")
    if not torch.isfinite(al).all() or (al < 0).any() or (al > 1).any():
        raise ValueError(f"alphas must lie in [0, 1]; got {al.tolist()}")
    K, B = al.numel(), z0.shape[0]
    zz = torch.cat([slerp(z0, z1, float(a)) for a in al])  # (K*B, ...)
    with torch.no_grad():
        x = model(zz, as_time(T, zz))
    return x.reshape((K, B) + tuple(z0.shape[1:]))
