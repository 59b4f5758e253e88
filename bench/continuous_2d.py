"""Continuous-time consistency training on the demo's ring: does N -> infinity help in 2D?

Trains, on the demo's data (ring of 8 Gaussians, radius 1, std 0.1), network (MLP width 128, 3 blocks),
batch (512), optimiser (Adam, cosine lr, evaluation EMA 0.995) and evaluation (4000 samples from the same
x_T, 1 and 2 steps, tau = 0.585):

* ``ict``    discrete improved CT, the demo's CT (N 11 -> 161, lognormal pairs, lambda = 1/dt, pseudo-Huber);
* ``cct``    continuous-time CT (cmlite.continuous.ContinuousCTLoss) in improved CT's limit: lognormal t,
             w = 1, the tangent by forward-mode AD, normalised g / (||g|| + 0.1);
* ``sct``    sCT (Lu & Song 2025): TrigFlow, tangent normalisation, warm-up, adaptive weighting;
* ``ect``    ECT's shrinking pairs (Geng et al. 2024), q = 2, 8 stages, pseudo-Huber, lambda = 1/(t - r);

each for 3 seeds at equal steps (3000) and at equal time (a method whose step costs more than 15% above
or below improved CT's gets the steps that take it as much CPU time as ``ict``'s 3000, from a timing probe
in the same process), all with lr 1e-3. Ablations for the analysis (``--methods``): ``cct_cm`` (CM Appendix B.3's form:
uniform u on the Karras map, lambda = 1), ``ect_fixed`` (ECT's final small gap from the start, no
curriculum), ``ect_cct`` (ECT's first four stages, then continuous-time CT for the second half).

Metrics (cmlite.metrics): sliced W2 against 4000 data points, the off-mode share (samples further than 3
std from every mode; data 1.1%), the mean log-likelihood under the true density, the data-vs-data floor;
``consistency_rms``: the RMS error of f_theta(x_t, t) against the exact PF-ODE map at t = 0.05 ... 80;
``grad_snr``: the loss gradient's signal-to-noise ratio at the final weights, ||E g||^2 / E||g - E g||^2
over 32 batches (the diagnostic for the variance of a single-sample tangent).

    python bench/continuous_2d.py --out docs/results/continuous-2d            # full run (one core)
    python bench/continuous_2d.py --out /tmp/c2d --quick                       # seconds: a self-check
    python bench/continuous_2d.py --out DIR --methods ict sct --seeds 0        # a subset

Writes DIR/continuous_2d.json (every number, the command, the machine, the date) and DIR/continuous_2d.md
(the table).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import cmlite as cm
from cmlite.continuous import ContinuousCTLoss, ECTLoss, SCTLoss
from cmlite.metrics import data_floor, off_mode_fraction, off_mode_fraction_expected, sliced_wasserstein
from cmlite.schedules import ECTSchedule, TangentWarmupSchedule

METHODS = {
    "ict": "discrete improved CT, the demo's CT (N 11 -> 161, lognormal pairs, lambda = 1/dt, pseudo-Huber)",
    "cct": "continuous-time CT in improved CT's limit (lognormal t, w = 1, tangent g/(||g|| + 0.1))",
    "sct": "sCT (TrigFlow, tangent normalisation, warm-up over K/10 steps, adaptive weight)",
    "ect": "ECT (q = 2, 8 stages: N = 2 ... 256, pseudo-Huber, lambda = 1/(t - r))",
    # ablations for the analysis (not in the default run)
    "cct_cm": "continuous-time CT as in CM Appendix B.3 (uniform u on the Karras map, lambda = 1, w = tau'(u))",
    "ect_fixed": "ECT without its curriculum: the last stage's small gap (N = 256) from the first step",
    "ect_cct": "ECT for the first half (4 stages, N = 2 ... 16), then continuous-time CT (cct) for the second",
}
DEFAULT = ["ict", "cct", "sct", "ect"]
LR = 1e-3  # every method: the demo's improved-CT rate (2e-3 made iCT collapse in one of two seeds)


def make(method: str, K: int, hidden: int, seed: int):
    """(model, loss, schedule) of one method, with the demo's network and initialisation seed."""
    torch.manual_seed(seed)
    trig = method == "sct"
    model = cm.ConsistencyModel(cm.MLP(2, hidden, 3), sigma_data=0.5,
                                parameterization="trigflow" if trig else "skip", adaptive_weight=trig)
    cct = ContinuousCTLoss(weighting="ict", time_sampling="lognormal", normalize=0.1)
    losses = {
        "ict": (cm.ImprovedConsistencyTrainingLoss(), cm.ICTSchedule(K, 10, 160)),
        "cct": (cct, None),
        "sct": (SCTLoss(), TangentWarmupSchedule(max(K // 10, 1))),
        "ect": (ECTLoss(), ECTSchedule(K, stages=8, q=2)),
        "cct_cm": (ContinuousCTLoss(), None),
        "ect_fixed": (ECTLoss(), ECTSchedule(K, stages=1, q=256)),
        "ect_cct": (ECTLoss(), ECTSchedule(max(K // 2, 1), stages=4, q=2)),
    }
    if method not in losses:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    return (model,) + losses[method]


def trainer(method: str, K: int, hidden: int, batch: int, seed: int) -> cm.Trainer:
    model, loss, sched = make(method, K, hidden, seed)
    cfg = cm.TrainConfig(steps=K, batch_size=batch, lr=LR, lr_schedule="cosine", ema_rate=0.995, seed=seed,
                         log_every=max(K // 50, 1))
    return cm.Trainer(model, loss, cm.ring_mixture(8, 1.0, 0.1), cfg, sched)


def fit(tr: cm.Trainer, method: str) -> None:
    """Train to the end; ``ect_cct`` switches to the continuous-time loss half way (one cosine lr schedule)."""
    if method != "ect_cct":
        tr.fit(progress=False)
        return
    for _ in tr.steps(tr.config.steps // 2):
        pass
    tr.loss = ContinuousCTLoss(weighting="ict", time_sampling="lognormal", normalize=0.1)
    tr.schedule = lambda k: (None, 0.0)   # mu = 0: the target is stopgrad(theta)
    tr.fit(progress=False)


def seconds_per_step(methods, hidden: int, batch: int, steps: int = 40, repeats: int = 3) -> dict:
    """CPU seconds per training step of each method (this process's CPU time, so that other processes on a
    shared machine do not count; one torch thread): the minimum over interleaved repeats of ``steps`` steps."""
    best = {m: float("inf") for m in methods}
    for _ in range(repeats):
        for m in methods:
            tr = trainer("cct" if m == "ect_cct" else m, 1000, hidden, batch, 0)  # its costlier half
            for _ in tr.steps(5):
                pass
            t0 = time.process_time()
            for _ in tr.steps(steps):
                pass
            best[m] = min(best[m], (time.process_time() - t0) / steps)
    return best


def gradient_snr(tr: cm.Trainer, batches: int = 32) -> float:
    """||mean g||^2 / mean ||g - mean g||^2 of the loss gradient over ``batches`` fresh batches at the final
    online weights (network parameters only): the signal-to-noise ratio of one step's gradient."""
    params = list(tr.model.net.parameters())
    N, mu = tr.schedule(tr.config.steps - 1) if tr.schedule is not None else (None, None)
    target = None if mu in (0, None) else tr.target
    gs = []
    for _ in range(batches):
        x, cond = tr.batches()
        loss = tr.loss(tr.model, x, target=target, N=N, **cond).float().mean()
        gs.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, allow_unused=True)
                             if g is not None]))
    G = torch.stack(gs).double()
    m = G.mean(0)
    return float(m.pow(2).sum() / (G - m).pow(2).sum(1).mean())


def consistency_errors(model, gm, ts=(0.05, 0.2, 0.585, 2.0, 10.0, 80.0), n: int = 1000) -> dict:
    """RMS distance between f_theta(x_t, t) and the exact PF-ODE map of x_t down to eps (Heun, 200 Karras
    steps, on the mixture's analytic denoiser), for x_t = x_0 + t z: where in time the model is wrong."""
    x0 = gm.sample(n, generator=torch.Generator().manual_seed(5))
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(6))
    out = {}
    for t in ts:
        x_t = x0 + t * z
        exact = cm.solve(gm, x_t.double(), cm.karras_boundaries(201, cm.EPS, t).flip(0), "heun").float()
        with torch.no_grad():
            out[f"{t:g}"] = float((model(x_t, t) - exact).pow(2).sum(1).mean().sqrt())
    return out


def evaluate(model, gm, data, x_T) -> dict:
    out = {}
    for label, ts in (("1", [cm.T_MAX]), ("2", [cm.T_MAX, 0.585])):
        x = cm.multistep_sample(model, x_T, ts, generator=torch.Generator().manual_seed(4))
        out[f"sw2_{label}"] = sliced_wasserstein(x, data, generator=torch.Generator().manual_seed(7))
        out[f"off_{label}"] = off_mode_fraction(x, gm)
        out[f"loglik_{label}"] = float(gm.log_prob(x).mean().clamp(min=-1e9))
    return out


def run(method: str, seed: int, K: int, hidden: int, batch: int, n_eval: int) -> dict:
    gm = cm.ring_mixture(8, 1.0, 0.1)
    data = gm.sample(n_eval, generator=torch.Generator().manual_seed(1))
    x_T = cm.T_MAX * torch.randn(n_eval, 2, generator=torch.Generator().manual_seed(2))
    tr = trainer(method, K, hidden, batch, seed)
    init = evaluate(tr.ema.eval(), gm, data, x_T)
    t0, c0 = time.perf_counter(), time.process_time()
    fit(tr, method)
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    res = {"method": method, "seed": seed, "steps": K, "train_s": round(train_s, 1), "train_cpu_s": round(train_cpu_s, 1),
           "init_sw2_1": init["sw2_1"]} | evaluate(tr.ema.eval(), gm, data, x_T)
    res["consistency_rms"] = consistency_errors(tr.ema.eval(), gm, n=min(n_eval, 1000))
    res["grad_snr"] = gradient_snr(tr)
    h = tr.history
    for k in ("tangent_rms", "adaptive_weight", "gap", "boundary_share"):
        if k in h:  # the loss's logged metrics: first and last logged value
            vals = [v for v in h[k] if v is not None]
            res[f"{k}_first"], res[f"{k}_last"] = vals[0], vals[-1]
    return res


def _mean(rows, key):
    vals = [r[key] for r in rows if key in r]
    return statistics.mean(vals) if vals else float("nan")


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform reports."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown(doc: dict) -> str:
    """The result file's Markdown: provenance, the quality table, the per-time consistency errors."""
    m = doc["machine"]
    load = m.get("load_average_at_start")
    lines = [f"date {doc['date']}; command `{doc['command']}`; machine: {m['cpu']} ({m.get('cores', '?')} cores), "
             f"{m['torch_threads']} torch thread, torch {m['torch']}"
             + (f", load average {load:.1f} at the start" if load is not None else "")
             + f"; total {doc['total_s'] / 60:.1f} min", "",
             table(doc["results"], doc["data_floor_sw2"], doc["off_mode_data"]), ""]
    if doc.get("seconds_per_step"):
        lines.append("CPU seconds per step (timing probe): " + ", ".join(
            f"{k} {1e3 * v:.1f} ms" for k, v in doc["seconds_per_step"].items()))
        lines.append("")
    rows = [r for r in doc["results"] if "consistency_rms" in r]
    if rows:
        ts = list(rows[0]["consistency_rms"])
        lines += ["RMS error of f_theta(x_t, t) against the exact PF-ODE map (mean over seeds):", "",
                  "| method | budget | " + " | ".join(f"t = {t}" for t in ts) + " |",
                  "| --- | --- | " + " | ".join("---:" for _ in ts) + " |"]
        groups: dict = {}
        for r in rows:
            groups.setdefault((r["method"], r["budget"]), []).append(r)
        for (meth, budget), rs in groups.items():
            lines.append(f"| {meth} | {budget} | " + " | ".join(
                f"{statistics.mean(r['consistency_rms'][t] for r in rs):.3f}" for t in ts) + " |")
    return "\n".join(lines) + "\n"


def table(results: list[dict], floor: dict, off_data: float) -> str:
    lines = [f"data floor: sliced W2 {floor['mean']:.4f} ± {floor['std']:.4f}, off-mode {100 * off_data:.1f}%", "",
             "| method | budget | steps | seeds | train CPU s | 1-step sliced W2 | 1-step off-mode (range) | 1-step loglik "
             "| 2-step sliced W2 | 2-step off-mode | 2-step loglik | grad SNR (median) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    groups: dict = {}
    for r in results:
        groups.setdefault((r["method"], r["budget"]), []).append(r)
    for (m, budget), rows in groups.items():
        offs = [r["off_1"] for r in rows]
        lines.append(
            f"| {m} | {budget} | {round(_mean(rows, 'steps'))} | {len(rows)} "
            f"| {_mean(rows, 'train_cpu_s' if 'train_cpu_s' in rows[0] else 'train_s'):.0f} "
            f"| {_mean(rows, 'sw2_1'):.3f} | {100 * _mean(rows, 'off_1'):.1f}% ({100 * min(offs):.0f}–"
            f"{100 * max(offs):.0f}) | {_mean(rows, 'loglik_1'):.2f} | {_mean(rows, 'sw2_2'):.3f} "
            f"| {100 * _mean(rows, 'off_2'):.1f}% | {_mean(rows, 'loglik_2'):.2f} "
            f"| {statistics.median(r['grad_snr'] for r in rows):.3g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--quick", action="store_true", help="tiny settings: a self-check in seconds")
    ap.add_argument("--methods", nargs="+", default=DEFAULT, choices=list(METHODS),
                    help=f"default: {' '.join(DEFAULT)}")
    ap.add_argument("--seeds", nargs="+", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="equal-steps budget (default 3000, quick 60)")
    ap.add_argument("--no-equal-time", action="store_true", help="skip the equal-time runs")
    ap.add_argument("--markdown-from", metavar="JSON", help="only rewrite DIR/continuous_2d.md from a result file")
    a = ap.parse_args(argv)
    if a.markdown_from:
        md = markdown(json.loads(Path(a.markdown_from).read_text()))
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "continuous_2d.md").write_text(md)
        print(md)
        return 0
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    K = a.steps or (60 if a.quick else 3000)
    hidden, batch, n_eval = (32, 128, 500) if a.quick else (128, 512, 4000)
    seeds = a.seeds if a.seeds is not None else ([0] if a.quick else [0, 1, 2])
    t_start = time.perf_counter()
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other processes on the machine

    gm = cm.ring_mixture(8, 1.0, 0.1)
    floor = data_floor(gm.sample, sliced_wasserstein, n_eval, repeats=5, generator=torch.Generator().manual_seed(3))
    budgets = {"equal steps": {m: K for m in a.methods}}
    sps = None
    if not a.no_equal_time and "ict" in a.methods:
        sps = seconds_per_step(a.methods, hidden, batch, steps=5 if a.quick else 30)
        # methods within 15% of improved CT's step time (ECT: two forward passes and one backward, as iCT) get no
        # separate equal-time run: their equal-steps run is one, to the timing noise
        budgets["equal time"] = {m: max(1, round(K * sps["ict"] / sps[m])) for m in a.methods
                                 if m != "ict" and not 1 / 1.15 < sps[m] / sps["ict"] < 1.15}
    results = []
    for budget, steps in budgets.items():
        for seed in seeds:
            for m, k in steps.items():
                r = run(m, seed, k, hidden, batch, n_eval) | {"budget": budget}
                results.append(r)
                print(json.dumps(r), flush=True)
    doc = {
        "date": datetime.date.today().isoformat(),
        "command": "python " + " ".join([os.path.relpath(sys.argv[0])] + (argv if argv is not None else sys.argv[1:])),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": 1, "torch": torch.__version__,
                    "python": platform.python_version(), "load_average_at_start": load_at_start},
        "settings": {"steps": K, "hidden": hidden, "batch": batch, "n_eval": n_eval, "seeds": seeds,
                     "methods": {m: METHODS[m] for m in a.methods}},
        "data_floor_sw2": floor, "off_mode_data": off_mode_fraction_expected(gm),
        "seconds_per_step": sps, "budgets": budgets, "learning_rate": LR, "results": results,
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    md = markdown(doc)
    (out / "continuous_2d.json").write_text(json.dumps(doc, indent=1))
    (out / "continuous_2d.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
