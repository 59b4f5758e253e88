"""The ``cmlite`` command line: ``cmlite demo`` (the main job), ``cmlite theorem`` (the theory tables), and the
image commands ``cmlite train | sample | eval | edit`` (registered by :mod:`cmlite.image.cli`)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="cmlite", description="Consistency models, compact and tested.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train CD and CT on a 2D Gaussian mixture and compare sample quality")
    d.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    d.add_argument("--out", default="cmlite_demo.png", help="where to write the figure (default: %(default)s)")
    d.add_argument("--steps", type=int, default=None, help="training steps per model (default: the demo's)")
    d.add_argument("--seed", type=int, default=0)

    t = sub.add_parser("theorem", help="numerical checks of Theorems 1 and 2 (tables of errors and slopes)")
    t.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    t.add_argument("--learned", action="store_true",
                   help="also train small MLPs by CD (Euler and Heun teachers) and compare (several minutes)")

    from .image.cli import add_image_commands, run_image_command
    add_image_commands(sub)

    args = p.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo
        return run_demo(json_out=args.json, out=args.out, steps=args.steps, seed=args.seed)
    if args.command == "theorem":
        from .theory.report import run_theorem
        return run_theorem(json_out=args.json, learned=args.learned)
    return run_image_command(args)


if __name__ == "__main__":
    sys.exit(main())
