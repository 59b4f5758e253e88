"""Boundary condition, scalings, and shape/time checks of f_theta."""
import math

import pytest
import torch

import cmlite as cm


class Wild(torch.nn.Module):
    """A network with large, input-dependent output, to make the boundary condition non-trivial."""
    def forward(self, x, c):
        return 1e3 * torch.sin(7 * x) + c.reshape(-1, *([1] * (x.ndim - 1)))


@pytest.mark.parametrize("param", ["skip", "piecewise"])
@pytest.mark.parametrize("shape", [(7, 2), (3, 3, 8, 8), (4, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_boundary_condition_exact(param, shape, dtype):
    m = cm.ConsistencyModel(Wild(), parameterization=param)
    x = torch.randn(shape, dtype=dtype) * 3
    assert torch.equal(m(x, cm.EPS), x)  # bitwise, not approximately
    assert torch.equal(m(x, torch.full((shape[0],), cm.EPS, dtype=dtype)), x)


def test_boundary_condition_is_not_trivial_away_from_eps():
    m = cm.ConsistencyModel(Wild())
    x = torch.randn(5, 2)
    assert not torch.allclose(m(x, 0.01), x)


def test_scalings_match_method_md():
    t = torch.tensor([0.002, 0.01, 0.5, 1.0, 80.0], dtype=torch.float64)
    sd, eps = 0.5, 0.002
    c_skip, c_out, c_in, c_noise = cm.get_scalings(t, sd, eps)
    for i, ti in enumerate(t.tolist()):
        assert float(c_skip[i]) == pytest.approx(sd ** 2 / ((ti - eps) ** 2 + sd ** 2), rel=1e-14)
        assert float(c_out[i]) == pytest.approx(sd * (ti - eps) / math.sqrt(sd ** 2 + ti ** 2), rel=1e-14, abs=0)
        assert float(c_in[i]) == pytest.approx(1 / math.sqrt(ti ** 2 + sd ** 2), rel=1e-14)
        assert float(c_noise[i]) == pytest.approx(0.25 * math.log(ti), rel=1e-14)
    assert c_skip[0] == 1 and c_out[0] == 0


def test_edm_scalings_break_the_boundary_condition():
    # EDM's own scalings are the eps = 0 case: c_out(eps) != 0, the classic porting bug
    _, c_out, _, _ = cm.get_scalings(torch.tensor([0.002]), 0.5, 0.0)
    assert float(c_out) > 1e-3


def test_time_outside_range_is_rejected():
    m = cm.ConsistencyModel(cm.MLP(2))
    x = torch.randn(4, 2)
    for bad in [0.001, 81.0, float("nan"), -1.0]:
        with pytest.raises(ValueError, match=r"\[eps, T\]|NaN"):
            m(x, bad)


def test_wrong_time_shape_is_rejected():
    m = cm.ConsistencyModel(cm.MLP(2))
    with pytest.raises(ValueError, match="shape"):
        m(torch.randn(4, 2), torch.ones(3))


def test_wrong_data_shape_is_rejected():
    m = cm.ConsistencyModel(cm.MLP(2))
    with pytest.raises(ValueError, match=r"\(batch, 2\)"):
        m(torch.randn(4, 3), 1.0)


def test_bad_parameterization_name():
    with pytest.raises(ValueError, match="parameterization"):
        cm.ConsistencyModel(cm.MLP(2), parameterization="skp")


def test_edm_denoiser_preconditioning():
    class Zero(torch.nn.Module):
        def forward(self, x, c):
            return torch.zeros_like(x)
    D = cm.EDMDenoiser(Zero())
    x = torch.randn(3, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    # with F = 0, D = c_skip x = sigma_d^2/(t^2 + sigma_d^2) x: the optimal denoiser of N(0, sigma_d^2 I)
    torch.testing.assert_close(D(x, t), x * (0.25 / (t ** 2 + 0.25))[:, None])
    with pytest.raises(ValueError):
        D(x, 0.0)
