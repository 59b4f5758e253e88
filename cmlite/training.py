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
master weights; ``channels_last``; ``compile`` compiles the network in place; the step never waits for
the GPU except every ``log_every`` steps, where the losses of those steps are read at once and checked
for NaN/inf. Data-parallel training: start under ``torchrun`` and call :func:`init_distributed`
first; the Trainer then wraps the online network in DistributedDataParallel, each rank draws its share
of one global batch (data and noise), and target and EMA stay identical on every rank.
"""
from __future__ import annotations

import copy
import math
import os
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._checks import check_finite_loss


@dataclass
class TrainConfig:
    """Optimisation settings with defaults that work for 2D toys on a CPU.

    ``lr_schedule``: 'constant' or 'cosine' (decay to 0 at ``steps``), after ``warmup_steps`` of linear warm-up.
    ``ema_rate`` is the evaluation EMA r; with ``ema_warmup`` it is min(r, (1 + k)/(10 + k)) so that
    short runs are not dominated by the initial weights. ``optimizer``: 'adam', 'radam' (the paper's) or
    'adamw'. ``batch_size`` is the global batch (split over data-parallel ranks). ``precision``: 'fp32'
    or 'bf16' (autocast). ``log_every``: steps between host reads of the loss (NaN check, history).
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
    compile: bool = False


# fields that may differ when a run is resumed (they do not change what is computed from the checkpoint on)
RESUMABLE_CHANGES = frozenset({"steps", "device", "log_every", "compile", "seed"})  # seed: RNG states come from the file


def compile_net(net: nn.Module, channels_last: bool = False, mode: str | None = None) -> nn.Module:
    """Compile ``net`` in place with ``torch.compile`` (Inductor, in ``mode``: None is the default mode, or
    e.g. "max-autotune-no-cudagraphs") and return it.

    With ``channels_last``, Inductor is told to keep the tensors around every convolution channels-last
    (its ``force_layout_optimization``). Left to its own heuristic, Inductor turns this layout optimisation
    off for a training graph that has any k x k convolution with out_channels * 2 <= in_channels: every
    U-Net has them (a decoder convolution after a skip concatenation, the output convolution). The
    activations it then writes in the default layout reach cuDNN, which copies each one to channels-last
    before the convolution and its backward pass (bench/step_bench.py's ``fast-heuristic`` variant
    measures that layout against this one; the README's speed section has the numbers)."""
    from torch._inductor import list_mode_options
    options = dict(list_mode_options(mode)) if mode else {}   # torch.compile takes a mode or options, not both
    if channels_last:
        options["force_layout_optimization"] = True
    net.compile(options=options or None)
    return net


def _make_optimizer(params, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    opts = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam, "adamw": torch.optim.AdamW}
    if cfg.optimizer not in opts:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose one of {sorted(opts)}")
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

    Attributes ``model``, ``target``, ``ema`` (use ``ema`` for sampling), ``step`` and ``history``
    (a dict of lists: step, loss, N, mu, lr; one entry every ``log_every`` steps) for plotting.
    """

    def __init__(self, model: nn.Module, loss: Callable, data, config: TrainConfig | None = None,
                 schedule: Callable[[int], tuple[int, float]] | None = None, meta: dict | None = None):
        self.config = cfg = config or TrainConfig()
        if cfg.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16'; got {cfg.precision!r}")
        self.rank, self.world_size = world()
        torch.manual_seed(cfg.seed)
        self.device = torch.device(cfg.device)
        fmt = torch.channels_last if cfg.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=fmt)
        self.loss, self.schedule, self.meta = loss, schedule, dict(meta or {})
        self.target = copy.deepcopy(self.model).requires_grad_(False) if schedule is not None else None
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        if cfg.compile:
            if self.device.type == "cuda":
                torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions
            for m in (self.model, self.target):  # the EMA is only sampled from: left eager
                if m is not None:
                    compile_net(getattr(m, "net", m), cfg.channels_last)
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
        self.history: dict[str, list] = {"step": [], "loss": [], "N": [], "mu": [], "lr": []}
        self._pending: list[tuple[dict, Tensor]] = []  # records whose loss is still on the device

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
        """The autocast context of this run (bf16 when ``precision='bf16'``, else a no-op)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16")

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
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        lr = self._lr()
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        if self.target is not None:
            ema_update(self.target, self.model, mu)
        r = min(cfg.ema_rate, (1 + self.step) / (10 + self.step)) if cfg.ema_warmup else cfg.ema_rate
        ema_update(self.ema, self.model, r)
        rec = {"step": self.step, "loss": loss.detach(), "N": N, "mu": mu, "lr": lr}
        self._pending.append((rec, rec["loss"]))
        self.step += 1
        if self.step % cfg.log_every == 0 or self.step == 1:
            self.flush()
        return rec

    def flush(self) -> None:
        """Read the losses of the steps since the last flush (one host sync), raise on the first
        NaN/inf, and append every ``log_every``-th record to the history."""
        if not self._pending:
            return
        values = torch.stack([v for _, v in self._pending]).cpu().tolist()
        for (rec, _), v in zip(self._pending, values):
            rec["loss"] = v
            if not math.isfinite(v):
                self._pending = []
                check_finite_loss(v, rec["step"])
            if rec["step"] % self.config.log_every == 0:
                for k in self.history:
                    self.history[k].append(rec[k])
        self._pending = []

    def steps(self, n: int | None = None) -> Iterator[dict]:
        """Generator: run n steps (default: up to config.steps), yielding each step's record."""
        end = self.config.steps if n is None else self.step + n
        while self.step < end:
            yield self.train_step()
        self.flush()

    # ------------------------------------------------------------ the loop with progress and checkpoints
    def fit(self, steps: int | None = None, progress: bool = True, desc: str = "train",
            minutes: float | None = None, checkpoint: str | os.PathLike | None = None,
            checkpoint_minutes: float = 5.0, callback: Callable[["Trainer"], None] | None = None,
            callback_every: int | None = None) -> dict:
        """Run to ``config.steps`` (or ``steps`` more steps), or until ``minutes`` of wall clock have
        passed, with a tqdm bar (loss, images/s, time left). Returns the history.

        ``checkpoint``: a path written atomically every ``checkpoint_minutes``, at the end, and when the
        process gets SIGTERM or SIGINT (then it stops). ``callback(trainer)`` runs every
        ``callback_every`` steps (e.g. a sample grid). Only rank 0 writes files and shows the bar. Under
        data parallelism the time budget and the signals are checked every ``log_every`` steps and agreed
        over the ranks (one small all-reduce), so that every rank stops at the same step."""
        total = (self.config.steps - self.step) if steps is None else steps
        end = self.step + max(total, 0)
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
        t0 = last_ckpt = time.monotonic()
        start_step, every = self.step, max(self.config.log_every, 1)
        bar = tqdm(total=end - self.step, disable=not (progress and main), desc=desc, leave=True)
        try:
            while self.step < end:
                rec = self.train_step()
                bar.update(1)
                now = time.monotonic()
                if callback is not None and callback_every and self.step % callback_every == 0:
                    callback(self)
                if self.step % every == 0:
                    ips = (self.step - start_step) * self.config.batch_size / max(now - t0, 1e-9)
                    post = {"loss": f"{rec['loss']:.4g}", "img/s": f"{ips:.0f}"}
                    if rec["N"] is not None:
                        post["N"] = rec["N"]
                    if minutes is not None:
                        post["left"] = f"{max(minutes * 60 - (now - t0), 0) / 60:.1f}min"
                    bar.set_postfix(post, refresh=False)
                    out_of_time = minutes is not None and now - t0 >= minutes * 60
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
        if stop["signal"] is not None:
            raise KeyboardInterrupt(f"stopped by signal {stop['signal']} at step {self.step}; "
                                    f"checkpoint written to {checkpoint}")
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
            # the generator this run draws from; the same on every rank (each draws the global batch's noise),
            # so it restores every rank, on any number of GPUs (rng_cuda holds rank 0's view of all devices)
            "rng_device": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "data_state": src.state_dict() if hasattr(src, "state_dict") else None,
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
                raise ValueError(f"the checkpoint was written by a run with a different configuration ({lines}). "
                                 "Resume with the same settings, or pass strict_config=False to load it anyway.")
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
        if sd.get("rng_device") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(sd["rng_device"].cpu(), self.device)
        elif sd["rng_cuda"] and torch.cuda.is_available() and len(sd["rng_cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in sd["rng_cuda"]])
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
    never leaves a half-written file under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
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
