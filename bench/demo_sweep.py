"""Sweep of demo settings (2D ring mixture): quality vs training time for CD / CT / iCT.

Run one configuration per process pinned to 2 cores, e.g.
    taskset -c 0,1 python bench/demo_sweep.py cd 128 3000 512 1e-3
Prints one JSON line per configuration.
"""
import json
import sys
import time

import torch

import cmlite as cm
from cmlite.metrics import sliced_wasserstein

torch.set_num_threads(2)
kind, hidden, steps, batch, lr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
extra = sys.argv[6] if len(sys.argv) > 6 else ""
opts = dict(a.split("=") for a in sys.argv[7:])
gm = cm.ring_mixture(8, 1.0, float(opts.get("std", 0.1)))
g = torch.Generator().manual_seed(123)
data = gm.sample(4000, generator=g)
if kind == "cd":
    loss, sched = cm.ConsistencyDistillationLoss(gm, "heun"), cm.FixedSchedule(int(extra or 18), float(opts.get("mu", 0)))
elif kind == "ct":
    s1 = int(extra or 150)
    loss, sched = cm.ConsistencyTrainingLoss(distance=opts.get("dist", "l2")), cm.CTSchedule(steps, 2, s1, float(opts.get("mu0", 0.9)))
elif kind == "ict":
    s1 = int(extra or 1280)
    loss, sched = cm.ImprovedConsistencyTrainingLoss(), cm.ICTSchedule(steps, 10, s1)
torch.manual_seed(0)
m = cm.ConsistencyModel(cm.MLP(2, hidden, 3, max_freq=float(opts.get("freq", 100))), sigma_data=0.5)
tr = cm.Trainer(m, loss, gm, cm.TrainConfig(steps=steps, batch_size=batch, lr=lr, ema_rate=float(opts.get("ema", 0.995)), lr_schedule=opts.get("sched", "constant"), grad_clip=float(opts["clip"]) if "clip" in opts else None), sched)
t0 = time.time()
tr.fit(progress=False)
t_train = time.time() - t0
out = {"kind": kind, "hidden": hidden, "steps": steps, "batch": batch, "lr": lr, "extra": extra, "opts": opts, "train_s": round(t_train, 1)}
for lab, mod in [("online", tr.model), ("ema", tr.ema)]:
    mod.eval()
    x1 = cm.sample(mod, (4000, 2), generator=torch.Generator().manual_seed(1))
    res = {"1": sliced_wasserstein(x1, data)}
    for tau in [0.296, 0.45, 0.585, 0.8, 1.088]:
        x2 = cm.sample(mod, (4000, 2), ts=[80.0, tau], generator=torch.Generator().manual_seed(1))
        res[f"2@{tau}"] = sliced_wasserstein(x2, data)
    out[lab] = {k: round(v, 4) for k, v in res.items()}
print(json.dumps(out), flush=True)
