"""Tests of cmlite.editing: the operators of Algorithm 4, edit() itself, denoising and interpolation."""
import math

import pytest
import torch

from cmlite.editing import (
    LUMINANCE, STROKE_TS, Colorize, Inpaint, KeepCoordinates, StrokeGuided, SuperResolve, box_mask,
    colorization_matrix, denoise, edit, interpolate, luminance, orthogonal_completion, patch_matrix,
    slerp, stroke_guided, super_resolve, upsample_repeat,
)
from cmlite.toys import Gaussian

EPS, T = 0.002, 80.0


def toy_model(x, t):
    """A fixed non-linear stand-in for f_theta(x, t): any shape, depends on t."""
    tt = t.reshape((-1,) + (1,) * (x.ndim - 1))
    return torch.tanh(x) * (0.5 + 0.1 * torch.log(tt)) + 0.01 * tt


def assert_close(a, b, atol=1e-6, rtol=0):
    """Max-abs-difference check (torch.testing.assert_close costs ~1.5 s of lazy imports on first use)."""
    assert a.shape == b.shape, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    assert diff <= atol, f"max abs difference {diff:.3g} > {atol:g}"


def g(seed=0):
    return torch.Generator().manual_seed(seed)


def image(shape=(2, 3, 8, 12), dtype=torch.float64, seed=0):
    return torch.randn(shape, generator=g(seed), dtype=dtype)


OPERATORS = {
    "inpaint": (lambda: Inpaint(box_mask(8, 12, 2, 3, 4, 5)), (2, 3, 8, 12)),
    "inpaint_lowdim": (lambda: Inpaint(torch.tensor([1.0, 0.0, 1.0])), (5, 3)),
    "colorize": (Colorize, (2, 3, 8, 12)),
    "colorize_lowdim": (Colorize, (5, 3)),
    "superres2": (lambda: SuperResolve(2), (2, 3, 8, 12)),
    "superres4": (lambda: SuperResolve(4), (2, 1, 8, 12)),
    "stroke": (StrokeGuided, (2, 3, 8, 12)),
    "keep": (lambda: KeepCoordinates([0, 2]), (5, 4)),
}


# ---------------------------------------------------------------------------- matrices

def test_colorization_matrix_orthogonal_first_row_luminance():
    M = colorization_matrix()
    assert_close(M @ M.T, torch.eye(3, dtype=torch.float64), atol=1e-14, rtol=0)
    assert_close(M.T @ M, torch.eye(3, dtype=torch.float64), atol=1e-14, rtol=0)
    w = torch.tensor(LUMINANCE, dtype=torch.float64)
    assert_close(M[0], w / w.norm(), atol=1e-15, rtol=0)
    assert torch.equal(M, colorization_matrix())  # deterministic


@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_patch_matrix_orthogonal_first_row_ones(p):
    P = patch_matrix(p)
    assert P.shape == (p * p, p * p)
    assert_close(P @ P.T, torch.eye(p * p, dtype=torch.float64), atol=1e-14, rtol=0)
    assert_close(P[0], torch.full((p * p,), 1.0 / p, dtype=torch.float64), atol=1e-15, rtol=0)


def test_orthogonal_completion_of_a_basis_vector_and_bad_input():
    Q = orthogonal_completion([0.0, 0.0, 2.0])
    assert_close(Q @ Q.T, torch.eye(3, dtype=torch.float64), atol=1e-14, rtol=0)
    assert_close(Q[0], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        orthogonal_completion([0.0, 0.0])


# ---------------------------------------------------------------------------- operators

@pytest.mark.parametrize("name", OPERATORS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_operator_is_orthogonal(name, dtype, tol):
    make, shape = OPERATORS[name]
    op = make()
    x = image(shape, dtype)
    Ax = op.A(x)
    assert Ax.shape == x.shape
    assert_close(op.A_inv(Ax), x, atol=tol, rtol=0)
    assert_close(op.A(op.A_inv(x)), x, atol=tol, rtol=0)
    # orthogonal: norms per sample preserved
    assert_close(Ax.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), atol=10 * tol, rtol=0)
    om = op.mask(x)
    assert torch.broadcast_shapes(om.shape, x.shape) == x.shape
    assert ((om == 0) | (om == 1)).all()


@pytest.mark.parametrize("name", OPERATORS)
def test_projection_is_idempotent_and_keeps_y(name):
    make, shape = OPERATORS[name]
    op = make()
    x, y = image(shape, seed=1), image(shape, seed=2)
    px = op.project(x, y)
    assert_close(op.project(px, y), px, atol=1e-12, rtol=0)
    om = op.mask(x)
    # the kept coefficients are y's, the generated ones x's
    assert_close(op.A(px) * (1 - om), op.A(y) * (1 - om), atol=1e-12, rtol=0)
    assert_close(op.A(px) * om, op.A(x) * om, atol=1e-12, rtol=0)
    assert_close(op.keep(y), op.project(torch.zeros_like(y), y), atol=1e-12, rtol=0)


def test_superresolve_coefficient_is_patch_mean():
    op = SuperResolve(2)
    x = image((2, 3, 8, 12))
    Ax = op.A(x)
    means = torch.nn.functional.avg_pool2d(x, 2)
    assert_close(Ax[..., ::2, ::2], 2 * means, atol=1e-12, rtol=0)
    assert_close(op.downsample(x), means, atol=1e-12, rtol=0)
    low = image((2, 3, 4, 6))
    assert_close(op.downsample(op.y_from_low_res(low)), low, atol=1e-12, rtol=0)
    assert upsample_repeat(low, 2).shape == (2, 3, 8, 12)


def test_colorize_first_channel_is_luminance_and_y_from_gray():
    op = Colorize()
    x = image()
    w = torch.tensor(LUMINANCE, dtype=torch.float64)
    assert_close(op.A(x)[:, :1], luminance(x) / w.norm(), atol=1e-12, rtol=0)
    gray = image((2, 1, 8, 12))
    y = Colorize.y_from_gray(gray)
    assert_close(luminance(y), gray, atol=1e-12, rtol=0)
    assert_close(op.A(y)[:, 1:], torch.zeros_like(y[:, 1:]), atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------- edit()

def reference_edit(model, y, op, ts, gen, eps=EPS):
    """Algorithm 4 written out line by line (method.md section 7)."""
    om = op.mask(y)
    Ay_keep = op.A(y) * (1 - om)
    # line 1; stroke guidance (Omega = 1) would erase y there, so it starts from y itself (SDEdit)
    start = y if isinstance(op, StrokeGuided) else op.A_inv(Ay_keep)
    x = start + ts[0] * torch.randn(y.shape, generator=gen, dtype=y.dtype)
    x = model(x, torch.full((y.shape[0],), ts[0], dtype=y.dtype))
    x = op.A_inv(Ay_keep + op.A(x) * om)
    for tau in ts[1:]:
        x = x + math.sqrt(tau ** 2 - eps ** 2) * torch.randn(y.shape, generator=gen, dtype=y.dtype)
        x = model(x, torch.full((y.shape[0],), tau, dtype=y.dtype))
        x = op.A_inv(Ay_keep + op.A(x) * om)
    return x


@pytest.mark.parametrize("name", OPERATORS)
def test_edit_matches_algorithm_4(name):
    make, shape = OPERATORS[name]
    op, y, ts = make(), image(shape, seed=3), (40.0, 5.0, 0.5)
    out = edit(toy_model, y, op, ts, generator=g(7))
    assert_close(out, reference_edit(toy_model, y, op, ts, g(7)), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", [k for k in OPERATORS if k != "stroke"])  # stroke: y is the start
def test_edit_ignores_the_generated_part_of_y(name):
    make, shape = OPERATORS[name]
    op, y = make(), image(shape, seed=4)
    # change y only where Omega = 1 (in the transformed space): the output must not change
    junk = op.A_inv(op.A(image(shape, seed=5)) * op.mask(y))
    a = edit(toy_model, y, op, (10.0, 1.0), generator=g(1))
    b = edit(toy_model, y + 3 * junk, op, (10.0, 1.0), generator=g(1))
    assert_close(a, b, atol=1e-12, rtol=0)


def test_inpaint_reproduces_known_pixels_exactly():
    y = image()
    mask = box_mask(8, 12, 1, 2, 5, 6)
    out = edit(toy_model, y, Inpaint(mask), (80.0, 2.0), generator=g(0))
    keep = (mask == 0).expand_as(y)
    assert torch.equal(out[keep], y[keep])
    assert not torch.allclose(out[~keep], y[~keep])


def test_colorize_keeps_luminance():
    gray = image((2, 1, 8, 12))
    y = Colorize.y_from_gray(gray)
    out = edit(toy_model, y, Colorize(), (80.0, 1.0, 0.2), generator=g(0))
    assert_close(luminance(out), gray, atol=1e-12, rtol=0)
    out32 = edit(toy_model, y.float(), Colorize(), (80.0, 1.0), generator=g(0))
    assert_close(luminance(out32), gray.float(), atol=1e-5, rtol=0)
    assert out.std() > 0.1  # colour channels were generated, not left at zero chrominance


def test_superresolve_keeps_patch_means():
    low = image((2, 3, 4, 6))
    out = super_resolve(toy_model, low, 2, (80.0, 0.8), generator=g(0))
    assert out.shape == (2, 3, 8, 12)
    assert_close(torch.nn.functional.avg_pool2d(out, 2), low, atol=1e-12, rtol=0)
    # the detail inside each patch was generated (not a constant repetition)
    assert (out - upsample_repeat(low, 2)).abs().max() > 1e-3


def test_stroke_guided_is_multistep_sampling_started_at_y():
    y = image((2, 3, 8, 8))
    out = stroke_guided(toy_model, y, generator=g(3))
    gen = g(3)
    t1, t2 = STROKE_TS
    x = toy_model(y + t1 * torch.randn(y.shape, generator=gen, dtype=y.dtype), torch.full((2,), t1, dtype=y.dtype))
    x = x + math.sqrt(t2 ** 2 - EPS ** 2) * torch.randn(y.shape, generator=gen, dtype=y.dtype)
    x = toy_model(x, torch.full((2,), t2, dtype=y.dtype))
    assert_close(out, x, atol=1e-12, rtol=0)
    # ts default to the operator's
    assert_close(edit(toy_model, y, StrokeGuided(), generator=g(3)), out, atol=0, rtol=0)


def _gaussian_model(gauss):
    def f(x, t):
        return gauss.consistency_function(x, t)
    return f


def test_keep_coordinates_gives_the_right_conditional_of_a_gaussian():
    # Data N(mu, s^2 I) in 2D; keep x_0 = 0.7 and generate x_1. The coordinates are independent, so
    # the target conditional is N(mu_1, s^2). With the exact f(x, t) = mu + (x - mu) r(t),
    # r(t) = sqrt((s^2 + eps^2)/(s^2 + t^2)), every step of Algorithm 4 is linear-Gaussian in x_1:
    # start at y_1 = 0 (projected away), add noise of variance tau_1^2 (then tau_n^2 - eps^2), apply f.
    # So x_1 ~ N(m, v) with the recursion m <- mu_1 + r (m - mu_1), v <- r^2 (v + noise var).
    mu, s = torch.tensor([1.0, -0.5]), 0.5
    gauss = Gaussian(mu, s)
    ts = (80.0, 1.0, 0.3)
    n = 100_000
    y = torch.tensor([0.7, 5.0], dtype=torch.float64).expand(n, 2).clone()  # y_1 = 5 must be ignored
    out = edit(_gaussian_model(gauss), y, KeepCoordinates([0]), ts, generator=g(11))
    assert torch.equal(out[:, 0], y[:, 0])  # kept coordinate reproduced exactly
    m, v = 0.0, 0.0
    for i, tau in enumerate(ts):
        r = math.sqrt((s ** 2 + EPS ** 2) / (s ** 2 + tau ** 2))
        noise = tau ** 2 if i == 0 else tau ** 2 - EPS ** 2
        m, v = float(mu[1]) + r * (m - float(mu[1])), r ** 2 * (v + noise)
    x1 = out[:, 1]
    se_mean, se_var = math.sqrt(v / n), v * math.sqrt(2 / (n - 1))
    assert abs(float(x1.mean()) - m) < 5 * se_mean
    assert abs(float(x1.var()) - v) < 5 * se_var
    # and the analytic law is the right conditional N(mu_1, s^2) up to the start bias
    # |m - mu_1| = |mu_1| prod_n r(tau_n) ~ 1.2e-3 and a variance error ~ eps^2 / s^2
    assert abs(m - float(mu[1])) < 2e-3 and abs(v / s ** 2 - 1) < 1e-3
    # one step from T is biased by mu_1 * r(T) ~ 3e-3 (y_1 = 0 is the start, not mu_1): detectable here
    one = edit(_gaussian_model(gauss), y, KeepCoordinates([0]), (80.0,), generator=g(12))[:, 1]
    r_T = math.sqrt((s ** 2 + EPS ** 2) / (s ** 2 + T ** 2))
    assert abs(float(one.mean()) - float(mu[1]) * (1 - r_T)) < 5 * math.sqrt(s ** 2 / n)


def test_edit_callback_progress_and_model_attributes():
    class Model:
        eps, T = 0.01, 10.0

        def __call__(self, x, t):
            return toy_model(x, t)

    seen = []
    y = image((3, 4))
    edit(Model(), y, KeepCoordinates(1), [10.0, 2.0, 0.5], generator=g(0), callback=seen.append, disable=False)
    assert [s["i"] for s in seen] == [0, 1, 2] and [s["t"] for s in seen] == [10.0, 2.0, 0.5]
    assert all(torch.equal(s["x"][:, 1], y[:, 1]) for s in seen)
    with pytest.raises(ValueError, match="eps, T"):
        edit(Model(), y, KeepCoordinates(1), [20.0, 2.0])  # above this model's T = 10
    with pytest.raises(ValueError, match="eps, T"):
        edit(Model(), y, KeepCoordinates(1), [1.0, 0.005])  # below this model's eps = 0.01


@pytest.mark.parametrize("ts", [[], [1.0, 2.0], [2.0, 2.0], [100.0], [1.0, 0.001], [[1.0]], [float("nan")]])
def test_edit_rejects_bad_times(ts):
    with pytest.raises(ValueError):
        edit(toy_model, image((2, 4)), KeepCoordinates(0), ts)


def test_operators_reject_bad_input():
    x = image()
    with pytest.raises(ValueError, match="3 channels"):
        Colorize().A(image((2, 4, 8, 8)))
    with pytest.raises(ValueError, match="divisible"):
        SuperResolve(3).A(x)
    with pytest.raises(ValueError):
        SuperResolve(0)
    with pytest.raises(ValueError, match="broadcast"):
        edit(toy_model, x, Inpaint(torch.ones(7, 12)), [1.0])
    with pytest.raises(ValueError, match="0 and 1"):
        Inpaint(torch.full((8, 12), 0.5))
    with pytest.raises(ValueError, match="out of range"):
        edit(toy_model, image((2, 3)), KeepCoordinates([3]), [1.0])
    with pytest.raises(ValueError):
        KeepCoordinates([])
    with pytest.raises(ValueError):
        KeepCoordinates([0.5])
    with pytest.raises(ValueError, match="ts is required"):
        edit(toy_model, x, Inpaint(torch.ones(8, 12)))
    with pytest.raises(ValueError):
        box_mask(8, 8, 6, 0, 4, 2)
    with pytest.raises(ValueError):
        Colorize().project(x, x[:1])


# ---------------------------------------------------------------------------- denoising, interpolation

def test_denoise_is_f_at_sigma():
    gauss = Gaussian([0.3, -0.2], 0.5)
    y = gauss.sample(100, t=0.7, generator=g(0), dtype=torch.float64)
    out = denoise(_gaussian_model(gauss), y, 0.7)
    assert_close(out, gauss.consistency_function(y, 0.7), atol=0, rtol=0)
    with pytest.raises(ValueError):
        denoise(toy_model, y, 81.0)
    with pytest.raises(ValueError):
        denoise(toy_model, y, torch.ones(3))


def test_slerp_endpoints_norm_and_orthogonal_midpoint():
    z0, z1 = image((4, 3, 8, 8), seed=1), image((4, 3, 8, 8), seed=2)
    assert_close(slerp(z0, z1, 0.0), z0, atol=1e-12, rtol=0)
    assert_close(slerp(z0, z1, 1.0), z1, atol=1e-12, rtol=0)
    e0, e1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert_close(slerp(e0, e1, 0.5), torch.tensor([[1.0, 1.0]]) / math.sqrt(2))
    assert_close(slerp(e0, e1, 1 / 3), torch.tensor([[math.cos(math.pi / 6), math.sin(math.pi / 6)]]))
    # equal norms stay equal along the arc (a straight line would shrink by ~1/sqrt(2) at the middle)
    u1 = z1 * (z0.flatten(1).norm(dim=1) / z1.flatten(1).norm(dim=1)).reshape(-1, 1, 1, 1)
    mid = slerp(z0, u1, torch.full((4,), 0.5, dtype=torch.float64))
    assert_close(mid.flatten(1).norm(dim=1), z0.flatten(1).norm(dim=1), atol=1e-10, rtol=0)
    assert_close(slerp(z0, z0, 0.3), z0, atol=1e-12, rtol=0)  # theta = 0: no NaN
    with pytest.raises(ValueError):
        slerp(z0, z1[:2], 0.5)


def test_interpolate_shape_and_endpoints():
    z0, z1 = T * image((2, 5), seed=1), T * image((2, 5), seed=2)
    out = interpolate(toy_model, z0, z1, [0.0, 0.5, 1.0])
    assert out.shape == (3, 2, 5)
    assert_close(out[0], toy_model(z0, torch.full((2,), T, dtype=z0.dtype)), atol=1e-12, rtol=0)
    assert_close(out[2], toy_model(z1, torch.full((2,), T, dtype=z0.dtype)), atol=1e-12, rtol=0)
    with pytest.raises(ValueError):
        interpolate(toy_model, z0, z1, [0.5, 1.5])
    with pytest.raises(ValueError):
        interpolate(toy_model, z0, z1, [])
