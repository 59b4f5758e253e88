"""GPU check of the forward-mode (JVP) path of the U-Net, for continuous-time training:

    python bench/gpu/jvp_check.py OUTDIR

On a CUDA card: whether torch's fused attention runs under forward-mode AD, the bf16 tangent against the
fp32 one (relative error), the eager bf16 JVP time and peak memory against a forward and backward pass, for
the cifar10-small U-Net at batch 128. Writes OUTDIR/jvp_check.json. On a CPU (batch JVP_CHECK_BATCH, 8) it
checks the script and gives the bf16 comparison there. The comparison runs in eval mode (no dropout); the run
of 2026-12-05 on an H200 (docs/results/2026-12-05-h200-shared) compared in training mode, so its bf16 errors
measured two different dropout masks.
"""
import json, os, sys, time
import torch
from torch.func import jvp
from cmlite.image.unet import UNet, unet_config, Attention
out_dir = sys.argv[1]
os.makedirs(out_dir, exist_ok=True)
res = {}
dev = "cuda" if torch.cuda.is_available() else "cpu"   # the CPU run checks the script (and the bf16 numbers)
torch.manual_seed(0)
net = UNet(unet_config("cifar10-small")).to(dev).to(memory_format=torch.channels_last)
with torch.no_grad():
    for p in net.parameters():
        p.add_(0.02 * torch.randn_like(p))
B = 128 if dev == "cuda" else int(os.environ.get("JVP_CHECK_BATCH", 8))
x = torch.randn(B, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
c = torch.randn(B, device=dev); v = torch.randn_like(x); dc = torch.rand(B, device=dev) * 5
def rel(a, b): return float((a.float() - b.float()).norm() / b.float().norm())
def f(x, c, v, dc): return jvp(net, (x, c), (v, dc))
def timeit(fn, n=10):
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    fn(); sync(); t0 = time.perf_counter()
    for _ in range(n): fn()
    sync(); return (time.perf_counter() - t0) / n
net.eval()   # no dropout: the fp32 and bf16 passes must compute the same function
with torch.no_grad():
    o32, t32 = f(x, c, v, dc)
    # fused attention under forward AD
    Attention.math_path = "never"
    try:
        with torch.autocast(dev, torch.bfloat16):
            f(x, c, v, dc)
        res["fused_sdpa_under_jvp"] = "ok"
    except Exception as e:
        res["fused_sdpa_under_jvp"] = f"{type(e).__name__}: {str(e)[:200]}"
    Attention.math_path = "forward_ad"
    with torch.autocast(dev, torch.bfloat16):
        obf, tbf = f(x, c, v, dc)
    res["bf16_vs_fp32"] = {"primal": rel(obf, o32), "tangent": rel(tbf, t32)}
    def jvp_bf16():
        with torch.autocast(dev, torch.bfloat16):
            f(x, c, v, dc)
    res["eager_bf16_jvp_ms"] = 1000 * timeit(jvp_bf16)
net.train()   # the timings: as in training
def fwd_bwd():
    with torch.autocast(dev, torch.bfloat16):
        y = net(x, c)
    y.float().square().mean().backward()
res["eager_bf16_fwd_bwd_ms"] = 1000 * timeit(fwd_bwd)
if dev == "cuda": torch.cuda.reset_peak_memory_stats()
with torch.no_grad():
    with torch.autocast(dev, torch.bfloat16):
        f(x, c, v, dc)
res["eager_bf16_jvp_peak_GB"] = torch.cuda.max_memory_allocated() / 1e9 if dev == "cuda" else None
res["device"], res["batch"] = (torch.cuda.get_device_name() if dev == "cuda" else "cpu"), B
print(json.dumps(res, indent=1), flush=True)
json.dump(res, open(os.path.join(out_dir, "jvp_check.json"), "w"), indent=1)
