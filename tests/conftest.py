import os

import pytest
import torch

# Small tensors: one thread avoids OpenMP oversubscription on 2-core CI machines.
torch.set_num_threads(int(os.environ.get("CMLITE_TEST_THREADS", "1")))


@pytest.fixture(autouse=True, scope="session")
def _private_cache_home(tmp_path_factory):
    """Caches that cmlite writes by default (decoded data sets, compiled graphs) go to a temporary folder,
    not into the home folder of the machine running the tests."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture
def isolated_data_roots(tmp_path, monkeypatch):
    """No default data root of the user's machine is searched: cwd, HOME and CMLITE_DATA all point into
    tmp_path, and Debian's Fashion-MNIST folder is hidden (for tests of the image data loaders)."""
    from cmlite.image import data as D
    monkeypatch.delenv("CMLITE_DATA", raising=False)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
