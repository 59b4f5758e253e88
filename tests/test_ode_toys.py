"""The analytic toys (exact score, denoiser, p_t) and the PF-ODE solvers."""
import math

import pytest
import torch

import cmlite as cm

torch.manual_seed(0)


def _mixture():
    return cm.GaussianMixture([[0.0, 0.0], [1.0, 0.5], [-1.0, 0.8]], [0.3, 0.2, 0.4], [0.5, 0.3, 0.2])


@pytest.mark.parametrize("t", [0.0, 0.05, 0.7, 10.0])
def test_score_is_gradient_of_log_density(t):
    gm = _mixture()
    x = gm.sample(64, t=t, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_()
    (grad,) = torch.autograd.grad(gm.log_prob(x, t).sum(), x)
    if t == 0.0:
        return  # the score at t = 0 (stds > 0) is fine too, but the denoiser identity needs t > 0
    torch.testing.assert_close(gm.score(x.detach(), t), grad, rtol=1e-9, atol=1e-9)


def test_log_prob_normalised():
    # integrate p_t over a grid in 2D: the integral is 1 up to the grid error (spacing 0.02 over +-5)
    gm = _mixture()
    g = torch.linspace(-5, 5, 501, dtype=torch.float64)
    X, Y = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([X.flatten(), Y.flatten()], 1)
    for t in [0.0, 0.5]:
        mass = gm.log_prob(pts, t).exp().sum() * (g[1] - g[0]) ** 2
        assert float(mass) == pytest.approx(1.0, abs=1e-6)


def test_denoiser_is_posterior_mean_monte_carlo():
    # E[x_0 | x_t] by importance sampling from p_data, independent of the closed form
    gm = _mixture()
    g = torch.Generator().manual_seed(2)
    x0 = gm.sample(200_000, generator=g, dtype=torch.float64)
    x = torch.tensor([[0.3, 0.2], [-0.8, 1.0]], dtype=torch.float64)
    t = 0.4
    w = torch.softmax(-torch.cdist(x, x0) ** 2 / (2 * t ** 2), dim=1)
    mc = w @ x0
    ess = 1 / (w ** 2).sum(1)  # effective sample size; MC error ~ posterior std / sqrt(ess) <~ 0.5 / sqrt(ess)
    tol = float(5 * 0.5 / ess.min().sqrt())
    torch.testing.assert_close(gm.denoiser(x, t), mc, atol=tol, rtol=0)


def test_empirical_denoiser_equals_zero_width_mixture():
    pts = torch.randn(20, 2, dtype=torch.float64)
    emp = cm.EmpiricalDenoiser(pts)
    gm = cm.GaussianMixture(pts, 0.0)
    x = torch.randn(7, 2, dtype=torch.float64)
    for t in [0.05, 1.0, 30.0]:
        torch.testing.assert_close(emp(x, t), gm(x, t))


def test_gaussian_consistency_function_solves_the_ode():
    gauss = cm.Gaussian([0.3, -0.2], 0.5)
    x = torch.randn(16, 2, dtype=torch.float64) * 3
    for t in [0.01, 1.0, 80.0]:
        ref, err = cm.reference_solve(gauss, x, t, cm.EPS, steps=2000, return_error=True)
        assert err < 1e-9
        torch.testing.assert_close(gauss.consistency_function(x, t), ref, atol=1e-8, rtol=0)


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2)])
def test_solver_global_order_on_gaussian(solver, order):
    # global error of N-1 steps on the Karras grid; doubling the steps divides it by ~2^order
    gauss = cm.Gaussian([0.0, 0.0], 0.5)
    x = 80 * torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact = gauss.consistency_function(x, 80.0)
    errs = []
    for N in [200, 400, 800]:
        y = cm.solve(gauss, x, cm.karras_boundaries(N).flip(0), solver)
        errs.append(float((y - exact).abs().max()))
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    # asymptotic rate is `order`; at these N the next term of the error expansion moves it by < 0.15
    assert all(abs(r - order) < 0.15 for r in rates), (errs, rates)


def test_heun_falls_back_to_euler_at_zero():
    gauss = cm.Gaussian([0.0, 0.0], 0.5)
    x = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(cm.heun_step(gauss, x, 0.5, 0.0), cm.euler_step(gauss, x, 0.5, 0.0))


def test_score_to_denoiser_roundtrip():
    gm = _mixture()
    D = cm.score_to_denoiser(gm.score)
    x = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(D(x, 0.3), gm(x, 0.3))


def test_toy_2d_datasets_scaled():
    for name in cm.TOY_NAMES:
        x = cm.toy_2d(name, 20_000, torch.Generator().manual_seed(0))
        assert x.shape == (20_000, 2) and torch.isfinite(x).all()
        assert float(x.std(0).mean()) == pytest.approx(0.5, rel=0.05)
    with pytest.raises(ValueError, match="unknown"):
        cm.toy_2d("mooons", 10)


def test_bad_inputs():
    gm = _mixture()
    with pytest.raises(ValueError, match=r"\(batch, 2\)"):
        gm(torch.randn(3, 3), 1.0)
    with pytest.raises(ValueError, match="means"):
        cm.GaussianMixture([0.0, 1.0], 0.1)
    with pytest.raises(ValueError, match="ts"):
        cm.solve(gm, torch.randn(3, 2), [1.0], "heun")
    with pytest.raises(ValueError, match="solver"):
        cm.solve(gm, torch.randn(3, 2), [1.0, 0.5], "rk4")


def test_heun_solve_matches_edm_algorithm_1():
    # EDM's deterministic sampler (Karras et al. 2022, Algorithm 1, no churn), written out independently
    gm = _mixture()
    ts = cm.karras_boundaries(12).flip(0).tolist() + [0.0]
    x0 = 80 * torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x = x0
    for t_cur, t_next in zip(ts[:-1], ts[1:]):
        d = (x - gm(x, t_cur)) / t_cur
        x_next = x + (t_next - t_cur) * d
        if t_next > 0:
            d_next = (x_next - gm(x_next, t_next)) / t_next
            x_next = x + (t_next - t_cur) * (d + d_next) / 2
        x = x_next
    torch.testing.assert_close(cm.solve(gm, x0, ts, "heun"), x, rtol=1e-12, atol=1e-12)
