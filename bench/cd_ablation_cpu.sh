#!/usr/bin/env bash
# CPU ablation of the CD recipe at toy scale: which choices make a short distillation run's one-step samples
# better. A tiny U-Net teacher (dropout 0.13, as the CIFAR-10 presets) on the project's synthetic 16x16
# shapes, 600 steps; then CD (tiny-cd: Heun, N = 10, L2, mu = 0, lr 1e-3) from it for 400 steps in each
# variant below, seeds 0 and 1; classifier FID of 2000 one- and two-step samples (cmlite eval, one call).
# About 25 minutes on 2 cores.
#   bash bench/cd_ablation_cpu.sh [OUTDIR]   (default bench/out/cd-ablation)
# Writes OUTDIR/eval.json and OUTDIR/summary.json (the runs go to OUTDIR/runs; a run already there is kept)
# and prints a table. The results of 2026-11-26 are in docs/results/cpu-cd-ablation/.
set -euo pipefail
OUTDIR=${1:-bench/out/cd-ablation}; W=$OUTDIR/runs
mkdir -p "$W"
export OMP_NUM_THREADS=1
declare -A VARIANTS=(
  [dropout0.13]="net_overrides.dropout=0.13"
  [base]="net_overrides.dropout=0.0"
  [lr2e-4]="net_overrides.dropout=0.0 train.lr=2e-4"
  [mu0.95]="net_overrides.dropout=0.0 mu=0.95"
  [lr2e-4_mu0.95]="net_overrides.dropout=0.0 train.lr=2e-4 mu=0.95"
  [pseudo_huber]="net_overrides.dropout=0.0 distance=pseudo_huber"
  [N18]="net_overrides.dropout=0.0 N=18"
)
[ -f "$W/t/recipe.json" ] || python -m cmlite train tiny-teacher --out "$W/t" --steps 600 --quiet \
  --set train.batch_size=64 net_overrides.dropout=0.13
for v in "${!VARIANTS[@]}"; do
  for seed in 0 1; do
    [ -f "$W/$v-s$seed/recipe.json" ] && continue
    # shellcheck disable=SC2086
    python -m cmlite train tiny-cd --out "$W/$v-s$seed" --teacher "$W/t" --steps 400 --quiet \
      --set train.batch_size=64 train.seed=$seed ${VARIANTS[$v]} &
  done
  wait
done
python -m cmlite eval $(ls -d "$W"/*-s[01] | sort) --n 2000 --inception no --json > "$OUTDIR/eval.json"
python - "$OUTDIR" <<'PY'
import json, sys
from collections import defaultdict
from pathlib import Path
out = Path(sys.argv[1])
runs = defaultdict(dict)
for r in json.loads((out / "eval.json").read_text()):
    name = Path(r["run"]).name
    runs[name[:-3]][name[-2:]] = [row["fid_classifier"] for row in r["rows"]]
    floor = r["floors"]["classifier"]["fid"]
summary = {"floor": floor, "n": 2000, "variants": runs}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(f"classifier FID of 2000 samples (floor {floor:.4f}); seeds 0 / 1")
print(f"{'variant':16s} {'1 step':>16s} {'2 steps':>16s}")
for v, s in sorted(runs.items(), key=lambda kv: sum(x[0] for x in kv[1].values())):
    print(f"{v:16s} {s['s0'][0]:7.3f} /{s['s1'][0]:7.3f} {s['s0'][1]:7.3f} /{s['s1'][1]:7.3f}")
PY
