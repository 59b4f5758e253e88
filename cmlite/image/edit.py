r"""Zero-shot editing of images with a trained consistency model (Song et al. 2023, Algorithm 4).

The algebra (the orthogonal maps A, the masks Omega, Algorithm 4 itself) is :mod:`cmlite.editing`;
this module puts it to work on image batches in [-1, 1] of shape (B, C, H, W):

* **masks** (Omega: 1 = generate, 0 = keep): :func:`center_box_mask`, :func:`half_mask`,
  :func:`free_form_mask` (brush strokes, deterministic in a seed), :func:`make_mask` by name;
* **inputs**: :func:`stroke_painting` (a coarse painting made from an image, as in SDEdit),
  :func:`make_problem` (degrade clean images for a task: the benchmark's way in),
  :func:`problem_from_input` (the command line's: clean images or already degraded observations);
* **editing**: :func:`edit` ``(model, task, y, ...)`` for the tasks of :data:`TASKS` --
  ``inpaint``, ``colorize`` (3 channels), ``superres`` (x2, x4: the patch-mean operator), ``stroke``,
  ``denoise`` (at sigma), ``interpolate`` (slerp between two noises, then f(., T));
* **the teacher baseline**: :class:`TeacherODE` is a drop-in replacement for f_theta that solves the
  teacher's PF ODE (Heun on an N-point Karras grid) from t down to eps, so ``edit(TeacherODE(D, N), ...)``
  is the same Algorithm 4 with every consistency-model call replaced by an ODE solve
  (2(N - 1) network evaluations per call); :func:`naive` are the trivial baselines (mean colour fill,
  bicubic upsampling, the grey image as RGB, the painting, the noisy image);
* **metrics**: :func:`psnr`, :func:`ssim` (Gaussian window 11, sigma 1.5, on [0, 1]),
  :func:`known_part_error` (max |A(result)(1 - Omega) - A(y)(1 - Omega)|, in the [-1, 1] data units),
  :func:`classifier_accuracy`; :func:`nfe` (network evaluations per image).

A few lines::

    model, info = load_run("runs/mnist-cd", "cuda")
    p = make_problem("inpaint", x, mask="half")              # x: clean images in [-1, 1]
    out = p.solve(model, generator=torch.Generator("cuda").manual_seed(0))
    psnr(out, x).mean(), p.known_error(out)

Every call of the model goes through :class:`ModelFn`: batches of ``batch_size``, bf16 autocast on CUDA
(the projection itself stays in float32), class labels for conditional models, outputs clamped to [-1, 1]
before each projection (as the official code does), and a count of network evaluations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import as_time
from ..editing import (STROKE_TS, Colorize, EditOperator, Inpaint, StrokeGuided, SuperResolve, box_mask,
                       denoise as _denoise, edit as _edit, luminance, slerp, upsample_repeat)
from ..ode import solve
from ..schedules import EPS, T_MAX, karras_boundaries
from .data import check_images

#: The editing tasks of :func:`edit`.
TASKS = ("inpaint", "colorize", "superres", "stroke", "denoise", "interpolate")
#: Mask names understood by :func:`make_mask` (``half`` is ``half-bottom``: the bottom half is generated).
MASKS = ("box", "half", "half-left", "half-right", "half-top", "half-bottom", "free")
#: Default number of time points of Algorithm 4 for inpaint / colorize / superres.
EDIT_STEPS = 8


def edit_times(K: int = EDIT_STEPS, t_max: float = T_MAX, t_min: float = 0.1, rho: float = 7.0) -> list[float]:
    r"""K decreasing time points from ``t_max`` to ``t_min`` on Karras' rho = 7 spacing (the default
    times of Algorithm 4 here: K = 8 gives 80, 42.1, 20.7, 9.4, 3.9, 1.4, 0.42, 0.1). K = 1 is [t_max]."""
    if K < 1:
        raise ValueError(f"K must be >= 1; got {K}")
    if K == 1:
        return [float(t_max)]
    return karras_boundaries(K, t_min, t_max, rho).flip(0).tolist()


def default_ts(task: str) -> list[float] | None:
    """The default times of a task: :func:`edit_times` for inpaint / colorize / superres, the paper's
    (5.38, 2.24) for stroke; None for denoise (one call at sigma) and interpolate (one call at T)."""
    _check_task(task)
    if task == "stroke":
        return list(STROKE_TS)
    if task in ("denoise", "interpolate"):
        return None
    return edit_times()


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown editing task {task!r}; choose one of {', '.join(TASKS)}")


# ----------------------------------------------------------------------------------------------
# masks (Omega: 1 = generate, 0 = keep)
# ----------------------------------------------------------------------------------------------

def center_box_mask(H: int, W: int, frac: float = 0.5) -> Tensor:
    """(H, W) mask that generates a centred box of ``frac`` times the image size (a quarter of the pixels
    at frac = 0.5; 14x14 of 28x28, 16x16 of 32x32)."""
    if not 0 < frac <= 1:
        raise ValueError(f"frac must be in (0, 1]; got {frac}")
    h, w = max(1, round(H * frac)), max(1, round(W * frac))
    return box_mask(H, W, (H - h) // 2, (W - w) // 2, h, w)


def half_mask(H: int, W: int, side: str = "bottom") -> Tensor:
    """(H, W) mask that generates one half of the image: ``side`` in left, right, top, bottom."""
    m = torch.zeros(H, W)
    if side == "left":
        m[:, :W // 2] = 1
    elif side == "right":
        m[:, W // 2:] = 1
    elif side == "top":
        m[:H // 2] = 1
    elif side == "bottom":
        m[H // 2:] = 1
    else:
        raise ValueError(f"side must be left, right, top or bottom; got {side!r}")
    return m


def _segment_distance(py: Tensor, px: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Distance of every pixel centre (py, px) to the segment a-b (points as (y, x))."""
    d = b - a
    L2 = float(d @ d)
    t = (((py - a[0]) * d[0] + (px - a[1]) * d[1]) / L2).clamp(0, 1) if L2 > 0 else torch.zeros_like(py)
    return ((py - a[0] - t * d[0]) ** 2 + (px - a[1] - t * d[1]) ** 2).sqrt()


def free_form_mask(H: int, W: int, seed: int = 0, n: int | None = None, min_cover: float = 0.2,
                   max_strokes: int = 8) -> Tensor:
    """A free-form brush-stroke mask (1 = generate), deterministic in ``seed``.

    Strokes are polylines of 3-6 segments (each 15-35 % of the image size long, turning by a random
    angle) drawn with a round brush 8-16 % of the image size wide; strokes are added until at least
    ``min_cover`` of the pixels are covered (at most ``max_strokes``). ``n=None``: one (H, W) mask;
    ``n``: (n, 1, H, W), image i drawn with seed ``seed + i``.
    """
    if n is not None:
        return torch.stack([free_form_mask(H, W, seed + i, None, min_cover, max_strokes) for i in range(n)])[:, None]
    g = torch.Generator().manual_seed(int(seed))
    S = float(min(H, W))
    py, px = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5,
                            indexing="ij")
    m = torch.zeros(H, W, dtype=torch.bool)
    for _ in range(max_strokes):
        u = lambda *s: torch.rand(s, generator=g, dtype=torch.float64)  # noqa: E731
        p = u(2) * torch.tensor([H, W], dtype=torch.float64)
        angle = float(u(1)) * 2 * math.pi
        width = S * (0.08 + 0.08 * float(u(1)))
        for _ in range(3 + int(u(1) * 4)):
            angle += float(torch.randn(1, generator=g, dtype=torch.float64)) * 0.9
            length = S * (0.15 + 0.2 * float(u(1)))
            q = p + length * torch.tensor([math.sin(angle), math.cos(angle)], dtype=torch.float64)
            q = torch.stack([q[0].clamp(0, H), q[1].clamp(0, W)])
            m |= _segment_distance(py, px, p, q) <= width / 2
            p = q
        if float(m.double().mean()) >= min_cover:
            break
    return m.float()


def make_mask(kind: str, H: int, W: int, seed: int = 0, n: int | None = None) -> Tensor:
    """A mask by name (:data:`MASKS`): ``box`` (centred, a quarter of the pixels), ``half`` (= ``half-bottom``)
    or ``half-left|right|top|bottom`` (that half is generated), ``free`` (:func:`free_form_mask`; with ``n``,
    a different mask per image, seeds ``seed .. seed + n - 1``). Returns (H, W), or (n, 1, H, W) for
    ``free`` with ``n``."""
    if kind == "box":
        return center_box_mask(H, W)
    if kind == "half":
        return half_mask(H, W, "bottom")
    if kind.startswith("half-"):
        return half_mask(H, W, kind[5:])
    if kind == "free":
        return free_form_mask(H, W, seed, n)
    raise ValueError(f"unknown mask {kind!r}; choose one of {', '.join(MASKS)}")


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------

def stroke_painting(x: Tensor, levels: int = 4, factor: int = 4) -> Tensor:
    """A coarse "stroke painting" of images x in [-1, 1] (the input of stroke-guided generation, as in
    SDEdit): the mean of every ``factor`` x ``factor`` block, each channel quantised to ``levels`` values
    in [-1, 1], shown at full size (blocks repeated)."""
    if levels < 2:
        raise ValueError(f"levels must be >= 2; got {levels}")
    H, W = x.shape[-2:]
    if H % factor or W % factor:
        raise ValueError(f"image size {H}x{W} is not divisible by the painting's block size {factor}")
    p = F.avg_pool2d(x, factor)
    q = torch.round((p.clamp(-1, 1) + 1) / 2 * (levels - 1)) / (levels - 1) * 2 - 1
    return upsample_repeat(q, factor)


def gray_to_rgb(gray: Tensor) -> Tensor:
    """A luminance image (B, 1, H, W) shown as RGB (B, 3, H, W) (the naive colorization)."""
    return gray.expand(-1, 3, -1, -1).contiguous()


def _model_shape(model) -> tuple[int, int, int] | None:
    """(C, H, W) of a cmlite image model (its U-Net config), or None if unknown."""
    for m in (model, getattr(model, "model", None), getattr(model, "denoiser", None)):
        cfg = getattr(getattr(m, "net", None), "config", None)
        if cfg is not None and hasattr(cfg, "img_resolution"):
            return int(cfg.in_channels), int(cfg.img_resolution), int(cfg.img_resolution)
    return None


# ----------------------------------------------------------------------------------------------
# model wrappers
# ----------------------------------------------------------------------------------------------

class ModelFn:
    """A consistency model (or a denoiser) as the editing and sampling code calls it: ``f(x, t)``.

    Evaluates ``model`` in batches of ``batch_size`` with bf16 autocast on CUDA (``precision='fp32'`` turns
    it off; the output is cast back to x's dtype, so everything around the network stays float32), passes
    ``class_labels`` (one per sample of the full batch) to conditional models, clamps the output to
    [-1, 1] when ``clamp``, and counts network evaluations per sample in ``evals`` (one per call).
    ``eps`` and ``T`` are the model's.
    """

    def __init__(self, model, class_labels: Tensor | None = None, clamp: bool = True, precision: str = "bf16",
                 batch_size: int | None = 1000):
        if isinstance(model, ModelFn):
            model = model.model
        self.model, self.class_labels, self.clamp = model, class_labels, clamp
        self.precision, self.batch_size = precision, batch_size
        self.eps, self.T = float(getattr(model, "eps", EPS)), float(getattr(model, "T", T_MAX))
        self.evals = 0

    @torch.no_grad()
    def __call__(self, x: Tensor, t, **cond) -> Tensor:
        t = as_time(t, x)
        labels = cond.pop("class_labels", self.class_labels)
        if labels is not None and len(labels) != len(x):
            raise ValueError(f"{len(labels)} class labels for a batch of {len(x)}")
        bs = self.batch_size or len(x)
        amp = torch.autocast(x.device.type, dtype=torch.bfloat16,
                             enabled=self.precision == "bf16" and x.device.type == "cuda")
        out = []
        with amp:
            for i in range(0, len(x), bs):
                extra = dict(cond)
                if labels is not None:
                    extra["class_labels"] = labels[i:i + bs].to(x.device)
                out.append(self.model(x[i:i + bs], t[i:i + bs], **extra).to(x.dtype))
        self.evals += 1
        y = torch.cat(out) if len(out) > 1 else out[0]
        return y.clamp(-1, 1) if self.clamp else y


class TeacherODE:
    r"""The teacher's PF-ODE solution map, in place of f_theta: ``f(x, t)`` integrates the PF ODE of the
    denoiser from t down to eps with Heun on the N-point Karras grid between eps and t
    (:func:`cmlite.ode.solve`), 2(N - 1) network evaluations per call. ``f(x, eps) = x``.

    With it, :func:`edit` runs the *same* Algorithm 4 with each consistency-model call replaced by an ODE
    solve: the "ODE-based editing with the teacher" baseline, at many more network evaluations.
    ``evals`` counts network evaluations per sample (of the denoiser).
    """

    def __init__(self, denoiser, N: int = 18, class_labels: Tensor | None = None, clamp: bool = True,
                 precision: str = "bf16", batch_size: int | None = 1000, eps: float = EPS, T: float = T_MAX):
        if N < 2:
            raise ValueError(f"N must be >= 2; got {N}")
        self.denoiser = denoiser.denoiser if isinstance(denoiser, TeacherODE) else denoiser
        self.D = ModelFn(self.denoiser, class_labels, clamp=False, precision=precision, batch_size=batch_size)
        self.N, self.clamp, self.eps, self.T = int(N), clamp, float(eps), float(T)

    @property
    def evals(self) -> int:
        return self.D.evals

    @property
    def nfe_per_call(self) -> int:
        return 2 * (self.N - 1)

    @torch.no_grad()
    def __call__(self, x: Tensor, t, **cond) -> Tensor:
        t = as_time(t, x)
        t0 = float(t[0])
        if not bool((t == t[0]).all()):
            raise ValueError("TeacherODE solves one ODE per call: pass one time for the whole batch")
        if t0 <= self.eps * (1 + 1e-6):
            return x
        labels = cond.pop("class_labels", None)
        D = self.D if labels is None else (lambda y, s: self.D(y, s, class_labels=labels))
        out = solve(D, x, karras_boundaries(self.N, self.eps, t0).flip(0), "heun")
        return out.clamp(-1, 1) if self.clamp else out


def _as_fn(model, class_labels=None, clamp=True, precision="bf16", batch_size=1000):
    if isinstance(model, (ModelFn, TeacherODE)):
        return model
    return ModelFn(model, class_labels, clamp, precision, batch_size)


# ----------------------------------------------------------------------------------------------
# editing
# ----------------------------------------------------------------------------------------------

def operator(task: str, y_shape, mask=None, factor: int = 2, seed: int = 0) -> EditOperator | None:
    """The :mod:`cmlite.editing` operator of a task for images of shape ``y_shape`` (B, C, H, W): Inpaint(mask),
    Colorize(), SuperResolve(factor), StrokeGuided(); None for denoise and interpolate. ``mask``: an
    Omega tensor broadcastable to (B, C, H, W), or a name for :func:`make_mask` (default ``box``)."""
    _check_task(task)
    B, C, H, W = y_shape
    if task == "inpaint":
        m = make_mask(mask or "box", H, W, seed, n=B) if mask is None or isinstance(mask, str) else mask
        return Inpaint(m)
    if task == "colorize":
        if C != 3:
            raise ValueError(f"colorization needs a 3-channel (RGB) model; this one makes {C}-channel images")
        return Colorize()
    if task == "superres":
        if factor not in (2, 4) and not (isinstance(factor, int) and factor > 1):
            raise ValueError(f"factor must be an integer > 1 (2 or 4); got {factor!r}")
        return SuperResolve(factor)
    if task == "stroke":
        return StrokeGuided()
    return None


def edit(model, task: str, y, *, mask=None, factor: int = 2, sigma: float | None = None,
         ts: Sequence[float] | None = None, generator: torch.Generator | None = None, alphas=None,
         class_labels: Tensor | None = None, clamp: bool = True, precision: str = "bf16",
         batch_size: int = 1000, seed: int = 0) -> Tensor:
    r"""Edit image batches in [-1, 1] with a consistency model (Algorithm 4), or with :class:`TeacherODE`.

    Args:
        model: a consistency model f_theta(x, t) (e.g. from :func:`cmlite.image.run.load_run`), a
            :class:`ModelFn`, or a :class:`TeacherODE` (the teacher baseline).
        task: one of :data:`TASKS`.
        y: the reference, (B, C, H, W) at the model's size, in [-1, 1] (or uint8 in [0, 255], scaled here;
            another dtype or range raises ValueError), except:

            * ``colorize``: (B, 3, H, W) colour images (their luminance is kept) or (B, 1, H, W) luminance;
            * ``superres``: full-size images (their patch means are kept) or (B, C, H/factor, W/factor)
              low-resolution images (upsampled by repetition);
            * ``stroke``: the painting (e.g. :func:`stroke_painting`);
            * ``denoise``: the noisy images y = x + sigma z;
            * ``interpolate``: a pair (z0, z1) of noises at scale T (T times standard normals), (B, C, H, W) each.
        mask: inpainting Omega (1 = generate), a tensor broadcastable to y or a :func:`make_mask` name.
        factor: super-resolution factor (2 or 4). sigma: the noise level of ``denoise``.
        ts: the times tau_1 > tau_2 > ... (default :func:`default_ts`). alphas: interpolation weights
            (default 9 points in [0, 1]); the result is then (len(alphas), B, C, H, W).
        generator: for the noise of Algorithm 4. class_labels: (B,) for class-conditional models.
        clamp, precision, batch_size: see :class:`ModelFn`.

    Returns the edited images (float). Every model output is clamped to [-1, 1] when ``clamp``, but the last
    projection combines y's kept part with the model's generated part, which can leave [-1, 1] slightly
    (e.g. a kept luminance with generated colours): clamp or quantise (:func:`~cmlite.image.data.to_uint8`)
    for display and pixel metrics; the known part is exact before that. Costs :func:`nfe` network
    evaluations per image.
    """
    _check_task(task)
    f = _as_fn(model, class_labels, clamp, precision, batch_size)
    if task == "interpolate":
        z0, z1 = y
        al = torch.linspace(0, 1, 9) if alphas is None else torch.as_tensor(alphas, dtype=torch.float64)
        K, B = len(al), len(z0)
        zz = torch.cat([slerp(z0, z1, float(a)) for a in al])
        if class_labels is not None and isinstance(f, ModelFn):
            f = ModelFn(f.model, class_labels.repeat(K), f.clamp, f.precision, f.batch_size)
        out = f(zz, f.T)
        return out.reshape((K, B) + tuple(z0.shape[1:]))
    if not isinstance(y, Tensor) or y.ndim != 4:
        raise ValueError(f"y must be a tensor of images (B, C, H, W); got {getattr(y, 'shape', type(y))}")
    # range-checked where y is an image (colorize's y from a grey image and denoise's noisy y may leave [-1, 1])
    y = check_images(y, f"the reference y of {task}", value_range=task in ("inpaint", "superres", "stroke"))
    y = y.float() / 127.5 - 1 if y.dtype == torch.uint8 else y
    if task == "denoise":
        if sigma is None:
            raise ValueError("denoise needs the noise level sigma of y = x + sigma z")
        return _denoise(f, y, float(sigma))
    shape = _model_shape(model)
    if task == "colorize" and y.shape[1] == 1:
        y = Colorize.y_from_gray(y)
    if task == "superres" and shape is not None and y.shape[-1] * factor == shape[-1] and y.shape[-1] != shape[-1]:
        y = upsample_repeat(y, factor)
    op = operator(task, tuple(y.shape), mask, factor, seed)
    if shape is not None and tuple(y.shape[1:]) != shape:
        raise ValueError(f"the model makes images of shape {shape}; the reference y has shape {tuple(y.shape[1:])}")
    return _edit(f, y, op, list(ts) if ts is not None else default_ts(task), generator=generator)


def nfe(task: str, ts: Sequence[float] | None = None, N: int | None = None) -> int:
    """Network evaluations per edited image: len(ts) calls for inpaint / colorize / superres / stroke, one for
    denoise and interpolate (per output image); each call is one network evaluation for a consistency model,
    2(N - 1) for :class:`TeacherODE` with N grid points (pass ``N``)."""
    _check_task(task)
    calls = 1 if task in ("denoise", "interpolate") else len(ts if ts is not None else default_ts(task))
    return calls * (1 if N is None else 2 * (N - 1))


# ----------------------------------------------------------------------------------------------
# problems: clean images -> what an edit sees
# ----------------------------------------------------------------------------------------------

@dataclass
class Problem:
    """One editing problem on a batch: what the edit gets (``y``, with ``kwargs`` for :func:`edit`),
    what a reader should see of it (``observed``, in the model's channels), and the clean ``original``
    when known. ``solve(model)`` runs the edit; ``naive()`` the trivial baseline."""
    task: str
    y: Tensor | tuple
    observed: Tensor
    original: Tensor | None = None
    op: EditOperator | None = None
    kwargs: dict = field(default_factory=dict)

    @property
    def ts(self) -> list[float] | None:
        return self.kwargs.get("ts") or default_ts(self.task)

    def solve(self, model, ts=None, generator=None, **kw) -> Tensor:
        args = {**self.kwargs, **kw}
        if ts is not None:
            args["ts"] = ts
        return edit(model, self.task, self.y, generator=generator, **args)

    def naive(self) -> Tensor | None:
        return naive(self)

    def subset(self, idx) -> "Problem":
        """The same problem on the images ``idx`` (an index tensor, list or slice): the same masks and noise."""
        def take(v):
            return v[idx] if isinstance(v, Tensor) and v.ndim == 4 and v.shape[0] > 1 else v
        kwargs = {k: take(v) for k, v in self.kwargs.items()}
        op = Inpaint(kwargs["mask"]) if isinstance(self.op, Inpaint) else self.op
        return Problem(self.task, take(self.y), take(self.observed), None if self.original is None else
                       take(self.original), op, kwargs)

    def known_error(self, result: Tensor) -> float | None:
        """max |A(result)(1 - Omega) - A(y)(1 - Omega)| (None where nothing is kept: stroke, denoise,
        interpolate)."""
        if self.op is None or isinstance(self.op, StrokeGuided):
            return None
        return known_part_error(self.op, result, self.y)


def _problem(task, y, original, mask, factor, sigma, levels, seed, generator) -> Problem:
    B, C, H, W = y.shape
    if task == "inpaint":
        op = operator("inpaint", y.shape, mask, seed=seed)
        return Problem(task, y, op.keep(y), original, op, {"mask": op.omega})
    if task == "colorize":
        op = operator("colorize", y.shape)
        return Problem(task, y, gray_to_rgb(luminance(y)), original, op)
    if task == "superres":
        op = operator("superres", y.shape, factor=factor)
        return Problem(task, y, op.keep(y), original, op, {"factor": factor})
    if task == "stroke":
        return Problem(task, y, y, original, StrokeGuided())
    if task == "denoise":
        return Problem(task, y, y.clamp(-1, 1), original, None, {"sigma": float(sigma)})
    raise ValueError(f"no problem for task {task!r} (interpolate: use interpolation_noise)")


def make_problem(task: str, x: Tensor, *, mask: str | Tensor = "box", factor: int = 2, sigma: float = 0.5,
                 levels: int = 4, seed: int = 0, generator: torch.Generator | None = None) -> Problem:
    """Degrade clean images x (B, C, H, W) in [-1, 1] for ``task`` (not ``interpolate``):

    * inpaint: Omega from ``mask`` (a :func:`make_mask` name; ``free`` draws one mask per image from ``seed``);
    * colorize: keep the luminance (x must have 3 channels);
    * superres: keep the ``factor`` x ``factor`` patch means;
    * stroke: y = :func:`stroke_painting` (x, ``levels``, block 4);
    * denoise: y = x + sigma z (z from ``generator``, else from ``seed``).
    """
    _check_task(task)
    x = x.float()
    if task == "stroke":
        return _problem(task, stroke_painting(x, levels), x, mask, factor, sigma, levels, seed, generator)
    if task == "denoise":
        g = generator or torch.Generator(device=x.device).manual_seed(seed)
        z = torch.randn(x.shape, generator=g, device=g.device).to(x.device)
        return _problem(task, x + sigma * z, x, mask, factor, sigma, levels, seed, generator)
    if task == "colorize" and x.shape[1] != 3:
        raise ValueError(f"colorization needs 3-channel images; got {x.shape[1]} channel(s)")
    return _problem(task, x, x, mask, factor, sigma, levels, seed, generator)


def problem_from_input(task: str, images: Tensor, shape: Sequence[int], *, observed: bool = False,
                       mask: str | Tensor = "box", factor: int = 2, sigma: float = 0.5, levels: int = 4,
                       seed: int = 0) -> Problem:
    """A :class:`Problem` from user images for a model making images of ``shape`` (C, H, W).

    ``images``: uint8 (B, C, H, W) (or float in [-1, 1]; checked by :func:`cmlite.image.data.check_images`:
    another dtype, shape or range raises ValueError). By default they are clean images, degraded here
    (:func:`make_problem`) and kept as ``original``. They are taken as the observation itself (no
    original) when ``observed=True`` (denoise: already noisy at ``sigma``; stroke: already a painting;
    inpaint: the pixels under the mask are ignored anyway), and automatically for colorize with
    1-channel images (the luminance) and superres with images ``factor`` times smaller than the model's.
    Shapes that fit none of these raise ValueError saying what the model expects.
    """
    _check_task(task)
    if task == "interpolate":
        raise ValueError("interpolate takes no input images (it interpolates between two noises)")
    C, H, W = (int(s) for s in shape)
    images = check_images(images, f"{task} input", value_range=not (observed and task == "denoise"))
    x = images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()
    n, c, h, w = x.shape
    want = f"{C}x{H}x{W} (channels x height x width)"
    if task == "colorize":
        if C != 3:
            raise ValueError(f"colorization needs a 3-channel (RGB) model; this model makes {want} images")
        if (h, w) != (H, W) or c not in (1, 3):
            raise ValueError(f"colorize: the model makes {want} images; the input is {c}x{h}x{w} (give RGB or "
                             f"grayscale images of {H}x{W})")
        if c == 1:  # a luminance image: the observation itself
            y = Colorize.y_from_gray(x)
            return Problem(task, y, gray_to_rgb(x), None, Colorize())
        return make_problem(task, x)
    if task == "superres" and c == C and (h * factor, w * factor) == (H, W):
        op = SuperResolve(factor)
        y = upsample_repeat(x, factor)
        return Problem(task, y, y, None, op, {"factor": factor})
    if (c, h, w) != (C, H, W):
        extra = (f" (or low-resolution {C}x{H // factor}x{W // factor} images for superres x{factor})"
                 if task == "superres" and H % factor == 0 else "")
        raise ValueError(f"{task}: the model makes {want} images; the input images are {c}x{h}x{w}{extra}")
    if observed and task in ("stroke", "denoise", "inpaint"):
        return _problem(task, x, None, mask, factor, sigma, levels, seed, None)
    return make_problem(task, x, mask=mask, factor=factor, sigma=sigma, levels=levels, seed=seed)


def interpolation_noise(n: int, shape: Sequence[int], T: float = T_MAX, seed: int = 0, device="cpu") -> tuple:
    """Two noise batches (z0, z1) of shape (n, C, H, W) at scale T for ``edit(model, 'interpolate', (z0, z1))``."""
    g = torch.Generator(device=device).manual_seed(seed)
    z = T * torch.randn((2, n, *shape), generator=g, device=device)
    return z[0], z[1]


# ----------------------------------------------------------------------------------------------
# baselines
# ----------------------------------------------------------------------------------------------

def naive(problem: Problem) -> Tensor | None:
    """The trivial baseline of a problem, no network: inpaint -- every generated pixel filled with the
    mean colour of the image's known pixels; colorize -- the grey (luminance) image as RGB; superres --
    bicubic upsampling of the low-resolution image (clamped); stroke -- the painting itself; denoise --
    the noisy image (clamped). None for interpolate."""
    t, y = problem.task, problem.y
    if t == "inpaint":
        om = problem.op.mask(y)
        keep = (1 - om).expand_as(y)
        mean = (y * keep).sum((2, 3), keepdim=True) / keep.sum((2, 3), keepdim=True).clamp(min=1)
        return y * (1 - om) + mean * om
    if t == "colorize":
        return gray_to_rgb(luminance(y)).clamp(-1, 1)
    if t == "superres":
        p = problem.kwargs["factor"]
        low = SuperResolve(p).downsample(y)
        return F.interpolate(low, scale_factor=p, mode="bicubic", align_corners=False).clamp(-1, 1)
    if t in ("stroke", "denoise"):
        return y.clamp(-1, 1)
    return None


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------

def psnr(x: Tensor, ref: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, of images in [-1, 1] (the same as on [0, 1] data with
    peak 1): 10 log10(1 / MSE) with MSE on the [0, 1] scale. Shape (B,); inf where x == ref."""
    if x.shape != ref.shape:
        raise ValueError(f"x and ref must have the same shape; got {tuple(x.shape)} and {tuple(ref.shape)}")
    mse = (((x.double() - ref.double()) / 2) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(1 / mse)).float()


def _gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64, device=None) -> Tensor:
    c = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-c ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: Tensor, ref: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    r"""Structural similarity (Wang et al. 2004) per image, of images in [-1, 1], computed on [0, 1]:

    .. math:: \mathrm{SSIM} = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}{(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)}

    with local statistics under a Gaussian window (11 x 11, sigma 1.5, 'valid' positions only), C1 = 0.01^2,
    C2 = 0.03^2 (data range 1), averaged over positions and channels. Shape (B,); 1 for x == ref.
    """
    if x.shape != ref.shape or x.ndim != 4:
        raise ValueError(f"x and ref must be images (B, C, H, W) of the same shape; got {tuple(x.shape)} "
                         f"and {tuple(ref.shape)}")
    if min(x.shape[-2:]) < window:
        raise ValueError(f"SSIM's {window}x{window} window needs images at least that large; got {tuple(x.shape[-2:])}")
    C = x.shape[1]
    a, b = (x.double() + 1) / 2, (ref.double() + 1) / 2
    w = _gaussian_window(window, sigma, device=x.device).expand(C, 1, window, window)

    def blur(v):
        return F.conv2d(v, w, groups=C)
    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a ** 2
    sbb = blur(b * b) - mu_b ** 2
    sab = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    return s.flatten(1).mean(1).float()


def known_part_error(op: EditOperator, result: Tensor, y: Tensor) -> float:
    """max |A(result)(1 - Omega) - A(y)(1 - Omega)|: how far an edit is from keeping the known part of y,
    in the data's units (images in [-1, 1]; computed in float64)."""
    r, y = result.double(), y.double()
    om = op.mask(y)
    return float(((op.A(r) - op.A(y)) * (1 - om)).abs().max())


def classifier_accuracy(classifier, x: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of an in-project classifier (:mod:`cmlite.image.classifier`) on images x in [-1, 1]
    (quantised to uint8 first, as saved images are)."""
    from .classifier import accuracy
    from .data import to_uint8
    return accuracy(classifier, to_uint8(x), labels, batch_size)
