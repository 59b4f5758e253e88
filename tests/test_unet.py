"""The EDM / DDPM++ U-Net (cmlite.image.unet): shapes, parameter counts, conditioning, precision,
memory format, dropout, gradients, and the fit with the consistency-model wrappers."""
import math

import pytest
import torch

from cmlite.image.unet import UNET_PRESETS, UNet, UNetConfig, count_parameters, unet_config
from cmlite.parameterization import ConsistencyModel, EDMDenoiser

EDM_DDPMPP_CIFAR10_PARAMS = 55.73e6   # EDM (Karras et al. 2022), DDPM++ on CIFAR-10


def tiny(**kw) -> UNet:
    torch.manual_seed(0)
    return UNet(unet_config("tiny", **kw))


def perturbed(net: UNet, scale: float = 0.02) -> UNet:
    """Add noise to every parameter, so that the near-zero-initialised convs act like trained ones."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn_like(p))
    return net


def build_on_meta(name: str, **kw) -> UNet:
    with torch.device("meta"):
        return UNet(unet_config(name, **kw))


@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_at_several_resolutions(channels):
    net = tiny(in_channels=channels).eval()
    for res in (8, 16, 28):
        x = torch.randn(2, channels, res, res)
        out = net(x, torch.randn(2))
        assert out.shape == x.shape and torch.isfinite(out).all()
    x = torch.randn(3, channels, 8, 12)                      # non-square; scalar c_noise broadcasts
    assert net(x, torch.tensor(0.3)).shape == x.shape


def test_fresh_net_output_is_near_zero_but_not_zero():
    out = tiny().eval()(torch.randn(2, 3, 16, 16), torch.zeros(2))
    assert 0 < out.abs().max() < 1e-2          # output conv starts at 1e-5 x xavier (EDM): F ~ 0


def test_preset_parameter_counts():
    assert count_parameters(tiny()) < 1_000_000
    n = count_parameters(build_on_meta("cifar10"))
    assert abs(n - EDM_DDPMPP_CIFAR10_PARAMS) / EDM_DDPMPP_CIFAR10_PARAMS < 1e-3
    assert n == 55_732_739                      # the count of EDM's own SongUNet with this config
    assert count_parameters(build_on_meta("cifar10", num_classes=10)) == n + 10 * 128 + 128
    assert 1e6 < count_parameters(build_on_meta("mnist")) < 10e6
    assert 10e6 < count_parameters(build_on_meta("cifar10-small")) < 15e6


def test_presets_and_overrides():
    cfg = unet_config("cifar10")
    assert (cfg.img_resolution, cfg.in_channels, cfg.out_channels, cfg.model_channels, cfg.channel_mult,
            cfg.num_blocks, cfg.attn_resolutions, cfg.dropout) == (32, 3, 3, 128, (2, 2, 2), 4, (16,), 0.13)
    assert unet_config("mnist", num_classes=10).num_classes == 10
    assert set(UNET_PRESETS) == {"tiny", "mnist", "mnist-small", "cifar10", "cifar10-small"}
    with pytest.raises(ValueError, match="unknown UNet preset"):
        unet_config("imagenet")


def test_mnist_resolution_28_14_7():
    net = UNet(unet_config("mnist", model_channels=16, num_blocks=1)).eval()
    x = torch.randn(2, 1, 28, 28)
    assert net(x, torch.zeros(2)).shape == x.shape


def test_bad_resolution_raises_clearly():
    net = tiny()
    with pytest.raises(ValueError, match=r"multiples of 2; got 15x15"):
        net(torch.randn(1, 3, 15, 15), torch.zeros(1))
    with pytest.raises(ValueError, match=r"channel_mult=\(1, 2, 2\).*multiples of 4; got 30x30"):
        UNetConfig(img_resolution=30, in_channels=1, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(1, 1, 16, 16), torch.zeros(1))          # wrong channel count


def test_class_conditioning():
    net = perturbed(tiny(num_classes=10)).eval()
    x, c = torch.randn(4, 3, 16, 16), torch.randn(4)
    y = torch.tensor([0, 1, 2, 3])
    out = net(x, c, class_labels=y)
    other = net(x, c, class_labels=(y + 5) % 10)
    assert ((out - other).abs().amax(dim=(1, 2, 3)) > 1e-4).all()
    one_hot = torch.nn.functional.one_hot(y, 10).float()
    torch.testing.assert_close(net(x, c, class_labels=one_hot), out)
    with pytest.raises(ValueError, match="class-conditional"):
        net(x, c)
    with pytest.raises(ValueError, match="unconditional"):
        tiny()(x, c, class_labels=y)
    with pytest.raises(ValueError, match="class_labels must have shape"):
        net(x, c, class_labels=y[:2])


def test_label_dropout_one_ignores_labels_in_training():
    net = perturbed(tiny(num_classes=10, label_dropout=1.0)).train()
    x, c = torch.randn(2, 3, 8, 8), torch.randn(2)
    torch.testing.assert_close(net(x, c, class_labels=torch.tensor([0, 1])),
                               net(x, c, class_labels=torch.tensor([7, 9])))


def test_plugs_into_consistency_model_and_denoiser():
    net = perturbed(tiny(in_channels=1))
    x = torch.randn(3, 1, 16, 16)
    f = ConsistencyModel(net)
    assert f(x, torch.tensor([0.5, 2.0, 80.0])).shape == x.shape
    torch.testing.assert_close(f(x, f.eps), x)                  # boundary condition f(x, eps) = x
    assert EDMDenoiser(net)(x, 1.0).shape == x.shape
    cond = perturbed(tiny(in_channels=1, num_classes=10))
    y = torch.tensor([1, 2, 3])
    out = ConsistencyModel(cond)(x, 1.0, class_labels=y)
    assert not torch.allclose(out, ConsistencyModel(cond)(x, 1.0, class_labels=y + 1))


def test_bf16_autocast_matches_fp32():
    net = perturbed(tiny(num_classes=10)).eval()
    x, c, y = torch.randn(4, 3, 16, 16), torch.randn(4), torch.arange(4)
    ref = net(x, c, class_labels=y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, c, class_labels=y)
    assert ((out.float() - ref).norm() / ref.norm()).item() < 3e-2


def test_channels_last_matches_contiguous():
    net = perturbed(tiny()).eval()
    x, c = torch.randn(2, 3, 16, 16), torch.randn(2)
    ref = net(x, c)
    torch.testing.assert_close(net(x.to(memory_format=torch.channels_last), c), ref, atol=1e-5, rtol=1e-4)
    net = net.to(memory_format=torch.channels_last)
    torch.testing.assert_close(net(x.to(memory_format=torch.channels_last), c), ref, atol=1e-5, rtol=1e-4)


def test_dropout_eval_deterministic_train_random():
    net = perturbed(tiny(dropout=0.2))
    x, c = torch.randn(2, 3, 8, 8), torch.randn(2)
    net.eval()
    assert torch.equal(net(x, c), net(x, c))
    net.train()
    assert not torch.allclose(net(x, c), net(x, c))


def test_every_parameter_gets_a_gradient():
    for net, y in ((tiny(dropout=0.1), None), (tiny(num_classes=10), torch.tensor([3, 4]))):
        net.train()
        net(torch.randn(2, 3, 16, 16), torch.randn(2), class_labels=y).square().sum().backward()
        missing = [n for n, p in net.named_parameters() if p.grad is None]
        assert not missing, f"no gradient for {missing}"
        assert all(torch.isfinite(p.grad).all() for p in net.parameters())
        assert net.out_conv.weight.grad.abs().sum() > 0


def test_compiles_without_graph_breaks():
    net = perturbed(tiny(num_classes=10)).eval()
    x, c, y = torch.randn(2, 3, 8, 8), torch.randn(2), torch.tensor([1, 2])
    compiled = torch.compile(net, backend="eager", fullgraph=True)   # traces with dynamo, no codegen
    torch.testing.assert_close(compiled(x, c, class_labels=y), net(x, c, class_labels=y))


def test_channels_last_group_norm_compiles_whole_with_autograd_on(monkeypatch):
    """The channels-last GroupNorm in a training pass (channels_last_path 'always', autograd on) traces as one
    graph: an autograd.Function with a jvp rule would break the graph at every norm; gradients as eager."""
    from cmlite.image.unet import GroupNorm
    monkeypatch.setattr(GroupNorm, "channels_last_path", "always")
    net = perturbed(tiny()).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    c = torch.randn(2)
    compiled = torch.compile(net, backend="eager", fullgraph=True)   # raises at a graph break
    grads = [torch.autograd.grad(m(x, c).square().sum(), list(net.parameters())) for m in (compiled, net)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mode", ["up", "down"])
def test_box_resample_equals_its_fir_convolution(mode):
    """f = (1, 1) runs as nearest upsampling / 2x2 average pooling: the same numbers and gradients as the
    depthwise convolution with f f^T / 4 it stands for; a longer filter keeps the convolution."""
    from cmlite.image.unet import Resample
    torch.manual_seed(0)
    r = Resample(mode, (1, 1))
    assert r.box and not Resample(mode, (1, 3, 3, 1)).box
    x = torch.randn(2, 5, 8, 8, requires_grad=True)
    fast, conv = r(x), r.fir(x)
    assert fast.shape == conv.shape == ((2, 5, 16, 16) if mode == "up" else (2, 5, 4, 4))
    torch.testing.assert_close(fast, conv, atol=1e-6, rtol=0)
    g = torch.randn_like(fast)
    grad_conv = torch.autograd.grad(conv, x, g)[0]
    torch.testing.assert_close(torch.autograd.grad(fast, x, g)[0], grad_conv, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="'up' or 'down'"):
        Resample("sideways")
    # the up-sampling keeps a channels-last input channels-last, values and gradient unchanged
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    fast_cl = r(xc)
    assert fast_cl.is_contiguous(memory_format=torch.channels_last) or mode == "down"
    torch.testing.assert_close(fast_cl, conv, atol=1e-6, rtol=0)
    gc = torch.autograd.grad(fast_cl, xc, g)[0]
    torch.testing.assert_close(gc, grad_conv, atol=1e-6, rtol=0)


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_is_edm_self_attention(heads, channels_last):
    # EDM's attention, written out: qkv = W y + b with y = GN(x); output channel 3m + j of qkv is channel m
    # of q (j=0), k (j=1), v (j=2); per head, softmax(q^T k / sqrt(d)) weights the values over the H*W
    # positions; out = (x + proj(a)) / sqrt(2). float32 rounding only (~1e-6).
    from cmlite.image.unet import Attention
    torch.manual_seed(0)
    att = Attention(8, heads)
    with torch.no_grad():
        att.proj.weight.normal_()
    x = torch.randn(2, 8, 4, 6)
    y = att.norm(x)
    qkv = torch.einsum("oc,bchw->bohw", att.qkv.weight[:, :, 0, 0], y) + att.qkv.bias[None, :, None, None]
    q, k, v = (qkv[:, j::3].reshape(2, heads, 8 // heads, 24) for j in range(3))     # (b, heads, d, positions)
    wts = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(8 // heads), dim=-1)
    a = torch.einsum("bhij,bhdj->bhdi", wts, v).reshape(2, 8, 4, 6)
    expected = (x + att.proj(a)) / math.sqrt(2)
    if channels_last:
        att, x = att.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    out = att(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_channels_last_group_norm_is_group_norm(monkeypatch):
    # cmlite's GroupNorm on channels-last input (statistics from per-channel sums, gradient written out)
    # against torch's: values and all three gradients to float32 rounding (inputs of scale ~10: ~1e-5),
    # output and input gradient channels-last.
    from cmlite.image.unet import GroupNorm
    torch.manual_seed(0)
    monkeypatch.setattr(GroupNorm, "channels_last_path", "always")
    for shape, g in [((3, 64, 8, 8), 16), ((2, 12, 5, 7), 3)]:
        gn = GroupNorm(g, shape[1], eps=1e-6)
        with torch.no_grad():
            gn.weight.normal_()
            gn.bias.normal_()
        x0 = torch.randn(shape) * 3 + torch.randn(1, shape[1], 1, 1) * 5     # channel offsets: mean != 0
        x = x0.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        xr = x0.clone().requires_grad_(True)
        y, ref = gn(x), torch.nn.functional.group_norm(xr, g, gn.weight, gn.bias, 1e-6)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
        dy = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        got = torch.autograd.grad(y, [x, gn.weight, gn.bias], dy)
        want = torch.autograd.grad(ref, [xr, gn.weight, gn.bias], dy)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert got[0].is_contiguous(memory_format=torch.channels_last)
    # the default, "compiled_no_grad": this path inside torch.compile with autograd off (torch's forward
    # raises here, so tracing it would fail), torch's eagerly or with autograd on
    monkeypatch.setattr(GroupNorm, "channels_last_path", "compiled_no_grad")
    with torch.no_grad():
        with monkeypatch.context() as m:
            m.setattr(torch.nn.GroupNorm, "forward", lambda self, x: 1 / 0)
            traced = torch.compile(gn, backend="eager", fullgraph=True)
            torch.testing.assert_close(traced(x), ref.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gn(x), ref.detach(), rtol=1e-5, atol=1e-5)     # eager: torch's
    assert gn(x).grad_fn.name() == "NativeGroupNormBackward0"
    x = torch.randn(2, 8, 4, 4)   # not channels-last: torch's, whatever the setting
    torch.testing.assert_close(GroupNorm(2, 8)(x), torch.nn.functional.group_norm(x, 2, eps=1e-5))
    monkeypatch.setattr(GroupNorm, "channels_last_path", "sometimes")
    with pytest.raises(ValueError, match="channels_last_path"):
        GroupNorm(2, 8)(x)


def test_a_unet_config_sets_the_norm_path_of_its_own_norms():
    # `--set net_overrides.norm_path=always` (cmlite's GroupNorm in the training passes too, the faster CD
    # step of docs/speed.md): every norm of that network takes it, the class default and other networks keep
    # theirs; with autograd on, a channels-last forward pass then runs cmlite's norm (its own backward node),
    # with the same output as the default network to float32 rounding.
    from cmlite.image.recipes import build_net, get_recipe
    from cmlite.image.unet import GroupNorm
    r = get_recipe("tiny-cd")
    fast = build_net(r.with_overrides(["net_overrides.norm_path='always'"]), 1, 16)
    plain = build_net(r, 1, 16)
    plain.load_state_dict(fast.state_dict())
    assert {m.channels_last_path for m in fast.modules() if isinstance(m, GroupNorm)} == {"always"}
    assert all("channels_last_path" not in vars(m) for m in plain.modules() if isinstance(m, GroupNorm))
    assert GroupNorm.channels_last_path == "compiled_no_grad"
    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16).contiguous(memory_format=torch.channels_last)
    fast, plain = fast.to(memory_format=torch.channels_last), plain.to(memory_format=torch.channels_last)
    y, ref = fast(x, torch.tensor([0.3, -1.0])), plain(x, torch.tensor([0.3, -1.0]))
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)
    names = {fn.name() for fn in _grad_nodes(y)}
    assert "NativeGroupNormBackward0" not in names and "NativeGroupNormBackward0" in {fn.name() for fn in
                                                                                      _grad_nodes(ref)}
    with pytest.raises(ValueError, match="norm_path must be one of"):
        build_net(r.with_overrides(["net_overrides.norm_path='sometimes'"]), 1, 16)


def _grad_nodes(y):
    """Every node of the autograd graph behind ``y``."""
    seen, todo = set(), [y.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            todo.extend(f for f, _ in fn.next_functions)
    return seen
