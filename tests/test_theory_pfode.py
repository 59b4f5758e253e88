"""PF-ODE facts: marginals from N(0, T^2 I), and invertibility (round trip)."""
import torch

from cmlite.ode import euler_step, heun_step
from cmlite.theory import energy_distance_test, marginal_check, round_trip_check, start_mismatch_tv_bound
from cmlite.theory.common import get_toy




def _short_heun(D, x, t_from, t_to):
    # a wrong solver: every Heun step covers only 90% of its interval
    return heun_step(D, x, t_from, t_from + 0.9 * (t_to - t_from))


def _direction_blind_euler(D, x, t_from, t_to):
    # a wrong solver that always integrates towards smaller t, whatever the direction asked for
    return euler_step(D, x, t_from, t_from - abs(t_to - t_from))


def test_energy_test_has_its_level_and_power():
    """Sanity of the two-sample test itself. Under H0 the permutation p-value is uniform: over 20
    independent same-law pairs at level 0.05 the number of rejections is Binomial(20, 0.05), and
    P(>= 5) = 0.016, so '<= 4' is a 1.6%-risk bound (deterministic with these seeds). A 0.3-sd mean shift
    with n = 300 has power ~1."""
    g = torch.Generator().manual_seed(0)
    rejections = sum(energy_distance_test(torch.randn(300, 2, generator=g, dtype=torch.float64),
                                          torch.randn(300, 2, generator=g, dtype=torch.float64),
                                          permutations=199, seed=i)[1] < 0.05 for i in range(20))
    assert rejections <= 4
    a = torch.randn(300, 2, generator=g, dtype=torch.float64)
    b = torch.randn(300, 2, generator=g, dtype=torch.float64) + 0.3
    assert energy_distance_test(a, b, permutations=199)[1] < 0.01


def test_start_mismatch_is_far_below_test_resolution():
    """Starting from N(0, T^2 I) instead of p_T costs a total variation of at most ~0.006 for the toys
    (Pinsker bound), far below what 1000 samples per side can detect (~0.1 sd shifts)."""
    for name in ("gaussian", "mixture", "narrow"):
        assert start_mismatch_tv_bound(get_toy(name).mixture) < 0.01


def test_pf_ode_reproduces_marginals():
    """Family level 0.01 over three times (Bonferroni): a correct solver is wrongly rejected with
    probability <= 1% for a random seed; seed 0 is fixed, so the outcome is deterministic."""
    r = marginal_check("mixture", n=1000, N=128)
    assert r["passed"], r["rows"]


def test_wrong_solver_fails_the_marginal_check():
    r = marginal_check("mixture", n=1000, N=128, solver=_short_heun)
    assert not r["passed"]
    assert all(row["rejected"] for row in r["rows"])


def test_round_trip():
    """Reference (RK4) round trip within its tolerance (4x Richardson + round-off bound, see
    round_trip_check); the library's Heun round trip falls like dt^3 and Euler's like dt (the leading local
    errors of the two directions cancel for even order and add for odd order). +-0.3 on the slopes:
    deterministic, bounds the next-order term over N = 64..256."""
    r = round_trip_check("mixture", n=64)
    assert r["passed"] and r["reference_round_trip_error"] < 1e-8  # RK4, h = 0.02 in ln t: ~1e-10
    assert abs(r["slope"] - 3) < 0.3
    e = round_trip_check("mixture", n=64, solver="euler", reference=False)
    assert abs(e["slope"] - 1) < 0.3


def test_non_invertible_solver_fails_the_round_trip():
    r = round_trip_check("mixture", n=64, solver=_direction_blind_euler, reference=False)
    assert min(row["error"] for row in r["rows"]) > 0.1
    assert r["slope"] < 0.5
