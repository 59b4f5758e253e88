"""GPU check of ``train.cuda_graphs``: do the same training steps compiled with CUDA graphs compute what the
compiled steps without them compute?

    python bench/gpu/graph_check.py OUTDIR [--recipe mnist-ict] [--steps 30] [--variants eager compiled cuda-graphs]

From one seed, ``--steps`` steps of the recipe's :class:`cmlite.training.Trainer` (its network without dropout,
its loss, schedule, batch, bf16 and channels-last; random uint8 images of the recipe's shape, so no data file
is needed), once per variant: eager, compiled (``compile=True``) and compiled with CUDA graphs (``compile=True,
cuda_graphs=True``: the path ``cmlite train --set train.cuda_graphs=True`` takes). Without dropout the step draws
random numbers only outside the compiled graphs, the same in every variant, so the compiled and CUDA-graph
variants run the same kernels on the same inputs: their losses and final weights should agree to rounding,
while eager differs from both by bf16 rounding through the steps. Writes OUTDIR/graph_check.json: each variant's
losses, and the largest relative difference of its losses and the relative L2 difference of its final weights
from the reference (the first of ``compiled``, else the first variant). On a CPU Inductor skips CUDA graphs;
there ``--recipe tiny-ict --batch 4`` checks the script.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from cmlite.image.data import GPUBatches, ImageData
from cmlite.image.recipes import build, build_net, get_recipe
from cmlite.image.unet import unet_config
from cmlite.training import Trainer

VARIANTS = {"eager": dict(compile=False), "compiled": dict(compile=True),
            "cuda-graphs": dict(compile=True, cuda_graphs=True)}


def run(name: str, variant: str, steps: int, batch: int | None, device: torch.device) -> dict:
    """``steps`` training steps of recipe ``name`` from seed 0: the losses and the final weights."""
    r = get_recipe(name).with_overrides(["net_overrides.dropout=0.0"])
    over = dict(device=str(device), precision="bf16" if device.type == "cuda" else "fp32",
                channels_last=device.type == "cuda", log_every=1, steps=10 * steps, **VARIANTS[variant])
    cfg = dataclasses.replace(r.train, **over, **({"batch_size": batch} if batch else {}))
    shape = unet_config(r.net, **r.net_overrides)
    C, H = shape.in_channels, shape.img_resolution
    torch.manual_seed(0)
    model, loss, schedule = build(r, build_net(r, C, H), steps=cfg.steps)
    images = torch.randint(0, 256, (max(4 * cfg.batch_size, 256), C, H, H), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    src = GPUBatches(ImageData(images, None, 0, "random-uint8"), cfg.batch_size, device, flip=r.flip,
                     channels_last=cfg.channels_last, seed=0)
    tr = Trainer(model, loss, src, cfg, schedule, meta={"check": variant})
    t0 = time.perf_counter()
    for _ in tr.steps(steps):
        pass
    weights = torch.cat([p.detach().float().flatten().cpu() for p in tr.model.parameters()])
    return {"variant": variant, "seconds": time.perf_counter() - t0, "loss": list(tr.history["loss"]),
            "N": list(tr.history["N"]), "batch": cfg.batch_size, "precision": cfg.precision, "_weights": weights}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--recipe", default="mnist-ict")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=None, help="default: the recipe's")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs = [run(args.recipe, v, args.steps, args.batch, device) for v in args.variants]
    ref = next((x for x in runs if x["variant"] == "compiled"), runs[0])
    for x in runs:
        a, b = torch.tensor(x["loss"]), torch.tensor(ref["loss"])
        x["loss_max_rel_diff"] = float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())
        x["weights_rel_l2_diff"] = float((x["_weights"] - ref["_weights"]).norm() / ref["_weights"].norm())
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "recipe": args.recipe, "steps": args.steps, "reference": ref["variant"],
              "runs": [{k: v for k, v in x.items() if not k.startswith("_")} for x in runs]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "graph_check.json").write_text(json.dumps(result, indent=1))
    print(f"{result['device']}, {args.recipe}, {args.steps} steps from seed 0, against {ref['variant']}:")
    for x in runs:
        print(f"  {x['variant']:12s} losses: largest relative difference {x['loss_max_rel_diff']:.2e}; final weights: "
              f"relative L2 difference {x['weights_rel_l2_diff']:.2e}; {x['seconds']:.1f} s (compiling included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
