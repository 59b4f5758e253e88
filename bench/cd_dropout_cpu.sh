#!/usr/bin/env bash
# CPU check of one recipe choice: dropout in the CD student (the official CD commands use --dropout 0.0).
# A tiny U-Net teacher (dropout 0.13, as the cifar10 presets) on the project's synthetic 16x16 shapes,
# 600 steps; then CD from it for 400 steps with the student's dropout 0.0 or 0.13, two seeds each; classifier
# FID of 2000 one- and two-step samples. About 15 minutes on 2 cores. Writes $OUT/summary.json.
set -euo pipefail
OUT=${OUT:-bench/out/cd-dropout}; W=$OUT/runs
mkdir -p "$W"
export OMP_NUM_THREADS=1
python -m cmlite train tiny-teacher --out "$W/t" --steps 600 --quiet --set train.batch_size=64 net_overrides.dropout=0.13
for seed in 0 1; do
  for d in 0.0 0.13; do
    python -m cmlite train tiny-cd --out "$W/cd-d$d-s$seed" --teacher "$W/t" --steps 400 --quiet \
      --set train.batch_size=64 train.seed=$seed net_overrides.dropout=$d &
  done
  wait
done
python -m cmlite eval "$W"/cd-* --n 2000 --inception no --json > "$OUT/eval.json"
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = json.loads((out / "eval.json").read_text())
summary = {r["run"].split("/")[-1]: {"fid_classifier_1_step": r["rows"][0]["fid_classifier"],
                                     "fid_classifier_2_steps": r["rows"][1]["fid_classifier"],
                                     "floor": r["floors"]["classifier"]["fid"]} for r in rows}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
for k, v in summary.items():
    print(f"{k:16s} 1 step {v['fid_classifier_1_step']:.3f}  2 steps {v['fid_classifier_2_steps']:.3f}  (floor {v['floor']:.4f})")
PY
