#!/usr/bin/env bash
# The last CT sweep behind the demo settings: 8 configurations in parallel, each pinned to 2 cores
# (a 16-core machine). Usage: bash bench/demo_sweep.sh [OUTDIR]   (default bench/out/demo-sweep);
# it appends to OUTDIR/sweep.jsonl and OUTDIR/err.log.
OUTDIR=${1:-bench/out/demo-sweep}
mkdir -p "$OUTDIR"
export PYTHONPATH=$PWD
run() { taskset -c $1 python bench/demo_sweep.py "${@:2}" >> $OUTDIR/sweep.jsonl 2>>$OUTDIR/err.log; }
run 0,1 ct 128 6000 512 2e-3 40 sched=cosine &
run 2,3 ct 128 3000 512 2e-3 20 sched=cosine &
run 4,5 ct 128 3000 1024 2e-3 40 sched=cosine &
run 6,7 ct 128 6000 512 2e-3 20 sched=cosine &
run 8,9 ct 128 3000 512 2e-3 40 sched=cosine mu0=0.95 &
run 10,11 ct 128 3000 512 2e-3 40 sched=cosine dist=pseudo_huber &
run 12,13 ct 128 3000 512 2e-3 40 sched=cosine dist=l1 &
run 14,15 ct 128 6000 512 1e-3 80 sched=cosine mu0=0.95 &
wait
cat $OUTDIR/sweep.jsonl | python -c "
import sys, json
for l in sys.stdin:
    d=json.loads(l); print(d['kind'], d['steps'], d['batch'], d['lr'], d['extra'], d['opts'], d['train_s'], 'ema', d['ema'])
"; tail -3 $OUTDIR/err.log
