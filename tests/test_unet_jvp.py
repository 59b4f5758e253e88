"""Forward-mode derivatives (JVPs) through the U-Net (cmlite.image.unet), as continuous-time consistency
training needs them: every block's ``torch.func.jvp`` against central finite differences in float64,
planted bugs that the comparison must catch, and GroupNorm's float32 statistics under bf16 autocast.

Tolerance of the finite-difference (FD) checks. The central difference (f(p + h v) - f(p - h v)) / 2h
differs from the JVP by h^2/6 f'''[v, v, v] (truncation) plus ~ u |f| / h from rounding (u = 1.1e-16 in
float64). For these blocks (weights and inputs of order one) |f'''| / |f'| is O(1 .. 10^2), so with
h = 1e-4 the relative error is ~1e-9 .. 1e-7 and the rounding term ~1e-12: FD_RTOL = 1e-6 passes a
correct JVP with margin (measured here: 1e-12 .. 2.5e-8), while the planted bugs below give errors of 1e-2 and
more. The Fourier embedding has frequencies |w| up to ~300 (2 pi 16 |N(0, 1)|), so its truncation term is
h^2 w^2 / 6: there h = 1e-6 (1.5e-8), and rounding ~1e-16 / (1e-6 * 300) is still negligible.
"""
import math

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, jvp

import cmlite.image.unet as unet_mod
from cmlite.image.unet import (Attention, GroupNorm, NoiseEmbedding, Resample, ResBlock, UNet,
                               _ChannelsLastGroupNorm, _per_channel, forward_ad_active, unet_config)
from cmlite.parameterization import ConsistencyModel

H = 1e-4
FD_RTOL = 1e-6
CL = torch.channels_last


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def fd_error(fn, primals, tangents, h=H, seed=None, fd_seed=None):
    """(relative error of torch.func.jvp against the central difference, jvp's primal output, tangent).
    ``seed``: reseed the global RNG before the JVP (dropout); ``fd_seed`` before each FD evaluation
    (default: the same seed, so that all three draw the same dropout masks)."""
    fd_seed = seed if fd_seed is None else fd_seed

    def call(args, s):
        if s is not None:
            torch.manual_seed(s)
        return args

    out, tan = jvp(fn, call(primals, seed), tangents)
    plus = fn(*call([p + h * t for p, t in zip(primals, tangents)], fd_seed))
    minus = fn(*call([p - h * t for p, t in zip(primals, tangents)], fd_seed))
    return rel_err(tan, (plus - minus) / (2 * h)), out, tan


def perturbed(module, scale=0.3, seed=1):
    """Noise on every parameter, so that near-zero-initialised convs (EDM's 1e-5 init) act like trained ones."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def rand(*shape, channels_last=False, seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) + offset
    return x.contiguous(memory_format=CL) if channels_last else x


# ---------------------------------------------------------------- GroupNorm
def gn_jvp_error(gn, x, seed=3):
    """FD error of the JVP of GroupNorm along tangents of x, gamma and beta together (the x tangent with a
    per-channel offset, so its group mean is far from 0 and a dropped mean term shows)."""
    params = {"weight": gn.weight.detach(), "bias": gn.bias.detach()}
    dx = rand(*x.shape, channels_last=_is_cl(x), seed=seed) + rand(1, x.shape[1], 1, 1, seed=seed + 1)
    tangents = (dx, rand(x.shape[1], seed=seed + 2), rand(x.shape[1], seed=seed + 3))
    fn = lambda x, w, b: functional_call(gn, {"weight": w, "bias": b}, (x,))     # noqa: E731
    return fd_error(fn, (x, params["weight"], params["bias"]), tangents)[0]


def _is_cl(x):
    return unet_mod._is_channels_last(x)


def make_gn(groups=4, channels=16):
    gn = GroupNorm(groups, channels, eps=1e-6).double()
    torch.manual_seed(0)
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    return gn


@pytest.mark.parametrize("path", ["compiled_no_grad", "always", "never"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_jvp_matches_finite_differences(monkeypatch, path, channels_last):
    # every setting x layout: torch's rule (contiguous, default), the written-out jvp of the channels-last
    # Function ("always" on channels-last), or group_norm_by_sums (forward AD otherwise)
    monkeypatch.setattr(GroupNorm, "channels_last_path", path)
    gn = make_gn()
    x = rand(2, 16, 5, 6, channels_last=channels_last, offset=2.0)
    assert gn_jvp_error(gn, x) < FD_RTOL
    gn12 = make_gn(3, 12)                                           # 4 channels a group, odd sizes
    assert gn_jvp_error(gn12, rand(3, 12, 7, 3, channels_last=channels_last, seed=5)) < FD_RTOL


def test_channels_last_group_norm_rule_is_used_and_agrees(monkeypatch):
    """The Function's jvp rule (not autograd of the formula) runs under "always", through both AD APIs, and
    gives the formula's tangent, channels-last; gradients through the tangent (second order, via mu and
    rstd as differentiable outputs) equal those of the plain formula."""
    monkeypatch.setattr(GroupNorm, "channels_last_path", "always")
    gn = make_gn()
    x, v = rand(2, 16, 4, 4, channels_last=True, offset=1.0), rand(2, 16, 4, 4, channels_last=True, seed=1)
    calls = []
    rule = _ChannelsLastGroupNorm.jvp
    monkeypatch.setattr(_ChannelsLastGroupNorm, "jvp", staticmethod(lambda *a: calls.append(1) or rule(*a)))
    y, t = jvp(gn, (x,), (v,))
    with fwAD.dual_level():
        t2 = fwAD.unpack_dual(gn(fwAD.make_dual(x, v))).tangent
    assert len(calls) == 2 and t.is_contiguous(memory_format=CL)
    ref = jvp(lambda x: unet_mod.group_norm_by_sums(x, gn.weight, gn.bias, 4, 1e-6)[0], (x,), (v,))[1]
    torch.testing.assert_close(t, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t2, ref, rtol=1e-12, atol=1e-12)

    g = rand(2, 16, 4, 4, seed=7)

    def second_order(norm_fn):
        xx = x.clone().requires_grad_(True)
        _, tan = jvp(norm_fn, (xx,), (v,))
        return torch.autograd.grad((tan * g).sum() + (tan * xx.cos()).sum(), [xx, gn.weight])  # not beta

    got = second_order(gn)
    want = second_order(lambda x: unet_mod.group_norm_by_sums(x, gn.weight, gn.bias, 4, 1e-6)[0])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _jvp_without_mean_term(ctx, dx, dweight, dbias, *_):
    """A planted bug: the x tangent projected without its group mean, P(v) + rstd mean_g(v)."""
    x, weight, mean, rstd = ctx.saved_tensors
    xhat, r = _ChannelsLastGroupNorm._xhat(x, mean, rstd)
    pv, a, b = _ChannelsLastGroupNorm._project(dx, xhat, r, ctx.groups)
    pv = pv + _per_channel(a, x.shape[1])[:, :, None, None] * r
    dy = pv * weight[:, None, None] + xhat * dweight[:, None, None] + dbias[:, None, None]
    return dy, torch.zeros_like(mean), torch.zeros_like(rstd)


def test_planted_group_norm_jvp_without_mean_term_fails(monkeypatch):
    monkeypatch.setattr(GroupNorm, "channels_last_path", "always")
    gn, x = make_gn(), rand(2, 16, 5, 6, channels_last=True, offset=2.0)
    assert gn_jvp_error(gn, x) < FD_RTOL
    monkeypatch.setattr(_ChannelsLastGroupNorm, "jvp", staticmethod(_jvp_without_mean_term))
    err = gn_jvp_error(gn, x)
    assert err > 1e-2, err                                      # the FD check above would fail


def _gn_autocast_error(seed=0):
    """Max error of the channels-last GroupNorm on a bf16 input under CPU bf16 autocast (output float32)
    against float64 GroupNorm of the same bf16 values, in units of the output's scale."""
    gn = GroupNorm(8, 64, eps=1e-6)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        gn.weight.copy_(torch.randn(64, generator=g))
        gn.bias.copy_(torch.randn(64, generator=g))
    # an offset 8x the spread (group mean ~8, variance ~1): E[x^2] - mu^2 cancels ~6 bits
    x = torch.randn(4, 64, 8, 8, generator=g) + 8
    x = x.to(torch.bfloat16).contiguous(memory_format=CL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gn(x)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=CL)
    ref = torch.nn.functional.group_norm(x.double(), 8, gn.weight.double(), gn.bias.double(), 1e-6)
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


def test_channels_last_group_norm_statistics_are_float32_under_bf16_autocast(monkeypatch):
    # float32 statistics from bf16 values: sums of 512 numbers of size ~8 in float32 (u = 6e-8), variance
    # by cancellation of mu^2 ~ 64 against E[x^2] ~ 65: relative error ~ 64 * 6e-8 * few ~ 1e-5 of the
    # output (measured 3e-6). Statistics in bf16 (u = 4e-3): E[x^2] ~ 65 rounded to a multiple of 0.5, so
    # the variance ~1 is off by O(0.1 .. 1) (measured 0.26 .. 0.36). TOL = 1e-3 sits between them.
    monkeypatch.setattr(GroupNorm, "channels_last_path", "always")
    assert _gn_autocast_error() < 1e-3
    monkeypatch.setattr(unet_mod, "_stat_dtype", lambda x: x.dtype)          # planted: stats in bf16
    assert _gn_autocast_error() > 1e-2


# ---------------------------------------------------------------- attention, resampling, embedding
@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_jvp_uses_math_path_and_matches_finite_differences(monkeypatch, heads, channels_last):
    torch.manual_seed(0)
    att = perturbed(Attention(8, heads).double())
    if channels_last:
        att = att.to(memory_format=CL)
    x = rand(2, 8, 4, 6, channels_last=channels_last)
    fused_calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: fused_calls.append(forward_ad_active()) or sdpa(*a, **k))
    plain = att(x)
    err, out, tan = fd_error(att, (x,), (rand(*x.shape, channels_last=channels_last, seed=1),))
    assert err < FD_RTOL
    assert fused_calls == [False] * 3                     # the plain pass and the two FD passes; none in jvp
    torch.testing.assert_close(out, plain, rtol=1e-12, atol=1e-12)   # math path = fused path's numbers
    assert out.is_contiguous(memory_format=CL if channels_last else torch.contiguous_format)
    monkeypatch.setattr(Attention, "math_path", "sometimes")
    with pytest.raises(ValueError, match="math_path"):
        att(x)


def test_attention_math_path_equals_fused_in_float32():
    torch.manual_seed(0)
    att = perturbed(Attention(16, 2))
    x = torch.randn(3, 16, 8, 8)
    fused = att(x)
    Attention.math_path = "always"
    try:
        torch.testing.assert_close(att(x), fused, rtol=1e-5, atol=1e-5)    # float32 rounding
    finally:
        Attention.math_path = "forward_ad"


@pytest.mark.parametrize("filt", [(1, 1), (1, 3, 3, 1)])
@pytest.mark.parametrize("mode", ["up", "down"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_resample_jvp(mode, filt, channels_last):
    r = Resample(mode, filt).double()
    x = rand(2, 3, 8, 8, channels_last=channels_last)
    err, _, tan = fd_error(r, (x,), (rand(*x.shape, channels_last=channels_last, seed=1),))
    assert err < FD_RTOL
    # linear: the tangent is the map applied to the tangent
    torch.testing.assert_close(tan, r(rand(*x.shape, channels_last=channels_last, seed=1)))


@pytest.mark.parametrize("kind,h", [("positional", H), ("fourier", 1e-6)])
def test_noise_embedding_jvp(kind, h):
    torch.manual_seed(0)
    emb = NoiseEmbedding(32, kind).double()
    c = rand(4) * 2
    err, _, tan = fd_error(emb, (c,), (torch.ones(4, dtype=torch.float64),), h=h)
    assert err < FD_RTOL
    a = c[:, None] * emb.freqs[None]                    # d/dc [sin(cw), cos(cw)] = [w cos(cw), -w sin(cw)]
    torch.testing.assert_close(tan, torch.cat([emb.freqs * a.cos(), -emb.freqs * a.sin()], 1))


def test_embedding_keeps_float64_precision():
    # c_noise is no longer rounded to float32 in a float64 net (FD through it would be off by 1e-4)
    emb = NoiseEmbedding(16).double()
    c = torch.tensor([0.1234567890123], dtype=torch.float64)
    assert emb(c).dtype == torch.float64
    torch.testing.assert_close(emb(c)[0, 0], torch.sin(c[0] * emb.freqs[0]), rtol=1e-15, atol=1e-15)


# ---------------------------------------------------------------- a block and the whole network
@pytest.mark.parametrize("resample,attention,adaptive", [("down", False, False), ("up", True, False),
                                                          (None, True, True)])
def test_res_block_jvp_with_dropout_uses_the_primal_mask(resample, attention, adaptive):
    cfg = unet_config("tiny", in_channels=1, dropout=0.3, adaptive_scale=adaptive)
    torch.manual_seed(0)
    blk = perturbed(ResBlock(8, 16, 12, cfg, resample=resample, attention=attention)).double().train()
    x, emb = rand(2, 8, 8, 8, offset=0.5), rand(2, 12, seed=1)
    tangents = (rand(2, 8, 8, 8, seed=2), rand(2, 12, seed=3))
    err, out, _ = fd_error(blk, (x, emb), tangents, seed=11)
    assert err < FD_RTOL
    torch.manual_seed(11)
    torch.testing.assert_close(out, blk(x, emb), rtol=1e-12, atol=1e-12)   # jvp's primal: the same mask
    # the FD check sees a mask mismatch: a tangent from another mask than the FD passes' is far off
    assert fd_error(blk, (x, emb), tangents, seed=11, fd_seed=12)[0] > 1e-2


@pytest.mark.parametrize("channels_last", [False, True])
def test_whole_unet_jvp_along_time_and_x(channels_last):
    """f_theta(x, t) = c_skip x + c_out F(c_in x, ln(t)/4) with its tangent along t alone (the sCM/ECT need)
    and along (x', t') together, in training mode with dropout, class-conditional. jvp's primal is the plain
    forward pass with the same seed, channels-last too: the U-Net's dropout draws its mask in logical order
    (``F.dropout`` under torch.func.jvp draws a channels-last mask in another order than in a plain pass,
    and this comparison then fails)."""
    torch.manual_seed(0)
    net = perturbed(UNet(unet_config("tiny", in_channels=1, dropout=0.1, num_classes=3)), 0.05).double().train()
    if channels_last:
        net = net.to(memory_format=CL)
    f = ConsistencyModel(net)
    y = torch.tensor([0, 2])
    x, t = rand(2, 1, 16, 16, channels_last=channels_last), torch.tensor([0.7, 3.0], dtype=torch.float64)
    fn = lambda x, t: f(x, t, class_labels=y)     # noqa: E731
    zero = torch.zeros_like(x)
    for tangents in ((zero, torch.ones_like(t)), (rand(*x.shape, channels_last=channels_last, seed=4),
                                                  torch.tensor([0.5, -1.0], dtype=torch.float64))):
        err, out, tan = fd_error(fn, (x, t), tangents, seed=5)
        assert err < FD_RTOL, err
        assert tan.norm() > 1e-3 * out.norm()                 # a real derivative, not ~0
        torch.manual_seed(5)
        torch.testing.assert_close(out, fn(x, t), rtol=1e-12, atol=1e-12)


def test_block_jvp_compiles_with_autograd_on():
    """torch.compile traces jvp of a residual block with attention (GroupNorm, attention, the embedding's
    affine map) with autograd on and channels-last, in one graph (dynamo only, no codegen): attention's
    math path and group_norm_by_sums need no graph break (torch's GroupNorm fails there), and the primal
    keeps its gradient."""
    cfg = unet_config("tiny", in_channels=1)
    torch.manual_seed(0)
    blk = perturbed(ResBlock(8, 8, 12, cfg, attention=True)).to(memory_format=CL).train()
    x, emb = torch.randn(2, 8, 4, 4).contiguous(memory_format=CL), torch.randn(2, 12)

    def step(x, emb):
        return jvp(blk, (x, emb), (torch.zeros_like(x), torch.ones_like(emb)))

    out, tan = torch.compile(step, backend="eager", fullgraph=True)(x, emb)
    ref_out, ref_tan = step(x, emb)
    torch.testing.assert_close(tan, ref_tan)
    torch.testing.assert_close(out, ref_out)
    out.square().sum().backward()
    assert blk.conv1.weight.grad is not None


def test_bf16_autocast_jvp_is_close_to_float32():
    # the JVP under CPU bf16 autocast (float32 weights) against float32: bf16 rounding (u = 4e-3) through
    # ~20 layers. Measured over 5 seeds: primal 1.4e-2 .. 2.2e-2 (its own test allows 3e-2), tangent
    # 3.1e-2 .. 3.5e-2; allowed 6e-2, about twice that
    torch.manual_seed(0)
    net = perturbed(UNet(unet_config("tiny", in_channels=1)), 0.05).eval()
    x, c = torch.randn(2, 1, 16, 16), torch.randn(2)
    tangents = (torch.randn_like(x), torch.ones_like(c))
    _, ref = jvp(net, (x, c), tangents)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, got = jvp(net, (x, c), tangents)
    assert rel_err(got.float(), ref) < 6e-2
    assert math.isfinite(got.float().norm().item())
