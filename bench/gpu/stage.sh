#!/usr/bin/env bash
# The GPU runs behind the README's image numbers, one stage per device call (each call <= 10 minutes;
# the device machine keeps files outside the repository between calls while it stays warm):
#   a: stash MNIST + the first half of the Inception weights; train mnist-teacher, mnist-cd, mnist-ict
#   b: stash the second half of the Inception weights (sha1 checked); evaluate the MNIST runs; MNIST editing
#   c: CIFAR-10: train cifar10-teacher, cifar10-cd, cifar10-ict; evaluate them
#   d: CIFAR-10 editing and time search; the step benchmark
#   e: (2-GPU machine) step bench + MNIST teacher/CD + MNIST editing in parallel, then 2-GPU scaling
#   train NAME [args]  /  eval NAME [args]: one recipe per call (e.g. `train cifar10-ict --minutes 9`),
#      for 10-minute runs; the runs stay in /root/runs while the machine is warm (30 s after a call).
# Lessons of 2026-11-26: compiling a U-Net takes 50-100 s of each run's budget (cifar10-small ~100 s with
# data decoding), and the step bench's dynamic-batch compile of the 55.7M net needs more than 150 s:
# give it `--dynamic static --batch 512` and a slot of >= 5 minutes.
# Everything a stage produced is packed into $OUT/<stage>.tgz (logs, JSON, PNG grids; no weights).
set -uo pipefail
STAGE=$1; shift
[ "$STAGE" = train ] || [ "$STAGE" = eval ] && L_SUFFIX=-$1 || L_SUFFIX=
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CMLITE_DATA=/root/stash CMLITE_INCEPTION=/root/stash/default_1.pt
S=/root/stash R=/root/runs L=/root/logs/$STAGE$L_SUFFIX
mkdir -p $S $R $L
pack() { (cd /root && tar czf $OUT/$STAGE.tgz --exclude='*.pt' --exclude='*.safetensors' --exclude='*.npz' logs runs 2>/dev/null); ls -la $OUT; }
trap pack EXIT
for d in .gpu/*/; do cp -n $d* $S/ 2>/dev/null; done
if [ -f $S/inc_aa ] && [ -f $S/inc_ab ] && [ ! -f $S/default_1.pt ]; then
  cat $S/inc_aa $S/inc_ab > $S/default_1.pt && sha1sum $S/default_1.pt | tee $L/inception.sha1
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee $L/gpu.txt
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee -a $L/gpu.txt
T() { local name=$1; shift; echo "=== train $name $(date +%T)"; python -m cmlite train $name --out $R/$name "$@" 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | awk 'NR%20==1 || /Error|error|Traceback|steps,/' | tee $L/train-$name.log; }
E() { local name=$1; shift; echo "=== eval $name $(date +%T)"; python -m cmlite eval $R/$name --cache $R "$@" 2>&1 | tee $L/eval-$name.log; }
case $STAGE in
  a) T mnist-teacher --minutes ${MT:-2.5}
     T mnist-cd --teacher $R/mnist-teacher --minutes ${MC:-2.5}
     T mnist-ict --minutes ${MI:-3} ;;
  b) for r in mnist-teacher mnist-cd mnist-ict; do E $r --inception yes; done
     [ -f bench/edit_eval.py ] && python bench/edit_eval.py ${EDIT_MNIST_ARGS:-} 2>&1 | tee $L/edit-mnist.log ;;
  c) T cifar10-teacher --minutes ${CT_:-3}
     T cifar10-cd --teacher $R/cifar10-teacher --minutes ${CC:-2}
     T cifar10-ict --minutes ${CI:-2.5}
     for r in cifar10-teacher cifar10-cd cifar10-ict; do E $r --inception yes; done ;;
  d) [ -f bench/edit_eval.py ] && python bench/edit_eval.py ${EDIT_CIFAR_ARGS:-} 2>&1 | tee $L/edit-cifar.log
     [ -f bench/step_bench.py ] && python bench/step_bench.py ${BENCH_ARGS:-} --out $L/bench.json 2>&1 | tee $L/bench.log ;;
  e) # 2-GPU machine. GPU0: step bench, then scaling on 1 GPU; GPU1: MNIST teacher + CD (pseudo-Huber) + editing;
     # then the same scaling run on 2 GPUs (torchrun). Each piece has its own time limit.
     export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind
     ( export CUDA_VISIBLE_DEVICES=0
       timeout 200 python bench/step_bench.py --kinds ct sample --variants fast fp32-eager --batch 512 256 \
         --time-limit 150 --out $L/bench.json > $L/bench.log 2>&1
       timeout 50 python bench/step_bench.py --kinds cd --variants fast --batch 512 --time-limit 20 \
         --out $L/bench_cd.json > $L/bench_cd.log 2>&1
       STEPS=${SCALE_STEPS:-200} OUT=$L timeout 150 bash bench/scale.sh 1 > $L/scale1.log 2>&1 ) &
     ( export CUDA_VISIBLE_DEVICES=1
       T mnist-teacher --minutes ${MT:-2.5}
       T mnist-cd --teacher $R/mnist-teacher --minutes ${MC:-2.5} --set distance=pseudo_huber
       timeout 100 python bench/edit_eval.py --runs $R --data $S --out $L/edit --datasets mnist --models cd \
         --inception no > $L/edit.log 2>&1 ) &
     wait
     STEPS=${SCALE_STEPS:-200} OUT=$L timeout 100 bash bench/scale.sh 2 > $L/scale2.log 2>&1
     OUT=$L bash bench/scale.sh report > $L/scale_report.log 2>&1; for f in $L/*.log; do tail -n 5 "$f"; done ;;
  train) T "$@" ;;
  eval) E "$@" --inception ${INCEPTION:-auto} ;;
  bench) python bench/step_bench.py --dynamic static --batch 512 --out $L/bench.json "$@" 2>&1 | tee $L/bench.log ;;
  smoke) T tiny-ict --steps 50 --set train.device=cuda train.precision=bf16 train.compile=True ;;
esac
echo "=== stage $STAGE done $(date +%T)"
