"""Small input checks shared by the library: clear errors for wrong shapes and times."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dimensions to `v` until it has `ndim` dimensions (for broadcasting
    a per-sample time of shape (B,) against x of shape (B, ...))."""
    if v.ndim > ndim:
        raise ValueError(f"cannot broadcast a tensor with {v.ndim} dims against one with {ndim} dims")
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def as_time(t, x: Tensor) -> Tensor:
    """Return `t` as a float tensor of shape (B,) on x's device and dtype.

    `t` may be a Python number, a 0-d tensor or a tensor of shape (B,) where B = x.shape[0].
    """
    if x.ndim < 1:
        raise ValueError("x must have a batch dimension: shape (batch, ...); got a 0-d tensor")
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(
            f"t must be a scalar or have shape (batch,) = ({x.shape[0]},); got shape {tuple(t.shape)}. "
            "Pass one time per sample, or a single number for the whole batch."
        )
    return t


def check_time_range(t: Tensor, eps: float, T: float, name: str = "t") -> None:
    """Raise ValueError if any entry of t lies outside [eps, T] (with a relative slack of 1e-6)."""
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    lo, hi = float(t.min()), float(t.max())
    slack = 1e-6
    if lo < eps * (1 - slack) or hi > T * (1 + slack):
        raise ValueError(
            f"{name} must lie in [eps, T] = [{eps:g}, {T:g}]; got values in [{lo:g}, {hi:g}]. "
            "Consistency models are defined only on this interval: clamp or rescale the times."
        )


def check_N(N: int) -> int:
    """Check that a discretisation size N is an integer >= 2."""
    if isinstance(N, bool) or not isinstance(N, (int,)) and not (isinstance(N, float) and N.is_integer()):
        raise ValueError(f"N must be an integer >= 2; got {N!r}")
    N = int(N)
    if N < 2:
        raise ValueError(f"N must be >= 2 (the grid needs t_1 = eps and t_N = T); got N = {N}")
    return N


def check_finite_loss(loss, step: int | None = None) -> None:
    """Raise FloatingPointError with advice if a loss (a number or a 0-d tensor) is NaN or infinite."""
    value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
    if not math.isfinite(value):
        where = f" at step {step}" if step is not None else ""
        raise FloatingPointError(
            f"loss is {value}{where}. Training diverged: lower the learning rate, enable gradient clipping "
            "(TrainConfig.grad_clip), check the data for NaN/inf, or turn off mixed precision "
            "(TrainConfig.precision='fp32'). Checkpoints written before this step are intact."
        )
