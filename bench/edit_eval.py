"""Zero-shot editing and multistep time search on trained image models, measured.

For each data set, given its run folders (a teacher and one or more consistency models distilled / trained
on it), on held-out real images:

* every editing task -- inpainting (centre box, bottom half, free-form strokes), colorization (RGB only),
  super-resolution x2 and x4, stroke-guided generation, denoising at sigma = 0.5 -- with each consistency
  model (Algorithm 4), with the teacher's ODE in place of f_theta (Heun, N grid points per call: the same
  algorithm at many more network evaluations) and with a naive baseline (mean-colour fill, bicubic, the
  grey image, the painting, the noisy image); reported: PSNR, SSIM, the known-part error, the in-project
  classifier's accuracy on the result (beside its accuracy on the originals), classifier FID (and
  Inception FID where installed) against the originals for colorization and stroke guidance, NFE, time;
* interpolation between two noises (figure only);
* the greedy ternary time search on classifier FID for 2 and 3 steps (one 3-step search: its first two
  times are the 2-step result), beside the official CIFAR-10 two-step time 0.585.

Held-out images: an evenly spaced subset of the unseen images of :func:`cmlite.image.run.load_train_test` --
MNIST's test split; for CIFAR-10, whose test split is not available here, the 10,000 training images held out
of training (:func:`cmlite.image.data.hold_out_floor`, seed 0), which the image recipes never train on. A run
trained on all 50,000 (its recipe.json's ``train_images``) has seen them: the report says so.

Outputs in --out: ``edit_<dataset>.json`` (every number), ``edit_<dataset>.md`` (the tables),
``edit_<dataset>.png`` (a figure: for every task the rows observed input, each model's result, the teacher
ODE's, the naive baseline's, the original), ``edit_<dataset>_<task>.png`` (the same per task, no labels),
``timesearch_<dataset>.png`` (the search trail).

GPU, real runs (folders RUNS/<dataset>-{teacher,cd,ict}; data files in DATA)::

    python bench/edit_eval.py --runs /root/runs --data DATA --out bench/out/edit --datasets mnist cifar10

Cost per data set (two consistency models, defaults): the models' edits ~100k image-evaluations, the
teacher-ODE baseline ~430k (200 images x 8 calls x 34 evaluations per task), the time search ~245k
(25 evaluations of 2000 samples per model), plus the classifier's training when it is not cached beside
the runs yet (the same cache as ``cmlite eval``). Estimated from the networks' FLOPs (2.5 GFLOP per MNIST
image, 8.5 per CIFAR-10 image), not measured: about 1 minute for MNIST and 2-3 for CIFAR-10 on one H100.
--n-teacher, --search-n and --search-iters trade time for precision.

CPU check with tiny runs trained here on the synthetic shapes (1 and 3 channels), about a minute::

    python bench/edit_eval.py --quick --out /tmp/edit_quick
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from cmlite.image import edit as E
from cmlite.image.data import ImageData, make_grid, save_png, synthetic_dataset, to_uint8
from cmlite.image.recipes import Recipe, get_recipe
from cmlite.image.run import load_data, load_run, load_train_test, train

ROW_NAMES = {"observed": "observed input", "teacher_ode": "teacher ODE", "naive": "naive", "original": "original"}


def log(*a):
    print(*a, flush=True)


class Timer:
    def __init__(self, device):
        self.device = device

    def __enter__(self):
        self._sync()
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.seconds = time.monotonic() - self.t0

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# ------------------------------------------------------------------------------------------------ set-up
_DATA: dict = {}


def data_splits(recipe: Recipe, root) -> tuple[ImageData, ImageData]:
    """load_train_test (the training images, the unseen ones: test split or held-out set), decoded once per
    process (CIFAR-10's 50k JPEGs take seconds)."""
    key = (recipe.dataset, str(recipe.net_overrides), str(root))
    if key not in _DATA:
        _DATA[key] = load_train_test(recipe, root)
    return _DATA[key]


def quick_runs(root: Path, channels: int) -> Path:
    """Tiny teacher, CD and iCT runs on the synthetic shapes (CPU, seconds), trained once into root."""
    root.mkdir(parents=True, exist_ok=True)
    over = [f"net_overrides.in_channels={channels}"]
    ds = "synthetic" if channels == 1 else "synthetic-rgb"
    for name, steps, teacher in (("teacher", 40, None), ("cd", 15, "teacher"), ("ict", 15, None)):
        run = root / f"{ds}-{name}"
        if not (run / "ema.safetensors").is_file():
            log(f"[quick] training tiny-{name} ({channels} channel(s)) into {run}")
            train(get_recipe(f"tiny-{name}").with_overrides(over), run, steps=steps, progress=False,
                  teacher=None if teacher is None else root / f"{ds}-{teacher}")
    clf_path = root / "classifier-synthetic.pt"      # where cmlite.image.evaluate.get_classifier looks
    if not clf_path.is_file():                        # a small one: the default classifier is slow on a CPU
        from cmlite.image.classifier import save_classifier, train_classifier
        recipe = get_recipe("tiny-ict").with_overrides(over)
        clf, acc = train_classifier(load_data(recipe, None, "train"), load_data(recipe, None, "test"), steps=60,
                                    batch_size=64, width=16, device="cpu", seed=0)
        save_classifier(clf, clf_path, test_accuracy=acc, steps=60)
    return root


def eval_images(dataset: str, recipe: Recipe, data_root, n: int,
                train_images: list | None = None) -> tuple[ImageData, dict]:
    """The held-out images the edits are measured on, and a description of them. ``train_images``: the
    models' ``train_images`` (from their recipe.json) to check that none trained on them."""
    if dataset in ("synthetic", "synthetic-rgb"):
        ch = 1 if dataset == "synthetic" else 3
        d = synthetic_dataset(n, channels=ch, resolution=16, num_classes=4, seed=1)
        return d, {"source": "synthetic shapes, seed 1 (the runs were trained on seed 0)", "in_training_set": False}
    train, unseen = data_splits(recipe, data_root)
    if len(unseen) < 2 * n:
        raise ValueError(f"{dataset}: {len(unseen)} unseen images ({unseen.source}) are too few for --n {n} edit "
                         f"images and as many floor images: lower --n")
    step = len(unseen) // n
    idx = torch.arange(n) * step
    seen = [k for k in (train_images or []) if k is not None and k != len(train)]
    desc = {"source": f"{unseen.source}, every {step}th image ({n})", "in_training_set": bool(seen),
            "indices": f"arange({n}) * {step}"}
    if seen:
        desc["note"] = (f"a model trained on {seen[0]} images, not the {len(train)} that exclude these: it may have "
                        "seen them")
    return unseen.subset(idx), desc


def floor_images(dataset: str, recipe: Recipe, data_root, n: int) -> torch.Tensor:
    """n other real images (disjoint from eval_images: the unseen images between theirs) for the FID floor."""
    if dataset in ("synthetic", "synthetic-rgb"):
        return synthetic_dataset(n, channels=1 if dataset == "synthetic" else 3, resolution=16, num_classes=4,
                                 seed=2).images
    unseen = data_splits(recipe, data_root)[1]
    step = len(unseen) // n
    return unseen.images[torch.arange(n) * step + step // 2]


# ------------------------------------------------------------------------------------------------ tasks
def task_list(channels: int) -> list[tuple[str, str, dict]]:
    tasks = [("inpaint-box", "inpaint", {"mask": "box"}), ("inpaint-half", "inpaint", {"mask": "half"}),
             ("inpaint-free", "inpaint", {"mask": "free"})]
    if channels == 3:
        tasks.append(("colorize", "colorize", {}))
    tasks += [("superres-x2", "superres", {"factor": 2}), ("superres-x4", "superres", {"factor": 4}),
              ("stroke", "stroke", {}), ("denoise-0.5", "denoise", {"sigma": 0.5})]
    return tasks


def metrics(result, p: E.Problem, labels, clf) -> dict:
    orig = p.original
    r = result.clamp(-1, 1)
    out = {"n": len(r), "psnr": float(E.psnr(r, orig).mean()), "ssim": float(E.ssim(r, orig).mean()),
           "known_part_error": p.known_error(result)}
    if clf is not None:
        out["accuracy"] = E.classifier_accuracy(clf, r, labels)
    return out


def fids(images, scorers: dict) -> dict:
    return {f"fid_{k}": s.score(to_uint8(images)) for k, s in scorers.items()}


# ------------------------------------------------------------------------------------------------ figure
def task_block(rows: list[tuple[str, torch.Tensor]], C: int) -> torch.Tensor:
    imgs = torch.cat([to_uint8(v.clamp(-1, 1).expand(-1, C, -1, -1)).cpu() for _, v in rows])
    return make_grid(imgs, nrow=len(rows[0][1]), padding=1, pad_value=255)


def save_figure(blocks: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(blocks)
    ncol = 2
    nrow = math.ceil(len(names) / ncol)
    h_rows = [max(len(blocks[n][0]) for n in names[i * ncol:(i + 1) * ncol]) for i in range(nrow)]
    fig, axes = plt.subplots(nrow, ncol, figsize=(2 * 6.2, sum(0.62 * h + 0.45 for h in h_rows)),
                             gridspec_kw={"height_ratios": h_rows}, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, name in enumerate(names):
        labels, grid = blocks[name]
        ax = axes[i // ncol, i % ncol]
        g = grid.permute(1, 2, 0).numpy()
        ax.imshow(g[..., 0] if g.shape[-1] == 1 else g, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.axis("on")
        ax.set_xticks([])
        hr = grid.shape[1] / len(labels)
        ax.set_yticks([hr * (j + 0.5) for j in range(len(labels))], labels, fontsize=7)
        ax.tick_params(length=0)
        for s in ax.spines.values():
            s.set_visible(False)
        ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_search_figure(searches: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cmlite.image.plots import search_trails
    fig = search_trails(searches, title, show=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ tables
def markdown(result: dict) -> str:
    models = result["models"]
    lines = [f"### {result['dataset']}: editing ({result['eval_images']['source']})", "",
             f"Classifier accuracy on the originals: {result.get('accuracy_originals', float('nan')):.4f}. "
             f"Teacher ODE: Heun on N = {result['settings']['baseline_N']} points per call, on "
             f"{result['settings']['n_teacher']} of the images."
             + (f" **A model may have trained on these images**: {result['eval_images'].get('note')}."
                if result["eval_images"].get("in_training_set") else ""), "",
             "| task | method | NFE | PSNR | SSIM | known-part err | accuracy | FID (classifier) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for tname, t in result["tasks"].items():
        for m in list(models) + ["teacher_ode", "naive", "observed"]:
            if m not in t["methods"]:
                continue
            r = t["methods"][m]
            ke = r.get("known_part_error")
            fid = r.get("fid_classifier")
            lines.append(f"| {tname} | {m} | {r['nfe']} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                         f"{'' if ke is None else f'{ke:.1e}'} | {r.get('accuracy', float('nan')):.3f} | "
                         f"{'' if fid is None else f'{fid:.3g}'} |")
    if result.get("fid_floor"):
        lines += ["", f"FID floor (another {result['fid_floor']['n']} real images vs the originals): "
                      + ", ".join(f"{k} {v:.3g}" for k, v in result["fid_floor"].items() if k != "n")]
    if result.get("time_search"):
        lines += ["", f"### {result['dataset']}: time search (classifier FID, n = {result['settings']['search_n']})", "",
                  "| model | tau_2 | tau_3 | FID 1 step | FID 2 steps | FID 3 steps | FID at tau_2 = 0.585 | floor |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for m, s in result["time_search"].items():
            t, f = s["times"], s["fid"]
            lines.append(f"| {m} | {t[1]:.3g} (grid {s['grid_index'][1]}) | {t[2]:.3g} (grid {s['grid_index'][2]}) | "
                         f"{f[0]:.3g} | {f[1]:.3g} | {f[2]:.3g} | {s['official']['fid']:.3g} | {s['floor']:.3g} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ main
def evaluate_dataset(ds: str, runs: Path, args, device) -> dict:
    t_start = time.monotonic()
    teacher_dir = runs / f"{ds}-teacher"
    model_dirs = {m: runs / f"{ds}-{m}" for m in args.models if (runs / f"{ds}-{m}" / "recipe.json").is_file()}
    missing = [m for m in args.models if m not in model_dirs]
    if missing:
        log(f"[{ds}] no run folder for {', '.join(missing)} under {runs}: skipped")
    if not model_dirs:
        raise FileNotFoundError(f"no consistency-model runs {runs}/{ds}-{{{','.join(args.models)}}}")
    models = {m: load_run(d, device) for m, d in model_dirs.items()}
    teacher = load_run(teacher_dir, device)[0] if (teacher_dir / "recipe.json").is_file() else None
    if teacher is None:
        log(f"[{ds}] no teacher run {teacher_dir}: the teacher-ODE baseline is skipped")
    info0 = next(iter(models.values()))[1]
    recipe = Recipe.from_dict(info0["recipe"])
    C, H, W = info0["shape"]
    data_root = args.data
    ev, ev_desc = eval_images(ds, recipe, data_root, args.n, [i.get("train_images") for _, i in models.values()])
    x = (ev.images.float() / 127.5 - 1).to(device)
    labels = ev.labels
    n_t = min(args.n_teacher, args.n)
    t_idx = torch.arange(n_t) * (args.n // n_t)              # teacher subset: spread over the eval set
    fig_idx = t_idx[torch.linspace(0, n_t - 1, min(args.columns, n_t)).round().long()]

    # classifier (cached beside the runs, shared with `cmlite eval`) and FID scorers
    clf = None
    scorers, search_scorer, floor_fid = {}, None, None
    if not args.no_classifier:
        from cmlite.image.classifier import classifier_features
        from cmlite.image.evaluate import get_classifier
        from cmlite.image.fid import FIDScorer
        with Timer(device) as tm:
            train_data, test_data = data_splits(recipe, data_root)
            clf, clf_info = get_classifier(recipe, train_data, test_data, runs, device)
        log(f"[{ds}] classifier: test accuracy {clf_info.get('test_accuracy')} ({tm.seconds:.1f} s)")
        feat = classifier_features(clf)
        scorers["classifier"] = FIDScorer(feat, ev.images[t_idx], device, batch_size=1000)
        if args.inception == "yes" or (args.inception == "auto" and device.type == "cuda"):
            try:
                from cmlite.image.fid import InceptionFeatures
                scorers["inception"] = FIDScorer(InceptionFeatures(device=device), ev.images[t_idx], device,
                                                 batch_size=250)
            except (FileNotFoundError, ImportError) as e:
                if args.inception == "yes":
                    raise
                log(f"[{ds}] Inception FID skipped: {e}")
        fl = floor_images(ds, recipe, data_root, n_t)
        floor_fid = {"n": n_t, **{k: s.score(fl) for k, s in scorers.items()}}
        if args.search_n:
            search_scorer = FIDScorer(feat, train_data.images, device, batch_size=1000, floor_images=test_data.images)
    result = {"dataset": ds, "eval_images": ev_desc, "models": {m: str(d) for m, d in model_dirs.items()},
              "teacher": str(teacher_dir) if teacher is not None else None,
              "settings": {"n": args.n, "n_teacher": n_t, "baseline_N": args.baseline_N, "steps": args.steps,
                           "ts": E.edit_times(args.steps), "stroke_ts": E.default_ts("stroke"), "sigma": 0.5,
                           "precision": args.precision, "device": str(device),
                           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                           "search_n": args.search_n, "search_iters": args.search_iters},
              "tasks": {}, "fid_floor": floor_fid, "seconds": {}}
    if clf is not None:
        result["classifier"] = clf_info
        result["accuracy_originals"] = E.classifier_accuracy(clf, x, labels)
        result["accuracy_originals_teacher_subset"] = E.classifier_accuracy(clf, x[t_idx], labels[t_idx])

    partial = Path(args.out) / f"edit_{ds}.partial.json"

    def save_partial():  # after every task and search: a run cut off by a time limit keeps what it finished
        partial.write_text(json.dumps(result, indent=1, default=str))

    blocks = {}
    ts = E.edit_times(args.steps)
    for name, task, kw in task_list(C):
        p = E.make_problem(task, x, seed=0, **kw)
        pt = p.subset(t_idx)
        task_ts = ts if task in ("inpaint", "colorize", "superres") else None
        entry = {"task": task, **kw, "ts": task_ts or p.ts, "methods": {}}
        rows = [("observed input", p.observed[fig_idx])]
        for m, (model, info) in models.items():
            f = E.ModelFn(model, precision=args.precision, batch_size=args.batch)
            with Timer(device) as tm:
                out = p.solve(f, ts=task_ts, generator=torch.Generator(device).manual_seed(1))
            r = {"nfe": f.evals, "seconds": tm.seconds, **metrics(out, p, labels, clf)}
            if scorers and task in ("colorize", "stroke"):
                r.update(fids(out[t_idx], scorers))                       # same images as the teacher's
            entry["methods"][m] = r
            rows.append((m, out[fig_idx]))
            log(f"[{ds}] {name:<13} {m:<6} NFE {r['nfe']:>3}  PSNR {r['psnr']:6.2f}  SSIM {r['ssim']:.3f}  "
                f"acc {r.get('accuracy', float('nan')):.3f}  known {r['known_part_error']}  {tm.seconds:.1f} s")
        if teacher is not None:
            ft = E.TeacherODE(teacher, args.baseline_N, precision=args.precision, batch_size=args.batch)
            with Timer(device) as tm:
                out = pt.solve(ft, ts=task_ts, generator=torch.Generator(device).manual_seed(1))
            r = {"nfe": ft.evals, "seconds": tm.seconds, **metrics(out, pt, labels[t_idx], clf)}
            if scorers and task in ("colorize", "stroke"):
                r.update(fids(out, scorers))
            entry["methods"]["teacher_ode"] = r
            pos = {int(i): j for j, i in enumerate(t_idx)}
            rows.append(("teacher ODE", out[[pos[int(i)] for i in fig_idx]]))
            log(f"[{ds}] {name:<13} teacher NFE {r['nfe']:>3}  PSNR {r['psnr']:6.2f}  SSIM {r['ssim']:.3f}  "
                f"acc {r.get('accuracy', float('nan')):.3f}  {tm.seconds:.1f} s")
        nv = p.naive()
        r = {"nfe": 0, **metrics(nv, p, labels, clf)}
        if scorers and task in ("colorize", "stroke"):
            r.update(fids(nv[t_idx], scorers))
        entry["methods"]["naive"] = r
        rows.append(("naive", nv[fig_idx]))
        entry["methods"]["observed"] = {"nfe": 0, **metrics(p.observed, p, labels, clf)}
        rows.append(("original", p.original[fig_idx]))
        result["tasks"][name] = entry
        blocks[name] = ([lab for lab, _ in rows], task_block(rows, C))
        save_png(Path(args.out) / f"edit_{ds}_{name}.png", blocks[name][1])
        save_partial()

    # interpolation: a figure (one network evaluation per image; the teacher: an ODE solve from T)
    z = E.interpolation_noise(3, (C, H, W), seed=5, device=device)
    alphas = torch.linspace(0, 1, args.columns)
    rows = []
    for m, (model, info) in models.items():
        path = E.edit(model, "interpolate", z, alphas=alphas, precision=args.precision)
        rows += [(f"{m}, pair {i + 1}", path[:, i]) for i in range(path.shape[1])]
    if teacher is not None:
        path = E.edit(E.TeacherODE(teacher, args.baseline_N, precision=args.precision), "interpolate", z, alphas=alphas)
        rows += [(f"teacher ODE, pair {i + 1}", path[:, i]) for i in range(path.shape[1])]
    result["interpolation"] = {"nfe": {m: 1 for m in models} | ({"teacher_ode": 2 * (args.baseline_N - 1)}
                                                               if teacher is not None else {}),
                               "alphas": alphas.tolist()}
    blocks["interpolate"] = ([lab for lab, _ in rows], task_block(rows, C))
    save_png(Path(args.out) / f"edit_{ds}_interpolate.png", blocks["interpolate"][1])
    result["seconds"]["editing"] = time.monotonic() - t_start

    # time search on classifier FID: one greedy 3-step search per model (its first two times = the 2-step search)
    if search_scorer is not None:
        from cmlite.image.timesearch import search_times
        result["time_search"] = {}
        t0 = time.monotonic()
        for m, (model, info) in models.items():
            s = search_times(model, info, search_scorer, n_steps=3, n=args.search_n, iters=args.search_iters,
                             device=device, batch_size=args.batch, precision=args.precision)
            s["floor"] = search_scorer.floor(args.search_n)["fid"]
            s["recipe_two_step_tau"] = info["recipe"].get("two_step_tau")
            result["time_search"][m] = s
            save_partial()
            log(f"[{ds}] time search {m}: times {[round(t, 4) for t in s['times']]} FID {[round(v, 3) for v in s['fid']]} "
                f"(official 0.585: {s['official']['fid']:.3f}; floor {s['floor']:.3f}; {s['seconds']:.1f} s)")
        result["seconds"]["time_search"] = time.monotonic() - t0
        save_search_figure(result["time_search"], Path(args.out) / f"timesearch_{ds}.png",
                           f"{ds}: greedy ternary search of sampling times (classifier FID, n = {args.search_n})")
    result["seconds"]["total"] = time.monotonic() - t_start
    save_figure(blocks, Path(args.out) / f"edit_{ds}.png",
                f"{ds}: zero-shot editing ({', '.join(models)}: {args.steps} steps; teacher ODE: "
                f"N = {args.baseline_N} per call)")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--runs", help="folder with the run folders <dataset>-teacher, <dataset>-cd, <dataset>-ict")
    ap.add_argument("--data", help="folder with mnist_uint8.npz and cifar10_train_jpgbytes.npz (default: "
                                   "$CMLITE_DATA, ./data, ~/.cache/cmlite)")
    ap.add_argument("--out", default="bench/out/edit", help="output folder (default: %(default)s)")
    ap.add_argument("--datasets", nargs="+", default=["mnist", "cifar10"])
    ap.add_argument("--models", nargs="+", default=["cd", "ict"], help="consistency-model runs per data set")
    ap.add_argument("--n", type=int, default=1000, help="held-out images per task (default: %(default)s)")
    ap.add_argument("--n-teacher", type=int, default=200, dest="n_teacher",
                    help="images the teacher-ODE baseline edits, spread over the n (default: %(default)s)")
    ap.add_argument("--baseline-N", type=int, default=18, dest="baseline_N",
                    help="Karras grid points of each teacher ODE solve (default: %(default)s: 34 NFE per call)")
    ap.add_argument("--steps", type=int, default=E.EDIT_STEPS,
                    help="Algorithm 4 time points for inpaint / colorize / superres (default: %(default)s)")
    ap.add_argument("--search-n", type=int, default=2000, dest="search_n",
                    help="samples per FID evaluation of the time search; 0 skips it (default: %(default)s)")
    ap.add_argument("--search-iters", type=int, default=6, dest="search_iters",
                    help="ternary-search iterations per added time (default: %(default)s)")
    ap.add_argument("--inception", choices=["auto", "yes", "no"], default="auto",
                    help="Inception FID for colorization / stroke (auto: on a GPU, when installed)")
    ap.add_argument("--columns", type=int, default=8, help="images per row in the figures (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=1000, help="images per network batch (default: %(default)s)")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="autocast on CUDA")
    ap.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--no-classifier", action="store_true", dest="no_classifier",
                    help="skip the classifier (accuracy, FIDs, time search)")
    ap.add_argument("--quick", action="store_true",
                    help="CPU check: tiny runs trained here on synthetic shapes (1 and 3 channels), small n")
    args = ap.parse_args(argv)
    if args.n_teacher < 1:  # the subset also carries the figures and the FIDs of every method
        ap.error(f"--n-teacher must be at least 1 (got {args.n_teacher}); a run without a teacher folder "
                 "skips the teacher-ODE baseline by itself")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        torch.set_num_threads(1)
        args.n, args.n_teacher, args.baseline_N, args.steps = min(args.n, 32), min(args.n_teacher, 8), 3, 3
        args.search_n, args.search_iters, args.inception = min(args.search_n, 64), 1, "no"
        args.datasets = [d for d in args.datasets if d.startswith("synthetic")] or ["synthetic", "synthetic-rgb"]
    elif not args.runs:
        ap.error("--runs is required (or --quick)")
    summary = {}
    for ds in args.datasets:
        runs = quick_runs(out / "quick-runs" / ds, 1 if ds == "synthetic" else 3) if args.quick else Path(args.runs)
        log(f"[{ds}] evaluating on {device}")
        res = evaluate_dataset(ds, runs, args, device)
        (out / f"edit_{ds}.json").write_text(json.dumps(res, indent=1, default=str))
        (out / f"edit_{ds}.partial.json").unlink(missing_ok=True)
        md = markdown(res)
        (out / f"edit_{ds}.md").write_text(md)
        print(md, flush=True)
        summary[ds] = res["seconds"]
        log(f"[{ds}] done in {res['seconds']['total']:.1f} s -> {out}/edit_{ds}.json, .md, .png")
    log("seconds per data set: " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
