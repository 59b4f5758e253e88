"""The step benchmark's script on a CPU: its self-check runs every step kind and variant, and its FLOP
counts obey the arithmetic of the steps; the CUDA-graph check's script seeds its variants alike; the packer of large
files for a GPU machine gives them back whole or not at all.

FLOP arithmetic (convolutions and matmuls, which are all FlopCounterMode counts): with F the FLOPs of one
forward pass of the network, a backward pass costs 2F (gradients with respect to the input and to the
weights, each as much as the forward), less the input gradient of the first layer, which nothing needs.
So a CT step (online forward + backward, target forward) costs 4F, as do the iCT and ECT steps (the same two
passes at other times), and a CD step (the same plus two teacher evaluations of the Heun step) 6F, short by
that first-layer term: for the tiny U-Net (a 3x3 convolution from the image's few channels to 16) it is 0.08%
of the total, so 1% bounds it with room, while a count that missed a pass (3F, 5F) is 25% or 17% off."""
import importlib.util
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "step_bench.py"


def _run(tmp_path, *args) -> dict:
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(out)], check=True, cwd=ROOT,
                   capture_output=True, timeout=300)
    return json.loads(out.read_text())


def test_flop_counts_follow_the_steps(tmp_path):
    res = _run(tmp_path, "--device", "cpu", "--flops-only", "--preset", "tiny",
               "--kinds", "sample", "ct", "ict", "ect", "cd")
    F = res["flops_per_image"]
    assert res["results"] == []  # --flops-only times nothing
    for kind in ("ct", "ict", "ect"):
        assert F[kind] / F["sample"] == pytest.approx(4.0, rel=0.01), kind
    assert F["cd"] / F["sample"] == pytest.approx(6.0, rel=0.01)


def test_quick_self_check_measures_every_kind_and_variant(tmp_path):
    res = _run(tmp_path, "--quick")
    done = {(r["kind"], r["variant"]) for r in res["results"] if "error" not in r}
    assert done == {(k, v) for k in ("ct", "ict", "ect", "cd", "sct", "sample") for v in ("fp32-eager", "fast")}
    for r in res["results"]:
        assert r["images_per_s"] > 0 and r["s_per_step"] > 0


def test_block_probe_quick_norms_agree_and_flops_are_counted(tmp_path):
    """bench/block_bench.py: the view-form GroupNorm computes what nn.GroupNorm does (dropout 0), and the
    counted FLOPs of a stack of 3x3 convolutions are 3 x 2 x B x H x W x C^2 x 9 per conv (forward +
    two backward products), plus the small rest (embedding linear, norms)."""
    out = tmp_path / "block.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "block_bench.py"), "--quick", "--out", str(out)],
                       check=True, cwd=ROOT, capture_output=True, text=True, timeout=300)
    diff = [float(line.split()[-1]) for line in p.stdout.splitlines() if "relative difference" in line]
    assert diff and diff[0] < 1e-5
    res = json.loads(out.read_text())
    a = res["args"]
    conv = 3 * 2 * a["batch"] * a["res"] ** 2 * a["channels"] ** 2 * 9 * 2 * a["blocks"] / 1e12
    for r in res["results"]:
        assert conv <= r["tflop_per_step"] <= 1.05 * conv


EDIT_SCRIPT = ROOT / "bench" / "edit_eval.py"


def test_edit_bench_quick_runs_every_task_and_search(tmp_path):
    """bench/edit_eval.py --quick: tiny runs trained on the spot, every editing task with the consistency
    models, the teacher-ODE baseline and the naive one; the linear operators keep the known part to float32
    rounding (Algorithm 4 puts A y back exactly; 1e-5 on images in [-1, 1]); a time search per model."""
    subprocess.run([sys.executable, str(EDIT_SCRIPT), "--quick", "--out", str(tmp_path)], check=True, cwd=ROOT,
                   capture_output=True, timeout=300)
    res = json.loads((tmp_path / "edit_synthetic-rgb.json").read_text())
    assert set(res["tasks"]) >= {"inpaint-box", "inpaint-half", "inpaint-free", "colorize", "superres-x2",
                                 "superres-x4", "stroke", "denoise-0.5"}
    for name, entry in res["tasks"].items():
        assert {"cd", "ict", "teacher_ode", "naive"} <= set(entry["methods"]), name
        if name.startswith(("inpaint", "colorize", "superres")):
            for m in ("cd", "ict", "teacher_ode"):
                assert entry["methods"][m]["known_part_error"] < 1e-5, (name, m)
    assert set(res["time_search"]) == {"cd", "ict"}
    assert (tmp_path / "timesearch_synthetic-rgb.png").is_file()   # the trails (cmlite.image.plots.search_trails)
    assert not list(tmp_path.glob("*.partial.json"))  # the finished file replaces the partial one


def test_edit_bench_refuses_an_empty_teacher_subset(tmp_path):
    r = subprocess.run([sys.executable, str(EDIT_SCRIPT), "--quick", "--n-teacher", "0", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--n-teacher must be at least 1" in r.stderr


def test_startup_bench_times_a_variant_in_a_fresh_process(tmp_path):
    # the eager variant only: the compiled ones spend a minute compiling on a CPU (tests/test_compile_ahead.py
    # checks the cached plan itself)
    subprocess.run([sys.executable, str(ROOT / "bench" / "startup.py"), str(tmp_path), "--variants", "eager",
                    "--steps", "2"], check=True, cwd=ROOT, capture_output=True, timeout=300)
    res = json.loads((tmp_path / "startup.json").read_text())
    (row,) = res["variants"]
    assert res["recipe"] == "tiny-teacher" and row["variant"] == "eager" and row["compile"] is False
    assert 0 < row["startup_s"] < row["process_s"] and row["compiled_from_s"] is None


def test_graph_check_seeds_every_variant_alike(tmp_path):
    """bench/gpu/graph_check.py compares variants of the same training steps. Two eager runs of the same
    seed must agree exactly (else a difference on the GPU would say nothing about CUDA graphs), and the JSON
    holds each run's losses and its differences from the reference."""
    script = ROOT / "bench" / "gpu" / "graph_check.py"
    subprocess.run([sys.executable, str(script), str(tmp_path), "--recipe", "tiny-ict", "--batch", "4", "--steps", "3",
                    "--variants", "eager", "eager"], check=True, cwd=ROOT, capture_output=True, timeout=600)
    res = json.loads((tmp_path / "graph_check.json").read_text())
    assert res["reference"] == "eager" and len(res["runs"]) == 2
    a, b = res["runs"]
    assert len(a["loss"]) == 3 and a["loss"] == b["loss"] and all(math.isfinite(x) for x in a["loss"])
    assert b["loss_max_rel_diff"] == 0.0 and b["weights_rel_l2_diff"] == 0.0


def test_carry_packs_a_file_into_two_folders_and_joins_it_only_when_whole(tmp_path):
    """bench/gpu/carry.py: a file packed into two folders comes back byte for byte once both are there, not
    before; the folders' sizes are evened out with the file that travels beside the first part; a corrupted
    part is refused and leaves no file behind."""
    spec = importlib.util.spec_from_file_location("carry", ROOT / "bench" / "gpu" / "carry.py")
    carry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(carry)
    rng = random.Random(0)
    raw = bytes(rng.choice(b"abcdefgh") for _ in range(300_000))   # compressible, as weights are a little
    f, beside = tmp_path / "w.pt", tmp_path / "d1" / "data.npz"
    f.write_bytes(raw)
    beside.parent.mkdir()
    beside.write_bytes(bytes(20_000))
    sizes = carry.pack(f, tmp_path / "d1", tmp_path / "d2", beside=beside)
    assert sum(sizes) < len(raw) and abs(sizes[0] + 20_000 - sizes[1]) <= 1
    there = tmp_path / "there"
    there.mkdir()
    for p in (tmp_path / "d1").iterdir():
        (there / p.name).write_bytes(p.read_bytes())
    assert carry.unpack(there, "w.pt") is False and not (there / "w.pt").exists()
    for p in (tmp_path / "d2").iterdir():
        (there / p.name).write_bytes(p.read_bytes())
    assert carry.unpack(there, "w.pt", expect_sha1=carry.sha1(raw)) is True
    assert (there / "w.pt").read_bytes() == raw
    (there / "w.pt").unlink()
    with pytest.raises(ValueError, match="sha1"):
        carry.unpack(there, "w.pt", expect_sha1="0" * 40)
    assert not (there / "w.pt").exists()
    part = there / "w.pt.xz.1"
    data = bytearray(part.read_bytes())
    data[-20] ^= 1
    part.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="pack the file again"):
        carry.unpack(there, "w.pt")
    assert not (there / "w.pt").exists()
