r"""Runs: train a recipe into a folder, load it back, sample from it.

A run folder holds::

    recipe.json        the recipe, the data shape, and what the run measured (steps, images/s, minutes)
    checkpoint.pt      the full training state (atomic, every few minutes and at the end; --resume)
    ema.safetensors    the evaluation-EMA weights alone: share and load them without pickle
    history.json       loss, N, mu, lr every log_every steps
    samples.png        a grid of one-step samples (two-step for ..., ODE samples for a teacher)

:func:`train` is what ``cmlite train`` runs, :func:`load_run` and :func:`sample_run` what ``cmlite sample``
and ``cmlite eval`` use. All of it goes through the core: :func:`~cmlite.image.recipes.build` makes the
core's model, loss and schedule, :class:`~cmlite.training.Trainer` trains them.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from torch import Tensor

from ..sampling import multistep_sample
from ..schedules import EPS, T_MAX, karras_boundaries
from ..ode import solve
from ..training import Trainer, compile_net, init_distributed, load_checkpoint
from .data import GPUBatches, ImageData, load_dataset, make_grid, save_png, synthetic_dataset, to_uint8
from .recipes import Recipe, build, build_net

CHECKPOINT, WEIGHTS, RECIPE_FILE = "checkpoint.pt", "ema.safetensors", "recipe.json"
STEADY_AFTER = 10  # steps before the steady-state throughput is measured (compilation, cudnn autotuning)


def resolve_device(name: str) -> torch.device:
    """'cuda' (this rank's GPU under torchrun), 'cpu', or 'cuda:k'; a clear error without a GPU."""
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("this recipe trains on a GPU but torch sees none; on a CPU use a tiny recipe "
                               "or override: --set train.device=cpu train.precision=fp32 train.compile=False")
        if name == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return torch.device(name)


def load_data(recipe: Recipe, root=None, split: str = "train", download: bool = False) -> ImageData:
    """The recipe's data set ('synthetic' is made here: 2048 16x16 images of 4 shape classes)."""
    if recipe.dataset == "synthetic":
        res = recipe.net_overrides.get("img_resolution", 16)
        ch = recipe.net_overrides.get("in_channels", 1)
        return synthetic_dataset(2048, channels=ch, resolution=res, num_classes=4,
                                 seed=0 if split == "train" else 1)
    if recipe.dataset.startswith("folder:"):
        return load_dataset("folder", root=recipe.dataset[len("folder:"):], split=split)
    return load_dataset(recipe.dataset, root=root, split=split, download=download)


def load_train_test(recipe: Recipe, root=None) -> tuple[ImageData, ImageData | None]:
    """The recipe's training split and its test split, or None where the data set has none here
    (CIFAR-10's JPEG archive holds only the training images)."""
    train = load_data(recipe, root, "train")
    try:
        return train, load_data(recipe, root, "test")
    except (FileNotFoundError, ValueError):
        return train, None


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
          checkpoint_minutes: float = 5.0) -> dict:
    """Train ``recipe`` into the folder ``out``; return the run's summary (also in recipe.json).

    ``minutes``: a wall-clock budget (default the recipe's); then, unless ``steps`` is given, the step count
    (and the CT / iCT schedule horizon K) is calibrated from the measured time of the first steps.
    ``teacher``: the run folder of a trained teacher (``cd`` recipes; optional initialisation for ``ct``).
    ``resume``: continue from ``out/checkpoint.pt`` exactly; refused if the recipe or shapes differ.
    Under ``torchrun`` every rank runs this; rank 0 writes the files."""
    t_start = time.monotonic()
    rank, world_size = init_distributed()
    out = Path(out)
    cfg = recipe.train
    device = resolve_device(cfg.device)
    cfg.device = str(device)
    minutes = recipe.minutes if minutes is None and steps is None else minutes
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another --out")
    if resume and not ckpt_path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
    saved = load_checkpoint(ckpt_path, "cpu") if resume else None
    if saved is not None and saved.get("meta", {}).get("recipe") != recipe.name:
        raise ValueError(f"{ckpt_path} belongs to recipe {saved.get('meta', {}).get('recipe')!r}, "
                         f"not {recipe.name!r}: resume with the same recipe")

    data = load_data(recipe, data_root, "train", download)
    num_classes = data.num_classes if recipe.conditional else 0
    if recipe.conditional and not num_classes:
        raise ValueError(f"recipe {recipe.name!r} is class-conditional but data set {recipe.dataset!r} has no labels")
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed alone
    net = build_net(recipe, data.channels, data.images.shape[-1], num_classes)
    teacher_model, teacher_info = None, None
    if recipe.method == "cd" or (teacher is not None and recipe.init_from_teacher):
        if teacher is None:
            raise ValueError(f"recipe {recipe.name!r} distils a teacher: pass --teacher RUN (a folder made by "
                             f"`cmlite train {recipe.dataset}-teacher`)")
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
    K = (saved["meta"]["K"] if saved is not None else steps or cfg.steps)
    model, loss, schedule = build(recipe, net, teacher_model, steps=K)
    batches = GPUBatches(data if recipe.conditional else ImageData(data.images, None, 0, data.name),
                         cfg.batch_size // world_size, device, flip=recipe.flip, channels_last=cfg.channels_last,
                         seed=cfg.seed, rank=rank, world_size=world_size)
    meta = {"recipe": recipe.name, "method": recipe.method, "shape": [data.channels, *data.images.shape[2:]],
            "num_classes": num_classes, "K": K}
    cfg.steps = steps if (saved is not None and steps) else K  # resume: --steps is where to stop; K stays
    trainer = Trainer(model, loss, batches, cfg, schedule, meta=meta)
    if saved is not None:
        trainer.load_state_dict(saved)
        del saved
    elif minutes is not None and steps is None:  # calibrate K to the budget from the first steps' time
        n_cal = 30 if device.type == "cuda" else 5
        for _ in trainer.steps(n_cal):  # includes compilation
            pass
        t_warm = time.monotonic()
        for _ in trainer.steps(n_cal):  # ends with a flush: the losses are read, the device has caught up
            pass
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_step = (time.monotonic() - t_warm) / n_cal
        left = minutes * 60 - (time.monotonic() - t_start)
        K = max(trainer.step + 1, trainer.step + int(left / per_step))
        if world_size > 1:  # every rank must agree on K
            k = torch.tensor([K], device=device)
            torch.distributed.broadcast(k, 0)
            K = int(k)
        trainer.schedule = build(recipe, net, teacher_model, steps=K)[2]
        trainer.config.steps = K
        trainer.meta["K"] = K
    t0, step0 = time.monotonic(), trainer.step
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / RECIPE_FILE, {"recipe": recipe.to_dict(), "shape": meta["shape"],
                                        "num_classes": num_classes, "status": "training"})
    left = None if minutes is None else max(minutes - (time.monotonic() - t_start) / 60, 0.0)
    # steady-state throughput: (step, time) at the log steps after STEADY_AFTER steps (compilation and
    # autotuning done); the host has just read the loss there, so these are in step with the device
    marks, every = [], max(cfg.log_every, 1)

    def timed(tr):
        if tr.step % every == 0 and tr.step - step0 >= STEADY_AFTER:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            marks.append((tr.step, time.monotonic()))
        if callback is not None and callback_every and tr.step % callback_every == 0:
            callback(tr)
    trainer.fit(progress=progress, desc=recipe.name, minutes=left,
                checkpoint=ckpt_path, checkpoint_minutes=checkpoint_minutes, callback=timed, callback_every=1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.monotonic() - t0
    summary = {"recipe": recipe.to_dict(), "shape": meta["shape"], "num_classes": num_classes, "status": "done",
               "steps": trainer.step, "K": trainer.meta["K"], "world_size": world_size,
               "images_seen": trainer.step * cfg.batch_size, "epochs": batches.epoch,
               "train_seconds_this_session": seconds,
               "images_per_second": (trainer.step - step0) * cfg.batch_size / max(seconds, 1e-9),
               "steady_images_per_second": (marks[-1][0] - marks[0][0]) * cfg.batch_size
               / max(marks[-1][1] - marks[0][1], 1e-9) if len(marks) > 1 else None,
               "steady_steps": marks[-1][0] - marks[0][0] if len(marks) > 1 else 0,
               "startup_seconds": (marks[0][1] - t_start) if marks else None,
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "teacher": str(teacher) if teacher is not None else None,
               "final_loss": trainer.history["loss"][-1] if trainer.history["loss"] else None}
    if rank == 0:
        save_weights(trainer.ema, out / WEIGHTS)
        _write_json(out / "history.json", trainer.history)
        _write_json(out / RECIPE_FILE, summary)
        imgs = sample_images(trainer.ema, summary, 64, steps=1 if recipe.method != "teacher" else 18,
                             device=device, seed=0)
        save_png(out / "samples.png", make_grid(imgs, nrow=8))
    return summary


def load_run(run: str | os.PathLike, device="cpu") -> tuple[torch.nn.Module, dict]:
    """The EMA model of a run folder (from ema.safetensors, else from checkpoint.pt) and its recipe.json.

    Returns (model, info): a :class:`ConsistencyModel` (or the teacher's :class:`EDMDenoiser`) in eval
    mode on ``device``, and the run's summary dict (``info['recipe']`` is the recipe as a dict)."""
    run = Path(run)
    f = run / RECIPE_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{run} is not a cmlite run folder (no {RECIPE_FILE}); train one with `cmlite train`")
    info = json.loads(f.read_text())
    recipe = Recipe.from_dict(info["recipe"])
    C, H, W = info["shape"]
    net = build_net(recipe, C, H, info.get("num_classes", 0))
    model = build(recipe, net, teacher=torch.nn.Identity() if recipe.method == "cd" else None, steps=1)[0]
    if (run / WEIGHTS).is_file():
        from safetensors.torch import load_file
        state = load_file(str(run / WEIGHTS))
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
