r"""Boundary-condition parameterisations of the consistency function f_theta (Song et al. 2023, §3).

Boundary condition: f(x, eps) = x for every x. Two ways to build it into a free-form network F_theta:

* ``"skip"`` (used in practice; Appendix C):

  .. math:: f_\theta(x, t) = c_{skip}(t)\, x + c_{out}(t)\, F_\theta(c_{in}(t)\, x, c_{noise}(t)),

  with c_skip(t) = sigma_data^2 / ((t - eps)^2 + sigma_data^2), c_out(t) = sigma_data (t - eps) / sqrt(sigma_data^2 + t^2),
  c_in(t) = 1 / sqrt(t^2 + sigma_data^2), c_noise(t) = ln(t) / 4. Then c_skip(eps) = 1, c_out(eps) = 0 exactly,
  and f_theta is differentiable in t.

* ``"piecewise"``: f_theta(x, t) = x if t = eps, else F_theta(x, t), where F_theta is the EDM denoiser
  (the same scalings with eps = 0). Meets the condition, but jumps at t = eps.

:class:`EDMDenoiser` is the diffusion model D(x, t) of Karras et al. (2022) (the teacher), with the
scalings of the skip form at eps = 0.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor, nn

from ._checks import append_dims, as_time, check_time_range
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


class ConsistencyModel(nn.Module):
    r"""The consistency function f_theta(x, t) around a network ``net(x_in, c_noise)``.

    Args:
        net: any module mapping (x of shape (B, ...), c_noise of shape (B,)) to a tensor shaped like x.
        sigma_data: data standard deviation (0.5 for images in [-1, 1]).
        eps, T: the time range [eps, T]; times outside it raise ValueError.
        parameterization: ``"skip"`` (default) or ``"piecewise"``; both satisfy f_theta(x, eps) = x exactly.

    ``model(x, t)`` evaluates f_theta; t may be a number or a tensor of shape (B,). Extra keyword
    arguments (e.g. ``class_labels``) go to the network unchanged: ``model(x, t, class_labels=y)``.
    Times are range-checked when given as numbers or CPU tensors; time tensors on an accelerator only
    with ``check_device_times = True`` (the check reads them back, a host synchronisation per call).
    """

    PARAMETERIZATIONS = ("skip", "piecewise")
    check_device_times: bool = False

    def __init__(self, net: nn.Module, sigma_data: float = SIGMA_DATA, eps: float = EPS,
                 T: float = T_MAX, parameterization: str = "skip"):
        super().__init__()
        if parameterization not in self.PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {self.PARAMETERIZATIONS}; got {parameterization!r}")
        if not (0 < eps < T):
            raise ValueError(f"need 0 < eps < T; got eps={eps}, T={T}")
        self.net = net
        self.sigma_data, self.eps, self.T = float(sigma_data), float(eps), float(T)
        self.parameterization = parameterization

    def get_scalings(self, t: Tensor):
        """(c_skip, c_out, c_in, c_noise) of this parameterisation at times t (see :func:`get_scalings`)."""
        return get_scalings(t, self.sigma_data, self.eps if self.parameterization == "skip" else 0.0)

    def forward(self, x: Tensor, t, **cond) -> Tensor:
        t = _checked_times(t, x, self.eps, self.T, self.check_device_times)
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
