"""Image commands of the ``cmlite`` command line.

    cmlite train RECIPE [--out DIR] [--minutes M | --steps K] [--resume] [--teacher RUN] [--set key=value ...]
    cmlite sample RUN [--n 64] [--steps 1 | --ts 80 0.585] [--out FILE.npz]
    cmlite eval RUN [--n 10000] [--inception auto|yes|no]

Recipes are dataclass configs (:mod:`cmlite.image.recipes`); ``--set`` changes any field of one.
Multi-GPU: the same train command under ``torchrun --nproc-per-node G -m cmlite train ...``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def add_image_commands(sub) -> None:
    """Register the image subcommands on the top-level parser's subparsers object."""
    from .recipes import RECIPES
    t = sub.add_parser("train", help="train an image model from a recipe (teacher, CD, CT, iCT)",
                       description="Train an image recipe into a run folder. Recipes: " + ", ".join(sorted(RECIPES)))
    t.add_argument("recipe", help="a recipe name, e.g. mnist-ct (see the list above)")
    t.add_argument("--out", help="run folder (default: runs/RECIPE)")
    t.add_argument("--minutes", type=float, help="wall-clock budget; the step count is calibrated to it "
                                                  "(default: the recipe's)")
    t.add_argument("--steps", type=int, help="train exactly this many steps (instead of a time budget)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint, exactly")
    t.add_argument("--teacher", help="run folder of a trained teacher (needed by *-cd recipes)")
    t.add_argument("--data", help="folder with the data files (default: $CMLITE_DATA, ./data, ~/.cache/cmlite)")
    t.add_argument("--download", action="store_true", help="download the data set with torchvision if missing")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override recipe fields, e.g. train.batch_size=128 train.lr=2e-4 N=40")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="draw samples from a trained run: an .npz of uint8 images and a PNG grid")
    s.add_argument("run", help="a run folder made by `cmlite train`")
    s.add_argument("--n", type=int, default=64, help="number of samples (default: %(default)s)")
    s.add_argument("--steps", type=int, default=1, help="sampling steps: 1 or more for a consistency model "
                                                        "(2 uses the recipe's tau); a teacher's Heun grid size N")
    s.add_argument("--ts", type=float, nargs="+", help="explicit decreasing times, starting at T = 80")
    s.add_argument("--out", help="output .npz (default: RUN/samples-<steps>.npz); the grid goes beside it as .png")
    s.add_argument("--seed", type=int, default=0, help="random seed of the noise (default: %(default)s)")
    s.add_argument("--batch", type=int, default=1000, help="samples per batch (default: %(default)s)")
    s.add_argument("--device", help="cuda or cpu (default: cuda when available)")

    e = sub.add_parser("eval", help="FIDs of a run's samplers (Inception and in-project classifier) with floors")
    e.add_argument("run", help="a run folder made by `cmlite train`")
    e.add_argument("--n", type=int, default=10000, help="samples per sampler (default: %(default)s)")
    e.add_argument("--inception", choices=["auto", "yes", "no"], default="auto",
                   help="Inception FID: auto = when the fid extra is installed (default: %(default)s)")
    e.add_argument("--data", help="folder with the data files")
    e.add_argument("--cache", help="where the classifier is cached (default: the run's parent folder)")
    e.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")


def _train(args) -> int:
    from .recipes import get_recipe
    from .run import train
    recipe = get_recipe(args.recipe).with_overrides(args.set)
    out = Path(args.out or Path("runs") / recipe.name)
    if args.steps is not None and args.minutes is not None:
        print("cmlite train: give --minutes or --steps, not both", file=sys.stderr)
        return 2
    summary = train(recipe, out, data_root=args.data, teacher=args.teacher, minutes=args.minutes,
                    steps=args.steps, resume=args.resume, download=args.download, progress=not args.quiet)
    print(f"{recipe.name}: {summary['steps']} steps, {summary['images_per_second']:.0f} images/s on "
          f"{summary['device']}; weights in {out / 'ema.safetensors'}, samples in {out / 'samples.png'}")
    return 0


def _sample(args) -> int:
    import torch
    from .data import make_grid, save_npz, save_png
    from .run import load_run, sample_images
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, info = load_run(args.run, device)
    steps = len(args.ts) if args.ts else args.steps
    images = sample_images(model, info, args.n, steps=steps, ts=args.ts, batch_size=args.batch, device=device,
                           seed=args.seed)
    out = Path(args.out or Path(args.run) / f"samples-{steps}.npz")
    save_npz(out, images, steps=steps, ts=args.ts or [], seed=args.seed)
    save_png(out.with_suffix(".png"), make_grid(images[:min(len(images), 100)], nrow=10))
    print(f"{len(images)} samples {tuple(images.shape[1:])} uint8 -> {out} (grid: {out.with_suffix('.png')})")
    return 0


def _eval(args) -> int:
    from .evaluate import evaluate, format_table
    result = evaluate(args.run, n=args.n, device=args.device, data_root=args.data, inception=args.inception,
                      cache=args.cache, progress=not args.json)
    print(json.dumps(result, indent=1, default=str) if args.json else format_table(result))
    return 0


COMMANDS = {"train": _train, "sample": _sample, "eval": _eval}


def run_image_command(args) -> int:
    if args.command not in COMMANDS:
        return 2
    return COMMANDS[args.command](args)
