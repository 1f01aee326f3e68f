"""tune --metric pauc80 on the synthetic ISIC 2024 layout: trials are ranked by the folds' mean
pAUC above 80 % TPR, the report and the result name it; a binary-only metric on a multi-class
task is refused in one line before any work."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("optuna")

from conftest import run_cli as cli  # noqa: E402
from test_byo import write_foreign_cache  # noqa: E402

import skinfeat.learn.tune as tune_module  # noqa: E402
from skinfeat.data.datasets import load_dataset  # noqa: E402
from skinfeat.data.synthetic import make_synthetic  # noqa: E402
from skinfeat.learn.tune import TuneConfig  # noqa: E402

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs

FAST = ("--trials", "2", "--folds", "2", "--jobs", "1", "--max-epochs", "2", "--patience", "1")


@pytest.fixture(scope="module")
def isic24(tmp_path_factory):
    root = make_synthetic("isic2024", tmp_path_factory.mktemp("isic2024"), n_images=720, seed=3)
    table = load_dataset(root).table
    write_foreign_cache(root / "emb.h5", table["image_id"], table["label"].to_numpy())
    return root, root / "emb.h5"


def test_tune_ranks_trials_by_pauc80(isic24, tmp_path, monkeypatch):
    root, cache = isic24
    scores = []
    real = tune_module.fit_splits

    def spy(*args, **kw):
        fits = real(*args, **kw)
        scores.append(float(np.mean([f.metrics["pauc80"] for f in fits])))
        return fits

    monkeypatch.setattr(tune_module, "fit_splits", spy)
    out = tmp_path / "tune"
    r = cli("tune", "--data", root, "--cache", cache, "--out", out, "--metric", "pauc80", *FAST)
    assert "CV pauc80" in r.output and "held-out pauc80" in r.output
    res = json.loads((out / "tune_metrics.json").read_text())
    values = [h["value"] for h in sorted(res["history"], key=lambda h: h["number"])]
    assert res["metric"] == "pauc80" and len(values) == 2
    # Each trial's value is its folds' mean pAUC (not AUC), within pAUC's range 0-0.2.
    np.testing.assert_allclose(values, scores)
    assert all(0.0 <= v <= 0.2 for v in values)
    assert res["best"]["value"] == max(values)
    held = res["held_out"]["metrics"]
    assert 0.0 <= held["pauc80"] <= 0.2 and held["pauc80"] != held["auc"]
    assert "Held-out pauc80" in (out / "tune_report.md").read_text()


def test_a_binary_metric_on_a_multiclass_task_is_refused(synth_dir, synth_table, tmp_path):
    write_foreign_cache(tmp_path / "emb.h5", synth_table["image_id"],
                        synth_table["label"].to_numpy())
    r = cli("tune", "--data", synth_dir, "--cache", tmp_path / "emb.h5", "--out",
            tmp_path / "tune", "--metric", "pauc80", *FAST, ok=False)
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "pauc80 needs a binary task" in r.output and "7 classes" in r.output
    assert not (tmp_path / "tune" / "tune_metrics.json").exists()


def test_the_default_metric_is_the_tasks_headline():
    assert TuneConfig().metric_for(2) == "auc"
    assert TuneConfig().metric_for(7) == "balanced_accuracy"
    assert TuneConfig(metric="pauc80").metric_for(2) == "pauc80"
    with pytest.raises(ValueError, match="use one of balanced_accuracy, auc, pauc80"):
        TuneConfig(metric="f1").check()
