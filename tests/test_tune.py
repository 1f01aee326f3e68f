"""skinfeat tune: beats a deliberately bad start, never looks at its held-out part while searching,
writes a config fit-head accepts, and resumes a study kept in SQLite."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

pytest.importorskip("optuna")

from test_byo import write_foreign_cache  # noqa: E402

import skinfeat.learn.tune as tune_module  # noqa: E402
from skinfeat.cli import main  # noqa: E402

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs

# A deliberately bad start: a learning rate far too small for one epoch.
BAD = ("--lr", "0.00001", "--max-epochs", "1", "--patience", "1")


def cli(*args, ok: bool = True):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert (r.exit_code == 0) == ok, r.output
    return r


@pytest.fixture(scope="module")
def easy(synth_dir, synth_table, tmp_path_factory):
    """The synthetic table with a foreign cache that carries a clear class signal."""
    root = tmp_path_factory.mktemp("tune")
    write_foreign_cache(root / "emb.h5", synth_table["image_id"], synth_table["label"].to_numpy())
    return synth_dir, root / "emb.h5"


def test_tune_beats_a_bad_start_and_its_config_trains(easy, tmp_path, monkeypatch):
    data, cache = easy
    seen = []
    real = tune_module.fit_splits

    def spy(data_, image, splits, **kw):
        seen.extend(np.concatenate([s["train"], s["val"], s["test"]]) for s in splits)
        return real(data_, image, splits, **kw)

    monkeypatch.setattr(tune_module, "fit_splits", spy)
    out = tmp_path / "tune"
    r = cli("tune", "--data", data, "--cache", cache, "--out", out, "--trials", "5", "--folds",
            "3", "--jobs", "1", *BAD)
    assert "held-out" in r.output
    res = json.loads((out / "tune_metrics.json").read_text())
    start = next(h for h in res["history"] if h["number"] == 0)
    assert start["params"]["lr"] == pytest.approx(1e-5)               # trial 0 is the start
    assert res["best"]["value"] > start["value"] + 0.05
    assert len(res["history"]) == 5 and (out / "tune_history.png").stat().st_size > 1000
    report = (out / "tune_report.md").read_text()
    assert "Held-out balanced accuracy" in report and "held out first" in report
    # The search never saw the held-out rows.
    held = res["held_out"]["n"]
    assert held > 0 and all(len(rows) == res["sizes"]["search"] for rows in seen)
    best = json.loads((out / "best_config.json").read_text())["run"]["head"]
    assert best["lr"] == pytest.approx(res["best"]["params"]["lr"])
    run = tmp_path / "run"
    cli("fit-head", "--data", data, "--cache", cache, "--out", run, "--config",
        out / "best_config.json")
    assert json.loads((run / "config.json").read_text())["run"]["head"] == best


def test_a_study_in_sqlite_resumes_and_refuses_another_protocol(easy, tmp_path):
    data, cache = easy
    url = f"sqlite:///{tmp_path / 'study.db'}"
    args = ("tune", "--data", data, "--cache", cache, "--storage", url, "--folds", "2",
            "--study-name", "s1", "--max-epochs", "3", "--jobs", "1")
    cli(*args, "--out", tmp_path / "a", "--trials", "2")
    first = json.loads((tmp_path / "a" / "tune_metrics.json").read_text())["history"]
    cli(*args, "--out", tmp_path / "b", "--trials", "4")     # e.g. after an interruption
    again = json.loads((tmp_path / "b" / "tune_metrics.json").read_text())["history"]
    assert [h["number"] for h in again] == [0, 1, 2, 3]
    assert [(h["params"], h["value"]) for h in again[:2]] == \
        [(h["params"], h["value"]) for h in first]              # kept, not rerun
    r = cli(*args, "--out", tmp_path / "c", "--trials", "4", "--test-size", "0.3", ok=False)
    assert "another protocol" in r.output and "Traceback" not in r.output
    import optuna
    study = optuna.load_study(study_name="s1", storage=url)
    assert len(study.trials) == 4
    assert isinstance(pd.DataFrame(again), pd.DataFrame)


def test_local_workers_share_one_study(easy, tmp_path):
    data, cache = easy
    out = tmp_path / "par"
    cli("tune", "--data", data, "--cache", cache, "--out", out, "--trials", "4", "--folds", "2",
        "--max-epochs", "3", "--jobs", "2")
    res = json.loads((out / "tune_metrics.json").read_text())
    assert sorted(h["number"] for h in res["history"]) == [0, 1, 2, 3]
    assert (out / "study.journal").is_file()
    params = [json.dumps(h["params"], sort_keys=True) for h in res["history"]]
    assert len(set(params)) == 4        # the workers did not repeat each other's trials
