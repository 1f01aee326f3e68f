"""cv_report's note beside the reference's published numbers says what the run's split was: a
by:COLUMN (held-out source) run is not the reference's image-level split."""
from __future__ import annotations

from skinfeat.evaluate.cv_report import _reference_lines


def _note(split: str) -> str:
    return " ".join(_reference_lines({"split": split, "config": {"folds": 4}, "summary": {}}))


def test_a_held_out_source_run_is_not_called_the_reference_split():
    text = _note("by:dataset")
    assert "image-level split (leaky)" not in text
    assert "held out" in text and "dataset" in text


def test_the_image_and_group_notes_stay():
    assert "image-level split (leaky)" in _note("image")
    assert "lesion-grouped folds" in _note("group")
