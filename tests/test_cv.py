"""Cross-validation: lesion-disjoint folds, no scored row in early stopping, reproducible reruns,
ablations that read only their inputs, foreign embedding files, and one CLI run."""
from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, replace

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import skinfeat.learn.train as train
from skinfeat.cli import main
from skinfeat.embed.cache import CacheContents, read_cache
from skinfeat.learn.baseline import LGBMConfig
from skinfeat.learn.cv import CVConfig, CVRun, make_folds, run_cv
from skinfeat.learn.head import HeadConfig
from skinfeat.learn.runconfig import RunConfig
from skinfeat.workflows.cv import cv_run

FAST = CVConfig(folds=3, recipe=RunConfig(params=HeadConfig(max_epochs=3)),
                params={"lgbm": LGBMConfig(n_estimators=15)})


def lesions(table, rows) -> set:
    return set(table["group_id"].iloc[rows])


def metrics_of(res) -> str:
    return json.dumps([(r["model"], r["inputs"], r["fold"], r["metrics"]) for r in res.records])


def test_folds_disjoint_by_lesion_inner_val_from_training_folds(synth_table):
    folds = make_folds(synth_table, 5, "lesion", seed=0)
    scored = np.concatenate([f.test for f in folds])
    assert sorted(scored) == list(range(len(synth_table)))  # every row scored exactly once
    for f in folds:
        assert len(f.train) + len(f.val) + len(f.test) == len(synth_table)
        parts = [lesions(synth_table, f.train), lesions(synth_table, f.val),
                 lesions(synth_table, f.test)]
        assert all(parts)
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_scored_fold_never_reaches_early_stopping_or_encoder(synth_table, synth_cache,
                                                             monkeypatch):
    contents = read_cache(synth_cache)
    row_of = {e.tobytes(): i for i, e in enumerate(contents.embeddings)}
    id_of = dict(enumerate(contents.image_ids))
    calls, encoded = [], []
    real_train = train.train_models

    def spy_train(kind, config, trains, vals, *args, **kw):
        calls.extend(({id_of[row_of[e.tobytes()]] for e in t[0]},
                      {id_of[row_of[e.tobytes()]] for e in v[0]})
                     for t, v in zip(trains, vals, strict=False))
        return real_train(kind, config, trains, vals, *args, **kw)

    class SpyEncoder(train.MetadataEncoder):
        def fit(self, df):
            encoded.append(set(df["image_id"]))
            return super().fit(df)

    monkeypatch.setattr(train, "train_models", spy_train)
    monkeypatch.setattr(train, "MetadataEncoder", SpyEncoder)
    res = run_cv(synth_table, contents, replace(FAST, inputs=("fused",)))
    # cv runs train.fit_splits, fit-head's path: one encoder fit per model and fold; the fused
    # head's image-only fallbacks train beside it on the same rows (3 more parts).
    assert len(calls) == 3 * 2 + 3 and len(encoded) == 3 * 2
    folds = res.folds_table
    by_id = folds.set_index("image_id")["group_id"]
    every = set(folds["image_id"])
    scored_sets = [set(folds.loc[folds["fold_seed42"] == k, "image_id"]) for k in range(3)]
    for train_ids, val_ids in calls:
        scored = every - train_ids - val_ids
        assert scored in scored_sets                   # exactly one held-out fold left out
        assert not train_ids & val_ids
        assert not set(by_id[list(train_ids)]) & set(by_id[list(val_ids)])  # lesion-disjoint
    # The head's call: 3 fused parts, then their 3 fallbacks on the very same rows.
    assert calls[3:6] == calls[:3]
    # encoder fitted on the training rows only, once per model and fold
    assert sorted(map(sorted, encoded)) == sorted(sorted(t) for t, _ in calls[:3] + calls[6:])


def test_same_seed_same_folds_and_metrics(synth_table, synth_cache):
    contents = read_cache(synth_cache)
    cfg = replace(FAST, inputs=("fused",))
    a, b = run_cv(synth_table, contents, cfg), run_cv(synth_table, contents, cfg)
    assert a.folds_table.equals(b.folds_table)
    assert metrics_of(a) == metrics_of(b)
    other = run_cv(synth_table, contents, replace(cfg, seeds=(7,), models=("lgbm",)))
    assert not np.array_equal(a.folds_table["fold_seed42"], other.folds_table["fold_seed7"])


def test_metadata_only_ignores_embeddings(synth_table, synth_cache):
    real = read_cache(synth_cache)
    noise = np.random.default_rng(0).normal(size=(len(real.image_ids), 16)).astype(np.float32)
    fake = CacheContents(real.image_ids, noise)
    cfg = replace(FAST, inputs=("meta",))
    assert metrics_of(run_cv(synth_table, real, cfg)) == metrics_of(run_cv(synth_table, fake, cfg))


def test_image_only_ignores_metadata(synth_table, synth_cache):
    contents = read_cache(synth_cache)
    rng = np.random.default_rng(0)
    shuffled = synth_table.copy()
    for col in ("age", "sex", "localization"):
        shuffled[col] = rng.permutation(shuffled[col].to_numpy())
    cfg = replace(FAST, inputs=("image",))
    a, b = run_cv(synth_table, contents, cfg), run_cv(shuffled, contents, cfg)
    assert metrics_of(a) == metrics_of(b)
    fused = replace(FAST, inputs=("fused",), models=("lgbm",))
    assert metrics_of(run_cv(synth_table, contents, fused)) != \
        metrics_of(run_cv(shuffled, contents, fused))   # the check can fail: metadata matters


@pytest.mark.slow   # end to end (CLI or worker processes)
def test_worker_processes_give_the_same_results(synth_table, synth_cache):
    contents = read_cache(synth_cache)
    cfg = replace(FAST, inputs=("image", "fused"))
    assert metrics_of(run_cv(synth_table, contents, cfg, jobs=2)) == \
        metrics_of(run_cv(synth_table, contents, cfg, jobs=1))


def test_folds_run_on_a_joblib_backend_of_the_callers_choice(synth_table, synth_cache,
                                                              monkeypatch):
    """Under ``joblib.parallel_backend`` (threads here; Dask or Ray on a cluster) the tasks run
    on that backend, with the results of one process."""
    import threading

    import joblib

    from skinfeat.learn import cv

    contents = read_cache(synth_cache)
    cfg = replace(FAST, inputs=("meta",))
    threads, real = set(), cv.run_task

    def spy(task, image):
        threads.add(threading.current_thread().name)
        return real(task, image)

    monkeypatch.setattr(cv, "run_task", spy)   # seen by threads, not by loky's processes
    with joblib.parallel_backend("threading"):
        threaded = run_cv(synth_table, contents, cfg, jobs=2)
    assert threads and threading.current_thread().name not in threads   # worker threads ran it
    assert metrics_of(threaded) == metrics_of(run_cv(synth_table, contents, cfg, jobs=1))


def test_bring_your_own_embeddings(synth_table, tmp_path):
    path = tmp_path / "foreign.h5"
    ids = synth_table["image_id"].to_numpy()[::-1]   # any row order
    with h5py.File(path, "w") as f:                   # no identity, no skinfeat attributes
        f.create_dataset("image_id", data=ids.astype(object), dtype=h5py.string_dtype())
        f.create_dataset("embedding", data=np.random.default_rng(1).normal(
            size=(len(ids), 24)).astype(np.float32))
    res = cv_run(synth_table, path, tmp_path / "run", replace(FAST, inputs=("fused",)))
    assert res.run.embed_dim == 24 and not res.info["random_weights"]
    saved = json.loads((tmp_path / "run" / "cv_metrics.json").read_text())
    assert list(saved) == [k for k in res.raw if k not in ("folds_table", "oof")] + \
        (["reference"] if res.run.reference_recipe else [])   # the file is the typed result
    report = (tmp_path / "run" / "cv_report.md").read_text()
    assert "outside skinfeat" in report and "RANDOM" not in report


@pytest.mark.slow   # end to end (CLI or worker processes)
def test_cli_cv_writes_report(synth_dir, synth_cache, tmp_path):
    out = tmp_path / "cv"
    r = CliRunner().invoke(main, ["cv", "--data", str(synth_dir), "--cache", str(synth_cache),
                                  "--out", str(out), "--folds", "3", "--epochs", "3",
                                  "--seeds", "0,1", "--inputs", "meta,fused", "--jobs", "1"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    for name in ("cv_report.md", "cv_metrics.json", "cv_folds.csv",
                 "confusion_ensemble_fused.png", "confusion_lgbm_meta.png"):
        assert (out / name).is_file(), name
    report = (out / "cv_report.md").read_text()
    assert "RANDOM backbone weights" in report and "lesion-grouped" in report
    assert "73.24 %" in report and "Spread across seeds" in report
    assert "never the scored fold" in report and "## Per fold" in report
    summary = json.loads((out / "cv_metrics.json").read_text())["summary"]
    # the default models: the recipe's (the head + linear probe ensemble) and LightGBM
    assert set(summary) == {"ensemble", "lgbm"} and set(summary["ensemble"]) == {"meta", "fused"}
    assert set(summary["ensemble"]["fused"]["balanced_accuracy"]) == {"mean", "std"}
    assert "balanced_accuracy" in r.output and "cv_report.md" in r.output


@pytest.mark.parametrize("args, message", [(["--folds", "50"], "Use fewer folds"),
                                           (["--inputs", "image,colour"], "colour")])
def test_cli_cv_errors_are_one_line(synth_dir, synth_cache, tmp_path, args, message):
    r = CliRunner().invoke(main, ["cv", "--data", str(synth_dir), "--cache", str(synth_cache),
                                  "--out", str(tmp_path / "cv"), *args])
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output


def test_views_tta_film_and_metadata_dropout(synth_table, synth_cache, tmp_path):
    real = read_cache(synth_cache)
    rng = np.random.default_rng(0)
    views = real.embeddings[:, None] + rng.normal(0, 0.1, (len(real.image_ids), 2, real.dim))
    contents = CacheContents(real.image_ids, real.embeddings, views.astype(np.float32))
    cfg = replace(FAST, models=("head",), inputs=("fused",), recipe=replace(
        FAST.recipe, tta=True, params=HeadConfig(head="film", meta_dropout=0.3, max_epochs=3)))
    res = run_cv(synth_table, contents, cfg)
    assert isinstance(res, CVRun)   # typed and frozen: the workflow above cannot change it
    with pytest.raises(FrozenInstanceError):
        res.notes = []
    assert res.views == 2 and res.config["recipe"]["head"]["head"] == "film"
    assert all(np.isfinite(r["metrics"]["accuracy"]) for r in res.records)


@pytest.mark.slow   # end to end (CLI or worker processes)
def test_a_failing_fit_in_a_worker_stops_the_cv_with_its_error(synth_table, synth_cache):
    """Three tasks on two processes: the worker's failure (and this process's) reaches the
    caller as the fit's own error, and nothing hangs."""
    from skinfeat.learn import cv

    contents = read_cache(synth_cache)
    folds = list(cv.iter_folds(synth_table, cv.fold_ids(synth_table, 2, "lesion", 0),
                               "lesion", 0, 0.2))
    data = cv.as_dataset(synth_table)
    bad = [cv.FitTask("fused", folds, data, RunConfig(model="nope")) for _ in range(3)]
    image = contents.embeddings[contents.rows_for(list(synth_table["image_id"]))]
    with pytest.raises(ValueError, match="nope"):
        list(cv._run_tasks(iter(bad), image, 2))
