r"""``cmlite theorem [--json]``: the tables of the theory checks, for people and for machines.

What it computes (all float64, deterministic seeds, about half a minute on 2 CPU cores):

* Theorem 1 on three toys: ``gaussian`` (closed-form reference; its slopes are the headline numbers),
  ``mixture`` (RK4 reference) and ``narrow`` with the ``segment`` test set (trajectories through the bridge
  between two well-separated modes: the asymptotic regime has not started by N = 512 there).
* Theorem 2 on the ``mixture`` toy: CD (Euler, exact teacher) against CT, loss gap and relative gradient gap.
* The continuous-time limits (Appendix B, Theorems 3-6, and CT without stop-gradient) on the ``gaussian`` and
  ``mixture`` toys (:mod:`cmlite.theory.continuous`): the gap of the scaled discrete loss or gradient against
  its N -> infinity limit, N = 16 ... 512, common random numbers.
* The symbolic checks (if sympy is installed) and the PF-ODE checks (marginals, round trip).
* Optionally (``learned=True``) the learned-network experiment of Theorem 1 (a few minutes).

Pass/fail criteria (exit status 1 if one fails), and why they are what they are:

* Theorem 1 slopes, Euler within 0.1 of 1, Heun within 0.15 of 2, on the stated regime (gaussian and
  mixture). The computation is deterministic, so these are not statistical tolerances: they bound the
  higher-order terms e = C dt^p (1 + c dt + ...) that still bend the curve inside the regime (the local
  slopes at the regime's left end are 1.02 and 2.17 on the Gaussian).
* Theorem 2: the |loss gap| slope must exceed 1.5 (o(dt) means > 1; the theory says 2) and the relative
  gradient gap slope must lie in [0.8, 1.2] (the theory says 1); each point's standard error is below 6%
  of its value (B = 2048 samples), so a fitted slope over a factor 8 in dt is known to about +-0.05.
* Continuous time, on both toys (:data:`CONTINUOUS_TOLERANCES`): orders of the gaps in 1/N within 0.2 of 1
  (Theorems 3-6, Euler) and within 0.3 of 2 (CT with theta^- = theta: a midpoint rule). The gaps are
  deterministic given the samples (exact sums over n, quadrature in u on the same samples), so these bound
  the higher-order terms C k^p (1 + a k + ...) still bending the curve at N = 16, not noise: the fitted
  orders are 0.91-1.10 and 1.98-1.99 over seeds 0-2. The two expectation identities (CD = CT for the limit
  gradient; the CT bias formula) are z-scores over B = 256 i.i.d. samples: |z| < 3 (a false alarm has
  probability 0.27%). Sanity: the tangent from ``torch.func.jvp`` agrees with the written-out derivative of
  the skip form to 1e-12 (round-off) and with central differences (h = 1e-5 t: truncation ~h^2, round-off
  ~1e-16/h) to 1e-6; at the Gaussian's exact consistency function g_CD vanishes to 1e-10 of the size of the
  two terms that cancel; the library's continuous-time losses give the limit gradients to 1e-12.
"""
from __future__ import annotations

import json
import math
import time

from ..threads import small_model_threads
from .theorem1 import NORM, theorem1_table
from .theorem2 import theorem2_table

TOLERANCES = {"euler": 0.1, "heun": 0.15}
THEOREM1_TOYS = (("gaussian", "typical"), ("mixture", "typical"), ("narrow", "segment"))
#: the continuous-time section: arguments of :func:`cmlite.theory.continuous.continuous_report`
CONTINUOUS_SETTINGS = {"toys": ("gaussian", "mixture"), "Ns": (16, 32, 64, 128, 256, 512), "B": 256, "seed": 0}
#: its tolerances (derived in the module docstring): |order - p| by expected order p, |z|, relative errors
CONTINUOUS_TOLERANCES = {"order": {1: 0.2, 2: 0.3}, "z": 3.0, "tangent_analytic": 1e-12, "tangent_fd": 1e-6,
                         "exact_g_cd": 1e-10, "library_loss": 1e-12}


def collect(learned: bool = False, symbolic: bool = True, pfode: bool = True, threads: int | None = None) -> dict:
    """Run every check of the report and return the JSON-ready results (see the module docstring).

    Runs with :func:`cmlite.threads.default_threads` intra-op threads (``threads``, else ``$CMLITE_THREADS``,
    else 1; restored afterwards): the batches are tiny 2D arrays, where threading only adds overhead, and on
    a busy machine oversubscribed threads made the report ten times slower."""
    with small_model_threads(threads):
        return _collect(learned, symbolic, pfode)


def _collect(learned: bool, symbolic: bool, pfode: bool) -> dict:
    t0 = time.time()
    toys = {}
    for name, kind in THEOREM1_TOYS:
        key = name if kind == "typical" else f"{name}/{kind}"
        toys[key] = theorem1_table(name, test_set=kind)
    primary = toys["gaussian"]
    checks = {}
    for key in ("gaussian", "mixture"):
        for s, res in toys[key]["solvers"].items():
            p, tol = res["expected_order"], TOLERANCES[s]
            res["tolerance"] = tol
            res["within_tolerance"] = abs(res["slope"] - p) <= tol
            checks[f"theorem1/{key}/{s}"] = res["within_tolerance"]
        toys[key]["asymptotic_regime_reached"] = all(r["within_tolerance"] for r in toys[key]["solvers"].values())
    for res in toys["narrow/segment"]["solvers"].values():
        res["within_tolerance"] = None  # informational: the asymptotic regime has not started here
    toys["narrow/segment"]["asymptotic_regime_reached"] = False
    toys["narrow/segment"]["note"] = (
        "stress test: trajectories through the low-density bridge between two modes 10 s apart, where the "
        "consistency function stretches distances by up to ~%.3g; the local slopes are still rising towards "
        "p at N = 512, so the asymptotic regime starts beyond the N range of the table"
        % toys["narrow/segment"]["lipschitz_estimate"])
    solvers = {s: {"slope": r["slope"], "expected_order": r["expected_order"], "tolerance": TOLERANCES[s],
                   "regime": primary["regime"], "toy": primary["toy"], "description": primary["description"],
                   "norm": primary["norm"], "test_set": primary["test_set"], "rows": r["rows"]}
               for s, r in primary["solvers"].items()}
    out = {"theorem1": {
        "statement": "L_CD = 0 on the N-point Karras grid implies sup_{n,x} ||f_theta(x,t_n) - f(x,t_n)|| = "
                     "O(dt^p); the zero-loss f_theta is 'run the solver from t_n down to eps'",
        "primary_toy": "gaussian", "norm": NORM, "grid": primary["grid"],
        "slopes": {s: r["slope"] for s, r in primary["solvers"].items()},
        "regime": primary["regime"], "solvers": solvers, "toys": toys}}
    t2 = theorem2_table("mixture")
    checks["theorem2/loss_gap_slope>1.5"] = t2["loss_gap_slope"] > 1.5
    checks["theorem2/rel_grad_gap_slope~1"] = 0.8 <= t2["rel_grad_gap_slope"] <= 1.2
    out["theorem2"] = t2
    out["continuous"] = continuous_section(checks)
    if symbolic:
        try:
            from .symbolic import run_all
        except ImportError as e:  # sympy is an optional dependency
            out["symbolic"] = {"skipped": f"sympy not available ({e}); pip install cmlite[theory]"}
        else:
            out["symbolic"] = run_all()
            checks["symbolic"] = out["symbolic"]["passed"]
    if pfode:
        from .pfode import marginal_check, round_trip_check
        m, r = marginal_check("mixture"), round_trip_check("mixture")
        out["pf_ode"] = {"marginals": m, "round_trip": r}
        checks["pf_ode/marginals"] = m["passed"]
        checks["pf_ode/round_trip_reference"] = r["passed"]
        checks["pf_ode/round_trip_heun_slope~3"] = abs(r["slope"] - 3) <= 0.3
    if learned:
        from .theorem1 import learned_cd_experiment
        out["learned"] = learned_cd_experiment("gaussian")
    out["checks"] = checks
    out["passed"] = all(checks.values())
    out["seconds"] = time.time() - t0
    return out


def continuous_section(checks: dict, **settings) -> dict:
    """The continuous-time limits (:func:`cmlite.theory.continuous.continuous_report` with
    :data:`CONTINUOUS_SETTINGS`, overridden by ``settings``), with each result's tolerance and verdict; adds
    its pass/fail entries ``continuous/...`` to ``checks``. JSON paths: ``continuous/theorem3/slope``,
    ``continuous/theorem4/slope``, ``continuous/theorem5/grad_slope``, ``continuous/theorem6/grad_slope``,
    ``continuous/theorem6/cd_ct_gap_z``, ``continuous/ct_same_target/slope`` (headline: the primary toy,
    'mixture'), each theorem's ``toys`` (every toy's value) and ``per_toy`` (the full tables)."""
    from .continuous import continuous_report
    c = continuous_report(**{**CONTINUOUS_SETTINGS, **settings})
    tol = CONTINUOUS_TOLERANCES
    for th, key in (("theorem3", "slope"), ("theorem4", "slope"), ("theorem5", "grad_slope"),
                    ("theorem6", "grad_slope"), ("ct_same_target", "slope")):
        p = c[th]["expected_order"]
        c[th]["tolerance"] = tol["order"][p]
        ok = {name: abs(v - p) <= tol["order"][p] for name, v in c[th]["toys"].items()}
        c[th]["within_tolerance"] = all(ok.values())
        for name, v in ok.items():
            checks[f"continuous/{th}/{name}/order~{p}"] = v
    for name, z in c["theorem6"]["cd_ct_gap_z_toys"].items():
        checks[f"continuous/theorem6/{name}/|cd_ct_gap_z|<3"] = abs(z) < tol["z"]
    for name, z in c["ct_same_target"]["identity_z_toys"].items():
        checks[f"continuous/ct_same_target/{name}/|bias_identity_z|<3"] = abs(z) < tol["z"]
    for name, r in c["per_toy"].items():
        lib = max(r["theorem5"]["library_loss_rel_diff"], r["theorem6"]["library_loss_rel_diff"])
        checks[f"continuous/{name}/library_losses_are_the_limits"] = lib <= tol["library_loss"]
    for name, tc in c["tangent_check"].items():
        checks[f"continuous/tangent/{name}/jvp=written_out"] = tc["analytic_rel_err"] <= tol["tangent_analytic"]
        checks[f"continuous/tangent/{name}/jvp=finite_differences"] = tc["fd_rel_err"] <= tol["tangent_fd"]
    ex = c["exact_gaussian"]
    checks["continuous/exact_gaussian/g_cd=0"] = ex["max_g_cd"] <= tol["exact_g_cd"] * ex["scale"]
    checks["continuous/exact_gaussian/ct_bias>0"] = ex["bias"] > 0 and abs(ex["ct_limit_z"]) < tol["z"]
    c["tolerances"] = {"order": {str(k): v for k, v in tol["order"].items()},
                       **{k: v for k, v in tol.items() if k != "order"}}
    return c


def format_continuous(c: dict) -> list[str]:
    """Plain-text table lines of :func:`continuous_section`'s result."""
    st = c["setting"]
    L = ["", "CONTINUOUS-TIME LIMITS (Appendix B, Theorems 3-6): scaled discrete loss or gradient against its "
             "N -> infinity limit",
         f"  f_theta: {st['model']}; teacher: {st['teacher']}; lambda {st['weighting']}",
         f"  {st['samples']} samples (x, z) shared by every N and by the limit; exact sum over all N-1 intervals; "
         f"{st['quadrature']}",
         "  Th3: (N-1)^2 L_CD -> E[lambda tau'^2 |g_CD|^2]   Th4 (L1): (N-1) L_CD -> E[lambda tau' |g_CD|_1]",
         "  Th5/Th6: (N-1) grad L_CD/CT(theta, sg theta) -> grad 2E[lambda tau' f^T sg(g_CD/CT)] (relative gap)",
         "  CT(th-=th): (N-1)^2 L_CT(theta, theta) -> E[lambda tau'^2 |g_CT|^2] = L_CD^inf + E[lambda tau'^2 "
         "tr(J Cov[x|x_t] J^T)/t^2]"]
    for name, r in c["per_toy"].items():
        t3, t4, t5, t6, ct = (r[k] for k in ("theorem3", "theorem4", "theorem5", "theorem6", "ct_same_target"))
        L.append("")
        L.append(f"  toy {name}: {r['description']}")
        L.append(f"    limits: L_CD^inf = {t3['limit']:.4g} (MC se {t3['limit_se']:.2g}), L1 {t4['limit']:.4g}; CT "
                 f"(theta^- = theta) {ct['limit']:.4g} = L_CD^inf + bias {ct['bias']:.4g} (identity z = "
                 f"{ct['identity_z']:+.2f})")
        L.append("    {:>5} {:>8} | {:>10} {:>10} | {:>10} {:>10} | {:>10}".format(
            "N", "1/(N-1)", "Th3 gap", "Th4 gap", "Th5 grad", "Th6 grad", "CT th-=th"))
        for i, row in enumerate(t3["rows"]):
            L.append("    {:>5} {:>8.4g} | {:>10} {:>10} | {:>10} {:>10} | {:>10}".format(
                row["N"], row["k"], _fmt(row["gap"]), _fmt(t4["rows"][i]["gap"]),
                _fmt(t5["rows"][i]["rel_grad_gap"]), _fmt(t6["rows"][i]["rel_grad_gap"]),
                _fmt(ct["rows"][i]["gap"])))
        lo, hi = r["fit_range"]
        L.append("    {:>14} | {:>10} {:>10} | {:>10} {:>10} | {:>10}   (theory 1 | 1 | 1 | 1 | 2)".format(
            f"order {lo}..{hi}", f"{t3['slope']:.3f}", f"{t4['slope']:.3f}", f"{t5['grad_slope']:.3f}",
            f"{t6['grad_slope']:.3f}", f"{ct['slope']:.3f}"))
        L.append(f"    Theorem 6: CD - CT limit gradient in standard errors, along {t6['direction']}: "
                 f"z = {t6['cd_ct_gap_z']:+.2f}; library continuous-time losses vs the limits: "
                 f"{max(t5['library_loss_rel_diff'], t6['library_loss_rel_diff']):.1e}")
    ex = c["exact_gaussian"]
    L.append("")
    L.append(f"  exact Gaussian consistency function: max |g_CD| = {ex['max_g_cd']:.1e} (its two terms up to "
             f"{ex['scale']:.2g}), L_CD^inf = {ex['L_cd_inf']:.1e}; CT without stop-gradient is biased there: "
             f"bias {ex['bias']:.4g} (closed form {ex['bias_closed_form']:.4g}), CT limit {ex['ct_limit']:.4g}"
             f"±{ex['ct_limit_se']:.2g} (z = {ex['ct_limit_z']:+.2f})")
    L.append("  tangent g_CD by jvp against the written-out skip derivative / central differences: " + ", ".join(
        f"{name} {tc['analytic_rel_err']:.1e} / {tc['fd_rel_err']:.1e}" for name, tc in c["tangent_check"].items()))
    return L


def _fmt(v, spec=".3e"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def format_report(res: dict) -> str:
    """Plain-text tables of :func:`collect`'s results."""
    L = []
    th1 = res["theorem1"]
    L.append("THEOREM 1: zero-CD-loss consistency function (= run the solver from t_n down to eps) "
             "against the exact one")
    L.append(f"  norm: {th1['norm']}")
    L.append(f"  grid: {th1['grid']}")
    for key, tab in th1["toys"].items():
        L.append("")
        L.append(f"  toy {key}: {tab['description']}")
        L.append(f"    test set: {tab['test_set']}")
        L.append(f"    reference: {tab['reference']} (error {tab['reference_error']:.1e}); "
                 f"Lipschitz constant of f on the test set >= {tab['lipschitz_estimate']:.3g}")
        names = list(tab["solvers"])
        head = "    {:>5} {:>8}".format("N", "dt") + "".join(
            " | {:>10} {:>6} {:>7}".format(f"{s} err", "slope", "argmax t") for s in names)
        L.append(head)
        for i, N in enumerate(r["N"] for r in tab["solvers"][names[0]]["rows"]):
            row = tab["solvers"][names[0]]["rows"][i]
            line = "    {:>5} {:>8.4g}".format(N, row["dt"])
            for s in names:
                r = tab["solvers"][s]["rows"][i]
                line += " | {:>10} {:>6} {:>7.3g}".format(_fmt(r["error"]), _fmt(r["local_slope"], ".3f"),
                                                            r["argmax_t"])
            L.append(line)
        reg = tab["regime"]
        fits = ", ".join(f"{s} {tab['solvers'][s]['slope']:.3f} (theory {tab['solvers'][s]['expected_order']})"
                         for s in names)
        L.append(f"    fitted slope of log err vs log dt over N = {reg['N'][0]}..{reg['N'][1]} "
                 f"(dt = {reg['dt'][0]:.3g}..{reg['dt'][1]:.3g}): {fits}")
        if "note" in tab:
            L.append(f"    note: {tab['note']}")
    t2 = res["theorem2"]
    L.append("")
    L.append("THEOREM 2: CD (Euler, exact teacher) vs CT, common random numbers, "
             f"{t2['samples']} samples in {t2['groups']} batches, toy {t2['toy']}, random-init MLP f_theta")
    L.append("  loss gap = L_CD - L_CT (rb: CT averaged exactly over z | x_{t_{n+1}}; mc: same z); "
             "rel grad gap = |grad L_CD - grad L_CT| / |grad L_CD| (online parameters)")
    L.append("    {:>5} {:>8} {:>10} {:>20} {:>20} {:>20} {:>25}".format(
        "N", "dt", "L_CD", "loss gap (rb)", "loss gap (mc)", "rel grad gap (rb)", "rel grad gap (mc)"))
    for r in t2["rows"]:
        L.append("    {:>5} {:>8.4g} {:>10} {:>20} {:>20} {:>20} {:>25}".format(
            r["N"], r["dt"], _fmt(r["loss_cd"]), f"{r['loss_gap']:.3e}±{r['loss_gap_se']:.1e}",
            f"{r['loss_gap_mc']:.3e}±{r['loss_gap_mc_se']:.1e}", r["rel_grad_gap_text"], r["rel_grad_gap_mc_text"]))
    reg = t2["regime"]
    L.append(f"    slopes over N = {reg['N'][0]}..{reg['N'][1]}: |loss gap| {t2['loss_gap_slope']:.3f} "
             f"(o(dt) needs > 1; theory 2), rel grad gap {t2['rel_grad_gap_slope']:.3f} (theory 1)")
    L.append("    (for squared L2 both losses are O(dt^2) themselves; the shrinking relative gradient gap is "
             "the sharp check.\n     Plain CRN (mc) cannot resolve the gradient gap: where its estimate is within "
             "2 standard errors of 0 it is printed as unresolved, with an approximate 97.5% upper bound)")
    if "continuous" in res:
        L += format_continuous(res["continuous"])
    if "symbolic" in res:
        sy = res["symbolic"]
        L.append("")
        if "skipped" in sy:
            L.append(f"SYMBOLIC: skipped ({sy['skipped']})")
        else:
            bc = sy["boundary_condition"]
            L.append("SYMBOLIC (sympy):")
            L.append(f"  skip form: f(x, eps) - x = {bc['skip']['f(x, eps) - x']}; "
                     f"d/dt f at eps+ = {bc['skip']['d/dt f at eps+']} (finite)")
            L.append(f"  piecewise form: jump at eps = {bc['piecewise']['jump_at_eps_if_F_is_0']} (F = 0): "
                     "not continuous, not differentiable")
            L.append(f"  EDM scalings (eps = 0) as a consistency model: boundary condition holds: "
                     f"{sy['edm_scalings_as_consistency_model']['skip']['boundary_condition']}")
            g = sy["gaussian_consistency_function"]
            L.append(f"  Gaussian f: d/dt f(x(t), t) = {g['total_derivative']}, f(x, eps) - x = {g['f(x, eps) - x']}")
            for k, r in sy["local_truncation"].items():
                L.append(f"  local truncation error {k}: O(h^{r['order']})")
            L.append(f"  all passed: {sy['passed']}")
    if "pf_ode" in res:
        m, r = res["pf_ode"]["marginals"], res["pf_ode"]["round_trip"]
        L.append("")
        L.append(f"PF ODE (toy {m['toy']}): from N(0, T^2 I) with {m['solver']} (N = {m['N']}), energy-distance "
                 f"permutation test against {m['n']} exact draws of p_t, family level {m['alpha']} "
                 f"(start mismatch TV <= {m['start_tv_bound']:.2g})")
        for row in m["rows"]:
            L.append(f"    t = {row['t']:<6g} energy distance {row['energy_distance']:.2e}  p = {row['p_value']:.3f}"
                     f"  {'REJECTED' if row['rejected'] else 'ok'}")
        L.append(f"  round trip eps -> T -> eps: RK4 reference error {r['reference_round_trip_error']:.1e} "
                 f"(tolerance {r['reference_tolerance']:.1e}); {r['solver']}: "
                 + ", ".join(f"N={x['N']} {x['error']:.1e}" for x in r["rows"])
                 + f"; slope {r['slope']:.2f} (theory {r['expected_slope']}: the leading errors of the two "
                   "directions cancel for even order)")
    if "learned" in res:
        le = res["learned"]
        L.append("")
        L.append(f"THEOREM 1 WITH LEARNED NETWORKS (toy {le['toy']}, {le['training']})")
        L.append("  learned: CD-trained MLP vs the exact f; zero-loss: the discretisation error (exact, no training);"
                 " floor: same network and budget trained by regression on the exact f")
        L.append("    {:>6} {:>4} {:>8} {:>12} {:>14} {:>10} {:>16}".format(
            "solver", "N", "dt", "learned rms", "zero-loss rms", "floor rms", "dominated by"))
        for r in le["summary"]:
            L.append("    {:>6} {:>4} {:>8.4g} {:>12} {:>14} {:>10} {:>16}".format(
                r["solver"], r["N"], r["dt"], _fmt(r["learned_rms_mean"]), _fmt(r["zero_loss_rms"]),
                _fmt(r["floor_rms"]), r["dominated_by"]))
    L.append("")
    L.append("checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in res["checks"].items()))
    L.append(f"all passed: {res['passed']}  ({res['seconds']:.1f} s)")
    return "\n".join(L)


def _clean(o):
    # JSON without NaN/inf (strict parsers reject them)
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def run_theorem(json_out: bool = False, learned: bool = False, threads: int | None = None) -> int:
    """Entry point of ``cmlite theorem``: print the tables (or JSON with ``json_out``); exit status 0 if
    every check agrees with the theory, 1 otherwise. ``threads``: see :func:`collect`."""
    res = collect(learned=learned, threads=threads)
    if json_out:
        print(json.dumps(_clean(res), indent=1))
    else:
        print(format_report(res))
    return 0 if res["passed"] else 1
