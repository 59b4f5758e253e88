"""Symbolic checks (sympy) and their ties to the library's numerical code.

Symbolic results are exact (identities simplify to 0 or they do not); the numerical ties compare float64
evaluations of the same formula, so their tolerances are round-off (a few ulps times the magnitudes).
"""
import pytest
import torch

sp = pytest.importorskip("sympy")

import cmlite.parameterization as param
from cmlite import ConsistencyModel, Gaussian, MLP, get_scalings
from cmlite.ode import euler_step, heun_step
from cmlite.theory import symbolic as S


# ---------------------------------------------------------------- boundary condition
def test_skip_form_meets_boundary_condition_and_is_differentiable():
    r = S.boundary_condition_check()
    assert r["passed"]
    assert r["skip"]["f(x, eps) - x"] == "0"
    assert r["skip"]["differentiable_at_eps"]
    # the piecewise form meets f(x, eps) = x by definition but jumps there
    assert r["piecewise"]["boundary_condition"] and not r["piecewise"]["continuous_at_eps"]
    assert not r["piecewise"]["differentiable_at_eps"]


def test_c_out_without_eps_shift_fails_the_boundary_condition():
    """EDM's scalings (eps = 0), the classic porting bug, and a c_out alone without the shift."""
    assert not S.boundary_condition_check(S.edm_scalings)["skip"]["boundary_condition"]

    def no_shift_c_out(t, eps, sd):
        c_skip, _ = S.skip_scalings(t, eps, sd)
        return c_skip, sd * t / sp.sqrt(sd ** 2 + t ** 2)

    r = S.boundary_condition_check(no_shift_c_out)
    assert not r["skip"]["boundary_condition"] and not r["passed"]


def test_library_scalings_are_the_symbolic_ones():
    """get_scalings (torch) equals the sympy expressions at random times; c_skip(eps) = 1 and c_out(eps) = 0
    exactly in float64."""
    c_skip, c_out = S.skip_scalings()
    f = sp.lambdify((S.t, S.eps, S.sd), [c_skip, c_out])
    t = torch.tensor([0.002, 0.01, 0.3, 1.0, 7.0, 80.0], dtype=torch.float64)
    cs, co, _, _ = get_scalings(t, 0.5, 0.002)
    for i, ti in enumerate(t.tolist()):
        a, b = f(ti, 0.002, 0.5)
        assert cs[i].item() == pytest.approx(a, rel=1e-14, abs=1e-300)
        assert co[i].item() == pytest.approx(b, rel=1e-14, abs=1e-300)
    assert cs[0].item() == 1.0 and co[0].item() == 0.0


def _model_boundary_error(parameterization="skip"):
    torch.manual_seed(0)
    m = ConsistencyModel(MLP(2, 32, 1), parameterization=parameterization).double()
    x = torch.randn(128, 2, dtype=torch.float64) * 3
    with torch.no_grad():
        return float((m(x, 0.002) - x).abs().max())


def test_library_model_meets_boundary_condition_exactly():
    assert _model_boundary_error("skip") == 0.0
    assert _model_boundary_error("piecewise") == 0.0


def test_library_model_with_edm_scalings_fails(monkeypatch):
    """Mutation of the library: c_out without the eps shift (EDM's scalings) breaks f(x, eps) = x."""
    orig = param.get_scalings
    monkeypatch.setattr(param, "get_scalings", lambda t, sigma_data=0.5, eps=0.002: orig(t, sigma_data, 0.0))
    assert _model_boundary_error("skip") > 1e-6


# ---------------------------------------------------------------- Gaussian consistency function
def test_gaussian_consistency_function_is_constant_along_trajectories():
    r = S.gaussian_consistency_check()
    assert r["passed"] and r["total_derivative"] == "0" and r["f(x, eps) - x"] == "0"
    # the drift was derived from log p_t, not typed in
    assert sp.simplify(S.gaussian_pf_drift() - S.t * (S.x - S.mu) / (S.s ** 2 + S.t ** 2)) == 0


def test_wrong_gaussian_consistency_functions_fail():
    no_eps = lambda x, t, mu, s, eps: mu + (x - mu) * sp.sqrt(s ** 2 / (s ** 2 + t ** 2))
    r = S.gaussian_consistency_check(no_eps)
    assert r["constant_along_trajectories"] and not r["boundary_condition"] and not r["passed"]
    no_sqrt = lambda x, t, mu, s, eps: mu + (x - mu) * (s ** 2 + eps ** 2) / (s ** 2 + t ** 2)
    r = S.gaussian_consistency_check(no_sqrt)
    assert r["boundary_condition"] and not r["constant_along_trajectories"] and not r["passed"]


def test_library_gaussian_consistency_function_is_the_symbolic_one():
    f = sp.lambdify((S.x, S.t, S.mu, S.s, S.eps), S.gaussian_consistency_function())
    g = Gaussian([0.3, -0.2], 0.7)
    x = torch.randn(16, 2, dtype=torch.float64) * 5
    for t in (0.002, 0.5, 80.0):
        lib = g.consistency_function(x, t)
        ref = torch.tensor([[f(float(v), t, m, 0.7, 0.002) for v, m in zip(row, (0.3, -0.2))] for row in x],
                           dtype=torch.float64)
        assert torch.allclose(lib, ref, rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------- local truncation error
@pytest.mark.parametrize("ode", ["generic", "gaussian"])
def test_local_truncation_orders(ode):
    assert S.local_truncation_order("euler", ode)["order"] == 2
    assert S.local_truncation_order("heun", ode)["order"] == 3


@pytest.mark.parametrize("ode", ["generic", "gaussian"])
def test_wrong_steps_have_wrong_orders(ode):
    def euler_wrong_coefficient(g, x, t, h):
        return x + 1.1 * h * g(x, t)

    def heun_corrector_at_wrong_time(g, x, t, h):
        d1 = g(x, t)
        return x + h * (d1 + g(x + h * d1, t)) / 2

    assert S.local_truncation_order(euler_wrong_coefficient, ode)["order"] == 1
    assert S.local_truncation_order(heun_corrector_at_wrong_time, ode)["order"] == 2


def test_library_steps_are_the_symbolic_transcriptions():
    """The symbolic steps are the library's: evaluate both on the Gaussian PF ODE (denoiser form in the
    library, drift form in sympy) at random points and steps, to round-off."""
    mu, s = 0.4, 0.5
    g = Gaussian([mu], s)
    drift = sp.Lambda((S.x, S.t), S.gaussian_pf_drift().subs({S.mu: mu, S.s: s}))
    x = torch.randn(32, 1, dtype=torch.float64) * 4
    for t_from, t_to in ((80.0, 57.3), (1.0, 0.6), (0.05, 0.002)):
        for lib_step, sym_step in ((euler_step, S.sym_euler), (heun_step, S.sym_heun)):
            expr = sym_step(drift, S.x, sp.Float(t_from), sp.Float(t_to - t_from))
            f = sp.lambdify(S.x, expr)
            ref = torch.tensor([[f(float(v))] for v in x[:, 0]], dtype=torch.float64)
            assert torch.allclose(lib_step(g, x, t_from, t_to), ref, rtol=1e-12, atol=1e-12)


def test_run_all_passes():
    assert S.run_all()["passed"]
