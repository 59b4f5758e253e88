"""The image half's run time: the --minutes budget bounds the whole run (with a fake clock: nothing here
depends on how fast the machine is), step-count inputs, precision and device 'auto', fp16 loss scaling
(trained, resumed exactly, skipped steps counted and reported), the mps generator, thread settings and the
compile cache."""
import json
import warnings

import pytest
import torch

import cmlite as cm
import cmlite.devices as devices
import cmlite.image.run as run_mod
from cmlite.cli import main
from cmlite.image.budget import (CAL_FRACTION, QUICK_STEPS, RECAL_EVERY, RECAL_TOL, Budget, Recalibrator,
                                 grid_seconds)
from cmlite.image.recipes import get_recipe
from cmlite.image.run import train
from cmlite.threads import ENV_VAR
from cmlite.training import MAX_SKIPPED_IN_A_ROW, Trainer, TrainConfig


class StepClock:
    """A fake clock: each training step takes ``step_s`` seconds (an attribute: a test may change it), loading
    the data ``data_s``, drawing the final sample grid what budget.grid_seconds says (the run's own estimate,
    so that it is tested too)."""

    def __init__(self, monkeypatch, step_s: float, data_s: float = 0.0, slower_from: tuple[int, float] | None = None):
        # slower_from = (n, f): from step n on, each step takes f times as long (another job on the GPU)
        self.t, self.step_s = 0.0, step_s
        orig_step, orig_load, orig_sample = Trainer.train_step, run_mod.load_train_test, run_mod.sample_images

        def step(tr):
            rec = orig_step(tr)
            self.t += self.step_s * (slower_from[1] if slower_from and tr.step > slower_from[0] else 1.0)
            return rec

        def load(*a, **k):
            self.t += data_s
            return orig_load(*a, **k)

        def sample(model, info, n, steps=1, **k):
            b = info["recipe"]["train"]["batch_size"]
            nfe = 2 * (steps - 1) if info["recipe"]["method"] == "teacher" else steps
            self.t += grid_seconds(self.step_s, b, nfe, n)
            return orig_sample(model, info, n, steps=steps, **k)
        monkeypatch.setattr(Trainer, "train_step", step)
        monkeypatch.setattr(run_mod, "load_train_test", load)
        monkeypatch.setattr(run_mod, "sample_images", sample)

    def __call__(self) -> float:
        return self.t


# ------------------------------------------------------------------ the time budget
@pytest.mark.parametrize("minutes, data_s, cal_steps, grid", [(2.0, 20.0, 10, True), (1.0, 5.0, 6, False)])
def test_budget_bounds_the_whole_run_with_calibration_and_data_loading(minutes, data_s, cal_steps, grid, tmp_path,
                                                                       monkeypatch, capsys):
    # Data loading takes data_s and each step 2.5 s (fake): the run must end, files written, within the
    # budget plus one step. (The old calibration ran 5 + 5 steps whatever the budget, on top of the
    # loading, and a K computed before them.) Calibration: each phase at most 5 steps (CPU) and
    # CAL_FRACTION of the budget: 2 min -> 5 + 5 steps; 1 min -> 6 s a phase, 3 + 3 steps. The teacher's
    # sample grid (34 evaluations x 64 images = 22.7 steps of batch 32) is drawn only where it fits.
    assert CAL_FRACTION * 60 * minutes / 2.5 == pytest.approx({2.0: 4.8, 1.0: 2.4}[minutes])
    clock = StepClock(monkeypatch, step_s=2.5, data_s=data_s)
    s = train(get_recipe("tiny-teacher"), tmp_path / "run", minutes=minutes, clock=clock)
    budget = 60 * minutes
    assert s["wall_seconds"] == clock.t
    assert clock.t <= budget + 2.5, f"the run took {clock.t} fake seconds of a {budget}-second budget"
    assert s["calibrated_seconds_per_step"] == pytest.approx(2.5) and s["calibration_steps"] == cal_steps
    assert s["steps"] == s["K"] and s["startup_s"] == pytest.approx(data_s + 2.5)
    assert (tmp_path / "run" / "samples.png").is_file() == grid == s["samples_png"]
    if grid:   # the budget was used: less than a step and the grid's rounding left over
        assert clock.t >= budget - 2.5
    err = capsys.readouterr().err
    for line in ("loading the data", "training images", "calibrating the step count", "first training step done",
                 "s per step: K ="):
        assert line in err, err
    assert ("samples.png not drawn" in err) != grid


@pytest.mark.parametrize("grace", [0.0, run_mod.GRID_GRACE])
def test_the_grid_may_overrun_the_budget_by_a_little_after_a_slow_final_checkpoint(grace, tmp_path, monkeypatch):
    # Steps of 0.2 s and a 30-second budget: the teacher's grid (34 evaluations x 64 images) costs
    # 0.2 * 34 * 64 / (3 * 32) = 4.5 s and is kept free, but the final checkpoint takes 0.25 s (a large model on a
    # slow disk) and eats into that time. The grid may end the run GRID_GRACE of the budget (0.3 s) late, so it is
    # drawn; without that grace it is not (the 10-minute GPU teacher of 2026-12-06 lost its grid of 0.1 s so).
    monkeypatch.setattr(run_mod, "GRID_GRACE", grace)
    clock = StepClock(monkeypatch, step_s=0.2)
    orig_save = Trainer.save

    def slow_save(tr, path):
        orig_save(tr, path)
        clock.t += 0.25
    monkeypatch.setattr(Trainer, "save", slow_save)
    s = train(get_recipe("tiny-teacher"), tmp_path / "run", minutes=0.5, clock=clock, progress=False)
    assert grid_seconds(0.2, 32, 34) == pytest.approx(4.533, abs=1e-3)
    assert s["samples_png"] == (grace > 0) == (tmp_path / "run" / "samples.png").is_file()
    assert clock.t <= 30 + 0.3 + (0 if grace else -4.5), clock.t


def test_recalibrator_refits_K_to_the_step_time_measured_while_training():
    # a 20-minute budget from t = 0 (1200 s); K = 240 was calibrated at 5 s a step (240 x 5 s = 1200 s)
    budget = Budget(20.0, 0.0, clock=lambda: 0.0)
    assert RECAL_EVERY * budget.total == pytest.approx(120.0) and RECAL_TOL < RECAL_EVERY
    r = Recalibrator(budget, 240)
    assert r(20, 100.0) is None                    # opens the first window
    assert r(30, 150.0) is None                    # 50 s < 120 s: too early to measure
    assert r(50, 250.0) is None                    # 5 s a step as calibrated: 950 s left fit 190 = 240 - 50
    assert r(65, 400.0) == 65 + 80                 # 10 s a step (a busier GPU): 800 s left fit 80 steps
    assert r(80, 550.0) is None                    # still 10 s: K = 145 is right
    assert r(155, 700.0) == 155 + 250              # 2 s a step (the other job ended): 500 s fit 250 steps
    # the final grid's time is kept free: at 5 s a step it costs 150 s here, so 800 s fit 160 steps
    r = Recalibrator(budget, 240, grid_seconds=lambda rate: 30 * rate)
    assert r(20, 100.0) is None and r(50, 250.0) == 50 + 160
    assert r(300, 1300.0) == 300                   # past the deadline: no step is added, training stops
    with pytest.raises(ValueError, match="budget"):
        Recalibrator(Budget(None, 0.0), 10)
    # after restart(quick=True) (the run went on compiled) the next window is QUICK_STEPS steps, however short
    r = Recalibrator(budget, 240)
    r.restart(quick=True)
    assert r.due(100) and r(100, 500.0) is None                 # opens the quick window
    assert not r.due(100 + QUICK_STEPS - 1) and r.due(100 + QUICK_STEPS)
    assert r(100 + QUICK_STEPS, 510.0) == 100 + QUICK_STEPS + 1380   # 0.5 s a step: 690 s left fit 1380 steps
    assert not r.due(200) and r(200, 550.0) is None             # back to regular windows: 40 s < 120 s


def test_a_gpu_that_gets_busier_after_calibration_still_ends_the_schedule_at_the_budget(tmp_path, monkeypatch,
                                                                                       capsys):
    # Calibrated at 4 s a step, then (another job starts) 8 s a step: without refitting, the 10-minute run
    # would stop near step 85 of K = 147 (600 s / 4 s, less the grid), its iCT schedule cut off there.
    # Refitted, it ends at K within the budget plus one step, and K is what the checkpoint and summary record.
    clock = StepClock(monkeypatch, step_s=4.0, slower_from=(20, 2.0))
    s = train(get_recipe("tiny-ict"), tmp_path / "run", minutes=10.0, clock=clock)
    assert s["calibrated_seconds_per_step"] == pytest.approx(4.0)
    assert s["steps"] == s["K"], "the run stopped before the end of its schedule"
    assert 78 <= s["K"] <= 88, s["K"]            # 20 steps at 4 s (80 s), then (600 - 80 - grid) / 8 s
    assert clock.t <= 600 + 8.0
    assert "the step time changed" in capsys.readouterr().err
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["meta"]["K"] == s["K"]


def test_a_steady_step_time_keeps_the_calibrated_K(tmp_path, monkeypatch, capsys):
    clock = StepClock(monkeypatch, step_s=4.0)
    s = train(get_recipe("tiny-ict"), tmp_path / "run", minutes=5.0, clock=clock)
    assert s["steps"] == s["K"] and "the step time changed" not in capsys.readouterr().err


def test_a_step_longer_than_the_budget_stops_after_it_with_a_message(tmp_path, monkeypatch, capsys):
    clock = StepClock(monkeypatch, step_s=100.0)
    s = train(get_recipe("tiny-ct"), tmp_path / "run", minutes=1.0, clock=clock, progress=False)
    assert s["steps"] == s["K"] == 1 and s["calibrated_seconds_per_step"] is None
    assert clock.t <= 60 + 100   # one step over, at most
    err = capsys.readouterr().err   # a warning: shown although progress=False
    assert "budget ran out after 1 training steps" in err and "--minutes" in err
    info = json.loads((tmp_path / "run" / "recipe.json").read_text())
    assert info["status"] == "done" and (tmp_path / "run" / "checkpoint.pt").is_file()
    assert not (tmp_path / "run" / "samples.png").exists() and "samples.png not drawn" in err


def test_minutes_and_steps_must_be_positive(tmp_path, capsys):
    for argv in (["--minutes", "0"], ["--minutes", "-1"], ["--minutes", "nan"], ["--steps", "0"], ["--steps", "-3"]):
        with pytest.raises(SystemExit) as e:
            main(["train", "tiny-ct", "--out", str(tmp_path / "r"), *argv])
        assert e.value.code == 2
        assert "expected a positive" in capsys.readouterr().err
    for kw in ({"minutes": 0}, {"minutes": -2.0}, {"steps": 0}, {"steps": -3}):
        with pytest.raises(ValueError, match="positive"):
            train(get_recipe("tiny-ct"), tmp_path / "r", progress=False, **kw)
    assert not (tmp_path / "r").exists()


def test_resume_to_a_step_already_passed_keeps_the_run(tmp_path):
    train(get_recipe("tiny-ct"), tmp_path / "run", steps=4, progress=False)
    before = (tmp_path / "run" / "recipe.json").read_text()
    for steps in (2, 4, None):   # None: to its K = 4, where it already is
        with pytest.raises(ValueError, match="already at step 4"):
            train(get_recipe("tiny-ct"), tmp_path / "run", steps=steps, resume=True, progress=False)
    assert (tmp_path / "run" / "recipe.json").read_text() == before
    s = train(get_recipe("tiny-ct"), tmp_path / "run", steps=6, resume=True, progress=False)
    assert s["steps"] == 6 and s["images_per_second"] > 0


# ------------------------------------------------------------------ device, precision, compile 'auto'
def test_auto_resolution_on_this_cpu_and_on_mocked_cards(monkeypatch):
    cpu = torch.device("cpu")
    if not torch.cuda.is_available() and not devices.mps_available():
        assert devices.resolve_device("auto") == cpu
    assert devices.resolve_precision("auto", cpu) == "fp32" and devices.resolve_compile("auto", cpu) is False
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert devices.resolve_device("auto") == cuda
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)   # a T4
    assert devices.resolve_precision("auto", cuda) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)    # an A100
    assert devices.resolve_precision("auto", cuda) == "bf16"
    assert devices.resolve_compile("auto", cuda) is True
    assert devices.resolve_precision("fp32", cuda) == "fp32"          # an explicit choice stays
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: True)      # a Mac
    assert devices.resolve_device("auto") == torch.device("mps")
    assert devices.resolve_precision("auto", torch.device("mps")) == "fp32"


def test_gpu_recipes_default_to_auto_and_forcing_cuda_without_a_gpu_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)   # as on a machine without a GPU
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    for name in ("mnist-teacher", "cifar10-ct"):
        t = get_recipe(name).train
        assert (t.device, t.precision, t.compile) == ("auto", "auto", "auto")
    cfg = TrainConfig(device="auto", precision="auto", compile="auto", steps=1, batch_size=8)
    tr = Trainer(cm.ConsistencyModel(cm.MLP(2, 16, 1)), cm.ConsistencyTrainingLoss(), cm.ring_mixture(), cfg,
                 cm.CTSchedule(K=1))
    assert (cfg.device, cfg.precision, cfg.compile) == ("cpu", "fp32", False) and tr.scaler is None
    r = get_recipe("tiny-ct").with_overrides(["train.device='cuda'"])
    with pytest.raises(devices.NoGPUError, match="torch sees no CUDA GPU. Leave the device at 'auto'"):
        train(r, tmp_path / "run", steps=1, progress=False)


def test_a_gpu_recipe_trains_on_this_cpu_without_overrides(tmp_path, monkeypatch):
    # `cmlite train mnist-teacher` on a machine without a GPU: 'auto' gives cpu, fp32, no compile. MNIST
    # itself is replaced by 28x28 synthetic images and the final grid by a stub (the test is about the
    # settings); batch 4 keeps the CPU step short.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)   # as on a machine without a GPU
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    from cmlite.image.data import synthetic_dataset
    monkeypatch.setattr(run_mod, "load_train_test", lambda *a, **k: (
        synthetic_dataset(16, channels=1, resolution=28, num_classes=4, seed=0), None))
    monkeypatch.setattr(run_mod, "sample_images", lambda model, info, n, **k: torch.zeros(n, *info["shape"],
                                                                                            dtype=torch.uint8))
    s = train(get_recipe("mnist-teacher").with_overrides(["train.batch_size=4"]), tmp_path / "run", steps=1,
              progress=False)
    t = s["recipe"]["train"]
    assert (t["device"], t["precision"], t["compile"], s["device"]) == ("cpu", "fp32", False, "cpu")


def test_compile_plan():
    # one process: a warm cache loads the graphs after an eager first step; a cold one compiles in another
    # process where the budget outlasts the compilation, else trains eagerly. torchrun's ranks compile before
    # their first step.
    plan, ahead = devices.compile_plan, devices.COMPILE_AHEAD_MIN_MINUTES
    assert plan(0.5, warm=True) == plan(None, warm=True) == "cached"
    assert plan(0.5, warm=True, processes=2) == plan(None, warm=True, processes=2) == "now"
    assert plan(None, warm=False) == plan(ahead, warm=False) == "ahead"
    assert plan(ahead - 0.5, warm=False) == "eager"
    assert plan(None, warm=False, processes=2) == plan(devices.COMPILE_PAYS_AFTER_MINUTES, False, 2) == "now"
    assert plan(devices.COMPILE_PAYS_AFTER_MINUTES - 0.5, warm=False, processes=2) == "eager"
    assert devices.compile_pays(None, warm=False) and devices.compile_pays(0.5, warm=True)
    assert not devices.compile_pays(devices.COMPILE_PAYS_AFTER_MINUTES - 0.5, warm=False)
    assert devices.compile_pays(devices.COMPILE_PAYS_AFTER_MINUTES, warm=False)


class _InstantAhead:
    """Stands in for cmlite.image.compile_ahead.CompileAhead: its 'other process' is done as soon as it starts."""
    started = 0

    def __init__(self, *args, **kwargs):
        self.seconds, self.error, self.running = None, None, False

    def start(self, memory_fraction=None):
        type(self).started += 1
        self.running = True

    def state(self):
        return "ready" if self.running else "idle"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_auto_compile_never_waits_for_the_compiler_before_the_first_step(tmp_path, monkeypatch):
    """compile='auto' on a (pretended) GPU: a run without a budget compiles in another process (here: done at
    once), goes on compiled from its second step and marks the cache. A later run with the same graphs trains
    its first step eagerly and loads them at the second; with a budget too short to pay for loading them it
    stays eager. A short budget with other graphs (another batch size) trains eagerly. compile_net is replaced
    by a recorder (a CPU compile takes minutes)."""
    import cmlite.training as training_mod
    compiled = []
    monkeypatch.setattr(run_mod, "resolve_compile", lambda c, d: True if c == "auto" else c)   # as on CUDA
    monkeypatch.setattr(training_mod, "compile_net", lambda net, *a, **k: compiled.append(net) or net)
    monkeypatch.setattr(run_mod, "CompileAhead", _InstantAhead)
    monkeypatch.setattr(_InstantAhead, "started", 0)
    monkeypatch.setattr(run_mod, "sample_images", lambda model, info, n, **k: torch.zeros(n, *info["shape"],
                                                                                            dtype=torch.uint8))
    cache = tmp_path / "cache"
    r = get_recipe("tiny-teacher").with_overrides(["train.compile=auto"])   # the GPU recipes' setting

    def run(name, recipe, **kw):
        n = len(compiled)
        s = train(recipe, tmp_path / name, progress=False, cache_dir=cache, **kw)
        return s["recipe"]["train"]["compile"], len(compiled) > n

    def summary(name):
        return json.loads((tmp_path / name / "recipe.json").read_text())

    assert run("short-cold", r, minutes=0.02) == (False, False)     # cold cache, 1.2 s budget: eager
    assert not list(cache.glob("cmlite-compiled-*"))
    assert run("fixed-steps", r, steps=2) == (True, True)            # no budget: compiles ahead, marks the cache
    assert _InstantAhead.started == 1 and len(list(cache.glob("cmlite-compiled-*"))) == 1
    assert summary("fixed-steps")["compile_ahead"]["eager_steps"] == 1   # the first step eager, then compiled
    assert run("warm", r, steps=3) == (True, True)                   # cached: eager first step, then compiled
    info = summary("warm")["compile_cached"]
    assert info["eager_steps"] == 1 and info["first_compiled_step_s"] >= 0 and "compile_ahead" not in summary("warm")
    assert run("short-warm", r, minutes=0.02) == (False, False)      # cached, but 1.2 s: loading would not pay
    assert summary("short-warm")["compile_cached"] == {"too_late": True}
    other = r.with_overrides([f"train.batch_size={r.train.batch_size // 2}"])
    assert run("short-other", other, minutes=0.02) == (False, False)  # other graphs, cold: eager
    assert _InstantAhead.started == 1
    # The same settings, but cmlite's source has changed since the cache was filled (an edited U-Net would
    # trace other graphs): the marker does not count, so the run compiles ahead instead of compiling at its
    # second step while training nothing.
    monkeypatch.setattr(run_mod, "source_digest", lambda: "other code")
    assert run("edited", r, steps=2) == (True, True)
    assert _InstantAhead.started == 2 and "compile_ahead" in summary("edited")
    assert len(list(cache.glob("cmlite-compiled-*"))) == 2   # the other code's graphs marked beside the first


def test_the_source_digest_names_every_source_file_and_its_content(tmp_path, monkeypatch):
    """source_digest hashes each .py file of the package with its path: renaming or editing one changes it."""
    pkg = tmp_path / "pkg"
    (pkg / "image").mkdir(parents=True)
    (pkg / "devices.py").write_text("x = 1\n")
    (pkg / "image" / "unet.py").write_text("y = 2\n")
    monkeypatch.setattr(devices, "__file__", str(pkg / "devices.py"))

    def digest():
        devices.source_digest.cache_clear()
        return devices.source_digest()

    try:
        first = digest()
        (pkg / "image" / "unet.py").write_text("y = 3\n")
        edited = digest()
        (pkg / "image" / "unet.py").rename(pkg / "image" / "net.py")
        renamed = digest()
        (pkg / "notes.txt").write_text("not source")
        assert len({first, edited, renamed}) == 3 and digest() == renamed
    finally:   # later callers hash the real package, also after a failure here
        devices.source_digest.cache_clear()


def _compiled_at_150(monkeypatch):
    """A fake clock and a tiny iCT recipe whose run trains eagerly at 4 s a step until the other process's
    graphs are ready at t = 150 s, then compiled at 2 s a step (nothing is really compiled)."""
    import cmlite.training as training_mod
    clock = StepClock(monkeypatch, step_s=4.0)

    class ReadyAt150(_InstantAhead):
        def state(self):
            return "ready" if self.running and clock.t >= 150.0 else "idle"

    orig_compile = Trainer.compile_graphs

    def compile_graphs(tr):   # compiled: a step takes half the eager time
        clock.step_s = 2.0
        return orig_compile(tr)

    monkeypatch.setattr(run_mod, "resolve_compile", lambda c, d: True if c == "auto" else c)   # as on CUDA
    monkeypatch.setattr(training_mod, "compile_net", lambda net, *a, **k: net)
    monkeypatch.setattr(run_mod, "CompileAhead", ReadyAt150)
    monkeypatch.setattr(Trainer, "compile_graphs", compile_graphs)
    return clock, get_recipe("tiny-ict").with_overrides(["train.compile=auto", "train.log_every=50"])


def test_a_run_that_goes_on_compiled_refits_K_and_ends_with_its_budget(tmp_path, monkeypatch):
    """A 5-minute run calibrated eagerly at 4 s a step goes on compiled when the other process's graphs are
    ready (here at t = 150 s) and then steps at 2 s. Logging every 50 steps, a refit at the regular cadence
    would come only after the eagerly fitted K (about 75) was done, ending the run near 225 s with a quarter
    of its budget unused (a CIFAR-10 CD run on an H100 did so). K must be refitted within QUICK_STEPS steps
    of the switch and the run end at its budget."""
    clock, r = _compiled_at_150(monkeypatch)
    s = train(r, tmp_path / "run", minutes=5.0, clock=clock, cache_dir=tmp_path / "cache", progress=False)
    ahead = s["compile_ahead"]
    assert s["calibrated_seconds_per_step"] == pytest.approx(4.0) and 150.0 <= ahead["ready_after_s"] < 155.0
    switch = ahead["eager_steps"]
    assert s["K"] > switch + 60, s["K"]   # ~145 s left at 2 s a step
    # the run's hard stop keeps the grid's time as estimated at the eager rate (1.3 s more than at 2 s a step)
    assert 0 <= s["K"] - s["steps"] <= 1, (s["steps"], s["K"])
    assert 300.0 - 4.0 <= clock.t <= 300.0 + 2.0 + grid_seconds(2.0, r.train.batch_size, 1), clock.t


def test_a_refitted_K_continues_the_schedule_and_resumes_exactly(tmp_path, monkeypatch):
    """In the run above K grows when the run goes on compiled (about 75 -> 110). Built afresh for the new K,
    iCT's schedule would set N back a stage (k / K falls; a CIFAR-10 iCT run on an H100 went from N = 41 to
    21). It goes on from where it was instead: N, read before every step, never falls and ends at the
    recipe's s1 + 1. The refit is in the checkpoint (meta 'refit'), so a run stopped after it and resumed
    takes the same N at every later step, and its history equals the uninterrupted run's."""
    import os
    import signal
    clock, r = _compiled_at_150(monkeypatch)
    N = {"a": {}, "b": {}}

    def record(run, stop=None):
        def cb(tr):
            N[run][tr.step] = tr.schedule(tr.step)[0]   # the N of the next step
            if tr.step == stop:
                os.kill(os.getpid(), signal.SIGINT)   # the run writes its checkpoint and stops
        return cb
    kw = dict(minutes=5.0, clock=clock, progress=False, callback_every=1)   # a cache each: both start cold
    s = train(r, tmp_path / "b", callback=record("b"), cache_dir=tmp_path / "cache-b", **kw)
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    k0, v0 = ckpt["meta"]["refit"]
    assert s["K"] > 100 and 0 < k0 < s["K"] and v0 >= k0, (s["K"], k0, v0)   # refitted upwards, not from 0
    b = [N["b"][k] for k in sorted(N["b"])]
    assert all(y >= x for x, y in zip(b, b[1:])), b
    assert b[-1] == r.s1 + 1
    clock.t, clock.step_s = 0.0, 4.0
    stop = k0 + 7
    with pytest.raises(KeyboardInterrupt):
        train(r, tmp_path / "a", callback=record("a", stop), cache_dir=tmp_path / "cache-a", **kw)
    assert torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["step"] == stop
    N["a"].clear()
    train(r, tmp_path / "a", resume=True, callback=record("a"), cache_dir=tmp_path / "cache-a",
          **{**kw, "minutes": None})
    assert N["a"] == {k: v for k, v in N["b"].items() if k > stop}
    ha, hb = (json.loads((tmp_path / d / "history.json").read_text()) for d in "ab")
    assert ha == hb


def _toy(precision="fp16", steps=10, seed=0, inf_at=()):
    """A small CT run on 2D data; its gradients are made inf at the steps in ``inf_at`` (a planted overflow)."""
    torch.manual_seed(seed)
    model = cm.ConsistencyModel(cm.MLP(2, 32, 2))
    cfg = TrainConfig(steps=steps, batch_size=32, lr=1e-3, seed=seed, precision=precision, log_every=1)
    tr = Trainer(model, cm.ConsistencyTrainingLoss(), cm.ring_mixture(), cfg, cm.CTSchedule(K=steps))
    p = next(tr.model.parameters())
    p.register_hook(lambda g: g * float("inf") if tr.step in inf_at or "all" in inf_at else g)
    return tr


def test_fp16_loss_scaling_trains_counts_skips_and_resumes_exactly(tmp_path):
    # fp16 autocast + GradScaler on the CPU (the path a T4 takes). Step 3's gradients overflow: that step
    # is skipped (weights kept, scale halved), counted in the history, and the resumed run must continue
    # with the halved scale and the count: weights, EMA, scale and history equal bitwise.
    full = _toy(inf_at=(3,))
    start = [q.detach().clone() for q in full.model.parameters()]
    full.fit(progress=False)
    assert full.scaler is not None and full.skipped_steps == 1
    assert full.history["skipped"] == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    assert full.scaler.get_scale() == 2.0 ** 15
    assert any(not torch.equal(a, b) for a, b in zip(start, full.model.parameters()))   # it trained
    half = _toy(inf_at=(3,))
    for _ in half.steps(5):
        pass
    half.save(tmp_path / "c.pt")
    resumed = _toy(inf_at=(3,), seed=1)
    resumed.load(tmp_path / "c.pt", strict_config=False)   # seed differs: everything must come from the file
    resumed.fit(progress=False)
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(full.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(a, b)
    assert resumed.scaler.get_scale() == full.scaler.get_scale() and resumed.skipped_steps == 1
    assert resumed.history == full.history


def test_a_run_whose_every_step_is_skipped_says_so():
    short = _toy(steps=4, inf_at=("all",))
    with pytest.warns(RuntimeWarning, match="skipped all 4 steps"):
        short.fit(progress=False)
    long = _toy(steps=MAX_SKIPPED_IN_A_ROW + 5, inf_at=("all",))
    with pytest.raises(FloatingPointError, match=f"skipped every one of the last {MAX_SKIPPED_IN_A_ROW} steps"):
        long.fit(progress=False)
    assert long.step == MAX_SKIPPED_IN_A_ROW
    ok = _toy(steps=4, inf_at=(0,))   # one skipped step of four: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok.fit(progress=False)


def test_fp16_image_run_reports_its_skipped_steps(tmp_path):
    # the U-Net in fp16 on the CPU; GradScaler starts at 2^16, so early steps may overflow and be skipped:
    # whatever their number, the summary and the history (cumulative, one entry a step here) agree
    s = train(get_recipe("tiny-ct").with_overrides(["train.precision='fp16'", "train.batch_size=8",
                                                    "train.log_every=1"]), tmp_path / "run", steps=3, progress=False)
    skipped = json.loads((tmp_path / "run" / "history.json").read_text())["skipped"]
    assert s["recipe"]["train"]["precision"] == "fp16" and len(skipped) == 3
    assert skipped == sorted(skipped) and skipped[-1] == s["skipped_steps"] <= 3


def test_the_mps_generator_is_saved_and_restored(monkeypatch):
    state = torch.arange(8, dtype=torch.uint8)
    seen = {}
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: state.clone(), raising=False)
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda s: seen.update(s=s), raising=False)
    mps = torch.device("mps")
    assert torch.equal(devices.device_rng_state(mps), state)
    assert devices.set_device_rng_state(mps, state) and torch.equal(seen["s"], state)
    assert devices.device_rng_state(torch.device("cpu")) is None


# ------------------------------------------------------------------ threads and the compile cache
def test_image_commands_take_threads_from_the_option_or_the_environment(monkeypatch, tmp_path):
    import cmlite.threads as threads
    seen = []
    monkeypatch.setattr(run_mod, "train", lambda *a, **k: seen.append(torch.get_num_threads()) or {
        "device": "cpu", "steps": 0, "images_per_second": 0.0})
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv(ENV_VAR, raising=False)
        assert main(["train", "tiny-ct", "--steps", "1", "--out", str(tmp_path / "a"), "--threads", "3"]) == 0
        monkeypatch.setenv(ENV_VAR, "2")
        assert main(["train", "tiny-ct", "--steps", "1", "--out", str(tmp_path / "b")]) == 0
        monkeypatch.delenv(ENV_VAR)
        torch.set_num_threads(5)
        assert main(["train", "tiny-ct", "--steps", "1", "--out", str(tmp_path / "c")]) == 0
        assert seen == [3, 2, threads.IMAGE_THREADS or 5]
        monkeypatch.setenv(ENV_VAR, "two")
        assert main(["train", "tiny-ct", "--steps", "1", "--out", str(tmp_path / "d")]) == 2
    finally:
        torch.set_num_threads(before)
    for cmd in (["sample", "x"], ["eval", "x"], ["edit", "x", "denoise"]):
        with pytest.raises(SystemExit):
            main([*cmd, "--threads", "0"])


def test_compile_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert devices.compile_cache() == str(tmp_path / "xdg" / "cmlite" / "inductor")
    import os
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "xdg" / "cmlite" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))   # a set variable wins
    assert devices.compile_cache() == str(tmp_path / "mine") and (tmp_path / "mine").is_dir()
    assert devices.compile_cache(tmp_path / "given") == str(tmp_path / "given")   # --cache-dir wins
    from torch._inductor.runtime.cache_dir_utils import cache_dir
    assert cache_dir() == str(tmp_path / "given")   # where Inductor will write


@pytest.mark.parametrize("drawn", [True, False])
def test_the_final_line_names_samples_png_only_when_it_was_drawn(drawn, tmp_path, monkeypatch, capsys):
    # A budget with no room for the grid leaves no samples.png; the last line must not point at one.
    import cmlite.image.run as run_mod
    summary = {"steps": 3, "images_per_second": 10.0, "device": "cpu", "samples_png": drawn}
    monkeypatch.setattr(run_mod, "train", lambda *a, **k: summary)
    assert main(["train", "tiny-ct", "--out", str(tmp_path / "r"), "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert ("samples in" in out) == drawn and ("no samples.png" in out) != drawn
    assert drawn or f"cmlite sample {tmp_path / 'r'}" in out
