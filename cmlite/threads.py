r"""How many CPU threads torch should use for *small* models (2D toys, tiny MLPs).

A batch of 512 points through a width-128 MLP is a few hundred microseconds of arithmetic; splitting it
over threads costs more in synchronisation than it saves. Worse, torch's default (one thread per core)
*spins* its OpenMP workers: when another process is busy on the same cores, each parallel region waits
for a descheduled thread, and training slows down by an order of magnitude. Measured with
``bench/demo_threads.py`` on a 2-core machine (README, "Threads"): with one other busy process,
``cmlite demo`` takes minutes with torch's default and about the same time as on an idle machine with
one thread; on an idle machine one thread is as fast as two.

So cmlite's command line and book use **one** intra-op thread by default. Nothing changes at import time:
call :func:`set_small_model_threads` yourself in a plain script (or use :func:`small_model_threads` as a
context manager). Override with the environment variable ``CMLITE_THREADS`` (or ``--threads`` on the
command line).

The image commands (``cmlite train | sample | eval | edit``) take the same option and variable, with the
same default, :data:`IMAGE_THREADS` = 1 (:func:`set_image_threads`). The same spinning makes torch's
default fall apart on a CPU shared with another busy process (README, "Threads": ``cmlite train
tiny-teacher --steps 200`` beside a busy loop); on a GPU the CPU threads only feed the device. On a
machine whose cores are all yours, a CPU image run gains from ``--threads`` = the number of cores.
"""
from __future__ import annotations

import contextlib
import os

import torch

ENV_VAR = "CMLITE_THREADS"
SMALL_MODEL_THREADS = 1  # measured: bench/demo_threads.py


def default_threads(n: int | None = None) -> int:
    """The intra-op thread count for small CPU models: ``n`` if given, else ``$CMLITE_THREADS`` if set,
    else 1. Raises ValueError for anything but a positive integer."""
    source = "threads"
    if n is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if not env:
            return SMALL_MODEL_THREADS
        source = f"${ENV_VAR}"
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"{source} must be a positive integer; got {env!r}") from None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{source} must be a positive integer; got {n!r}")
    return n


def set_small_model_threads(n: int | None = None) -> int:
    """``torch.set_num_threads(default_threads(n))`` for this process; returns the previous count, so that
    ``torch.set_num_threads(previous)`` undoes it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(default_threads(n))
    return previous


@contextlib.contextmanager
def small_model_threads(n: int | None = None):
    """Context manager: :func:`set_small_model_threads` inside the block, torch's previous count after it."""
    previous = set_small_model_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


# ------------------------------------------------------------------ the image commands
IMAGE_THREADS = SMALL_MODEL_THREADS  # measured: README, "Threads" (image commands beside a busy process)
IMAGE_THREADS_HELP = ("torch CPU threads (default: $CMLITE_THREADS, else 1: torch's default of one per core "
                      "slows down badly when another process is busy on the cores; on a CPU that is all yours, "
                      "give the number of cores)")


def image_threads(n: int | None = None) -> int:
    """The CPU thread count of the image commands: ``n``, else ``$CMLITE_THREADS``, else :data:`IMAGE_THREADS`.
    Raises ValueError for anything but a positive integer."""
    if n is None and not os.environ.get(ENV_VAR, "").strip():
        return IMAGE_THREADS
    return default_threads(n)


def set_image_threads(n: int | None = None) -> int:
    """``torch.set_num_threads(image_threads(n))`` for an image command; returns the count now in use."""
    torch.set_num_threads(image_threads(n))
    return torch.get_num_threads()
