"""The continuous-time limits of CD and CT (Song et al. 2023, Appendix B, Theorems 3-6), measured.

Every check comes with a planted bug (``mutation=...``, or a wrong formula built in the test) and asserts that
the bug misses the target while the correct computation hits it.

Why the order tolerances are not statistical: every discrete loss is summed exactly over all N - 1 intervals
for each sample (x_i, z_i), and its limit is integrated over u on the *same* samples, so each gap is a
deterministic function of the samples in which their Monte Carlo error cancels. A gap behaves like
C k^p (1 + a k + ...), k = 1/(N-1); the tolerances (0.2 on order 1, 0.3 on order 2, the task's criteria)
bound the higher-order terms that still bend the curve at small N: the local slopes are within 0.26 of p at
N = 32 and within 0.13 from N = 64 on; the fitted orders over N = 16..512 are 0.91-1.10 (order 1) and
1.98-1.99 (order 2) for seeds 0-2 (seed = model and samples).
Only the two expectation identities are statistical: z-scores over B i.i.d. samples, approximately N(0, 1)
under the theory, so |z| < 3 fails with probability 0.27%.
"""
import json

import pytest
import torch

from cmlite.parameterization import get_scalings
from cmlite.schedules import EPS, SIGMA_DATA, karras_boundaries
from cmlite.theory import continuous as C
from cmlite.theory import get_toy

DT = torch.float64
NS = (16, 32, 64, 128, 256, 512)
B = 128
CACHE: dict = {}  # discrete sums, shared by the runs below (no mutation changes them)


def run(toy="mixture", mutation=None, **kw):
    return C.toy_limits(toy, NS, B=B, seed=0, mutation=mutation, cache=CACHE, **kw)


@pytest.fixture(scope="module")
def mixture():
    return run("mixture")


@pytest.fixture(scope="module")
def gaussian():
    return run("gaussian")


def near(v, p, tol):
    return abs(v - p) <= tol


# ---------------------------------------------------------------- grid and tangents
def test_karras_map_is_the_grid():
    """tau((n-1)/(N-1)) reproduces the library's grid to round-off, and tau' is its derivative (central
    differences with step 1e-6: truncation ~1e-12 relative, round-off ~1e-10); the off-by-one grid
    tau(n/N) (a planted bug) misses it by far more."""
    for N in (16, 512):
        u = torch.arange(N, dtype=DT) / (N - 1)
        t = karras_boundaries(N)
        assert torch.allclose(C.tau(u), t, rtol=1e-13, atol=0)
        assert not torch.allclose(C.tau(torch.arange(N, dtype=DT) / N), t, rtol=1e-3, atol=0)
    assert float(C.tau(torch.zeros(1, dtype=DT))) == pytest.approx(EPS, rel=1e-12) == C.make_model().eps
    u = torch.linspace(0.01, 0.99, 50, dtype=DT)
    fd = (C.tau(u + 1e-6) - C.tau(u - 1e-6)) / 2e-6
    assert torch.allclose(C.tau_prime(u), fd, rtol=1e-7)


def test_scaling_derivatives_written_out():
    """c_skip', c_out', c_in', c_noise' by hand against central differences of the library's scalings
    with step h = 1e-4 t: truncation h^2 |c'''| / (6 |c'|) ~ 1e-8 relative (measured 2e-8), round-off
    1e-16 / 1e-4 ~ 1e-12; tolerance 1e-6. The planted bug c_out' = sigma/sqrt(sigma^2 + t^2) (the quotient
    rule's second term forgotten) is off by O(1)."""
    t = C.tau(torch.linspace(0.02, 0.98, 40, dtype=DT))
    h = 1e-4 * t
    fd = [(a - b) / (2 * h) for a, b in zip(get_scalings(t + h), get_scalings(t - h))]
    for mine, ref in zip(C.scaling_derivatives(t), fd):
        assert torch.allclose(mine, ref, rtol=1e-6, atol=0)
    wrong = SIGMA_DATA / torch.sqrt(SIGMA_DATA ** 2 + t ** 2)
    assert not torch.allclose(wrong, fd[1], rtol=1e-2)


@pytest.mark.parametrize("toy", ["gaussian", "mixture"])
def test_jvp_tangent_matches_written_out_and_finite_differences(toy):
    """g_CD from torch.func.jvp with tangent (v, 1) equals the skip derivative written out (same arithmetic
    in another order: round-off, 1e-12) and central differences (h = 1e-5 t: truncation ~h^2 |f'''| ~ 1e-10,
    round-off ~1e-16/h ~ 1e-11, relative to max |g|: 1e-6 leaves margin). Planted bugs: the tangent's
    sign flipped, the score in place of the velocity: both miss by O(1)."""
    ok = C.tangent_check(toy)
    assert ok["analytic_rel_err"] < 1e-12 and ok["fd_rel_err"] < 1e-6, ok
    for bug in ("tangent_sign", "score_for_velocity"):
        bad = C.tangent_check(toy, mutation=bug)
        assert bad["analytic_rel_err"] > 0.1 and bad["fd_rel_err"] > 0.1, (bug, bad)


def test_exact_gaussian_consistency_function():
    """At the Gaussian's exact f, g_CD = (x - mu) r' + r v vanishes (two terms of size ~1.6 cancel to
    round-off, ~1e-13 here; tolerance 1e-10 of their size) and L_CD^inf = 0; CT without stop-gradient is
    biased even there: the bias equals its closed form (same integrand, round-off), is positive, and the
    per-sample CT limit averages to it within 3 standard errors. Planted bug: the score in place of the
    velocity; then g_CD is O(1) and L_CD^inf > 1."""
    ex = C.exact_gaussian_check(B=B)
    assert ex["max_g_cd"] <= 1e-10 * ex["scale"] and ex["L_cd_inf"] < 1e-20, ex
    assert ex["bias"] > 0.5 and ex["bias"] == pytest.approx(ex["bias_closed_form"], rel=1e-10)
    assert abs(ex["ct_limit_z"]) < 3
    bad = C.exact_gaussian_check(B=B, mutation="score_for_velocity")
    assert bad["max_g_cd"] > 0.1 * bad["scale"] and bad["L_cd_inf"] > 1


def test_posterior_covariance_is_tweedies():
    """The mixture's closed-form Cov[x | x_t] (docstring) equals Tweedie's t^2 dD/dx_t, the Jacobian of the
    library's denoiser by autograd (an independent route; round-off, 1e-9 of the variance scale). Planted
    bug: the within-component term alone (the spread of the component means dropped), off by O(1) where
    the responsibilities are mixed (not for a single Gaussian, where it is exact)."""
    g = get_toy("mixture").mixture
    gen = torch.Generator().manual_seed(0)
    for t in (0.05, 0.5, 2.0):
        x_t = g.sample(64, t=t, generator=gen, dtype=DT)
        tt = torch.full((64,), t, dtype=DT)
        y = x_t.clone().requires_grad_(True)
        D = g(y, tt)  # row b depends on x_t[b] only: the gradient of a column sum is that column's Jacobian row
        jac = torch.stack([torch.autograd.grad(D[:, i].sum(), y, retain_graph=True)[0] for i in range(2)], 1)
        ref = t ** 2 * jac
        scale = float(ref.abs().max())
        assert float((C.posterior_covariance(g, x_t, tt) - ref).abs().max()) < 1e-9 * scale
        if t >= 0.5:
            bad = C.posterior_covariance(g, x_t, tt, mutation="within_only")
            assert float((bad - ref).abs().max()) > 0.1 * scale


# ---------------------------------------------------------------- Theorems 3-6
@pytest.mark.parametrize("toy", ["gaussian", "mixture"])
def test_theorems_3_and_4_order_one(toy, mixture, gaussian):
    """(N-1)^2 L_CD^N -> E[lambda tau'^2 |g_CD|^2] and, for L1, (N-1) L_CD^N -> E[lambda tau' |g_CD|_1],
    both with gaps O(1/N). The quadrature estimate (half the nodes against all) is below 10% of the smallest
    gap, and the rule used is ~3x more accurate than that estimate (kinks of |g| limit the L1 integrand to
    O(n^-2) convergence), so it moves the fitted orders by < 0.05. Planted bugs, each an O(1) error in the
    limit, so the gap stops shrinking (order ~0): one tau' factor dropped; the tangent's sign flipped."""
    res = {"gaussian": gaussian, "mixture": mixture}[toy]
    for th in ("theorem3", "theorem4"):
        r = res[th]
        assert near(r["slope"], 1, 0.2), (th, r["slope"])
        assert r["quadrature_error"] < 0.1 * abs(r["rows"][-1]["gap"])
        assert r["rows"][-1]["rel_gap"] < 0.01  # the limit is reached: 0.5% at N = 512
    if toy == "mixture":
        for bug in ("no_tau_prime", "tangent_sign"):
            bad = run(toy, bug)
            for th in ("theorem3", "theorem4"):
                assert bad[th]["slope"] < 0.5, (bug, th, bad[th]["slope"])


@pytest.mark.parametrize("toy", ["gaussian", "mixture"])
def test_theorems_5_and_6_gradients(toy, mixture, gaussian):
    """(N-1) grad L^N(theta, sg theta) -> grad 2E[lambda tau' f^T sg(g)] for CD (Theorem 5) and CT (Theorem 6),
    relative gradient gaps O(1/N); the library's continuous-time training losses give exactly these limit
    gradients (round-off); and Theorem 6's limit equals Theorem 5's in expectation: their difference,
    projected on an independently estimated direction, is within 3 standard errors of 0. Planted bug: the
    score in place of the velocity in g_CD: Theorem 5's gap stays O(1) and CD no longer matches CT
    (|z| > 5; it is ~12 with these samples)."""
    res = {"gaussian": gaussian, "mixture": mixture}[toy]
    for th in ("theorem5", "theorem6"):
        assert near(res[th]["grad_slope"], 1, 0.2), (th, res[th]["grad_slope"])
        assert res[th]["library_loss_rel_diff"] < 1e-12
    assert abs(res["theorem6"]["cd_ct_gap_z"]) < 3
    if toy == "mixture":
        bad = run(toy, "score_for_velocity")
        assert bad["theorem5"]["grad_slope"] < 0.5
        assert abs(bad["theorem6"]["cd_ct_gap_z"]) > 5


@pytest.mark.parametrize("toy", ["gaussian", "mixture"])
def test_ct_without_stop_gradient_is_biased_with_order_two(toy, mixture, gaussian):
    """(N-1)^2 L_CT^N(theta, theta) -> E[lambda tau'^2 |g_CT|^2], a midpoint rule (order 2), and that limit is
    L_CD^inf + E[lambda tau'^2 tr(J Cov[x|x_t] J^T)/t^2] > L_CD^inf: the identity's per-sample residual has
    mean 0 within 3 standard errors. Planted bugs: the tangent's sign flipped (order ~0); the bias dropped, i.e.
    the naive claim that CT without stop-gradient has the CD limit: the residual's mean is then the bias, ~1.7
    against a standard error ~0.17 (z ~ 10; the test asks > 5). (The subtler bug of the Tweedie test, the
    between-component covariance dropped, shifts z by only ~4 at these 128 samples: it is caught there.)"""
    res = {"gaussian": gaussian, "mixture": mixture}[toy]
    ct = res["ct_same_target"]
    assert near(ct["slope"], 2, 0.3), ct["slope"]
    assert abs(ct["identity_z"]) < 3 and ct["bias"] > 10 * ct["bias_se"]
    assert ct["limit"] > ct["cd_limit"] + ct["bias"] / 2
    if toy == "mixture":
        assert run(toy, "tangent_sign")["ct_same_target"]["slope"] < 0.5
        assert abs(run(toy, "no_bias")["ct_same_target"]["identity_z"]) > 5


def test_lambda_at_t_n_costs_the_midpoint_order():
    """Where lambda(t_n) against lambda(t) matters: with a non-constant weighting (snr+1 = t^-2 + 1) taken at
    the left end point t_n, CT's midpoint sum loses its second order (the -k/2 lambda' term): the fitted
    order over N = 64..512 falls to ~1.1 (local slopes 1.13, 1.06, 1.03 -> 1), outside 2 +- 0.3, while
    uniform lambda keeps 2 (other tests). Orders are sample-independent here, so 32 samples suffice."""
    r = C.toy_limits("mixture", (64, 128, 256, 512), B=32, weighting="snr+1")
    assert abs(r["ct_same_target"]["slope"] - 1) < 0.3
    assert not near(r["ct_same_target"]["slope"], 2, 0.3)
    # improved CT's lambda = 1/(t_{n+1} - t_n) grows with N: no limit of this form, and a clear error says so
    with pytest.raises(ValueError, match="depends on N"):
        C.toy_limits("gaussian", (16, 32), B=4, weighting="ict")


# ---------------------------------------------------------------- the tangent field and the report
def test_tangent_field():
    """The field on a grid is g_CD = dt_f + J_v (parts consistent), equals cd_tangent at the same points,
    vanishes for the exact Gaussian consistency function (round-off) and not for the MLP; the planted sign
    bug (tangent (-v, 1)) gives a different field."""
    fld = C.tangent_field("mixture", t=1.0, n=5)
    g, dtf, jv = (torch.tensor(fld[k], dtype=DT) for k in ("g", "dt_f", "J_v"))
    X = torch.tensor(fld["x"], dtype=DT).reshape(-1, 2)
    assert g.shape == (5, 5, 2) and torch.allclose(g, dtf + jv)
    model, mix = C.make_model(), get_toy("mixture").mixture
    tt = torch.ones(25, dtype=DT)
    _, ref = C.cd_tangent(model, mix, X, tt)
    _, bad = C.cd_tangent(model, mix, X, tt, mutation="tangent_sign")
    assert torch.allclose(g.reshape(-1, 2), ref, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(g.reshape(-1, 2), bad, rtol=1e-2)
    exact = C.tangent_field("gaussian", t=1.0, n=5, model="exact")
    assert max(max(r) for r in exact["norm"]) < 1e-12 and max(max(r) for r in fld["norm"]) > 1e-2


def test_cli_json_carries_the_continuous_keys(monkeypatch, capsys):
    """``cmlite theorem --json`` through the real command line, with the report reduced to its continuous-time
    section on a small setting (the full report runs in tests/test_theory_report.py): the keys are reachable
    as json["continuous"]["theorem3"]["slope"] etc. and the exit status follows the checks. Planted bug
    (one tau' factor dropped): the order checks fail and the command exits 1."""
    from cmlite.cli import main
    from cmlite.theory import report

    def reduced(mutation):
        def _collect(learned, symbolic, pfode):
            checks = {}
            c = report.continuous_section(checks, toys=("gaussian",), Ns=(16, 32, 64), B=16, mutation=mutation)
            return {"continuous": c, "checks": checks, "passed": all(checks.values()), "seconds": 0.0}
        return _collect

    monkeypatch.setattr(report, "_collect", reduced(None))
    rc = main(["theorem", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["passed"]
    c = res["continuous"]
    for path in ("theorem3/slope", "theorem4/slope", "theorem5/grad_slope", "theorem6/grad_slope",
                 "theorem6/cd_ct_gap_z", "ct_same_target/slope"):
        a, b = path.split("/")
        assert isinstance(c[a][b], float), path
    assert c["per_toy"]["gaussian"]["theorem3"]["rows"][0]["N"] == 16
    assert "CONTINUOUS-TIME LIMITS" in "\n".join(report.format_continuous(c))
    monkeypatch.setattr(report, "_collect", reduced("no_tau_prime"))
    rc = main(["theorem", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 1 and not res["checks"]["continuous/theorem3/gaussian/order~1"]

