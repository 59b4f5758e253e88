r"""One training loop for every model in cmlite: consistency distillation, consistency training,
improved CT and the diffusion teacher, on 2D points or on images, on a CPU or on one or many GPUs.

It keeps three copies of the network (Algorithms 2 and 3):

* the online network theta, trained by the optimiser;
* the target network theta^-, updated after each step by theta^- <- stopgrad(mu theta^- + (1 - mu) theta),
  with mu from the schedule (mu = 0 makes the target a copy of theta: plain stop-gradient);
* an evaluation EMA, theta_ema <- r theta_ema + (1 - r) theta, used for sampling (paper: r = 0.9999).

:class:`Trainer` is iterable step by step (``for rec in trainer.steps(100): ...``) so notebooks and
scripts add logging or plots from outside; :meth:`Trainer.fit` runs with a progress bar, a time budget,
periodic atomic checkpoints and callbacks. Checkpoints restore the run exactly (weights, optimiser,
RNG and data-stream states, history) and are loaded with ``torch.load(weights_only=True)``.

Speed (images on a GPU): ``precision="bf16"`` autocasts the forward passes to bfloat16 with float32
master weights (``"fp16"``: float16 with loss scaling, for cards without bfloat16; ``"auto"`` picks;
:mod:`cmlite.devices`); ``channels_last``; ``compile`` compiles the network in place; the step never waits for
the GPU except every ``log_every`` steps, where the losses of those steps are read at once and checked
for NaN/inf. Data-parallel training: start under ``torchrun`` and call :func:`init_distributed`
first; the Trainer then wraps the online network in DistributedDataParallel, each rank draws its share
of one global batch (data and noise), and target and EMA stay identical on every rank.
"""
from __future__ import annotations

import copy
import errno
import math
import os
import signal
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._checks import check_finite_loss
from .devices import (PRECISIONS, device_rng_state, resolve_compile, resolve_device, resolve_precision,
                      set_device_rng_state)
from .fieldcheck import check_types

OPTIMIZERS = ("adam", "radam", "adamw")
# fp16 loss scaling: this many skipped steps in a row is an error, not a range problem. Each skip halves the
# scale, so from its start of 2^16 it is then 2^-14: gradients that overflow float16 even so are inf or NaN.
MAX_SKIPPED_IN_A_ROW = 30


@dataclass
class TrainConfig:
    """Optimisation settings with defaults that work for 2D toys on a CPU.

    ``lr_schedule``: 'constant' or 'cosine' (decay to 0 at ``steps``), after ``warmup_steps`` of linear warm-up.
    ``ema_rate`` is the evaluation EMA r; with ``ema_warmup`` it is min(r, (1 + k)/(10 + k)) so that
    short runs are not dominated by the initial weights. ``optimizer``: 'adam', 'radam' (the paper's) or
    'adamw'. ``batch_size`` is the global batch (split over data-parallel ranks). ``device``: 'cpu',
    'cuda', 'cuda:K', 'mps' or 'auto'. ``precision``: 'fp32', 'bf16' (autocast), 'fp16' (autocast with
    loss scaling; skipped steps are counted) or 'auto'; ``compile``: True, False or 'auto' (CUDA only);
    the 'auto' values are resolved by :mod:`cmlite.devices` when a :class:`Trainer` is made, and the
    config then holds what they resolved to. ``cuda_graphs``: the compiled networks' graphs are replayed as
    CUDA graphs (Inductor's 'reduce-overhead' mode) on a GPU, in one process: for a small network whose step
    is bound by the host launching kernels (the 1.75M MNIST U-Net's step ran 2.7× faster on an H100), not a
    big one (1.02× for the 11.4M CIFAR-10 U-Net); no effect on a CPU or where nothing is compiled.
    ``log_every``: steps between host reads of the loss (NaN check, history). Every field is checked (type
    and range) on construction and by the Trainer.
    """
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    grad_clip: float | None = None
    ema_rate: float = 0.999
    ema_warmup: bool = True
    seed: int = 0
    device: str = "cpu"
    log_every: int = 1
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool | str = False
    cuda_graphs: bool = False

    def __post_init__(self):
        self.check()

    def check(self) -> "TrainConfig":
        """Raise TypeError / ValueError naming the first field with a wrong type or an impossible value."""
        check_types(self, prefix="TrainConfig.")
        bad = [("steps", self.steps >= 0, "0 or more"), ("batch_size", self.batch_size >= 1, "1 or more"),
               ("lr", math.isfinite(self.lr) and self.lr >= 0, "a finite number >= 0"),
               ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0, "a number >= 0"),
               ("warmup_steps", self.warmup_steps >= 0, "0 or more"),
               ("grad_clip", self.grad_clip is None or self.grad_clip > 0, "None or a number > 0"),
               ("ema_rate", 0 <= self.ema_rate <= 1, "in [0, 1]"), ("log_every", self.log_every >= 1, "1 or more"),
               ("optimizer", self.optimizer in OPTIMIZERS, f"one of {OPTIMIZERS}"),
               ("lr_schedule", self.lr_schedule in ("constant", "cosine"), "'constant' or 'cosine'"),
               ("precision", self.precision in PRECISIONS, f"one of {PRECISIONS}"),
               ("compile", isinstance(self.compile, bool) or self.compile == "auto", "True, False or 'auto'")]
        for name, ok, want in bad:
            if not ok:
                raise ValueError(f"TrainConfig.{name} must be {want}; got {getattr(self, name)!r}")
        return self


# fields that may differ when a run is resumed (they do not change what is computed from the checkpoint on;
# seed: the RNG states come from the file)
RESUMABLE_CHANGES = frozenset({"steps", "device", "log_every", "compile", "cuda_graphs", "seed"})


def inductor_options(channels_last: bool = False, mode: str | None = None, extra: dict | None = None) -> dict:
    """Inductor's options for :func:`compile_net`: those of ``mode`` (None is the default mode, or e.g.
    "max-autotune-no-cudagraphs"), ``force_layout_optimization`` with ``channels_last``, then ``extra``."""
    from torch._inductor import list_mode_options
    options = dict(list_mode_options(mode)) if mode else {}   # torch.compile takes a mode or options, not both
    if channels_last:
        options["force_layout_optimization"] = True
    return {**options, **(extra or {})}


def compile_net(net: nn.Module, channels_last: bool = False, mode: str | None = None,
                extra: dict | None = None) -> nn.Module:
    """Compile ``net`` in place with ``torch.compile`` (Inductor, with :func:`inductor_options`) and return it.

    With ``channels_last``, Inductor is told to keep the tensors around every convolution channels-last
    (its ``force_layout_optimization``). Left to its own heuristic, Inductor turns this layout optimisation
    off for a training graph that has any k x k convolution with out_channels * 2 <= in_channels: every
    U-Net has them (a decoder convolution after a skip concatenation, the output convolution). The
    activations it then writes in the default layout reach cuDNN, which copies each one to channels-last
    before the convolution and its backward pass (bench/step_bench.py's ``fast-heuristic`` variant
    measures that layout against this one; the README's speed section has the numbers)."""
    net.compile(options=inductor_options(channels_last, mode, extra) or None)
    return net


def _make_optimizer(params, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    opts = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam, "adamw": torch.optim.AdamW}
    kw = {"fused": True} if device.type == "cuda" and cfg.optimizer in ("adam", "adamw") else {}
    return opts[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kw)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, rate: float) -> None:
    r"""In place: ema <- rate * ema + (1 - rate) * model, for parameters (one fused multi-tensor
    kernel); buffers are copied. rate = 0 copies the model."""
    pe, p = [list(m.parameters()) for m in (ema, model)]
    if rate == 0:
        torch._foreach_copy_(pe, p)
    else:
        torch._foreach_lerp_(pe, p, 1 - rate)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


# ------------------------------------------------------------------ data-parallel helpers
def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Join the process group set up by ``torchrun`` (env RANK, WORLD_SIZE); return (rank, world_size).
    Without torchrun, return (0, 1) and do nothing. NCCL on GPUs (each rank uses cuda:LOCAL_RANK), gloo on CPU."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def world() -> tuple[int, int]:
    """(rank, world_size) of the current process group, (0, 1) without one."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


class _Batches:
    """Turns a data source into an endless stream of ``(x, cond)`` batches on the device.

    Accepts an object with ``.sample(n, generator=...)`` (e.g. :class:`cmlite.toys.GaussianMixture`),
    a callable ``f(n, generator) -> Tensor``, a Tensor (sampled with replacement), an iterable of
    batches (a DataLoader; tuples are reduced to their first element, and it is restarted when exhausted),
    or a *batch source*: an object with ``is_batch_source = True`` whose call ``src()`` returns this rank's
    batch ``(x, labels_or_None)`` already on the device (:class:`cmlite.image.data.GPUBatches`); labels
    are passed to the model as ``class_labels``.
    """

    def __init__(self, data, batch_size: int, generator: torch.Generator, device):
        self.data, self.batch_size, self.g, self.device = data, batch_size, generator, device
        self._it = None

    def __call__(self) -> tuple[Tensor, dict]:
        d, cond = self.data, {}
        if getattr(d, "is_batch_source", False):
            x, y = d()
            if y is not None:
                cond = {"class_labels": y}
            return x, cond  # checked for NaN by construction (uint8 data), no host sync
        if hasattr(d, "sample") and callable(d.sample):
            x = d.sample(self.batch_size, generator=self.g)
        elif isinstance(d, Tensor):
            x = d[torch.randint(0, d.shape[0], (self.batch_size,), generator=self.g)]
        elif callable(d):
            x = d(self.batch_size, self.g)
        elif isinstance(d, Iterable):
            if self._it is None:
                self._it = iter(d)
            try:
                x = next(self._it)
            except StopIteration:
                self._it = iter(d)
                x = next(self._it)
            if isinstance(x, (tuple, list)):
                x = x[0]
        else:
            raise TypeError("data must have .sample(n, generator=...), be a Tensor, a callable f(n, generator), "
                            f"an iterable of batches or a batch source; got {type(d).__name__}")
        if not isinstance(x, Tensor):
            raise TypeError(f"the data source returned {type(x).__name__}, not a Tensor")
        if not torch.isfinite(x).all():
            raise ValueError("the data batch contains NaN or inf values")
        return x.to(self.device, torch.get_default_dtype() if not x.is_floating_point() else x.dtype), cond


class NotACheckpointError(ValueError):
    """The file is not a checkpoint written by cmlite (corrupt, truncated or from another program)."""


class ConfigMismatchError(ValueError):
    """A checkpoint was written with other settings; ``diff`` maps each field to (checkpoint, now)."""

    def __init__(self, message: str, diff: dict):
        super().__init__(message)
        self.diff = diff


class TrainingInterrupted(KeyboardInterrupt):
    """:meth:`Trainer.fit` stopped on SIGTERM / SIGINT at ``step`` after writing ``checkpoint``."""

    def __init__(self, signum, step: int, checkpoint=None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name if isinstance(signum, int) else str(signum)
        super().__init__(f"stopped by {name} at step {step}; checkpoint written to {checkpoint}")


class Trainer:
    """Train ``model`` (a :class:`~cmlite.parameterization.ConsistencyModel`, or an
    :class:`~cmlite.parameterization.EDMDenoiser` for the teacher) with ``loss`` on ``data``.

    Args:
        model: the online network theta.
        loss: called as ``loss(model, x, target=target, N=N[, shard=(rank, world)][, class_labels=y])``
            and returning per-sample losses.
        data: see :class:`_Batches`.
        config: :class:`TrainConfig`.
        schedule: callable k -> (N, mu), e.g. :class:`~cmlite.schedules.FixedSchedule`,
            :class:`~cmlite.schedules.CTSchedule`, :class:`~cmlite.schedules.ICTSchedule`. ``None`` means
            no target network (diffusion training).
        meta: a dict saved with every checkpoint (e.g. the image recipe) and checked on :meth:`load`.
        clock: the clock of :meth:`fit`'s time budget and throughput (default ``time.monotonic``; tests
            pass a fake one).

    Attributes ``model``, ``target``, ``ema`` (use ``ema`` for sampling), ``step`` and ``history``
    (a dict of lists: step, loss, N, mu, lr, skipped; one entry every ``log_every`` steps) for plotting.
    ``skipped`` counts the steps that fp16 loss scaling skipped so far (inf/NaN gradients; always 0 in
    fp32 and bf16); ``skipped_steps`` is that count now. A loss with a ``last_metrics`` dict (0-d tensors,
    e.g. the tangent norm of :mod:`cmlite.continuous`) adds one column per key, read at the same flushes.
    """

    def __init__(self, model: nn.Module, loss: Callable, data, config: TrainConfig | None = None,
                 schedule: Callable[[int], tuple[int, float]] | None = None, meta: dict | None = None,
                 clock: Callable[[], float] | None = None):
        self.config = cfg = (config or TrainConfig()).check()
        self.clock = clock or time.monotonic
        self.rank, self.world_size = world()
        torch.manual_seed(cfg.seed)
        self.device = resolve_device(cfg.device)
        # the 'auto' settings become what they resolved to (checkpoints record what ran)
        cfg.device = str(self.device) if cfg.device == "auto" else cfg.device
        cfg.precision = resolve_precision(cfg.precision, self.device)
        cfg.compile = resolve_compile(cfg.compile, self.device)
        # fp16: the loss is scaled before the backward pass so that small gradients survive in float16;
        # steps whose gradients overflow are skipped and the scale halves (torch.amp.GradScaler)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None
        self.skipped_steps, self._skip_streak = 0, 0
        fmt = torch.channels_last if cfg.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=fmt)
        self.loss, self.schedule, self.meta = loss, schedule, dict(meta or {})
        self.target = copy.deepcopy(self.model).requires_grad_(False) if schedule is not None else None
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        if cfg.cuda_graphs and self.world_size > 1:
            raise ValueError("TrainConfig.cuda_graphs is for one process (CUDA graphs have not been tried with "
                             "data parallelism here): set train.cuda_graphs=False under torchrun")
        if cfg.compile:
            self.compile_graphs()
        self.ddp = None
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device.index] if self.device.type == "cuda" else None
            if cfg.compile:  # one graph, as on one GPU (cached compiles are reused); the all-reduce of the
                torch._dynamo.config.optimize_ddp = False  # gradients then follows the backward pass
            self.ddp = DistributedDataParallel(self.model, device_ids=ids,  # broadcasts rank 0's weights
                                               gradient_as_bucket_view=True)
            ema_update(self.ema, self.model, 0.0)
            if self.target is not None:
                ema_update(self.target, self.model, 0.0)
        self.opt = _make_optimizer(self.model.parameters(), cfg, self.device)
        self.data_generator = torch.Generator().manual_seed(cfg.seed)
        if cfg.batch_size % self.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {self.world_size} ranks")
        self.batches = _Batches(data, cfg.batch_size // self.world_size, self.data_generator, self.device)
        self.step = 0
        self.history: dict[str, list] = {"step": [], "loss": [], "N": [], "mu": [], "lr": [], "skipped": []}
        self._pending: list[tuple[dict, Tensor]] = []  # records whose loss is still on the device

    def compile_graphs(self) -> None:
        """Compile the online and target networks in place (:func:`compile_net`), and the loss's tangent pass
        where it has one; sets ``config.compile``. ``__init__`` calls it when ``config.compile`` is on; a run
        that trained eagerly so far calls it later (:mod:`cmlite.image.compile_ahead`). The EMA, which is only
        sampled from, stays eager."""
        cfg = self.config
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions
        # a loss with a tangent pass (the continuous-time ones) compiles it too, and says which Inductor
        # options the network then needs (compile_options: the same dropout masks in both graphs)
        extra = getattr(self.loss, "compile_options", None)
        mode = "reduce-overhead" if cfg.cuda_graphs else None
        for m in (self.model, self.target):
            if m is not None:
                compile_net(getattr(m, "net", m), cfg.channels_last, mode, extra)
        if hasattr(self.loss, "compile_jvp"):
            self.loss.compile_jvp(inductor_options(cfg.channels_last))
        cfg.compile = True

    # ------------------------------------------------------------ one step
    def _lr(self) -> float:
        cfg, k = self.config, self.step
        lr = cfg.lr * min(1.0, (k + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
        if cfg.lr_schedule == "cosine":
            lr *= 0.5 * (1 + math.cos(math.pi * min(k / max(cfg.steps, 1), 1.0)))
        elif cfg.lr_schedule != "constant":
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine'; got {cfg.lr_schedule!r}")
        return lr

    def autocast(self):
        """The autocast context of this run (bf16 or fp16 as ``precision`` says, a no-op for fp32)."""
        p = self.config.precision
        return torch.autocast(self.device.type, dtype=torch.float16 if p == "fp16" else torch.bfloat16,
                              enabled=p in ("bf16", "fp16"))

    def _loss_scale(self) -> Tensor:
        """The GradScaler's current scale as a device tensor (read without a host synchronisation)."""
        s = getattr(self.scaler, "_scale", None)
        return s if isinstance(s, Tensor) else torch.tensor(self.scaler.get_scale())

    def train_step(self) -> dict:
        """One optimisation step: sample a batch, compute the loss, step theta, update target and EMA.

        Returns the step's record; its ``loss`` is a float on steps where ``step % log_every == 0`` and
        after :meth:`flush`, and a 0-d device tensor otherwise (no host synchronisation)."""
        cfg = self.config
        N, mu = self.schedule(self.step) if self.schedule is not None else (None, None)
        x, cond = self.batches()
        if cfg.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        online = self.ddp if self.ddp is not None else self.model
        online.train()
        # mu = 0: the target *is* the online network (under stop-gradient, unless the loss turns it off)
        target = None if mu == 0 else self.target
        kw = {"shard": (self.rank, self.world_size)} if self.world_size > 1 else {}
        with self.autocast():
            loss = self.loss(online, x, target=target, N=N, **kw, **cond).float().mean()
        self.opt.zero_grad(set_to_none=True)
        lr, skipped = self._lr(), None
        for group in self.opt.param_groups:
            group["lr"] = lr
        if self.scaler is None:
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
        else:  # fp16: scaled backward, unscaled gradients, a step skipped when they hold inf/NaN
            self.scaler.scale(loss).backward()
            if cfg.grad_clip is not None:
                self.scaler.unscale_(self.opt)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            before = self._loss_scale().clone()
            self.scaler.step(self.opt)
            self.scaler.update()  # a skipped step halves the scale (backoff 0.5); a taken one never lowers it
            after = self._loss_scale()
            skipped = (after < before) | (before == 0)
        if self.target is not None:
            ema_update(self.target, self.model, mu)
        r = min(cfg.ema_rate, (1 + self.step) / (10 + self.step)) if cfg.ema_warmup else cfg.ema_rate
        ema_update(self.ema, self.model, r)
        rec = {"step": self.step, "loss": loss.detach(), "N": N, "mu": mu, "lr": lr, "skipped": None}
        metrics = getattr(self.loss, "last_metrics", None)
        if metrics:  # the loss's own numbers this step (0-d tensors, e.g. a tangent norm): read at the next flush
            rec["metrics"] = {k: v.detach().float().reshape(()) for k, v in metrics.items()}
        self._pending.append((rec, rec["loss"] if skipped is None else torch.stack((rec["loss"], skipped.float()))))
        self.step += 1
        if self.step % cfg.log_every == 0 or self.step == 1:
            self.flush()
        return rec

    def flush(self) -> None:
        """Read the losses of the steps since the last flush (one host sync), raise on the first
        NaN/inf, count the steps that fp16 loss scaling skipped (raise after :data:`MAX_SKIPPED_IN_A_ROW`
        in a row), and append every ``log_every``-th record to the history."""
        if not self._pending:
            return
        values = torch.stack([v for _, v in self._pending]).cpu().tolist()
        pending, self._pending = self._pending, []
        named = [(rec, k) for rec, _ in pending for k in rec.get("metrics", ())]
        if named:  # the losses' metrics of these steps, read at once
            for (rec, k), v in zip(named, torch.stack([rec["metrics"][k] for rec, k in named]).cpu().tolist()):
                rec[k] = v
        for (rec, _), v in zip(pending, values):
            v, skipped = v if isinstance(v, list) else (v, 0.0)
            self.skipped_steps += bool(skipped)
            self._skip_streak = self._skip_streak + 1 if skipped else 0
            rec["loss"], rec["skipped"] = v, self.skipped_steps
            if not math.isfinite(v):
                check_finite_loss(v, rec["step"])
            if self._skip_streak >= MAX_SKIPPED_IN_A_ROW:
                raise FloatingPointError(
                    f"fp16 loss scaling skipped every one of the last {self._skip_streak} steps (to step "
                    f"{rec['step']}): the gradients hold inf or NaN even at a loss scale of "
                    f"{float(self._loss_scale()):.3g}, so the weights have not changed since step "
                    f"{rec['step'] + 1 - self._skip_streak}. Train with precision='fp32' (or 'bf16' where the "
                    "device has it), lower the learning rate, or check the data.")
            if rec["step"] % self.config.log_every == 0:
                for k in rec.pop("metrics", ()):  # a metric first seen gets a column, None for earlier rows
                    self.history.setdefault(k, [None] * len(self.history["step"]))
                for k in self.history:
                    self.history[k].append(rec.get(k))

    def _warn_if_all_skipped(self, start_step: int) -> None:
        """Warn when every step since ``start_step`` was skipped by fp16 loss scaling (weights unchanged)."""
        n = self.step - start_step
        if self.scaler is not None and n > 0 and self._skip_streak >= n:
            warnings.warn(f"fp16 loss scaling skipped all {n} steps of this run (steps {start_step} to "
                          f"{self.step - 1}): their gradients held inf or NaN, and the weights did not change. "
                          "The scale starts at 2^16 and halves at each such step, so a healthy run skips only "
                          "its first few; otherwise train with precision='fp32' (or 'bf16'), or check the loss "
                          "and data.", RuntimeWarning, stacklevel=3)

    def steps(self, n: int | None = None) -> Iterator[dict]:
        """Generator: run n steps (default: up to config.steps), yielding each step's record."""
        end, start = (self.config.steps if n is None else self.step + n), self.step
        while self.step < end:
            yield self.train_step()
        self.flush()
        self._warn_if_all_skipped(start)

    # ------------------------------------------------------------ the loop with progress and checkpoints
    def fit(self, steps: int | None = None, progress: bool = True, desc: str = "train",
            minutes: float | None = None, checkpoint: str | os.PathLike | None = None,
            checkpoint_minutes: float = 5.0, callback: Callable[["Trainer"], None] | None = None,
            callback_every: int | None = None) -> dict:
        """Run to ``config.steps`` (or ``steps`` more steps), or until ``minutes`` of wall clock have
        passed, with a tqdm bar (loss, images/s, time left). Returns the history. ``config.steps`` is read
        again after each callback, so a callback may move the end (a refitted time budget).

        The time budget is checked after every step (it ends at most one step late). ``checkpoint``: a path
        written atomically every ``checkpoint_minutes``, at the end, and when the process gets SIGTERM or
        SIGINT: then it stops and raises :class:`TrainingInterrupted` (a KeyboardInterrupt) after the
        checkpoint is written. ``callback(trainer)`` runs every ``callback_every`` steps (e.g. a sample
        grid). Only rank 0 writes files and shows the bar. Under data parallelism the time budget and the
        signals are checked every ``log_every`` steps and agreed over the ranks (one small all-reduce), so
        that every rank stops at the same step; a rank is out of time there when the next ``log_every``
        steps, at the rate of the last ones, would end past the budget."""
        follow = steps is None   # run to config.steps, which a callback may change (a refitted time budget)
        end = self.config.steps if follow else self.step + max(steps, 0)
        main = self.rank == 0
        stop = {"signal": None}
        handlers = {}
        if checkpoint is not None:
            def on_signal(signum, frame):
                stop["signal"] = signum
            for s in (signal.SIGTERM, signal.SIGINT):
                try:
                    handlers[s] = signal.signal(s, on_signal)
                except ValueError:  # not the main thread
                    pass
        t0 = last_ckpt = last_log = self.clock()
        start_step, every = self.step, max(self.config.log_every, 1)
        budget = None if minutes is None else minutes * 60
        last_log_step = start_step
        bar = tqdm(total=max(end - self.step, 0), disable=not (progress and main), desc=desc, leave=True)
        try:
            while self.step < end:
                rec = self.train_step()
                bar.update(1)
                now = self.clock()
                if callback is not None and callback_every and self.step % callback_every == 0:
                    callback(self)
                    if follow and self.config.steps != end:
                        end = self.config.steps
                        bar.total = max(end - start_step, self.step - start_step)
                        bar.refresh()
                if self.world_size == 1 and budget is not None and now - t0 >= budget:
                    break
                if self.step % every == 0:
                    ips = (self.step - start_step) * self.config.batch_size / max(now - t0, 1e-9)
                    post = {"loss": f"{rec['loss']:.4g}", "img/s": f"{ips:.0f}"}
                    if rec["N"] is not None:
                        post["N"] = rec["N"]
                    if minutes is not None:
                        post["left"] = f"{max(minutes * 60 - (now - t0), 0) / 60:.1f}min"
                    bar.set_postfix(post, refresh=False)
                    out_of_time = False  # one process stopped above, after the step that used up the budget
                    if budget is not None and self.world_size > 1:  # would the next log_every steps end past it?
                        rate = (now - last_log) / max(self.step - last_log_step, 1)
                        out_of_time = now - t0 + every * rate >= budget
                    last_log, last_log_step = now, self.step
                    if self.world_size > 1:  # the ranks' clocks and signals differ: all stop at the same step
                        out_of_time, signalled = self._any_rank(out_of_time, stop["signal"] is not None)
                        if signalled:
                            stop["signal"] = stop["signal"] or "(on another rank)"
                            break
                    if out_of_time:
                        break
                    if checkpoint is not None and now - last_ckpt >= checkpoint_minutes * 60:
                        self.save(checkpoint)
                        last_ckpt = now
                if stop["signal"] is not None and self.world_size == 1:
                    break
            self.flush()
            if checkpoint is not None:
                self.save(checkpoint)
        finally:
            bar.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        self._warn_if_all_skipped(start_step)
        if stop["signal"] is not None:
            raise TrainingInterrupted(stop["signal"], self.step, checkpoint)
        return self.history

    def _any_rank(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over the data-parallel ranks (one small all-reduce; at log steps only)."""
        t = torch.tensor([float(f) for f in flags], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        self.flush()
        src = self.batches.data
        return {
            "format": "cmlite-checkpoint-1",
            "model": self.model.state_dict(),
            "target": None if self.target is None else self.target.state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "step": self.step,
            "history": self.history,
            "config": asdict(self.config),
            "meta": self.meta,
            "world_size": self.world_size,
            "rng_torch": torch.get_rng_state(),
            "rng_data": self.data_generator.get_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # the generator this run draws from (CUDA or mps); the same on every rank (each draws the global
            # batch's noise), so it restores every rank, on any number of GPUs (rng_cuda holds rank 0's view
            # of all devices)
            "rng_device": device_rng_state(self.device),
            "rng_device_type": self.device.type,
            "data_state": src.state_dict() if hasattr(src, "state_dict") else None,
            "scaler": None if self.scaler is None else self.scaler.state_dict(),   # fp16 loss scale
            "skipped_steps": [self.skipped_steps, self._skip_streak],
        }

    def load_state_dict(self, sd: dict, strict_config: bool = True) -> None:
        """Restore a state. With ``strict_config``, refuse a checkpoint whose config or meta differ in any
        field that changes the computation (all but :data:`RESUMABLE_CHANGES`), naming the fields."""
        if not isinstance(sd, dict) or sd.get("format") != "cmlite-checkpoint-1" and "model" not in sd:
            raise NotACheckpointError("this file is not a cmlite checkpoint (no cmlite format tag)")
        if strict_config:
            mine, theirs = asdict(self.config), sd.get("config", {})
            diff = {k: (theirs.get(k), v) for k, v in mine.items()
                    if k not in RESUMABLE_CHANGES and k in theirs and theirs.get(k) != v}
            diff.update({f"meta.{k}": (sd.get("meta", {}).get(k), v) for k, v in self.meta.items()
                         if k in sd.get("meta", {}) and sd["meta"][k] != v})
            if diff:
                lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
                raise ConfigMismatchError(
                    f"the checkpoint was written by a run with a different configuration ({lines}). "
                    "Resume with the same settings, or pass strict_config=False to load it anyway.", diff)
        try:
            self.model.load_state_dict(sd["model"])
            if self.target is not None:
                if sd["target"] is None:
                    raise ValueError("the checkpoint has no target network but this Trainer needs one")
                self.target.load_state_dict(sd["target"])
            self.ema.load_state_dict(sd["ema"])
        except RuntimeError as e:
            raise ValueError(f"the checkpoint's weights do not fit this model (another architecture, data "
                             f"shape or recipe?): {str(e).splitlines()[0]}") from None
        self.opt.load_state_dict(sd["opt"])
        self.step = sd["step"]
        self.history = {k: list(v) for k, v in sd["history"].items()}
        torch.set_rng_state(sd["rng_torch"].cpu())  # .cpu(): the file may have been loaded onto a GPU
        self.data_generator.set_state(sd["rng_data"].cpu())
        if sd.get("rng_device_type", "cuda") == self.device.type and sd.get("rng_device") is not None:
            set_device_rng_state(self.device, sd["rng_device"])
        elif sd["rng_cuda"] and torch.cuda.is_available() and len(sd["rng_cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in sd["rng_cuda"]])
        if self.scaler is not None and sd.get("scaler"):
            self.scaler.load_state_dict(sd["scaler"])
        self.skipped_steps, self._skip_streak = sd.get("skipped_steps", [0, 0])
        src = self.batches.data
        if sd.get("data_state") is not None and hasattr(src, "load_state_dict"):
            src.load_state_dict(sd["data_state"])

    def save(self, path: str | os.PathLike) -> Path:
        """Write a checkpoint atomically (temporary file in the same folder, fsync, then rename).
        Under data parallelism only rank 0 writes (every rank must call it: it flushes the losses)."""
        path = Path(path)
        sd = self.state_dict()
        if self.rank != 0:
            return path
        atomic_torch_save(sd, path)
        return path

    def load(self, path: str | os.PathLike, strict_config: bool = True) -> None:
        """Restore a checkpoint written by :meth:`save` (``weights_only=True``), to continue exactly."""
        self.load_state_dict(load_checkpoint(path, self.device), strict_config=strict_config)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the target folder, fsync, then an atomic rename: a crash
    never leaves a half-written file under ``path``. A full disk or a folder that cannot be written
    raises OSError (same errno) naming the file; the previous file under ``path`` is then intact."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        # torch's zip writer reports a failed write (a full disk) as a RuntimeError
        if isinstance(e, OSError) or isinstance(e, RuntimeError) and "writ" in str(e).lower():
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0] + " (a full disk?)"
            raise OSError(getattr(e, "errno", None) or errno.EIO,
                          f"cannot write {path}: {why}. Free some space or choose a writable folder; "
                          f"{'the previous' if path.exists() else 'no'} checkpoint is at {path}") from e
        raise


def load_checkpoint(path: str | os.PathLike, map_location=None) -> dict:
    """Load a cmlite checkpoint safely (``weights_only=True``); a missing file raises FileNotFoundError,
    a file that is not a cmlite checkpoint raises :class:`NotACheckpointError` (never retry such a file
    with unsafe unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first or check the path")
    try:
        sd = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # the unpickler raises many types on foreign or damaged files
        raise NotACheckpointError(
            f"{path} is not a readable cmlite checkpoint (corrupt, truncated, or written by another program): "
            f"{type(e).__name__}. cmlite only loads its own checkpoints, with weights_only=True.") from None
    if not isinstance(sd, dict) or "model" not in sd or "step" not in sd:
        raise NotACheckpointError(f"{path} is not a cmlite checkpoint (it lacks the model and step entries)")
    return sd
