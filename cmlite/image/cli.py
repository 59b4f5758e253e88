"""Image commands of the ``cmlite`` command line.

    cmlite train RECIPE [--out DIR] [--minutes M | --steps K] [--resume] [--teacher RUN] [--set key=value ...]
                 [--force-resume] [--cache-dir DIR] [--threads T] [--quiet]
    cmlite sample RUN [--n 64] [--steps 1 | --ts 80 0.585] [--out FILE.npz]
    cmlite eval RUN [--n 10000] [--inception auto|yes|no]
    cmlite edit RUN TASK --input X.npz|IMG.png ... [--out OUT.npz] [--mask box|half|free] [--factor 2|4]
                [--sigma S] [--ts ...] [--teacher RUN --baseline-N 18]

Recipes are dataclass configs (:mod:`cmlite.image.recipes`); ``--set`` changes any field of one.
Every image command takes ``--threads`` (torch's CPU threads; default ``$CMLITE_THREADS``, else
:data:`cmlite.threads.IMAGE_THREADS`). Bad input (a wrong --set value, a folder that is not a run, a
damaged file, an unwritable folder) ends with one line ``cmlite CMD: error: ...`` and exit status 2 (1 for
a failure while running: a full disk, a diverged loss); SIGTERM or Ctrl-C with a message and status 128 + signal.
Multi-GPU: the same train command under ``torchrun --nproc-per-node G -m cmlite train ...``.
"""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path


def add_image_commands(sub) -> None:
    """Register the image subcommands on the top-level parser's subparsers object."""
    from ..cli import _add_threads, _positive_float, _positive_int
    from .recipes import RECIPES
    t = sub.add_parser("train", help="train an image model from a recipe (teacher, CD, CT, iCT)",
                       description="Train an image recipe into a run folder. Recipes: " + ", ".join(sorted(RECIPES)))
    t.add_argument("recipe", help="a recipe name, e.g. mnist-ct (see the list above)")
    t.add_argument("--out", help="run folder (default: runs/RECIPE)")
    t.add_argument("--minutes", type=_positive_float,
                   help="wall-clock budget of the whole command (data loading, compilation and calibration "
                        "included); the step count is calibrated to it (default: the recipe's)")
    t.add_argument("--steps", type=_positive_int, help="train exactly this many steps (instead of a time budget); "
                                                        "with --resume, the step to stop at")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint, exactly")
    t.add_argument("--force-resume", action="store_true", dest="force_resume",
                   help="with --resume: continue even where --set values differ from the checkpoint's settings "
                        "(the refusal names them); the run is then not exactly its recipe's")
    t.add_argument("--cache-dir", dest="cache_dir",
                   help="torch.compile's cache folder, kept across runs (default: $TORCHINDUCTOR_CACHE_DIR, "
                        "else ~/.cache/cmlite/inductor). On a GPU, a run whose graphs are not in it yet trains "
                        "eagerly while another process compiles them, then goes on compiled; "
                        "--set train.compile=True compiles before the first step instead")
    t.add_argument("--teacher", help="run folder of a trained teacher (needed by *-cd recipes)")
    t.add_argument("--data", help="folder with the data files (default: $CMLITE_DATA, ./data, ~/.cache/cmlite)")
    t.add_argument("--download", action="store_true", help="download the data set with torchvision if missing")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override recipe fields, e.g. train.batch_size=128 train.lr=2e-4 N=40")
    t.add_argument("--quiet", action="store_true", help="no progress bar and no progress lines (warnings stay)")

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
    e.add_argument("run", nargs="+", help="run folders made by `cmlite train` (runs of one data set share its "
                                          "classifier and reference statistics)")
    e.add_argument("--n", type=int, default=10000, help="samples per sampler (default: %(default)s; lowered to the "
                                                        "number of unseen floor images where there are fewer)")
    e.add_argument("--inception", choices=["auto", "yes", "no"], default="auto",
                   help="Inception FID: auto = on a GPU when the fid extra is installed (default: %(default)s)")
    e.add_argument("--save-samples-mb", type=float, default=16.0, dest="save_samples_mb",
                   help="write each sampler's samples to RUN/eval-samples-<sampler>.npz (uint8, compressed), as "
                        "many as fit in this many MiB; 0: none (default: %(default)s)")
    e.add_argument("--data", help="folder with the data files")
    e.add_argument("--cache", help="where the classifier is cached (default: the run's parent folder)")
    e.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")

    from .edit import MASKS, TASKS
    d = sub.add_parser("edit", help="zero-shot editing with a consistency model (Algorithm 4): inpaint, colorize, "
                                    "superres, stroke, denoise, interpolate",
                       description="Edit images with a trained consistency model (Algorithm 4). By default the input "
                                   "images are clean and are degraded here (masked, made grey, downsampled, painted "
                                   "or noised); the grid PNG beside --out shows input, observed, result(s), original.")
    d.add_argument("run", help="a consistency-model run folder made by `cmlite train`")
    d.add_argument("task", choices=TASKS, help="the editing task")
    d.add_argument("--input", nargs="+", metavar="FILE",
                   help="an .npz with `images` uint8 (n, C, H, W) as `cmlite sample` writes, or image files "
                        "(PNG/JPEG, one image each); not needed for interpolate")
    d.add_argument("--out", help="output .npz (default: RUN/edit-TASK.npz); the grid goes beside it as .png")
    d.add_argument("--mask", choices=MASKS, default="box",
                   help="inpainting mask, 1 = generate: a centred box, a half (half = half-bottom) or free-form "
                        "brush strokes (default: %(default)s)")
    d.add_argument("--mask-seed", type=int, default=0, help="seed of the free-form mask (image i: seed + i)")
    d.add_argument("--factor", type=int, choices=(2, 4), default=2, help="super-resolution factor (default: %(default)s)")
    d.add_argument("--sigma", type=float, default=0.5, help="denoise: noise level in [-1, 1] units (default: %(default)s)")
    d.add_argument("--levels", type=int, default=4, help="stroke: colour levels of the painting (default: %(default)s)")
    d.add_argument("--observed", action="store_true",
                   help="the input already is the observation: noisy images (denoise, at --sigma), paintings "
                        "(stroke). Grey images (colorize) and small images (superres) are recognised by shape")
    d.add_argument("--ts", type=float, nargs="+", help="Algorithm 4's decreasing times (default: 8 Karras-spaced "
                                                       "times from 80 to 0.1; stroke: 5.38 2.24)")
    d.add_argument("--steps", type=int, help="use this many Karras-spaced times from 80 to 0.1 instead of --ts")
    d.add_argument("--n", type=int, help="edit only the first n images (interpolate: number of pairs, default 4)")
    d.add_argument("--alphas", type=int, default=9, help="interpolate: points between the two noises (default: %(default)s)")
    d.add_argument("--teacher", help="a teacher run: also edit with the teacher's PF ODE in place of f_theta (baseline)")
    d.add_argument("--baseline-N", type=int, default=18, dest="baseline_N",
                   help="Karras grid points of each teacher ODE solve, 2(N - 1) evaluations per call (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="random seed of the noise (default: %(default)s)")
    d.add_argument("--batch", type=int, default=1000, help="images per network batch (default: %(default)s)")
    d.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    for parser in (t, s, e, d):
        _add_threads(parser, images=True)


def _train(args) -> int:
    import time
    from ..training import TrainingInterrupted
    from .budget import seconds_since_process_start
    from .recipes import get_recipe
    from .run import train
    started_at = time.monotonic() - seconds_since_process_start()   # the budget counts from the process start
    recipe = get_recipe(args.recipe).with_overrides(args.set)
    out = Path(args.out or Path("runs") / recipe.name)
    if args.steps is not None and args.minutes is not None:
        print("cmlite train: give --minutes or --steps, not both", file=sys.stderr)
        return 2
    if args.force_resume and not args.resume:
        print("cmlite train: --force-resume goes with --resume", file=sys.stderr)
        return 2
    import torch.distributed as dist
    try:
        summary = train(recipe, out, data_root=args.data, teacher=args.teacher, minutes=args.minutes,
                        steps=args.steps, resume=args.resume, download=args.download, progress=not args.quiet,
                        force_resume=args.force_resume, cache_dir=args.cache_dir, started_at=started_at)
    except TrainingInterrupted as e:
        sets = (" --set " + " ".join(args.set)) if args.set else ""
        raise TrainingInterrupted(e.signum, e.step, f"{e.checkpoint}; continue with `cmlite train {args.recipe} "
                                                    f"--out {out} --resume{sets}`") from None
    if not dist.is_initialized() or dist.get_rank() == 0:  # under torchrun: one report, from rank 0
        steady = summary.get("steady_images_per_second")
        unit = "processes" if summary["device"] == "cpu" else "GPUs"
        world = f" x {summary['world_size']} {unit}" if summary.get("world_size", 1) > 1 else ""
        first, skipped = summary.get("startup_s"), summary.get("skipped_steps")
        print(f"{recipe.name}: {summary['steps']} steps, {summary['images_per_second']:.0f} images/s on "
              f"{summary['device']}{world}" + (f" ({steady:.0f} after start-up)" if steady else "") +
              (f", first step {first:.1f} s after the start" if first is not None else "") +
              (f", {skipped} steps skipped by fp16 loss scaling" if skipped else "") +
              f"; weights in {out / 'ema.safetensors'}" +
              (f", samples in {out / 'samples.png'}" if summary.get("samples_png", True) else
               f"; no samples.png (the budget had no room for it): `cmlite sample {out}` draws them"))
    if dist.is_initialized():
        dist.destroy_process_group()
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
    from .evaluate import evaluate_runs, format_table
    results = evaluate_runs(args.run, n=args.n, device=args.device, data_root=args.data, inception=args.inception,
                            cache=args.cache, progress=not args.json, save_samples_mb=args.save_samples_mb)
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=1, default=str))
    else:
        print("\n\n".join(format_table(r) for r in results))
    return 0


def _read_images(paths: list[str]):
    """uint8 (n, C, H, W) from one .npz (key `images`) or image files (one image each): data.read_images."""
    from .data import read_images
    return read_images(paths)


def _edit(args) -> int:
    try:
        return _edit_run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"cmlite edit: error: {e}", file=sys.stderr)
        return 2


def _edit_run(args) -> int:
    import torch
    from . import edit as E
    from .data import make_grid, save_npz, save_png, to_uint8
    from .run import load_run
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.task != "interpolate" and not args.input:
        raise ValueError(f"{args.task} needs --input (an .npz of uint8 images or image files)")
    if args.ts and args.steps:
        raise ValueError("give --ts or --steps, not both")
    out = Path(args.out or Path(args.run) / f"edit-{args.task}.npz")
    if out.suffix != ".npz":
        raise ValueError(f"--out must be an .npz file; got {out}")
    model, info = load_run(args.run, device)
    if info["recipe"]["method"] == "teacher":
        raise ValueError(f"{args.run} is a teacher (diffusion) run: edit with a consistency model run (cd, ct, ict), "
                         "and pass the teacher as --teacher for the ODE baseline")
    shape = tuple(info["shape"])
    teacher = None
    if args.teacher:
        teacher, tinfo = load_run(args.teacher, device)
        if tinfo["recipe"]["method"] != "teacher":
            raise ValueError(f"--teacher {args.teacher} is a {tinfo['recipe']['method']!r} run, not a teacher")
        if tuple(tinfo["shape"]) != shape:
            raise ValueError(f"the teacher makes {tinfo['shape']} images, the model {list(shape)}")
    ts = args.ts or (E.edit_times(args.steps) if args.steps else None)
    K = info.get("num_classes", 0)
    if args.task == "interpolate":
        n = args.n or 4
        z = E.interpolation_noise(n, shape, seed=args.seed, device=device)
        alphas = torch.linspace(0, 1, args.alphas)
        labels = None if not K else torch.arange(n, device=device) % K
        f = E.ModelFn(model, None if labels is None else labels.repeat(args.alphas), batch_size=args.batch)
        res = E.edit(f, "interpolate", z, alphas=alphas)              # (alphas, n, C, H, W)
        images = to_uint8(res.transpose(0, 1).reshape(-1, *shape)).cpu()
        save_npz(out, images, task="interpolate", alphas=alphas, nfe=1, seed=args.seed)
        save_png(out.with_suffix(".png"), make_grid(images, nrow=args.alphas))
        print(f"interpolate: {n} pairs x {args.alphas} points {shape} (1 network evaluation each) -> {out} "
              f"(grid: {out.with_suffix('.png')})")
        return 0
    images = _read_images(args.input)
    if args.n:
        images = images[:args.n]
    p = E.problem_from_input(args.task, images, shape, observed=args.observed, mask=args.mask,
                             factor=args.factor, sigma=args.sigma, levels=args.levels, seed=args.mask_seed)
    p.y = p.y.to(device)
    if isinstance(p.kwargs.get("mask"), torch.Tensor):
        p.kwargs["mask"] = p.kwargs["mask"].to(device)
    labels = None if not K else torch.arange(len(images), device=device) % K
    ts = ts or p.ts
    g = torch.Generator(device=device).manual_seed(args.seed)
    f = E.ModelFn(model, labels, batch_size=args.batch)
    result = p.solve(f, ts=ts if p.ts is not None else None, generator=g)
    extra = {"task": args.task, "ts": ts or [], "nfe": f.evals, "seed": args.seed,
             "observed": to_uint8(p.observed).cpu()}
    rows = [images.float().div(127.5).sub(1) if images.shape[1:] == shape else p.observed.cpu(), p.observed.cpu(),
            result.cpu()]
    msg = [f"{args.task}: {len(images)} images {shape}, {f.evals} network evaluations each"]
    err = p.known_error(result)
    if err is not None:
        extra["known_part_error"] = err
        msg.append(f"known part kept to {err:.1e}")
    if teacher is not None:
        ft = E.TeacherODE(teacher, args.baseline_N, labels, batch_size=args.batch)
        rt = p.solve(ft, ts=ts if p.ts is not None else None, generator=torch.Generator(device=device).manual_seed(args.seed))
        extra.update(teacher=to_uint8(rt).cpu(), teacher_nfe=ft.evals)
        rows.append(rt.cpu())
        msg.append(f"teacher ODE baseline: {ft.evals} network evaluations each")
    if p.original is not None:
        orig = p.original.cpu()
        extra["originals"] = to_uint8(orig)
        rows.append(orig)
        msg.append(f"PSNR {float(E.psnr(result.cpu(), orig).mean()):.2f} dB vs the originals")
    if "mask" in p.kwargs:
        extra["mask"] = p.kwargs["mask"].cpu()
    save_npz(out, to_uint8(result).cpu(), **extra)
    k = min(len(images), 10)
    grid = torch.cat([to_uint8(r[:k].expand(-1, shape[0], -1, -1)) for r in rows])
    save_png(out.with_suffix(".png"), make_grid(grid, nrow=k))
    print("; ".join(msg) + f" -> {out} (grid: rows input, observed, result{', teacher' if teacher is not None else ''}"
          f"{', original' if p.original is not None else ''}: {out.with_suffix('.png')})")
    return 0

COMMANDS = {"train": _train, "sample": _sample, "eval": _eval, "edit": _edit}


def run_image_command(args) -> int:
    """Run an image command with ``--threads`` CPU threads; bad input, signals and failed writes end with
    a one-line message (see the module docstring for the exit statuses)."""
    if args.command not in COMMANDS:
        return 2
    from ..threads import set_image_threads
    from ..training import NotACheckpointError
    name = f"cmlite {args.command}"
    try:
        set_image_threads(args.threads)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"{name}: {e or 'interrupted'}", file=sys.stderr)
        return 128 + (int(signum) if isinstance(signum, int) else int(signal.SIGTERM))
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, NotACheckpointError) as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    except (OSError, FloatingPointError) as e:  # a full disk, an unwritable folder; a diverged run (NaN loss)
        print(f"{name}: error: {e}", file=sys.stderr)
        return 1
