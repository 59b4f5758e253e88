r"""The wall-clock budget of a training run (``cmlite train --minutes M``).

The budget counts from the start of the process (the command; for a call of
:func:`cmlite.image.run.train`, from the call): importing torch, loading the data, building and compiling
the networks and calibrating are all inside it. The step count K (and so the CT / iCT schedule horizon)
is calibrated from the measured step time by :func:`calibrate`:

1. warm-up steps (compilation, cuDNN autotuning), each waited for, then
2. timed steps, waited for at the end only (the device runs ahead of the host as it does in training),

each phase at most ``n_max`` steps and at most :data:`CAL_FRACTION` of the budget. The steps are real
training steps, kept. If the budget runs out during calibration (one step takes longer than what is
left: a big model on a CPU) training stops after that step, with a message. K then fills what is left
of the budget, less the estimated time of the final sample grid.

While training, :class:`Recalibrator` measures the step time again every :data:`RECAL_EVERY` of the budget
and refits K when the step time has changed (another job started or ended on a shared GPU), so that the
run's schedule ends with its budget instead of being cut off or finished early (one process; under data
parallelism K stays as calibrated). When the run itself changes its step time (an eager start that goes on
compiled), the next window is :data:`QUICK_STEPS` steps, however short: a compiled step can be several times
faster, and the steps left of an eagerly calibrated K may take less than one regular window.

The run ends within the budget plus one training step plus the final writes (checkpoint, weights,
history: a second or two); the sample grid is drawn only where its estimated time fits in what is left,
give or take a step or 1% of the budget (``cmlite.image.run.GRID_GRACE``: the final checkpoint may have used
the time kept for a grid of a fraction of a second); else the run says so and ``cmlite sample`` draws it later.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable

CAL_FRACTION = 0.1       # each calibration phase uses at most this share of the budget
RECAL_EVERY = 0.1        # the step time is measured again every this share of the budget while training
RECAL_TOL = 0.03         # K is refitted when it is off by more than this share of the steps left
QUICK_STEPS = 20         # after a known change of the step time (going compiled), K is refitted from this many steps
GRID_IMAGES = 64         # the run's final sample grid
TRAIN_STEP_FORWARDS = 3  # a training step costs at least ~3 forward passes per image (forward + backward)

_IMPORTED_AT = time.monotonic()


def seconds_since_process_start() -> float:
    """How long this process has run: from the kernel's start time on Linux, else since cmlite's image
    package was imported (which misses the interpreter's and torch's start-up)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])   # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED_AT


class Budget:
    """``minutes`` of wall clock from ``start`` (a reading of ``clock``); None = no budget."""

    def __init__(self, minutes: float | None, start: float, clock: Callable[[], float] = time.monotonic):
        self.minutes, self.start, self.clock = minutes, start, clock
        self.total = None if minutes is None else minutes * 60.0
        self.deadline = None if minutes is None else start + self.total

    def used(self) -> float:
        """Seconds since the start."""
        return self.clock() - self.start

    def left(self) -> float | None:
        """Seconds to the deadline (negative past it), None without a budget."""
        return None if self.deadline is None else self.deadline - self.clock()


def grid_seconds(seconds_per_step: float, batch_size: int, nfe: int, images: int = GRID_IMAGES) -> float:
    """Estimated time of sampling ``images`` images with ``nfe`` network evaluations each, from the time of
    a training step of ``batch_size`` images (a step costs at least :data:`TRAIN_STEP_FORWARDS` forward
    passes per image, so this overestimates)."""
    return seconds_per_step * nfe * images / (TRAIN_STEP_FORWARDS * batch_size)


def steps_that_fit(step: int, seconds_left: float, per_step: float, grid_s: float = 0.0) -> int:
    """K for a run at ``step``: the steps of ``per_step`` seconds that fit in ``seconds_left`` less the final
    grid's ``grid_s``, added to ``step`` (none when nothing fits)."""
    return step + max(int((seconds_left - grid_s) / per_step), 0)


def calibrate(trainer, budget: Budget, n_max: int, sync: Callable[[], None] = lambda: None,
              agree: Callable[..., list] = lambda *flags: list(flags),
              on_step: Callable[[float], None] = lambda now: None) -> float | None:
    """Run warm-up then timed steps of ``trainer`` (see the module docstring); return the seconds per step
    of the timed ones, or None when the budget ran out (training stops there: the steps done are kept).

    ``sync`` waits for the device; ``agree(out_of_time, phase_done)`` makes every data-parallel rank take
    the same decisions (rank 0's); ``on_step(now)`` is called after each step with the clock's reading."""
    clock = budget.clock
    per_step = None
    for phase in ("warm-up", "timing"):
        t_phase, n = clock(), 0
        while True:
            trainer.train_step()
            n += 1
            if phase == "warm-up":  # wait for this step: compilation and autotuning are in it
                trainer.flush()
                sync()
            now = clock()
            on_step(now)
            out_of_time, done = agree(now >= budget.deadline,
                                      n >= n_max or now - t_phase >= CAL_FRACTION * budget.total)
            if out_of_time:
                trainer.flush()
                sync()
                return None
            if done:
                break
        if phase == "timing":
            trainer.flush()
            sync()
            per_step = (clock() - t_phase) / n
    return per_step


class Say:
    """Progress lines on stderr (rank 0 only; ``quiet`` keeps only warnings)."""

    def __init__(self, enabled: bool, quiet: bool = False, name: str = "cmlite train"):
        self.enabled, self.quiet, self.name = enabled, quiet, name

    def __call__(self, msg: str, warning: bool = False) -> None:
        if self.enabled and (warning or not self.quiet):
            print(f"{self.name}: {msg}", file=sys.stderr, flush=True)


class Recalibrator:
    """Refits the step count K to what is left of ``budget`` as the step time changes.

    Call it with (step, clock reading) at steps where the device has been waited for. The first call starts
    a window. A call at least :data:`RECAL_EVERY` of the budget after the window's start (or, after
    ``restart(quick=True)``, :data:`QUICK_STEPS` steps after it) measures the seconds per step over the window,
    then starts a new one. If the steps that fit in the rest of the budget
    then differ from what is left of K by more than :data:`RECAL_TOL` of it, it returns the new K: step +
    (time left - ``grid_seconds(rate)``) / rate. Otherwise it returns None. Times after the deadline give
    K = step: training stops."""

    def __init__(self, budget: Budget, K: int, grid_seconds: Callable[[float], float] = lambda rate: 0.0):
        if budget.deadline is None:
            raise ValueError("Recalibrator needs a time budget (minutes)")
        self.budget, self.K, self.grid_seconds = budget, int(K), grid_seconds
        self.t0: float | None = None
        self.step0 = 0
        self.quick = False

    def restart(self, quick: bool = False) -> None:
        """Forget the current window (the step time has just changed, e.g. the run went on compiled): the next
        call starts a new one. ``quick``: that window closes after :data:`QUICK_STEPS` steps, whatever their
        time (see :meth:`due`)."""
        self.t0, self.quick = None, quick

    def due(self, step: int) -> bool:
        """Whether to call at ``step`` off the regular cadence: a quick window opens or closes there."""
        return self.quick and (self.t0 is None or step - self.step0 >= QUICK_STEPS)

    def __call__(self, step: int, now: float) -> int | None:
        if self.t0 is None or step <= self.step0:
            self.t0, self.step0 = now, step
            return None
        if now - self.t0 < RECAL_EVERY * self.budget.total and not self.due(step):   # due: a quick window closes
            return None
        self.quick = False
        rate = (now - self.t0) / (step - self.step0)
        self.t0, self.step0 = now, step
        K = steps_that_fit(step, self.budget.deadline - now, rate, self.grid_seconds(rate))
        if abs(K - self.K) <= RECAL_TOL * max(self.K - step, 1):
            return None
        self.K = K
        return K
