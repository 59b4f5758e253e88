#!/usr/bin/env bash
# The GPU runs behind the image numbers in docs/ (docs/results/README.md says which stage made which folder).
#
#   bash bench/gpu/stage.sh STAGE [OUTDIR] [ARGS...]
#
# Each stage is one command of at most 10 minutes. What it produces (logs, JSON, PNG grids; no weights) is
# packed into OUTDIR/STAGE.tgz (default OUTDIR: bench/out/gpu). The stages `train`, `eval` and `bench` take
# ARGS, so name OUTDIR there. Runs, logs, data and the compile cache live in the work folder
# runs/gpu-stage/ of the checkout, so a later stage finds the runs of an earlier one on the same machine.
# First, on the machine that has the data: `bash bench/gpu/prepare.sh` builds the .gpu/ folders (data sets,
# Inception weights in two parts); copy them to the GPU machine with the checkout.
#
# Stages, in the order they were run on 2026-11-26 (the folders of docs/results/):
#   a: MNIST + the first half of the Inception weights; train mnist-teacher, mnist-cd, mnist-ict
#   b: the second half of the Inception weights (sha1 checked); evaluate the MNIST runs; MNIST editing
#   c: CIFAR-10: train cifar10-teacher, cifar10-cd, cifar10-ict; evaluate them
#   d: CIFAR-10 editing and time search; the step benchmark
#   e: (2-GPU machine) step bench + MNIST teacher/CD + MNIST editing in parallel, then 2-GPU scaling
#   p1..p4: a 2-GPU machine, each recipe on a GPU of its own (docs/results/gpu-2026-11-26b)
#   q1..q4: the same with the CD recipes' mu = 0.95 and no student dropout (docs/results/gpu-2026-11-26c)
#   s1..s7: the step benchmark of the 55.7M network on one GPU (docs/results/gpu-2026-11-26d)
#   train NAME [args]  /  eval NAME [args]: one recipe per command (e.g. `train OUTDIR cifar10-ict --minutes 9`)
#   bench [args]: bench/step_bench.py at batch 512;  smoke: a 50-step tiny-ict run on the GPU
# Minutes per run: MIN_MNIST_TEACHER, MIN_MNIST_CD, MIN_MNIST_ICT, MIN_MNIST_CT, MIN_CIFAR_TEACHER, MIN_CIFAR_CD,
# MIN_CIFAR_ICT (never short names such as CC or CI: many machines set CC to their C compiler, CI systems set CI).
#
# What these runs taught (2026-11-26):
# * Compiling a U-Net takes 50-100 s of each run's budget (cifar10-small ~100 s with data decoding); the step
#   bench's dynamic-batch compile of the 55.7M net needs more than 150 s: give it `--dynamic static --batch 512`
#   and a slot of >= 5 minutes.
# * A cold compile costs 60-140 s per run, a warm cache (same network and batch, the same
#   TORCHINDUCTOR_CACHE_DIR) 25-30 s, so a 1.8-minute MNIST run trains for ~20 s. Evaluating seven runs, two
#   editing benches and the step bench needs more than 8 minutes: give the step bench its own command.
# * Two processes compiling at once on a cold machine spend 100-190 s of start-up per run (CD compiles student,
#   target and teacher graphs): MNIST CD (q3) trained 12 s of its 2.7 minutes. Give a cold CD run >= 4
#   minutes, or run it after a run of the same network and batch.
# * The 55.7M network's CT step compiles in 130-190 s per batch size, its sampling graph in 25-80 s;
#   max-autotune and coordinate-descent tuning do not compile within 4 minutes (s4 measured nothing); the
#   matmul peak read 725-804 TFLOP/s between processes, so compare variants within one process (s1, s6).
set -uo pipefail
STAGE=${1:?usage: bash bench/gpu/stage.sh STAGE [OUTDIR] [ARGS...] (stages: see the top of this file)}
OUTDIR=${2:-bench/out/gpu}
shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$(dirname "$0")/../.."  # the repository root
[ "$STAGE" = train ] || [ "$STAGE" = eval ] && L_SUFFIX=-$1 || L_SUFFIX=
WORK=$PWD/runs/gpu-stage
S=$WORK/stash R=$WORK/runs L=$WORK/logs/$STAGE$L_SUFFIX
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CMLITE_DATA=$S CMLITE_INCEPTION=$S/default_1.pt
# one compile cache for every run on the machine: runs of the same network and batch reuse its kernels;
# NVLink multicast stays off in every process (NCCL's NVLS and torch's symmetric memory)
export TORCHINDUCTOR_CACHE_DIR=$WORK/inductor NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p $S $R $L
pack() { (cd $WORK && tar czf "$OUTDIR/$STAGE.tgz" --exclude='*.pt' --exclude='*.safetensors' --exclude='*.npz' logs runs 2>/dev/null); ls -la "$OUTDIR"; }
trap pack EXIT
for d in .gpu/*/; do cp -n $d* $S/ 2>/dev/null; done
if [ -f $S/inc_aa ] && [ -f $S/inc_ab ] && [ ! -f $S/default_1.pt ]; then
  cat $S/inc_aa $S/inc_ab > $S/default_1.pt && sha1sum $S/default_1.pt | tee $L/inception.sha1
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee $L/gpu.txt
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee -a $L/gpu.txt
T() { local name=$1; shift; echo "=== train $name $(date +%T)"; python -m cmlite train $name --out $R/$name "$@" 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | sed -un -E '1~20{p;b};/Error|error|Traceback|steps,/p' | tee $L/train-$name.log; }
E() { local name=$1; shift; echo "=== eval $name $(date +%T)"; python -m cmlite eval $R/$name --cache $R "$@" 2>&1 | tee $L/eval-$name.log; }
case $STAGE in
  a) T mnist-teacher --minutes ${MIN_MNIST_TEACHER:-2.5}
     T mnist-cd --teacher $R/mnist-teacher --minutes ${MIN_MNIST_CD:-2.5}
     T mnist-ict --minutes ${MIN_MNIST_ICT:-3} ;;
  b) for r in mnist-teacher mnist-cd mnist-ict; do E $r --inception yes; done
     [ -f bench/edit_eval.py ] && python bench/edit_eval.py ${EDIT_MNIST_ARGS:-} 2>&1 | tee $L/edit-mnist.log ;;
  c) T cifar10-teacher --minutes ${MIN_CIFAR_TEACHER:-3}
     T cifar10-cd --teacher $R/cifar10-teacher --minutes ${MIN_CIFAR_CD:-2}
     T cifar10-ict --minutes ${MIN_CIFAR_ICT:-2.5}
     for r in cifar10-teacher cifar10-cd cifar10-ict; do E $r --inception yes; done ;;
  d) [ -f bench/edit_eval.py ] && python bench/edit_eval.py ${EDIT_CIFAR_ARGS:-} 2>&1 | tee $L/edit-cifar.log
     [ -f bench/step_bench.py ] && python bench/step_bench.py ${BENCH_ARGS:-} --out $L/bench.json 2>&1 | tee $L/bench.log ;;
  e) # 2-GPU machine. GPU0: step bench, then scaling on 1 GPU; GPU1: MNIST teacher + CD (pseudo-Huber) + editing;
     # then the same scaling run on 2 GPUs (torchrun). Each piece has its own time limit.
     export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 TORCHINDUCTOR_CACHE_DIR=$WORK/inductor-e
     ( export CUDA_VISIBLE_DEVICES=0
       timeout 200 python bench/step_bench.py --kinds ct sample --variants fast fp32-eager --batch 512 256 \
         --time-limit 150 --out $L/bench.json > $L/bench.log 2>&1
       timeout 50 python bench/step_bench.py --kinds cd --variants fast --batch 512 --time-limit 20 \
         --out $L/bench_cd.json > $L/bench_cd.log 2>&1
       STEPS=${SCALE_STEPS:-200} timeout 150 bash bench/scale.sh 1 $L > $L/scale1.log 2>&1 ) &
     ( export CUDA_VISIBLE_DEVICES=1
       T mnist-teacher --minutes ${MIN_MNIST_TEACHER:-2.5}
       T mnist-cd --teacher $R/mnist-teacher --minutes ${MIN_MNIST_CD:-2.5} --set distance=pseudo_huber
       timeout 100 python bench/edit_eval.py --runs $R --data $S --out $L/edit --datasets mnist --models cd \
         --inception no > $L/edit.log 2>&1 ) &
     wait
     STEPS=${SCALE_STEPS:-200} timeout 100 bash bench/scale.sh 2 $L > $L/scale2.log 2>&1
     bash bench/scale.sh report $L > $L/scale_report.log 2>&1; for f in $L/*.log; do tail -n 5 "$f"; done ;;
  # A 2-GPU machine, four commands back to back (data needed: p1 .gpu/c .gpu/e; p2 .gpu/a; p3 .gpu/b; p4 none).
  # Each recipe trains on one H100 of its own; evaluation shares a GPU (no timing there); the step bench
  # has GPU 1 to itself, the scaling runs the whole machine.
  p1) G0() { export CUDA_VISIBLE_DEVICES=0; T cifar10-teacher --minutes ${MIN_CIFAR_TEACHER:-5.5}; }
      G1() { export CUDA_VISIBLE_DEVICES=1; T cifar10-ict --minutes ${MIN_CIFAR_ICT:-5.5}; }
      G0 > $L/gpu0.log 2>&1 & G1 > $L/gpu1.log 2>&1 & wait; tail -n 4 $L/train-*.log ;;
  p2) G0() { export CUDA_VISIBLE_DEVICES=0; T cifar10-cd --teacher $R/cifar10-teacher --minutes ${MIN_CIFAR_CD:-5.5}; }
      G1() { export CUDA_VISIBLE_DEVICES=1
             T mnist-teacher --minutes ${MIN_MNIST_TEACHER:-1.8}
             T mnist-cd --teacher $R/mnist-teacher --minutes ${MIN_MNIST_CD:-1.7}
             T mnist-ict --minutes ${MIN_MNIST_ICT:-1.7}
             T mnist-ct --minutes ${MIN_MNIST_CT:-1.3}; }
      G0 > $L/gpu0.log 2>&1 & G1 > $L/gpu1.log 2>&1 & wait; tail -n 4 $L/train-*.log ;;
  p3) A() { export CUDA_VISIBLE_DEVICES=0
            python -m cmlite sample $R/mnist-ct --steps 2 --n 64 --out $L/mnist-ct-samples.npz 2>&1 | tail -n 3
            for r in mnist-teacher mnist-cd mnist-ict mnist-ct; do E $r --inception yes; done
            timeout ${EDIT_S:-240} python bench/edit_eval.py --runs $R --data $S --out $L/edit-mnist \
              --datasets mnist --models cd ict ct > $L/edit-mnist.log 2>&1; }
      B() { export CUDA_VISIBLE_DEVICES=0
            for r in cifar10-teacher cifar10-cd cifar10-ict; do E $r --inception yes; done
            timeout ${EDIT_S:-240} python bench/edit_eval.py --runs $R --data $S --out $L/edit-cifar10 \
              --datasets cifar10 --models cd ict > $L/edit-cifar10.log 2>&1; }
      C() { export CUDA_VISIBLE_DEVICES=1
            timeout ${BENCH_S:-330} python bench/step_bench.py --dynamic static --batch 512 --kinds ct sample cd \
              --variants fast fp32-eager --time-limit ${BENCH_LIMIT:-260} --out $L/bench.json > $L/bench.log 2>&1; }
      A > $L/a.log 2>&1 & B > $L/b.log 2>&1 & C > $L/c.log 2>&1 & wait
      for f in $L/*.log; do echo "--- $f"; tail -n 6 "$f"; done ;;
  p4) # weak scaling (512 per GPU: the graphs of p1's cifar10-ict, compiled already), then strong (512 in all)
      export RECIPE=cifar10-ict STEPS=${SCALE_STEPS:-300}  # scale.sh writes scale.json to its OUTDIR, $L
      PER_GPU=1 RUNS=$WORK/scale-weak timeout 200 bash bench/scale.sh 2 $L > $L/scale-weak2.log 2>&1
      PER_GPU=1 RUNS=$WORK/scale-weak timeout 150 bash bench/scale.sh 1 $L > $L/scale-weak1.log 2>&1
      cp $L/scale.json $L/scale-weak.json 2>/dev/null
      RUNS=$WORK/scale-strong timeout ${STRONG_S:-150} bash bench/scale.sh 2 $L > $L/scale-strong2.log 2>&1
      cp -r $WORK/scale-weak/g1 $WORK/scale-strong/ 2>/dev/null; RUNS=$WORK/scale-strong bash bench/scale.sh report $L > $L/scale-strong.log 2>&1
      for f in $L/*.log; do echo "--- $f"; tail -n 8 "$f"; done ;;
  # A 2-GPU machine, the CD recipes with mu = 0.95 and no student dropout: the step bench first, on a GPU of its own
  # beside the CIFAR-10 teacher (data needed: q1 .gpu/c .gpu/e; q2 .gpu/a; q3 .gpu/b; q4 none). Run the four
  # stages one after another on one machine: each finds the runs and the compile cache of the ones before.
  q1) G0() { export CUDA_VISIBLE_DEVICES=0; T cifar10-teacher --minutes ${MIN_CIFAR_TEACHER:-6}; }
      G1() { export CUDA_VISIBLE_DEVICES=1; timeout ${BENCH_S:-350} python bench/step_bench.py --dynamic static \
               --batch 512 --kinds ct sample cd --variants fast fp32-eager --profile --time-limit ${BENCH_LIMIT:-290} \
               --out $L/bench.json; }
      G0 > $L/gpu0.log 2>&1 & G1 > $L/bench.log 2>&1 & wait; tail -n 2 $L/train-*.log; tail -n 25 $L/bench.log ;;
  q2) G0() { export CUDA_VISIBLE_DEVICES=0; T cifar10-cd --teacher $R/cifar10-teacher --minutes ${MIN_CIFAR_CD:-5.5}; }
      G1() { export CUDA_VISIBLE_DEVICES=1; T cifar10-ict --minutes ${MIN_CIFAR_ICT:-5.5}; }
      G0 > $L/gpu0.log 2>&1 & G1 > $L/gpu1.log 2>&1 & wait; tail -n 2 $L/train-*.log ;;
  q3) G0() { export CUDA_VISIBLE_DEVICES=0; T mnist-teacher --minutes ${MIN_MNIST_TEACHER:-2.7}
             T mnist-cd --teacher $R/mnist-teacher --minutes ${MIN_MNIST_CD:-2.7}; }
      G1() { export CUDA_VISIBLE_DEVICES=1; T mnist-ict --minutes ${MIN_MNIST_ICT:-2.7}
             T mnist-ct --minutes ${MIN_MNIST_CT:-2.3}
             python -m cmlite sample $R/mnist-ct --steps 2 --n 64 --out $L/mnist-ct-samples.npz; }
      G0 > $L/gpu0.log 2>&1 & G1 > $L/gpu1.log 2>&1 & wait; tail -n 2 $L/train-*.log ;;
  q4) # one eval call per data set (shared classifier and reference statistics), then its editing bench
      G0() { export CUDA_VISIBLE_DEVICES=0
             python -m cmlite eval $R/mnist-teacher $R/mnist-cd $R/mnist-ict $R/mnist-ct --cache $R --inception yes
             timeout ${EDIT_S:-300} python bench/edit_eval.py --runs $R --data $S --out $L/edit-mnist --datasets mnist \
               --models cd ict ct; }
      G1() { export CUDA_VISIBLE_DEVICES=1
             python -m cmlite eval $R/cifar10-teacher $R/cifar10-cd $R/cifar10-ict --cache $R --inception yes
             timeout ${EDIT_S:-300} python bench/edit_eval.py --runs $R --data $S --out $L/edit-cifar10 \
               --datasets cifar10 --models cd ict; }
      G0 > $L/eval-mnist.log 2>&1 & G1 > $L/eval-cifar10.log 2>&1 & wait
      for f in $L/eval-*.log; do echo "--- $f"; tail -n 30 "$f"; done ;;
  # The step benchmark of the 55.7M network (one GPU, no data needed; each stage about 6-9 minutes):
  # s1: the CT step with cmlite's compile_net (channels-last convolutions forced) against Inductor's own layout
  # heuristic, profiled, then at batch 1024; s2: the CD step and sampling; s3: CT with more Inductor tuning.
  s1) timeout 570 python bench/step_bench.py --dynamic static --batch 512 1024 --kinds ct \
        --variants fast fast-heuristic --profile --time-limit ${BENCH_LIMIT:-380} --out $L/bench-ct.json 2>&1 \
        | grep -v -i warn | tee $L/bench-ct.log | tail -n 60 ;;
  s2) timeout 570 python bench/step_bench.py --dynamic static --batch 512 --kinds cd sample --variants fast fp32-eager \
        --profile --time-limit ${BENCH_LIMIT:-400} --out $L/bench-cd.json 2>&1 | grep -v -i warn | tee $L/bench-cd.log \
        | tail -n 60
      # the library calls (fallbacks) in Inductor's generated wrappers, and the lines that copy or cast
      W=$(grep -rl "def call(" $TORCHINDUCTOR_CACHE_DIR 2>/dev/null); echo "$W" | wc -l > $L/wrappers.txt
      grep -oh "extern_kernels\.[a-z_0-9]*\|torch\.ops\.aten\.[a-z_0-9]*\|aten\.[a-z_0-9]*\.[a-z_]*" $W \
        | sort | uniq -c | sort -rn >> $L/wrappers.txt
      grep -h -B2 "_to_copy\|\.copy_(\|as_strided_copy" $W | head -n 300 >> $L/wrappers.txt; tail -n 40 $L/wrappers.txt ;;
  s3) # sampling at three batch sizes, then CT at 512 (profiled) and 1024; then Inductor's wrappers (their buffer
      # strides show which tensors reach a convolution's backward pass in which layout)
      timeout 150 python bench/step_bench.py --dynamic static --batch 512 1024 2048 --kinds sample --variants fast \
        --profile --out $L/bench-sample.json 2>&1 | grep -v -i warn | tee $L/bench-sample.log | tail -n 8
      timeout 400 python bench/step_bench.py --dynamic static --batch 512 1024 --kinds ct --variants fast --profile \
        --out $L/bench-ct.json 2>&1 | grep -v -i warn | tee $L/bench-ct.log | tail -n 30
      grep -rl "convolution_backward.default(" $TORCHINDUCTOR_CACHE_DIR 2>/dev/null | grep "\.py$" | head -n 8 \
        | tar czf "$OUTDIR/wrappers.tgz" -T - ;;
  s4) # Inductor tuning, sampling first (short compiles): max-autotune, then coordinate-descent tuning; CT with the latter
      timeout 240 python bench/step_bench.py --dynamic static --batch 1024 --kinds sample --variants fast \
        --compile-mode max-autotune-no-cudagraphs --out $L/sample-autotune.json 2>&1 | grep -v -i warn | tail -n 4
      timeout 110 python bench/step_bench.py --dynamic static --batch 1024 --kinds sample --variants fast \
        --inductor-config coordinate_descent_tuning=True --out $L/sample-cdt.json 2>&1 | grep -v -i warn | tail -n 4
      timeout 210 python bench/step_bench.py --dynamic static --batch 1024 --kinds ct --variants fast \
        --inductor-config coordinate_descent_tuning=True --out $L/ct-cdt.json 2>&1 | grep -v -i warn | tail -n 4 ;;
  s5) # the README's table: CT and sampling at 512 beside fp32 eager, then at 1024 (fp32 eager CT does not fit there)
      timeout 330 python bench/step_bench.py --dynamic static --batch 512 --kinds ct sample --variants fast fp32-eager \
        --out $L/bench-512.json 2>&1 | grep -v -i warn | tee $L/bench-512.log | tail -n 14
      timeout 245 python bench/step_bench.py --dynamic static --batch 1024 --kinds ct sample --variants fast \
        --out $L/bench-1024.json 2>&1 | grep -v -i warn | tee $L/bench-1024.log | tail -n 12 ;;
  s6) # cmlite's channels-last GroupNorm against torch's, sampling and CT at 512, profiled
      timeout 540 python bench/step_bench.py --dynamic static --batch 512 --kinds sample ct \
        --variants fast fast-library-gn --profile --out $L/bench-gn.json 2>&1 | grep -v -i warn | tee $L/bench-gn.log \
        | grep -v "^      " | tail -n 24 ;;
  s7) # not run yet: CT at 512 with torch's GroupNorm, cmlite's in the no-grad passes (the default), and everywhere
      timeout 570 python bench/step_bench.py --dynamic static --batch 512 --kinds ct \
        --variants fast fast-library-gn fast-always-gn --out $L/bench-gn-ct.json 2>&1 | grep -v -i warn \
        | tee $L/bench-gn-ct.log | tail -n 12 ;;
  train) T "$@" ;;
  eval) E "$@" --inception ${INCEPTION:-auto} ;;
  bench) python bench/step_bench.py --dynamic static --batch 512 --out $L/bench.json "$@" 2>&1 | tee $L/bench.log ;;
  smoke) T tiny-ict --steps 50 --set train.device=cuda train.precision=bf16 train.compile=True ;;
esac
echo "=== stage $STAGE done $(date +%T)"
