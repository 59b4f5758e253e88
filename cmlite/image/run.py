r"""Runs: train a recipe into a folder, load it back, sample from it.

A run folder holds::

    recipe.json        the recipe, the data shape, and what the run measured (steps, images/s, minutes)
    checkpoint.pt      the full training state (atomic, every few minutes and at the end; --resume)
    ema.safetensors    the evaluation-EMA weights alone: share and load them without pickle
    history.json       loss, N, mu, lr every log_every steps
    samples.png        a grid of one-step samples (two-step for ..., ODE samples for a teacher)
    compile-ahead.log  the output of the process that compiled the run's graphs while it trained eagerly
    compile-ahead.json written by that process when it had finished (:mod:`cmlite.image.compile_ahead`)

:func:`train` is what ``cmlite train`` runs, :func:`load_run` and :func:`sample_run` what ``cmlite sample``
and ``cmlite eval`` use. All of it goes through the core: :func:`~cmlite.image.recipes.build` makes the
core's model, loss and schedule, :class:`~cmlite.training.Trainer` trains them.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from ..sampling import multistep_sample
from ..schedules import EPS, T_MAX, Refitted, karras_boundaries, refit
from ..ode import solve
from ..devices import (COMPILE_AHEAD_MIN_MINUTES, COMPILE_PAYS_AFTER_MINUTES, compile_cache, compile_marker,
                       compile_pays, compile_plan, resolve_compile, source_digest,
                       resolve_device, resolve_precision)
from ..training import (ConfigMismatchError, Trainer, TrainingInterrupted, compile_net, init_distributed,
                        load_checkpoint)
from .compile_ahead import CompileAhead, memory_fraction_left
from .budget import GRID_IMAGES, Budget, Recalibrator, Say, calibrate, grid_seconds, steps_that_fit
from .data import (GPUBatches, ImageData, hold_out_floor, load_dataset, make_grid, save_png, synthetic_dataset,
                   to_uint8)
from .recipes import RECIPES, Recipe, build, build_net

CHECKPOINT, WEIGHTS, RECIPE_FILE = "checkpoint.pt", "ema.safetensors", "recipe.json"
STEADY_AFTER = 10  # steps before the steady-state throughput is measured (compilation, cudnn autotuning)
# the budget left below which a run that trains eagerly no longer goes on compiled: loading the graphs costs
# 3.7-4.6 s on an H100 (docs/results/2026-12-06-h100); the graphs of another process come after 1.5-2 minutes,
# so a run that has that little left is near its end
MIN_LEFT_TO_GO_COMPILED_S = {"ahead": 30.0, "cached": 10.0}
GRID_GRACE = 0.01   # the share of the budget by which drawing samples.png may overrun it


def _cache_counts() -> tuple[int, int]:
    """Inductor's FX-graph cache hits and misses in this process so far."""
    from torch._dynamo.utils import counters
    return counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]


def load_data(recipe: Recipe, root=None, split: str = "train", download: bool = False) -> ImageData:
    """The recipe's data set ('synthetic' is made here: 2048 16x16 images of 4 shape classes)."""
    if recipe.dataset == "synthetic":
        res = recipe.net_overrides.get("img_resolution", 16)
        ch = recipe.net_overrides.get("in_channels", 1)
        return synthetic_dataset(2048, channels=ch, resolution=res, num_classes=4,
                                 seed=0 if split == "train" else 1)
    if recipe.dataset.startswith("folder:"):
        if split != "train":
            raise FileNotFoundError(f"an image folder ({recipe.dataset}) has no {split} split")
        return load_dataset("folder", root=recipe.dataset[len("folder:"):], split=split)
    return load_dataset(recipe.dataset, root=root, split=split, download=download)


def load_train_test(recipe: Recipe, root=None, download: bool = False) -> tuple[ImageData, ImageData | None]:
    """(the images a recipe trains on, unseen real images): the training and test splits; where the data
    set has no test split here (CIFAR-10's JPEG archive, image folders), the training split less a fixed
    held-out set, and that set (:func:`cmlite.image.data.hold_out_floor`). :func:`train` trains on the
    first part, so the second is never trained on; it is the FID floor's and the classifier's test set.
    (All images and None for a folder of fewer than 10 images: too few to hold any out.)"""
    train = load_data(recipe, root, "train", download)
    try:
        return train, load_data(recipe, root, "test")
    except FileNotFoundError:
        return hold_out_floor(train) if len(train) >= 10 else (train, None)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def save_weights(module: torch.nn.Module, path: Path) -> None:
    """The module's state as safetensors (atomic)."""
    from safetensors.torch import save_file
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


def _check_shape(info: dict, data: ImageData, recipe: Recipe, where: str) -> None:
    shape = [data.channels, *(data.images.shape[2:])]
    if info.get("shape") not in (None, shape):
        raise ValueError(f"{where} was made for data of shape {info.get('shape')} but recipe {recipe.name!r} "
                         f"loads data of shape {shape}")


def train(recipe: Recipe, out: str | os.PathLike, *, data_root=None, teacher: str | os.PathLike | None = None,
          minutes: float | None = None, steps: int | None = None, resume: bool = False, download: bool = False,
          progress: bool = True, callback=None, callback_every: int | None = None,
          checkpoint_minutes: float = 5.0, force_resume: bool = False, cache_dir: str | os.PathLike | None = None,
          compile_ahead: bool | None = None, draw_samples: bool = True,
          clock: Callable[[], float] | None = None, started_at: float | None = None) -> dict:
    """Train ``recipe`` into the folder ``out``; return the run's summary (also in recipe.json).

    ``minutes``: a wall-clock budget for the whole run (default the recipe's, unless ``steps`` is given),
    counted from ``started_at`` (a reading of ``clock``; default: the call; the command line passes the
    process's start); unless ``steps`` is given, the step count (and the CT / iCT schedule horizon K) is
    calibrated to it from the time of the first steps (:mod:`cmlite.image.budget`). ``steps``: a fresh run
    trains exactly this many (K = steps); a resumed one stops at this step (K stays the run's).
    ``teacher``: the run folder of a trained teacher (``cd`` recipes; optional initialisation for ``ct``).
    ``resume``: continue from ``out/checkpoint.pt`` exactly; refused if the recipe or shapes differ, or if
    settings differ unless ``force_resume``. ``cache_dir``: torch.compile's cache folder
    (:func:`cmlite.devices.compile_cache`). ``compile_ahead``: train eagerly while another process compiles
    the graphs, then go on compiled (:mod:`cmlite.image.compile_ahead`); None lets ``compile='auto'`` decide
    (:func:`cmlite.devices.compile_plan`: with the graphs already cached, the first step eagerly and the
    cached graphs from the second). True forces it, also on a CPU; False compiles before the first step where
    compiling pays (:func:`cmlite.devices.compile_pays`). ``draw_samples``: the final sample grid
    (samples.png). ``clock``: the clock of the budget and the timings (default
    ``time.monotonic``; tests pass a fake one). Progress lines go to stderr unless ``progress`` is False (warnings always do).
    SIGTERM or Ctrl-C stops the run with a message: during training after writing the checkpoint
    (:class:`~cmlite.training.TrainingInterrupted`), before it with :class:`StoppedEarly` (recipe.json says
    so). Under ``torchrun`` every rank runs this; rank 0 writes the files.

    The summary holds, besides the recipe: steps, K, images/s (whole run, and steady: after the first
    10 steps), ``startup_s`` (seconds from the start to the end of the first training step: imports, data,
    networks, compilation), ``skipped_steps`` (fp16 loss scaling), the budget's figures, and for a run that
    compiled ahead, ``compile_ahead``: the eager steps before it went on compiled, when the graphs were ready,
    the seconds of the first compiled step, and the FX-graph cache hits and misses in it; for a run that
    loaded cached graphs after its first step, the same as ``compile_cached``."""
    clock = clock or time.monotonic
    t_start = clock() if started_at is None else started_at
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float))
                                or not math.isfinite(minutes) or minutes <= 0):
        raise ValueError(f"--minutes must be a positive number of minutes; got {minutes!r} "
                         "(for a fixed number of steps use --steps)")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"--steps must be a positive integer; got {steps!r}")
    rank, world_size = init_distributed()
    say = Say(rank == 0, quiet=not progress)   # warnings even when quiet
    out = Path(out)
    recipe = copy.deepcopy(recipe)   # its train settings become what 'auto' resolves to here: not the caller's
    cfg = recipe.train.check()
    device = resolve_device(cfg.device)
    cfg.device = str(device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    auto_compile = cfg.compile == "auto"
    cfg.precision, cfg.compile = resolve_precision(cfg.precision, device), resolve_compile(cfg.compile, device)
    minutes = recipe.minutes if minutes is None and steps is None else minutes
    marker, late = None, None   # late: how a run that starts eagerly goes on compiled ('ahead' or 'cached')
    if cfg.compile or compile_ahead:
        cache_dir = compile_cache(cache_dir)
        marker = compile_marker(cache_dir, {
            "net": recipe.net, "net_overrides": recipe.net_overrides, "dataset": recipe.dataset,
            "method": recipe.method, "conditional": recipe.conditional, "batch": cfg.batch_size // world_size,
            "precision": cfg.precision, "channels_last": cfg.channels_last, "cuda_graphs": cfg.cuda_graphs,
            "torch": torch.__version__, "card": card, "code": source_digest()})
        warm = os.path.exists(marker)
        if compile_ahead is None and auto_compile:
            plan = compile_plan(minutes, warm, world_size)
        elif compile_ahead:
            plan = "ahead"
        else:
            plan = "now" if not auto_compile or compile_pays(minutes, warm) else "eager"
        if plan in ("ahead", "cached"):
            if world_size > 1:
                raise ValueError("compile_ahead works in one process; under torchrun the ranks compile as they start")
            cfg.compile, late = False, plan   # eager until the graphs are in the cache / until the first step is done
        if plan == "ahead":
            say("training eagerly while another process compiles this run's graphs into the compile cache (its "
                f"log: {out / 'compile-ahead.log'}); the run goes on compiled when they are ready")
        elif plan == "cached":
            say("the compile cache holds this run's graphs: the first step trains eagerly, the next ones compiled")
        elif plan == "eager":
            cfg.compile, marker = False, None
            least = COMPILE_AHEAD_MIN_MINUTES if world_size == 1 else COMPILE_PAYS_AFTER_MINUTES
            say(f"compile 'auto': eager, because the compile cache does not hold this run's graphs yet and "
                f"compiling them (1.5-4.5 minutes on an H100) would not pay back within a {minutes:g}-minute "
                f"budget (it does from {least:g} minutes). Pass --set train.compile=True to compile")
    budget = Budget(minutes, t_start, clock)
    ckpt_path = out / CHECKPOINT
    saved = _open_checkpoint(out, recipe, resume)
    if saved is not None:
        at, stop_at = saved["step"], steps or saved["meta"]["K"]
        if stop_at <= at:
            raise ValueError(f"the run in {out} is already at step {at}" + ("" if steps else f" (its K = {stop_at})")
                             + f": nothing to train. When resuming, --steps is the step to stop at: give more "
                               f"than {at} to train on")
    elif rank == 0:
        _start_folder(out, recipe)
    stage = _Stage(out, recipe, resume, ckpt_path, writer=rank == 0)
    ahead = CompileAhead(recipe, out, cache_dir, teacher=teacher, data_root=data_root) if late == "ahead" else None
    with stage, ahead or contextlib.nullcontext():
        stage.now = "loading the data"
        say(f"{recipe.name}: loading the data ({recipe.dataset}) on {device}, {cfg.precision}"
            + (", compiled" if cfg.compile else "") + f", {torch.get_num_threads()} CPU threads")
        t_data = clock()
        data = load_train_test(recipe, data_root, download)[0]   # without the held-out floor images, if any
        say(f"{len(data)} training images {tuple(data.images.shape[1:])} in {clock() - t_data:.1f} s")
        num_classes = data.num_classes if recipe.conditional else 0
        if recipe.conditional and not num_classes:
            raise ValueError(f"recipe {recipe.name!r} is class-conditional but data set {recipe.dataset!r} has no labels")
        stage.now = "building the networks"
        torch.manual_seed(cfg.seed)  # the initial weights depend on the seed alone
        net = build_net(recipe, data.channels, data.images.shape[-1], num_classes)
        teacher_model, teacher_info = None, None
        if recipe.method == "cd" or (teacher is not None and recipe.init_from_teacher):
            if teacher is None:
                raise ValueError(f"recipe {recipe.name!r} distils a teacher: pass --teacher RUN, a run folder made "
                                 f"by {_teacher_command(recipe)}")
            teacher_model, teacher_info = load_run(teacher, device)
            if teacher_info["recipe"]["method"] != "teacher":
                raise ValueError(f"{teacher} is a {teacher_info['recipe']['method']!r} run, not a teacher")
            if cfg.channels_last:  # the online network's layout (the Trainer moves it), so cuDNN copies no weights
                teacher_model.to(memory_format=torch.channels_last)
            if cfg.compile:
                compile_net(teacher_model.net, cfg.channels_last)
            _check_shape(teacher_info, data, recipe, f"the teacher {teacher}")
            if recipe.init_from_teacher and saved is None:
                net.load_state_dict(teacher_model.net.state_dict())
        K = saved["meta"]["K"] if saved is not None else steps or cfg.steps
        model, loss, schedule = build(recipe, net, teacher_model, steps=K)
        refitted = saved["meta"].get("refit") if saved is not None else None   # [k0, v0]: see schedules.Refitted
        if refitted is not None and schedule is not None:
            schedule = Refitted(schedule, K, *refitted)
        batches = GPUBatches(data if recipe.conditional else ImageData(data.images, None, 0, data.name),
                             cfg.batch_size // world_size, device, flip=recipe.flip, channels_last=cfg.channels_last,
                             seed=cfg.seed, rank=rank, world_size=world_size)
        meta = {"recipe": recipe.name, "method": recipe.method, "shape": [data.channels, *data.images.shape[2:]],
                "num_classes": num_classes, "K": K, **({"refit": refitted} if refitted is not None else {})}
        cfg.steps = steps if (saved is not None and steps) else K  # resume: --steps is where to stop; K stays
        trainer = Trainer(model, loss, batches, cfg, schedule, meta=meta, clock=clock)
        if saved is not None:
            _resume_from(trainer, saved, ckpt_path, force_resume)
            del saved
        step0, t_train0, first = trainer.step, clock(), {}
        late_info: dict = {}   # a late compile (ahead or cached): when and how the run went on compiled
        nfe = teacher_nfe(18) if recipe.method == "teacher" else 1   # the final sample grid's evaluations
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

        def _mark(marker) -> None:
            if marker is not None and rank == 0:
                try:
                    Path(marker).touch()
                except OSError as e:   # only a hint for later short runs: training goes on
                    say(f"could not mark the compile cache ({e}); later short runs will train eagerly", warning=True)

        def first_step(now):
            if not first:
                first["t"] = now
                if ahead is not None:   # another process compiles while this one trains on, if the card has room
                    fraction = memory_fraction_left(device)
                    if fraction == 0.0:
                        late_info["here"] = True
                        say("the card has too little free memory for a second process: compiling here, at the "
                            "next step", warning=True)
                    else:
                        ahead.start(fraction)
                if cfg.compile:   # the cache now holds the run's graphs
                    _mark(marker)
                say(f"first training step done {now - t_start:.1f} s after the start (imports, data, networks"
                    + (", compilation" if cfg.compile else "") + ")")

        def set_K(K: int) -> None:   # the step count, and the schedule whose horizon it is, continued from
            new = build(recipe, net, teacher_model, steps=K)[2]   # where it was (N never falls)
            if new is not None and trainer.schedule is not None:
                new = refit(trainer.schedule, trainer.step, trainer.meta["K"], new, K)
                trainer.meta["refit"] = [new.k0, new.v0]
            trainer.schedule = new
            trainer.config.steps = trainer.meta["K"] = K

        def go_compiled(tr) -> None:   # a late compile: from the cache, or once the other process is done
            state = "ready" if late == "cached" or late_info.get("here") else ahead.state()
            if state == "failed":
                say(f"{ahead.error}\nthe run trains on eagerly", warning=True)
                late_info["failed"] = True
            elif state == "ready" and budget.deadline is not None and budget.left() < MIN_LEFT_TO_GO_COMPILED_S[late]:
                say(f"the compiled graphs are ready but only {budget.left():.0f} s of the budget are left: "
                    "the run ends eagerly")
                late_info["too_late"] = True
            elif state == "ready":
                if teacher_model is not None:
                    compile_net(teacher_model.net, cfg.channels_last)
                trainer.compile_graphs()
                late_info.update(eager_steps=tr.step, ready_after_s=clock() - t_start, t=clock(),
                                  hits=_cache_counts())
                if late == "ahead":
                    say(f"compiled graphs ready {late_info['ready_after_s']:.1f} s after the start: compiled from "
                        f"step {tr.step} on")

        def after_step(tr, now) -> bool:
            """The first step's bookkeeping and a late compile's; True right after the first compiled step."""
            first_step(now)
            if late is None:
                return False
            if not late_info.keys() & {"eager_steps", "failed", "too_late"}:
                go_compiled(tr)
            elif "eager_steps" in late_info and "first_compiled_step_s" not in late_info:
                sync()   # the first compiled step: the graphs were loaded from the cache in it
                late_info["first_compiled_step_s"] = clock() - late_info.pop("t")
                hits, misses = (a - b for a, b in zip(_cache_counts(), late_info.pop("hits")))
                late_info.update(fx_graph_cache_hits=hits, fx_graph_cache_misses=misses)
                say(f"first compiled step: {late_info['first_compiled_step_s']:.1f} s ({hits} compiled graphs "
                    f"loaded from the cache, {misses} compiled here)")
                _mark(marker)
                return True
            return False

        per_step, n_cal = None, 0
        if budget.deadline is not None and steps is None and trainer.step == 0:  # calibrate K to the budget
            stage.now = "calibrating the step count"
            say(f"calibrating the step count to the {minutes:g}-minute budget ({budget.used():.1f} s used so far)")
            per_step = calibrate(trainer, budget, 30 if device.type == "cuda" else 5, sync,
                                 agree=lambda *f: _rank0_decides(f, device, world_size),
                                 on_step=lambda now: after_step(trainer, now))
            n_cal = trainer.step
            if per_step is None:
                K = trainer.step
                say(f"the {minutes:g}-minute budget ran out after {K} training steps of about "
                    f"{(clock() - t_train0) / K:.1f} s" + (" (the first includes compilation)" if cfg.compile else "")
                    + ": training stops here. Give more --minutes, or --steps for a fixed number of steps",
                    warning=True)
            else:
                K = steps_that_fit(trainer.step, budget.left(), per_step, grid_seconds(per_step, cfg.batch_size, nfe))
            if world_size > 1:  # every rank must agree on K
                k = torch.tensor([K], device=device)
                torch.distributed.broadcast(k, 0)
                K = int(k)
            if per_step is not None:
                say(f"{per_step:.3g} s per step: K = {K} steps fill the budget ({trainer.step} calibration steps, "
                    f"{budget.used():.1f} s used)")
            set_K(K)
        stage.now = "training"
        if rank == 0:
            _write_json(out / RECIPE_FILE, {"recipe": recipe.to_dict(), "shape": meta["shape"],
                                            "num_classes": num_classes, "status": "training"})
        left = None
        if budget.deadline is not None:
            reserve = grid_seconds(per_step, cfg.batch_size, nfe) if per_step else 0.0
            left = max(budget.left() - reserve, 0.0) / 60
        # steady-state throughput: (step, time) at the log steps after STEADY_AFTER steps (compilation and
        # autotuning done); the host has just read the loss there, so these are in step with the device
        marks, every = [], max(cfg.log_every, 1)
        # a budget calibrated here is refitted as the step time changes (one process; see budget.Recalibrator)
        recal = Recalibrator(budget, trainer.meta["K"], lambda rate: grid_seconds(rate, cfg.batch_size, nfe)) \
            if per_step is not None and world_size == 1 else None
        if recal is not None and "first_compiled_step_s" in late_info:   # went compiled while calibrating: the
            recal.restart(quick=True)                                    # rate may mix eager and compiled steps

        def timed(tr):
            if after_step(tr, clock()):
                marks.clear()   # the steady throughput is measured compiled
                if recal is not None:   # the step time has just fallen: K is refitted within a few steps
                    recal.restart(quick=True)
            steady = tr.step - step0 >= STEADY_AFTER
            log_step = tr.step % every == 0
            if (log_step and (steady or recal is not None)) or (recal is not None and recal.due(tr.step)):
                sync()
                now = clock()
                if steady and log_step:
                    marks.append((tr.step, now))
                K_new = recal(tr.step, now) if recal is not None and tr.step < tr.config.steps else None
                if K_new is not None:
                    say(f"the step time changed: K = {K_new} steps (was {tr.meta['K']}) fill the rest of the "
                        f"budget; the schedule is refitted to it")
                    set_K(K_new)
            if callback is not None and callback_every and tr.step % callback_every == 0:
                callback(tr)
        stage.fit = True
        trainer.fit(steps=0 if left == 0 and world_size == 1 else None, progress=progress, desc=recipe.name, minutes=left,
                    checkpoint=ckpt_path, checkpoint_minutes=checkpoint_minutes, callback=timed, callback_every=1)
        stage.fit = False
        sync()
        t_end = clock()
        seconds = t_end - t_train0
        done = trainer.step - step0
        summary = {"recipe": recipe.to_dict(), "shape": meta["shape"], "num_classes": num_classes, "status": "done",
                   "steps": trainer.step, "K": trainer.meta["K"], "world_size": world_size,
                   "images_seen": trainer.step * cfg.batch_size, "epochs": batches.epoch, "train_images": len(data),
                   "train_seconds_this_process": seconds,
                   "images_per_second": done * cfg.batch_size / max(seconds, 1e-9),
                   "steady_images_per_second": (marks[-1][0] - marks[0][0]) * cfg.batch_size
                   / max(marks[-1][1] - marks[0][1], 1e-9) if len(marks) > 1 else None,
                   "steady_steps": marks[-1][0] - marks[0][0] if len(marks) > 1 else 0,
                   "startup_seconds": (marks[0][1] - t_start) if marks else None,
                   "startup_s": first["t"] - t_start if first else None,
                   "minutes_budget": minutes, "calibrated_seconds_per_step": per_step, "calibration_steps": n_cal,
                   "skipped_steps": trainer.skipped_steps,
                   "device": card,
                   "teacher": str(teacher) if teacher is not None else None,
                   "final_loss": trainer.history["loss"][-1] if trainer.history["loss"] else None}
        if ahead is not None:
            summary["compile_ahead"] = {"seconds": ahead.seconds, **late_info}
        elif late == "cached":
            summary["compile_cached"] = late_info
        if trainer.skipped_steps:
            say(f"fp16 loss scaling skipped {trainer.skipped_steps} of {trainer.step} steps (their gradients "
                "overflowed; the scale was lowered)", warning=done > 0 and trainer._skip_streak >= done)
        stage.writing()   # a signal now waits until the files are written
        if rank == 0:
            per_step_now = seconds / done if done else per_step
            draw = draw_samples
            if budget.deadline is not None and per_step_now:
                est = grid_seconds(per_step_now, cfg.batch_size, nfe)
                # the grid may end the run a step or GRID_GRACE of the budget late: the final checkpoint and the
                # last queued steps can use up the seconds kept for a grid that takes a fraction of a second
                if est > budget.left() + max(per_step_now, GRID_GRACE * budget.total):
                    draw = False
                    say(f"samples.png not drawn: it would take about {est:.0f} s, past the {minutes:g}-minute "
                        f"budget; draw samples with `cmlite sample {out}`", warning=True)
            try:
                save_weights(trainer.ema, out / WEIGHTS)
                _write_json(out / "history.json", trainer.history)
                if draw:
                    imgs = sample_images(trainer.ema, summary, GRID_IMAGES,
                                         steps=1 if recipe.method != "teacher" else 18, device=device, seed=0)
                    save_png(out / "samples.png", make_grid(imgs, nrow=8))
                summary["samples_png"] = draw
                summary["wall_seconds"] = clock() - t_start   # to here; the process ends a moment later
                _write_json(out / RECIPE_FILE, summary)       # last: status 'done' means every file is there
            except OSError as e:
                raise OSError(e.errno, f"cannot write the run's files in {out}: {e.strerror or e}. The checkpoint "
                                       f"{ckpt_path} is complete: free some space and run again with --resume "
                                       "(it writes them)") from e
    return summary


class StoppedEarly(KeyboardInterrupt):
    """SIGTERM or Ctrl-C stopped :func:`train` outside the training loop (while loading data, compiling,
    calibrating, or, deferred, after writing the final files); the message says what is left."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class _Stage:
    """What :func:`train` is doing, for the message when a signal stops it outside ``Trainer.fit`` (which
    handles its own): SIGTERM raises :class:`StoppedEarly` (Ctrl-C's KeyboardInterrupt becomes one), and
    a fresh run's recipe.json records where it stopped. With ``defer``, a signal waits until the block ends."""

    def __init__(self, folder: Path, recipe: Recipe, resume: bool, ckpt_path: Path, writer: bool = True):
        self.folder, self.recipe, self.resume, self.ckpt, self.writer = folder, recipe, resume, ckpt_path, writer
        self.now, self.fit, self.defer, self.pending = "starting", False, False, None
        self.previous, self.previous_int = None, None

    def _on_signal(self, signum, frame):
        if self.defer:
            self.pending = signum
        else:
            raise self._stopped(signum)

    def _stopped(self, signum) -> StoppedEarly:
        name = signal.Signals(signum).name
        if self.defer:
            return StoppedEarly(f"{name} arrived while writing the run's files; they were finished first: "
                                f"the run in {self.ckpt.parent} is complete", signum)
        if self.resume:
            what = f"the checkpoint {self.ckpt} is unchanged: continue with --resume"
        else:
            what = ("nothing was saved (calibration steps are not checkpointed)" if "calibrat" in self.now
                    else "nothing was trained") + "; start the run again"
        self._status(f"stopped by {name} while {self.now}: {what}")
        return StoppedEarly(f"stopped by {name} while {self.now}, before training: {what}", signum)

    def _status(self, status: str) -> None:
        """Record ``status`` in the run's recipe.json, keeping what it holds (a resumed run's summary)."""
        if not self.writer or not self.folder.is_dir():
            return
        info = {}
        try:
            info = json.loads((self.folder / RECIPE_FILE).read_text())
        except (OSError, ValueError):
            pass
        info = info if isinstance(info, dict) else {}
        info.setdefault("recipe", self.recipe.to_dict())
        info["status"] = status
        try:
            _write_json(self.folder / RECIPE_FILE, info)
        except OSError:
            pass

    def writing(self) -> None:
        """From here SIGTERM and Ctrl-C wait until the block ends: the final files are written first."""
        self.now, self.defer = "writing the run's files", True
        try:
            self.previous_int = signal.signal(signal.SIGINT, self._on_signal)
        except ValueError:
            pass

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGTERM, self._on_signal)
        except ValueError:  # not the main thread: no handler
            self.previous = None
        return self

    def __exit__(self, typ, exc, tb):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        if self.previous_int is not None:
            signal.signal(signal.SIGINT, self.previous_int)
        if isinstance(exc, TrainingInterrupted):   # Trainer.fit stopped after writing its checkpoint
            self._status(f"{exc}: continue with --resume")
            return False
        if exc is not None and type(exc) is KeyboardInterrupt and not self.fit:   # Ctrl-C
            raise self._stopped(signal.SIGINT) from None
        if exc is None and self.pending is not None:
            raise self._stopped(self.pending)
        return False


def _rank0_decides(flags, device, world_size) -> list:
    """Rank 0's booleans on every rank (one small broadcast); as they are in one process."""
    if world_size == 1:
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=device)
    torch.distributed.broadcast(t, 0)
    return [bool(v) for v in t.tolist()]


def _teacher_command(recipe: Recipe) -> str:
    """How to train a teacher for ``recipe``'s data: the teacher recipe of the same data set."""
    same = sorted(n for n, r in RECIPES.items() if r.method == "teacher" and r.dataset == recipe.dataset)
    if same:
        return f"`cmlite train {same[0]} --out runs/{same[0]}`"
    return (f"a teacher recipe on the same data, e.g. `cmlite train mnist-teacher --set dataset={recipe.dataset}` "
            f"(the teacher recipes: {', '.join(sorted(n for n, r in RECIPES.items() if r.method == 'teacher'))})")


def _read_status(folder: Path) -> str | None:
    try:
        return json.loads((folder / RECIPE_FILE).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def _open_checkpoint(out: Path, recipe: Recipe, resume: bool) -> dict | None:
    """The checkpoint to resume from (None for a fresh run), with clear errors for a wrong folder."""
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another --out")
    if not resume:
        return None
    if not out.is_dir():
        raise FileNotFoundError(f"--resume: there is no run folder {out}; start the run without --resume")
    if not ckpt_path.is_file():
        status = _read_status(out)
        if status is None and not (out / RECIPE_FILE).is_file():
            raise FileNotFoundError(f"--resume: {out} is not a cmlite run folder (no {CHECKPOINT}, no {RECIPE_FILE}); "
                                    "give the folder that `cmlite train --out` wrote")
        raise FileNotFoundError(f"--resume: {out} has no {CHECKPOINT} (its {RECIPE_FILE} says: {status!r}): the "
                                "run stopped before its first checkpoint. Start it again without --resume")
    saved = load_checkpoint(ckpt_path, "cpu")
    if saved.get("meta", {}).get("recipe") != recipe.name:
        raise ValueError(f"{ckpt_path} belongs to recipe {saved.get('meta', {}).get('recipe')!r}, "
                         f"not {recipe.name!r}: resume with the same recipe")
    return saved


def _resume_from(trainer: Trainer, saved: dict, ckpt_path: Path, force: bool) -> None:
    """Load ``saved`` into ``trainer``; a settings mismatch names the --set values that resume it."""
    try:
        trainer.load_state_dict(saved, strict_config=not force)
    except ConfigMismatchError as e:
        fields = ", ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in sorted(e.diff.items()))
        sets = " ".join(f"train.{k}={a!r}" for k, (a, b) in sorted(e.diff.items()) if not k.startswith("meta."))
        raise ConfigMismatchError(
            f"{ckpt_path} was written with other settings ({fields}). Resume with the checkpoint's settings"
            + (f" (--set {sets})" if sets else "") + ", or pass --force-resume (force_resume=True in Python) to "
            "continue it with the new ones (the run is then no longer the one its recipe describes)", e.diff) from None


def _start_folder(out: Path, recipe: Recipe) -> None:
    """Create the run folder and its recipe.json (status 'starting'), or say clearly why it cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / RECIPE_FILE, {"recipe": recipe.to_dict(), "status": "starting"})
    except OSError as e:
        raise OSError(e.errno, f"cannot write the run folder {out}: {e.strerror or e}. Choose a writable --out "
                               "(with free space)") from e


def load_run(run: str | os.PathLike, device="cpu") -> tuple[torch.nn.Module, dict]:
    """The EMA model of a run folder (from ema.safetensors, else from checkpoint.pt) and its recipe.json.

    Returns (model, info): a :class:`ConsistencyModel` (or the teacher's :class:`EDMDenoiser`) in eval
    mode on ``device``, and the run's summary dict (``info['recipe']`` is the recipe as a dict)."""
    run = Path(run)
    f = run / RECIPE_FILE
    if not run.is_dir():
        raise FileNotFoundError(f"there is no run folder {run}; give a folder made by `cmlite train` (its --out)")
    if not f.is_file():
        raise FileNotFoundError(f"{run} is not a cmlite run folder (no {RECIPE_FILE}); give a folder made by "
                                "`cmlite train` (its --out)")
    try:
        info = json.loads(f.read_text())
    except ValueError as e:
        raise ValueError(f"{f} is not valid JSON ({e}): the run folder is damaged; train the run again") from None
    if not isinstance(info, dict) or "recipe" not in info:
        raise ValueError(f"{f} is not a cmlite run summary (no 'recipe' entry); give a folder made by `cmlite train`")
    if "shape" not in info:
        raise FileNotFoundError(f"the run in {run} has not saved weights yet (its {RECIPE_FILE} says: "
                                f"{info.get('status')!r}); train it (again) first")
    recipe = Recipe.from_dict(info["recipe"])
    C, H, W = info["shape"]
    net = build_net(recipe, C, H, info.get("num_classes", 0))
    model = build(recipe, net, teacher=torch.nn.Identity() if recipe.method == "cd" else None, steps=1)[0]
    if (run / WEIGHTS).is_file():
        from safetensors.torch import load_file
        try:
            state = load_file(str(run / WEIGHTS))
        except Exception as e:  # safetensors raises its own SafetensorError (and OSError) on a damaged file
            raise ValueError(f"{run / WEIGHTS}: not a readable safetensors file ({type(e).__name__}: {e}); it is "
                             f"corrupt or truncated: copy it again, or delete it to load {CHECKPOINT}'s EMA weights "
                             "instead") from None
    elif (run / CHECKPOINT).is_file():
        state = load_checkpoint(run / CHECKPOINT, "cpu")["ema"]
    else:
        raise FileNotFoundError(f"{run} holds neither {WEIGHTS} nor {CHECKPOINT}: the run has not saved weights yet")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"the weights in {run} do not fit recipe {recipe.name!r} at shape {info['shape']}: "
                         f"{str(e).splitlines()[0]}") from None
    return model.to(device).eval().requires_grad_(False), info


def teacher_nfe(N: int) -> int:
    """Network evaluations of the Heun sampler on an N-point grid (Heun on every interval): 2(N - 1)."""
    return 2 * (N - 1)


@torch.no_grad()
def generate(model, x: Tensor, *, teacher_N: int | None = None, ts=None, generator=None,
             extra_args: dict | None = None) -> Tensor:
    """From noise ``x = T z``: a teacher's Heun PF-ODE solve on the ``teacher_N``-point Karras grid
    (2(N - 1) evaluations), or, without ``teacher_N``, consistency sampling (Algorithm 1) at ``ts``."""
    if teacher_N is not None:
        extra = extra_args or {}
        return solve(lambda y, t: model(y, t, **extra), x, karras_boundaries(teacher_N, EPS, T_MAX).flip(0), "heun")
    return multistep_sample(model, x, ts, generator=generator, extra_args=extra_args)


@torch.no_grad()
def sample_images(model, info: dict, n: int, steps: int = 1, ts=None, batch_size: int = 1000, device="cpu",
                  seed: int = 0, class_labels: Tensor | None = None, precision: str = "bf16") -> Tensor:
    """``n`` uint8 samples (n, C, H, W) from a run's model, in batches.

    Consistency models: Algorithm 1 at times ``ts`` (default: [T] for one step, [T, two_step_tau] for two,
    else the first ``steps`` times of the N = 18 grid from T down). A teacher: Heun on the N-point grid with
    N = ``steps`` (NFE = 2(N - 1)). Class-conditional models get ``class_labels`` (default: cycling 0..K-1).
    bf16 autocast on a GPU (``precision='fp32'`` to turn it off)."""
    recipe = info["recipe"]
    C, H, W = info["shape"]
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed)
    K = info.get("num_classes", 0)
    if K and class_labels is None:
        class_labels = torch.arange(n, device=device) % K
    if recipe["method"] != "teacher" and ts is None:
        ts = [T_MAX] if steps == 1 else [T_MAX, recipe.get("two_step_tau", 0.585)] if steps == 2 else \
            karras_boundaries(18).flip(0)[:steps].tolist()
    out = []
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16" and device.type == "cuda")
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        extra = {} if not K else {"class_labels": class_labels[i:i + b].to(device)}
        x = T_MAX * torch.randn((b, C, H, W), generator=g, device=device)
        with amp:
            x = generate(model, x, teacher_N=max(steps, 2) if recipe["method"] == "teacher" else None, ts=ts,
                         generator=g, extra_args=extra)
        out.append(to_uint8(x.float()).cpu())
    return torch.cat(out)
