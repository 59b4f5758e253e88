"""Compiling in another process while the run trains eagerly (cmlite.image.compile_ahead): the run goes on
with graphs the other process compiled (loaded from the cache, none compiled again), a later run loads them
after an eager first step, and a failed compilation leaves an eagerly trained run with a warning that shows
the other process's error."""
import json
import subprocess
import sys
import time

import pytest
import torch

import cmlite.image.run as run_mod
from cmlite.image.compile_ahead import DONE, LOG, CompileAhead
from cmlite.image.recipes import get_recipe
from cmlite.image.run import train

WAIT_S = 1800   # a hang guard only: the other process compiles in 1-2 minutes on two loaded cores


@pytest.mark.slow
def test_run_goes_on_with_the_graphs_the_other_process_compiled(tmp_path, monkeypatch):
    # tiny-teacher compiles two graphs (the network's forward and backward) with Inductor on the CPU.
    # The run waits at step 2 until the other process is done, so that it goes on compiled from step 3
    # whatever the machine's speed. Its own compilation must then find every graph in the cache: a graph
    # that differs (another batch size, layout or precision in the other process) is a cache miss here.
    out, cache = tmp_path / "run", tmp_path / "cache"

    def wait_for_the_other_process(tr):
        if tr.step == 2:
            t0 = time.monotonic()
            while not (out / DONE).exists():
                assert time.monotonic() - t0 < WAIT_S, (out / LOG).read_text()[-3000:]
                time.sleep(0.5)

    s = train(get_recipe("tiny-teacher"), out, steps=6, compile_ahead=True, cache_dir=cache, progress=False,
              callback=wait_for_the_other_process, callback_every=1)
    info = s["compile_ahead"]
    assert info["eager_steps"] == 3, info
    assert info["fx_graph_cache_hits"] >= 2 and info["fx_graph_cache_misses"] == 0, info
    assert s["recipe"]["train"]["compile"] is True and s["steps"] == 6 and torch.isfinite(torch.tensor(s["final_loss"]))
    assert len(list(cache.glob("cmlite-compiled-*"))) == 1   # later runs of these graphs compile at once
    assert json.loads((out / DONE).read_text())["status"] == "done"

    # A later run of the same recipe (compile='auto', as on a GPU) finds the graphs cached: its first step is
    # eager and the graphs load at the second, none compiled again.
    monkeypatch.setattr(run_mod, "resolve_compile", lambda c, d: True if c == "auto" else c)
    torch._dynamo.reset()   # as in a new process: nothing compiled in memory, only the cache on disk
    again = train(get_recipe("tiny-teacher").with_overrides(["train.compile=auto"]), tmp_path / "again", steps=4,
                  cache_dir=cache, progress=False)
    info = again["compile_cached"]
    assert info["eager_steps"] == 1 and "compile_ahead" not in again, info
    assert info["fx_graph_cache_hits"] >= 2 and info["fx_graph_cache_misses"] == 0, info
    assert again["recipe"]["train"]["compile"] is True and again["steps"] == 4


def test_a_failed_compile_process_is_reported_with_its_log(tmp_path):
    ahead = CompileAhead(get_recipe("tiny-ct"), tmp_path, tmp_path / "cache")
    with open(tmp_path / LOG, "w") as log:
        ahead.proc = subprocess.Popen([sys.executable, "-c", "print('no graphs today'); raise SystemExit(3)"],
                                      stdout=log, stderr=subprocess.STDOUT)
    ahead.started_at = time.monotonic()
    ahead.proc.wait()
    assert ahead.state() == "failed"
    assert "exited with code 3" in ahead.error and "no graphs today" in ahead.error


class _FailedAhead:
    def __init__(self, *args, **kwargs):
        self.seconds, self.error = None, "the compiling process exited with code 1: (planted)"

    def start(self, memory_fraction=None):
        pass

    def state(self):
        return "failed"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_run_whose_compile_process_failed_trains_on_eagerly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run_mod, "CompileAhead", _FailedAhead)
    s = train(get_recipe("tiny-teacher"), tmp_path / "run", steps=3, compile_ahead=True,
              cache_dir=tmp_path / "cache", progress=False)
    assert s["steps"] == 3 and s["recipe"]["train"]["compile"] is False
    assert s["compile_ahead"] == {"seconds": None, "failed": True}
    err = capsys.readouterr().err
    assert "(planted)" in err and "the run trains on eagerly" in err
