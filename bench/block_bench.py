r"""Where the image training step loses time to memory layout: one level of the U-Net, measured alone.

The step benchmark's profile of the 55.7M CIFAR-10 U-Net (bf16, channels_last, compiled) spent ~14% of the
CT step in eager copy kernels (~120 a step) and ~24% in fused pointwise/normalisation kernels whose names
carry a ``clone`` (a layout change). The suspect is GroupNorm: its decomposition reshapes an (N, C, H, W)
tensor to (N, G, C/G * H * W), which a channels_last tensor cannot do without a copy. This script times a
stack of ``--blocks`` :class:`cmlite.image.unet.ResBlock` s (forward + backward, bf16 autocast, channels_last,
``torch.compile``) with

* ``aten``  ``nn.GroupNorm`` (the library's module),
* ``view``  the same normalisation computed on the (N, G, C/G, H, W) *view*, which exists for either
            memory format, so no copy is needed,
* ``none``  no normalisation (a floor: convolutions and pointwise ops only),

and with or without dropout, and counts the copy kernels in a profile of one step.

    python bench/block_bench.py --quick                  # CPU self-check (seconds)
    python bench/block_bench.py --out block.json         # on a GPU
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cmlite.image.unet as U  # noqa: E402
from step_bench import count_flops  # noqa: E402  (FlopCounterMode at two batch sizes, checked linear)


class ViewGroupNorm(nn.GroupNorm):
    """GroupNorm computed on the (N, G, C/G, H, W) view of its input (fp32 statistics, as autocast runs
    ``group_norm``): the same numbers as ``nn.GroupNorm``, no reshape that a channels_last tensor lacks."""

    def forward(self, x):
        n, c, h, w = x.shape
        xg = x.float().view(n, self.num_groups, c // self.num_groups, h, w)
        var, mean = torch.var_mean(xg, dim=(2, 3, 4), keepdim=True, correction=0)
        y = ((xg - mean) * torch.rsqrt(var + self.eps)).view(n, c, h, w)
        return torch.addcmul(self.bias.float()[:, None, None], y, self.weight.float()[:, None, None])


def build(norm: str, channels: int, blocks: int, dropout: float, device):
    orig = U.group_norm
    if norm == "none":   # no normalisation at all: the stack's convolution-and-pointwise floor
        U.group_norm = lambda c: nn.Identity()
    elif norm == "view":
        def gn(c):
            m = orig(c)
            v = ViewGroupNorm(m.num_groups, c, eps=m.eps)
            v.load_state_dict(m.state_dict())
            return v
        U.group_norm = gn
    try:
        torch.manual_seed(0)
        cfg = U.unet_config("cifar10", dropout=dropout)
        emb_c = cfg.model_channels * cfg.channel_mult_emb
        stack = nn.ModuleList(U.ResBlock(channels, channels, emb_c, cfg) for _ in range(blocks))
    finally:
        U.group_norm = orig
    return stack.to(device, memory_format=torch.channels_last), emb_c


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--configs", nargs="+", default=["aten:0.3", "view:0.3", "aten:0", "view:0"],
                   help="norm:dropout[:eager] (norm: aten, view or none)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--quick", action="store_true", help="CPU self-check: batch 2, 16 channels, 8x8, no compile")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.batch, a.channels, a.res, a.blocks, a.steps, a.no_compile = 2, 16, 8, 2, 2, True
    device = torch.device("cuda" if torch.cuda.is_available() and not a.quick else "cpu")
    cuda = device.type == "cuda"
    res = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
           "args": vars(a), "results": []}
    ref = None
    for item in a.configs:
        norm, drop, *mode = item.split(":")   # norm:dropout[:eager]
        eager = a.no_compile or mode == ["eager"]
        stack, emb_c = build(norm, a.channels, a.blocks, float(drop), device)
        torch.manual_seed(1)
        x = torch.randn(a.batch, a.channels, a.res, a.res, device=device).to(memory_format=torch.channels_last)
        emb = torch.randn(a.batch, emb_c, device=device)

        def f(x, emb):
            for b in stack:
                x = b(x, emb)
            return x
        fn = f if eager else torch.compile(f)
        def eager_step(b):   # for the FLOP count: the same forward + backward, eager, on b images
            xb = torch.randn(b, *x.shape[1:], device=device).to(memory_format=torch.channels_last)
            return lambda: f(xb.requires_grad_(True), emb[:1].expand(b, -1)).float().square().mean().backward()
        flop_per_step = count_flops(eager_step)[0] * a.batch

        def step():
            x.requires_grad_(True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                y = fn(x, emb)
            y.float().square().mean().backward()
            x.grad = None
            return y
        t0 = time.perf_counter()
        y = step()
        if cuda:
            torch.cuda.synchronize()
        first = time.perf_counter() - t0
        if float(drop) == 0:  # deterministic: the two norms must agree
            out = y.detach().float()
            if ref is None:
                ref = out
            else:
                err = ((out - ref).norm() / ref.norm()).item()
                print(f"  {item}: relative difference to the first dropout-0 config {err:.2e}")
        for _ in range(3):
            step()
        times = []
        for _ in range(3):
            if cuda:
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                s.record()
            t = time.perf_counter()
            for _ in range(a.steps):
                step()
            if cuda:
                e.record()
                e.synchronize()
                times.append(s.elapsed_time(e) / 1e3 / a.steps)
            else:
                times.append((time.perf_counter() - t) / a.steps)
        copies = None
        if cuda:
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CUDA]) as pr:
                step()
                torch.cuda.synchronize()
            ev = [e for e in pr.key_averages() if "direct_copy" in e.key or "copy_kernel" in e.key]
            tot = sum(getattr(e, "self_device_time_total", 0) for e in pr.key_averages())
            copies = {"calls": sum(e.count for e in ev),
                      "share": sum(getattr(e, "self_device_time_total", 0) for e in ev) / max(tot, 1)}
            clones = [e for e in pr.key_averages() if "clone" in e.key]
            copies["clone_kernels_ms"] = sum(getattr(e, "self_device_time_total", 0) for e in clones) / 1e3
        r = {"config": item, "ms": 1e3 * statistics.median(times), "first_s": first, "copies": copies,
             "tflop_per_step": flop_per_step / 1e12}
        r["tflops"] = r["tflop_per_step"] / (r["ms"] / 1e3)
        res["results"].append(r)
        print(f"{item:10s} {r['ms']:8.2f} ms/step (fwd+bwd, {a.blocks} blocks, {r['tflops']:.4g} TFLOP/s)  "
              f"first {first:.1f} s  copies {copies}",
              flush=True)
        if a.out:
            Path(a.out).write_text(json.dumps(res, indent=1))
        del stack, fn
        torch._dynamo.reset()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
