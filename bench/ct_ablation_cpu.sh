#!/usr/bin/env bash
# CPU ablation of consistency training at toy scale: discrete improved CT against the continuous-time
# methods of cmlite.continuous, each trained from scratch (no teacher) with the tiny U-Net recipes:
#   ict  tiny-ict: improved CT (N doubling 10 -> 80, lognormal pairs, lambda = 1/dt, pseudo-Huber, mu = 0)
#   cct  tiny-cct: continuous-time CT in improved CT's limit (lognormal t, w = 1, tangent g / (||g|| + 0.1))
#   sct  tiny-sct: sCT (TrigFlow, tangent normalisation and warm-up over 10% of the steps, adaptive weight)
#   ect  tiny-ect: ECT's shrinking pairs (8 stages, q = 2, pseudo-Huber, lambda = 1/(t - r))
# STEPS steps each (default 300) at batch 32, lr 1e-3, seeds 0 and 1, one run at a time on one thread; then
# the classifier FID of 2000 one- and two-step samples per run (cmlite eval, one call) with its floor
# (the FID between two sets of real images of the same size). About 25 minutes on one core.
#   bash bench/ct_ablation_cpu.sh OUTDIR [DATA]
# DATA: 'synthetic' (default: the project's 16x16 shapes), or mnist16:ROOT to train on 10000 MNIST training
# images from ROOT (any layout cmlite.image.data reads) downsampled to 16x16, written to OUTDIR/mnist16/
# as an image folder (the digit is the class). Environment: STEPS, N_EVAL (default 2000), NICE (default 10),
# JOBS (runs trained at once, default 1; each uses one thread: on a machine with idle cores JOBS=8 trains
# all eight together, and the per-run seconds stay comparable only among runs trained the same way).
# Writes OUTDIR/eval.json, OUTDIR/summary.json, OUTDIR/table.md and OUTDIR/run_info.json (date, command,
# commit, torch); the runs go to OUTDIR/runs (a run already there is kept). Results: docs/results/cpu-ct-ablation/.
set -euo pipefail
OUTDIR=${1:?usage: bash bench/ct_ablation_cpu.sh OUTDIR [synthetic|mnist16:MNIST_ROOT]}
DATA=${2:-synthetic}
STEPS=${STEPS:-300}; N_EVAL=${N_EVAL:-2000}; NICE=${NICE:-10}; JOBS=${JOBS:-1}
W=$OUTDIR/runs
mkdir -p "$W"
export OMP_NUM_THREADS=1 CMLITE_THREADS=1
SET=(train.batch_size=32)
case "$DATA" in
  synthetic) ;;
  mnist16:*)
    ROOT=${DATA#mnist16:}
    if [ ! -f "$OUTDIR/mnist16/.done" ]; then
      python - "$ROOT" "$OUTDIR/mnist16" <<'PY'
import sys
from pathlib import Path
from PIL import Image
from cmlite.image.data import load_dataset
root, out = sys.argv[1], Path(sys.argv[2])
data = load_dataset("mnist", root=root, split="train", resolution=16)
for i in range(10000):
    d = out / str(int(data.labels[i]))
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.images[i, 0].numpy()).save(d / f"{i:05d}.png")
(out / ".done").write_text("10000 MNIST training images at 16x16\n")
PY
    fi
    SET+=("dataset=folder:$OUTDIR/mnist16") ;;
  *) echo "DATA must be 'synthetic' or mnist16:MNIST_ROOT; got '$DATA'" >&2; exit 2 ;;
esac
python - "$OUTDIR" "$0 $*" "$STEPS" "$N_EVAL" "$DATA" "$JOBS" <<'PY'
import datetime, json, os, platform, subprocess, sys, torch
out, cmd, steps, n, data, jobs = sys.argv[1:]
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "cmlite", "bench"], capture_output=True,
                            text=True).stdout.strip())
info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "command": f"bash {cmd}", "commit": commit,
        "uncommitted_changes": dirty, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "jobs": int(jobs), "steps": int(steps), "n_eval": int(n), "data": data}
open(f"{out}/run_info.json", "w").write(json.dumps(info, indent=1) + "\n")
PY
for seed in 0 1; do
  for m in ict cct sct ect; do
    [ -f "$W/$m-s$seed/recipe.json" ] && grep -q '"status": "done"' "$W/$m-s$seed/recipe.json" && continue
    rm -rf "$W/$m-s$seed"
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
    nice -n "$NICE" python -m cmlite train "tiny-$m" --out "$W/$m-s$seed" --steps "$STEPS" --quiet \
      --set "${SET[@]}" train.seed=$seed &
  done
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n; done
# shellcheck disable=SC2046
nice -n "$NICE" python -m cmlite eval $(ls -d "$W"/*-s[01] | sort) --n "$N_EVAL" --inception no --json \
  > "$OUTDIR/eval.json"
python - "$OUTDIR" <<'PY'
import json, statistics, sys
from collections import defaultdict
from pathlib import Path
out = Path(sys.argv[1])
runs, secs = defaultdict(dict), defaultdict(dict)
for r in json.loads((out / "eval.json").read_text()):
    name = Path(r["run"]).name
    m, seed = name[:-3], name[-2:]
    runs[m][seed] = [row["fid_classifier"] for row in r["rows"]]
    info = json.loads((Path(r["run"]) / "recipe.json").read_text())
    secs[m][seed] = info.get("train_seconds_this_process")
    floor = r["floors"]["classifier"]["fid"]
    n = r["n"]
summary = {"floor": floor, "n": n, "fid": runs, "train_seconds": secs,
           "info": json.loads((out / "run_info.json").read_text())}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
lines = [f"Classifier FID of {n} samples (floor {floor:.4f}: real vs real at this n); seeds 0 / 1, mean.",
         "", "| method | 1 step (s0 / s1) | mean | 2 steps (s0 / s1) | mean | train s per run |",
         "| --- | --- | --- | --- | --- | --- |"]
mean = lambda m, i: statistics.mean(v[i] for v in runs[m].values())  # noqa: E731
for m in sorted(runs, key=lambda m: mean(m, 0)):
    s = runs[m]
    lines.append(f"| {m} | {s['s0'][0]:.3f} / {s['s1'][0]:.3f} | {mean(m, 0):.3f} | {s['s0'][1]:.3f} / "
                 f"{s['s1'][1]:.3f} | {mean(m, 1):.3f} | {statistics.mean(secs[m].values()):.0f} |")
(out / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
