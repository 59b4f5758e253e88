"""The ``cmlite`` command line: ``cmlite demo`` (the main job), ``cmlite theorem`` (the theory tables), and the
image commands ``cmlite train | sample | eval | edit`` (registered by :mod:`cmlite.image.cli`)."""
from __future__ import annotations

import argparse
import os
import sys


class _Parser(argparse.ArgumentParser):
    """argparse without silent abbreviations of long options (``--st`` is not ``--steps``); used for the
    top-level parser and, through ``parser_class``, for every subcommand's parser."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s}")
    return v


def _add_threads(parser, images: bool = False) -> None:
    if images:
        from .threads import IMAGE_THREADS_HELP
        help = IMAGE_THREADS_HELP
    else:
        help = ("torch intra-op threads (default: $CMLITE_THREADS, else 1: the tensors are tiny, and more threads "
                "only add contention, badly so when other processes share the cores)")
    parser.add_argument("--threads", type=_positive_int, default=None, help=help)


def _check_out(parser, out: str) -> None:
    """Fail before any training if the figure cannot be written where --out says."""
    if not out:
        return
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        parser.error(f"--out {out}: the folder {folder} does not exist (create it first)")
    if not os.access(folder, os.W_OK):
        parser.error(f"--out {out}: the folder {folder} is not writable")
    if os.path.isdir(out):
        parser.error(f"--out {out} is a folder; give a file name such as {os.path.join(out, 'demo.png')}")


def main(argv=None) -> int:
    from . import __version__

    p = _Parser(prog="cmlite", description="Consistency models, compact and tested.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("demo", help="train CD and CT on a 2D Gaussian mixture and compare sample quality")
    d.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    d.add_argument("--out", default="cmlite_demo.png",
                   help="where to write the figure, a .png file (default: %(default)s in the current folder; "
                        "'' writes none)")
    d.add_argument("--steps", type=_positive_int, default=None, help="training steps per model (default: the demo's)")
    d.add_argument("--seed", type=int, default=0,
                   help="random seed of the data, the noise and the network initialisation (default: %(default)s)")
    d.add_argument("--ct", choices=["ict", "ct"], default="ict",
                   help="consistency-training recipe: 'ict' improved CT (default), 'ct' Algorithm 3's original "
                        "schedules (its one-step samples fill a disc)")
    _add_threads(d)

    t = sub.add_parser("theorem", help="numerical checks of Theorems 1-6 (tables of errors, orders and z-scores)")
    t.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    t.add_argument("--learned", action="store_true",
                   help="also train small MLPs by CD (Euler and Heun teachers) and compare (several minutes)")
    _add_threads(t)

    from .image.cli import add_image_commands, run_image_command
    add_image_commands(sub)

    args, extra = p.parse_known_args(argv)
    if extra:  # report it with the subcommand's usage, not the top-level one
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "demo":
        _check_out(d, args.out)
        from .demo import run_demo
        return run_demo(json_out=args.json, out=args.out, steps=args.steps, seed=args.seed, threads=args.threads,
                        ct=args.ct)
    if args.command == "theorem":
        from .theory.report import run_theorem
        return run_theorem(json_out=args.json, learned=args.learned, threads=args.threads)
    return run_image_command(args)


if __name__ == "__main__":
    sys.exit(main())
