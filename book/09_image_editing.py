# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 9 — Editing real images, and choosing sampling times on them
#
# Chapter 7 ran Algorithm 4 with *exact* consistency functions, to see what the algorithm itself does. This
# chapter runs it with *trained* U-Nets on images: inpainting, colorization, super-resolution, stroke-guided
# generation, denoising and interpolation, each next to two baselines, and then picks multistep sampling
# times by the paper's ternary search on FID. Everything goes through the library:
# `cmlite.image.edit` (the tasks, masks, baselines and metrics) and `cmlite.image.timesearch`.
#
# Which models it uses:
#
# * with `CMLITE_RUNS=/path/to/runs` in the environment: the trained runs there (`mnist-cd`, `mnist-teacher`,
#   `cifar10-cd`, `cifar10-teacher`, as made by `cmlite train`; a GPU is used when there is one), measured on
#   held-out images (the MNIST test split; for CIFAR-10, whose test split is not available here, the 10k
#   training images that the image recipes hold out of training, `cmlite.image.data.hold_out_floor`);
# * otherwise, on a CPU, the pretrained MNIST teacher and CD model in the repository's `pretrained/` folder
#   (fp16 weights of GPU runs; its README says how good they are), when the MNIST files are at hand
#   (`load_dataset("mnist")`: `$CMLITE_DATA`, `./data` or `~/.cache/cmlite`);
# * otherwise a tiny U-Net trained here, on the CPU, on the project's synthetic colour shapes: a teacher
#   (EDM denoising score matching), then a consistency model distilled from it (CD, Algorithm 2, with the CD
#   recipes' target EMA $\mu = 0.95$ of chapter 8). `CMLITE_FAST=1` (the test suite) trains them for about a
#   minute of one core (300 teacher steps, 150 distillation steps). That is enough to run every cell, not to
#   learn the shapes: the one-step samples are blurred coloured blobs (two steps add coloured speckle), and
#   the edits keep the known part exactly but fill the rest with blurred blobs of roughly the right colour,
#   flecked with coloured noise. Without `CMLITE_FAST` the tiny models train 5 and 4 times longer (1500 and
#   600 steps). The whole chapter takes about 80 s of one core in fast mode (measured on 2026-12-05).
#
# The pictures are the point: every figure shows, per column one image, the **observed input** (what the
# edit gets), the consistency model's result, the teacher's ODE-based result, a naive baseline, and the
# **original**.

# %%
import os
import re
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import cmlite
from cmlite.image import edit as E
from cmlite.image.data import synthetic_dataset
from cmlite.image.recipes import CD_MU, Recipe, get_recipe
from cmlite.image.run import load_run, load_train_test, sample_images, train
from cmlite.image.timesearch import OFFICIAL_CIFAR10_TAU, search_times
from cmlite.image.plots import image_rows, search_trails
from cmlite.threads import set_small_model_threads

FAST = os.environ.get("CMLITE_FAST") == "1"
RUNS = os.environ.get("CMLITE_RUNS")
REPO = Path(cmlite.__file__).resolve().parents[1]     # the checkout: pretrained/ and docs/results/
PRETRAINED = REPO / "pretrained"                       # mnist-teacher/ and mnist-cd/ run folders, used on a CPU
OUT = Path(os.environ.get("CMLITE_BOOK_OUT") or tempfile.mkdtemp(prefix="cmlite_ch9_"))
DEVICE = torch.device("cuda" if RUNS and torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu":
    set_small_model_threads()  # small U-Nets: one torch thread (CMLITE_THREADS overrides; see cmlite.threads)
torch.manual_seed(0)
BIG = DEVICE.type == "cuda"                            # the measurement sizes of a GPU; a CPU gets small ones
COLS = 8                                               # images per figure row
N_METRIC = 1000 if BIG else (16 if FAST else 128)      # images behind every number
N_TEACHER = 200 if BIG else (8 if FAST else 32)        # images the (expensive) teacher-ODE baseline edits
BASELINE_N = 18 if BIG else (6 if FAST else 12)        # grid points of each teacher ODE solve
N_SEARCH = 2000 if BIG else (64 if FAST else 512)      # samples per FID evaluation of the time search
ITERS = 6 if BIG else (2 if FAST else 5)               # ternary-search iterations per time point
CLF_STEPS = 100 if FAST else 500                       # steps of a narrow classifier trained here (no cached one)
print(f"fast mode: {FAST}; device {DEVICE}; {N_METRIC} images per number, teacher baseline on {N_TEACHER} "
      f"(N = {BASELINE_N} per call)")

# %% [markdown]
# ## 1. The models and the held-out images
#
# A *world* below is one data set with its consistency model, its teacher, held-out images with labels, and
# the in-project classifier (`cmlite.image.classifier`: a small CNN trained on the same data set), whose
# accuracy on an edited image is one measure of whether the edit produced the right kind of image.

# %%
def tiny_world() -> dict:
    """Train (once) a tiny teacher and a CD model on 3-channel synthetic shapes, here on the CPU."""
    root = OUT / "runs"
    over = ["net_overrides.in_channels=3"]
    steps_teacher, steps_cd = (300, 150) if FAST else (1500, 600)
    t0 = time.monotonic()
    if not (root / "shapes-teacher" / "ema.safetensors").is_file():
        train(get_recipe("tiny-teacher").with_overrides(over), root / "shapes-teacher", steps=steps_teacher,
              progress=False)
    if not (root / "shapes-cd" / "ema.safetensors").is_file():   # target EMA mu = 0.95, as the CD recipes
        train(get_recipe("tiny-cd").with_overrides(over + [f"mu={CD_MU}"]), root / "shapes-cd", steps=steps_cd,
              teacher=root / "shapes-teacher", progress=False)
    print(f"tiny teacher ({steps_teacher} steps) and CD model ({steps_cd} steps, mu = {CD_MU}) trained in "
          f"{time.monotonic() - t0:.0f} s")
    from cmlite.image.classifier import train_classifier
    train_set = synthetic_dataset(2048, channels=3, resolution=16, num_classes=4, seed=0)
    held_out = synthetic_dataset(N_METRIC, channels=3, resolution=16, num_classes=4, seed=1)
    clf, acc = train_classifier(train_set, synthetic_dataset(256, channels=3, seed=3), steps=60 if FAST else 300,
                                batch_size=64, width=16, device="cpu", seed=0)
    print(f"classifier test accuracy {acc:.3f}")
    return {"name": "shapes", "cm": load_run(root / "shapes-cd")[0], "info": load_run(root / "shapes-cd")[1],
            "teacher": load_run(root / "shapes-teacher")[0], "eval": held_out, "train": train_set, "clf": clf,
            "note": "synthetic shapes that the models never saw: another seed"}


def real_world(ds: str, runs: Path, cache: Path | None) -> dict | None:
    """The runs <runs>/<ds>-cd and <runs>/<ds>-teacher, with held-out images and the data set's classifier:
    the one `cmlite eval` trains and keeps in ``cache``, or (``cache=None``) a narrow one trained here in
    CLF_STEPS steps, which a CPU manages in a minute or two. FileNotFoundError when the data set's files are
    not here."""
    if not all((runs / f"{ds}-{m}" / "recipe.json").is_file() for m in ("cd", "teacher")):
        return None
    from cmlite.image.evaluate import get_classifier
    cm, info = load_run(runs / f"{ds}-cd", DEVICE)
    recipe = Recipe.from_dict(info["recipe"])
    train_set, test = load_train_test(recipe)
    if cache is not None:
        clf, _ = get_classifier(recipe, train_set, test, cache, DEVICE)
    else:
        from cmlite.image.classifier import train_classifier
        clf, acc = train_classifier(train_set, test, steps=CLF_STEPS, batch_size=128, width=32, device=DEVICE, seed=0)
        print(f"{ds} classifier ({CLF_STEPS} steps): test accuracy {acc:.3f}")
    # an evenly spaced subset of the unseen images: MNIST's test split, CIFAR-10's held-out training images
    held_out, note = test.subset(torch.arange(N_METRIC) * (len(test) // N_METRIC)), test.source
    if info.get("train_images") not in (None, len(train_set)):
        note += f" (but this run trained on {info['train_images']} images: it may have seen them)"
    return {"name": ds, "cm": cm, "info": info, "teacher": load_run(runs / f"{ds}-teacher", DEVICE)[0],
            "eval": held_out, "train": train_set, "clf": clf, "note": note}


if RUNS:
    worlds = [w for w in (real_world(d, Path(RUNS), Path(RUNS)) for d in ("mnist", "cifar10")) if w is not None]
    if not worlds:
        raise FileNotFoundError(f"CMLITE_RUNS={RUNS} holds no <dataset>-cd and <dataset>-teacher run folders")
else:
    worlds = []
    try:
        worlds = [w for w in [real_world("mnist", PRETRAINED, None)] if w is not None]
    except FileNotFoundError as e:
        print(f"pretrained MNIST models in {PRETRAINED}, but no MNIST files here ({str(e).splitlines()[0]})")
    if worlds:
        print(f"models: the pretrained MNIST teacher and CD model in {PRETRAINED}")
    else:
        print("models: a tiny teacher and CD model trained here")
        worlds = [tiny_world()]
for w in worlds:
    w["x"] = (w["eval"].images.float() / 127.5 - 1).to(DEVICE)
    w["labels"] = w["eval"].labels
    n = len(w["x"])
    w["t_idx"] = torch.arange(min(N_TEACHER, n)) * (n // min(N_TEACHER, n))   # the teacher's images, spread out
    w["cols"] = w["t_idx"][torch.linspace(0, len(w["t_idx"]) - 1, COLS).round().long()]
    print(f"{w['name']}: {n} held-out images ({w['note']}), shape {tuple(w['x'].shape[1:])}; classifier accuracy "
          f"on them {E.classifier_accuracy(w['clf'], w['x'], w['labels']):.3f}")


for w in worlds:
    cm_1 = sample_images(w["cm"], w["info"], COLS, steps=1, device=DEVICE)
    cm_2 = sample_images(w["cm"], w["info"], COLS, steps=2, device=DEVICE)
    real = w["eval"].images[w["cols"]]
    image_rows([("CM, 1 step", cm_1.float() / 127.5 - 1), ("CM, 2 steps", cm_2.float() / 127.5 - 1),
                ("held-out data", real.float() / 127.5 - 1)], f"{w['name']}: what the consistency model generates")

# %% [markdown]
# ## 2. One call per task
#
# `make_problem(task, x, ...)` turns clean images into what an edit observes, and `problem.solve(model)` runs
# Algorithm 4 (`cmlite.editing.edit`) through a `ModelFn` that batches, clamps each network output to
# $[-1, 1]$ and counts network evaluations. The same `solve` takes `TeacherODE(teacher, N)`: every call of
# $f_\theta(x, \tau)$ becomes a Heun solve of the teacher's PF ODE from $\tau$ down to $\epsilon$ on an N-point grid,
# $2(N-1)$ evaluations — the same algorithm with a (near-)exact consistency function at many times the cost.
# `problem.naive()` is a baseline without any network.
#
# | task | A and $\Omega$ (1 = generate) | kept exactly | naive baseline |
# | --- | --- | --- | --- |
# | inpaint | $A = I$, $\Omega$ = a centre box, the bottom half, or free-form brush strokes | the other pixels | fill with the mean colour of the kept pixels |
# | colorize | per pixel, first row of $A$ = luminance | the luminance | the grey image as RGB |
# | superres ×2, ×4 | per patch, first row of $A$ = patch mean | the patch means | bicubic upsampling |
# | stroke | $A = I$, $\Omega = 1$ (SDEdit) | nothing: the painting only sets the start | the painting |
# | denoise | none: $\hat x = f_\theta(y, \sigma)$ | nothing | the noisy image |
#
# The editing times for inpaint / colorize / superres are `E.edit_times()`: 8 points on Karras' spacing from
# $T = 80$ to $0.1$; stroke guidance uses the paper's $(5.38, 2.24)$.

# %%
TASKS = [("inpaint: centre box", "inpaint", {"mask": "box"}), ("inpaint: bottom half", "inpaint", {"mask": "half"}),
         ("inpaint: free-form strokes", "inpaint", {"mask": "free"}), ("colorize", "colorize", {}),
         ("super-resolution x2", "superres", {"factor": 2}), ("super-resolution x4", "superres", {"factor": 4}),
         ("stroke-guided", "stroke", {}), ("denoise, sigma = 0.5", "denoise", {"sigma": 0.5})]
gen = lambda seed=1: torch.Generator(DEVICE).manual_seed(seed)   # noqa: E731

results = {}
for w in worlds:
    C = w["x"].shape[1]
    for name, task, kw in TASKS:
        if task == "colorize" and C != 3:
            continue
        p = E.make_problem(task, w["x"], seed=0, **kw)
        pt = p.subset(w["t_idx"])
        f, ft = E.ModelFn(w["cm"]), E.TeacherODE(w["teacher"], BASELINE_N)
        out, out_t, out_n = p.solve(f, generator=gen()), pt.solve(ft, generator=gen()), p.naive()
        results[w["name"], name] = {"problem": p, "cm": out, "teacher": out_t, "naive": out_n,
                                    "nfe": {"CM": f.evals, "teacher ODE": ft.evals, "naive": 0}}
        pos = {int(i): j for j, i in enumerate(w["t_idx"])}
        c = w["cols"]
        image_rows([("observed", p.observed[c]), (f"CM ({f.evals} NFE)", out[c]),
                    (f"teacher ODE ({ft.evals} NFE)", out_t[[pos[int(i)] for i in c]]), ("naive", out_n[c]),
                    ("original", p.original[c])], f"{w['name']}: {name}")

# %% [markdown]
# What to look for in each figure:
#
# * **The kept part never changes.** Compare the observed row with the result: the known pixels, the
#   luminance, the patch means are the observed ones exactly (the numbers below check it to float precision).
#   What differs between methods is only what they generate.
# * **Inpainting** has to continue the strokes or the shape into the hole. The naive fill is a flat patch; a
#   good edit is a plausible image — not necessarily the original: a hole that removes half a digit can be
#   filled as a different digit, and PSNR punishes that while the classifier's accuracy shows it.
# * **Colorization** keeps the luminance and invents the colours: plausible colours are fine, the original
#   ones are one possibility among many (chapter 7 showed that even an exact model often picks others).
# * **Super-resolution** at ×4 keeps one number per 4×4 patch per channel. Bicubic upsampling is smooth but
#   blurry; the edit should be sharp, and where the detail is ambiguous, invented.
# * **Stroke guidance** trades faithfulness to the painting for realism; on small images the paper's times
#   (made for 256×256 images) leave little of the painting (section 4).
# * **Denoising** is one evaluation; at $\sigma = 0.5$ the noise is as strong as the image's own contrast.
#
# With the tiny model of a fast run (`CMLITE_FAST=1`), only the first point shows: its generated parts are
# blurred blobs of roughly the right colour, flecked with coloured noise, for the consistency model and the
# teacher alike. The pretrained MNIST models, a longer run, or the GPU measurements of section 7 show the rest.
#
# ## 3. The numbers
#
# PSNR and SSIM against the original (on $[0, 1]$; SSIM with the standard 11×11 Gaussian window), the known-part
# error $\max|A(x)(1-\Omega) - A(y)(1-\Omega)|$, the classifier's accuracy on the results, and NFE per image.
# The teacher ODE runs on a spread-out subset (its own row says how many).

# %%
def measure(out, p, labels, clf):
    o = out.clamp(-1, 1)
    return (float(E.psnr(o, p.original).mean()), float(E.ssim(o, p.original).mean()), p.known_error(out),
            E.classifier_accuracy(clf, o, labels))


table = []
for w in worlds:
    print(f"\n{w['name']} ({len(w['x'])} images, {w['note']}); classifier accuracy on the originals "
          f"{E.classifier_accuracy(w['clf'], w['x'], w['labels']):.3f}")
    print(f"{'task':<28}{'method':<14}{'NFE':>5}{'PSNR':>8}{'SSIM':>8}{'known err':>11}{'accuracy':>10}{'n':>6}")
    for name, *_ in TASKS:
        if (w["name"], name) not in results:
            continue
        r = results[w["name"], name]
        p = r["problem"]
        for method, out, prob, lab in (("CM", r["cm"], p, w["labels"]),
                                       ("teacher ODE", r["teacher"], p.subset(w["t_idx"]), w["labels"][w["t_idx"]]),
                                       ("naive", r["naive"], p, w["labels"])):
            ps, ss, ke, acc = measure(out, prob, lab, w["clf"])
            table.append((w["name"], name, method, r["nfe"][method], ps, ss, ke, acc))
            print(f"{name:<28}{method:<14}{r['nfe'][method]:>5}{ps:>8.2f}{ss:>8.3f}"
                  f"{'' if ke is None else f'{ke:.1e}':>11}{acc:>10.3f}{len(out):>6}")

worst = max(t[6] for t in table if t[6] is not None and t[2] != "naive")
print(f"\nlargest known-part error of any CM or teacher edit: {worst:.1e} (float32 rounding; the naive "
      "bicubic baseline does not keep the patch means, the grey-as-RGB one keeps the luminance only to 1e-4)")
wins = [(t[1], t[4] > u[4]) for t in table if t[2] == "CM" for u in table
        if u[2] == "naive" and u[:2] == t[:2] and t[1] not in ("stroke-guided",)]
print(f"CM PSNR above the naive baseline's in {sum(b for _, b in wins)} of {len(wins)} task/world pairs")

# %% [markdown]
# How to read the table. PSNR rewards the *average* answer: for an ambiguous hole, the blurry mean of all
# plausible fills scores higher than any one sharp plausible fill, so a naive or blurry baseline can win on
# PSNR while losing on the classifier's accuracy and on the look of the figure; SSIM is less forgiving of
# blur. The teacher-ODE edit uses each call's $\tau$ exactly as the consistency model does, with a far more
# accurate (and far more expensive) consistency function: where it beats the consistency model, the gap is the
# price of the model's one-step approximation; where it does not, the limit is Algorithm 4 itself (chapter 7).
#
# ## 4. How many steps, and which times, for an edit
#
# Algorithm 4 alternates "denoise, then put the kept part back". One step at $\tau_1 = T$ generates an image
# unconditionally and pastes the kept part into it; every later step lets the model reconcile the two. The
# sweep below edits the bottom-half inpainting problem with $K$ Karras-spaced times from $T$ to 0.1.

# %%
KS = (1, 2, 4, 8) if FAST else (1, 2, 4, 8, 16)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
for w in worlds:
    p = E.make_problem("inpaint", w["x"], mask="half", seed=0)
    ps, accs = [], []
    for K in KS:
        out = p.solve(E.ModelFn(w["cm"]), ts=E.edit_times(K), generator=gen())
        ps.append(float(E.psnr(out.clamp(-1, 1), p.original).mean()))
        accs.append(E.classifier_accuracy(w["clf"], out.clamp(-1, 1), w["labels"]))
    axes[0].plot(KS, ps, "o-", label=w["name"]), axes[1].plot(KS, accs, "o-", label=w["name"])
    print(f"{w['name']}: bottom-half inpainting, K = {KS}: PSNR {[round(v, 2) for v in ps]}, "
          f"accuracy {[round(v, 3) for v in accs]}")
for ax, lab in zip(axes, ("PSNR (dB)", "classifier accuracy")):
    ax.set_xscale("log", base=2), ax.set_xlabel("editing steps K (= NFE)"), ax.set_ylabel(lab), ax.legend()
fig.suptitle("inpainting the bottom half with K steps")
fig.tight_layout()
plt.show()

# %% [markdown]
# Stroke guidance has no kept part, so its times are the whole story: a large first time forgets the
# painting and returns any realistic image, a small one returns the painting barely cleaned up.

# %%
STROKE_TIMES = {"(20, 5.38)": (20.0, 5.38), "paper (5.38, 2.24)": (5.38, 2.24), "(2.24, 0.8)": (2.24, 0.8),
                "(0.8, 0.3)": (0.8, 0.3)}
for w in worlds:
    p = E.make_problem("stroke", w["x"], seed=0)
    c = w["cols"]
    rows = [("painting", p.observed[c])]
    for lab, ts in STROKE_TIMES.items():
        out = p.solve(E.ModelFn(w["cm"]), ts=list(ts), generator=gen())
        rows.append((f"tau = {lab}", out[c]))
        print(f"{w['name']}: stroke guidance, tau = {lab:<18} distance to the painting "
              f"{float((out.clamp(-1, 1) - p.y).flatten(1).norm(dim=1).mean()):6.2f}, classifier accuracy "
              f"{E.classifier_accuracy(w['clf'], out.clamp(-1, 1), w['labels']):.3f}")
    image_rows(rows + [("original", p.original[c])], f"{w['name']}: stroke-guided generation at four pairs of times")

# %% [markdown]
# ## 5. Denoising and interpolation
#
# A noisy image $y = x + \sigma z$ is a point at time $\sigma$ of the PF ODE, so one evaluation $f_\theta(y, \sigma)$
# denoises it. Interpolation spherically interpolates two noises and maps each point with $f_\theta(\cdot, T)$.

# %%
for w in worlds:
    c = w["cols"]
    rows = [("clean", w["x"][c])]
    for sigma in (0.2, 0.5, 1.0):
        p = E.make_problem("denoise", w["x"][c], sigma=sigma, seed=3)
        out = p.solve(w["cm"])
        rows += [(f"sigma = {sigma}", p.observed), ("denoised", out)]
    image_rows(rows, f"{w['name']}: one-step denoising")
    C, H, W = w["x"].shape[1:]
    z = E.interpolation_noise(3, (C, H, W), seed=5, device=DEVICE)
    path = E.edit(w["cm"], "interpolate", z, alphas=torch.linspace(0, 1, COLS))
    image_rows([(f"pair {i + 1}", path[:, i]) for i in range(3)],
               f"{w['name']}: f(slerp(z0, z1; alpha), T), alpha = 0 ... 1 (one evaluation each)")

# %% [markdown]
# Unlike chapter 7's exact model of a finite world, whose interpolation paths jump between the world's images,
# a trained network generalises between images: the path morphs (for a well-trained model) through plausible
# images.
#
# ## 6. Choosing sampling times by ternary search on FID
#
# Chapter 6 chose times on 2D data by a distance to the data. On images the paper uses FID: `search_times`
# runs `cmlite.ternary_search_times` with the Fréchet distance in the in-project classifier's features
# ("classifier FID"; `cmlite eval` and `bench/edit_eval.py` also use Inception's where installed). $\tau_1 = T$;
# $\tau_2$ is searched with $\tau_1$ fixed, then $\tau_3$ with both fixed — the 2-step result is the first part
# of the 3-step search. Every evaluation uses the same noise. Beside it, the official CIFAR-10 choice
# $\tau_2 = 0.585$.

# %%
from cmlite.image.classifier import classifier_features   # noqa: E402
from cmlite.image.fid import FIDScorer                    # noqa: E402

searches = {}
for w in worlds:
    reference = w["train"].images if BIG else w["train"].images[:2048]   # a CPU: at most 2048 reference images
    scorer = FIDScorer(classifier_features(w["clf"]), reference, DEVICE, batch_size=1000)
    t0 = time.monotonic()
    s = search_times(w["cm"], w["info"], scorer, n_steps=3, n=N_SEARCH, iters=ITERS, device=DEVICE)
    searches[w["name"]] = s
    print(f"{w['name']}: times {[round(t, 3) for t in s['times']]} (N = 18 grid indices {s['grid_index']}); "
          f"classifier FID 1 / 2 / 3 steps: {' / '.join(f'{v:.3g}' for v in s['fid'])}; at tau_2 = "
          f"{OFFICIAL_CIFAR10_TAU}: {s['official']['fid']:.3g}; {s['evaluations']} evaluations of {N_SEARCH} "
          f"samples in {time.monotonic() - t0:.0f} s")


fig = search_trails(searches)   # (it shows the figure; assigning the returned figure keeps it from showing twice)

# %% [markdown]
# Each point is one evaluation of the search; the curves show whether FID really is unimodal in each time (the
# search's assumption), how much the second and third steps gain, and whether the searched $\tau_2$ lands
# near 0.585 (the official choice for CIFAR-10 at 32×32; other data sets and models need not agree). With few
# samples per evaluation FID is noisy, and a noisy score can fool a ternary search: read the trail, not only
# the final times.

# %% [markdown]
# ## 7. What the trained models did on an H100
#
# The editing tables of `docs/image-results.md` come from `bench/edit_eval.py` run on a GPU with the MNIST and
# CIFAR-10 models of its training table (this chapter's code, at 1,000 held-out images per data set). Their JSON
# files are kept in the checkout's `docs/results/`; this cell reads the newest one per data set, so the figure
# below is those measurements, not numbers typed in. Each bar is the in-project classifier's accuracy on the
# edited images: did the edit produce the right kind of image? Each method keeps its colour in every panel.
# The legend gives each method's network evaluations per edit (for stroke guidance and denoising fewer: the
# task needs fewer time points).

# %%
import json  # noqa: E402

RESULTS = REPO / "docs" / "results"   # beside the cmlite package in a checkout (not in an installed wheel)
COLOURS = {"cd": "C0", "ict": "C1", "ct": "C2", "teacher_ode": "C3", "naive": "C7"}   # one colour per method


def folder_date(name: str) -> str:
    """The date in a results folder's name: the folders sort by it (then by name)."""
    m = re.search(r"\d{4}-\d{2}-\d{2}", name)
    return m.group() if m else ""


stored = {}
for f in sorted(RESULTS.glob("*/**/edit_*.json"), key=lambda f: (folder_date(f.relative_to(RESULTS).parts[0]), f)):
    if "partial" not in f.name:   # oldest first, so the newest file of each data set stays
        d = json.loads(f.read_text())
        stored[d["dataset"]] = (f.relative_to(RESULTS).parts[0], d)
if not stored:
    print(f"no stored editing results in {RESULTS}: this section reads docs/results/*/**/edit_*.json of a checkout "
          "of the cmlite repository (an installed package does not carry them)")
else:
    fig, axes = plt.subplots(1, len(stored), figsize=(7 * len(stored), 3.8), squeeze=False)
    for ax, (ds, (folder, d)) in zip(axes[0], stored.items()):
        tasks = list(d["tasks"])
        methods = [m for m in d["tasks"][tasks[0]]["methods"] if m != "observed"]
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            acc = [d["tasks"][t]["methods"][m].get("accuracy", float("nan")) for t in tasks]
            nfe = d["tasks"][tasks[0]]["methods"][m]["nfe"]
            ax.bar([j + (i - (len(methods) - 1) / 2) * width for j in range(len(tasks))], acc, width,
                   color=COLOURS.get(m, f"C{4 + i}"), label=f"{m.replace('_', ' ')} ({nfe} NFE)")
        ax.axhline(d["accuracy_originals"], c="k", ls=":", lw=1, label="the originals")
        ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right", fontsize=8)
        ax.set(ylabel="classifier accuracy on the result", ylim=(0, 1.05),
               title=f"{ds}: {d['settings']['n']} held-out images ({folder})")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    plt.show()

for ds, (folder, d) in stored.items():
    print(f"{ds}: PSNR in dB (network evaluations per edit) of each method")
    for t, e in d["tasks"].items():
        print(f"  {t:13s} " + "   ".join(f"{m.replace('_', ' ')} {r['psnr']:5.2f} ({r['nfe']})"
                                         for m, r in e["methods"].items() if m != "observed"))

# %% [markdown]
# Read the two measures together. PSNR rewards an average: the naive fill, and on MNIST the barely trained CT
# model whose outputs are near-grey, score well on large holes, and lose on accuracy. The classifier rewards
# the right content. The distilled CIFAR-10 model edits at 8 network evaluations about as well as the
# teacher's ODE at 272, in both measures.
#
# And the time searches of those models, with the same plot as above:

# %%
stored_searches = {f"{ds}, {m}": s for ds, (_, d) in stored.items() for m, s in d.get("time_search", {}).items()}
if stored_searches:
    search_trails(stored_searches)

# %% [markdown]
# ## Summary
#
# * A trained consistency model edits images zero-shot with Algorithm 4 in a handful of network evaluations
#   (8 here; 1 for denoising and interpolation), and the kept part of the input is reproduced exactly — by
#   construction, whatever the network's quality.
# * The teacher's ODE in place of $f_\theta$ gives the same algorithm with a more accurate consistency function
#   at $2(N-1)$ times the cost per call; naive baselines set the floor that any edit must beat to be worth it.
# * Pixel metrics (PSNR, SSIM) reward averaging; the classifier's accuracy and the figures show whether an edit
#   produced the right *kind* of image. Both are needed.
# * The greedy ternary search picks sampling times by FID directly; its trail shows the gain of every added step.
