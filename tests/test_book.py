"""Execute every chapter of the book (jupytext percent files in book/) in fast mode.

CMLITE_FAST=1 shrinks each notebook's work so that all of them together run in a few minutes on two
CPU cores; a failing cell fails the test with the cell's traceback.
"""
from __future__ import annotations

from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext", reason="the book needs the dev extra: pip install -e '.[dev]'")
from nbclient import NotebookClient  # noqa: E402

BOOK = Path(__file__).resolve().parent.parent / "book"
CHAPTERS = sorted(p for p in BOOK.glob("[0-9][0-9]_*.py"))


def test_book_has_chapters():
    assert len(CHAPTERS) >= 1, f"no chapters found in {BOOK}"


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_runs(path, monkeypatch, tmp_path):
    monkeypatch.setenv("CMLITE_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny tensors: threads only add contention on 2 cores
    monkeypatch.setenv("CMLITE_BOOK_OUT", str(tmp_path))
    nb = jupytext.read(path)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(BOOK)}}).execute()
