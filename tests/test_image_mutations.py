"""Fast tests that fail when a known class of bug is planted in the image half (each test's docstring names the
bug it was checked to catch): bf16 numerics of the custom kernel paths, the direction of CD's solver step on
images, what ema.safetensors holds, the noise scale sampling starts from, c_noise reaching the network, the FID
floor's images, the time search's choice, the flips, the CIFAR-10 decode layout and to_uint8's rounding."""
import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cmlite import karras_boundaries
from cmlite.image import unet as U
from cmlite.image.data import GPUBatches, ImageData, load_dataset, synthetic_dataset, to_uint8
from cmlite.image.recipes import RECIPES, build, build_net, get_recipe
from cmlite.image.unet import UNet, unet_config
from cmlite.parameterization import ConsistencyModel, EDMDenoiser
from cmlite.sampling import ternary_search_times

SIGMA_DATA = 0.5


# ============================================================================================ bf16 numerics
def _stressed_net(offset: float = 10.0) -> UNet:
    """A tiny U-Net (3 channels, 16x16: GroupNorm, attention at 8x8, up/down-sampling) with weights moved off
    their near-zero init, and every conv bias but the output's raised by ``offset``: the normalisations then
    see activations whose mean is ~10 standard deviations, where E[x^2] - mean^2 cancels log2(100) ~ 7 bits.
    float32 keeps ~17 of its 24; bfloat16 would keep ~1 of its 8."""
    torch.manual_seed(0)
    net = UNet(unet_config("tiny", in_channels=3, img_resolution=16))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
        for m in net.modules():
            if isinstance(m, nn.Conv2d) and m is not net.out_conv:
                m.bias.add_(offset)
    return net


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, generator=g), torch.randn(4, 3, 16, 16, generator=g)


def _forward_backward(net, x, c, w, channels_last: bool, bf16: bool):
    net.zero_grad()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = net(x.contiguous(memory_format=fmt), c)
    (out.float() * w).sum().backward()
    return out.detach().float(), torch.cat([p.grad.flatten() for p in net.parameters()])


@pytest.mark.parametrize("gn_path", ["always", "never"])
def test_channels_last_unet_under_cpu_bf16_autocast_matches_fp32(monkeypatch, gn_path):
    """The channels-last U-Net under CPU bf16 autocast (cmlite's channels-last GroupNorm taken everywhere with
    ``always``, torch's with ``never``), output and parameter gradient, against the fp32 contiguous network.

    Tolerance from bf16: 8 significant bits, unit roundoff 2^-9 = 2e-3 per rounded op; along the ~30 bf16 ops
    of this network the output moves by 1.0e-2 (relative L2; measured) and the gradient, which passes every
    layer twice, by 4e-2. Bounds 4e-2 and 1.5e-1 leave a factor ~4. With GroupNorm's statistics computed in
    the input's dtype (bf16) the output moves by ~0.8 and the gradient overflows (planted: ``_stat_dtype``
    returning x.dtype; caught with gn_path='always')."""
    net = _stressed_net()
    x, c, w = _inputs()
    monkeypatch.setattr(U.GroupNorm, "channels_last_path", "never")
    ref, gref = _forward_backward(net, x, c, w, channels_last=False, bf16=False)
    monkeypatch.setattr(U.GroupNorm, "channels_last_path", gn_path)
    out, grad = _forward_backward(net, x, c, w, channels_last=True, bf16=True)
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    assert float((out - ref).norm() / ref.norm()) < 4e-2
    assert float((grad - gref).norm() / gref.norm()) < 1.5e-1


@pytest.mark.parametrize("attn_math", ["always", "never"])
def test_every_custom_layer_under_bf16_autocast_matches_its_float32_computation(monkeypatch, attn_math):
    """Layer by layer, inside the channels-last U-Net under CPU bf16 autocast, each custom path against the
    float32 computation of the same input (what the layer got, bf16 from the convolutions):

    * every GroupNorm (cmlite's channels-last kernel, ``always``) against torch's float32 group_norm of the
      input cast to float32: statistics in float32 over at most C/G*H*W = 2048 elements round to ~1e-6, so
      1e-4 (relative L2) holds; statistics in bf16 are off by ~1e-2 at these offsets;
    * :func:`cmlite.image.unet.group_norm_by_sums` (the forward-mode-AD path) the same way;
    * every Resample (the channels-last broadcast up-sampling, 2x2 average down-sampling): exactly
      F.interpolate(nearest) / F.avg_pool2d, output layout kept;
    * every Attention branch (fused kernel, or the written-out math with ``attn_math='always'``) against the
      same layer run in float32: the q, k, v and output convolutions round to bf16 (2^-9 each), so 3e-2.

    Planted ``_stat_dtype`` -> x.dtype (statistics in bf16): fails on the GroupNorm and group_norm_by_sums
    checks."""
    monkeypatch.setattr(U.GroupNorm, "channels_last_path", "always")
    monkeypatch.setattr(U.Attention, "math_path", attn_math)
    net = _stressed_net().to(memory_format=torch.channels_last).eval()
    x, c, _ = _inputs()
    seen = {"gn": [], "resample": [], "attn": []}
    kinds = {U.GroupNorm: "gn", U.Resample: "resample", U.Attention: "attn"}
    hooks = [m.register_forward_hook(lambda mod, inp, out, k=k: seen[k].append((mod, inp[0].detach(), out.detach())))
             for m in net.modules() for cls, k in kinds.items() if type(m) is cls]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        net(x.contiguous(memory_format=torch.channels_last), c)
    for h in hooks:
        h.remove()
    assert len(seen["gn"]) > 10 and len(seen["resample"]) >= 2 and len(seen["attn"]) >= 2
    assert any(inp.dtype == torch.bfloat16 for _, inp, _ in seen["gn"])      # autocast really reached them

    def rel(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm())

    for gn, inp, out in seen["gn"]:
        with torch.no_grad():
            want = F.group_norm(inp.float(), gn.num_groups, gn.weight, gn.bias, gn.eps)
            by_sums = U.group_norm_by_sums(inp, gn.weight, gn.bias, gn.num_groups, gn.eps)[0]
        assert rel(out, want) < 1e-4, (tuple(inp.shape), inp.dtype, rel(out, want))
        assert rel(by_sums, want) < 1e-4
    for rs, inp, out in seen["resample"]:
        want = F.interpolate(inp, scale_factor=2, mode="nearest") if rs.mode == "up" else F.avg_pool2d(inp, 2)
        assert out.dtype == inp.dtype and torch.equal(out, want)
        assert out.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(U.GroupNorm, "channels_last_path", "never")
    for att, inp, out in seen["attn"]:
        with torch.no_grad():
            want = att(inp.float().contiguous())
        branch, want_branch = out.float() - inp.float() * U.SKIP_SCALE, want - inp.float() * U.SKIP_SCALE
        assert rel(branch, want_branch) < 3e-2


# ============================================================================== CD's solver step on images
class GaussianImages(nn.Module):
    """The exact denoiser of image data x ~ N(mu, s^2 I) (mu an image): D(x, t) = mu + s^2 / (s^2 + t^2) (x - mu).
    Its PF ODE dx/dt = (x - mu) t / (s^2 + t^2) integrates exactly:
    x(t') = mu + (x(t) - mu) sqrt((s^2 + t'^2) / (s^2 + t^2))."""

    def __init__(self, mu: torch.Tensor, s: float):
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, x, t, **cond):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return self.mu + self.s ** 2 / (self.s ** 2 + t ** 2) * (x - self.mu)

    def solution(self, x, t_from, t_to):
        r = ((self.s ** 2 + t_to ** 2) / (self.s ** 2 + t_from ** 2)).sqrt().reshape(-1, 1, 1, 1)
        return self.mu + (x - self.mu) * r


class Recorder(nn.Module):
    """f(x, t) = x (an exact consistency function's stand-in) that records every (x, t, cond) it sees."""
    eps, T = 0.002, 80.0

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, **cond):
        self.calls.append((x.detach().clone(), torch.as_tensor(t).detach().clone(), cond))
        return x


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("conditional", [False, True])
def test_cd_step_on_images_moves_from_t_n_plus_1_to_t_n(solver, conditional):
    """Inside the recipe's CD loss, with an exactly solvable teacher on 3x8x8 images (Gaussian data of a
    random mean image, s = sigma_data), the target sees x_hat at t_n and the online model x_{t_{n+1}} at
    t_{n+1}, for every n of the N = 18 grid, and:

    * x_hat is the solver's step *from t_{n+1} to t_n*, written out here from the method's formulas with the
      closed-form denoiser (Euler: x + (t_n - t_{n+1}) d1; Heun: the average of d1 and d2 = drift at the Euler
      point, t_n), to float64 rounding (1e-10);
    * x_hat is nearer the exact ODE solution x(t_n) than its starting point x_{t_{n+1}} is: the step moves
      towards t_n. (Euler's error is at most 0.58 of the step's move on this grid, Heun's 0.05; the swapped
      step moves away, to |x_hat - x(t_n)| > |x_{t_{n+1}} - x(t_n)|.)

    Planted: the Heun step run from t_n to t_{n+1} (times swapped) in ConsistencyDistillationLoss; and the
    Euler step's times swapped. Both fail here."""
    g = torch.Generator().manual_seed(0)
    s = SIGMA_DATA
    mu = 0.6 * torch.rand(1, 3, 8, 8, generator=g, dtype=torch.float64) - 0.3
    teacher = GaussianImages(mu, s)
    recipe = get_recipe("tiny-cd").with_overrides([f"solver={solver!r}"])
    loss = build(recipe, build_net(recipe, 3, 8), teacher)[1]
    N = 18
    t = karras_boundaries(N).double()
    n = torch.arange(N - 1)                         # every pair (t_n, t_{n+1}) once
    B = len(n)
    x = mu + s * torch.randn(B, 3, 8, 8, generator=g, dtype=torch.float64)
    z = torch.randn(B, 3, 8, 8, generator=g, dtype=torch.float64)
    online, target = Recorder(), Recorder()
    cond = {"class_labels": torch.arange(B) % 4} if conditional else {}
    loss.at(online, x, z, n, t, target=target, **cond)

    (x_hat, t_target, cond_t), = target.calls
    (x_np1, t_online, cond_o), = online.calls
    a, b = t[n + 1], t[n]
    torch.testing.assert_close(t_target, b)
    torch.testing.assert_close(t_online, a)
    torch.testing.assert_close(x_np1, x + a.reshape(-1, 1, 1, 1) * z)
    assert set(cond_t) == set(cond_o) == set(cond)

    A, Bt, h = a.reshape(-1, 1, 1, 1), b.reshape(-1, 1, 1, 1), (b - a).reshape(-1, 1, 1, 1)
    d1 = (x_np1 - (mu + s ** 2 / (s ** 2 + A ** 2) * (x_np1 - mu))) / A
    x_e = x_np1 + h * d1
    if solver == "euler":
        want = x_e
    else:
        d2 = (x_e - (mu + s ** 2 / (s ** 2 + Bt ** 2) * (x_e - mu))) / Bt
        want = x_np1 + h * (d1 + d2) / 2
    torch.testing.assert_close(x_hat, want, rtol=1e-10, atol=1e-10)

    exact = teacher.solution(x_np1, a, b)
    err_hat = (x_hat - exact).flatten(1).norm(dim=1)
    err_start = (x_np1 - exact).flatten(1).norm(dim=1)
    assert (err_hat < (0.6 if solver == "euler" else 0.06) * err_start).all(), (err_hat / err_start)


# ==================================================================== runs: EMA weights, data, flips, floor
def _write_folder(path, n=40, size=16):
    """n grayscale PNGs in two class subfolders: a bright square (class a) or bar (class b) at random places."""
    g = np.random.default_rng(0)
    for i in range(n):
        a = np.full((size, size), 20, np.uint8)
        r, c = g.integers(0, size - 6, 2)
        a[r:r + 6, c:c + (6 if i % 2 == 0 else 2)] = 200 + i
        (path / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(path / "ab"[i % 2] / f"{i:03d}.png")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A tiny CT run (2 steps) on an image folder of 40 images in 2 classes (no test split, so 8 are held out),
    with flips on; the GPUBatches the training made is recorded."""
    root = tmp_path_factory.mktemp("folder_run")
    _write_folder(root / "imgs")
    recipe = get_recipe("tiny-ct").with_overrides([f"dataset='folder:{root / 'imgs'}'", "flip=True"])
    made = []

    class Spy(GPUBatches):
        def __init__(self, data, *a, **kw):
            made.append({"images": data.images.clone(), "flip": kw.get("flip")})
            super().__init__(data, *a, **kw)

    from cmlite.image import run as R
    with pytest.MonkeyPatch.context() as m:
        m.setattr(R, "GPUBatches", Spy)
        summary = R.train(recipe, root / "run", steps=2, progress=False)
    return {"root": root, "run": root / "run", "recipe": recipe, "summary": summary, "batches": made}


def test_ema_safetensors_holds_the_ema_weights_not_the_online_ones(folder_run):
    """ema.safetensors equals the checkpoint's evaluation EMA exactly, differs from its online weights, and is
    what load_run loads. Planted: save_weights(trainer.model, ...) in train(): fails."""
    from safetensors.torch import load_file
    from cmlite.image.run import load_run
    from cmlite.training import load_checkpoint
    saved = load_file(str(folder_run["run"] / "ema.safetensors"))
    ckpt = load_checkpoint(folder_run["run"] / "checkpoint.pt")
    assert set(saved) == set(ckpt["ema"])
    assert all(torch.equal(saved[k], ckpt["ema"][k]) for k in saved)
    assert any(not torch.equal(ckpt["ema"][k], ckpt["model"][k]) for k in saved)   # after 2 steps they differ
    model = load_run(folder_run["run"])[0]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items() if k in saved)


def test_training_never_sees_the_held_out_floor_images_and_flips_as_the_recipe_says(folder_run):
    """A data set without a test split (an image folder) trains on the images less a fixed held-out set, the
    floor's (cmlite.image.data.hold_out_floor): the batches' images and the floor images are disjoint, and
    together the folder. The recipe's flip reaches the batches. Planted: train() loading the whole training
    split (load_data(..., 'train')); GPUBatches(..., flip=False): both fail."""
    from cmlite.image.run import load_train_test
    (made,) = folder_run["batches"]
    train, floor = load_train_test(folder_run["recipe"])
    assert made["flip"] is True
    assert len(made["images"]) == 32 and len(floor) == 8 and folder_run["summary"]["train_images"] == 32
    rows = {bytes(r.numpy().tobytes()) for r in made["images"]}
    assert rows == {bytes(r.numpy().tobytes()) for r in train.images}
    assert not rows & {bytes(r.numpy().tobytes()) for r in floor.images}
    assert "held out" in floor.source and "never trained on" in floor.source


def test_flips_none_for_digits_horizontal_for_cifar10(monkeypatch):
    """Recipes: MNIST / Fashion-MNIST never flip (digits are not mirror-symmetric), CIFAR-10 flips. The flips of
    GPUBatches and of the classifier's augmentation are left-right (the last axis), never up-down; the
    classifier flips RGB data by default, grayscale not. Planted: flip=True on mnist recipes; u8.flip(-2) in
    GPUBatches; x.flip(2) in the classifier's augmentation; all fail."""
    for name, r in RECIPES.items():
        if r.dataset in ("mnist", "fashion-mnist"):
            assert r.flip is False, name
        if r.dataset == "cifar10":
            assert r.flip is True, name
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).reshape(2, 3, 4, 5)     # asymmetric in H and in W
    data = ImageData(x.repeat(20, 1, 1, 1))
    b = GPUBatches(data, 40, flip=True, seed=0)
    xb = b()[0]
    plain, lr = x.float() / 127.5 - 1, x.flip(-1).float() / 127.5 - 1
    is_plain = torch.tensor([any(torch.equal(xb[i], p) for p in plain) for i in range(40)])   # order: shuffled
    is_lr = torch.tensor([any(torch.equal(xb[i], p) for p in lr) for i in range(40)])
    assert (is_plain | is_lr).all() and is_lr.any() and is_plain.any()
    from cmlite.image import classifier as C
    y = torch.randn(64, 3, 4, 5)
    out = C._augment(y, 0, True, torch.Generator().manual_seed(0))
    same = (out == y).flatten(1).all(1)
    flipped = (out == y.flip(3)).flatten(1).all(1)
    assert (same | flipped).all() and flipped.any() and same.any()
    seen = []
    monkeypatch.setattr(C, "_augment", lambda x, pad, flip, g: seen.append(flip) or x)
    for ch in (1, 3):
        d = synthetic_dataset(8, channels=ch, resolution=8, seed=0)
        C.train_classifier(d, None, steps=1, batch_size=8, width=4, device="cpu")
    assert seen == [False, True]


# ============================================================================================ sampling
class SpyNet(nn.Module):
    """A U-Net stand-in that records the c_noise it is given and returns 0 (so f(x, t) = c_skip(t) x)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, x, c_noise, **cond):
        self.seen.append((x.detach().clone(), torch.as_tensor(c_noise).detach().clone().reshape(-1)))
        return x * self.w


class FirstCall(nn.Module):
    """Wraps a model; records the input and time of every call (what the sampler starts from)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []
        self.eps, self.T = getattr(model, "eps", 0.002), getattr(model, "T", 80.0)

    def forward(self, x, t, **cond):
        self.calls.append((x.detach().clone(), torch.as_tensor(t, dtype=torch.float64).reshape(-1)))
        return self.model(x, t, **cond)


@pytest.mark.parametrize("method", ["ct", "teacher"])
def test_cmlite_sample_starts_from_noise_of_scale_T_80(tmp_path, monkeypatch, method):
    """`cmlite sample` (run in-process, the run's model replaced by a recording wrapper): the first network
    call is at t = T = 80 on x of standard deviation 80. With 16 x 256 = 4096 standard normals the sample
    std's relative standard error is 1/sqrt(2 * 4096) = 1.1%; 6% is 5 of them. Planted: x = randn(...)
    without T (std 1) in sample_images; fails. The same for a teacher's Heun ODE (its first call at T)."""
    from cmlite.cli import main
    from cmlite.image import run as R
    r = get_recipe(f"tiny-{method}")
    net = build_net(r, 1, 16)
    model = EDMDenoiser(net) if method == "teacher" else ConsistencyModel(net)
    spy = FirstCall(model.eval())
    info = {"recipe": r.to_dict(), "shape": [1, 16, 16], "num_classes": 0}
    monkeypatch.setattr(R, "load_run", lambda run, device="cpu": (spy, info))
    assert main(["sample", str(tmp_path), "--n", "16", "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path / "s.npz")]) == 0
    x0, t0 = spy.calls[0]
    assert torch.allclose(t0, torch.full_like(t0, 80.0))
    assert abs(float(x0.std()) / 80.0 - 1) < 0.06
    assert np.load(tmp_path / "s.npz")["images"].shape == (16, 1, 16, 16)


def test_the_network_sees_c_noise_of_t():
    """c_noise(t) = ln(t) / 4 reaches the U-Net's noise embedding (a hook on ``map_noise``) through the
    consistency model and the teacher's denoiser, in sampling (Algorithm 1: T, then tau) and in the CD loss
    (the online model at t_{n+1}, the target at t_n); a spy net records it directly; and the U-Net's output
    changes with c_noise. Planted: ConsistencyModel passing t (or 0) instead of c_noise; UNet.embed ignoring
    c_noise; all fail."""
    from cmlite.image.run import sample_images
    torch.manual_seed(0)
    net = build_net(get_recipe("tiny-ct"), 1, 16)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    seen = []
    net.map_noise.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().reshape(-1).double()))
    x = torch.randn(3, 1, 16, 16)
    t = torch.tensor([0.01, 0.7, 42.0])
    for wrapper in (ConsistencyModel(net), EDMDenoiser(net)):
        seen.clear()
        with torch.no_grad():
            wrapper(x, t)
        torch.testing.assert_close(seen[0], 0.25 * t.double().log(), rtol=1e-6, atol=1e-6)
    with torch.no_grad():       # the time changes the output (the embedding is used, not only computed)
        assert not torch.allclose(net(x, 0.25 * t.log()), net(x, 0.25 * t.log() + 0.5))
    # sampling through a run's sampler: one-step at T, two-step at T then tau
    seen.clear()
    info = {"recipe": get_recipe("tiny-ct").to_dict(), "shape": [1, 16, 16], "num_classes": 0}
    sample_images(ConsistencyModel(net).eval(), info, 4, steps=2, ts=[80.0, 0.585])
    torch.testing.assert_close(seen[0], torch.full((4,), 0.25 * math.log(80.0), dtype=torch.float64))
    torch.testing.assert_close(seen[1], torch.full((4,), 0.25 * math.log(0.585), dtype=torch.float64))
    # the CD loss of a recipe: online at t_{n+1}, target at t_n
    spy = SpyNet()
    teacher = GaussianImages(torch.zeros(1, 1, 16, 16), SIGMA_DATA)
    recipe = get_recipe("tiny-cd")
    model, loss, _ = build(recipe, spy, teacher)
    grid = karras_boundaries(10)
    n = torch.tensor([0, 4, 8])
    loss.at(model, torch.zeros(3, 1, 16, 16), torch.randn(3, 1, 16, 16), n, grid)
    (_, c_target), (_, c_online) = spy.seen
    torch.testing.assert_close(c_target.double(), 0.25 * grid[n].double().log(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(c_online.double(), 0.25 * grid[n + 1].double().log(), rtol=1e-6, atol=1e-6)


# ======================================================================================= the time search
class TimeImage(nn.Module):
    """A consistency-model stand-in whose output image is v(t) = tanh(ln t / 4) everywhere: a sample's value
    says which time its last step was at."""
    eps, T = 0.002, 80.0

    def forward(self, x, t, **cond):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return torch.zeros_like(x) + torch.tanh(t.log() / 4)


def test_image_time_search_goes_to_the_best_time():
    """search_times on uint8 images: with a score minimal at tau = 0.5 (|mean pixel - the pixel value of
    v(0.5)|, unimodal in tau up to the quantisation plateau of one uint8 level: ln-tau width
    (1/127.5) / v'(0.5) ~ 0.03), 14 iterations bracket ln tau within 10.6 (2/3)^14 = 0.036, so |ln(tau / 0.5)|
    < 0.1; the reported FID is the lowest of the step's evaluations. Planted: the comparison reversed
    (keeping the worse third): the search runs to an end of the interval and fails."""
    from cmlite.image.timesearch import search_times
    target = float(to_uint8(torch.tanh(torch.tensor(math.log(0.5) / 4))))
    score = lambda u8: abs(float(u8.float().mean()) - target)  # noqa: E731
    info = {"shape": [1, 4, 4], "num_classes": 0}
    r = search_times(TimeImage(), info, score, n_steps=2, n=2, iters=14, official_tau=None)
    assert abs(math.log(r["times"][1] / 0.5)) < 0.1, r["times"]
    assert r["fid"][1] == min(e["fid"] for e in r["trail"] if len(e["ts"]) == 2)


def test_ternary_search_returns_the_best_time_it_scored_with_its_score():
    """A score that is not unimodal (a bowl in ln tau plus a ripple, as FID noise makes it): the search must
    return the time of the lowest score it evaluated, with that score, not the midpoint of its last bracket
    (which is the winner of the last comparison only). Planted: the old midpoint return; fails here (this
    score's last bracket ends at a worse time than one scored earlier)."""
    def score(x):
        lt = float(torch.atanh(x.mean().clamp(-0.999, 0.999))) * 4       # ln tau of the last step
        return (lt - math.log(0.5)) ** 2 / 10 + 0.3 * math.sin(9 * lt)
    trail = []
    times, scores = ternary_search_times(TimeImage(), score, 2, (2, 1, 4, 4), iters=6, trail=trail)
    step2 = [(v, ts[1]) for ts, v in trail if len(ts) == 2]
    best, tau = min(step2)
    assert scores[1] == best and times[1] == tau
    assert len(trail) == 1 + 2 * 6


# ====================================================================================== the FID floor
def test_fid_floor_images_are_never_the_reference_set(tmp_path):
    """make_scorers without unseen images (test=None, as for a data set with no test split): the floor
    comes from a held-out set disjoint from the reference, not from the reference; with a test split, from
    the test split. Planted: floor_images=None (the reference subset) or floor_images=train.images; both fail."""
    from cmlite.image.classifier import SmallClassifier, save_classifier
    from cmlite.image.evaluate import make_scorers
    torch.manual_seed(0)
    save_classifier(SmallClassifier(1, 4, width=4), tmp_path / "classifier-synthetic.pt", test_accuracy=0.0)
    recipe = get_recipe("tiny-ct")
    train = synthetic_dataset(60, seed=0)
    test = synthetic_dataset(20, seed=1)

    def keys(images):
        return {bytes(r.numpy().tobytes()) for r in images}
    scorers, _ = make_scorers(recipe, train, None, tmp_path, "cpu", inception="no", progress=False)
    s = scorers["classifier"]
    assert s._floor_images is not None and s.floor(5)["source"] == "floor_images"
    floor = keys(s._floor_images)
    assert len(floor) == len(s._floor_images) == 12 and floor <= keys(train.images)      # a fifth, held out
    rest = train.images[[bytes(r.numpy().tobytes()) not in floor for r in train.images]]
    assert s.n_reference == len(rest) == 48
    torch.testing.assert_close(s.reference_features, s.features(rest).cpu())                # the reference: the rest
    assert "held out" in s.sources["floor"]
    scorers, _ = make_scorers(recipe, train, test, tmp_path, "cpu", inception="no", progress=False)
    s = scorers["classifier"]
    assert torch.equal(s._floor_images, test.images) and s.n_reference == len(train)
    assert not keys(s._floor_images) & keys(train.images)


# ====================================================================================== data decoding
def test_cifar10_jpeg_archive_decodes_rgb_in_chw_layout(tmp_path):
    """A synthetic cifar10_train_jpgbytes.npz of 32x32 images with four coloured quadrants (top-left red,
    top-right green, bottom-left blue, bottom-right white): images come out (n, 3, H, W) with channel 0 red
    and rows = height. JPEG (quality 95, flat 16x16 blocks) moves the 8x8 centre of a quadrant by a few
    levels; 12 is far below the 200 that a swapped channel or axis changes. Planted: BGR order
    (a[..., ::-1]); transpose(0, 3, 2, 1) (H and W swapped); both fail."""
    quads = {(0, 0): (220, 20, 20), (0, 1): (20, 220, 20), (1, 0): (20, 20, 220), (1, 1): (230, 230, 230)}
    a = np.zeros((32, 32, 3), np.uint8)
    for (i, j), col in quads.items():
        a[16 * i:16 * i + 16, 16 * j:16 * j + 16] = col
    blobs = []
    for k in range(2):
        buf = io.BytesIO()
        Image.fromarray(a if k == 0 else a[:, ::-1].copy()).save(buf, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    off = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    np.savez(tmp_path / "cifar10_train_jpgbytes.npz", data=np.concatenate(blobs), offsets=off,
             labels=np.array([3, 7], np.uint8))
    d = load_dataset("cifar10", root=tmp_path)
    assert d.images.shape == (2, 3, 32, 32) and d.labels.tolist() == [3, 7]
    for (i, j), col in quads.items():
        centre = d.images[0, :, 16 * i + 4:16 * i + 12, 16 * j + 4:16 * j + 12].float().mean((1, 2))
        assert (centre - torch.tensor(col, dtype=torch.float32)).abs().max() < 12, ((i, j), centre)
    assert (d.images[1].float() - d.images[0].flip(-1).float()).abs().mean() < 6       # the mirrored image


def test_to_uint8_maps_minus_one_one_levels_and_midpoints_exactly():
    """to_uint8 = round((x + 1) * 127.5), clamped: -1 -> 0, 1 -> 255, each level u / 127.5 - 1 -> u, points a
    hundredth of a level below / above the midpoint between u and u + 1 -> u / u + 1, the tie at x = 0
    (127.5) -> 128 (round half to even), out-of-range values clamp. Planted: floor instead of round, scale
    128 or 127, no clamp; each fails."""
    assert to_uint8(torch.tensor([-1.0, 1.0])).tolist() == [0, 255]
    u = torch.arange(256)
    assert torch.equal(to_uint8(u.float() / 127.5 - 1), u.to(torch.uint8))
    k = torch.arange(255, dtype=torch.float64)
    below, above = (k + 0.49) / 127.5 - 1, (k + 0.51) / 127.5 - 1
    assert torch.equal(to_uint8(below), k.to(torch.uint8)) and torch.equal(to_uint8(above), (k + 1).to(torch.uint8))
    assert to_uint8(torch.tensor([0.0])).tolist() == [128]
    assert to_uint8(torch.tensor([-7.0, -1.001, 1.001, 9.0, float("inf")])).tolist() == [0, 0, 255, 255, 255]


# ============================================================================= cmlite eval on a tiny run
def test_eval_defaults_work_on_a_tiny_run_and_save_the_samples(folder_run, tmp_path, capsys):
    """`cmlite eval`'s defaults on a run whose data set has 8 unseen images: n = 10000 is lowered to 8 with a
    note; Inception (installed or not) is skipped on the CPU under 'auto', with a note; the floor is the 8
    held-out images and the table says so, with the reference (the other 32); each sampler's samples are
    written as compressed uint8 npz (n, C, H, W) and match the sampler's own output."""
    from cmlite.image.classifier import SmallClassifier, save_classifier
    from cmlite.image.evaluate import evaluate, format_table
    from cmlite.image.run import load_run, sample_images
    recipe = folder_run["recipe"]
    torch.manual_seed(0)   # a cached classifier (the real one trains for minutes): any fixed network will do
    name = recipe.dataset.replace("/", "_").replace(":", "_")
    save_classifier(SmallClassifier(1, 2, width=4), tmp_path / f"classifier-{name}.pt", test_accuracy=0.5)
    res = evaluate(folder_run["run"], device="cpu", cache=tmp_path, progress=False)
    err = capsys.readouterr().err
    assert "using n = 8" in err and "Inception FID skipped" in err and "on a GPU only" in err
    assert "trained on" not in err                                  # the run trained on the reference set
    assert res["n"] == 8 and [r["nfe"] for r in res["rows"]] == [1, 2] and "inception" not in res["sources"]
    assert res["floors"]["classifier"]["source"] == "floor_images" and res["floors"]["classifier"]["n"] == 8
    table = format_table(res)
    assert "floor: 8 images held out of the images under" in table and "never trained on" in table
    assert "less 8 held-out images (32)" in table
    model, info = load_run(folder_run["run"])
    for row, ts in zip(res["rows"], ([80.0], [80.0, 0.585])):
        z = np.load(row["samples_file"])
        assert z["images"].dtype == np.uint8 and z["images"].shape == (8, 1, 16, 16) and int(z["n_generated"]) == 8
        assert np.array_equal(z["images"], sample_images(model, info, 8, steps=len(ts), ts=ts, seed=0).numpy())
    # the command line: the same defaults; --save-samples-mb 0 writes none; notes on stderr keep --json clean
    from cmlite.cli import main
    assert main(["eval", str(folder_run["run"]), "--device", "cpu", "--cache", str(tmp_path), "--json",
                 "--save-samples-mb", "0"]) == 0
    out = capsys.readouterr()
    cli = json.loads(out.out)
    assert cli["n"] == 8 and all("samples_file" not in r for r in cli["rows"]) and "using n = 8" in out.err
    assert [r["fid_classifier"] for r in cli["rows"]] == [r["fid_classifier"] for r in res["rows"]]


def test_inception_reference_shrinks_with_n():
    """Inception's reference set: at most 5 n training images (a fixed random subset), all of them when 5 n
    reaches the training set's size."""
    from cmlite.image.evaluate import _reference_subset
    train = synthetic_dataset(100, seed=0)
    ref, desc = _reference_subset(train, 10)
    assert len(ref) == 50 and "50 random images (seed 0)" in desc
    assert torch.equal(ref, _reference_subset(train, 10)[0])
    assert len({bytes(r.numpy().tobytes()) for r in ref} - {bytes(r.numpy().tobytes()) for r in train.images}) == 0
    assert _reference_subset(train, 20)[0] is train.images and _reference_subset(train, None)[0] is train.images


def test_saved_samples_fit_their_cap(tmp_path):
    """The samples file stays under its cap even for incompressible (uniformly random) images: 0.5 MiB holds
    (2^19 - 2^16) // 3072 = 149 CIFAR-10-shaped images; 16 MiB holds 5440 (of 10k), and all 10k MNIST ones."""
    from cmlite.image.evaluate import _save_samples, samples_that_fit
    assert samples_that_fit(3 * 32 * 32, 16) == 5440 and samples_that_fit(28 * 28, 16) >= 10000
    imgs = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    k = _save_samples(tmp_path / "s.npz", imgs, {"name": "1-step", "nfe": 1, "steps": 1}, 0, 0.5)
    assert k == 149 and (tmp_path / "s.npz").stat().st_size <= 0.5 * 2 ** 20
    assert np.array_equal(np.load(tmp_path / "s.npz")["images"], imgs[:149].numpy())
    assert _save_samples(tmp_path / "none.npz", imgs, {"name": "x", "nfe": 1, "steps": 1}, 0, 0.01) == 0
    assert not (tmp_path / "none.npz").exists()


def test_feature_extraction_reports_progress():
    from cmlite.image.fid import extract_features
    lines = []
    extract_features(lambda u8: u8.float().flatten(1)[:, :3], torch.zeros(25, 1, 2, 2, dtype=torch.uint8),
                     batch_size=4, device="cpu", log=lines.append, desc="features of the reference set")
    assert lines[-1] == "features of the reference set: 25/25 images" and 5 <= len(lines) <= 11
