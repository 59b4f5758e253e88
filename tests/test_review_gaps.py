"""Behaviours that an independent review found no fast test for, and its error-message fixes.

Each test was checked to fail when the behaviour is broken (the mutation is named in its docstring).
"""
import math

import pytest
import torch

import cmlite as cm
from cmlite.metrics import off_mode_fraction, off_mode_fraction_expected
from cmlite.theory.theorem2 import relative_norm


class Identity(torch.nn.Module):
    """f(x, t) = x: a 'consistency model' that returns its input, so multistep sampling exposes its noise."""
    eps, T = cm.EPS, cm.T_MAX

    def forward(self, x, t):
        return x


class Recorder(torch.nn.Module):
    """Wraps a model and records every (x, t) it is evaluated at."""

    def __init__(self, model):
        super().__init__()
        self.model, self.eps, self.T, self.calls = model, model.eps, model.T, []

    def forward(self, x, t, **cond):
        self.calls.append((x.detach().clone(), torch.as_tensor(t).detach().clone()))
        return self.model(x, t, **cond)


# ------------------------------------------------------------------ multistep sampling's noise scale
def test_multistep_sampling_adds_noise_of_std_sqrt_tau2_minus_eps2():
    r"""Algorithm 1 re-noises to tau with std sqrt(tau^2 - eps^2), so that x + noise has std tau when x is a
    sample at eps. With f = identity, the increment of the second step is exactly that noise.

    tau = 2 eps makes the correct scale (sqrt(3) eps) 13% below the naive tau (and sqrt(tau^2 + eps^2) is 29%
    above). With n = 2 x 100000 increments the relative standard error of the sample std is 1/sqrt(2n) = 0.16%;
    5 SE is 0.8%, far below the 13% a mutation would cause. (Mutation checked: noise scale tau.)"""
    eps, tau = cm.EPS, 2 * cm.EPS
    x0 = torch.zeros(100_000, 2, dtype=torch.float64)
    x = cm.multistep_sample(Identity(), x0, [cm.T_MAX, tau], generator=torch.Generator().manual_seed(0))
    n = x.numel()
    expected = math.sqrt(tau ** 2 - eps ** 2)
    rel_se = 1 / math.sqrt(2 * n)
    assert abs(float(x.std()) / expected - 1) < 5 * rel_se
    assert abs(float(x.mean())) < 5 * expected / math.sqrt(n)


def test_multistep_sampling_noise_scale_exact_with_the_same_generator():
    """The same check, exactly: re-drawing z from an identically seeded generator gives the increment to
    rounding (so a wrong scale fails even at tau >> eps, where it is a relative eps^2 / (2 tau^2) effect)."""
    eps, tau = cm.EPS, 0.585
    x0 = torch.zeros(1000, 2, dtype=torch.float64)
    x = cm.multistep_sample(Identity(), x0, [cm.T_MAX, tau], generator=torch.Generator().manual_seed(3))
    z = torch.randn(x0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(x, math.sqrt(tau ** 2 - eps ** 2) * z, rtol=1e-12, atol=0)


# ------------------------------------------------------------------ EMA at a rate strictly between 0 and 1
def _filled(value, seed=0):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(value)
        m[1].running_mean.fill_(value)
    return m


def test_ema_update_interpolates_with_the_right_weights():
    """ema <- rate ema + (1 - rate) model, parameters only; buffers are copied; the model is untouched.
    rate = 0.3 is asymmetric, so swapping the two weights (0.7 ema + 0.3 model) fails; so does ignoring rate."""
    ema, model = _filled(1.0), _filled(11.0)
    cm.ema_update(ema, model, 0.3)
    for p in ema.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 0.3 * 1.0 + 0.7 * 11.0))
    torch.testing.assert_close(ema[1].running_mean, torch.full((4,), 11.0))
    assert all(float(p.detach().min()) == float(p.detach().max()) == 11.0 for p in model.parameters())


def test_trainer_updates_target_and_eval_ema_with_their_rates():
    """After one step: target = mu theta^-_0 + (1 - mu) theta_1 with the schedule's mu (Algorithm 2's last line),
    and the evaluation EMA = r theta_0 + (1 - r) theta_1 with the warm-up rate r = min(rate, 1/10) at k = 0."""
    torch.manual_seed(0)
    model = cm.ConsistencyModel(cm.MLP(2, 16, 1))
    before = [p.detach().clone() for p in model.parameters()]
    mu = 0.9
    tr = cm.Trainer(model, cm.ConsistencyTrainingLoss(), cm.ring_mixture(),
                    cm.TrainConfig(steps=1, batch_size=32, lr=1e-2, ema_rate=0.999), cm.FixedSchedule(10, mu))
    tr.train_step()
    r = min(0.999, 1 / 10)
    for p0, p1, pt, pe in zip(before, tr.model.parameters(), tr.target.parameters(), tr.ema.parameters()):
        assert not torch.equal(p0, p1) or p0.abs().sum() == 0  # the step moved the weights
        torch.testing.assert_close(pt, mu * p0 + (1 - mu) * p1)
        torch.testing.assert_close(pe, r * p0 + (1 - r) * p1)


# ------------------------------------------------------------------ the supplied target network
@pytest.mark.parametrize("kind", ["cd", "ct"])
def test_supplied_target_is_evaluated_on_x_hat_at_t_n(kind):
    r"""With a target network theta^- != theta (mu > 0), the loss is d(f_theta(x_{n+1}, t_{n+1}), f_{theta^-}(x_hat_n, t_n)):
    the *target* sees x_hat_{t_n} (one Heun step of the teacher for CD, x + t_n z for CT) at t_n, the online
    model sees x_{t_{n+1}} at t_{n+1}, and the loss value is built from the target's output.
    (Mutations checked: evaluating the online model as target; evaluating the target at x_{t_{n+1}}.)"""
    gm = cm.ring_mixture()
    torch.manual_seed(0)
    online = Recorder(cm.ConsistencyModel(cm.MLP(2, 16, 1)).double())
    target = Recorder(cm.ConsistencyModel(cm.MLP(2, 16, 1)).double())   # different weights
    loss = cm.ConsistencyDistillationLoss(gm, solver="heun") if kind == "cd" else cm.ConsistencyTrainingLoss()
    g = torch.Generator().manual_seed(1)
    x = gm.sample(64, generator=g, dtype=torch.float64)
    z = torch.randn(64, 2, generator=g, dtype=torch.float64)
    n = torch.randint(0, 17, (64,), generator=g)
    t = cm.karras_boundaries(18)
    value = loss.at(online, x, z, n, t, target=target)

    x_np1 = x + t[n + 1][:, None] * z
    x_hat = cm.heun_step(gm, x_np1, t[n + 1], t[n]) if kind == "cd" else x + t[n][:, None] * z
    assert len(target.calls) == 1 and len(online.calls) == 1
    torch.testing.assert_close(target.calls[0][0], x_hat)
    torch.testing.assert_close(target.calls[0][1], t[n])
    torch.testing.assert_close(online.calls[0][0], x_np1)
    torch.testing.assert_close(online.calls[0][1], t[n + 1])
    with torch.no_grad():
        expected = cm.l2(online.model(x_np1, t[n + 1]), target.model(x_hat, t[n]))
    torch.testing.assert_close(value.detach(), expected)


def test_trainer_passes_its_target_network_when_mu_is_positive():
    """The Trainer hands the loss its target network theta^- for mu > 0, and None (the online network under
    stop-gradient) for mu = 0."""
    seen = []
    base = cm.ConsistencyTrainingLoss()

    def loss(model, x, target=None, N=18):
        seen.append(target)
        return base(model, x, target=target, N=N)

    for mu in (0.5, 0.0):
        torch.manual_seed(0)
        tr = cm.Trainer(cm.ConsistencyModel(cm.MLP(2, 16, 1)), loss, cm.ring_mixture(),
                        cm.TrainConfig(steps=1, batch_size=16), cm.FixedSchedule(10, mu))
        tr.train_step()
        assert seen[-1] is (tr.target if mu > 0 else None)


# ------------------------------------------------------------------ error messages
def test_cd_rejects_a_data_tensor_as_teacher_early():
    with pytest.raises(TypeError, match="EmpiricalDenoiser"):
        cm.ConsistencyDistillationLoss(torch.randn(100, 2))
    with pytest.raises(TypeError, match="callable"):
        cm.ConsistencyDistillationLoss("heun")
    cm.ConsistencyDistillationLoss(cm.EmpiricalDenoiser(torch.randn(100, 2)))  # the fix the message names works


def test_relative_norm_reports_an_unresolved_gap_as_a_bound_not_as_zero():
    """A numerator that is pure noise (16 i.i.d. N(0, I) batch rows; with this seed its U-statistic is < 0) has
    no estimate: value and se are None and the text names the upper bound, instead of the old '0.0 ± 0.0'."""
    noise = torch.randn(16, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    den = torch.ones(16, 5, dtype=torch.float64)
    r = relative_norm(noise, den)
    assert r["value"] is None and r["se"] is None and not r["resolved"]
    assert r["upper"] > 0 and r["text"] == f"unresolved (< {r['upper']:.2e})"
    # a resolved gap prints as value ± se (constant rows: the ratio is exact, |a| / |b|)
    a = torch.full((16, 5), 0.5, dtype=torch.float64)
    r = relative_norm(a, den)
    assert r["resolved"] and r["value"] == pytest.approx(0.5) and "±" in r["text"]


# ------------------------------------------------------------------ the off-mode fraction
def test_off_mode_fraction_of_data_matches_the_chi_tail():
    """Data from the ring scores P(chi_2 > 3) = exp(-4.5) = 1.11%, within 5 binomial standard errors."""
    gm = cm.ring_mixture()
    n = 40_000
    q = off_mode_fraction_expected(gm)
    assert q == pytest.approx(math.exp(-4.5), rel=1e-12)
    frac = off_mode_fraction(gm.sample(n, generator=torch.Generator().manual_seed(0)), gm)
    assert abs(frac - q) < 5 * math.sqrt(q * (1 - q) / n)


def test_off_mode_fraction_counts_points_between_modes():
    gm = cm.ring_mixture()
    on = gm.means.float()                                        # every mode centre: on-mode
    between = (gm.means + gm.means.roll(1, 0)).float() / 2       # midpoints of neighbouring modes: 3.8 std away
    assert off_mode_fraction(on, gm) == 0.0
    assert off_mode_fraction(between, gm) == 1.0
    assert off_mode_fraction(torch.cat([on, between]), gm) == 0.5
    with pytest.raises(ValueError, match="shape"):
        off_mode_fraction(torch.zeros(4, 3), gm)
