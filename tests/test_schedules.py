"""The time grid and the training schedules against method.md and an independent re-derivation."""
import math

import numpy as np
import pytest
import torch

import cmlite as cm


def _karras_descending_reference(n, sigma_min, sigma_max, rho=7.0):
    # k-diffusion / EDM style: a ramp from sigma_max to sigma_min in rho-th-root space (descending)
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


@pytest.mark.parametrize("N", [2, 3, 18, 40, 151])
def test_karras_grid_matches_descending_convention(N):
    t = cm.karras_boundaries(N)
    assert t.shape == (N,)
    assert t[0] == cm.EPS and t[-1] == cm.T_MAX
    assert (t[1:] > t[:-1]).all()
    np.testing.assert_allclose(t.flip(0).numpy(), _karras_descending_reference(N, 0.002, 80.0), rtol=1e-12)


def test_official_two_step_time_is_grid_index_11():
    # method.md §6: CIFAR-10 two-step tau ~= 0.585 is index 11 of the N = 18 grid in descending order
    assert abs(float(cm.karras_boundaries(18).flip(0)[11]) - 0.585) < 1e-3


def test_max_gap_is_last_interval():
    t = cm.karras_boundaries(18)
    assert cm.max_gap(t) == pytest.approx(float(t[-1] - t[-2]))


@pytest.mark.parametrize("bad", [1, 0, -3, 2.5, "18", True])
def test_bad_N_is_rejected(bad):
    with pytest.raises(ValueError, match="N must"):
        cm.karras_boundaries(bad)


def _official_ct(step, total, s0, s1, mu0):
    # the official CM code's formulas, re-derived: N-1 scales and target_ema = exp(s0 ln mu0 / (N - 1))
    scales = np.ceil(np.sqrt(step / total * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1)
    scales = max(scales, 1)
    return int(scales + 1), math.exp(s0 * math.log(mu0) / scales)


@pytest.mark.parametrize("k", [0, 1, 100, 5000, 123457, 800000])
def test_ct_schedule(k):
    K = 800_000
    N = cm.ct_N(k, K, 2, 150)
    N_ref, mu_ref = _official_ct(k, K, 2, 150, 0.9)
    assert N == N_ref
    assert cm.ct_mu(N, 2, 0.9, official=True) == pytest.approx(mu_ref, rel=1e-12)
    assert cm.ct_mu(N, 2, 0.9) == pytest.approx(math.exp(2 * math.log(0.9) / N), rel=1e-12)


def test_ct_schedule_end_points():
    assert cm.ct_N(0, 1000) == 2 and cm.ct_N(1000, 1000) == 151  # N(0) = s0, N(K) = s1 + 1
    assert cm.ct_mu(2) == pytest.approx(0.9)  # the paper's mu(0) = exp(s0 ln mu0 / s0) = mu0
    Ns = [cm.ct_N(k, 1000) for k in range(1001)]
    assert all(b >= a for a, b in zip(Ns, Ns[1:]))


def test_ict_schedule_doubles_in_equal_stages():
    K = 8000
    Ns = [cm.ict_N(k, K, 10, 1280) for k in range(K)]
    assert Ns[0] == 11 and Ns[-1] == 1281
    stages = sorted(set(Ns))
    assert stages == [10 * 2 ** i + 1 for i in range(8)]
    lengths = [Ns.count(s) for s in stages]
    assert max(lengths[:-1]) - min(lengths[:-1]) <= 1  # equal stages (the last takes the remainder)


def test_lognormal_index_probs():
    t = cm.karras_boundaries(41)
    p = cm.lognormal_index_probs(t, -1.1, 2.0)
    assert p.shape == (40,) and torch.all(p > 0)
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    # the interval holding exp(P_mean) = 0.333 gets more mass per unit log-time than the last one
    width = torch.log(t[1:]) - torch.log(t[:-1])
    dens = p / width
    i = int(torch.searchsorted(t, torch.tensor(math.exp(-1.1), dtype=t.dtype))) - 1
    assert dens[i] > dens[-1] and dens[i] > dens[0]


def test_schedule_objects():
    assert cm.FixedSchedule(18, 0.0)(123) == (18, 0.0)
    N, mu = cm.CTSchedule(K=100)(100)
    assert N == 151 and 0.9 < mu < 1
    assert cm.ICTSchedule(K=100)(0) == (11, 0.0)


@pytest.mark.parametrize("cls", [cm.CTSchedule, cm.ICTSchedule, cm.ECTSchedule])
def test_a_refitted_schedule_never_sets_N_back_and_ends_at_its_K(cls):
    """A run's K refitted twice (a time budget, step times that change): each refit goes on from the share of
    the curriculum already done, so N(k) over the whole run never falls, and the run ends at the last
    schedule's final N. 300 seeded random (K, k0) triples per schedule."""
    from cmlite.schedules import refit
    rng = np.random.default_rng(0)
    for _ in range(300):
        K1, K2, K3 = (int(x) for x in rng.integers(5, 3000, 3))
        k0 = int(rng.integers(0, min(K1, K2)))
        k1 = int(rng.integers(k0, max(min(K2, K3), k0 + 1)))
        s1 = cls(K1)
        s2 = refit(s1, k0, K1, cls(K2), K2)
        s3 = refit(s2, k1, K2, cls(K3), K3)
        N = [s1(k)[0] for k in range(k0)] + [s2(k)[0] for k in range(k0, k1)] + [s3(k)[0] for k in range(k1, K3 + 1)]
        assert all(b >= a for a, b in zip(N, N[1:])), (K1, K2, K3, k0, k1)
        assert s3(K3) == cls(K3)(K3)


def test_refit_rounds_stages_forward_and_keeps_an_unchanged_K():
    """iCT's stage length is floor(K / 8): with K = 21 it is 2 steps, and step 15 is in the last stage (N = 1281).
    The same share of K = 376 (step 269 of 376) is in stage 5 (N = 321): the refit moves on to the first step
    whose N is 1281 again. An unchanged K continues the schedule exactly."""
    from cmlite.schedules import refit
    old, new = cm.ICTSchedule(21), cm.ICTSchedule(376)
    assert old(15)[0] == 1281 and new(269)[0] == 321
    r = refit(old, 15, 21, new, 376)
    assert r(15)[0] == 1281 and r.v0 == 329 and new(328)[0] < 1281   # 329 = 7 x 47, the last stage's start
    same = refit(old, 7, 21, cm.ICTSchedule(21), 21)
    assert [same(k) for k in range(7, 25)] == [old(k) for k in range(7, 25)]
    with pytest.raises(ValueError, match="positive"):
        refit(old, 3, 0, new, 376)
