"""Operators that one step of mnist-ict and of mnist-ect runs: the loss (two passes of the network) and its
backward pass, counted with torch.profiler on a CPU at three points of each schedule. At the MNIST network's
size a GPU step is bound by the host, which launches one or more kernels per operator.

    python docs/results/2026-12-06-h100-f/count_ops.py
"""
import torch
from torch.profiler import ProfilerActivity, profile

from cmlite.image.recipes import build, build_net, get_recipe

torch.manual_seed(0)
torch.set_num_threads(1)
for name in ("mnist-ict", "mnist-ect"):
    recipe = get_recipe(name)
    model, loss, schedule = build(recipe, build_net(recipe, 1, 28), steps=1000)
    x = torch.randn(4, 1, 28, 28)
    for k in (0, 500, 999):
        N, _ = schedule(k)
        for _ in range(2):  # warm-up: caches of the grid and the index distribution
            loss(model, x, N=N).mean().backward()
        with profile(activities=[ProfilerActivity.CPU]) as p:
            loss(model, x, N=N).mean().backward()
        events = p.events()
        top = sum(e.cpu_parent is None for e in events)
        print(f"{name} step {k} of 1000 (N = {N}): {len(events)} operators, "
              f"{top} of them at the top level (not called by another operator)")
