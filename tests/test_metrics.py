"""Tests of cmlite.metrics against closed forms and hand computations."""
import math

import pytest
import torch

from cmlite.metrics import (
    consistency_error, data_floor, energy_distance, log_likelihood, median_bandwidth, mmd, sliced_wasserstein,
)
from cmlite.toys import Gaussian, ring_mixture


def g(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(n, d, seed=0, dtype=torch.float64):
    return torch.randn(n, d, generator=g(seed), dtype=dtype)


# ---------------------------------------------------------------------------- sliced Wasserstein

def test_sw_of_identical_sets_is_zero_and_symmetric():
    x = randn(500, 3)
    assert sliced_wasserstein(x, x) == 0.0
    assert sliced_wasserstein(x, x[torch.randperm(500, generator=g(1))]) == 0.0  # order does not matter
    y = randn(400, 3, seed=1)
    assert sliced_wasserstein(x, y) == pytest.approx(sliced_wasserstein(y, x), rel=1e-12)


def test_sw_one_dimensional_hand_computed():
    # in 1-D the only directions are +-1, and W_p is sign-invariant: SW_p = W_p exactly
    x = torch.tensor([[0.0], [1.0], [2.0]])
    assert sliced_wasserstein(x, x + 1, p=1) == pytest.approx(1.0, abs=1e-12)
    assert sliced_wasserstein(x, x + 1, p=3) == pytest.approx(1.0, abs=1e-12)
    # unequal sizes: F^-1 = 0 on (0,1/2], 1 on (1/2,1]; G^-1 = 0 on (0,2/3], 3 on (2/3,1], so
    # W_1 = 1 * (2/3 - 1/2) + 2 * (1/3) = 5/6 and W_2^2 = 1/6 + 4/3 = 3/2
    a, b = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [0.0], [3.0]])
    assert sliced_wasserstein(a, b, p=1) == pytest.approx(5 / 6, abs=1e-12)
    assert sliced_wasserstein(a, b, p=2) == pytest.approx(math.sqrt(1.5), abs=1e-12)


def test_sw_unequal_sizes_equals_sort_matching_of_repeated_sets():
    # repeating every point k times leaves an empirical distribution unchanged
    x, y = randn(6, 3, seed=1), randn(4, 3, seed=2)
    for p in (1, 2):
        a = sliced_wasserstein(x, y, p=p, generator=5)
        b = sliced_wasserstein(x.repeat(2, 1), y.repeat(3, 1), p=p, generator=5)
        assert a == pytest.approx(b, rel=1e-12)


def test_sw_of_a_pure_shift_matches_the_closed_form():
    # y = x + delta exactly: each projection is a pure shift by theta.delta, and the 1-D W_p between
    # an empirical law and its shift by c is |c|. Hence, with theta uniform on the sphere S^{d-1},
    #   SW_2^2 = E[(theta.delta)^2] = delta^T E[theta theta^T] delta = |delta|^2 / d   (E theta theta^T = I/d)
    # so SW_2 = |delta| / sqrt(d), with no sampling noise from x at all. The only error is Monte Carlo over
    # L directions: (theta.delta)^2 / |delta|^2 ~ theta_1^2 ~ Beta(1/2, (d-1)/2), of variance
    # 2(d-1)/(d^2 (d+2)), so SW_2^2 has relative standard error d * sqrt(2(d-1)/(d^2 (d+2)) / L).
    L = 2000
    for d in (2, 5):
        x = randn(100, d, seed=d)
        for size in (0.5, 2.0):
            direction = torch.randn(d, generator=g(10 + d), dtype=torch.float64)
            delta = size * direction / direction.norm()
            sw = sliced_wasserstein(x, x + delta, n_projections=L, generator=d)
            expected_sq = size ** 2 / d
            rel_se = d * math.sqrt(2 * (d - 1) / (d ** 2 * (d + 2)) / L)
            assert abs(sw ** 2 / expected_sq - 1) < 5 * rel_se
            # and it is exactly linear in the shift (same directions: |theta.(c delta)| = c |theta.delta|)
            sw3 = sliced_wasserstein(x, x + 3 * delta, n_projections=L, generator=d)
            assert sw3 == pytest.approx(3 * sw, rel=1e-9)
    # p = 1 in 2-D: SW_1 = |delta| E|cos(phi)| = |delta| 2/pi  (Var|cos phi| = 1/2 - 4/pi^2)
    x = randn(300, 2)
    sw1 = sliced_wasserstein(x, x + torch.tensor([1.0, 0.0], dtype=torch.float64), n_projections=L, p=1, generator=3)
    assert abs(sw1 - 2 / math.pi) < 5 * math.sqrt((0.5 - 4 / math.pi ** 2) / L)


def test_sw_between_independent_gaussians_with_a_mean_shift():
    # N(0, I) vs N(delta, I) in 2-D, |delta| = 1: SW_2 = 1/sqrt(2) (see above). With independent samples
    # the empirical mean difference adds 2 delta.e / d to SW_2^2, e ~ N(0, 2/n I): sd 0.02 at n = 5000,
    # i.e. 0.014 on SW_2; Monte Carlo over L = 256 directions adds sd 0.707 * sqrt(1/8 / 256) * 2 / 2 =
    # 0.016 on SW_2; the finite-n bias (the data floor, ~1e-3 on SW_2^2) is small. Tolerance 0.1 ~ 5 sd.
    n = 5000
    x, y = randn(n, 2, seed=1), randn(n, 2, seed=2) + torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert abs(sliced_wasserstein(x, y) - 1 / math.sqrt(2)) < 0.1
    # the floor between two samples of the same law is much smaller
    assert sliced_wasserstein(x, randn(n, 2, seed=3)) < 0.06


def test_sw_is_seedable():
    x, y = randn(200, 4, seed=1), randn(300, 4, seed=2)
    assert sliced_wasserstein(x, y, generator=g(7)) == sliced_wasserstein(x, y, generator=g(7))
    assert sliced_wasserstein(x, y, generator=7) == sliced_wasserstein(x, y, generator=g(7))
    assert sliced_wasserstein(x, y) == sliced_wasserstein(x, y)  # None = fixed seed 0
    assert sliced_wasserstein(x, y, generator=7) != sliced_wasserstein(x, y, generator=8)
    # chunking the directions changes nothing
    assert sliced_wasserstein(x, y, chunk=5) == pytest.approx(sliced_wasserstein(x, y), rel=1e-12)
    # float32 input works and agrees
    assert sliced_wasserstein(x.float(), y.float()) == pytest.approx(sliced_wasserstein(x, y), rel=1e-5)


# ---------------------------------------------------------------------------- MMD and energy distance

def brute_mmd(x, y, hs):
    def k(a, b):
        sq = torch.cdist(a, b) ** 2
        return sum(torch.exp(-sq / (2 * h * h)) for h in hs) / len(hs)
    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
                 - 2 * k(x, y).mean())


def brute_energy(x, y):
    n, m = len(x), len(y)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).sum() / (n * (n - 1))
                 - torch.cdist(y, y).sum() / (m * (m - 1)))


def test_mmd_and_energy_match_brute_force_and_chunking():
    x, y = randn(37, 3, seed=1), randn(23, 3, seed=2) + 0.3
    for hs in ([0.7], [0.5, 1.0, 2.0]):
        ref = brute_mmd(x, y, hs)
        assert mmd(x, y, hs) == pytest.approx(ref, abs=1e-12)
        assert mmd(x, y, hs, chunk=5) == pytest.approx(ref, abs=1e-12)
        assert mmd(x.float(), y.float(), hs, chunk=5) == pytest.approx(ref, abs=1e-5)
    assert mmd(x, y, 0.7) == pytest.approx(brute_mmd(x, y, [0.7]), abs=1e-12)
    assert mmd(x, y) == pytest.approx(brute_mmd(x, y, [median_bandwidth(x, y)]), abs=1e-12)
    ref = brute_energy(x, y)
    # distances come from |a|^2 + |b|^2 - 2 a.b (fast, chunked): ~1e-10 off the direct differences
    assert energy_distance(x, y) == pytest.approx(ref, abs=1e-9)
    assert energy_distance(x, y, chunk=4) == pytest.approx(ref, abs=1e-9)
    assert energy_distance(x.float(), y.float(), chunk=4) == pytest.approx(ref, abs=1e-5)


def _repeat(stat, n, delta, R, seed):
    gen = g(seed)
    vals = torch.tensor([stat(torch.randn(n, 1, generator=gen, dtype=torch.float64),
                              torch.randn(n, 1, generator=gen, dtype=torch.float64) + delta) for _ in range(R)])
    return float(vals.mean()), float(vals.std() / math.sqrt(R))


def test_mmd_is_unbiased_under_the_null_and_matches_the_closed_form():
    # 1-D, X ~ N(0,1), Y ~ N(delta,1), kernel exp(-r^2/(2h^2)): for Z ~ N(mu, s^2),
    # E exp(-Z^2/(2h^2)) = h/sqrt(h^2+s^2) exp(-mu^2/(2(h^2+s^2))); X-X' ~ N(0,2), X-Y ~ N(-delta,2), so
    # MMD^2 = 2 h/sqrt(h^2+2) (1 - exp(-delta^2/(2(h^2+2)))). The estimator is unbiased, so over R independent
    # repeats its mean is within a few standard errors (std/sqrt(R)) of the truth, 0 under the null.
    h, R = 1.0, 6
    mean, se = _repeat(lambda a, b: mmd(a, b, h), 300, 0.0, R, seed=1)
    assert abs(mean) < 5 * se
    for delta in (1.0,):
        truth = 2 * h / math.sqrt(h * h + 2) * (1 - math.exp(-delta ** 2 / (2 * (h * h + 2))))
        mean, se = _repeat(lambda a, b: mmd(a, b, h), 300, delta, R, seed=2)
        assert abs(mean - truth) < 5 * se
        assert mean > 5 * se  # and the shift is detected


def test_energy_distance_matches_the_closed_form():
    # For Z ~ N(mu, s^2): E|Z| = s sqrt(2/pi) exp(-mu^2/(2 s^2)) + mu erf(mu/(s sqrt 2)). With s^2 = 2:
    # E|X-Y| = (2/sqrt(pi)) exp(-delta^2/4) + delta erf(delta/2), E|X-X'| = E|Y-Y'| = 2/sqrt(pi), so
    # D^2 = 2 E|X-Y| - 4/sqrt(pi).
    R = 6
    mean, se = _repeat(energy_distance, 300, 0.0, R, seed=3)
    assert abs(mean) < 5 * se
    delta = 1.0
    e_xy = 2 / math.sqrt(math.pi) * math.exp(-delta ** 2 / 4) + delta * math.erf(delta / 2)
    truth = 2 * e_xy - 4 / math.sqrt(math.pi)
    mean, se = _repeat(energy_distance, 300, delta, R, seed=4)
    assert abs(mean - truth) < 5 * se and mean > 5 * se


def test_mmd_median_heuristic_and_large_sets_run():
    x, y = randn(2000, 2, seed=1, dtype=torch.float32), randn(1500, 2, seed=2, dtype=torch.float32)
    h = median_bandwidth(x, y)
    assert 1.5 < h < 2.0  # median of |X - X'| for X, X' ~ N(0, I_2): sqrt(2) * sqrt(2 ln 2) = 1.665
    assert abs(mmd(x, y)) < 2e-3
    assert abs(energy_distance(x, y)) < 1e-2


# ---------------------------------------------------------------------------- likelihood, consistency error

def test_log_likelihood_of_exact_samples_is_minus_entropy():
    gauss = Gaussian([0.5, -1.0], 0.3)
    x = gauss.sample(20_000, generator=g(0), dtype=torch.float64)
    mean, se = log_likelihood(x, gauss)
    d, s = 2, 0.3
    entropy = 0.5 * d * math.log(2 * math.pi * math.e * s * s)
    assert abs(mean + entropy) < 5 * se
    lp = gauss.log_prob(x)
    assert se == pytest.approx(float(lp.std() / math.sqrt(len(lp))), rel=1e-12)
    # collapsing onto the mode scores higher: log-likelihood alone rewards mode collapse
    assert log_likelihood(gauss.means.expand(10, 2), gauss)[0] > mean
    # works for mixtures and at t > 0
    mix = ring_mixture()
    mean_t, _ = log_likelihood(mix.sample(1000, t=1.0, generator=g(1)), mix, t=1.0)
    assert math.isfinite(mean_t)


def test_consistency_error_values():
    gauss = Gaussian([0.2, 0.1], 0.5)

    def exact(x, t):
        return gauss.consistency_function(x, t)

    x = gauss.sample(256, t=3.0, generator=g(0), dtype=torch.float64)
    t = torch.linspace(0.002, 80.0, 256, dtype=torch.float64)
    err = consistency_error(exact, exact, x, t)
    assert err == {"sup": 0.0, "max_l2": 0.0, "rms": 0.0, "mean_l2": 0.0}
    off = torch.tensor([0.1, 0.0], dtype=torch.float64)
    err = consistency_error(lambda x, t: exact(x, t) + off, exact, x, 5.0)
    assert err["sup"] == pytest.approx(0.1) and err["max_l2"] == pytest.approx(0.1)
    assert err["rms"] == pytest.approx(0.1 / math.sqrt(2)) and err["mean_l2"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="eps, T"):
        consistency_error(exact, exact, x, 100.0)
    with pytest.raises(ValueError, match="shape"):
        consistency_error(lambda x, t: x[:, :1], exact, x, 1.0)


def test_data_floor_shrinks_with_n_and_is_reproducible():
    mix = ring_mixture()
    small = data_floor(mix.sample, sliced_wasserstein, 100, repeats=4, generator=0, n_projections=64)
    large = data_floor(mix.sample, sliced_wasserstein, 2000, repeats=4, generator=0, n_projections=64)
    assert set(small) == {"mean", "std", "values"} and len(small["values"]) == 4
    assert small["std"] > 0 and large["mean"] < small["mean"] / 2  # ~ 1/sqrt(n)
    again = data_floor(mix.sample, sliced_wasserstein, 100, repeats=4, generator=0, n_projections=64)
    assert again["values"] == small["values"]
    unequal = data_floor(mix.sample, mmd, 200, m=300, repeats=3, generator=1, bandwidths=0.5)
    assert abs(unequal["mean"]) < 0.05


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("metric", [sliced_wasserstein, mmd, energy_distance])
def test_two_sample_metrics_reject_bad_shapes(metric):
    x = randn(10, 3)
    with pytest.raises(ValueError, match="trailing dimension"):
        metric(x, randn(10, 2))
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        metric(x[:, 0], x)
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        metric(x, x.reshape(10, 3, 1))
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        metric(bad, x)
    with pytest.raises(ValueError, match="at least"):
        metric(x[:0], x)


def test_bad_options_raise():
    x = randn(10, 2)
    for kwargs in ({"n_projections": 0}, {"p": 0.5}, {"p": float("inf")}, {"generator": "seed"}):
        with pytest.raises(ValueError):
            sliced_wasserstein(x, x, **kwargs)
    with pytest.raises(ValueError, match="at least 2"):
        mmd(x[:1], x)
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(x, x, bandwidths=[1.0, -1.0])
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(x, x, bandwidths=[])
    with pytest.raises(ValueError, match="coincide"):
        mmd(torch.zeros(5, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="chunk"):
        energy_distance(x, x, chunk=0)
    with pytest.raises(ValueError, match="log_prob"):
        log_likelihood(x, object())
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        log_likelihood(randn(10, 2), Gaussian([0.0, 0.0, 0.0], 1.0))
    with pytest.raises(ValueError, match="repeats"):
        data_floor(ring_mixture().sample, sliced_wasserstein, 10, repeats=1)
    with pytest.raises(ValueError, match="n must"):
        data_floor(ring_mixture().sample, sliced_wasserstein, 0)
