r"""``cmlite eval``: FIDs of a run's samplers, each with its floor.

For every sampler of a run (a teacher: Heun ODE at several NFE; a consistency model: 1 and 2 steps),
``n`` samples (10k by default) are scored against the real training set in two feature spaces:

* Inception FID (the standard network; the ``fid`` extra), when its weights are installed;
* classifier FID: the Fréchet distance in the penultimate features of a small classifier that cmlite
  trains itself on the same data set (cached next to the runs; its test accuracy is reported).

Every FID is printed beside its floor: the same computation for ``n`` real images that the generator
never saw (MNIST: the test split; otherwise a random subset of the training set, which is biased low).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from .classifier import classifier_features, load_classifier, save_classifier, train_classifier
from .data import ImageData
from .fid import FIDScorer
from .recipes import Recipe
from .run import load_run, load_train_test, sample_images, teacher_nfe

TEACHER_GRIDS = (2, 3, 5, 10, 18)      # Heun on N points: 2, 4, 8, 18, 34 network evaluations
CM_STEPS = (1, 2)


def get_classifier(recipe: Recipe, train: ImageData, test: ImageData | None, cache: Path, device,
                   steps: int | None = None):
    """Load the data set's classifier from ``cache``, or train it (and cache it). Returns (model, info)."""
    path = cache / f"classifier-{recipe.dataset.replace('/', '_').replace(':', '_')}.pt"
    if path.is_file():
        return load_classifier(path, device)
    if test is None:  # no test split: hold out 5000 training images (or 10%) for the accuracy
        train, test = train.split(min(5000, len(train) // 10), seed=0)
    tiny = recipe.dataset == "synthetic"  # the project's own shapes (tests, CPU): a small, quick classifier
    steps = steps or (60 if tiny else 2000 if train.channels == 1 else 4000)
    t0 = time.monotonic()
    model, acc = train_classifier(train, test, steps=steps, device=device, seed=0,
                                  **(dict(batch_size=128, width=16) if tiny else {}))
    info = {"test_accuracy": acc, "steps": steps, "train_seconds": time.monotonic() - t0, "n_test": len(test)}
    cache.mkdir(parents=True, exist_ok=True)
    save_classifier(model, path, **info)
    return load_classifier(path, device)


def samplers(info: dict) -> list[dict]:
    """The sampler settings evaluated for a run: name, steps, NFE."""
    if info["recipe"]["method"] == "teacher":
        return [{"name": f"Heun ODE N={N}", "steps": N, "nfe": teacher_nfe(N)} for N in TEACHER_GRIDS]
    tau = info["recipe"].get("two_step_tau", 0.585)
    return [{"name": "1-step", "steps": 1, "nfe": 1, "ts": [80.0]},
            {"name": f"2-step (tau={tau})", "steps": 2, "nfe": 2, "ts": [80.0, tau]}]


def make_scorers(recipe: Recipe, train: ImageData, test: ImageData | None, cache: Path, device,
                 inception: str = "auto") -> tuple[dict, dict]:
    """The FID scorers of a data set, ``({'classifier': ..., 'inception': ...}, classifier info)``: the
    reference statistics of the training set are computed here, once (see :func:`evaluate_runs`)."""
    clf, clf_info = get_classifier(recipe, train, test, cache, device)
    floor_images = None if test is None else test.images
    scorers = {"classifier": FIDScorer(classifier_features(clf), train.images, device, batch_size=500,
                                       floor_images=floor_images)}
    if inception != "no":
        try:
            from .fid import InceptionFeatures
            scorers["inception"] = FIDScorer(InceptionFeatures(device=device), train.images, device,
                                             batch_size=250, floor_images=floor_images)
        except (FileNotFoundError, ImportError) as e:
            if inception == "yes":
                raise
            print(f"[cmlite eval] Inception FID skipped: {e}")
    return scorers, clf_info


def evaluate(run, n: int = 10000, device=None, data_root=None, inception: str = "auto", cache=None,
             batch_size: int = 1000, seed: int = 0, extra_samplers: list[dict] | None = None,
             progress: bool = True, scorers: tuple[dict, dict] | None = None) -> dict:
    """Score every sampler of ``run`` (see the module docstring); write ``run/eval.json`` and return it.

    inception: 'auto' (use it when installed), 'yes' (error when missing) or 'no'. ``scorers``: the
    ``(scorers, classifier info)`` of :func:`make_scorers` for the run's data set, to share them between
    runs; by default they are made here."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run = Path(run)
    model, info = load_run(run, device)
    recipe = Recipe.from_dict(info["recipe"])
    if scorers is None:
        train, test = load_train_test(recipe, data_root)
        scorers = make_scorers(recipe, train, test, Path(cache) if cache else run.parent, device, inception)
    scorers, clf_info = scorers
    result = {"run": str(run), "recipe": recipe.name, "n": n, "classifier": clf_info,
              "train_summary": {k: info.get(k) for k in ("steps", "images_per_second", "images_seen", "device",
                                                          "train_seconds_this_session", "K")},
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
        result["rows"].append(row)
        if progress:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    tmp = run / "eval.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, run / "eval.json")
    return result


def evaluate_runs(runs, device=None, data_root=None, inception: str = "auto", cache=None, **kw) -> list[dict]:
    """:func:`evaluate` for several runs; runs of the same data set share its data, classifier and the
    reference statistics of its training set (computed once: Inception features of 50k-60k images)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shared, results = {}, []
    for run in runs:
        run = Path(run)
        saved = json.loads((run / "recipe.json").read_text()) if (run / "recipe.json").is_file() else None
        recipe = Recipe.from_dict(saved["recipe"]) if saved else None  # without it, evaluate() says what is wrong
        key = (recipe.dataset, tuple(saved.get("shape", ()))) if recipe is not None else None
        if key is not None and key not in shared:
            train, test = load_train_test(recipe, data_root)
            shared[key] = make_scorers(recipe, train, test, Path(cache) if cache else run.parent, device, inception)
        results.append(evaluate(run, device=device, data_root=data_root, inception=inception, cache=cache,
                                scorers=shared.get(key), **kw))
    return results


def format_table(result: dict) -> str:
    """A plain-text table of an eval result."""
    keys = [k for k in ("inception", "classifier") if f"fid_{k}" in result["rows"][0]]
    lines = [f"{result['recipe']}: {result['n']} samples vs the training set; classifier test accuracy "
             f"{result['classifier'].get('test_accuracy', float('nan')):.4f}",
             "sampler".ljust(24) + "NFE".rjust(5) + "".join(f"  {k} FID (floor)".rjust(28) for k in keys)]
    for r in result["rows"]:
        lines.append(r["name"].ljust(24) + str(r["nfe"]).rjust(5) +
                     "".join(f"{r[f'fid_{k}']:.3f} ({r[f'floor_{k}']:.3f})".rjust(28) for k in keys))
    return "\n".join(lines)
