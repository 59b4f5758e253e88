"""Theorem 1, measured: the zero-CD-loss consistency function converges at the solver's order.

All computations are deterministic (float64, fixed seeds), so the tolerances are not statistical: each
one bounds a truncation term, and the comment next to it says which.
"""
import math

import numpy as np
import pytest
import torch

import cmlite.ode as ode
from cmlite import karras_boundaries
from cmlite.ode import euler_step, heun_step
from cmlite.theory import (end_points, get_toy, local_error_order, theorem1_table, trajectories,
                           zero_loss_consistency, zero_loss_errors)
from cmlite.theory.common import _rk4_through




def _slope_ok(table, solver, tol):
    res = table["solvers"][solver]
    return abs(res["slope"] - res["expected_order"]) <= tol


# ---------------------------------------------------------------- the zero-loss construction itself
def test_sweep_equals_running_the_solver_from_each_t_n():
    """zero_loss_errors (one sweep for all n) is exactly zero_loss_consistency applied at each n."""
    toy = get_toy("mixture")
    t = karras_boundaries(12)
    E = end_points(toy, 5, seed=3)
    X, _ = trajectories(toy, E, [float(v) for v in t])
    for solver in ("euler", "heun"):
        err = zero_loss_errors(toy.mixture, X, E, t, solver)
        direct = torch.stack([(zero_loss_consistency(toy.mixture, X[n], n, t, solver) - E).norm(dim=-1)
                              for n in range(12)])
        # same floating-point operations in the same order, up to batching: equal to round-off
        assert torch.allclose(err, direct, rtol=0, atol=1e-13)
    assert float(err[0].abs().max()) == 0.0  # n = 0: the boundary condition, f(x, eps) = x exactly


def test_zero_loss_function_has_zero_cd_loss():
    """f(x, t_{n+1}) = f(Phi(x), t_n) for every x: the defining property of L_CD = 0."""
    g = get_toy("mixture").mixture
    t = karras_boundaries(10)
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    for n in range(9):
        a = zero_loss_consistency(g, x, n + 1, t, "heun")
        b = zero_loss_consistency(g, heun_step(g, x, float(t[n + 1]), float(t[n])), n, t, "heun")
        assert torch.equal(a, b)


# ---------------------------------------------------------------- references
def test_reference_trajectories_agree_with_closed_form():
    """The RK4 path used for mixtures, run on the Gaussian, reproduces the closed-form flow, and its
    Richardson error estimate (|X(h) - X(2h)| / 15) is honest. RK4 with h <= 0.01 in ln t: local error
    ~ h^5 |x^(5)| relative, ~1000 steps: ~1e-9 relative; we allow 1e-8 relative. The estimate assumes the
    asymptotic h^4 ratio; allowing the true error to be up to 2x the estimate covers the next term."""
    toy = get_toy("gaussian")
    E = end_points(toy, 16, seed=1)
    times = [float(v) for v in karras_boundaries(40)]
    exact, err = trajectories(toy, E, times)
    assert err == 0.0
    rk4 = _rk4_through(toy.mixture, E, [0.002] + times, 0.01)[1:]
    rk4_2 = _rk4_through(toy.mixture, E, [0.002] + times, 0.02)[1:]
    true_err = (rk4 - exact).abs().max()
    assert float(true_err / exact.abs().max()) < 1e-8
    assert float(true_err) <= 2 * float((rk4 - rk4_2).abs().max()) / 15


def test_gaussian_table_matches_independent_scalar_computation():
    """For N(mu, s^2) the PF ODE is linear, dx/dt = a(t)(x - mu), a = t/(s^2 + t^2), so each Euler/Heun step
    multiplies x - mu by a scalar and the zero-loss error at n is |prod_k m_k * r_n - 1| * |x_j(eps) - mu|.
    Recompute the table that way in numpy and compare (agreement to round-off, 1e-10 relative)."""
    tab = theorem1_table("gaussian", Ns=(8, 32, 128))
    s2, e = 0.25, 0.002
    E = end_points("gaussian", 32, seed=0).numpy()
    amp = np.linalg.norm(E, axis=1).max()                    # mu = 0
    a = lambda tt: tt / (s2 + tt ** 2)
    for solver in ("euler", "heun"):
        for row in tab["solvers"][solver]["rows"]:
            t = karras_boundaries(row["N"]).numpy()
            P, worst = 1.0, 0.0
            for n in range(1, len(t)):
                h = t[n - 1] - t[n]
                m = 1 + h * a(t[n]) if solver == "euler" else 1 + h / 2 * (a(t[n]) + a(t[n - 1]) * (1 + h * a(t[n])))
                P *= m  # composition order is irrelevant for scalars
                r = math.sqrt((s2 + t[n] ** 2) / (s2 + e ** 2))
                worst = max(worst, abs(P * r - 1))
            assert row["error"] == pytest.approx(worst * amp, rel=1e-10)


def test_two_independent_mixture_references_agree():
    """Forward RK4 trajectories (this package) and the library's backward reference_solve (RK4 in ln t,
    400 steps here) give the same consistency values: f(x_j(t), t) = x_j(eps). The forward positions are
    accurate to ~1e-10 relative (Richardson estimate <1e-7 absolute at |x| ~ 240); the backward solve with
    400 steps has h = 0.026 in ln t, an RK4 error ~1e-8 (measured: 1e-8 at 400 steps, 2e-10 at 2000), so
    1e-7 is a safe bound."""
    from cmlite.theory import consistency_reference
    toy = get_toy("mixture")
    E = end_points(toy, 16, seed=2)
    X, err = trajectories(toy, E, [0.05, 1.0, 80.0])
    assert err < 1e-7
    for Xn, tn in zip(X, (0.05, 1.0, 80.0)):
        assert float((consistency_reference(toy, Xn, tn, steps=400) - E).abs().max()) < 1e-7


# ---------------------------------------------------------------- the slopes
def test_theorem1_slopes_gaussian():
    """Headline check. Tolerances 0.1 (Euler) and 0.15 (Heun) bound the higher-order terms
    e = C dt^p (1 + c dt + ...) left inside the regime N = 64..512; the local slopes at the largest N are
    already within 0.005 / 0.02 of p, which is asserted too (convergence, not just a lucky fit)."""
    tab = theorem1_table("gaussian")
    assert tab["regime"]["N"] == [64, 512]
    assert _slope_ok(tab, "euler", 0.1) and _slope_ok(tab, "heun", 0.15)
    assert abs(tab["solvers"]["euler"]["rows"][-1]["local_slope"] - 1) < 0.01
    assert abs(tab["solvers"]["heun"]["rows"][-1]["local_slope"] - 2) < 0.03
    # and the errors really are small in absolute terms where the fit is made
    assert tab["solvers"]["heun"]["rows"][-1]["error"] < 1e-4


def test_theorem1_slopes_mixture():
    """Same on the 4-component mixture with the RK4 reference, N = 64..256 (cheaper than the CLI's 512).
    The reference must be far more accurate than the smallest error measured (ratio >= 1e3, so it cannot
    move a slope by more than ~1e-3)."""
    tab = theorem1_table("mixture", Ns=(64, 128, 256), fit_range=(64, 256))
    assert _slope_ok(tab, "euler", 0.1) and _slope_ok(tab, "heun", 0.15)
    smallest = tab["solvers"]["heun"]["rows"][-1]["error"]
    assert tab["reference_error"] * 1e3 < smallest


def test_narrow_modes_are_not_yet_asymptotic():
    """Honesty about the regime: on trajectories through the bridge between two well-separated modes the
    consistency function is very steep (Lipschitz >~ 1e4 on the test set), and at N = 32..128 the local Heun
    slopes are still far from 2 (measured 1.1-1.6), while on the Gaussian they are within 0.2 of 2."""
    narrow = theorem1_table("narrow", solvers=("heun",), Ns=(32, 64, 128), test_set="segment",
                            fit_range=(32, 128))
    gauss = theorem1_table("gaussian", solvers=("heun",), Ns=(32, 64, 128), fit_range=(32, 128))
    assert narrow["lipschitz_estimate"] > 1e3
    assert all(abs(r["local_slope"] - 2) > 0.3 for r in narrow["solvers"]["heun"]["rows"][1:])
    assert all(abs(r["local_slope"] - 2) < 0.2 for r in gauss["solvers"]["heun"]["rows"][1:])


def test_local_truncation_order_of_library_steps():
    """One step of the library's Euler / Heun on the Gaussian PF ODE (closed-form flow): local error
    O(h^2) / O(h^3). h = 0.08..0.01 at t = 1: the next term is ~ h relative, so 0.1 covers it."""
    assert abs(local_error_order("euler")["slope"] - 2) < 0.1
    assert abs(local_error_order("heun")["slope"] - 3) < 0.1


# ---------------------------------------------------------------- the checks can fail
def _wrong_coefficient_euler(D, x, t_from, t_to):
    # an Euler step with a wrong coefficient: x + 1.1 h v (inconsistent: global error O(1))
    return x + 1.1 * (t_to - t_from) * (x - D(x, t_from)) / t_from


def _first_order_heun(D, x, t_from, t_to):
    # Heun with the corrector's slope evaluated at the wrong time (t_from): first order only
    h = t_to - t_from
    d1 = (x - D(x, t_from)) / t_from
    xe = x + h * d1
    d2 = (xe - D(xe, t_from)) / t_from
    return x + h * (d1 + d2) / 2


def test_wrong_solvers_fail_the_slope_check():
    tab = theorem1_table("gaussian", solvers={"euler": _wrong_coefficient_euler, "heun": _first_order_heun},
                         Ns=(64, 128, 256, 512))
    assert not _slope_ok(tab, "euler", 0.1)   # slope ~ 0: the error does not vanish
    assert not _slope_ok(tab, "heun", 0.15)   # slope ~ 1
    assert abs(tab["solvers"]["heun"]["slope"] - 1) < 0.1
    assert abs(local_error_order(_first_order_heun)["slope"] - 2) < 0.1


def test_heun_replaced_by_euler_in_the_library_fails(monkeypatch):
    """The tables look solvers up in cmlite.ode at call time, so a broken library Heun is caught."""
    monkeypatch.setitem(ode.SOLVERS, "heun", euler_step)
    tab = theorem1_table("gaussian", solvers=("heun",), Ns=(64, 128, 256, 512))
    assert not _slope_ok(tab, "heun", 0.15)
