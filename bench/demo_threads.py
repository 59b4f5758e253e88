"""How many torch threads for `cmlite demo`? Wall-clock time of a shortened demo with 1, 2, ... threads,
on an idle machine and beside busy single-threaded processes (``python -c 'while True: pass'``).

    python bench/demo_threads.py --steps 600 --threads 1 2 --busy 0 1

Each run is a fresh process (``python -m cmlite demo --steps S --threads K --json --out ''``), so thread
pools never carry over. Prints one line per run and a summary; the numbers behind cmlite.threads'
default are in the README ("Threads"). On a shared machine the timings are noisy: repeat (``--repeats``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def run_once(steps: int, threads: int, busy: int) -> dict:
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "cmlite", "demo", "--steps", str(steps), "--threads", str(threads),
                              "--json", "--out", ""], capture_output=True, text=True, check=True,
                             env=dict(os.environ, CMLITE_THREADS=""))
        wall = time.perf_counter() - t0
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    res = json.loads(out.stdout)
    t = res["timings"]
    return {"threads": threads, "busy": busy, "steps": steps, "wall_s": round(wall, 1),
            "cd_train_s": round(t["CD_train_s"], 1), "ct_train_s": round(t["CT_train_s"], 1),
            "cd_1step_sw2": next(r["sw2"] for r in res["rows"] if r["method"] == "CD 1-step")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1], help="numbers of busy processes beside it")
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    print(f"{os.cpu_count()} CPUs visible; torch default threads would be {os.cpu_count()}", flush=True)
    for _ in range(a.repeats):
        for busy in a.busy:
            for k in a.threads:
                print(json.dumps(run_once(a.steps, k, busy)), flush=True)


if __name__ == "__main__":
    main()
