"""--group-context end to end on the synthetic ISIC 2024 set: cv and fit-head train with the
patient context features, the bundle records them, predict --csv recomputes them from the
patient's lesions in the CSV (equal to the fit's own test probabilities), a single image is
refused, and the labels never enter the features."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import EXTRACT_TINY as EXTRACT
from conftest import run_cli as cli

from skinfeat.data.datasets import load_dataset
from skinfeat.data.synthetic import make_synthetic
from skinfeat.embed.cache_merge import read_caches
from skinfeat.learn.context import context_columns
from skinfeat.learn.head import HeadConfig
from skinfeat.learn.runconfig import RunConfig
from skinfeat.learn.train import (
    align_embeddings,
    bundle_config,
    fit_split,
    prepare_split,
    table_context,
)
from skinfeat.workflows.fit import save_fit

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs


@pytest.fixture(scope="module")
def isic24(tmp_path_factory) -> tuple[Path, Path]:
    root = make_synthetic("isic2024", tmp_path_factory.mktemp("isic2024"), n_images=150, seed=3)
    cache = root / "c.h5"
    cli("extract", "--data", root, "--cache", cache, *EXTRACT)
    return root, cache


def aligned(root: Path, cache: Path):
    data = load_dataset(root)
    table, image = align_embeddings(data.table, read_caches(cache))
    return replace(data, table=table), image


def test_cv_and_fit_head_with_group_context(isic24, tmp_path):
    root, cache = isic24
    cli("cv", "--data", root, "--cache", cache, "--out", tmp_path / "cv", "--folds", "3",
        "--models", "head,lgbm", "--inputs", "fused", "--epochs", "3", "--jobs", "1",
        "--group-context")
    res = json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())
    assert res["config"]["recipe"]["group_context"] is True and len(res["records"]) == 6
    run = tmp_path / "run"
    cli("fit-head", "--data", root, "--cache", cache, "--out", run, "--epochs", "3",
        "--group-context")
    config = json.loads((run / "config.json").read_text())
    data = load_dataset(root)
    n_ctx = len(context_columns(data.spec.numeric))
    assert config["group_context"] is True and config["run"]["group_context"] is True
    enc = config["head"]["meta_dim"] - n_ctx
    assert enc > 0 and n_ctx == 2 * len(data.spec.numeric) + 2
    # LightGBM takes them too (its bundle's meta_dim counts them).
    cli("fit-head", "--data", root, "--cache", cache, "--out", tmp_path / "lgbm", "--model",
        "lgbm", "--group-context")
    assert json.loads((tmp_path / "lgbm" / "config.json").read_text())["head"]["meta_dim"] \
        == config["head"]["meta_dim"]
    # predict --csv scores the release's own table (patient_id column present).
    cli("predict", "--model", run, "--csv", root / "train-metadata.csv", "--cache", cache,
        "--output", tmp_path / "pred.csv")
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert len(pred) == len(data.table) and pred["p_malignant"].between(0, 1).all()
    # A table without the group column, and a single image, are refused in one line.
    raw = pd.read_csv(root / "train-metadata.csv")
    raw.drop(columns=["patient_id"]).to_csv(tmp_path / "nogroup.csv", index=False)
    r = cli("predict", "--model", run, "--csv", tmp_path / "nogroup.csv", "--cache", cache,
            "--output", tmp_path / "x.csv", ok=False)
    assert r.exit_code != 0 and "patient_id" in r.output and "--group-context" in r.output
    assert not (tmp_path / "x.csv").exists()
    r = cli("predict", "--model", run, "--image", root / "train-image.hdf5", "--cache", cache,
            ok=False)
    assert r.exit_code != 0 and "single image" in r.output and "--csv" in r.output
    assert "Traceback" not in r.output


def test_predict_csv_equals_the_fits_test_probabilities(isic24, tmp_path):
    root, cache = isic24
    data, image = aligned(root, cache)
    recipe = RunConfig(group_context=True, params=HeadConfig(epochs=3)).seeded()
    sides, kind = prepare_split(data.table, tmp_path, "lesion", recipe.seed)
    rows = {s: np.flatnonzero((sides == s).to_numpy()) for s in ("train", "val", "test")}
    fit = fit_split(data, image, rows, recipe)
    contents = read_caches(cache)
    config = bundle_config(data, fit, contents.identity, "random", embed_dim=image.shape[-1],
                           tta=False, split=kind, seed=recipe.seed, run=recipe.to_dict())
    save_fit(tmp_path / "run", fit, config)
    test_ids = data.table["image_id"].to_numpy()[rows["test"]]
    raw = pd.read_csv(root / "train-metadata.csv")
    part = raw[raw["isic_id"].isin(test_ids)].iloc[::-1]   # any order: context is per patient
    part.to_csv(tmp_path / "test.csv", index=False)
    cli("predict", "--model", tmp_path / "run", "--csv", tmp_path / "test.csv", "--cache", cache,
        "--output", tmp_path / "pred.csv")
    got = pd.read_csv(tmp_path / "pred.csv").set_index("image_id")["p_malignant"]
    want = pd.Series(fit.test_proba[:, 1], index=test_ids)
    assert len(got) == len(want) > 10
    np.testing.assert_allclose(got[want.index].to_numpy(), want.to_numpy(), atol=2e-6)
    # The features are used: a patient's lesions scored without the others change.
    patients = part["patient_id"].value_counts()
    many = patients.index[patients >= 3][0]
    alone = part[part["patient_id"] == many].iloc[:1]
    alone.to_csv(tmp_path / "alone.csv", index=False)
    cli("predict", "--model", tmp_path / "run", "--csv", tmp_path / "alone.csv", "--cache",
        cache, "--output", tmp_path / "alone_pred.csv")
    p_alone = pd.read_csv(tmp_path / "alone_pred.csv")["p_malignant"].iloc[0]
    assert abs(p_alone - got[alone["isic_id"].iloc[0]]) > 1e-6


def test_labels_do_not_enter_the_features(isic24):
    root, cache = isic24
    data, image = aligned(root, cache)
    before = table_context(data, image)
    rng = np.random.default_rng(0)
    shuffled = data.table.assign(label=rng.permutation(data.table["label"].to_numpy()),
                                 dx=rng.permutation(data.table["dx"].to_numpy()))
    after = table_context(replace(data, table=shuffled), image)
    np.testing.assert_array_equal(after, before)
    assert before.shape == (len(data.table), len(context_columns(data.spec.numeric)))
    assert np.isfinite(before).all()   # missing values are neutral, never NaN, for the head
