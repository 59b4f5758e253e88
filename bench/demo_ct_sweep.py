"""Can one-step consistency *training* separate the modes of the demo's ring within the demo's budget?

One-step CT with Algorithm 3's schedules (`cmlite demo --ct ct`) fills a disc. This sweep tries the
improved-CT recipe piece by piece (the iCT N curriculum, lognormal indices, lambda = 1/dt, pseudo-Huber,
dropout) and longer or wider training, on the demo's data (ring of 8 Gaussians, radius 1, std 0.1) and
evaluation (4000 samples, the same x_T for every configuration), and prints one JSON line per (configuration,
seed):

    python bench/demo_ct_sweep.py --list                 # the configurations
    python bench/demo_ct_sweep.py demo ict ict_s80       # run some (one torch thread each)
    python bench/demo_ct_sweep.py --all --jobs 8         # all, 8 processes in parallel (pinned to one core each)

Columns: train_s (training wall time; compare with the 'demo' row run on the same machine), and for one
and two steps (tau = 0.585): sliced W2, MMD^2, mean log p_data of the samples and the off-mode fraction
(share of samples further than 3 std from every mode; data: 1.1%), and mode_tv, the total variation between
the share of samples nearest to each mode and the mixture weights (data at n = 4000: about 0.02). Results are in docs/demo.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

import cmlite as cm
from cmlite.metrics import mmd, off_mode_fraction, sliced_wasserstein

# name -> overrides of BASE; "demo" is cmlite demo's CT before this sweep
BASE = dict(steps=3000, hidden=128, lr=2e-3, dropout=0.0, batch=512, clip=None)
CONFIGS = {
    "demo":          dict(loss="ct_ph", sched="ct40"),
    "ct_l2":         dict(loss="ct_l2", sched="ct40"),
    "ct_lognormal":  dict(loss="ct_ph_lognormal", sched="ct40"),
    "ct_s1_80":      dict(loss="ct_ph", sched="ct80"),
    "ict":           dict(loss="ict", sched="ict160", lr=1e-3),
    "ict_lr2e-3":    dict(loss="ict", sched="ict160"),
    "ict_s80":       dict(loss="ict", sched="ict80", lr=1e-3),
    "ict_s320":      dict(loss="ict", sched="ict320", lr=1e-3),
    "ict_s640":      dict(loss="ict", sched="ict640", lr=1e-3),
    "ict_uniform_w": dict(loss="ict_uniform_weight", sched="ict160", lr=1e-3),
    "ict_dropout":   dict(loss="ict", sched="ict160", lr=1e-3, dropout=0.1),
    "ict_6k":        dict(loss="ict", sched="ict160", lr=1e-3, steps=6000),
    "ict_12k":       dict(loss="ict", sched="ict320", lr=1e-3, steps=12000),
    "ict_wide":      dict(loss="ict", sched="ict160", lr=1e-3, hidden=256),
    "ict_lr2e-3_s320": dict(loss="ict", sched="ict320"),
    "ict_lr4e-3":    dict(loss="ict", sched="ict160", lr=4e-3),
    "ict_lr2e-3_6k": dict(loss="ict", sched="ict320", steps=6000),
    "ict_clip":      dict(loss="ict", sched="ict160", clip=1.0),
    "ict_lr5e-4":    dict(loss="ict", sched="ict160", lr=5e-4),
    "ictloss_ct40":  dict(loss="ict", sched="ct40"),
    "ictloss_ct160": dict(loss="ict", sched="ct160"),
    "ictloss_ct160_lr1e-3": dict(loss="ict", sched="ct160", lr=1e-3),
    "ict_clip_uidx": dict(loss="ict_uniform_index", sched="ict160", clip=1.0),
    "ict_clip_pmean0": dict(loss="ict_pmean0", sched="ict160", clip=1.0),
    "ict_clip_s640": dict(loss="ict", sched="ict640", clip=1.0),
    "ict_clip_s1280": dict(loss="ict", sched="ict1280", clip=1.0),
    "demo_6k":       dict(loss="ct_ph", sched="ct40", steps=6000),
    "demo_12k":      dict(loss="ct_ph", sched="ct80", steps=12000),
}


def make(name: str):
    c = BASE | CONFIGS[name]
    losses = {
        "ct_ph": lambda: cm.ConsistencyTrainingLoss(distance="pseudo_huber"),
        "ct_l2": lambda: cm.ConsistencyTrainingLoss(distance="l2"),
        "ct_ph_lognormal": lambda: cm.ConsistencyTrainingLoss(distance="pseudo_huber", index_sampling="lognormal"),
        "ict": lambda: cm.ImprovedConsistencyTrainingLoss(),
        "ict_uniform_weight": lambda: cm.ImprovedConsistencyTrainingLoss(weighting="uniform"),
        "ict_uniform_index": lambda: cm.ImprovedConsistencyTrainingLoss(index_sampling="uniform"),
        "ict_pmean0": lambda: cm.ImprovedConsistencyTrainingLoss(P_mean=0.0),
    }
    K = c["steps"]
    scheds = {f"ct{s1}": (lambda s1=s1: cm.CTSchedule(K, 2, s1, 0.9)) for s1 in (40, 80, 160)}
    for s1 in (80, 160, 320, 640, 1280):
        scheds[f"ict{s1}"] = (lambda s1=s1: cm.ICTSchedule(K, 10, s1))
    return c, losses[c["loss"]](), scheds[c["sched"]]()


def run(name: str, seed: int) -> dict:
    torch.set_num_threads(1)
    c, loss, sched = make(name)
    gm = cm.ring_mixture(8, 1.0, 0.1)
    data = gm.sample(4000, generator=torch.Generator().manual_seed(1))         # the demo's evaluation data
    x_T = cm.T_MAX * torch.randn(4000, 2, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(seed)
    model = cm.ConsistencyModel(cm.MLP(2, c["hidden"], 3, dropout=c["dropout"]), sigma_data=0.5)
    tr = cm.Trainer(model, loss, gm, cm.TrainConfig(steps=c["steps"], batch_size=c["batch"], lr=c["lr"],
                                                   lr_schedule="cosine", ema_rate=0.995, seed=seed,
                                                   grad_clip=c["clip"]), sched)
    t0 = time.perf_counter()
    tr.fit(progress=False)
    out = {"config": name, "seed": seed, "train_s": round(time.perf_counter() - t0, 1)} | c
    ema = tr.ema.eval()
    for label, ts in (("1", [cm.T_MAX]), ("2", [cm.T_MAX, 0.585])):
        x = cm.multistep_sample(ema, x_T, ts, generator=torch.Generator().manual_seed(4))
        out[f"sw2_{label}"] = round(sliced_wasserstein(x, data, generator=torch.Generator().manual_seed(7)), 4)
        out[f"mmd_{label}"] = round(mmd(x, data), 5)
        out[f"loglik_{label}"] = round(float(gm.log_prob(x).mean()), 3)
        out[f"off_{label}"] = round(off_mode_fraction(x, gm), 4)
        # balance of the modes: total variation between the nearest-mode histogram and the mixture weights
        near = torch.cdist(x.double(), gm.means).argmin(1)
        hist = torch.bincount(near, minlength=len(gm.weights)).double() / len(near)
        out[f"mode_tv_{label}"] = round(float((hist - gm.weights).abs().sum() / 2), 4)
    return out


def summarize(paths) -> None:
    """Print a Markdown table of JSON-line results: per configuration, the mean over seeds (first result of
    each seed) and the range of the one-step off-mode share."""
    import statistics
    rows: dict = {}
    for path in paths:
        for line in open(path):
            if line.startswith("{"):
                d = json.loads(line)
                rows.setdefault(d["config"], {}).setdefault(d["seed"], d)
    print("| configuration | seeds | train s | 1-step sliced W2 | 1-step off-mode (range) | 1-step loglik "
          "| 2-step sliced W2 | 2-step off-mode | 2-step loglik |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, by_seed in rows.items():
        v = list(by_seed.values())
        m = {k: statistics.mean(d[k] for d in v) for k in ("train_s", "sw2_1", "off_1", "loglik_1", "sw2_2", "off_2",
                                                           "loglik_2")}
        lo, hi = min(d["off_1"] for d in v), max(d["off_1"] for d in v)
        print(f"| {name} | {len(v)} | {m['train_s']:.0f} | {m['sw2_1']:.3f} | {100 * m['off_1']:.1f}% "
              f"({100 * lo:.0f}–{100 * hi:.0f}) | {m['loglik_1']:.2f} | {m['sw2_2']:.3f} | {100 * m['off_2']:.1f}% "
              f"| {m['loglik_2']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*")
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--jobs", type=int, default=1, help="parallel processes, each pinned to one core (Linux)")
    ap.add_argument("--summarize", nargs="+", metavar="FILE", help="print a table of earlier JSON-line output")
    a = ap.parse_args()
    if a.summarize:
        return summarize(a.summarize)
    if a.list:
        for k, v in CONFIGS.items():
            print(f"{k:<15} {BASE | v}")
        return
    names = list(CONFIGS) if a.all else a.configs
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configurations {unknown}; see --list")
    jobs = [(n, s) for s in a.seeds for n in names]
    if a.jobs == 1:
        for n, s in jobs:
            print(json.dumps(run(n, s)), flush=True)
        return
    cores = sorted(os.sched_getaffinity(0))
    running: list = []
    while jobs or running:
        while jobs and len(running) < a.jobs:
            n, s = jobs.pop(0)
            free = [c for c in cores if c not in [r[1] for r in running]]
            code = f"import json, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); " \
                   f"from demo_ct_sweep import run; print(json.dumps(run({n!r}, {s})), flush=True)"
            p = subprocess.Popen(["taskset", "-c", str(free[0]), sys.executable, "-c", code])
            running.append((p, free[0]))
        time.sleep(0.5)
        running = [r for r in running if r[0].poll() is None]


if __name__ == "__main__":
    main()
