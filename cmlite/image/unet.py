r"""The DDPM++ U-Net of EDM (Karras et al. 2022, "SongUNet"), the CIFAR-10 network of EDM and ECT.

``UNet(config)(x, c_noise, class_labels=None)`` is the free-form network F_theta(c_in x, c_noise) that
:class:`cmlite.parameterization.ConsistencyModel` and :class:`~cmlite.parameterization.EDMDenoiser`
wrap; it returns a tensor shaped like x. The architecture:

* mapping: c_noise (the caller passes ln(t)/4) -> sinusoidal embedding [sin, cos] of
  ``model_channels * channel_mult_noise`` channels (+ a linear embedding of the one-hot class label)
  -> Linear-SiLU-Linear-SiLU -> emb of ``model_channels * channel_mult_emb`` channels;
* encoder: a 3x3 conv, then per level (channels ``model_channels * channel_mult[level]``) a
  downsampling residual block (levels > 0) and ``num_blocks`` residual blocks;
* decoder: two blocks at the lowest level (the first with attention), then per level an upsampling
  block (levels < last) and ``num_blocks + 1`` blocks, each fed the concatenated encoder skip;
* output: GroupNorm-SiLU-3x3 conv. Self-attention follows the residual blocks at the resolutions in
  ``attn_resolutions`` (in terms of ``img_resolution``; the decoder uses it in the last block of a level).

Each residual block is GroupNorm-SiLU-conv3x3 (with 2x resampling by an FIR filter), plus the
embedding, GroupNorm-SiLU-dropout-conv3x3, a 1x1 conv on the skip path when shapes change, and output
scaled by 1/sqrt(2). Weights are xavier-uniform; the last conv of each block, the attention output and
the output conv start at 1e-5 of that (EDM), so a new net outputs ~0 and f_theta starts as c_skip x.
Any H, W divisible by 2**(levels-1) work (28 -> 14 -> 7 for MNIST with three levels).

Every block is forward-mode differentiable (``torch.func.jvp``, ``torch.autograd.forward_ad``), as
continuous-time consistency training needs (the tangent of F_theta along (x', t')), in eager mode and in a
``torch.compile``'d function that calls ``torch.func.jvp`` itself (dynamo traces the transform). Not through
a network compiled in place and called with dual tensors: in torch 2.13 Inductor's compiled graph drops
their tangents (wrong by percents, no error). While forward-mode AD is active (:func:`forward_ad_active`)
GroupNorm computes its statistics with plain ops (:func:`group_norm_by_sums`; its channels-last autograd
Function also has a written-out JVP rule) and attention its explicit softmax formula
(:attr:`Attention.math_path`). Dropout's tangent uses its primal's mask, and :func:`dropout` draws that
mask in the same order in a plain pass, in both forward-mode APIs and in a compiled graph with Inductor's
``fallback_random`` (same RNG state, same mask).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SKIP_SCALE = math.sqrt(0.5)
NORM_PATHS = ("compiled_no_grad", "always", "never")   # when GroupNorm takes its channels-last path


@dataclass
class UNetConfig:
    """Hyper-parameters of :class:`UNet` (names and defaults of EDM's DDPM++ CIFAR-10 network)."""
    img_resolution: int
    in_channels: int
    out_channels: int | None = None      # None = in_channels
    model_channels: int = 128
    channel_mult: tuple = (2, 2, 2)
    num_blocks: int = 4
    attn_resolutions: tuple = (16,)
    dropout: float = 0.13
    num_classes: int = 0                 # 0 = unconditional
    label_dropout: float = 0.0           # for classifier-free guidance
    embedding_type: str = "positional"   # "positional" (DDPM++) or "fourier" (NCSN++)
    channel_mult_noise: int = 1
    resample_filter: tuple = (1, 1)      # (1, 1): nearest up / 2x2 average down; (1, 3, 3, 1) for NCSN++
    channel_mult_emb: int = 4
    attn_heads: int = 1                  # DDPM++ uses one head
    adaptive_scale: bool = False         # EDM's DDPM++: additive embedding
    norm_path: str | None = None         # every GroupNorm's channels_last_path; None = the class's setting

    def __post_init__(self):
        self.out_channels = self.in_channels if self.out_channels is None else self.out_channels
        self.channel_mult, self.attn_resolutions = tuple(self.channel_mult), tuple(self.attn_resolutions)
        self.resample_filter = tuple(self.resample_filter)
        if self.embedding_type not in ("positional", "fourier"):
            raise ValueError(f"embedding_type must be 'positional' or 'fourier'; got {self.embedding_type!r}")
        if (self.model_channels * self.channel_mult_noise) % 2:
            raise ValueError("model_channels * channel_mult_noise must be even (sin/cos pairs)")
        if any(self.model_channels * m % self.attn_heads for m in self.channel_mult):
            raise ValueError(f"attn_heads={self.attn_heads} must divide every level's channel count")
        if self.norm_path not in (None, *NORM_PATHS):
            raise ValueError(f"norm_path must be one of {NORM_PATHS} or None (GroupNorm.channels_last_path, "
                             f"'compiled_no_grad' unless changed); got {self.norm_path!r}")
        check_resolution(self, self.img_resolution, self.img_resolution)


def check_resolution(config: UNetConfig, h: int, w: int) -> None:
    """Raise ValueError unless an h x w image can be halved len(channel_mult) - 1 times."""
    k = 2 ** (len(config.channel_mult) - 1)
    if h % k or w % k or h < k or w < k:
        raise ValueError(f"a UNet with channel_mult={config.channel_mult} halves the resolution "
                         f"{len(config.channel_mult) - 1} times, so H and W must be multiples of {k}; "
                         f"got {h}x{w}")


UNET_PRESETS = {
    # CPU tests: 8x8 to 32x32, any channel count (override in_channels / img_resolution)
    "tiny": dict(img_resolution=16, in_channels=3, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                 attn_resolutions=(8,), dropout=0.0),
    "mnist": dict(img_resolution=28, in_channels=1, model_channels=64, channel_mult=(1, 2, 2), num_blocks=2,
                  attn_resolutions=(7,), dropout=0.1),
    # "mnist" at half the width: 1.75M parameters (3.5 MB as fp16 safetensors), the MNIST recipes' network
    "mnist-small": dict(img_resolution=28, in_channels=1, model_channels=32, channel_mult=(1, 2, 2), num_blocks=2,
                        attn_resolutions=(7,), dropout=0.1),
    # EDM's DDPM++ (train.py --arch=ddpmpp, as used by ECT): 55.73M parameters
    "cifar10": dict(img_resolution=32, in_channels=3, model_channels=128, channel_mult=(2, 2, 2), num_blocks=4,
                    attn_resolutions=(16,), dropout=0.13),
    # "cifar10" at half the width and 3 blocks: 11.4M parameters, 1/5 of the FLOPs, for short runs
    "cifar10-small": dict(img_resolution=32, in_channels=3, model_channels=64, channel_mult=(2, 2, 2),
                          num_blocks=3, attn_resolutions=(16,), dropout=0.13),
}


def unet_config(name: str, **overrides) -> UNetConfig:
    """The preset ``name`` of :data:`UNET_PRESETS` with keyword overrides, e.g.
    ``unet_config("cifar10", num_classes=10)``."""
    if name not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; choose from {sorted(UNET_PRESETS)}")
    return UNetConfig(**{**UNET_PRESETS[name], **overrides})


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module`` (buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


def _init(layer: nn.Module, scale: float = 1.0) -> nn.Module:
    """EDM's init: xavier-uniform weight times ``scale``, zero bias."""
    nn.init.xavier_uniform_(layer.weight)
    with torch.no_grad():
        layer.weight.mul_(scale)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def conv(cin: int, cout: int, kernel: int, scale: float = 1.0) -> nn.Conv2d:
    return _init(nn.Conv2d(cin, cout, kernel, padding=kernel // 2), scale)


def linear(cin: int, cout: int, scale: float = 1.0) -> nn.Linear:
    return _init(nn.Linear(cin, cout), scale)


def _is_channels_last(x: Tensor) -> bool:
    """True for a 4-d tensor laid out channels-last (and not also contiguous, as with C = 1 or H = W = 1)."""
    return x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def forward_ad_active() -> bool:
    """True while forward-mode AD may be computing tangents: inside ``torch.func.jvp`` (which opens a dual
    level) or a ``torch.autograd.forward_ad.dual_level()`` block. ``torch.compile`` guards on this level, so
    a compiled graph is specialised on it."""
    return torch.autograd.forward_ad._current_level >= 0


def dropout(h: Tensor, p: float, training: bool) -> Tensor:
    """Dropout, h * keep / (1 - p) with keep = (U >= p) for U uniform on [0, 1), whose mask is drawn in h's
    logical (N, C, H, W) order whatever its memory layout: the same RNG state gives the same mask in a plain
    forward pass, under ``torch.func.jvp`` and ``torch.autograd.forward_ad``, eager or compiled with
    Inductor's ``fallback_random``. ``F.dropout`` under ``torch.func.jvp`` draws a channels-last tensor's mask
    in another order than in a plain pass, and the continuous-time losses need the JVP pass and the online
    pass to drop the same units."""
    if not training or p == 0:
        return h
    keep = torch.rand(h.shape, device=h.device) >= p
    return h * keep.to(h.dtype) * (1.0 / (1.0 - p))


def _per_channel(t: Tensor, c: int) -> Tensor:
    """(N, G) -> (N, C): each group's value repeated for its C/G channels."""
    n, g = t.shape
    return t[:, :, None].expand(n, g, c // g).reshape(n, c)


def _group_mean(t: Tensor, g: int, k: int) -> Tensor:
    """(N, C, H, W) -> (N, G): the mean over each group's C/G x H x W elements (k of them), as column sums
    over H, W first (in order on channels-last memory), then sums over the C/G channels of a group."""
    n, c = t.shape[:2]
    return t.sum(dim=(2, 3)).view(n, g, c // g).sum(-1) / k


def _stat_dtype(x: Tensor) -> torch.dtype:
    """The dtype of GroupNorm's statistics: float32 for bf16, fp16 and float32 inputs, float64 for float64."""
    return torch.promote_types(x.dtype, torch.float32)


def group_norm_by_sums(x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float):
    """GroupNorm written with plain differentiable ops, returning (y, mu, rstd): statistics from per-channel
    sums of x and x^2 over H, W (mu and E[x^2] - mu^2 per group, in float32, or float64 for float64 inputs),
    y in the parameters' dtype (the statistics' dtype without parameters). The forward pass of
    :class:`_ChannelsLastGroupNorm`; called directly, autograd supplies both derivatives."""
    n, c, h, w = x.shape
    if c % groups:
        raise ValueError(f"GroupNorm: {groups} groups do not divide {c} channels")
    k, xf = (c // groups) * h * w, x.to(_stat_dtype(x))
    mean = _group_mean(xf, groups, k)
    rstd = torch.rsqrt((_group_mean(xf.square(), groups, k) - mean.square()).clamp_min(0) + eps)
    scale = _per_channel(rstd, c) if weight is None else _per_channel(rstd, c) * weight
    shift = -_per_channel(mean, c) * scale if bias is None else bias - _per_channel(mean, c) * scale
    y = xf * scale[:, :, None, None] + shift[:, :, None, None]
    return (y if weight is None else y.to(weight.dtype)), mean, rstd


class _ChannelsLastGroupNormGrad(torch.autograd.Function):
    r"""y = (x - mu_g) rstd_g gamma + beta with its gradient and its forward-mode derivative written out (every
    pass in memory order on channels-last tensors, results channels-last, statistics in float32, or float64
    for float64 inputs). With xhat = (x - mu) rstd, k elements per group and mean_g the mean over a group:

    * d mu = mean_g(dx) and d rstd = -rstd^2 mean_g(xhat dx), so d xhat = P(dx) with the projection
      P(v) = rstd (v - mean_g(v) - xhat mean_g(xhat v)), which is symmetric;
    * backward: dx = P(dy gamma), dgamma = sum dy xhat, dbeta = sum dy;
    * forward mode (``jvp``, for ``torch.func.jvp`` and ``torch.autograd.forward_ad``): with tangents
      (x', gamma', beta'), y' = P(x') gamma + xhat gamma' + beta'.

    This class has the forward and backward passes, :class:`_ChannelsLastGroupNorm` adds ``jvp``: two classes,
    because ``torch.compile`` cannot trace an ``autograd.Function`` that defines ``jvp`` while autograd is on (it
    breaks the graph at each norm), so the training passes use this one.

    ``apply`` returns (y, mu, rstd). mu and rstd are outputs (the jvp reuses them) with their own derivatives
    (backward: dx += dmu / k - rstd^2 xhat drstd / k), so that gradients through a tangent, which depends on
    them, are right too.
    """

    @staticmethod
    def forward(x, weight, bias, groups: int, eps: float):
        return group_norm_by_sums(x, weight, bias, groups, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, groups, _ = inputs
        _, mean, rstd = output
        ctx.set_materialize_grads(False)     # unused outputs (mu, rstd as a rule) get no gradient pass
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups = groups

    @staticmethod
    def _xhat(x, mean, rstd):
        """(xhat, rstd per channel), both (N, C, 1 or H, 1 or W), in the statistics' dtype."""
        c = x.shape[1]
        r = _per_channel(rstd, c)[:, :, None, None]
        return (x.to(rstd.dtype) - _per_channel(mean, c)[:, :, None, None]) * r, r

    @staticmethod
    def _project(v, xhat, r, g: int):
        """(P(v), mean_g(v), mean_g(v xhat)) with P(v) = rstd (v - mean_g(v) - xhat mean_g(v xhat))."""
        n, c, h, w = v.shape
        k = (c // g) * h * w
        a, b = _group_mean(v, g, k), _group_mean(v * xhat, g, k)
        pv = (v - _per_channel(a, c)[:, :, None, None] - xhat * _per_channel(b, c)[:, :, None, None]) * r
        return pv, a, b                                        # full-size operand first: its layout

    @staticmethod
    def backward(ctx, dy, dmean, drstd):
        x, weight, mean, rstd = ctx.saved_tensors
        n, c, h, w = x.shape
        xhat, r = _ChannelsLastGroupNormGrad._xhat(x, mean, rstd)
        dx = dweight = dbias = None
        if dy is not None:
            dyf = dy.to(rstd.dtype)
            dx = _ChannelsLastGroupNormGrad._project(dyf * weight.to(rstd.dtype)[:, None, None], xhat, r, ctx.groups)[0]
            dweight = (dyf * xhat).sum(dim=(0, 2, 3)).to(weight.dtype)
            dbias = dyf.sum(dim=(0, 2, 3)).to(weight.dtype)
        k = (c // ctx.groups) * h * w
        if drstd is not None:                                  # d rstd / dx = -rstd^2 xhat / k
            term = xhat * _per_channel(-rstd.square() * drstd.to(rstd.dtype) / k, c)[:, :, None, None]
            dx = term if dx is None else dx + term
        if dmean is not None:                                  # d mu / dx = 1 / k
            term = _per_channel(dmean.to(rstd.dtype) / k, c)[:, :, None, None]
            dx = torch.zeros_like(xhat) + term if dx is None else dx + term
        return (None if dx is None else dx.to(x.dtype)), dweight, dbias, None, None


class _ChannelsLastGroupNorm(_ChannelsLastGroupNormGrad):
    """:class:`_ChannelsLastGroupNormGrad` with its forward-mode derivative (``jvp``), for ``torch.func.jvp``
    and ``torch.autograd.forward_ad``."""

    @staticmethod
    def setup_context(ctx, inputs, output):
        _ChannelsLastGroupNormGrad.setup_context(ctx, inputs, output)
        ctx.save_for_forward(inputs[0], inputs[1], output[1], output[2])   # x, weight, mu, rstd

    @staticmethod
    def jvp(ctx, dx, dweight, dbias, _dgroups, _deps):
        x, weight, mean, rstd = ctx.saved_tensors
        xhat, r = _ChannelsLastGroupNorm._xhat(x, mean, rstd)
        sd = rstd.dtype
        dy, dmean, drstd = None, torch.zeros_like(mean), torch.zeros_like(rstd)   # a None here fails in torch
        if dx is not None:
            dxhat, dmean, b = _ChannelsLastGroupNorm._project(dx.to(sd), xhat, r, ctx.groups)
            dy, drstd = dxhat * weight.to(sd)[:, None, None], -rstd.square() * b
        if dweight is not None:
            term = xhat * dweight.to(sd)[:, None, None]
            dy = term if dy is None else dy + term
        if dbias is not None:
            term = dbias.to(sd)[:, None, None]
            dy = torch.zeros_like(xhat) + term if dy is None else dy + term
        return dy.to(weight.dtype), dmean, drstd           # jvp runs only when some input has a tangent


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters, same numbers to float32 rounding); on a channels-last input of a
    norm with affine parameters it runs :class:`_ChannelsLastGroupNorm`: statistics from per-channel sums of
    x and x^2 over H, W (mean and E[x^2] - mean^2 per group, in float32), output in the parameters' dtype
    (float32 under autocast, as autocast's GroupNorm).

    Why: on channels-last memory (the layout the convolutions want) ``torch.compile`` writes the library
    GroupNorm as a reduction over each group's C/G x H x W block, whose elements lie C apart, and its
    backward pass returns gradients in the default layout, which cuDNN copies back to channels-last before
    each convolution's backward pass. Here every pass is a column sum or an elementwise map in memory
    order.

    ``GroupNorm.channels_last_path`` (on the class) says when: ``"compiled_no_grad"`` (default) inside
    ``torch.compile`` where autograd is off (compiled sampling, and the target's and teacher's forward
    passes of a compiled training step), ``"always"``, or ``"never"``; ``UNetConfig.norm_path`` sets it on the
    norms of one network (``cmlite train … --set net_overrides.norm_path=always``). Measured on an H100
    (compiled, bf16, batch 512, the 55.7M network): one-step sampling 8.6% faster than with torch's GroupNorm.
    Not used by default in eager mode (torch's fused kernel is one pass; this is several) nor in the training
    passes, where it made the CD step 16% faster and the CT step 3% slower, with one host synchronisation per
    step (docs/speed.md; its backward pass is tested).
    bench/step_bench.py compares them (``fast`` against ``fast-library-gn`` and ``fast-always-gn``).

    Forward-mode derivatives (``torch.func.jvp``, ``torch.autograd.forward_ad``): torch's GroupNorm has a
    forward-mode rule, but in torch 2.13 it fails on channels-last inputs (a view error), and under
    ``torch.compile`` on any input (a fake-tensor error). So while :func:`forward_ad_active`, this norm runs
    :func:`group_norm_by_sums` (the channels-last path's formula as plain ops, any layout: autograd gives its
    tangent, and ``torch.compile`` traces it with autograd on or off), whatever the setting, except that
    ``"always"`` keeps :class:`_ChannelsLastGroupNorm` and its written-out ``jvp`` rule (exact, and traced
    by ``torch.compile`` with autograd off; with autograd on, ``torch.compile`` cannot trace a custom jvp
    and breaks the graph there). Without forward-mode AD, ``"always"`` runs
    :class:`_ChannelsLastGroupNormGrad`, which has no jvp rule and compiles whole with autograd on.
    """
    channels_last_path = "compiled_no_grad"   # a UNet's config.norm_path sets it on its own norms

    def forward(self, x: Tensor) -> Tensor:
        when = self.channels_last_path
        if when not in NORM_PATHS:
            raise ValueError(f"GroupNorm.channels_last_path must be one of {NORM_PATHS}; got {when!r}")
        fwd = forward_ad_active()
        use = when == "always" or (when == "compiled_no_grad" and not fwd and not torch.is_grad_enabled()
                                   and torch.compiler.is_compiling())
        if use and self.affine and _is_channels_last(x):   # the jvp rule only where tangents are computed
            fn = _ChannelsLastGroupNorm if fwd else _ChannelsLastGroupNormGrad
            return fn.apply(x, self.weight, self.bias, self.num_groups, self.eps)[0]
        if fwd:                               # torch's forward-mode rule fails on channels-last and compiled
            return group_norm_by_sums(x, self.weight, self.bias, self.num_groups, self.eps)[0]
        return super().forward(x)


def group_norm(channels: int) -> GroupNorm:
    """GroupNorm with EDM's min(32, C/4) groups, lowered until it divides C."""
    g = max(1, min(32, channels // 4))
    while channels % g:
        g -= 1
    return GroupNorm(g, channels, eps=1e-6)


class Resample(nn.Module):
    """2x up- or down-sampling by a separable FIR filter f f^T / (sum f)^2, applied per channel.
    With f = (1, 1) (DDPM++) this is nearest-neighbour upsampling and 2x2 average pooling, computed as
    such: the same numbers as the depthwise convolution, but ops that ``torch.compile`` can fuse with their
    neighbours, where a depthwise convolution stays a separate library call, forward and backward."""

    def __init__(self, mode: str, filt=(1, 1)):
        super().__init__()
        if mode not in ("up", "down"):
            raise ValueError(f"Resample mode must be 'up' or 'down', got {mode!r}")
        f = torch.as_tensor(filt, dtype=torch.float32)
        self.mode, self.pad, self.box = mode, (len(filt) - 1) // 2, len(filt) == 2 and filt[0] == filt[1]
        self.register_buffer("filt", (torch.outer(f, f) / f.sum() ** 2)[None, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.box:
            return self.nearest_up(x) if self.mode == "up" else F.avg_pool2d(x, 2)
        return self.fir(x)

    @staticmethod
    def nearest_up(x: Tensor) -> Tensor:
        """Nearest-neighbour 2x up-sampling as a broadcast, in x's memory layout: its gradient (the sum over
        each 2x2 block) keeps that layout too, where a compiled ``F.interpolate`` scatters it into a new
        contiguous tensor that a channels-last convolution then copies."""
        b, c, h, w = x.shape
        if _is_channels_last(x):
            y = x.permute(0, 2, 3, 1)[:, :, None, :, None, :].expand(b, h, 2, w, 2, c)
            return y.reshape(b, 2 * h, 2 * w, c).permute(0, 3, 1, 2)
        return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)

    def fir(self, x: Tensor) -> Tensor:
        """The general FIR path: a depthwise (transposed) convolution with f f^T / (sum f)^2."""
        c = x.shape[1]
        if self.mode == "up":
            f = (self.filt * 4).to(x.dtype).repeat(c, 1, 1, 1)
            return F.conv_transpose2d(x, f, stride=2, padding=self.pad, groups=c)
        return F.conv2d(x, self.filt.to(x.dtype).repeat(c, 1, 1, 1), stride=2, padding=self.pad, groups=c)


def attention_math(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    r"""softmax(q k^T / sqrt(d)) v written out with differentiable ops (d = q.shape[-1]; q, k, v of shape
    (..., L, d)): the attention of ``scaled_dot_product_attention``, with both derivatives (backward and
    forward mode) from autograd. It materialises the (..., L, L) weights, and under forward-mode AD their
    tangent too: B x heads x L^2 numbers each (33.5M for CIFAR-10's L = 16 x 16 at batch 512, one head)."""
    w = torch.softmax(q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5), dim=-1)
    return w @ v


class Attention(nn.Module):
    """Self-attention over the H*W positions: GroupNorm, 1x1 qkv conv, fused softmax(q k^T / sqrt(d)) v
    (``scaled_dot_product_attention``), 1x1 output conv; residual, scaled by 1/sqrt(2).

    The qkv weights keep EDM's order (output channel 3 m + j is channel m of q, k, v for j = 0, 1, 2), and
    q, k and v are computed as three 1x1 convolutions with those rows. Each is then a plain (B, C, H, W)
    tensor: in channels-last memory its (B, heads, H*W, C/heads) view has unit stride along C/heads, as the
    fused attention kernels want, and its gradient reaches its convolution in the same layout. (One 3C-
    channel output split by a reshape gives q, k, v with stride 3, which the attention kernel copies, and
    a gradient assembled by a stack, which the convolution's backward pass copies back to channels-last.)

    Forward-mode derivatives (``torch.func.jvp``, as continuous-time consistency training needs): torch's
    fused attention kernels (flash and memory-efficient on CUDA, flash on the CPU) have no forward-mode
    rule and raise. ``Attention.math_path`` (on the class) says when :func:`attention_math` runs instead:
    ``"forward_ad"`` (default) while :func:`forward_ad_active`, ``"always"`` or ``"never"``. What the math
    path costs on a GPU: the L x L logits, weights and the weights' tangent in memory (B x heads x L^2
    each: 33.5M numbers, 134 MB in float32, for CIFAR-10 at batch 512, where this U-Net attends at 16 x 16
    with one head; a quarter of that at 8 x 8), and unfused matmuls and softmax in place of one kernel.
    Small at these resolutions. At large L, only a fused attention kernel with its own JVP keeps memory
    linear in L: the online-softmax tangent of the sCM paper (Lu & Song 2024, appendix F), which its
    authors wrote as a flash-attention JVP kernel.
    """
    math_path = "forward_ad"

    def __init__(self, channels: int, heads: int = 1):
        super().__init__()
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = conv(channels, 3 * channels, 1, math.sqrt(0.2))
        self.proj = conv(channels, channels, 1, 1e-5)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y, wt, bias = self.norm(x), self.qkv.weight, self.qkv.bias
        q, k, v = (F.conv2d(y, wt[j::3], bias[j::3]).reshape(b, self.heads, c // self.heads, h * w).transpose(2, 3)
                   for j in range(3))                       # each (b, heads, h*w, c/heads)
        when = self.math_path
        if when not in ("forward_ad", "always", "never"):
            raise ValueError(f"Attention.math_path must be 'forward_ad', 'always' or 'never'; got {when!r}")
        if when == "always" or (when == "forward_ad" and forward_ad_active()):
            a = attention_math(q, k, v)
        else:
            a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)   # (b, c, h, w), channels-last
        if not x.is_contiguous(memory_format=torch.channels_last):
            a = a.contiguous()                              # x's layout, for the output conv and the residual
        return (x + self.proj(a)) * SKIP_SCALE


class ResBlock(nn.Module):
    """EDM's UNetBlock: h = conv0(SiLU(GN(x))) (resampled), h = SiLU(GN(h + A emb)) (or the adaptive
    scale/shift), h = conv1(dropout(h)); out = (h + skip(x)) / sqrt(2), then optional self-attention."""

    def __init__(self, cin: int, cout: int, emb_channels: int, cfg: UNetConfig, resample: str | None = None,
                 attention: bool = False, cat_skip: bool = False):
        super().__init__()
        self.in_channels, self.cat_skip, self.dropout = cin, cat_skip, cfg.dropout
        self.adaptive_scale = cfg.adaptive_scale
        self.resample = Resample(resample, cfg.resample_filter) if resample else nn.Identity()
        self.norm0, self.conv0 = group_norm(cin), conv(cin, cout, 3)
        self.affine = linear(emb_channels, cout * (2 if cfg.adaptive_scale else 1))
        self.norm1, self.conv1 = group_norm(cout), conv(cout, cout, 3, 1e-5)
        self.skip = conv(cin, cout, 1) if (cin != cout or resample) else None
        self.attn = Attention(cout, cfg.attn_heads) if attention else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(self.resample(F.silu(self.norm0(x))))
        p = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = p.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h + p))
        h = self.conv1(dropout(h, self.dropout, self.training))
        skip = x if self.skip is None else self.skip(self.resample(x))
        x = (h + skip) * SKIP_SCALE
        return x if self.attn is None else self.attn(x)


class NoiseEmbedding(nn.Module):
    """[sin(c w_i), cos(c w_i)]: "positional" w_i = 10000^(-i/(n/2-1)) (DDPM++), or "fourier" fixed random
    w_i ~ 2 pi N(0, 16^2) (NCSN++)."""

    def __init__(self, channels: int, kind: str = "positional"):
        super().__init__()
        n = channels // 2
        if kind == "positional":
            w = (1 / 10000) ** (torch.arange(n, dtype=torch.float32) / max(n - 1, 1))
        else:
            w = 2 * math.pi * 16 * torch.randn(n)
        self.register_buffer("freqs", w, persistent=kind == "fourier")

    def forward(self, c: Tensor) -> Tensor:
        dtype = torch.promote_types(self.freqs.dtype, torch.float32)   # float32 (float64 in a float64 net)
        a = c.to(dtype)[:, None] * self.freqs.to(dtype)[None]
        return torch.cat([a.sin(), a.cos()], dim=1)


class UNet(nn.Module):
    """EDM's DDPM++ U-Net; see the module docstring. ``forward(x, c_noise, class_labels=None)``:
    x (B, C, H, W), c_noise (B,) or a scalar, class_labels int (B,) or one-hot float (B, num_classes)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        mc, emb_ch, noise_ch = cfg.model_channels, cfg.model_channels * cfg.channel_mult_emb, \
            cfg.model_channels * cfg.channel_mult_noise
        self.map_noise = NoiseEmbedding(noise_ch, cfg.embedding_type)
        self.map_label = linear(cfg.num_classes, noise_ch) if cfg.num_classes else None
        self.map_layer0, self.map_layer1 = linear(noise_ch, emb_ch), linear(emb_ch, emb_ch)

        def block(cin, cout, **kw):
            return ResBlock(cin, cout, emb_ch, cfg, **kw)

        # Encoder: every output is kept as a skip for the decoder.
        self.enc_conv = conv(cfg.in_channels, mc, 3)
        self.enc, skips, c = nn.ModuleList(), [mc], mc
        for level, mult in enumerate(cfg.channel_mult):
            res = cfg.img_resolution >> level
            if level > 0:
                self.enc.append(block(c, c, resample="down"))
                skips.append(c)
            for _ in range(cfg.num_blocks):
                self.enc.append(block(c, mc * mult, attention=res in cfg.attn_resolutions))
                c = mc * mult
                skips.append(c)

        # Decoder: blocks with cat_skip=True take the next encoder output, concatenated on channels.
        self.dec = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            res = cfg.img_resolution >> level
            if level == len(cfg.channel_mult) - 1:
                self.dec.extend([block(c, c, attention=True), block(c, c)])
            else:
                self.dec.append(block(c, c, resample="up"))
            for i in range(cfg.num_blocks + 1):
                attn = i == cfg.num_blocks and res in cfg.attn_resolutions
                self.dec.append(block(c + skips.pop(), mc * mult, attention=attn, cat_skip=True))
                c = mc * mult
        self.out_norm, self.out_conv = group_norm(c), conv(c, cfg.out_channels, 3, 1e-5)
        if cfg.norm_path is not None:   # e.g. 'always': cmlite's norm in the training passes too (see GroupNorm)
            for m in self.modules():
                if isinstance(m, GroupNorm):
                    m.channels_last_path = cfg.norm_path

    def embed(self, c_noise: Tensor, class_labels: Tensor | None, batch: int) -> Tensor:
        """The embedding vector emb of shape (B, model_channels * channel_mult_emb)."""
        cfg = self.config
        c_noise = torch.as_tensor(c_noise, device=self.map_layer0.weight.device).reshape(-1).expand(batch)
        emb = self.map_noise(c_noise).to(self.map_layer0.weight.dtype)   # fp32 unless the net was cast
        if cfg.num_classes and class_labels is None:
            raise ValueError(f"this UNet is class-conditional (num_classes={cfg.num_classes}): "
                             "pass class_labels (int of shape (B,) or one-hot of shape (B, num_classes))")
        if not cfg.num_classes and class_labels is not None:
            raise ValueError("this UNet is unconditional (num_classes=0) but class_labels were given")
        if class_labels is not None:
            y = class_labels
            if not y.is_floating_point():   # one-hot without a host sync (out-of-range labels give zeros)
                y = (y.reshape(-1, 1) == torch.arange(cfg.num_classes, device=y.device)).to(emb.dtype)
            if y.shape != (batch, cfg.num_classes):
                raise ValueError(f"class_labels must have shape ({batch},) or ({batch}, {cfg.num_classes}); "
                                 f"got {tuple(class_labels.shape)}")
            y = y.to(emb.dtype)
            if self.training and cfg.label_dropout:
                y = y * (torch.rand(batch, 1, device=y.device) >= cfg.label_dropout).to(y.dtype)
            emb = emb + self.map_label(y * math.sqrt(cfg.num_classes))
        return F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

    def forward(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"UNet expects x of shape (B, {cfg.in_channels}, H, W); got {tuple(x.shape)}")
        check_resolution(cfg, x.shape[2], x.shape[3])
        emb = self.embed(c_noise, class_labels, x.shape[0])
        h = self.enc_conv(x)
        skips = [h]
        for blk in self.enc:
            h = blk(h, emb)
            skips.append(h)
        for blk in self.dec:
            if blk.cat_skip:
                h = torch.cat([h, skips.pop()], dim=1)
            h = blk(h, emb)
        return self.out_conv(F.silu(self.out_norm(h)))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items())
