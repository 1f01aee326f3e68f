"""End to end through the command line, as a user runs it (click's runner, in process)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import TINY

from skinfeat.cli import main

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_extract_fit_head_report(synth_dir, tmp_path):
    cache = tmp_path / "c.h5"
    r = run("extract", "--data", str(synth_dir), "--cache", str(cache), "--backbone", TINY,
            "--weights", "random", "--precision", "fp32")
    assert r.exit_code == 0, r.output
    assert "NOTE: random backbone weights" in r.output
    out = tmp_path / "run"
    r = run("fit-head", "--data", str(synth_dir), "--cache", str(cache), "--out", str(out))
    assert r.exit_code == 0, r.output
    for name in ("head/model.safetensors", "linear/model.safetensors", "config.json",
                 "metrics.json", "report.md", "confusion.png", "splits.csv", "README.md",
                 "reliability.png"):   # the default model: the head + linear probe ensemble
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["model"]) >= {"accuracy", "balanced_accuracy", "macro_f1", "weighted_f1",
                                     "per_class", "confusion_matrix", "macro_auc"}
    report = (out / "report.md").read_text()
    assert "RANDOM backbone weights" in report and "lesion-grouped" in report
    assert "majority baseline" in report
    config = json.loads((out / "config.json").read_text())
    assert config["classes"] == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert config["backbone"]["backbone"] == TINY and config["encoder"]["categories"]["sex"]
    # A second run on the same folder reuses the saved split.
    splits = (out / "splits.csv").read_text()
    r = run("fit-head", "--data", str(synth_dir), "--cache", str(cache), "--out", str(out),
            "--model", "lgbm")
    assert r.exit_code == 0, r.output
    assert (out / "splits.csv").read_text() == splits


def test_data_check_prints_summary(synth_dir):
    r = run("data", "check", str(synth_dir))
    assert r.exit_code == 0 and "lesions" in r.output and "missing age" in r.output


def test_errors_are_one_line_not_tracebacks(tmp_path):
    from PIL import Image
    (tmp_path / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\nHAM_1,ISIC_1,nv\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "ISIC_2.jpg")
    r = CliRunner().invoke(main, ["data", "check", str(tmp_path)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.startswith("Error:") and "ISIC_1" in r.output
