"""The real HAM10000 sample beside the repo (skipped cleanly in a plain clone)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import SAMPLE, TINY

from skinfeat.cli import main

pytestmark = [pytest.mark.slow,   # end to end: whole CLI / API runs
              pytest.mark.skipif(not (SAMPLE / "HAM10000_metadata.csv").is_file(),
                                 reason=f"real HAM10000 sample not found at {SAMPLE}")]


def test_check_extract_fit_head_on_the_real_sample(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["data", "check", str(SAMPLE), "--json"], catch_exceptions=False)
    assert r.exit_code == 0
    summary = json.loads(r.output)
    assert summary["images"] == 1009 and summary["lesions"] == 683
    cache = tmp_path / "sample.h5"
    r = runner.invoke(main, ["extract", "--data", str(SAMPLE), "--cache", str(cache),
                             "--backbone", TINY, "--weights", "random"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["fit-head", "--data", str(SAMPLE), "--cache", str(cache),
                             "--out", str(tmp_path / "run")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["info"]["split"] == "group" and m["info"]["random_weights"] is True
