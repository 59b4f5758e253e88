r"""One training loop for every model in cmlite: consistency distillation, consistency training,
improved CT and the diffusion teacher, on 2D points or on images.

It keeps three copies of the network (Algorithms 2 and 3):

* the online network theta, trained by the optimiser;
* the target network theta^-, updated after each step by theta^- <- stopgrad(mu theta^- + (1 - mu) theta),
  with mu from the schedule (mu = 0 makes the target a copy of theta: plain stop-gradient);
* an evaluation EMA, theta_ema <- r theta_ema + (1 - r) theta, used for sampling (paper: r = 0.9999).

:class:`Trainer` is iterable step by step (``for rec in trainer.steps(100): ...``) so notebooks and
scripts add logging or plots from outside; :meth:`Trainer.fit` runs with a progress bar. Checkpoints are
atomic and restore the run exactly (weights, optimiser, RNG states, history), loaded with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import copy
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._checks import check_finite_loss


@dataclass
class TrainConfig:
    """Optimisation settings with defaults that work for 2D toys on a CPU.

    ``lr_schedule``: 'constant' or 'cosine' (decay to 0 at ``steps``), after ``warmup_steps`` of linear warm-up.
    ``ema_rate`` is the evaluation EMA r; with ``ema_warmup`` it is min(r, (1 + k)/(10 + k)) so that
    short runs are not dominated by the initial weights. ``optimizer``: 'adam' or 'radam' (the paper's).
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


def _make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    opts = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam, "adamw": torch.optim.AdamW}
    if cfg.optimizer not in opts:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose one of {sorted(opts)}")
    return opts[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, rate: float) -> None:
    r"""In place: ema <- rate * ema + (1 - rate) * model, for parameters; buffers are copied.
    rate = 0 copies the model."""
    for pe, p in zip(ema.parameters(), model.parameters()):
        if rate == 0:
            pe.copy_(p)
        else:
            pe.lerp_(p, 1 - rate)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


class _Batches:
    """Turns a data source into an endless stream of batches on the device.

    Accepts an object with ``.sample(n, generator=...)`` (e.g. :class:`cmlite.toys.GaussianMixture`),
    a callable ``f(n, generator) -> Tensor``, a Tensor (sampled with replacement), or an iterable of
    batches (a DataLoader; tuples are reduced to their first element, and it is restarted when exhausted).
    """

    def __init__(self, data, batch_size: int, generator: torch.Generator, device):
        self.data, self.batch_size, self.g, self.device = data, batch_size, generator, device
        self._it = None

    def __call__(self) -> Tensor:
        d = self.data
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
            raise TypeError("data must have .sample(n, generator=...), be a Tensor, a callable f(n, generator) "
                            f"or an iterable of batches; got {type(d).__name__}")
        if not isinstance(x, Tensor):
            raise TypeError(f"the data source returned {type(x).__name__}, not a Tensor")
        if not torch.isfinite(x).all():
            raise ValueError("the data batch contains NaN or inf values")
        return x.to(self.device, torch.get_default_dtype() if not x.is_floating_point() else x.dtype)


class Trainer:
    """Train ``model`` (a :class:`~cmlite.parameterization.ConsistencyModel`, or an
    :class:`~cmlite.parameterization.EDMDenoiser` for the teacher) with ``loss`` on ``data``.

    Args:
        model: the online network theta.
        loss: called as ``loss(model, x, target=target, N=N)`` and returning per-sample losses.
        data: see :class:`_Batches`.
        config: :class:`TrainConfig`.
        schedule: callable k -> (N, mu), e.g. :class:`~cmlite.schedules.FixedSchedule`,
            :class:`~cmlite.schedules.CTSchedule`, :class:`~cmlite.schedules.ICTSchedule`. ``None`` means
            no target network (diffusion training).

    Attributes ``model``, ``target``, ``ema`` (use ``ema`` for sampling), ``step`` and ``history``
    (a dict of lists: step, loss, N, mu, lr) for plotting.
    """

    def __init__(self, model: nn.Module, loss: Callable, data, config: TrainConfig | None = None,
                 schedule: Callable[[int], tuple[int, float]] | None = None):
        self.config = cfg = config or TrainConfig()
        torch.manual_seed(cfg.seed)
        self.device = torch.device(cfg.device)
        self.model = model.to(self.device)
        self.loss, self.schedule = loss, schedule
        self.target = copy.deepcopy(model).requires_grad_(False) if schedule is not None else None
        self.ema = copy.deepcopy(model).requires_grad_(False).eval()
        self.opt = _make_optimizer(self.model.parameters(), cfg)
        self.data_generator = torch.Generator().manual_seed(cfg.seed)
        self.batches = _Batches(data, cfg.batch_size, self.data_generator, self.device)
        self.step = 0
        self.history: dict[str, list] = {"step": [], "loss": [], "N": [], "mu": [], "lr": []}

    def _lr(self) -> float:
        cfg, k = self.config, self.step
        lr = cfg.lr * min(1.0, (k + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
        if cfg.lr_schedule == "cosine":
            lr *= 0.5 * (1 + math.cos(math.pi * min(k / max(cfg.steps, 1), 1.0)))
        elif cfg.lr_schedule != "constant":
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine'; got {cfg.lr_schedule!r}")
        return lr

    def train_step(self) -> dict:
        """One optimisation step: sample a batch, compute the loss, step theta, update target and EMA."""
        cfg = self.config
        N, mu = self.schedule(self.step) if self.schedule is not None else (None, None)
        x = self.batches()
        self.model.train()
        # mu = 0: the target *is* the online network (under stop-gradient, unless the loss turns it off)
        target = None if mu == 0 else self.target
        loss = self.loss(self.model, x, target=target, N=N).mean()
        check_finite_loss(loss, self.step)
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
        rec = {"step": self.step, "loss": float(loss.detach()), "N": N, "mu": mu, "lr": lr}
        if self.step % cfg.log_every == 0:
            for k, v in rec.items():
                self.history[k].append(v)
        self.step += 1
        return rec

    def steps(self, n: int | None = None) -> Iterator[dict]:
        """Generator: run n steps (default: up to config.steps), yielding each step's record."""
        end = self.config.steps if n is None else self.step + n
        while self.step < end:
            yield self.train_step()

    def fit(self, steps: int | None = None, progress: bool = True, desc: str = "train") -> dict:
        """Run to ``config.steps`` (or ``steps`` more steps) with a tqdm bar; return the history."""
        total = (self.config.steps - self.step) if steps is None else steps
        bar = tqdm(self.steps(steps), total=max(total, 0), disable=not progress, desc=desc, leave=False)
        for rec in bar:
            if rec["step"] % 50 == 0:
                bar.set_postfix(loss=f"{rec['loss']:.4g}", N=rec["N"])
        return self.history

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "target": None if self.target is None else self.target.state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "step": self.step,
            "history": self.history,
            "config": asdict(self.config),
            "rng_torch": torch.get_rng_state(),
            "rng_data": self.data_generator.get_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd["model"])
        if self.target is not None:
            if sd["target"] is None:
                raise ValueError("the checkpoint has no target network but this Trainer needs one")
            self.target.load_state_dict(sd["target"])
        self.ema.load_state_dict(sd["ema"])
        self.opt.load_state_dict(sd["opt"])
        self.step = sd["step"]
        self.history = {k: list(v) for k, v in sd["history"].items()}
        torch.set_rng_state(sd["rng_torch"])
        self.data_generator.set_state(sd["rng_data"])
        if sd["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(sd["rng_cuda"])

    def save(self, path: str | os.PathLike) -> Path:
        """Write a checkpoint atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(self.state_dict(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    def load(self, path: str | os.PathLike) -> None:
        """Restore a checkpoint written by :meth:`save` (``weights_only=True``), to continue exactly."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}; train first or check the path")
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
