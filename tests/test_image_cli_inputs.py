"""Bad input and interruptions on the image commands: each ends with one clear line that names the key,
file or folder and says what to do (exit status 2 for bad input, 1 for a failed write, 128 + signal for
SIGTERM), and an interrupted run resumes to the same weights as an uninterrupted one. Tiny recipes on the
CPU; the interrupted run stops at a fixed step, whatever the machine's speed."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import cmlite.image.run as run_mod
from cmlite.cli import main
from cmlite.image.recipes import get_recipe
from cmlite.image.run import StoppedEarly, train
from cmlite.training import load_checkpoint


def _err(argv, capsys, code=2):
    assert main(argv) == code
    return capsys.readouterr().err


def test_set_values_are_type_and_range_checked(tmp_path, capsys):
    out = str(tmp_path / "r")
    err = _err(["train", "tiny-ct", "--out", out, "--steps", "1", "--set", "train.lr=abc"], capsys)
    assert "train.lr" in err and "must be a number" in err and "'abc'" in err
    err = _err(["train", "tiny-ct", "--out", out, "--steps", "1", "--set", "train.batch_size=-4"], capsys)
    assert "batch_size must be 1 or more; got -4" in err
    err = _err(["train", "tiny-ct", "--out", out, "--steps", "1", "--set", "train.precision=fp8"], capsys)
    assert "precision must be one of" in err
    err = _err(["train", "tiny-ct", "--out", out, "--steps", "1", "--set", "train.nope=1"], capsys)
    assert "unknown recipe field 'train.nope'" in err
    err = _err(["train", "tiny-ct", "--out", out, "--steps", "1", "--set", "minutes=soon"], capsys)
    assert "minutes" in err and "a number or None" in err
    assert not (tmp_path / "r").exists()   # all refused before anything was written


def test_folders_that_are_not_runs(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv in (["sample", str(empty)], ["eval", str(empty), "--inception", "no"],
                 ["edit", str(empty), "interpolate"]):
        err = _err(argv, capsys)
        assert f"{empty} is not a cmlite run folder" in err, err
    err = _err(["sample", str(tmp_path / "missing")], capsys)
    assert "there is no run folder" in err
    (empty / "recipe.json").write_text("{not json")
    assert "recipe.json is not valid JSON" in _err(["sample", str(empty)], capsys)
    # --resume: no folder, a folder that is not a run, a run that stopped before its first checkpoint
    base = ["train", "tiny-ct", "--steps", "2", "--resume", "--out"]
    assert "there is no run folder" in _err(base + [str(tmp_path / "missing")], capsys)
    (empty / "recipe.json").unlink()
    assert "is not a cmlite run folder" in _err(base + [str(empty)], capsys)
    (empty / "recipe.json").write_text(json.dumps({"status": "stopped by SIGTERM while loading the data"}))
    err = _err(base + [str(empty)], capsys)
    assert "stopped before its first checkpoint" in err and "without --resume" in err
    (empty / "checkpoint.pt").write_bytes(b"garbage")
    assert "not a readable cmlite checkpoint" in _err(base + [str(empty)], capsys)


def test_cd_without_a_teacher_names_the_teacher_recipe_of_its_data(tmp_path, capsys):
    err = _err(["train", "tiny-cd", "--out", str(tmp_path / "cd"), "--steps", "1"], capsys)
    assert "`cmlite train tiny-teacher" in err and "synthetic-teacher" not in err
    for name, teacher in (("mnist-cd", "mnist-teacher"), ("cifar10-cd", "cifar10-teacher")):
        assert f"`cmlite train {teacher} " in run_mod._teacher_command(get_recipe(name))
    folder = get_recipe("mnist-cd").with_overrides(["dataset='folder:/images'"])
    assert "a teacher recipe on the same data" in run_mod._teacher_command(folder)


def test_resume_with_other_settings_says_how_and_force_resume_does_it(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "tiny-ct", "--out", out, "--steps", "2", "--quiet"]) == 0
    capsys.readouterr()
    err = _err(["train", "tiny-ct", "--out", out, "--steps", "3", "--resume", "--set", "train.lr=0.5"], capsys)
    assert "--set train.lr=0.001" in err and "--force-resume" in err and "strict_config" not in err
    assert main(["train", "tiny-ct", "--out", out, "--steps", "3", "--resume", "--force-resume", "--quiet",
                 "--set", "train.lr=0.5"]) == 0
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 3
    assert "goes with --resume" in _err(["train", "tiny-ct", "--out", out, "--force-resume"], capsys)


def test_a_folder_that_cannot_be_written_and_a_full_disk(tmp_path, monkeypatch, capsys):
    # tests run as root, where chmod does not stop writes: a path under a file, and a planted ENOSPC
    (tmp_path / "file").write_text("x")
    err = _err(["train", "tiny-ct", "--out", str(tmp_path / "file" / "run"), "--steps", "1"], capsys)
    assert "cannot write the run folder" in err and "Choose a writable --out" in err
    real = os.replace

    def full_disk(src, dst, *a, **k):
        if str(dst).endswith("checkpoint.pt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", full_disk)
    err = _err(["train", "tiny-ct", "--out", str(tmp_path / "run"), "--steps", "1", "--quiet"], capsys, code=1)
    assert "No space left on device" in err and "checkpoint.pt" in err and "Traceback" not in err
    assert not list((tmp_path / "run").glob("*.tmp"))   # the temporary file is cleaned up


def test_sigterm_before_training_leaves_a_message_and_the_folder(tmp_path, monkeypatch, capsys):
    def loading(*a, **k):   # SIGTERM arrives while the data loads (a deterministic point)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)   # the handler raises within this sleep; reaching the end means it did not
        raise AssertionError("SIGTERM was not handled")
    monkeypatch.setattr(run_mod, "load_train_test", loading)
    previous = signal.getsignal(signal.SIGTERM)
    err = _err(["train", "tiny-ct", "--out", str(tmp_path / "run"), "--steps", "2"], capsys,
               code=128 + signal.SIGTERM)
    assert "stopped by SIGTERM while loading the data, before training: nothing was trained" in err
    info = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert info["status"].startswith("stopped by SIGTERM while loading the data")
    assert signal.getsignal(signal.SIGTERM) is previous   # the handler is given back
    with pytest.raises(StoppedEarly):   # the library raises (a KeyboardInterrupt) with the same message
        train(get_recipe("tiny-ct"), tmp_path / "run2", steps=2, progress=False)


WRAPPER = r"""
import pathlib, signal, sys
import cmlite.training as T
stop_at, ready = int(sys.argv[1]), pathlib.Path(sys.argv[2])
step = T.Trainer.train_step
def paused_step(self):
    rec = step(self)
    if self.step == stop_at:        # a fixed point: say so, then wait for the test's SIGTERM
        ready.write_text(str(self.step))
        signal.pause()              # returns once the signal's handler has run
    return rec
T.Trainer.train_step = paused_step
from cmlite.cli import main
sys.exit(main(sys.argv[3:]))
"""


def test_sigterm_during_training_then_resume_equals_an_uninterrupted_run(tmp_path):
    # `cmlite train` in a subprocess gets SIGTERM at step 3 of 6 (it waits there, so the machine's load
    # cannot move the point); it writes its checkpoint and exits 143; --resume then trains steps 3-5. The
    # result must equal 6 uninterrupted steps bitwise: weights, target, EMA, optimiser, RNG-driven data.
    K, stop_at = 6, 3
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CMLITE_THREADS": "1"}
    out, ready = tmp_path / "run", tmp_path / "ready"
    p = subprocess.Popen([sys.executable, "-c", WRAPPER, str(stop_at), str(ready), "train", "tiny-ct", "--out",
                          str(out), "--steps", str(K), "--quiet"], env=env, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert p.poll() is None, p.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the training process never reached the stop step"
            time.sleep(0.1)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert f"stopped by SIGTERM at step {stop_at}" in err and "--resume" in err
    assert load_checkpoint(out / "checkpoint.pt")["step"] == stop_at
    assert "stopped by SIGTERM" in json.loads((out / "recipe.json").read_text())["status"]

    torch.set_num_threads(1)
    train(get_recipe("tiny-ct"), out, resume=True, progress=False)
    train(get_recipe("tiny-ct"), tmp_path / "straight", steps=K, progress=False)
    a, b = (load_checkpoint(d / "checkpoint.pt") for d in (out, tmp_path / "straight"))
    assert a["step"] == b["step"] == K
    for part in ("model", "target", "ema"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), f"{part}.{k} differs after the interruption"
    assert a["history"] == b["history"]
