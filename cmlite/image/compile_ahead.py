r"""Compile a run's graphs in another process while the run trains eagerly.

A cold ``torch.compile`` of a U-Net training step takes 45-130 s on an H100 (CD compiles three networks, the
continuous-time recipes a forward-mode graph besides). A run that compiles before its first step trains nothing
for that long. With an empty compile cache, ``cmlite train`` therefore starts eagerly and starts
``python -m cmlite.image.compile_ahead`` beside itself: that process trains the same recipe for two steps,
compiled, into a scratch folder, with the same compile cache folder. Inductor writes the compiled graphs to the
cache. When it is done, the run compiles its own networks at the next step, and they load from the cache in
seconds. The run goes on from that step, compiled.

The other process's progress and errors go to ``compile-ahead.log`` in the run folder; it writes
``compile-ahead.json`` there when it has finished. If it fails, the run trains on eagerly and says so.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

LOG, DONE = "compile-ahead.log", "compile-ahead.json"
STEPS = 2   # the compiled steps the other process trains: the first compiles, the second checks the graphs run


class CompileAhead:
    """The other process that compiles ``recipe``'s graphs into ``cache_dir`` (see the module's docstring).

    :meth:`start` launches it; :meth:`state` is 'idle' (not started), 'running', 'ready' (it finished and the
    cache holds the graphs), or 'failed' (:attr:`error` says why). The process is stopped, if still running,
    when the ``with`` block ends. ``memory_fraction``: on CUDA, the share of the card's memory the other process
    may allocate (``torch.cuda.set_per_process_memory_fraction``), so that it fails rather than the run."""

    def __init__(self, recipe, out: str | os.PathLike, cache_dir: str | os.PathLike, *, teacher=None,
                 data_root=None):
        self.recipe, self.out, self.cache_dir = recipe, Path(out), os.fspath(cache_dir)
        self.teacher, self.data_root = teacher, data_root
        self.proc: subprocess.Popen | None = None
        self.scratch: str | None = None
        self.started_at: float | None = None
        self.seconds: float | None = None   # from start to ready
        self.error: str | None = None

    def start(self, memory_fraction: float | None = None) -> None:
        self.scratch = tempfile.mkdtemp(prefix="cmlite-compile-ahead-")
        spec = {"recipe": self.recipe.to_dict(), "cache_dir": self.cache_dir, "out": str(Path(self.scratch) / "run"),
                "done": str(self.out / DONE), "teacher": None if self.teacher is None else os.fspath(self.teacher),
                "data_root": None if self.data_root is None else os.fspath(self.data_root),
                "memory_fraction": memory_fraction, "threads": torch.get_num_threads()}
        spec_path = Path(self.scratch) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        (self.out / DONE).unlink(missing_ok=True)
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=self.cache_dir)
        src = str(Path(__file__).resolve().parents[2])   # the folder that holds cmlite/: the same code runs there
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
        cpus = os.cpu_count() or 1
        if cpus > 2 and "TORCHINDUCTOR_COMPILE_THREADS" not in env:
            env["TORCHINDUCTOR_COMPILE_THREADS"] = str(cpus - 1)   # one core stays with the training process
        with open(self.out / LOG, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "cmlite.image.compile_ahead", str(spec_path)],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.started_at = time.monotonic()

    def state(self) -> str:
        if self.proc is None:
            return "idle"
        if self.error is not None:
            return "failed"
        if self.seconds is not None:
            return "ready"
        rc = self.proc.poll()
        if (self.out / DONE).exists():   # written last, after the compiled steps (the process may still be exiting)
            self.seconds = time.monotonic() - self.started_at
            return "ready"
        if rc is None:
            return "running"
        tail = _tail(self.out / LOG)
        self.error = f"the compiling process exited with code {rc}; the end of {self.out / LOG}:\n{tail}"
        return "failed"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


def memory_fraction_left(device: torch.device, margin: float = 1.25) -> float | None:
    """On CUDA, the share of the card's memory that another process may take, leaving this process room to
    grow to ``margin`` times what it has reserved so far, and 1 GiB to spare; None elsewhere (no limit). 0 if
    that share is less than this process holds: a compiled step takes less memory than the eager one, but not
    much less for a small network."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    held = torch.cuda.memory_reserved(device)
    spare = free - (margin - 1) * held - 2 ** 30
    return spare / total if spare >= held else 0.0


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def main(argv: list[str] | None = None) -> int:
    """The other process: train the spec's recipe for :data:`STEPS` steps, compiled, into a scratch folder."""
    from .recipes import Recipe
    from .run import _write_json, train
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    t0 = time.monotonic()
    recipe = Recipe.from_dict(spec["recipe"])
    recipe.train.compile = True
    torch.set_num_threads(spec["threads"])   # as in the run: Inductor's CPU kernels are compiled for a thread count
    if spec.get("memory_fraction") is not None and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(spec["memory_fraction"], torch.device(recipe.train.device))
    summary = train(recipe, spec["out"], steps=STEPS, teacher=spec["teacher"], data_root=spec["data_root"],
                    cache_dir=spec["cache_dir"], progress=True, draw_samples=False)
    _write_json(Path(spec["done"]), {"status": "done", "seconds": time.monotonic() - t0,
                                     "startup_s": summary["startup_s"], "recipe": recipe.name})
    return 0


if __name__ == "__main__":
    sys.exit(main())
