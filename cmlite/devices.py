r"""Which device, arithmetic and compilation a run uses: the ``"auto"`` settings of
:class:`~cmlite.training.TrainConfig`, resolved for the machine at hand.

* ``device="auto"``: CUDA when torch sees a GPU (this rank's under ``torchrun``), else Apple's ``mps``
  where torch has it, else the CPU.
* ``precision="auto"``: ``bf16`` autocast on a CUDA card that supports bfloat16 (Ampere and later);
  ``fp16`` autocast with loss scaling (``torch.amp.GradScaler``) on older cards (a T4, a V100), whose
  bfloat16 is emulated or absent; ``fp32`` on a CPU and on ``mps``. Master weights stay float32 throughout.
* ``compile="auto"``: ``torch.compile`` on CUDA only (on a CPU compiling costs minutes and gains little).
  ``cmlite train`` decides when (:func:`compile_plan`). Its first step never waits for the compiler: where
  this machine's compile cache already holds the run's graphs, they load at the second step; otherwise the
  run trains eagerly while another process compiles them, and goes on compiled when they are ready
  (:mod:`cmlite.image.compile_ahead`).

:func:`device_rng_state` / :func:`set_device_rng_state` save and restore the random generator of the
device a run draws from (CUDA or mps), so that a checkpoint resumes exactly there too.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class NoGPUError(ValueError):
    """A configuration asks for a device that torch does not see."""


def mps_available() -> bool:
    """Whether torch has Apple's Metal backend and it is usable here."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch device for ``name``: 'auto' (see the module docstring), 'cpu', 'cuda' (this rank's GPU,
    ``LOCAL_RANK`` under torchrun), 'cuda:k' or 'mps'. Raises :class:`NoGPUError`, with what to do
    instead, when the named accelerator is not there."""
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif mps_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}: use 'auto', 'cpu', 'cuda', 'cuda:K' or 'mps'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise NoGPUError(f"device {name!r} was asked for but torch sees no CUDA GPU. Leave the device at "
                             "'auto' (it picks the CPU here: --set train.device=auto) or set it to 'cpu'")
        if dev.index is None:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    if dev.type == "mps" and not mps_available():
        raise NoGPUError(f"device {name!r} was asked for but torch has no usable mps backend here; "
                         "use 'auto' or 'cpu'")
    return dev


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: CUDA cards of compute capability 8.0 or more
    (torch's ``is_bf16_supported`` without emulation) and CPUs (autocast runs there in any case)."""
    if device.type == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # older torch: no emulation argument
            return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu"


def resolve_precision(precision: str, device: torch.device) -> str:
    """'fp32', 'bf16' or 'fp16' for ``precision`` on ``device`` ('auto': see the module docstring)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if bf16_supported(device) else "fp16"
    return "fp32"


def resolve_compile(compile: bool | str, device: torch.device) -> bool:
    """``torch.compile`` or not: True / False as given, 'auto' = on CUDA only."""
    if compile == "auto":
        return device.type == "cuda"
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be True, False or 'auto'; got {compile!r}")
    return compile


# A cold compilation of a U-Net training step costs 1-2 minutes (up to 4.5 for CD and sCT on a slow host) and
# then trains about 1.4x faster than eager (cmlite train mnist-teacher on an H200, 2026-12-05: first step after
# 99.0 s against 12.4 s, 5029 against 3487 images/s); compiling pays back after
# (99.0 * 5029 - 12.4 * 3487) / (5029 - 3487) s = 4.9 min.
# On an H100 (docs/results/2026-12-05-h100: 50.9 s at 12688 images/s against 5.5 s at 9425) it is 3.0 min.
COMPILE_PAYS_AFTER_MINUTES = 5.0


def compile_pays(minutes: float | None, warm: bool) -> bool:
    """Whether compiling before the first step pays: always without a time budget (``minutes`` None) or
    with a warm compile cache (the graphs load in seconds), else only for budgets of at least
    :data:`COMPILE_PAYS_AFTER_MINUTES`."""
    return minutes is None or warm or minutes >= COMPILE_PAYS_AFTER_MINUTES


# Compiling in another process costs the run only the seconds in which it loads the finished graphs from the
# cache (3.7-4.6 s on an H100, docs/results/2026-12-06-h100); it pays where the budget outlasts the compilation.
# There the graphs were ready 91 s (mnist-teacher) and 111 s (cifar10-teacher) after the start: a 2-minute
# cifar10-teacher ended before they were, and trained 5% slower than alone beside the compiling process.
COMPILE_AHEAD_MIN_MINUTES = 3.0


def compile_plan(minutes: float | None, warm: bool, processes: int = 1) -> str:
    """What ``compile='auto'`` does in a CUDA run: 'now' (compile before the first step), 'cached' (the first
    step eagerly, then load the compiled graphs from the cache), 'ahead' (train eagerly while another process
    compiles, then go on compiled; :mod:`cmlite.image.compile_ahead`) or 'eager'. In one process, a run never
    waits for the compiler before its first step: a warm cache gives 'cached'; a cold one 'ahead' without a
    budget or with one of at least :data:`COMPILE_AHEAD_MIN_MINUTES`, else 'eager'. Under ``torchrun`` (every
    rank compiles its own graphs, inside DDP): 'now' where :func:`compile_pays`, else 'eager'."""
    if processes == 1:
        if warm:
            return "cached"
        return "ahead" if minutes is None or minutes >= COMPILE_AHEAD_MIN_MINUTES else "eager"
    return "now" if compile_pays(minutes, warm) else "eager"


@functools.lru_cache(maxsize=None)
def source_digest() -> str:
    """A short sha1 of cmlite's own source (every ``.py`` file of the package, with its path). A compile
    marker names it, so that a cache filled by other code (an edited U-Net, a newer cmlite) is not taken to
    hold this code's graphs: such a run compiles ahead, where it would otherwise compile at its second step
    while training nothing. Unchanged graphs still load from the cache, in seconds."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha1()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def compile_marker(cache_dir: str | os.PathLike, key: dict) -> str:
    """The file in ``cache_dir`` that says a run with these graph-shaping settings (``key``: network,
    method, shapes, batch, precision, layout, torch version, card, :func:`source_digest`) has compiled here
    before, so that its graphs are in the cache. Written after such a run's first compiled step."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return os.path.join(os.fspath(cache_dir), f"cmlite-compiled-{digest}")


def device_rng_state(device: torch.device) -> torch.Tensor | None:
    """The state of the default random generator of ``device`` (CUDA, mps), None on a CPU (the CPU's
    generator is saved on its own)."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    if device.type == "mps" and hasattr(torch, "mps") and hasattr(torch.mps, "get_rng_state"):
        return torch.mps.get_rng_state()
    return None


def set_device_rng_state(device: torch.device, state: torch.Tensor | None) -> bool:
    """Restore a state from :func:`device_rng_state` (``state`` may have been loaded onto any device);
    returns whether it was restored."""
    if state is None:
        return False
    state = state.cpu()
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
        return True
    if device.type == "mps" and hasattr(torch, "mps") and hasattr(torch.mps, "set_rng_state"):
        torch.mps.set_rng_state(state)
        return True
    return False


def file_sha1(path: str | os.PathLike) -> str:
    """The sha1 hex digest of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def cache_folder(name: str) -> str:
    """cmlite's cache folder ``name``: ``$XDG_CACHE_HOME/cmlite/NAME``, else ``~/.cache/cmlite/NAME``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cmlite", name)


def compile_cache(folder: str | os.PathLike | None = None) -> str:
    """Keep ``torch.compile``'s caches (Inductor's FX-graph, autograd and kernel caches) in a folder that
    lasts, so that a later run of the same graphs loads them instead of compiling again: ``folder`` if
    given, else ``$TORCHINDUCTOR_CACHE_DIR`` if set, else ``~/.cache/cmlite/inductor`` (under
    ``$XDG_CACHE_HOME`` where set). Sets ``TORCHINDUCTOR_CACHE_DIR`` for this process (Inductor reads
    it when it compiles) and returns the folder."""
    if folder is None:
        folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if folder is None:
        folder = cache_folder("inductor")
    folder = os.path.abspath(os.fspath(folder))
    os.makedirs(folder, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    return folder
