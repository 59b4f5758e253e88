r"""Boundary-condition parameterisations of the consistency function f_theta (Song et al. 2023, §3).

Boundary condition: f(x, eps) = x for every x. Two ways to build it into a free-form network F_theta:

* ``"skip"`` (used in practice; Appendix C):

  .. math:: f_\theta(x, t) = c_{skip}(t)\, x + c_{out}(t)\, F_\theta(c_{in}(t)\, x, c_{noise}(t)),

  with c_skip(t) = sigma_data^2 / ((t - eps)^2 + sigma_data^2), c_out(t) = sigma_data (t - eps) / sqrt(sigma_data^2 + t^2),
  c_in(t) = 1 / sqrt(t^2 + sigma_data^2), c_noise(t) = ln(t) / 4. Then c_skip(eps) = 1, c_out(eps) = 0 exactly,
  and f_theta is differentiable in t.

* ``"piecewise"``: f_theta(x, t) = x if t = eps, else F_theta(x, t), where F_theta is the EDM denoiser
  (the same scalings with eps = 0). Meets the condition, but jumps at t = eps.

* ``"trigflow"`` (Lu & Song 2025, "Simplifying, stabilizing and scaling continuous-time consistency
  models"; the sCM losses of :mod:`cmlite.continuous` need it). TrigFlow time s in [0, pi/2] and state

  .. math:: x_s = \cos(s)\, x_0 + \sin(s)\, \sigma_d z,\qquad
            f_\theta(x_s, s) = \cos(s)\, x_s - \sin(s)\, \sigma_d\, F_\theta(x_s / \sigma_d,\ c_{noise}(s)),

  so f_theta(x, 0) = x exactly. The map to this library's (EDM) time and state is

  .. math:: t = \sigma_d \tan s,\quad s = \arctan(t / \sigma_d),\quad x_{edm} = x_s / \cos s,\quad
            x_s = \cos(s)\, x_{edm} = \sigma_d\, x_{edm} / \sqrt{t^2 + \sigma_d^2}

  (:func:`edm_to_trigflow`, :func:`trigflow_to_edm`), under which the model is called like every other:
  ``model(x, t)`` with EDM x and t in [eps, T] returns f_theta(cos(s) x, s). In EDM terms this is the
  skip form with eps = 0 and F replaced by -F: cos^2 s = c_skip, sigma_d sin s = c_out, x_s / sigma_d =
  c_in x (at eps = 0). Hence f_theta(x, eps) = x only up to O(eps / sigma_d): the boundary holds at s = 0,
  i.e. EDM t = 0, the continuous-time convention. ``c_noise(s) = s`` (sCM's choice; ``trig_c_noise="edm"``
  feeds EDM's ln(sigma_d tan s) / 4 instead). ``adaptive_weight=True`` adds sCM's learned weighting
  w_phi(s) (:class:`AdaptiveWeight`) as a submodule, so that the optimiser, checkpoints and EMA copies carry it.

:class:`EDMDenoiser` is the diffusion model D(x, t) of Karras et al. (2022) (the teacher), with the
scalings of the skip form at eps = 0.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from ._checks import append_dims, as_time, check_time_range
from .nets import SinusoidalEmbedding
from .schedules import EPS, SIGMA_DATA, T_MAX


def get_scalings(t: Tensor, sigma_data: float = SIGMA_DATA, eps: float = EPS):
    r"""Return (c_skip, c_out, c_in, c_noise) at times t (shape (B,)):

    .. math:: c_{skip} = \frac{\sigma_d^2}{(t-\epsilon)^2 + \sigma_d^2},\quad
              c_{out} = \frac{\sigma_d (t - \epsilon)}{\sqrt{\sigma_d^2 + t^2}},\quad
              c_{in} = \frac{1}{\sqrt{t^2 + \sigma_d^2}},\quad c_{noise} = \tfrac14 \ln t

    ``eps = 0`` gives EDM's preconditioning (then the boundary condition fails at t = eps).
    """
    c_skip = sigma_data ** 2 / ((t - eps) ** 2 + sigma_data ** 2)
    c_out = sigma_data * (t - eps) / torch.sqrt(sigma_data ** 2 + t ** 2)
    c_in = 1 / torch.sqrt(t ** 2 + sigma_data ** 2)
    c_noise = 0.25 * torch.log(t)
    return c_skip, c_out, c_in, c_noise


def _checked_times(t, x: Tensor, eps: float, T: float, check_device: bool) -> Tensor:
    """Times of shape (B,) on x's device, range-checked without waiting for an accelerator.

    A number is checked on the host and filled on the device (``torch.as_tensor(number, device=cuda)``
    would copy from the host and wait for the device). A tensor on the CPU is checked (no cost). A tensor
    on an accelerator is checked only with ``check_device`` (reading its min and max back stalls the
    device on every call; the losses build their times from the grid, in range by construction)."""
    if isinstance(t, numbers.Real) and x.device.type != "cpu" and x.ndim >= 1:
        if not torch.compiler.is_compiling():
            check_time_range(torch.tensor([float(t)], dtype=torch.float64), eps, T)
        return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    t = as_time(t, x)
    if not torch.compiler.is_compiling() and (t.device.type == "cpu" or check_device):
        check_time_range(t, eps, T)
    return t


def edm_to_trigflow(x: Tensor, t, sigma_data: float = SIGMA_DATA) -> tuple[Tensor, Tensor]:
    r"""EDM state and time (x = x_0 + t z, t > 0) to TrigFlow (x_s, s):

    .. math:: s = \arctan(t / \sigma_d),\qquad x_s = \cos(s)\, x

    t: a number or a tensor of shape (B,). Returns (x_s, s) with s of shape (B,)."""
    t = as_time(t, x)
    s = torch.atan(t / sigma_data)
    return append_dims(torch.cos(s), x.ndim) * x, s


def trigflow_to_edm(x_s: Tensor, s, sigma_data: float = SIGMA_DATA) -> tuple[Tensor, Tensor]:
    r"""TrigFlow state and time (x_s = cos(s) x_0 + sin(s) sigma_d z, s in [0, pi/2)) to EDM (x, t):

    .. math:: t = \sigma_d \tan s,\qquad x = x_s / \cos s

    The inverse of :func:`edm_to_trigflow`. s = pi/2 (pure noise) has no finite EDM time."""
    s = as_time(s, x_s)
    return x_s / append_dims(torch.cos(s), x_s.ndim), sigma_data * torch.tan(s)


def trigflow_c_noise(s: Tensor, kind: str = "t", sigma_data: float = SIGMA_DATA) -> Tensor:
    """The network's time input for TrigFlow time s: ``"t"``: c_noise = s (sCM's choice, smooth on all of
    [0, pi/2]); ``"edm"``: c_noise = ln(sigma_d tan s) / 4, EDM's ln(t) / 4 at the same noise level."""
    if kind == "t":
        return s
    if kind == "edm":
        return 0.25 * torch.log(sigma_data * torch.tan(s))
    raise ValueError(f"trig_c_noise must be 't' or 'edm'; got {kind!r}")


class AdaptiveWeight(nn.Module):
    r"""sCM's learned weighting w_phi(s) (Lu & Song 2025, adaptive weighting; as EDM2's uncertainty
    weighting): a linear layer on a sinusoidal embedding of the TrigFlow time s, zero-initialised so that
    w_phi = 0 at the start. The loss uses it as e^{w_phi(s)} / D * ||...||^2 - w_phi(s), whose minimum over
    w_phi is at e^{-w_phi} = the expected squared error / D: the network learns the loss scale per time and
    divides it out. ``forward(s)`` takes s of shape (B,) and returns w of shape (B,)."""

    def __init__(self, emb_dim: int = 32, max_freq: float = 16.0):
        super().__init__()
        self.embed = SinusoidalEmbedding(emb_dim, max_freq)
        self.linear = nn.Linear(emb_dim, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, s: Tensor) -> Tensor:
        return self.linear(self.embed(s).to(self.linear.weight.dtype)).squeeze(-1)


class ConsistencyModel(nn.Module):
    r"""The consistency function f_theta(x, t) around a network ``net(x_in, c_noise)``.

    Args:
        net: any module mapping (x of shape (B, ...), c_noise of shape (B,)) to a tensor shaped like x.
        sigma_data: data standard deviation (0.5 for images in [-1, 1]).
        eps, T: the time range [eps, T]; times outside it raise ValueError.
        parameterization: ``"skip"`` (default) or ``"piecewise"``; both satisfy f_theta(x, eps) = x exactly.
            ``"trigflow"``: sCM's TrigFlow form (module docstring), exact at s = 0 (EDM t = 0), not at eps.
        trig_c_noise: TrigFlow only: the network's time input, ``"t"`` (c_noise = s) or ``"edm"``
            (:func:`trigflow_c_noise`).
        adaptive_weight: TrigFlow only: ``True`` adds sCM's :class:`AdaptiveWeight` as ``self.weight_net``
            (or pass a module mapping s of shape (B,) to (B,)); it is trained with the network.

    ``model(x, t)`` evaluates f_theta; t may be a number or a tensor of shape (B,). Extra keyword
    arguments (e.g. ``class_labels``) go to the network unchanged: ``model(x, t, class_labels=y)``.
    Times are range-checked when given as numbers or CPU tensors; time tensors on an accelerator only
    with ``check_device_times = True`` (the check reads them back, a host synchronisation per call).

    TrigFlow models also take ``model(x_s, s, raw=True)``: TrigFlow state and time in, ``(F, w)`` out, the
    raw network output F_theta(x_s / sigma_d, c_noise(s)) and the adaptive log-weight w_phi(s) (None without
    one), in one call, so that a data-parallel wrapper sees every parameter used (the sCM loss needs F).
    """

    PARAMETERIZATIONS = ("skip", "piecewise", "trigflow")
    check_device_times: bool = False

    def __init__(self, net: nn.Module, sigma_data: float = SIGMA_DATA, eps: float = EPS,
                 T: float = T_MAX, parameterization: str = "skip", trig_c_noise: str = "t",
                 adaptive_weight: bool | nn.Module = False):
        super().__init__()
        if parameterization not in self.PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {self.PARAMETERIZATIONS}; got {parameterization!r}")
        if not (0 < eps < T):
            raise ValueError(f"need 0 < eps < T; got eps={eps}, T={T}")
        self.net = net
        self.sigma_data, self.eps, self.T = float(sigma_data), float(eps), float(T)
        self.parameterization = parameterization
        if parameterization == "trigflow":
            trigflow_c_noise(torch.ones(1), trig_c_noise)  # fail early on an unknown name
            self.trig_c_noise = trig_c_noise
            if adaptive_weight is True:
                adaptive_weight = AdaptiveWeight()
            self.weight_net = None if adaptive_weight is False or adaptive_weight is None else adaptive_weight
        elif adaptive_weight not in (False, None) or trig_c_noise != "t":
            raise ValueError("trig_c_noise and adaptive_weight belong to parameterization='trigflow'; "
                             f"this model is {parameterization!r}")

    def get_scalings(self, t: Tensor):
        """(c_skip, c_out, c_in, c_noise) of this parameterisation at times t (see :func:`get_scalings`)."""
        return get_scalings(t, self.sigma_data, self.eps if self.parameterization == "skip" else 0.0)

    def trigflow_F(self, x_s: Tensor, s: Tensor, **cond) -> Tensor:
        """TrigFlow only: the raw network output F_theta(x_s / sigma_d, c_noise(s)) (s of shape (B,))."""
        F = self.net(x_s / self.sigma_data, trigflow_c_noise(s, self.trig_c_noise, self.sigma_data), **cond)
        if F.shape != x_s.shape:
            raise ValueError(f"the network returned shape {tuple(F.shape)} for input {tuple(x_s.shape)}; "
                             "it must return a tensor shaped like its input")
        return F

    def trigflow_f(self, x_s: Tensor, s, **cond) -> Tensor:
        r"""TrigFlow only: f_theta(x_s, s) = cos(s) x_s - sin(s) sigma_d F_theta(x_s / sigma_d, c_noise(s)),
        for TrigFlow state x_s and time s in [0, pi/2] (a number or shape (B,)). f_theta(x, 0) = x exactly."""
        if self.parameterization != "trigflow":
            raise ValueError(f"trigflow_f needs parameterization='trigflow'; this model is {self.parameterization!r}")
        s = as_time(s, x_s)
        c, sn = (append_dims(v, x_s.ndim) for v in (torch.cos(s), torch.sin(s)))
        return c * x_s - sn * self.sigma_data * self.trigflow_F(x_s, s, **cond)

    def forward(self, x: Tensor, t, raw: bool = False, **cond) -> Tensor:
        if raw:
            if self.parameterization != "trigflow":
                raise ValueError("raw=True (TrigFlow state and time in, raw network output out) needs "
                                 f"parameterization='trigflow'; this model is {self.parameterization!r}")
            s = as_time(t, x)
            return self.trigflow_F(x, s, **cond), (None if self.weight_net is None else self.weight_net(s))
        t = _checked_times(t, x, self.eps, self.T, self.check_device_times)
        if self.parameterization == "trigflow":
            x_s, s = edm_to_trigflow(x, t, self.sigma_data)
            return self.trigflow_f(x_s, s, **cond)
        c_skip, c_out, c_in, c_noise = (append_dims(c, x.ndim) if i < 3 else c
                                        for i, c in enumerate(self.get_scalings(t)))
        F = self.net(c_in * x, c_noise, **cond)
        if F.shape != x.shape:
            raise ValueError(f"the network returned shape {tuple(F.shape)} for input {tuple(x.shape)}; "
                             "it must return a tensor shaped like its input")
        out = c_skip * x + c_out * F
        if self.parameterization == "piecewise":
            out = torch.where(append_dims(t == self.eps, x.ndim), x, out)
        return out


class EDMDenoiser(nn.Module):
    r"""Diffusion denoiser D_phi(x, t) = c_skip x + c_out F_phi(c_in x, c_noise) with EDM scalings
    (:func:`get_scalings` at eps = 0). Train it with :class:`cmlite.teacher.DenoisingScoreMatchingLoss`;
    it is the teacher of consistency distillation (score = (D - x)/t^2). Extra keyword arguments
    (``class_labels``) go to the network. Times are checked (finite, > 0) when given as numbers or CPU
    tensors; time tensors on an accelerator only with ``check_device_times = True`` (a host sync per call)."""

    check_device_times: bool = False

    def __init__(self, net: nn.Module, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.net, self.sigma_data = net, float(sigma_data)

    def forward(self, x: Tensor, t, **cond) -> Tensor:
        if isinstance(t, numbers.Real) and x.device.type != "cpu" and x.ndim >= 1:
            if not (math.isfinite(float(t)) and float(t) > 0):
                raise ValueError("the denoiser needs finite times t > 0")
            t = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        else:
            t = as_time(t, x)
            if not torch.compiler.is_compiling() and (t.device.type == "cpu" or self.check_device_times) \
                    and ((t <= 0).any() or not torch.isfinite(t).all()):
                raise ValueError("the denoiser needs finite times t > 0")
        c_skip, c_out, c_in, c_noise = get_scalings(t, self.sigma_data, 0.0)
        c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in (c_skip, c_out, c_in))
        return c_skip * x + c_out * self.net(c_in * x, c_noise, **cond)
