r"""Image recipes: small dataclass configs that say everything a run does.

A :class:`Recipe` names the data set, the method (``teacher``: EDM denoising score matching; ``cd``:
consistency distillation from a teacher run, Algorithm 2; ``ct``: consistency training with N(k), mu(k),
Algorithm 3; ``ict``: improved CT; the continuous-time methods of :mod:`cmlite.continuous`: ``cct``
continuous-time CT, ``sct`` sCT with TrigFlow, ``ect`` ECT's shrinking pairs), the U-Net preset, and the
optimisation settings (a
:class:`~cmlite.training.TrainConfig`). :func:`get_recipe` returns a named one, and
:func:`build` turns a recipe into the model, the loss and the schedule of the core library: the image
path reuses the core's losses and training loop unchanged.

Named recipes (``RECIPES``): ``{mnist, fashion-mnist, cifar10, tiny}-{teacher, cd, ct, ict, sct, ect}``
and ``tiny-cct``. The
``tiny-*`` recipes train a tiny U-Net on a synthetic data set the project makes itself (CPU tests).
The GPU recipes are sized for a run of about ten minutes on one H100 (``--minutes``); with a time
budget, the number of steps (and so the N(k) schedules) is calibrated from the measured step time.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

from ..continuous import ContinuousCTLoss, ECTLoss, SCTLoss
from ..losses import (ConsistencyDistillationLoss, ConsistencyTrainingLoss, ImprovedConsistencyTrainingLoss)
from ..parameterization import ConsistencyModel, EDMDenoiser
from ..schedules import CTSchedule, ECTSchedule, FixedSchedule, ICTSchedule, TangentWarmupSchedule
from ..teacher import DenoisingScoreMatchingLoss
from ..fieldcheck import check_path
from ..training import TrainConfig
from .unet import UNet, unet_config

METHODS = ("teacher", "cd", "ct", "ict", "cct", "sct", "ect")


@dataclass
class Recipe:
    """Everything a run does. ``dataset``: 'mnist', 'fashion-mnist', 'cifar10', 'synthetic' or 'folder:PATH'.

    CD: ``N`` grid points, target EMA ``mu``, ``solver``; the teacher comes from the run folder given at
    training time and initialises the network when ``init_from_teacher`` (the official code does).
    CT: N(k) from ``s0`` + 1 to ``s1`` + 1 and mu(k) with ``mu0`` over the run (Algorithm 3).
    iCT: N doubles from ``s0`` to ``s1`` (set s0 = 10, s1 = 1280), pseudo-Huber, lognormal indices, mu = 0.
    ``distance``: 'l2', 'l1', 'pseudo_huber' (any callable when the loss is built by hand).
    Continuous time (:mod:`cmlite.continuous`; no N-point grid, no target EMA):
    cCT (:class:`~cmlite.continuous.ContinuousCTLoss`): ``weighting``, ``time_sampling`` ('uniform' u on the
    Karras map with a lambda name, or 'lognormal' with weighting 'ict' (w = 1) or 'ict_huber'; tiny-cct:
    lognormal, 'ict'), ``tangent_c`` (None: the tangent unnormalised, CM's Appendix B.3 form with
    weighting='uniform', time_sampling='uniform'; c: g / (||g|| + c)). sCT (:class:`~cmlite.continuous.SCTLoss`):
    a TrigFlow model with the adaptive weight, tangent normalisation ``tangent_c``, tangent warm-up over the
    first ``tangent_warmup`` fraction of the K steps; trained from scratch (``init_from_teacher`` must stay
    off: a TrigFlow network outputs -F of an EDM one at another time input). ECT
    (:class:`~cmlite.continuous.ECTLoss`): pairs r < t whose gap shrinks by ``q`` per stage over ``stages``
    stages, with ``distance`` and ``weighting`` ('ict': 1/(t - r)); from scratch, or tuned from a teacher
    run when one is given (``--teacher RUN``), as ECT tunes a diffusion model. Compiled, cCT and sCT compute
    their tangents with one compiled ``torch.func.jvp`` (:class:`cmlite.continuous.CompiledJVP`).
    ``two_step_tau``: the default second time of two-step sampling (0.585: the official CIFAR-10 choice).
    """
    name: str
    dataset: str
    method: str
    net: str = "mnist"
    net_overrides: dict = field(default_factory=dict)
    conditional: bool = False
    flip: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)
    N: int = 18
    mu: float = 0.0
    solver: str = "heun"
    distance: str = "l2"
    weighting: str = "uniform"
    s0: int = 2
    s1: int = 150
    mu0: float = 0.9
    init_from_teacher: bool = True
    two_step_tau: float = 0.585
    minutes: float | None = None
    time_sampling: str = "uniform"
    tangent_c: float | None = 0.1
    tangent_warmup: float = 0.1
    stages: int = 8
    q: int = 2

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {self.method!r}")
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown recipe fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def with_overrides(self, items: list[str]) -> "Recipe":
        """Apply ``key=value`` overrides (``train.lr=2e-4``, ``N=40``, ``net_overrides.dropout=0.2``);
        values are parsed as Python literals where possible."""
        import ast
        d = self.to_dict()
        for item in items:
            if "=" not in item:
                raise ValueError(f"an override must look like key=value (e.g. train.lr=2e-4); got {item!r}")
            key, raw = item.split("=", 1)
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
            node, parts = d, key.split(".")
            for p in parts[:-1]:
                if p not in node or not isinstance(node[p], dict):
                    raise ValueError(f"unknown recipe field {key!r}")
                node = node[p]
            if parts[-1] not in node and parts[0] != "net_overrides":
                raise ValueError(f"unknown recipe field {key!r}; known: {sorted(node)}")
            check_path(Recipe, parts, value, f"{key} (from {item!r})")   # lr=abc: named here, not in torch
            node[parts[-1]] = value
        return Recipe.from_dict(d)


#: The CD student trains without dropout, as in the official code's CD commands (``--dropout 0.0``, with
#: ``--teacher_dropout 0.1`` for the teacher, which is only evaluated): dropout in the student also puts
#: mask noise into every target evaluated with its weights.
CD_STUDENT = {"dropout": 0.0}
#: Target EMA of the GPU CD recipes: 0.95, the official ImageNet-64 / LSUN setting (the paper's CIFAR-10 CD
#: uses 0, with LPIPS). In the toy-scale ablation ``bench/cd_ablation_cpu.sh`` a lagging target and a
#: smaller learning rate each removed much of the speckle of short L2 distillation runs, and together most.
#: On an H100 (2026-11-26, docs/image-results.md) these two defaults took one-step CIFAR-10 CD from
#: Inception FID 285 to 38 at ~1000 steps of batch 512, its teacher being at 24 with 34 evaluations.
CD_MU = 0.95


def _gpu(**kw) -> TrainConfig:
    # 'auto': CUDA with bf16 (fp16 + loss scaling on cards without it) and torch.compile; on a CPU fp32, eager
    base = dict(device="auto", precision="auto", channels_last=True, compile="auto", log_every=100,
                optimizer="radam", ema_warmup=True)
    return TrainConfig(**{**base, **kw})


def _recipes() -> dict[str, Recipe]:
    r = {}

    def add(name, dataset, method, net, train, **kw):
        r[name] = Recipe(name=name, dataset=dataset, method=method, net=net, train=train, **kw)

    for ds in ("mnist", "fashion-mnist"):
        add(f"{ds}-teacher", ds, "teacher", "mnist-small", _gpu(steps=30000, batch_size=256, lr=1e-3, ema_rate=0.999,
                                                          warmup_steps=200, optimizer="adam"), minutes=4)
        add(f"{ds}-cd", ds, "cd", "mnist-small", _gpu(steps=20000, batch_size=256, lr=2e-4, ema_rate=0.999),
            minutes=4, net_overrides=dict(CD_STUDENT), mu=CD_MU)
        add(f"{ds}-ct", ds, "ct", "mnist-small", _gpu(steps=20000, batch_size=256, lr=4e-4, ema_rate=0.999),
            distance="pseudo_huber", s1=150, minutes=8)
        add(f"{ds}-ict", ds, "ict", "mnist-small", _gpu(steps=20000, batch_size=256, lr=4e-4, ema_rate=0.999),
            distance="pseudo_huber", weighting="ict", s0=10, s1=1280, minutes=8,
            net_overrides={"dropout": 0.2})
        # continuous time: sCT's step is a JVP pass (no gradient), a forward and a backward pass
        add(f"{ds}-sct", ds, "sct", "mnist-small", _gpu(steps=20000, batch_size=256, lr=4e-4, ema_rate=0.999),
            init_from_teacher=False, minutes=8)
        add(f"{ds}-ect", ds, "ect", "mnist-small", _gpu(steps=20000, batch_size=256, lr=4e-4, ema_rate=0.999),
            distance="pseudo_huber", weighting="ict", minutes=8, net_overrides={"dropout": 0.2})
    cifar = dict(net="cifar10-small", flip=True)
    add("cifar10-teacher", "cifar10", "teacher", train=_gpu(steps=100000, batch_size=512, lr=1e-3, ema_rate=0.999,
                                                            warmup_steps=500, optimizer="adam"), minutes=5, **cifar)
    add("cifar10-cd", "cifar10", "cd", train=_gpu(steps=20000, batch_size=512, lr=2e-4, ema_rate=0.999),
        minutes=4, net_overrides=dict(CD_STUDENT), mu=CD_MU, **cifar)
    add("cifar10-ct", "cifar10", "ct", train=_gpu(steps=20000, batch_size=512, lr=4e-4, ema_rate=0.999),
        distance="pseudo_huber", minutes=9, **cifar)
    add("cifar10-ict", "cifar10", "ict", train=_gpu(steps=20000, batch_size=512, lr=4e-4, ema_rate=0.999),
        distance="pseudo_huber", weighting="ict", s0=10, s1=1280, minutes=9,
        net_overrides={"dropout": 0.3}, **cifar)
    add("cifar10-sct", "cifar10", "sct", train=_gpu(steps=20000, batch_size=512, lr=4e-4, ema_rate=0.999),
        init_from_teacher=False, minutes=9, **cifar)
    add("cifar10-ect", "cifar10", "ect", train=_gpu(steps=20000, batch_size=512, lr=4e-4, ema_rate=0.999),
        distance="pseudo_huber", weighting="ict", minutes=9, net_overrides={"dropout": 0.2}, **cifar)
    # CPU: a tiny U-Net on the project's synthetic shapes (tests, the book's fast mode)
    tiny = dict(net="tiny", net_overrides={"img_resolution": 16, "in_channels": 1})
    cpu = dict(device="cpu", batch_size=32, log_every=5, ema_rate=0.99)
    add("tiny-teacher", "synthetic", "teacher", train=TrainConfig(steps=200, lr=2e-3, **cpu), **tiny)
    add("tiny-cd", "synthetic", "cd", train=TrainConfig(steps=100, lr=1e-3, **cpu), N=10, **tiny)
    add("tiny-ct", "synthetic", "ct", train=TrainConfig(steps=100, lr=1e-3, **cpu), s1=20,
        distance="pseudo_huber", **tiny)
    add("tiny-ict", "synthetic", "ict", train=TrainConfig(steps=100, lr=1e-3, **cpu), s0=10, s1=80,
        distance="pseudo_huber", weighting="ict", **tiny)
    add("tiny-cct", "synthetic", "cct", train=TrainConfig(steps=100, lr=1e-3, **cpu), weighting="ict",
        time_sampling="lognormal", **tiny)
    add("tiny-sct", "synthetic", "sct", train=TrainConfig(steps=100, lr=1e-3, **cpu), init_from_teacher=False, **tiny)
    add("tiny-ect", "synthetic", "ect", train=TrainConfig(steps=100, lr=1e-3, **cpu), distance="pseudo_huber",
        weighting="ict", **tiny)
    return r


RECIPES = _recipes()


def get_recipe(name: str) -> Recipe:
    """A named recipe (a fresh copy: change it freely)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of: {', '.join(sorted(RECIPES))}")
    return Recipe.from_dict(RECIPES[name].to_dict())


def build_net(recipe: Recipe, channels: int, resolution: int, num_classes: int = 0) -> UNet:
    """The recipe's U-Net for data of the given shape (the preset's size, the data's shape)."""
    over = {**recipe.net_overrides, "in_channels": channels, "img_resolution": resolution}
    if recipe.conditional:
        over["num_classes"] = num_classes
    return UNet(unet_config(recipe.net, **over))


def build(recipe: Recipe, net: UNet, teacher=None, steps: int | None = None):
    """Return (model, loss, schedule) for the recipe: the core's objects around ``net``.

    teacher: the teacher's :class:`EDMDenoiser` (its EMA weights), needed for ``cd``. ``steps``: the
    horizon K of the CT / iCT / ECT schedules and of sCT's tangent warm-up (default ``recipe.train.steps``).
    ``cct`` has no schedule (None: no target network, the tangent uses the online weights)."""
    K = steps or recipe.train.steps
    if recipe.method == "teacher":
        return EDMDenoiser(net), DenoisingScoreMatchingLoss(), None
    if recipe.method == "sct":
        if recipe.tangent_c is None or not recipe.tangent_c > 0:
            raise ValueError(f"recipe method 'sct' needs tangent_c > 0 (sCM's 0.1); got {recipe.tangent_c!r}")
        if recipe.init_from_teacher and teacher is not None:
            raise ValueError("recipe method 'sct' trains a TrigFlow network from scratch: an EDM teacher's weights "
                             "do not fit it (set init_from_teacher=False, or train without --teacher)")
        if not 0 <= recipe.tangent_warmup <= 1:
            raise ValueError(f"tangent_warmup is a fraction of the K steps, in [0, 1]; got {recipe.tangent_warmup!r}")
        model = ConsistencyModel(net, parameterization="trigflow", adaptive_weight=True)
        return model, SCTLoss(tangent_c=recipe.tangent_c), TangentWarmupSchedule(round(recipe.tangent_warmup * K))
    model = ConsistencyModel(net)
    common = dict(distance=recipe.distance, weighting=recipe.weighting)
    if recipe.method == "cd":
        if teacher is None:
            raise ValueError("recipe method 'cd' needs a teacher: train one (e.g. `cmlite train mnist-teacher`) "
                             "and pass its run folder (`--teacher RUN`)")
        teacher.requires_grad_(False).eval()
        return model, ConsistencyDistillationLoss(teacher, solver=recipe.solver, **common), \
            FixedSchedule(recipe.N, recipe.mu)
    if recipe.method == "ct":
        return model, ConsistencyTrainingLoss(**common), CTSchedule(K, recipe.s0, recipe.s1, recipe.mu0)
    if recipe.method == "cct":
        return model, ContinuousCTLoss(weighting=recipe.weighting, time_sampling=recipe.time_sampling,
                                       normalize=recipe.tangent_c), None
    if recipe.method == "ect":
        return model, ECTLoss(**common), ECTSchedule(K, recipe.stages, recipe.q)
    return model, ImprovedConsistencyTrainingLoss(**common), ICTSchedule(K, recipe.s0, recipe.s1)
