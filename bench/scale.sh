#!/usr/bin/env bash
# Data-parallel scaling of `cmlite train`: images/s of a recipe on 1 GPU and on 2 GPUs of one machine,
# through the library's own command (torchrun + DistributedDataParallel for 2), steady state only: the
# run summary's steady_images_per_second counts the log steps after the first STEADY_AFTER = 10 steps, so
# start-up, data loading, compilation and the final checkpoint and sample grid are left out.
#
#   bash bench/scale.sh 1 [OUTDIR]        # one GPU (CUDA_VISIBLE_DEVICES=0), on the 2-GPU machine itself
#   bash bench/scale.sh 2 [OUTDIR]        # torchrun --nproc-per-node 2, the same global batch (strong scaling)
#   bash bench/scale.sh report [OUTDIR]   # the table, OUTDIR/scale.json and OUTDIR/topo.txt from the runs so far
#   bash bench/scale.sh both [OUTDIR]     # 1, 2 and report in one go (about twice the time of one)
# OUTDIR: where scale.json and topo.txt go (default bench/out/scale).
#
# Environment (defaults in brackets):
#   RECIPE [cifar10-ct]   STEPS [400]   LOG [50: log_every, the steady-state marks]
#   BATCH  [the recipe's global batch, 512]; PER_GPU=1 keeps BATCH per GPU (weak scaling: 2 GPUs get 2*BATCH)
#   NET    [the recipe's U-Net preset, cifar10-small for cifar10-ct; NET=cifar10 is the 55.7M network]
#   DATA   [synthetic: 2048 random-shape images of the recipe's size (throughput does not depend on the
#          pixels); DATA=real uses the recipe's data set from $CMLITE_DATA]
#   RUNS   [runs/scale: the run folders, g1 and g2]
#   TORCHINDUCTOR_CACHE_DIR [runs/scale-inductor: the compile cache; a second run of the same network and
#          batch finds its kernels there]
set -euo pipefail
MODE=${1:-both}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# NVLink multicast (NCCL's NVLS, torch's symmetric memory) stays off in every process we start
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/runs/scale-inductor}
RECIPE=${RECIPE:-cifar10-ct} STEPS=${STEPS:-400} LOG=${LOG:-50} RUNS=${RUNS:-runs/scale}
OUTDIR=${2:-bench/out/scale}
mkdir -p "$RUNS" "$OUTDIR"

SETS=(train.log_every=$LOG)
[ -n "${NET:-}" ] && SETS+=(net=$NET)
if [ "${DATA:-synthetic}" = synthetic ]; then
  read -r C H < <(python -c "
from cmlite.image.recipes import get_recipe
from cmlite.image.unet import unet_config
r = get_recipe('$RECIPE'); c = unet_config(r.net, **r.net_overrides)
print(c.in_channels, c.img_resolution)")
  SETS+=(dataset=synthetic net_overrides.in_channels=$C net_overrides.img_resolution=$H)
fi
global_batch() {  # $1 = number of GPUs
  local b=${BATCH:-$(python -c "from cmlite.image.recipes import get_recipe; print(get_recipe('$RECIPE').train.batch_size)")}
  if [ "${PER_GPU:-0}" = 1 ]; then echo $((b * $1)); else echo "$b"; fi
}

run() {  # $1 = number of GPUs
  local g=$1 dir=$RUNS/g$1 b; b=$(global_batch "$1")
  rm -rf "$dir"
  echo "=== $RECIPE on $g GPU(s): global batch $b, $STEPS steps, ${SETS[*]} ($(date +%T))"
  local t0=$SECONDS
  if [ "$g" = 1 ]; then
    CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} python -m cmlite train "$RECIPE" --steps "$STEPS" --out "$dir" \
      --quiet --set "${SETS[@]}" train.batch_size=$b
  else
    torchrun --standalone --nproc-per-node "$g" -m cmlite train "$RECIPE" --steps "$STEPS" --out "$dir" \
      --quiet --set "${SETS[@]}" train.batch_size=$b
  fi
  echo "=== $g GPU(s) done in $((SECONDS - t0)) s"
}

report() {
  nvidia-smi topo -m > "$OUTDIR/topo.txt" 2>/dev/null || true
  python - "$RUNS" "$OUTDIR/scale.json" <<'EOF'
import json, sys
from pathlib import Path
runs, out = Path(sys.argv[1]), Path(sys.argv[2])
res = {}
for g in (1, 2):
    f = runs / f"g{g}" / "recipe.json"
    if f.is_file():
        s = json.loads(f.read_text())
        res[g] = {k: s.get(k) for k in ("device", "world_size", "steps", "steady_steps", "steady_images_per_second",
                                        "images_per_second", "startup_seconds", "final_loss")}
        res[g].update(batch=s["recipe"]["train"]["batch_size"], net=s["recipe"]["net"], recipe=s["recipe"]["name"])
rows = ["| GPUs | device | net | global batch | steps (steady) | steady images/s | images/s incl. start-up | start-up s |",
        "|---|---|---|---|---|---|---|---|"]
for g, r in sorted(res.items()):
    rows.append(f"| {g} | {r['device']} | {r['net']} | {r['batch']} | {r['steps']} ({r['steady_steps']}) | "
                f"{r['steady_images_per_second'] or float('nan'):.0f} | {r['images_per_second']:.0f} | "
                f"{r['startup_seconds'] or float('nan'):.0f} |")
if 1 in res and 2 in res and res[1]["steady_images_per_second"] and res[2]["steady_images_per_second"]:
    res["speedup"] = res[2]["steady_images_per_second"] / res[1]["steady_images_per_second"]
    rows.append(f"\n2 GPUs / 1 GPU: **{res['speedup']:.2f}x** steady-state images/s (target >= 1.8x)")
out.write_text(json.dumps(res, indent=1))
print("\n".join(rows))
EOF
}

case $MODE in
  1) run 1; report ;;
  2) run 2; report ;;
  report) report ;;
  both) run 1; run 2; report ;;
  *) echo "usage: bash bench/scale.sh 1|2|both|report [OUTDIR]" >&2; exit 2 ;;
esac
