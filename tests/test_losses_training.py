"""Losses (Algorithms 2, 3, improved CT), the training loop, checkpoints and sampling."""
import json
import math

import pytest
import torch

import cmlite as cm
from cmlite.cli import main as cli_main


class ExactCF(torch.nn.Module):
    """The exact consistency function of a Gaussian, as a 'model' (plus a dummy parameter)."""
    def __init__(self, gauss):
        super().__init__()
        self.g, self.eps, self.T = gauss, cm.EPS, cm.T_MAX
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return self.g.consistency_function(x, t) + 0 * self.dummy


def test_cd_loss_of_exact_consistency_function_vanishes_with_N():
    # With the exact f and the true score, the CD loss is the squared local error of one solver step:
    # O(dt^4) for Heun (local error O(dt^3)), O(dt^2) for Euler: it must fall fast with N.
    gauss = cm.Gaussian([0.0, 0.0], 0.5)
    f = ExactCF(gauss).double()
    x = gauss.sample(512, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for solver, order in [("euler", 1), ("heun", 2)]:
        loss = cm.ConsistencyDistillationLoss(gauss, solver=solver)
        vals = []
        for N in [20, 40, 80]:
            torch.manual_seed(1)
            vals.append(float(loss(f, x, N=N).mean().detach()))
        # doubling N divides a (local error)^2 ~ dt^(2 order + 2) loss by at least 2^(2 order); allow factor 2 slack
        assert vals[0] / vals[1] > 2 ** (2 * order) / 2 and vals[1] / vals[2] > 2 ** (2 * order) / 2, (solver, vals)


def test_ct_equals_cd_euler_with_one_sample_score():
    # Algorithm 3 is Algorithm 2 with Euler and the score estimate -(x_t - x)/t^2, i.e. D(x_t, t) = x
    x = torch.randn(32, 2, dtype=torch.float64)
    z = torch.randn(32, 2, dtype=torch.float64)
    n = torch.randint(0, 17, (32,))
    t = cm.karras_boundaries(18)
    model = cm.ConsistencyModel(cm.MLP(2, 32, 1)).double()
    ct = cm.ConsistencyTrainingLoss().at(model, x, z, n, t)
    cd = cm.ConsistencyDistillationLoss(lambda xt, tt: x, solver="euler").at(model, x, z, n, t)
    torch.testing.assert_close(ct, cd)


def test_target_gets_no_gradient():
    model = cm.ConsistencyModel(cm.MLP(2, 16, 1))
    target = cm.ConsistencyModel(cm.MLP(2, 16, 1))
    loss = cm.ConsistencyTrainingLoss()(model, torch.randn(8, 2), target=target, N=10)
    loss.mean().backward()
    assert all(p.grad is None for p in target.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_without_stop_gradient_the_target_branch_gets_gradient():
    model = cm.ConsistencyModel(cm.MLP(2, 16, 1)).double()
    x, z = torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    n, t = torch.randint(0, 9, (8,)), cm.karras_boundaries(10)
    grads = []
    for sg in (True, False):
        model.zero_grad()
        cm.ConsistencyTrainingLoss(stop_gradient=sg).at(model, x, z, n, t).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert not torch.allclose(grads[0], grads[1])


def test_weightings_and_distances():
    tn, tn1 = torch.tensor([0.5]), torch.tensor([0.7])
    assert float(cm.lambda_weight("snr", tn, tn1)) == pytest.approx(4.0)
    assert float(cm.lambda_weight("karras", tn, tn1)) == pytest.approx(8.0)
    assert float(cm.lambda_weight("ict", tn, tn1)) == pytest.approx(5.0)
    assert float(cm.lambda_weight("truncated_snr", torch.tensor([2.0]), tn1)) == pytest.approx(1.0)
    a, b = torch.zeros(2, 4), torch.ones(2, 4)
    assert cm.l2(a, b).tolist() == [1.0, 1.0] and cm.l1(a, 2 * b).tolist() == [2.0, 2.0]
    c = 0.00054 * 2  # sqrt(d) = 2
    assert float(cm.PseudoHuber()(a, b)[0]) == pytest.approx(math.sqrt(4 + c * c) - c)
    with pytest.raises(ValueError, match="weighting"):
        cm.ConsistencyTrainingLoss(weighting="snr2")
    with pytest.raises(ValueError, match="distance"):
        cm.ConsistencyTrainingLoss(distance="lpips")


def test_ict_lognormal_indices_follow_probabilities():
    loss = cm.ImprovedConsistencyTrainingLoss()
    n = loss.sample_indices(200_000, 21, generator=torch.Generator().manual_seed(0))
    p = cm.lognormal_index_probs(cm.karras_boundaries(21))
    freq = torch.bincount(n, minlength=20).double() / n.numel()
    se = (p * (1 - p) / n.numel()).sqrt()
    assert ((freq - p).abs() <= 5 * se + 1e-12).all()  # 5 standard errors per bin


def _trainer(steps=30, seed=0):
    gm = cm.ring_mixture()
    torch.manual_seed(seed)
    model = cm.ConsistencyModel(cm.MLP(2, 32, 2))
    cfg = cm.TrainConfig(steps=steps, batch_size=64, lr=1e-3, seed=seed)
    return cm.Trainer(model, cm.ConsistencyTrainingLoss(), gm, cfg, cm.CTSchedule(K=steps))


def test_training_reduces_loss_and_records_history():
    tr = _trainer(steps=150)
    h = tr.fit(progress=False)
    assert len(h["loss"]) == 150 and h["N"][0] == 2 and h["N"][-1] > h["N"][0]
    assert sum(h["loss"][-20:]) < sum(h["loss"][:20])


def test_mu_zero_target_tracks_online():
    gm = cm.ring_mixture()
    model = cm.ConsistencyModel(cm.MLP(2, 16, 1))
    tr = cm.Trainer(model, cm.ConsistencyDistillationLoss(gm), gm, cm.TrainConfig(steps=3, batch_size=16),
                    cm.FixedSchedule(10, 0.0))
    tr.fit(progress=False)
    for p, q in zip(tr.model.parameters(), tr.target.parameters()):
        assert torch.equal(p, q)


def test_checkpoint_resume_is_exact(tmp_path):
    full = _trainer(steps=40)
    full.fit(progress=False)

    half = _trainer(steps=40)
    for _ in half.steps(20):
        pass
    path = half.save(tmp_path / "ckpt.pt")
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed away
    resumed = _trainer(steps=40, seed=123)  # a different seed: everything must come from the file
    resumed.load(path)
    resumed.fit(progress=False)
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(full.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(a, b)
    assert full.history["loss"] == resumed.history["loss"]


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _trainer().load(tmp_path / "nope.pt")


def test_nan_loss_stops_training():
    tr = _trainer()
    tr.loss = lambda model, x, target=None, N=None: model(x, 1.0).sum(1) * float("nan")
    with pytest.raises(FloatingPointError, match="diverged"):
        tr.fit(progress=False)


def test_nan_data_is_rejected():
    model = cm.ConsistencyModel(cm.MLP(2, 8, 1))
    data = torch.randn(100, 2)
    data[5] = float("nan")
    tr = cm.Trainer(model, cm.ConsistencyTrainingLoss(), data, cm.TrainConfig(steps=50, batch_size=100),
                    cm.FixedSchedule(5))
    with pytest.raises(ValueError, match="NaN"):
        tr.fit(progress=False)


def test_data_sources():
    model = cm.ConsistencyModel(cm.MLP(2, 8, 1))
    loader = [torch.randn(16, 2) for _ in range(3)]
    for data in [torch.randn(50, 2), lambda n, g: torch.randn(n, 2, generator=g), loader,
                 [(b, torch.zeros(16)) for b in loader]]:
        tr = cm.Trainer(model, cm.ConsistencyTrainingLoss(), data, cm.TrainConfig(steps=5, batch_size=16),
                        cm.FixedSchedule(5))
        tr.fit(progress=False)
        assert tr.step == 5


def test_multistep_sampling_with_exact_function():
    # the exact consistency function of N(mu, s^2) gives N(mu, s^2 + eps^2) samples in 1 and in 3 steps
    gauss = cm.Gaussian([1.0, -1.0], 0.5)
    f = ExactCF(gauss)
    g = torch.Generator().manual_seed(0)
    n = 40_000
    for ts in ([80.0], [80.0, 2.0, 0.3]):
        x = cm.sample(f, (n, 2), ts=ts, generator=g, dtype=torch.float64)
        # sample mean error ~ s / sqrt(n) = 0.0025; std error ~ s / sqrt(2n) = 0.0018: 5 SE tolerances
        torch.testing.assert_close(x.mean(0), torch.tensor([1.0, -1.0], dtype=torch.float64), atol=0.0125, rtol=0)
        torch.testing.assert_close(x.std(0), torch.full((2,), 0.5, dtype=torch.float64), atol=0.009, rtol=0)


def test_sampling_time_checks():
    f = ExactCF(cm.Gaussian([0.0, 0.0], 0.5))
    x = 80 * torch.randn(4, 2)
    with pytest.raises(ValueError, match="decreasing"):
        cm.multistep_sample(f, x, [80.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=r"\[eps, T\]"):
        cm.multistep_sample(f, x, [80.0, 0.0001])
    with pytest.raises(ValueError, match="at least one"):
        cm.multistep_sample(f, x, [])


def test_ternary_search_finds_known_minimum():
    # a model whose output is (ln t - ln 0.5)^2: the 2-step score (mean output) is unimodal in tau_2 with
    # its minimum at 0.5; 14 ternary iterations shrink the log-interval by (2/3)^14 ~ 0.003
    class Bowl(torch.nn.Module):
        eps, T = cm.EPS, cm.T_MAX
        def forward(self, x, t):
            t = torch.as_tensor(t, dtype=x.dtype)
            return torch.zeros_like(x) + (torch.log(t) - math.log(0.5)) ** 2
    trail = []
    times, scores = cm.ternary_search_times(Bowl(), lambda x: float(x.mean()), 2, (8, 2), iters=14, trail=trail)
    assert times[0] == 80.0 and abs(math.log(times[1] / 0.5)) < 0.05
    assert len(trail) == 1 + 2 * 14 and (times, scores[-1]) in trail   # the best scored time, with its score
    assert scores[-1] == min(v for ts, v in trail if len(ts) == 2)
    assert scores[1] < scores[0]


def test_ode_sample_shapes():
    x = cm.ode_sample(cm.ring_mixture(), (10, 2), N=5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (10, 2) and torch.isfinite(x).all()


def test_cli_demo_json_smoke(capsys, tmp_path):
    # a tiny run of the main job: the output is well-formed and complete (the real numbers are in README)
    assert cli_main(["demo", "--json", "--steps", "30", "--out", str(tmp_path / "demo.png")]) == 0
    res = json.loads(capsys.readouterr().out)
    methods = [r["method"] for r in res["rows"]]
    assert methods[0].startswith("data vs data") and "CD 1-step" in methods and "CT 1-step" in methods
    assert all(math.isfinite(r["sw2"]) for r in res["rows"])
    assert (tmp_path / "demo.png").stat().st_size > 10_000
