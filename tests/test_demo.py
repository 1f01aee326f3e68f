"""The demo runs offline end to end and learns (beats the majority baseline)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import TINY

from skinfeat.cli import main

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs


def test_demo_offline_learns(tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "--n-images", "400", "--backbone",
                                  TINY, "--weights", "auto"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    # Offline (conftest sets HF_HUB_OFFLINE): the demo says so and falls back to random weights.
    assert "RANDOM" in r.output and "report:" in r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["info"]["random_weights"] is True
    assert m["model"]["balanced_accuracy"] > m["majority_baseline"]["balanced_accuracy"] + 0.1
    assert (out / "report.md").is_file() and (out / "data" / "HAM10000_metadata.csv").is_file()
