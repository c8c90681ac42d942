"""The quality benchmark (benchmarks/quality.py) scores what it says, and its smoke run
works: CI runs ``--quick`` here."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def quality():
    # On the path, so that the benchmark's worker processes can import it too.
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("quality")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("task", ["stain", "tone", "fluorescence", "sharpen"])
def test_each_task_holds_out_scenes_neither_domain_shows(quality, task):
    domain_a, domain_b, held_out, truths = quality.build_task(quality.TASKS[task], seed=0)
    assert len(domain_a) == len(domain_b) and len(held_out) == len(truths) >= 3
    scenes = [*domain_a, *held_out]
    assert not any(np.array_equal(a, b) for i, a in enumerate(scenes) for b in scenes[:i])
    assert truths[0].dtype == domain_b.dtype and truths[0].shape[:2] == held_out[0].shape[:2]


def test_the_content_score_flags_inverted_structure(quality):
    _, _, held_out, truths = quality.build_task(quality.TASKS["stain"], seed=0)
    truth = truths[0]
    assert quality.content_correlation(truth, truth) == pytest.approx(1.0)
    assert quality.content_correlation(255 - truth, truth) < -0.9


def test_the_quick_run_prints_a_row_per_task_and_a_summary(quality, capsys):
    assert quality.main(["--quick", "--tasks", "stain", "sharpen", "--methods", "paper",
                         "--budgets", "steps", "--jobs", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("stain", "sharpen"))]
    runs, summary = rows[:2], rows[2:]
    assert [row[:5] for row in runs] == [["stain", "paper", "steps", "0", "4"],
                                         ["sharpen", "paper", "steps", "0", "4"]]  # fmt: skip
    assert [row[:3] for row in summary] == [["stain", "paper", "steps"],
                                            ["sharpen", "paper", "steps"]]  # fmt: skip
    assert all(np.isfinite(float(row[5])) for row in runs)  # PSNR
