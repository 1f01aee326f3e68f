"""cv's out-of-fold predictions (oof_predictions.csv, CVResult.oof): one row per image per seed x
model x input set, calibrated probabilities that sum to one, and decisions that reproduce the
fold metrics cv_metrics.json records."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from skinfeat.learn.baseline import LGBMConfig
from skinfeat.learn.cv import CVConfig
from skinfeat.learn.head import HeadConfig
from skinfeat.learn.runconfig import RunConfig
from skinfeat.workflows.cv import cv_run

FAST = RunConfig(params=HeadConfig(max_epochs=3))
PARAMS = {"lgbm": LGBMConfig(n_estimators=15)}
KEYS = ["seed", "model", "inputs"]


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y`` (the definition the metrics use)."""
    return float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


@pytest.fixture(scope="module")
def cv_out(synth_table, synth_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("oof")
    cfg = CVConfig(folds=3, seeds=(0, 1), models=("head", "lgbm"), inputs=("image", "fused"),
                   recipe=FAST, params=PARAMS)
    res = cv_run(synth_table, synth_cache, out, cfg)
    return out, res


def test_every_image_once_per_seed_model_and_inputs(cv_out, synth_table):
    out, res = cv_out
    oof = pd.read_csv(out / "oof_predictions.csv", dtype={"image_id": str, "group": str})
    classes = res.run.classes
    assert list(oof.columns) == ["image_id", "group", "fold", "seed", "model", "inputs",
                                 *(f"p_{c}" for c in classes), "decision"]
    assert len(oof) == len(synth_table) * 2 * 2 * 2
    for _, part in oof.groupby(KEYS):
        assert sorted(part["image_id"]) == sorted(synth_table["image_id"])
    # the group is the dataset's grouping id of the image
    group_of = dict(zip(synth_table["image_id"], synth_table["group_id"], strict=True))
    assert (oof["group"] == oof["image_id"].map(group_of)).all()
    # the fold is the one cv_folds.csv gives the image for that seed
    folds = pd.read_csv(out / "cv_folds.csv", dtype={"image_id": str})
    for seed in (0, 1):
        fold_of = dict(zip(folds["image_id"], folds[f"fold_seed{seed}"], strict=True))
        rows = oof[oof["seed"] == seed]
        assert (rows["fold"] == rows["image_id"].map(fold_of)).all()
    # the frame in memory is the file
    pd.testing.assert_frame_equal(res.oof.reset_index(drop=True), oof, check_dtype=False)


def test_probabilities_sum_to_one_and_decisions_are_classes(cv_out):
    _, res = cv_out
    oof, classes = res.oof, res.run.classes
    p = oof[[f"p_{c}" for c in classes]].to_numpy()
    assert np.all(p >= 0) and np.allclose(p.sum(axis=1), 1.0, atol=1e-6)
    assert set(oof["decision"]) <= set(classes)
    # not a constant: the decisions vary across images
    assert oof["decision"].nunique() > 1


def test_decisions_reproduce_the_recorded_fold_metrics(cv_out, synth_table):
    out, _ = cv_out
    saved = json.loads((out / "cv_metrics.json").read_text())
    oof = pd.read_csv(out / "oof_predictions.csv", dtype={"image_id": str})
    classes = saved["classes"]
    code = {c: i for i, c in enumerate(classes)}
    label = dict(zip(synth_table["image_id"], synth_table["dx"].map(code), strict=True))
    assert len(saved["records"]) == 3 * 2 * 2 * 2
    for r in saved["records"]:
        rows = oof[(oof["seed"] == r["seed"]) & (oof["fold"] == r["fold"])
                   & (oof["model"] == r["model"]) & (oof["inputs"] == r["inputs"])]
        y = rows["image_id"].map(label).to_numpy()
        pred = rows["decision"].map(code).to_numpy()
        assert len(rows) == sum(m["support"] for m in r["metrics"]["per_class"].values())
        assert balanced_accuracy(y, pred) == pytest.approx(r["metrics"]["balanced_accuracy"],
                                                           abs=1e-9)
        assert (pred == y).mean() == pytest.approx(r["metrics"]["accuracy"], abs=1e-9)


def test_binary_decisions_use_the_fold_threshold(synth_dir, synth_cache, tmp_path):
    """A binary task decides by each fold's threshold chosen on its inner val part: the OOF
    decisions still reproduce the recorded balanced accuracy, and they are the threshold
    applied to p_<positive>."""
    import skinfeat

    data = skinfeat.load_dataset(synth_dir, task=skinfeat.Task.parse("binary:mel"),
                                 images=False)
    cv = skinfeat.cross_validate(data, synth_cache, folds=3, models=("lgbm",),
                                 inputs=("fused",), recipe=FAST, params=PARAMS,
                                 out=tmp_path)
    oof, records = cv.oof, cv.run.records
    positive = data.classes[1]
    assert len(oof) == len(data.table)
    for r in records:
        rows = oof[oof["fold"] == r["fold"]]
        decided = np.where(rows[f"p_{positive}"] >= r["threshold"], positive, data.classes[0])
        assert (rows["decision"].to_numpy() == decided).all()
        code = {c: i for i, c in enumerate(data.classes)}
        label = dict(zip(data.table["image_id"], data.table["label"], strict=True))
        y = rows["image_id"].map(label).to_numpy()
        assert balanced_accuracy(y, rows["decision"].map(code).to_numpy()) == pytest.approx(
            r["metrics"]["balanced_accuracy"], abs=1e-9)
