"""Zero-shot image editing (cmlite.image.edit) on image shapes: the algebra of every operator (A orthogonal,
A^{-1} A = I, Omega's meaning), the known part kept exactly, NFE counts, PSNR / SSIM, the baselines, the
time search, and `cmlite edit` on a tiny trained run."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from cmlite.editing import Colorize, Inpaint, StrokeGuided, SuperResolve, luminance
from cmlite.image import edit as E
from cmlite.image.data import save_npz, save_png, synthetic_dataset
from cmlite.image.recipes import get_recipe
from cmlite.image.run import load_run, train
from cmlite.image.timesearch import OFFICIAL_CIFAR10_TAU, grid_index, search_times

SHAPES = [(1, 16, 16), (3, 16, 16), (1, 28, 28), (3, 32, 32)]


def _ops(C, H, W):
    ops = {"inpaint-box": Inpaint(E.make_mask("box", H, W)), "inpaint-free": Inpaint(E.make_mask("free", H, W, 3)),
           "superres-2": SuperResolve(2), "superres-4": SuperResolve(4), "stroke": StrokeGuided()}
    if C == 3:
        ops["colorize"] = Colorize()
    return ops


def _images(C, H, W, n=4, seed=0):
    return torch.rand(n, C, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


class FakeCM:
    """A nonlinear stand-in for f_theta with eps and T (outputs in (-1, 1)), counting calls."""
    eps, T = 0.002, 80.0

    def __init__(self):
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return torch.tanh(0.7 * x / (1 + t) + 0.3 * torch.sin(3 * x.flip(-1)) + 0.1)


# ------------------------------------------------------------------------------------------ the algebra
@pytest.mark.parametrize("shape", SHAPES[:3], ids=lambda s: "x".join(map(str, s)))
def test_every_operator_is_orthogonal_as_a_matrix(shape):
    d = math.prod(shape)
    basis = torch.eye(d, dtype=torch.float64).reshape(d, *shape)
    for name, op in _ops(*shape).items():
        M = op.A(basis).reshape(d, d).T          # column j = A e_j
        Minv = op.A_inv(basis).reshape(d, d).T
        assert torch.allclose(M @ M.T, torch.eye(d, dtype=torch.float64), atol=1e-12), name
        assert torch.allclose(Minv, M.T, atol=1e-12), name


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_inverse_and_inner_products(shape):
    x, y = _images(*shape, seed=1), _images(*shape, seed=2)
    for name, op in _ops(*shape).items():
        assert torch.allclose(op.A_inv(op.A(x)), x, atol=1e-12), name
        assert torch.allclose(op.A(op.A_inv(x)), x, atol=1e-12), name
        ip = (op.A(x) * op.A(y)).flatten(1).sum(1)
        assert torch.allclose(ip, (x * y).flatten(1).sum(1), atol=1e-10), name   # <Ax, Ay> = <x, y>


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_known_part_exact_and_omega_means_generate(shape):
    C, H, W = shape
    y = _images(*shape, seed=3).float()
    for name, op in _ops(*shape).items():
        out = E._edit(FakeCM(), y, op, [80.0, 5.0, 0.5], generator=torch.Generator().manual_seed(0))
        om = op.mask(y)
        if not isinstance(op, StrokeGuided):
            assert E.known_part_error(op, out, y) < 1e-5, name      # the kept part: y's, to float precision
        gen = (op.A(out) - op.A(y)) * om
        assert float(gen.abs().max()) > 1e-2, name                  # the generated part (Omega = 1) is not y's
    # inpainting: Omega = 1 pixels come from f, Omega = 0 pixels from y, exactly
    m = E.make_mask("half-right", H, W)
    const = lambda x, t: torch.full_like(x, 0.25)   # noqa: E731
    const.eps, const.T = 0.002, 80.0
    out = E._edit(const, y, Inpaint(m), [80.0, 1.0], generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[..., W // 2:], torch.full_like(out[..., W // 2:], 0.25))
    assert torch.equal(out[..., :W // 2], y[..., :W // 2])


def test_colorize_keeps_luminance_and_generates_chroma():
    y = _images(3, 16, 16, seed=4).float()
    const = lambda x, t: torch.full_like(x, 0.3) * torch.tensor([1.0, -0.5, 0.2]).view(1, 3, 1, 1)  # noqa: E731
    const.eps, const.T = 0.002, 80.0
    out = E.edit(const, "colorize", y, ts=[80.0, 2.0], generator=torch.Generator().manual_seed(0))
    assert torch.allclose(luminance(out), luminance(y), atol=1e-6)
    op = Colorize()
    target = op.A(const(y, 1.0))
    assert torch.allclose(op.A(out)[:, 1:], target[:, 1:], atol=1e-6)     # chroma = the model's
    gray = luminance(y)                                                   # a (B, 1, H, W) grey input works too
    out_g = E.edit(const, "colorize", gray, ts=[80.0, 2.0], generator=torch.Generator().manual_seed(0))
    assert torch.allclose(luminance(out_g), gray, atol=1e-6)


def test_masks():
    assert E.center_box_mask(28, 28).sum() == 14 * 14 and E.center_box_mask(32, 32)[8:24, 8:24].all()
    for side, sl in [("bottom", (slice(8, 16), slice(None))), ("top", (slice(0, 8), slice(None))),
                     ("left", (slice(None), slice(0, 8))), ("right", (slice(None), slice(8, 16)))]:
        m = E.make_mask(f"half-{side}", 16, 16)
        assert m[sl].all() and m.sum() == 128
    assert torch.equal(E.make_mask("half", 16, 16), E.half_mask(16, 16, "bottom"))
    a, b = E.free_form_mask(28, 28, seed=5), E.free_form_mask(28, 28, seed=5)
    assert torch.equal(a, b) and not torch.equal(a, E.free_form_mask(28, 28, seed=6))
    covers = [float(E.free_form_mask(32, 32, seed=s).mean()) for s in range(20)]
    assert min(covers) >= 0.2 and max(covers) < 0.75, covers
    batch = E.make_mask("free", 16, 16, seed=2, n=3)
    assert batch.shape == (3, 1, 16, 16) and torch.equal(batch[1, 0], E.free_form_mask(16, 16, seed=3))
    with pytest.raises(ValueError, match="unknown mask"):
        E.make_mask("circle", 16, 16)


def test_stroke_painting_is_coarse_and_quantised():
    x = _images(3, 32, 32, seed=6).float()
    p = E.stroke_painting(x, levels=4)
    assert p.shape == x.shape
    assert len(torch.unique(p)) <= 4
    assert torch.equal(p, p[..., ::4, ::4].repeat_interleave(4, -2).repeat_interleave(4, -1))


# ------------------------------------------------------------------------------------------ edit / NFE
def test_edit_tasks_nfe_and_teacher_ode_counts():
    x = _images(3, 16, 16, n=3, seed=7).float()
    den = lambda x, t: 0.8 * x / (1 + torch.as_tensor(t).view(-1, 1, 1, 1) ** 2)  # noqa: E731 (a denoiser)
    for task, kw in [("inpaint", {"mask": "free"}), ("colorize", {}), ("superres", {"factor": 4}), ("stroke", {}),
                     ("denoise", {"sigma": 0.4})]:
        p = E.make_problem(task, x, **kw)
        f = E.ModelFn(FakeCM())
        out = p.solve(f, generator=torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.abs().max() < 2  # projected: may leave [-1, 1] a little
        assert f.evals == E.nfe(task, p.ts if task != "denoise" else None)
        ft = E.TeacherODE(den, N=4)
        out_t = p.solve(ft, generator=torch.Generator().manual_seed(0))
        assert ft.evals == E.nfe(task, p.ts if task != "denoise" else None, N=4)
        if p.known_error(out) is not None:
            assert p.known_error(out) < 1e-5 and p.known_error(out_t) < 1e-5
        nv = p.naive()
        assert nv.shape == x.shape
    z = E.interpolation_noise(2, (3, 16, 16))
    f = E.ModelFn(FakeCM())
    path = E.edit(f, "interpolate", z, alphas=[0, 0.5, 1])
    assert path.shape == (3, 2, 3, 16, 16) and f.evals == 1
    assert torch.allclose(path[0], FakeCM()(z[0], 80.0).clamp(-1, 1))


def test_naive_baselines():
    x = _images(3, 16, 16, n=2, seed=8).float()
    p = E.make_problem("inpaint", x, mask="box")
    nv = p.naive()
    m = E.make_mask("box", 16, 16).bool()
    assert torch.equal(nv[..., ~m], x[..., ~m])
    assert torch.allclose(nv[..., m], x[..., ~m].mean(-1, keepdim=True).expand_as(nv[..., m]), atol=1e-6)
    low = SuperResolve(4).downsample(x)
    nv = E.make_problem("superres", x, factor=4).naive()
    ref = torch.nn.functional.interpolate(low, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)
    assert torch.equal(nv, ref)
    nv = E.make_problem("colorize", x).naive()
    assert torch.equal(nv[:, 0], nv[:, 1]) and torch.allclose(nv[:, :1], luminance(x).clamp(-1, 1))


def test_problem_from_input_shapes_and_errors():
    u8 = (torch.rand(2, 3, 32, 32) * 255).to(torch.uint8)
    p = E.problem_from_input("superres", u8[..., ::2, ::2], (3, 32, 32), factor=2)   # low-res: observation
    assert p.original is None and p.y.shape == (2, 3, 32, 32)
    p = E.problem_from_input("colorize", u8[:, :1], (3, 32, 32))                     # grey: observation
    assert p.original is None and p.y.shape == (2, 3, 32, 32)
    p = E.problem_from_input("denoise", u8, (3, 32, 32), sigma=0.3)                  # clean: noised here
    assert p.original is not None and not torch.equal(p.y, p.original)
    p = E.problem_from_input("denoise", u8, (3, 32, 32), observed=True, sigma=0.3)  # already noisy
    assert p.original is None and torch.equal(p.y, u8.float() / 127.5 - 1)
    with pytest.raises(ValueError, match="model makes 3x32x32"):
        E.problem_from_input("inpaint", u8[..., :28, :28], (3, 32, 32))
    with pytest.raises(ValueError, match="low-resolution 3x8x8"):
        E.problem_from_input("superres", u8[..., :20, :20], (3, 32, 32), factor=4)
    with pytest.raises(ValueError, match="3-channel"):
        E.problem_from_input("colorize", u8[:, :1], (1, 32, 32))
    with pytest.raises(ValueError, match="unknown editing task"):
        E.edit(FakeCM(), "deblur", u8.float())


# ------------------------------------------------------------------------------------------ metrics
def _ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM written out position by position (Wang et al. 2004), data on [0, 1], one channel."""
    c = np.arange(11) - 5
    g = np.exp(-c ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    vals = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            vals.append(((2 * ma * mb + 1e-4) * (2 * cov + 9e-4)) / ((ma ** 2 + mb ** 2 + 1e-4) * (va + vb + 9e-4)))
    return float(np.mean(vals))


def test_psnr_and_ssim():
    x = _images(3, 16, 16, n=2, seed=9).float().clamp(-0.8, 0.8)
    assert torch.isinf(E.psnr(x, x)).all()
    assert torch.allclose(E.ssim(x, x), torch.ones(2))
    assert torch.allclose(E.psnr(x + 0.2, x), torch.full((2,), -20 * math.log10(0.1)), atol=1e-4)  # MSE on [0,1]: 0.1^2
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    s = [float(E.ssim(x + sig * noise, x).mean()) for sig in (0.02, 0.05, 0.1, 0.2, 0.4)]
    p = [float(E.psnr(x + sig * noise, x).mean()) for sig in (0.02, 0.05, 0.1, 0.2, 0.4)]
    assert all(a > b for a, b in zip(s, s[1:])) and all(a > b for a, b in zip(p, p[1:]))
    a, b = x[:1, :1], (x + 0.3 * noise)[:1, :1]
    ref = _ssim_reference(((a[0, 0].double() + 1) / 2).numpy(), ((b[0, 0].double() + 1) / 2).numpy())
    assert abs(float(E.ssim(a, b)[0]) - ref) < 1e-6
    with pytest.raises(ValueError, match="window"):
        E.ssim(x[..., :8, :8], x[..., :8, :8])


# ------------------------------------------------------------------------------------------ trained runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    train(get_recipe("tiny-ict"), root / "ict", steps=3, progress=False)
    train(get_recipe("tiny-teacher"), root / "teacher", steps=2, progress=False)
    rgb = get_recipe("tiny-ict").with_overrides(["net_overrides.in_channels=3"])
    train(rgb, root / "ict-rgb", steps=2, progress=False)
    return root


def test_search_times_on_a_tiny_run(runs):
    model, info = load_run(runs / "ict")
    target = synthetic_dataset(32, seed=1).images.float().mean()
    trail_scorer = lambda u8: abs(float(u8.float().mean()) - float(target))  # noqa: E731 (a cheap stand-in for FID)
    r = search_times(model, info, trail_scorer, n_steps=3, n=8, iters=2)
    assert len(r["times"]) == 3 and r["times"][0] == 80.0 and r["times"][0] > r["times"][1] > r["times"][2]
    assert len(r["fid"]) == 3 and r["evaluations"] == 1 + 2 * (2 * 2) == len(r["trail"])
    assert r["official"]["ts"] == [80.0, OFFICIAL_CIFAR10_TAU] and r["official"]["grid_index"] == 11
    assert grid_index(80.0)[0] == 0 and grid_index(0.002)[0] == 17


def _cli(*args, cwd, ok=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "cmlite", *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=300)
    assert (p.returncode == 0) == ok, p.stderr[-3000:]
    return p


def test_cli_edit_on_a_tiny_run(runs, tmp_path):
    data = synthetic_dataset(5, seed=2)
    save_npz(tmp_path / "in.npz", data.images)
    p = _cli("edit", str(runs / "ict"), "inpaint", "--input", "in.npz", "--mask", "half", "--out", "out/inp.npz",
             "--steps", "3", "--teacher", str(runs / "teacher"), "--baseline-N", "3", cwd=tmp_path)
    assert "3 network evaluations" in p.stdout and "teacher ODE baseline: 12 network evaluations" in p.stdout
    z = np.load(tmp_path / "out/inp.npz")
    assert z["images"].shape == (5, 1, 16, 16) and z["images"].dtype == np.uint8 and z["teacher"].shape == (5, 1, 16, 16)
    assert np.array_equal(z["images"][:, :, :8], data.images.numpy()[:, :, :8])   # the kept (top) half, exactly
    assert np.array_equal(z["originals"], data.images.numpy()) and float(z["known_part_error"]) < 1e-5
    assert (tmp_path / "out/inp.png").is_file()
    # 3 channels: colorize grey PNG files (the observation itself), super-resolve low-resolution images
    rgb = synthetic_dataset(3, channels=3, seed=3).images
    for i in range(2):
        save_png(tmp_path / f"g{i}.png", luminance(rgb[i:i + 1].float())[0].round().to(torch.uint8))
    p = _cli("edit", str(runs / "ict-rgb"), "colorize", "--input", "g0.png", "g1.png", "--out", "c.npz", cwd=tmp_path)
    assert np.load(tmp_path / "c.npz")["images"].shape == (2, 3, 16, 16)
    save_npz(tmp_path / "low.npz", rgb[..., ::4, ::4].contiguous())
    _cli("edit", str(runs / "ict-rgb"), "superres", "--input", "low.npz", "--factor", "4", "--out", "s.npz", cwd=tmp_path)
    assert np.load(tmp_path / "s.npz")["images"].shape == (3, 3, 16, 16)
    # shape mismatch with the model: a clear error, exit status 2
    p = _cli("edit", str(runs / "ict"), "denoise", "--input", "low.npz", "--out", "x.npz", cwd=tmp_path, ok=False)
    assert p.returncode == 2 and "model makes 1x16x16" in p.stderr and "Traceback" not in p.stderr
