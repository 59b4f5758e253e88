r"""Symbolic checks with sympy (optional dependency: ``pip install cmlite[theory]``).

Each check returns a plain dict with ``passed`` and the expressions it looked at (as strings), and takes
the formula under test as an argument, so a deliberately wrong formula can be fed in to see it fail.

* :func:`boundary_condition_check`: f(x, eps) = x for the skip parameterisation (and that it is
  differentiable at eps), for the piecewise one (which jumps at eps), and the failure of EDM's scalings
  (eps = 0) as a consistency model.
* :func:`gaussian_consistency_check`: the closed-form consistency function of N(mu, s^2) is constant along
  PF-ODE trajectories and meets the boundary condition.
* :func:`local_truncation_order`: one Euler step has local error O(h^2), one Heun step O(h^3), on a generic
  ODE dx/dt = g(x, t) (g a cubic polynomial in (x, t) with symbolic coefficients) and on the Gaussian PF ODE.

All checks are one-dimensional: the PF ODE of an isotropic Gaussian (mixture) acts coordinate-wise in
the Gaussian case, and the parameterisations act pointwise in x.
"""
from __future__ import annotations

from typing import Callable

import sympy as sp

# symbols shared by the checks
x, mu = sp.symbols("x mu", real=True)
t, eps, sd, s, h = sp.symbols("t epsilon sigma_d s h", positive=True)
G = sp.Function("F")  # the free-form network output F_theta(., t), any smooth function


# ---------------------------------------------------------------- parameterisations
def skip_scalings(t_=t, eps_=eps, sd_=sd):
    """(c_skip, c_out) of method.md §3 as sympy expressions."""
    return sd_ ** 2 / ((t_ - eps_) ** 2 + sd_ ** 2), sd_ * (t_ - eps_) / sp.sqrt(sd_ ** 2 + t_ ** 2)


def edm_scalings(t_=t, eps_=eps, sd_=sd):
    """EDM's (c_skip, c_out): the skip scalings with eps = 0 (wrong as a consistency model)."""
    return skip_scalings(t_, 0, sd_)


def _finite(expr) -> bool:
    return not expr.has(sp.zoo, sp.oo, -sp.oo, sp.nan)


def boundary_condition_check(scalings: Callable = skip_scalings) -> dict:
    r"""Boundary condition f(x, eps) = x and smoothness at eps.

    Skip form :math:`f = c_{skip}(t) x + c_{out}(t) F(x, t)` with ``scalings(t, eps, sigma_d) -> (c_skip,
    c_out)``: checks that f(x, eps) - x simplifies to 0 for *every* F, and that the right derivative at eps
    exists: :math:`f(x, \epsilon + h) - x = h\,\partial_t f(x,\epsilon) + O(h^2)` with a finite coefficient.

    Piecewise form :math:`f = x` at t = eps, else :math:`F_{EDM}(x, t) = c^{EDM}_{skip} x + c^{EDM}_{out} F`:
    the condition holds by definition, but the jump :math:`\lim_{t \downarrow \epsilon} F_{EDM} - x` is not
    identically zero (it is :math:`-\epsilon^2 x/(\epsilon^2+\sigma_d^2)` when F = 0), so f is discontinuous,
    hence not differentiable, at eps.
    """
    c_skip, c_out = scalings(t, eps, sd)
    F = G(x, t)
    f = c_skip * x + c_out * F
    at_eps = sp.simplify(f.subs(t, eps) - x)
    skip_bc = at_eps == 0
    # right derivative at eps: expand f(x, eps + h) - x in h
    expansion = sp.series((f - x).subs(t, eps + h), h, 0, 2).removeO().doit()
    const = sp.simplify(expansion.subs(h, 0))
    slope = sp.simplify(sp.diff(expansion, h))
    skip_diff = bool(sp.simplify(const) == 0) and _finite(slope)
    # piecewise form built on EDM's scalings
    e_skip, e_out = edm_scalings(t, eps, sd)
    jump = sp.simplify((e_skip * x + e_out * F).subs(t, eps) - x)
    jump_F0 = sp.simplify(jump.subs(G(x, eps), 0))
    piecewise_continuous = sp.simplify(jump) == 0
    return {
        "skip": {"f(x, eps) - x": str(at_eps), "boundary_condition": bool(skip_bc),
                 "d/dt f at eps+": str(slope), "differentiable_at_eps": bool(skip_diff and skip_bc)},
        "piecewise": {"boundary_condition": True,  # by definition: f(x, eps) := x
                      "jump_at_eps": str(jump), "jump_at_eps_if_F_is_0": str(jump_F0),
                      "continuous_at_eps": bool(piecewise_continuous),
                      "differentiable_at_eps": bool(piecewise_continuous)},
        "passed": bool(skip_bc and skip_diff and not piecewise_continuous),
    }


# ---------------------------------------------------------------- the Gaussian consistency function
def gaussian_consistency_function(x_=x, t_=t, mu_=mu, s_=s, eps_=eps):
    r""":math:`f(x, t) = \mu + (x - \mu)\sqrt{(s^2+\epsilon^2)/(s^2+t^2)}` (method.md §2)."""
    return mu_ + (x_ - mu_) * sp.sqrt((s_ ** 2 + eps_ ** 2) / (s_ ** 2 + t_ ** 2))


def gaussian_pf_drift(x_=x, t_=t, mu_=mu, s_=s):
    r"""PF-ODE velocity of N(mu, s^2), derived from the density:
    :math:`p_t = N(\mu, s^2 + t^2)`, :math:`dx/dt = -t\,\partial_x \log p_t(x) = t (x-\mu)/(s^2+t^2)`."""
    logp = -(x_ - mu_) ** 2 / (2 * (s_ ** 2 + t_ ** 2)) - sp.log(2 * sp.pi * (s_ ** 2 + t_ ** 2)) / 2
    return sp.simplify(-t_ * sp.diff(logp, x_))


def gaussian_consistency_check(f: Callable = gaussian_consistency_function) -> dict:
    r"""The candidate ``f(x, t, mu, s, eps)`` is a consistency function of N(mu, s^2):

    * constant along PF-ODE trajectories: :math:`\frac{d}{dt} f(x(t), t) = \partial_t f + \partial_x f\,
      \frac{dx}{dt} = 0` (simplifies to 0 identically), with the drift derived from log p_t;
    * boundary condition f(x, eps) = x.
    """
    fx = f(x, t, mu, s, eps)
    v = gaussian_pf_drift()
    total = sp.simplify(sp.diff(fx, t) + sp.diff(fx, x) * v)
    bc = sp.simplify(fx.subs(t, eps) - x)
    return {"drift": str(v), "total_derivative": str(total), "f(x, eps) - x": str(bc),
            "constant_along_trajectories": total == 0, "boundary_condition": bc == 0,
            "passed": bool(total == 0 and bc == 0)}


# ---------------------------------------------------------------- local truncation error
def sym_euler(g, x_, t_, h_):
    """One Euler step x + h g(x, t) (method.md §4; h = t_n - t_{n+1} < 0 when sampling)."""
    return x_ + h_ * g(x_, t_)


def sym_heun(g, x_, t_, h_):
    """One Heun step: d1 = g(x, t); x' = x + h d1; d2 = g(x', t + h); x + h (d1 + d2)/2 (method.md §4)."""
    d1 = g(x_, t_)
    d2 = g(x_ + h_ * d1, t_ + h_)
    return x_ + h_ * (d1 + d2) / 2


STEPS = {"euler": sym_euler, "heun": sym_heun}


def _generic_ode():
    # g(x, t) = sum_{i+j<=2} a_ij x^i t^j with 6 independent symbolic coefficients: the Taylor terms of
    # order <= 3 of the exact solution involve g and its derivatives up to second order, and these are
    # all independent here, so a coefficient that vanishes identically vanishes for every smooth g
    coeffs = {}
    expr = 0
    for i in range(3):
        for j in range(3 - i):
            a = sp.Symbol(f"a{i}{j}", real=True)
            coeffs[(i, j)] = a
            expr += a * x ** i * t ** j
    return sp.Lambda((x, t), expr)


def _exact_taylor(g, order: int):
    # x(t+h) = sum_k h^k/k! x^(k), x' = g, x^(k+1) = d/dt x^(k) + g d/dx x^(k)  (total derivative)
    dk = g(x, t)
    out = x
    for k in range(1, order + 1):
        out += h ** k / sp.factorial(k) * dk
        dk = sp.expand(sp.diff(dk, t) + g(x, t) * sp.diff(dk, x))
    return out


def local_truncation_order(step="euler", ode: str = "generic", max_order: int = 3) -> dict:
    r"""Order of the local truncation error of a one-step method, by Taylor expansion in the step h.

    ``step``: 'euler', 'heun' or a callable ``step(g, x, t, h)`` building a sympy expression from the
    drift ``g(x, t)``. ``ode``: ``"generic"`` (dx/dt = g(x, t), g a quadratic polynomial in (x, t) with 6
    independent symbolic coefficients; the exact solution by the Taylor series of the total derivative) or
    ``"gaussian"`` (the PF ODE of N(mu, s^2): g = t (x - mu)/(s^2 + t^2), exact solution
    :math:`\mu + (x-\mu)\sqrt{(s^2+(t+h)^2)/(s^2+t^2)}`). Returns the lowest power q of h whose coefficient
    in step - exact is not identically zero: q = 2 (local error O(h^2), global O(h)) for Euler, q = 3 for Heun.
    """
    stepf = STEPS[step] if isinstance(step, str) else step
    if ode == "generic":
        g = _generic_ode()
        exact = _exact_taylor(g, max_order)
    elif ode == "gaussian":
        g = sp.Lambda((x, t), gaussian_pf_drift())
        exact = mu + (x - mu) * sp.sqrt((s ** 2 + (t + h) ** 2) / (s ** 2 + t ** 2))
    else:
        raise ValueError(f"ode must be 'generic' or 'gaussian'; got {ode!r}")
    diff = stepf(g, x, t, h) - exact
    try:  # polynomial drift and step: exact coefficients without a series expansion
        poly = sp.Poly(sp.expand(diff), h)
        coeffs = {k: sp.expand(poly.coeff_monomial(h ** k)) for k in range(max_order + 1)}
    except sp.PolynomialError:
        ser = sp.expand(sp.series(diff, h, 0, max_order + 1).removeO())
        coeffs = {k: sp.simplify(ser.coeff(h, k)) for k in range(max_order + 1)}
    order = next((k for k in range(max_order + 1) if coeffs[k] != 0), None)
    lead = None if order is None else coeffs[order]
    text = None if lead is None else (str(lead) if len(str(lead)) <= 200
                                      else f"{len(sp.Add.make_args(lead))} terms, not identically zero")
    return {"step": step if isinstance(step, str) else getattr(step, "__name__", "custom"), "ode": ode,
            "order": order, "leading_coefficient": text,
            "global_order": None if order is None else order - 1}


def run_all() -> dict:
    """Every symbolic check with the library's formulas: a dict of results and an overall ``passed``."""
    res = {"boundary_condition": boundary_condition_check(),
           "edm_scalings_as_consistency_model": boundary_condition_check(edm_scalings),
           "gaussian_consistency_function": gaussian_consistency_check(),
           "local_truncation": {f"{st}/{o}": local_truncation_order(st, o)
                                for st in ("euler", "heun") for o in ("generic", "gaussian")}}
    lte_ok = all(r["order"] == {"euler": 2, "heun": 3}[k.split("/")[0]] for k, r in res["local_truncation"].items())
    res["passed"] = bool(res["boundary_condition"]["passed"] and res["gaussian_consistency_function"]["passed"]
                         and not res["edm_scalings_as_consistency_model"]["skip"]["boundary_condition"]
                         and lte_ok)
    return res
