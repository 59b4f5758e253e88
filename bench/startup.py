"""Start-up of a training run under each compile plan, each variant in a fresh process (imports included).

    python bench/startup.py OUTDIR [--recipe tiny-teacher] [--device cpu] [--steps 6] [--variants ...]

Variants, in this order, sharing one compile cache in OUTDIR/cache (emptied first):

* ``cold``: ``train.compile=True`` with the empty cache: compiles before the first step.
* ``now``: ``train.compile=True`` with the cache that ``cold`` filled: loads the graphs before the first step.
* ``cached``: ``train.compile='auto'`` with the same cache: the first step eagerly, the graphs from the second
  (:func:`cmlite.devices.compile_plan`).
* ``eager``: ``train.compile=False``.

On a CPU, ``compile='auto'`` means eager, so there the script takes the decision a GPU run would
(``resolve_compile`` as on CUDA): that times the plans themselves on any machine. On a GPU,
``bash bench/gpu/runs.sh startup`` times the same through ``cmlite train``. Writes OUTDIR/startup.json: per
variant, the seconds from the process's start to the end of the first training step (``startup_s``), to the
end of the first compiled step where the run went on compiled after eager steps, and the whole process.
"""
import time

T0 = time.monotonic()   # before torch is imported: the imports count, as in `cmlite train`

import argparse   # noqa: E402
import json   # noqa: E402
import shutil   # noqa: E402
import subprocess   # noqa: E402
import sys   # noqa: E402
from pathlib import Path   # noqa: E402

VARIANTS = {"cold": "True", "now": "True", "cached": "auto", "eager": "False"}


def child(args) -> None:
    import cmlite.image.run as run_mod
    from cmlite.image.recipes import get_recipe
    run_mod.resolve_compile = lambda c, d: True if c == "auto" else c   # the decision a GPU run takes
    recipe = get_recipe(args.recipe).with_overrides([f"train.compile={VARIANTS[args.child]}",
                                                     f"train.device={args.device}"])
    out = Path(args.outdir) / f"run-{args.child}"
    shutil.rmtree(out, ignore_errors=True)
    s = run_mod.train(recipe, out, steps=args.steps, progress=False, cache_dir=Path(args.outdir) / "cache",
                      started_at=T0, draw_samples=False)
    late = s.get("compile_cached") or {}
    compiled_at = late["ready_after_s"] + late["first_compiled_step_s"] if "first_compiled_step_s" in late else None
    print(json.dumps({"variant": args.child, "startup_s": s["startup_s"], "compiled_from_s": compiled_at,
                      "compile_cached": s.get("compile_cached"), "compile": s["recipe"]["train"]["compile"]}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir")
    p.add_argument("--recipe", default="tiny-teacher")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                   help="which to time, in this order ('now' and 'cached' need the cache that 'cold' fills)")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    out = Path(args.outdir)
    shutil.rmtree(out / "cache", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for v in args.variants:
        t = time.monotonic()
        r = subprocess.run([sys.executable, __file__, str(out), "--recipe", args.recipe, "--device", args.device,
                            "--steps", str(args.steps), "--child", v], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"variant {v} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
        row = {**json.loads(r.stdout.strip().splitlines()[-1]), "process_s": time.monotonic() - t}
        rows.append(row)
        print(f"{v:7s} first step {row['startup_s']:6.1f} s" + (f", compiled from {row['compiled_from_s']:.1f} s"
              if row["compiled_from_s"] is not None else "") + f", whole process {row['process_s']:.1f} s")
    (out / "startup.json").write_text(json.dumps({"recipe": args.recipe, "device": args.device,
                                                  "steps": args.steps, "variants": rows}, indent=1))


if __name__ == "__main__":
    main()
