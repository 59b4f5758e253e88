r"""Speed of cmlite's image training step and one-step sampling, measured against the GPU's own limit.

For a U-Net preset (default ``cifar10``: EDM's 55.7M-parameter DDPM++ at 32x32x3) and batch sizes, time

* ``ct``     the consistency-training step (Algorithm 3): online forward + backward, target forward,
             optimiser step, target and EMA updates, batch drawn on the device;
* ``ict``    the same for improved CT (mu = 0: the online network is the target, lognormal indices);
* ``ect``    the same for ECT (t from the lognormal, r paired with it, one dropout mask for both passes);
* ``cd``     the consistency-distillation step (Algorithm 2): one Heun step of the teacher (2 forwards),
             target forward, online forward + backward, updates;
* ``sct``    the sCT step (continuous time): a JVP pass without gradient (compiled: one compiled
             ``torch.func.jvp``), the online forward + backward, updates;
* ``sample`` one-step sampling: noise, one forward pass of the EMA model (no grad),

each through the library itself (:class:`cmlite.training.Trainer.train_step` on a
:class:`cmlite.image.data.GPUBatches` source of synthetic uint8 images, the losses and schedules of the
image recipes, :func:`cmlite.sampling.multistep_sample` on ``trainer.ema``), in variants

* ``fp32-eager``  TrainConfig(precision='fp32', channels_last=False, compile=False), TF32 off (true fp32);
* ``tf32-eager``  the same with TF32 matmuls and convolutions;
* ``bf16-eager``  bf16 autocast + channels_last, no compile;
* ``fast``        bf16 autocast, channels_last, ``compile`` (the Trainer's in-place
                  :func:`cmlite.training.compile_net`, which keeps convolutions channels-last; the CD
                  teacher's net compiled too), fused Adam, cudnn.benchmark;
* ``fast-heuristic`` the same, compiled with Inductor's own layout heuristic (what ``net.compile()`` does,
                  and what cmlite did before its ``compile_net``);
* ``fast-library-gn`` ``fast`` with torch's GroupNorm everywhere (``fast`` runs cmlite's channels-last
                  :class:`cmlite.image.unet.GroupNorm` in compiled no-grad passes: sampling, target, teacher);
* ``fast-always-gn`` ``fast`` with cmlite's GroupNorm in the training passes too.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one eager step at two small batch
sizes (and checked to be exactly linear in the batch), never estimated by hand. The bf16 matrix-multiply
peak is measured in the same process on the same card (8192^3, median of 30 after 150 warm-up products); % of peak =
achieved TFLOP/s / that peak; for sampling the forward-pass floor is forward FLOPs / peak, and % of floor
= floor time / measured time. Times: warm-up (compilation included, reported separately), then
``--repeats`` runs of ``--steps`` steps between CUDA events, median. Peak memory: max_memory_allocated
over the timed steps. ``syncs/step``: host synchronisations in one steady-state step, counted with
``torch.cuda.set_sync_debug_mode('warn')``.

    python bench/step_bench.py --quick                            # CPU self-check of the script (seconds)
    python bench/step_bench.py --out bench.json                   # cifar10, batch 128..1024, ct cd sample
    python bench/step_bench.py --batch 512 --kinds ct --variants fast --compile-mode max-autotune-no-cudagraphs
    python bench/step_bench.py --preset mnist-small --batch 256 1024 --kinds ict --variants bf16-eager --profile
        # the kernels' busy share of the step's time, and their count: bound by the host or by the GPU?

Results: JSON to ``--out`` (rewritten after every configuration, so a killed run keeps what it measured)
and Markdown tables printed last.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmlite.image.data import GPUBatches, ImageData  # noqa: E402
from cmlite.image.recipes import build, build_net, get_recipe  # noqa: E402
from cmlite.image.unet import GroupNorm, count_parameters, unet_config  # noqa: E402
from cmlite.parameterization import EDMDenoiser  # noqa: E402
from cmlite.sampling import multistep_sample  # noqa: E402
from cmlite.schedules import T_MAX  # noqa: E402
from cmlite.training import Trainer, compile_net as cmlite_compile_net  # noqa: E402

VARIANTS = {
    "fp32-eager": dict(precision="fp32", channels_last=False, compile=False, tf32=False),
    "tf32-eager": dict(precision="fp32", channels_last=False, compile=False, tf32=True),
    "bf16-eager": dict(precision="bf16", channels_last=True, compile=False, tf32=True),
    "fast": dict(precision="bf16", channels_last=True, compile=True, tf32=True),
    "fast-heuristic": dict(precision="bf16", channels_last=True, compile=True, tf32=True, layout="heuristic"),
    "fast-library-gn": dict(precision="bf16", channels_last=True, compile=True, tf32=True, gn="library"),
    "fast-always-gn": dict(precision="bf16", channels_last=True, compile=True, tf32=True, gn="always"),
}
KINDS = ("ct", "ict", "ect", "cd", "sct", "sample")
GiB = 2 ** 30


def log(*a):
    print(*a, flush=True)


# ------------------------------------------------------------------------------------------ settings
def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def configure_dynamo(args) -> None:
    import torch._dynamo.config as dc
    for name, value in (("recompile_limit", 64), ("cache_size_limit", 64), ("accumulated_recompile_limit", 4096),
                        ("accumulated_cache_size_limit", 4096), ("fail_on_recompile_limit_hit", True)):
        if hasattr(dc, name):  # a silent fall-back to eager would make the numbers wrong: fail instead
            setattr(dc, name, value)
    if args.dynamic == "static":
        dc.automatic_dynamic_shapes = False  # one static graph per batch size (compiled per shape)
    for item in args.inductor_config:
        import torch._inductor.config as ic
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        obj = ic
        *path, last = key.split(".")
        for p in path:
            obj = getattr(obj, p)
        if not hasattr(obj, last):
            raise SystemExit(f"unknown torch._inductor.config key {key!r}")
        setattr(obj, last, value)


def compile_net(net: torch.nn.Module, args, variant: str) -> None:
    """The Trainer's in-place compile (:func:`cmlite.training.compile_net`), again with the chosen mode or
    Inductor's own layout heuristic where asked; ``--dynamic batch`` marks the batch dimension of the net's
    inputs dynamic, so one graph serves every batch size."""
    heuristic = VARIANTS[variant].get("layout") == "heuristic"
    if args.compile_mode != "default" or heuristic or getattr(net, "_compiled_call_impl", None) is None:
        cmlite_compile_net(net, VARIANTS[variant]["channels_last"] and not heuristic,
                           None if args.compile_mode == "default" else args.compile_mode)
    if args.dynamic == "batch":
        inner = net._compiled_call_impl

        def call(x, c_noise, *a, **k):
            torch._dynamo.maybe_mark_dynamic(x, 0)
            if isinstance(c_noise, torch.Tensor) and c_noise.ndim:
                torch._dynamo.maybe_mark_dynamic(c_noise, 0)
            return inner(x, c_noise, *a, **k)
        net._compiled_call_impl = call


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ builders
def recipe_for(preset: str, kind: str):
    family = "tiny" if preset == "tiny" else "mnist" if preset.startswith("mnist") else "cifar10"
    method = "ct" if kind == "sample" else kind
    r = get_recipe(f"{family}-{method}")
    r.net = preset
    cfg = unet_config(preset, **r.net_overrides)
    return r, cfg.in_channels, cfg.img_resolution


def make_trainer(kind: str, preset: str, batch: int, variant: str, device, args, n_images: int,
                 compiled: bool | None = None) -> Trainer:
    v = VARIANTS[variant]
    GroupNorm.channels_last_path = {"library": "never", "always": "always"}.get(v.get("gn"), "compiled_no_grad")
    compiled = v["compile"] and not args.no_compile if compiled is None else compiled
    recipe, C, H = recipe_for(preset, kind)
    K = 20000
    cfg = dataclasses.replace(recipe.train, device=str(device), batch_size=batch, precision=v["precision"],
                              channels_last=v["channels_last"], compile=compiled, log_every=10 ** 9,
                              optimizer=args.optimizer, steps=K)
    fmt = torch.channels_last if v["channels_last"] else torch.preserve_format
    torch.manual_seed(0)
    net = build_net(recipe, C, H)
    teacher = None
    if kind == "cd":
        teacher = EDMDenoiser(build_net(recipe, C, H)).to(device, memory_format=fmt).eval().requires_grad_(False)
        if compiled and not args.no_compile_teacher:
            compile_net(teacher.net, args, variant)
    model, loss, schedule = build(recipe, net, teacher, steps=K)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_images, C, H, H), dtype=torch.uint8, generator=g)
    src = GPUBatches(ImageData(images, None, 0, "synthetic-uint8"), batch, device, flip=recipe.flip,
                     channels_last=v["channels_last"], seed=0)
    tr = Trainer(model, loss, src, cfg, schedule, meta={"bench": kind})
    if compiled:
        for m in (tr.model, tr.target, tr.ema):
            if m is not None:
                compile_net(m.net, args, variant)
    return tr


def step_fn(kind: str, tr: Trainer, batch: int, variant: str, device):
    """The function timed: one training step, or one-step sampling from the EMA model."""
    if kind != "sample":
        return tr.train_step
    C, H, W = tr.batches.data.images.shape[1:]
    fmt = torch.channels_last if VARIANTS[variant]["channels_last"] else torch.contiguous_format
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=VARIANTS[variant]["precision"] == "bf16")

    def sample():
        x = (T_MAX * torch.randn((batch, C, H, W), device=device)).contiguous(memory_format=fmt)
        with amp:
            return multistep_sample(tr.ema, x, [T_MAX])
    return sample


# ------------------------------------------------------------------------------------------ measurements
def matmul_peak(device, n: int, reps: int | None = None) -> dict:
    """TFLOP/s of an n x n x n matrix product (bf16 on a GPU, fp32 on a CPU): median of ``reps`` (default:
    30 on a GPU, 10 on a CPU) after a warm-up of 5 * reps products on a GPU (~0.1 s at full clock: a
    shorter one read 745 and 775 TFLOP/s on one H100 minutes apart)."""
    reps = reps or (30 if device.type == "cuda" else 10)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(5 * reps if device.type == "cuda" else 3):
        a @ b
    sync(device)
    ts = []
    for _ in range(reps):
        if device.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            a @ b
            e.record()
            e.synchronize()
            ts.append(s.elapsed_time(e) / 1e3)
        else:
            t = time.perf_counter()
            a @ b
            ts.append(time.perf_counter() - t)
    t = statistics.median(ts)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "reps": reps, "seconds": t,
            "tflops": 2 * n ** 3 / t / 1e12}


def count_flops(fn_for_batch, batches=(2, 4)) -> tuple[float, dict]:
    """FLOPs per image of one call, counted by FlopCounterMode at two batch sizes (must be exactly linear)."""
    from torch.utils.flop_counter import FlopCounterMode
    totals, ops = [], {}
    for b in batches:
        fn = fn_for_batch(b)
        fn()  # first call: lazy state (optimiser) out of the way
        with FlopCounterMode(display=False) as fc:
            fn()
        totals.append(fc.get_total_flops())
        ops = {str(k): v / b for k, v in fc.get_flop_counts().get("Global", {}).items()}
    per_image = [t / b for t, b in zip(totals, batches)]
    if abs(per_image[0] - per_image[1]) > 1e-9 * per_image[1]:
        raise RuntimeError(f"FLOPs are not linear in the batch size: {totals} at batches {batches}")
    return per_image[1], ops


def count_syncs(fn, device) -> tuple[int | None, list[str]]:
    """Host synchronisations during one call (CUDA's sync debug mode; None on a CPU), and the Python lines
    (file:line) that triggered them."""
    if device.type != "cuda":
        return None, []
    sync(device)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sync(device)
    hits = [x for x in w if "synchroniz" in str(x.message)]
    return len(hits), [f"{x.filename}:{x.lineno}" for x in hits][:10]


def time_fn(fn, device, steps: int, repeats: int) -> tuple[list[float], list[float]]:
    """Per-call GPU time (CUDA events) and host enqueue time of ``repeats`` runs of ``steps`` calls."""
    dev, host = [], []
    for _ in range(repeats):
        sync(device)
        if device.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            t = time.perf_counter()
            for _ in range(steps):
                fn()
            host.append((time.perf_counter() - t) / steps)
            e.record()
            e.synchronize()
            dev.append(s.elapsed_time(e) / 1e3 / steps)
        else:
            t = time.perf_counter()
            for _ in range(steps):
                fn()
            dev.append((time.perf_counter() - t) / steps)
            host.append(dev[-1])
    return dev, host


HOST_RANGES = ("##", "Optimizer.", "ProfilerStep#")  # device events that are ranges, not kernels
KERNEL_CLASSES = (("attention", ("flash", "fmha", "attention", "attn")),
                  ("depthwise conv (Resample)", ("depthwise", "dwconv", "conv_depthwise", "grouped")),
                  ("optimizer", ("adam", "multi_tensor", "foreach")),
                  ("conv/gemm", ("conv", "cudnn", "xmma", "gemm", "cutlass", "nvjet", "wgrad", "dgrad", "sm90_",
                                 "sm80_")),
                  ("triton (fused elementwise/norm)", ("triton",)),
                  ("copy/other", ("",)))


def profile(fn, device, steps: int = 2) -> dict:
    """GPU time by kernel (torch.profiler) over ``steps`` calls: the top kernels and a rough split by class
    (on a CPU: self CPU time by operator, to check this code)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile as prof
    cuda = device.type == "cuda"
    sync(device)
    with prof(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []), record_shapes=True,
              with_stack=True) as p:
        for _ in range(steps):
            fn()
        sync(device)
    ka = list(p.key_averages())
    # which host operators launch copies (layout changes), with their shapes and the Python line calling them
    copies = []
    for e in p.key_averages(group_by_input_shape=True, group_by_stack_n=3):
        if e.key in ("aten::copy_", "aten::contiguous", "aten::clone", "aten::_to_copy"):
            dt = getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0))
            copies.append({"op": e.key, "calls": e.count / steps, "device_ms_per_step": dt / 1e3 / steps,
                           "shapes": str(e.input_shapes)[:160], "stack": [str(x)[:160] for x in (e.stack or [])][:3]})
    copies.sort(key=lambda c: -c["device_ms_per_step"])
    # the operators above each copy that launched device work: which library call (or autograd node) asked
    chains = {}
    for e in p.events():
        if e.name in ("aten::copy_", "aten::clone", "aten::_to_copy") and (getattr(e, "kernels", None) or not cuda):
            up, a = [], e.cpu_parent
            while a is not None and len(up) < 6:
                up.append(a.name[:70])
                a = a.cpu_parent
            k = (e.name, str(e.input_shapes)[:60], " < ".join(up))
            chains[k] = chains.get(k, 0) + 1 / steps
    chains = [{"op": k[0], "shapes": k[1], "parents": k[2], "calls": v}
              for k, v in sorted(chains.items(), key=lambda kv: -kv[1])][:16]
    if cuda:
        # ranges marked by the host also show on the device, spanning kernels that are counted on their own
        # ("## Call CompiledFxGraph ... ##", "Optimizer.step#RAdam.step"): counting them would add their spans
        events = [e for e in ka if e.device_type == DeviceType.CUDA and not e.key.startswith(HOST_RANGES)]
        key = "self_device_time_total" if events and hasattr(events[0], "self_device_time_total") \
            else "self_cuda_time_total"
    else:
        events, key = ka, "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events) or 1.0
    split = {}
    for e in events:
        name = e.key.lower()
        cls = next(c for c, pats in KERNEL_CLASSES if any(q in name for q in pats))
        split[cls] = split.get(cls, 0.0) + getattr(e, key) / total
    top = sorted(events, key=lambda e: -getattr(e, key))[:25]
    # kernels per step: on a GPU each is one launch by the host (a compiled graph's kernels too, without CUDA graphs)
    return {"device_ms_per_step": total / 1e3 / steps, "kernels_per_step": sum(e.count for e in events) / steps,
            "split": split,
            "top": [{"kernel": e.key[:120], "ms_per_step": getattr(e, key) / 1e3 / steps, "calls": e.count / steps}
                    for e in top], "copies": copies[:12], "copy_parents": chains}


def dynamo_counts() -> dict:
    try:
        from torch._dynamo.utils import counters
        return {"unique_graphs": int(counters["stats"]["unique_graphs"]),
                "graph_breaks": int(sum(counters["graph_break"].values())),
                "recompiles": int(sum(v for k, v in counters["recompiles"].items())) if "recompiles" in counters else 0}
    except Exception:  # noqa: BLE001 - diagnostics only
        return {}


def measure(kind, variant, batch, args, device, n_images, flops_per_image, peak_tflops) -> dict:
    v = VARIANTS[variant]
    rec = {"kind": kind, "variant": variant, "batch": batch, "precision": v["precision"],
           "channels_last": v["channels_last"], "compile": v["compile"] and not args.no_compile,
           "tf32": v["tf32"]}
    if device.type == "cuda":
        set_tf32(v["tf32"])
        torch.backends.cudnn.benchmark = bool(v["compile"] or variant == "bf16-eager") and args.cudnn_benchmark
        rec["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    tr = fn = None
    try:
        d0 = dynamo_counts()
        t0 = time.perf_counter()
        tr = make_trainer(kind, args.preset, batch, variant, device, args, n_images)
        fn = step_fn(kind, tr, batch, variant, device)
        rec["build_s"] = time.perf_counter() - t0
        rec["optimizer"] = f"{type(tr.opt).__name__}(fused={tr.opt.defaults.get('fused')})"
        t0 = time.perf_counter()
        fn()
        sync(device)
        rec["first_step_s"] = time.perf_counter() - t0   # compilation included
        warm = []
        for _ in range(max((args.warmup if rec["compile"] else min(args.warmup, 2)) - 1, 0)):
            t0 = time.perf_counter()
            fn()
            sync(device)
            warm.append(time.perf_counter() - t0)
        rec["warmup_step_s"] = warm
        est = min(warm) if warm else rec["first_step_s"]
        steps = max(2, min(args.steps, int(args.seconds_per_config / max(args.repeats * est, 1e-9))))
        rec["syncs_per_step"], rec["sync_sites"] = count_syncs(fn, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        dev, host = time_fn(fn, device, steps, args.repeats)
        s = statistics.median(dev)
        if device.type == "cuda":
            rec["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / GiB
            rec["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GiB
        if args.profile:
            rec["profile"] = pr = profile(fn, device)
            if device.type == "cuda":
                pr["busy_share"] = busy = pr["device_ms_per_step"] / (1e3 * s)
                log(f"    profile {kind} {variant} {batch}: kernels busy {pr['device_ms_per_step']:.2f} ms of the "
                    f"step's {1e3 * s:.2f} ({100 * busy:.0f}%; {pr['kernels_per_step']:.0f} kernels): "
                    + ("the GPU waits on the host (Python, launches)" if busy < 0.8 else "the GPU's kernels bound it"))
            log(f"    profile {kind} {variant} {batch}: " + ", ".join(
                f"{k} {100 * v:.0f}%" for k, v in sorted(pr["split"].items(), key=lambda kv: -kv[1])))
            for t in pr["top"][:12]:
                log(f"      {t['ms_per_step']:8.3f} ms x{t['calls']:.0f}  {t['kernel']}")
            for c in pr["copy_parents"][:10]:
                log(f"      copy x{c['calls']:.0f} {c['op']} {c['shapes']} < {c['parents']}")
        if kind != "sample":
            tr.flush()  # the losses of the timed steps are read here: NaN/inf would raise
        rec.update(steps_timed=steps, repeats=args.repeats, s_per_step=s, s_per_step_repeats=dev,
                   host_s_per_step=statistics.median(host), images_per_s=batch / s)
        rec["dynamo"] = {k: dynamo_counts().get(k, 0) - d0.get(k, 0) for k in d0}
        fl = flops_per_image.get(kind)
        if fl:
            rec["gflop_per_image"] = fl / 1e9
            rec["tflops"] = fl * batch / s / 1e12
            rec["pct_peak"] = 100 * rec["tflops"] / peak_tflops
            if kind == "sample":
                rec["floor_images_per_s"] = peak_tflops * 1e12 / fl
                rec["pct_floor"] = 100 * rec["images_per_s"] / rec["floor_images_per_s"]
    except torch.OutOfMemoryError as e:
        rec["error"] = "out of memory"
        rec["error_detail"] = str(e).splitlines()[0][:300]
    except Exception as e:  # noqa: BLE001 - one failing configuration must not lose the others
        if args.strict:
            raise
        rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    finally:
        del tr, fn
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rec


def flops_for(kind: str, args, device) -> tuple[float, dict]:
    """Per-image FLOPs of one step (or one sampling forward), counted on eager fp32 copies at batch 2 and 4."""
    n_images = 16

    def for_batch(b):
        tr = make_trainer(kind, args.preset, b, "fp32-eager", device, args, n_images, compiled=False)
        return step_fn(kind, tr, b, "fp32-eager", device)
    if device.type == "cuda":
        set_tf32(False)
    return count_flops(for_batch)


# ------------------------------------------------------------------------------------------ output
def tables(res: dict) -> str:
    peak = res["peak_tflops"]
    base = {(r["kind"], r["batch"]): r["s_per_step"] for r in res["results"]
            if r["variant"] == "fp32-eager" and "s_per_step" in r}
    train = [r for r in res["results"] if r["kind"] != "sample"]
    samp = [r for r in res["results"] if r["kind"] == "sample"]

    def f(x, fmt):
        return "–" if x is None else format(x, fmt)

    out = [f"**{res['card']}**, torch {res['torch']}, preset `{res['preset']}` ({res['params'] / 1e6:.2f}M "
           f"parameters), measured {res['peak_kind']} matmul peak {peak:.4g} TFLOP/s "
           f"({res['peak']['start']['n']}^3, median of {res['peak']['start']['reps']})."]
    hdr = ("| step | variant | batch | ms/step | images/s | GFLOP/img | TFLOP/s | % of peak | peak mem GiB "
           "| × fp32 | syncs/step | compile+1st step s |")
    sep = "|" + "|".join(["---"] * (hdr.count("|") - 1)) + "|"
    for rows, title in ((train, "Training steps"), (samp, "One-step sampling")):
        if not rows:
            continue
        out += ["", f"{title}:", ""]
        if title.startswith("One"):
            h = hdr.replace("| × fp32 |", "| × fp32 | floor img/s | % of floor |")
            out += [h, "|" + "|".join(["---"] * (h.count("|") - 1)) + "|"]
        else:
            out += [hdr, sep]
        for r in rows:
            if "error" in r:
                out.append(f"| {r['kind']} | {r['variant']} | {r['batch']} | {r['error']} |")
                continue
            b = base.get((r["kind"], r["batch"]))
            cells = [r["kind"], r["variant"], str(r["batch"]), f(1e3 * r["s_per_step"], ".1f"),
                     f(r["images_per_s"], ".0f"), f(r.get("gflop_per_image"), ".4g"), f(r.get("tflops"), ".4g"),
                     f(r.get("pct_peak"), ".1f"), f(r.get("peak_mem_gib"), ".2f"),
                     f(b / r["s_per_step"] if b else None, ".2f")]
            if r["kind"] == "sample":
                cells += [f(r.get("floor_images_per_s"), ".0f"), f(r.get("pct_floor"), ".1f")]
            cells += ["–" if r.get("syncs_per_step") is None else str(r["syncs_per_step"]),
                      f(r.get("first_step_s"), ".1f")]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cifar10", choices=["cifar10", "cifar10-small", "mnist", "mnist-small", "tiny"])
    p.add_argument("--batch", type=int, nargs="+", default=[128, 256, 512, 1024])
    p.add_argument("--kinds", nargs="+", default=["ct", "cd", "sample"], choices=KINDS)
    p.add_argument("--variants", nargs="+", default=["fp32-eager", "fast"], choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=20, help="timed steps per repeat, at most (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported")
    p.add_argument("--warmup", type=int, default=3, help="warm-up steps, the first includes compilation")
    p.add_argument("--seconds-per-config", type=float, default=15.0,
                   help="cap on the timed part of one configuration: fewer steps for slow ones (min 2)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="skip the configurations not started after this many seconds (JSON says which)")
    p.add_argument("--compile-mode", default="default",
                   choices=["default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"])
    p.add_argument("--dynamic", default="batch", choices=["auto", "static", "batch"],
                   help="the batch dimension under compile: batch (default: dynamic from the start, one compile "
                        "serves every batch size; convolutions, matmuls and attention are library calls either "
                        "way), static (one compile per batch size, what a training run compiles), auto (torch's "
                        "default: static, then dynamic from the second size on)")
    p.add_argument("--inductor-config", nargs="*", default=[], metavar="KEY=VALUE",
                   help="torch._inductor.config settings, e.g. conv_1x1_as_mm=True coordinate_descent_tuning=True")
    p.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false",
                   help="leave torch.backends.cudnn.benchmark off in the bf16 variants")
    p.add_argument("--no-compile", action="store_true", help="the 'fast' variant without torch.compile")
    p.add_argument("--no-compile-teacher", action="store_true", help="leave the CD teacher's net eager")
    p.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "radam"],
                   help="adam/adamw are fused on a GPU (default: %(default)s)")
    p.add_argument("--images", type=int, default=None, help="synthetic data set size (default: 50000, CPU 64)")
    p.add_argument("--peak-size", type=int, default=None, help="matmul size of the peak (default 8192, CPU 512)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--quick", action="store_true",
                   help="CPU self-check: tiny preset, batch 4, 2 steps, no compile, all kinds")
    p.add_argument("--profile", action="store_true",
                   help="also profile 2 calls per configuration (torch.profiler): top kernels, time by kernel class")
    p.add_argument("--strict", action="store_true", help="raise on the first failing configuration")
    p.add_argument("--flops-only", action="store_true", dest="flops_only",
                   help="count the FLOPs per image of --kinds and stop (no timing; works on a CPU)")
    p.add_argument("--out", default=None, help="JSON file (rewritten after every configuration)")
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.batch, args.steps, args.repeats, args.warmup = "tiny", [4], 2, 2, 1
        args.kinds, args.no_compile, args.device = list(KINDS), True, args.device or "cpu"
        args.variants = ["fp32-eager", "fast"]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.quick:  # tiny tensors: one thread ($CMLITE_THREADS), see cmlite.threads
        from cmlite.threads import set_small_model_threads
        set_small_model_threads()
        log("# --quick: a check of this script on a CPU (no compile; bf16 is emulated there): the speeds mean nothing")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    configure_dynamo(args)
    n_images = args.images or (64 if device.type == "cpu" else 50000)
    peak_n = args.peak_size or (8192 if device.type == "cuda" else 512)

    recipe, C, H = recipe_for(args.preset, "ct")
    params = count_parameters(build_net(recipe, C, H))
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'}, " \
                                                                               f"{torch.get_num_threads()} threads)"
    log(f"# {card}; torch {torch.__version__}; preset {args.preset}: {params / 1e6:.2f}M parameters, "
        f"{C}x{H}x{H}; batches {args.batch}; kinds {args.kinds}; variants {args.variants}")
    t_start = time.perf_counter()
    peak_start = matmul_peak(device, peak_n)
    log(f"# matmul peak ({peak_start['dtype']}, {peak_n}^3): {peak_start['tflops']:.3g} TFLOP/s")
    res = {"card": card, "torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
           "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
           "preset": args.preset, "params": params, "shape": [C, H, H],
           "peak_kind": peak_start["dtype"], "peak": {"start": peak_start}, "peak_tflops": peak_start["tflops"],
           "options": {k: v for k, v in vars(args).items() if k != "out"}, "flops_per_image": {}, "flop_ops": {},
           "results": [], "skipped": []}

    def write():
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(str(args.out) + ".tmp")
            tmp.write_text(json.dumps(res, indent=1, default=str))
            os.replace(tmp, args.out)

    for kind in args.kinds:
        t0 = time.perf_counter()
        fl, ops = flops_for(kind, args, device)
        res["flops_per_image"][kind], res["flop_ops"][kind] = fl, ops
        log(f"# FLOPs per image, {kind}: {fl / 1e9:.2f} GFLOP (FlopCounterMode, {time.perf_counter() - t0:.1f} s)")
    write()
    if args.flops_only:
        return 0

    for batch in args.batch:
        for kind in args.kinds:
            for variant in args.variants:
                if args.time_limit is not None and time.perf_counter() - t_start > args.time_limit:
                    res["skipped"].append({"kind": kind, "variant": variant, "batch": batch})
                    log(f"  skipped {kind} {variant} batch {batch} (--time-limit)")
                    continue
                t0 = time.perf_counter()
                r = measure(kind, variant, batch, args, device, n_images, res["flops_per_image"],
                            res["peak_tflops"])
                r["wall_s"] = time.perf_counter() - t0
                res["results"].append(r)
                write()
                if "error" in r:
                    log(f"  {kind:6s} {variant:10s} batch {batch:5d}: {r['error']} ({r['wall_s']:.0f} s)")
                else:
                    log(f"  {kind:6s} {variant:10s} batch {batch:5d}: {1e3 * r['s_per_step']:8.2f} ms/step "
                        f"{r['images_per_s']:9.0f} img/s {r.get('tflops', 0):7.1f} TFLOP/s "
                        f"{r.get('pct_peak', 0):5.1f}% peak, mem {r.get('peak_mem_gib', float('nan')):.2f} GiB, "
                        f"syncs {r['syncs_per_step']}, 1st step {r['first_step_s']:.1f} s, wall {r['wall_s']:.0f} s")
                    if r.get("sync_sites"):
                        log(f"    host syncs at {r['sync_sites']}")
    peak_end = matmul_peak(device, peak_n)
    res["peak"]["end"] = peak_end
    res["wall_s"] = time.perf_counter() - t_start
    write()
    log(f"# matmul peak at the end: {peak_end['tflops']:.3g} TFLOP/s (the tables use the one at the start)")
    log("")
    log(tables(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
