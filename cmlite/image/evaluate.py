r"""``cmlite eval``: FIDs of a run's samplers, each with its floor.

For every sampler of a run (a teacher: Heun ODE at several NFE; a consistency model: 1 and 2 steps),
``n`` samples (10k by default, fewer where the data set has fewer unseen images: see below) are scored
against the real images the recipe trains on (the *reference* set) in two feature spaces:

* classifier FID: the Fréchet distance in the penultimate features of a small classifier that cmlite
  trains itself on the same data set (cached next to the runs; its test accuracy is reported);
* Inception FID (the standard network; the ``fid`` extra), by default on a GPU only (``inception='auto'``):
  on a CPU its features of the reference set alone take hours. Its reference set is a random subset of
  :data:`REFERENCE_PER_SAMPLE` ``n`` images of the training set (all of them at the default n).

Every FID is printed beside its *floor*: the same computation for ``n`` real images that are not in the
reference set and that the generator never saw, the score of a perfect generator at that n (FID is biased
upwards at finite n). Where they come from is printed with the table:

* MNIST, Fashion-MNIST, CIFAR-10 in torchvision's format, the synthetic shapes: the test split;
* CIFAR-10's JPEG archive (training images only) and image folders: a fixed set of training images held out
  of training (:func:`cmlite.image.data.hold_out_floor`: 10k of CIFAR-10's 50k, seed 0). The recipes train on
  the rest (:func:`cmlite.image.run.load_train_test`), which is also the reference set; a run trained on all
  images (elsewhere) has seen its floor images, and ``evaluate`` says so when the run's ``train_images``
  differ from the reference set's size.

The samples of every sampler are written to the run folder as compressed ``eval-samples-<sampler>.npz``
(``images``: uint8 (n, C, H, W), as many as fit in ``save_samples_mb``), so that anyone can score them again.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from .classifier import classifier_features, load_classifier, save_classifier, train_classifier
from .data import ImageData, hold_out_floor, save_npz
from .fid import FIDScorer
from .recipes import Recipe
from .run import load_run, load_train_test, sample_images, teacher_nfe

TEACHER_GRIDS = (2, 3, 5, 10, 18)      # Heun on N points: 2, 4, 8, 18, 34 network evaluations
CM_STEPS = (1, 2)
#: Inception's reference set: at most this many training images per sample (a seeded random subset). The
#: reference statistics' own finite-sample bias is then at most a fifth of the samples'; the FIDs and their
#: floor carry the same reference, so they stay comparable.
REFERENCE_PER_SAMPLE = 5
#: The default size cap of each ``eval-samples-*.npz`` (MiB): all of CIFAR-10's 10k samples would take 30 MiB.
SAVE_SAMPLES_MB = 16.0


def _log(msg: str) -> None:
    print(f"[cmlite eval] {msg}", file=sys.stderr, flush=True)


def get_classifier(recipe: Recipe, train: ImageData, test: ImageData | None, cache: Path, device,
                   steps: int | None = None, log=None):
    """Load the data set's classifier from ``cache``, or train it (and cache it). Returns (model, info).
    ``log``: a callable that gets progress lines while it trains."""
    path = cache / f"classifier-{recipe.dataset.replace('/', '_').replace(':', '_')}.pt"
    if path.is_file():
        return load_classifier(path, device)
    if test is None:  # no unseen images given: hold out 5000 training images (or 10%) for the accuracy
        train, test = train.split(min(5000, len(train) // 10), seed=0)
    tiny = recipe.dataset == "synthetic"  # the project's own shapes (tests, CPU): a small, quick classifier
    steps = steps or (60 if tiny else 2000 if train.channels == 1 else 4000)
    if log is not None:
        log(f"training the {recipe.dataset} classifier for the classifier FID ({steps} steps on {len(train)} "
            f"images; cached as {path})")
    t0 = time.monotonic()
    model, acc = train_classifier(train, test, steps=steps, device=device, seed=0, log=log,
                                  **(dict(batch_size=128, width=16) if tiny else {}))
    info = {"test_accuracy": acc, "steps": steps, "train_seconds": time.monotonic() - t0, "n_test": len(test)}
    if log is not None:
        log(f"classifier: test accuracy {acc:.4f} on {len(test)} images ({info['train_seconds']:.0f} s)")
    cache.mkdir(parents=True, exist_ok=True)
    save_classifier(model, path, **info)
    return load_classifier(path, device)


def samplers(info: dict) -> list[dict]:
    """The sampler settings evaluated for a run: name, steps, NFE, file (the samples' file name part)."""
    if info["recipe"]["method"] == "teacher":
        return [{"name": f"Heun ODE N={N}", "steps": N, "nfe": teacher_nfe(N), "file": f"heun-N{N}"}
                for N in TEACHER_GRIDS]
    tau = info["recipe"].get("two_step_tau", 0.585)
    return [{"name": "1-step", "steps": 1, "nfe": 1, "ts": [80.0], "file": "1step"},
            {"name": f"2-step (tau={tau})", "steps": 2, "nfe": 2, "ts": [80.0, tau], "file": "2step"}]


def _reference_subset(train: ImageData, n: int | None) -> tuple[torch.Tensor, str]:
    """Inception's reference images: all of ``train``, or a seeded random subset of REFERENCE_PER_SAMPLE n."""
    m = len(train) if n is None else min(len(train), REFERENCE_PER_SAMPLE * max(int(n), 1))
    if m >= len(train):
        return train.images, train.source or f"{len(train)} training images"
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:m].sort().values
    return train.images[idx], f"{m} random images (seed 0) of {train.source or f'{len(train)} training images'}"


def make_scorers(recipe: Recipe, train: ImageData, test: ImageData | None, cache: Path, device,
                 inception: str = "auto", n: int | None = None, progress: bool = True) -> tuple[dict, dict]:
    """The FID scorers of a data set, ``({'classifier': ..., 'inception': ...}, classifier info)``.

    ``train``: the reference set (the images the recipe trains on); ``test``: unseen real images, the floor's
    (from :func:`cmlite.image.run.load_train_test`); ``None`` holds out a fixed set of ``train`` here
    (:func:`cmlite.image.data.hold_out_floor`): the floor never comes from the reference set itself.
    ``inception``: 'auto' (on CUDA devices, when installed), 'yes' (error when missing) or 'no'; its
    reference is :data:`REFERENCE_PER_SAMPLE` ``n`` images at most. Each scorer's ``sources`` says where its
    floor and reference images come from. The reference statistics are computed here, once (see
    :func:`evaluate_runs`)."""
    log = _log if progress else None
    device = torch.device(device)
    if test is None:
        train, test = hold_out_floor(train)
    floor_src = test.source or f"{len(test)} unseen real images"
    scorers, clf_info = {}, {}
    if train.labels is None or test.labels is None:
        _log(f"classifier FID skipped: {recipe.dataset} has no class labels to train its classifier on")
    else:
        clf, clf_info = get_classifier(recipe, train, test, cache, device, log=log)
        scorers["classifier"] = FIDScorer(classifier_features(clf), train.images, device, batch_size=500,
                                          floor_images=test.images, log=log, name="classifier features")
        scorers["classifier"].sources = {"floor": floor_src, "train_images": len(train),
                                         "reference": train.source or f"{len(train)} training images"}
    if inception == "auto" and device.type != "cuda":
        _log("Inception FID skipped: --inception auto runs it on a GPU only (on a CPU the features of the "
             "reference set take hours); --inception yes runs it anyway")
    elif inception != "no":
        try:
            from .fid import InceptionFeatures
            ref, ref_src = _reference_subset(train, n)
            net = InceptionFeatures(device=device)
            scorers["inception"] = FIDScorer(net, ref, device, batch_size=250, floor_images=test.images, log=log,
                                             name="Inception features")
            scorers["inception"].sources = {"floor": floor_src, "reference": ref_src, "train_images": len(train)}
        except (FileNotFoundError, ImportError) as e:
            if inception == "yes":
                raise
            _log(f"Inception FID skipped: {e}")
    if not scorers:
        raise ValueError(f"nothing to score {recipe.dataset} with: no class labels for the classifier FID and no "
                         "Inception FID (--inception yes runs it on a CPU too, slowly; it needs the fid extra)")
    return scorers, clf_info


def samples_that_fit(image_bytes: int, cap_mb: float) -> int:
    """How many uint8 images of ``image_bytes`` bytes fit in ``cap_mb`` MiB less 64 KiB (the zip's own records),
    counted uncompressed: a deflated file is then below the cap whatever the images (deflate adds at most
    5 bytes per 16 KiB block to data it cannot compress). CIFAR-10 (3 x 32 x 32) at 16 MiB: 5440."""
    return max(int(cap_mb * 2 ** 20) - 65536, 0) // int(image_bytes)


def _save_samples(path: Path, imgs: torch.Tensor, spec: dict, seed: int, cap_mb: float) -> int:
    """Write the first samples of ``imgs`` that fit in ``cap_mb`` MiB (:func:`samples_that_fit`) to ``path``
    as a compressed .npz; return how many (0: none fit, nothing written)."""
    k = min(len(imgs), samples_that_fit(imgs[0].numel(), cap_mb))
    if k == 0:
        return 0
    save_npz(path, imgs[:k], compressed=True, sampler=spec["name"], nfe=spec["nfe"], steps=spec["steps"],
             ts=spec.get("ts") or [], seed=seed, n_generated=len(imgs))
    return k


def evaluate(run, n: int = 10000, device=None, data_root=None, inception: str = "auto", cache=None,
             batch_size: int = 1000, seed: int = 0, extra_samplers: list[dict] | None = None,
             progress: bool = True, scorers: tuple[dict, dict] | None = None,
             save_samples_mb: float = SAVE_SAMPLES_MB) -> dict:
    """Score every sampler of ``run`` (see the module docstring); write ``run/eval.json`` and return it.

    ``n`` is lowered (with a printed note) to the number of floor images where the data set has fewer.
    inception: 'auto' (on a GPU, when installed), 'yes' (error when missing) or 'no'. ``scorers``: the
    ``(scorers, classifier info)`` of :func:`make_scorers` for the run's data set, to share them between
    runs; by default they are made here. ``save_samples_mb``: the size cap of each sampler's
    ``eval-samples-<sampler>.npz`` in the run folder (0: write none). ``progress``: the rows on stdout as
    they come (notes and progress always go to stderr)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run = Path(run)
    model, info = load_run(run, device)
    recipe = Recipe.from_dict(info["recipe"])
    if scorers is None:
        train, test = load_train_test(recipe, data_root)
        scorers = make_scorers(recipe, train, test, Path(cache) if cache else run.parent, device, inception, n=n)
    scorers, clf_info = scorers
    pool = min(s.floor_pool_size for s in scorers.values())
    if n > pool:
        _log(f"n = {n} samples is more than the {pool} floor images of {recipe.dataset}: using n = {pool}")
        n = pool
    if n < 2:
        raise ValueError(f"an FID needs n >= 2 samples; got n = {n}")
    n_ref = getattr(next(iter(scorers.values())), "sources", {}).get("train_images")
    seen = info.get("train_images")
    if seen is not None and n_ref is not None and seen != n_ref:
        _log(f"{run} trained on {seen} images but the reference set has {n_ref}: the run may have trained on the "
             "floor images, whose floor is then biased low")
    result = {"run": str(run), "recipe": recipe.name, "n": n, "classifier": clf_info,
              "train_summary": {k: info.get(k) for k in ("steps", "images_per_second", "images_seen", "device",
                                                          "train_seconds_this_process", "K", "train_images")},
              "sources": {k: getattr(s, "sources", {}) for k, s in scorers.items()},
              "rows": []}
    floors = {k: s.floor(n, seed) for k, s in scorers.items()}
    result["floors"] = floors
    for spec in samplers(info) + list(extra_samplers or []):
        t0 = time.monotonic()
        imgs = sample_images(model, info, n, steps=spec["steps"], ts=spec.get("ts"), batch_size=batch_size,
                             device=device, seed=seed)
        if device.type == "cuda":
            torch.cuda.synchronize()
        row = {**spec, "sample_seconds": time.monotonic() - t0}
        for k, s in scorers.items():
            row[f"fid_{k}"] = s.score(imgs)
            row[f"floor_{k}"] = floors[k]["fid"]
        if save_samples_mb and save_samples_mb > 0:
            name = spec.get("file") or "".join(c if c.isalnum() else "-" for c in spec["name"]).strip("-")
            path = run / f"eval-samples-{name}.npz"
            k = _save_samples(path, imgs, spec, seed, save_samples_mb)
            row["samples_file"], row["samples_saved"] = (str(path) if k else None), k
        result["rows"].append(row)
        if progress:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    tmp = run / "eval.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, run / "eval.json")
    return result


def evaluate_runs(runs, n: int = 10000, device=None, data_root=None, inception: str = "auto", cache=None,
                  **kw) -> list[dict]:
    """:func:`evaluate` for several runs; runs of the same data set share its data, classifier and the
    reference statistics of its training set (computed once: Inception features of up to 50k-60k images)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shared, results = {}, []
    for run in runs:
        run = Path(run)
        saved = json.loads((run / "recipe.json").read_text()) if (run / "recipe.json").is_file() else None
        recipe = Recipe.from_dict(saved["recipe"]) if saved else None  # without it, evaluate() says what is wrong
        key = (recipe.dataset, tuple(saved.get("shape", ()))) if recipe is not None else None
        if key is not None and key not in shared:
            train, test = load_train_test(recipe, data_root)
            shared[key] = make_scorers(recipe, train, test, Path(cache) if cache else run.parent, device, inception,
                                       n=n)
        results.append(evaluate(run, n=n, device=device, data_root=data_root, inception=inception, cache=cache,
                                scorers=shared.get(key), **kw))
    return results


def format_table(result: dict) -> str:
    """A plain-text table of an eval result: each FID beside its floor, and where the floor's and the
    reference's images come from."""
    keys = [k for k in ("inception", "classifier") if f"fid_{k}" in result["rows"][0]]
    lines = [f"{result['recipe']}: {result['n']} samples per sampler; classifier test accuracy "
             f"{result['classifier'].get('test_accuracy', float('nan')):.4f}"]
    sources = result.get("sources", {})
    for k in keys:
        src = sources.get(k) or {}
        if src:
            lines.append(f"  {k} FID floor: {src.get('floor')} (reference: {src.get('reference')})")
    lines.append("sampler".ljust(24) + "NFE".rjust(5) + "".join(f"  {k} FID (floor)".rjust(28) for k in keys))
    for r in result["rows"]:
        lines.append(r["name"].ljust(24) + str(r["nfe"]).rjust(5) +
                     "".join(f"{r[f'fid_{k}']:.3f} ({r[f'floor_{k}']:.3f})".rjust(28) for k in keys))
    saved = [r for r in result["rows"] if r.get("samples_saved")]
    if saved:
        lines.append("samples: " + ", ".join(f"{r['samples_file']} ({r['samples_saved']})" for r in saved))
    return "\n".join(lines)
