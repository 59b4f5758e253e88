"""Image commands of the ``cmlite`` command line: ``train``, ``sample``, ``eval``, ``edit`` (filled in below)."""
from __future__ import annotations


def add_image_commands(sub) -> None:
    """Register the image subcommands on the top-level parser's subparsers object."""


def run_image_command(args) -> int:
    return 2
