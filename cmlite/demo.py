"""``cmlite demo``: consistency distillation and consistency training on a 2D Gaussian mixture.

Trains, on the CPU in about a minute:
* CD (Algorithm 2) from the *analytic* teacher (the mixture's exact denoiser), Heun solver, N = 18,
  target EMA mu = 0.95;
* CT (Algorithm 3), no teacher, with the improved-CT recipe (Song & Dhariwal 2023): N doubling from 11 to
  161, no EMA target (mu = 0), lognormal pair indices, lambda = 1/(t_{n+1} - t_n), pseudo-Huber distance.
  (``ct="ct"``: the original schedules N(k), mu(k) with s0 = 2, s1 = 40, mu0 = 0.9, and pseudo-Huber; its
  one-step samples fill a disc: bench/demo_ct_sweep.py and the README compare the two);

then compares 1-step and 2-step samples with the teacher's Heun PF-ODE sampler at several step
counts and with the data-vs-data floor, and writes a figure.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass

import torch

from .losses import ConsistencyDistillationLoss, ConsistencyTrainingLoss, ImprovedConsistencyTrainingLoss
from .metrics import data_floor, mmd, off_mode_fraction, off_mode_fraction_expected, sliced_wasserstein
from .nets import MLP
from .parameterization import ConsistencyModel
from .sampling import multistep_sample
from .schedules import CTSchedule, FixedSchedule, ICTSchedule, T_MAX, karras_boundaries
from .ode import solve
from .toys import ring_mixture
from .threads import small_model_threads
from .training import TrainConfig, Trainer


@dataclass
class DemoConfig:
    """Everything the demo does, with the defaults that the README's numbers come from."""
    modes: int = 8                  # ring of 8 Gaussians, radius 1, std 0.1
    radius: float = 1.0
    std: float = 0.1
    hidden: int = 128               # MLP width (3 residual blocks)
    steps: int = 3000               # training steps per model
    batch_size: int = 512
    cd_N: int = 18                  # CD grid (paper's CIFAR-10 value), Heun teacher
    cd_mu: float = 0.95             # CD target EMA (paper's ImageNet/LSUN value; mu = 0 is noisier in 2D)
    cd_lr: float = 1e-3
    ct: str = "ict"                 # "ict": improved-CT recipe; "ct": Algorithm 3's N(k), mu(k) (see CT_RECIPES)
    ct_s1: int | None = None        # final N - 1 of the CT curriculum (None: the recipe's, 160 or 40)
    ct_lr: float | None = None      # None: the recipe's (1e-3 or 2e-3)
    ct_distance: str = "pseudo_huber"  # improved CT's choice; "l2" is the original paper's CT
    two_step_tau: float = 0.585     # the official CIFAR-10 two-step time: index 11 of the N = 18 grid
    teacher_N: tuple = (2, 3, 5, 10, 18, 40)
    n_eval: int = 4000
    seed: int = 0


# the two CT recipes (bench/demo_ct_sweep.py: configurations "ict" and "demo"); s1 and lr are the defaults
CT_RECIPES = {"ict": {"s1": 160, "lr": 1e-3}, "ct": {"s1": 40, "lr": 2e-3}}


def ct_setup(cfg: DemoConfig):
    """The CT loss, (N, mu) schedule and learning rate of the demo's configuration."""
    if cfg.ct not in CT_RECIPES:
        raise ValueError(f"ct must be one of {sorted(CT_RECIPES)}; got {cfg.ct!r}")
    s1 = cfg.ct_s1 if cfg.ct_s1 is not None else CT_RECIPES[cfg.ct]["s1"]
    lr = cfg.ct_lr if cfg.ct_lr is not None else CT_RECIPES[cfg.ct]["lr"]
    if cfg.ct == "ict":  # lognormal indices, lambda = 1/(t_{n+1} - t_n); N = 11, 21, ..., s1 + 1; mu = 0
        return ImprovedConsistencyTrainingLoss(distance=cfg.ct_distance), ICTSchedule(cfg.steps, 10, s1), lr
    return ConsistencyTrainingLoss(distance=cfg.ct_distance), CTSchedule(cfg.steps, s0=2, s1=s1, mu0=0.9), lr


OFF_MODE_K = 3.0   # a sample is "off-mode" if it lies further than 3 std from every mode


def _row(name, nfe, x, data, gm, ref=None):
    g = torch.Generator().manual_seed(7)
    row = {"method": name, "nfe": nfe,
           "sw2": sliced_wasserstein(x, data, generator=g),
           "mmd": mmd(x, data),
           "loglik": float(gm.log_prob(x).mean()),
           "off_mode": off_mode_fraction(x, gm, OFF_MODE_K)}
    if ref is not None:  # pathwise error against the exact PF-ODE solution from the same x_T
        row["path_rms"] = float((x - ref).pow(2).sum(1).mean().sqrt())
    return row


def run(cfg: DemoConfig = DemoConfig(), progress: bool = True) -> dict:
    """Run the demo; return a dict with the config, the table rows, timings and the samples."""
    torch.manual_seed(cfg.seed)
    gm = ring_mixture(cfg.modes, cfg.radius, cfg.std)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    data = gm.sample(cfg.n_eval, generator=g)
    x_T = T_MAX * torch.randn(cfg.n_eval, 2, generator=torch.Generator().manual_seed(cfg.seed + 2))
    # exact PF-ODE map of the same noise (Heun on a fine grid of the analytic mixture)
    exact = solve(gm, x_T.double(), karras_boundaries(400).flip(0), "heun").float()

    rows, timings, samples = [], {}, {"data": data}
    floor = data_floor(gm.sample, sliced_wasserstein, cfg.n_eval, repeats=5,
                       generator=torch.Generator().manual_seed(cfg.seed + 3))
    fresh = gm.sample(cfg.n_eval, generator=g)
    rows.append({"method": "data vs data (floor)", "nfe": 0, "sw2": floor["mean"], "sw2_std": floor["std"],
                 "mmd": mmd(gm.sample(cfg.n_eval, generator=g), data),
                 "loglik": float(gm.log_prob(fresh).mean()), "off_mode": off_mode_fraction(fresh, gm, OFF_MODE_K),
                 "off_mode_expected": off_mode_fraction_expected(gm, OFF_MODE_K)})
    for N in cfg.teacher_N:
        xs = solve(gm, x_T, karras_boundaries(N).flip(0), "heun")
        rows.append(_row(f"teacher Heun ODE, N={N}", 2 * (N - 1), xs, data, gm, ref=exact))
        if N == 18:
            samples["teacher (Heun, N=18)"] = xs

    runs = {
        "CD": (ConsistencyDistillationLoss(gm, solver="heun"), FixedSchedule(cfg.cd_N, cfg.cd_mu), cfg.cd_lr),
        "CT": ct_setup(cfg),
    }
    histories = {}
    for name, (loss, schedule, lr) in runs.items():
        torch.manual_seed(cfg.seed)
        model = ConsistencyModel(MLP(2, cfg.hidden, 3), sigma_data=0.5)
        tc = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=lr, lr_schedule="cosine",
                         ema_rate=0.995, seed=cfg.seed)
        trainer = Trainer(model, loss, gm, tc, schedule)
        t0 = time.perf_counter()
        histories[name] = trainer.fit(progress=progress, desc=f"{name} training")
        timings[f"{name}_train_s"] = time.perf_counter() - t0
        ema = trainer.ema.eval()
        gen = torch.Generator().manual_seed(cfg.seed + 4)
        x1 = multistep_sample(ema, x_T, [T_MAX])
        x2 = multistep_sample(ema, x_T, [T_MAX, cfg.two_step_tau], generator=gen)
        rows.append(_row(f"{name} 1-step", 1, x1, data, gm, ref=exact))
        rows.append(_row(f"{name} 2-step (tau={cfg.two_step_tau})", 2, x2, data, gm))
        samples[f"{name} 1-step"], samples[f"{name} 2-step"] = x1, x2
    return {"config": asdict(cfg), "rows": rows, "timings": timings, "samples": samples, "histories": histories}


def _fmt(v, nd=4):
    return "" if v is None else f"{v:.{nd}f}"


def print_table(res: dict) -> None:
    print("2D ring of 8 Gaussians: sample quality against 4000 data points (lower sw2 / mmd is better; "
          "loglik = mean log p_data of the samples, higher is better;\noff-mode = share of samples further than "
          f"{OFF_MODE_K:g} std from every mode, i.e. between modes; path_rms = RMS distance to the exact "
          "PF-ODE image of the same noise x_T)")
    recipe = {"ict": "improved-CT recipe (N 11 -> 161, mu = 0, lognormal n, lambda = 1/dt, pseudo-Huber)",
              "ct": "Algorithm 3's schedules N(k), mu(k) (s1 = 40, mu0 = 0.9), pseudo-Huber"}[res["config"]["ct"]]
    print(f"CD: exact teacher, Heun, N = 18, mu = 0.95;  CT: {recipe}\n")
    head = f"{'method':<32}{'NFE':>4}{'sliced W2':>17}{'MMD^2':>10}{'loglik':>13}{'off-mode':>10}{'path_rms':>10}"
    print(head)
    print("-" * len(head))
    for r in res["rows"]:
        sw = _fmt(r["sw2"]) + (f"±{r['sw2_std']:.4f}" if "sw2_std" in r else "")
        print(f"{r['method']:<32}{r['nfe']:>4}{sw:>17}{_fmt(r['mmd'], 5):>10}{_fmt(r['loglik'], 3):>13}"
              f"{100 * r['off_mode']:>9.1f}%{_fmt(r.get('path_rms')):>10}")
    data = res["rows"][0]
    t = res["timings"]
    print(f"\noff-mode share of data: expected {100 * data['off_mode_expected']:.2f}% (P(chi_2 > {OFF_MODE_K:g})); "
          f"binomial noise at n = {res['config']['n_eval']}: "
          f"±{100 * math.sqrt(data['off_mode_expected'] * (1 - data['off_mode_expected']) / res['config']['n_eval']):.2f}%")
    print(f"training time: CD {t['CD_train_s']:.1f} s, CT {t['CT_train_s']:.1f} s "
          f"({res['config']['steps']} steps each, batch {res['config']['batch_size']}, "
          f"{t.get('threads', torch.get_num_threads())} torch thread(s))")


def plot(res: dict, out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["data", "teacher (Heun, N=18)", "CD 1-step", "CD 2-step", "CT 1-step", "CT 2-step"]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.1 * (len(panels) + 1), 3.2))
    sw = {r["method"].split(" (")[0]: r["sw2"] for r in res["rows"]}
    for ax, name in zip(axes, panels):
        x = res["samples"][name]
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
        label = f"\nsliced W2 {sw[name]:.3f}" if name in sw else ""
        ax.set_title(name + label, fontsize=9)
        ax.set_xlim(-1.7, 1.7), ax.set_ylim(-1.7, 1.7), ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])
    ax = axes[-1]
    for name, h in res["histories"].items():
        k = torch.tensor(h["loss"])
        w = max(1, min(50, len(k) // 5))
        smooth = torch.nn.functional.avg_pool1d(k[None, None], w, max(1, w // 5))[0, 0]
        ax.semilogy(torch.arange(len(smooth)) * max(1, w // 5) + w / 2, smooth, label=name)
    ax.set_title("training loss (moving avg)", fontsize=9), ax.set_xlabel("step"), ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def run_demo(json_out: bool = False, out: str = "cmlite_demo.png", steps: int | None = None, seed: int = 0,
             threads: int | None = None, ct: str = "ict") -> int:
    """Entry point of ``cmlite demo``. ``threads``: torch intra-op threads while it runs
    (:func:`cmlite.threads.default_threads`: ``$CMLITE_THREADS``, else 1); ``ct``: the CT recipe
    (``"ict"`` or ``"ct"``, see :data:`CT_RECIPES`)."""
    cfg = DemoConfig(seed=seed, ct=ct) if steps is None else DemoConfig(steps=steps, seed=seed, ct=ct)
    with small_model_threads(threads) as n_threads:
        t0 = time.perf_counter()
        res = run(cfg, progress=not json_out)
        res["timings"]["total_s"] = time.perf_counter() - t0
        res["timings"]["threads"] = n_threads
        if out:
            plot(res, out)
    if json_out:
        print(json.dumps({k: res[k] for k in ("config", "rows", "timings")} | {"figure": out or None}, indent=2))
    else:
        print_table(res)
        where = f"figure written to {out}" if out else "no figure (--out '')"
        print(f"total time {res['timings']['total_s']:.1f} s; {where}")
    return 0
