"""Hostile input to the newer commands (issue 27): compare, encoder folders and checkpoints,
group context, cache merge and subgroups. Each case is a clean one-line refusal naming the
file, flag or field (``hostile.refused``), with earlier artifacts byte-identical."""
from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
import test_truthful_cli as truthful
from conftest import TINY
from hostile import refused
from test_truthful_cli import HEAD, write_cache

context_run = truthful.context_run   # the --group-context run fixture
pytestmark = pytest.mark.slow   # hostile input and faults: one CLI run per bad input


@pytest.fixture(scope="module")
def caches(synth_table, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hostile_newer")
    ids, y = synth_table["image_id"], synth_table["label"]
    return {"good": write_cache(root / "good.h5", ids, 2.0, 0, y),
            "other": write_cache(root / "other.h5", ids, 2.0, 1, y),
            "foreign": write_cache(root / "foreign.h5", [f"X_{i}" for i in range(30)]),
            "empty": write_cache(root / "empty.h5", [])}


def compare(synth_dir, out, *args):
    return ["compare", "--data", synth_dir, "--out", out, *args]


# ---------------------------------------------------------------------------------- compare
def test_compare_one_entry(synth_dir, caches, tmp_path):
    refused(compare(synth_dir, tmp_path / "o", "--cache", caches["good"], "--models", "head"),
            "two entries")


def test_compare_repeated_seed(synth_dir, caches, tmp_path):
    refused(compare(synth_dir, tmp_path / "o", "--cache", caches["good"], "--models",
                    "head,lgbm", "--seeds", "3,3"), "--seeds 3,3")


def test_compare_one_fold(synth_dir, caches, tmp_path):
    refused(compare(synth_dir, tmp_path / "o", "--cache", caches["good"], "--cache",
                    caches["other"], "--models", "head", "--folds", "1"), "2 folds")


def test_compare_cache_of_other_images(synth_dir, caches, tmp_path):
    refused(compare(synth_dir, tmp_path / "o", "--cache", caches["good"], "--cache",
                    caches["foreign"], *HEAD), "foreign.h5", "X_0")


def test_compare_zero_row_cache(synth_dir, caches, tmp_path):
    refused(compare(synth_dir, tmp_path / "o", "--cache", caches["good"], "--cache",
                    caches["empty"], *HEAD), "empty.h5", "no rows")


def test_compare_binary_metric_on_a_multiclass_task(synth_dir, caches, tmp_path):
    refused(compare(synth_dir, tmp_path / "o", "--cache", caches["good"], "--models",
                    "head,lgbm", "--metric", "pauc80"), "pauc80", "binary")


# --------------------------------------------------------------------------- encoder folders
def extract(synth_dir, tmp_path, *backbone):
    return ["extract", "--data", synth_dir, "--cache", tmp_path / "x.h5", "--precision",
            "fp32", "--workers", "0", "--compile", "off", *backbone]


def test_local_dir_of_an_empty_folder(synth_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    refused(extract(synth_dir, tmp_path, "--backbone", f"local-dir:{tmp_path / 'empty'}"),
            "empty", "not a model folder")


def test_local_dir_of_a_missing_folder(synth_dir, tmp_path):
    refused(extract(synth_dir, tmp_path, "--backbone", f"local-dir:{tmp_path / 'gone'}"),
            "gone", "not found")


def test_open_clip_folder_without_weights(synth_dir, tmp_path):
    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {}}))
    refused(extract(synth_dir, tmp_path, "--backbone", f"open_clip:{folder}"), "oc",
            "no weight file")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_that_is_no_checkpoint(synth_dir, tmp_path, suffix):
    junk = tmp_path / f"junk{suffix}"
    junk.write_text("not a checkpoint")
    refused(extract(synth_dir, tmp_path, "--backbone", TINY, "--weights-file", junk),
            f"junk{suffix}", "unreadable weight file")
    assert not (tmp_path / "x.h5").exists()


def test_unknown_timm_model(synth_dir, tmp_path):
    refused(extract(synth_dir, tmp_path, "--backbone", "no_such_net_xyz", "--weights",
                    "random"), "--backbone no_such_net_xyz")


def test_a_pool_the_family_lacks(synth_dir, tmp_path):
    refused(extract(synth_dir, tmp_path, "--backbone", TINY, "--weights", "random", "--pool",
                    "proj"), "--pool proj")


# ---------------------------------------------------------------------------- group context
def test_group_context_single_image_is_refused(context_run, tmp_path):
    image = next(context_run.rglob("*.jpg"), None) or next(context_run.rglob("*.png"))
    refused(["predict", "--model", context_run / "run", "--image", image.name, "--cache",
             context_run / "c.h5"], "group")


def test_group_context_csv_without_the_patient_column(context_run, tmp_path):
    raw = pd.read_csv(context_run / "train-metadata.csv").iloc[:10].drop(columns="patient_id")
    raw.to_csv(tmp_path / "rows.csv", index=False)
    refused(["predict", "--model", context_run / "run", "--csv", tmp_path / "rows.csv",
             "--cache", context_run / "c.h5", "--output", tmp_path / "p.csv"],
            "rows.csv", "patient_id")


def test_group_context_some_blank_patients_are_counted(context_run, caplog):
    from skinfeat.deploy.model import Model
    raw = pd.read_csv(context_run / "train-metadata.csv").iloc[:12]
    raw.loc[raw.index[:3], "patient_id"] = ""
    with caplog.at_level(logging.WARNING, logger="skinfeat"):
        groups = Model(context_run / "run").groups_of(raw, "rows.csv")
    assert len(groups) == 12
    assert "3 of 12 row(s) have a blank patient_id" in caplog.text


# ------------------------------------------------------------------------------ cache merge
def test_merge_onto_one_of_its_inputs(synth_table, tmp_path):
    ids = synth_table["image_id"].tolist()
    one = write_cache(tmp_path / "one.h5", ids[:50], seed=5)
    two = write_cache(tmp_path / "two.h5", ids[50:], seed=5)
    refused(["cache", "merge", one, two, "--out", one], "one.h5", "--overwrite",
            protect=[one, two])


def test_merge_a_file_that_is_no_hdf5(caches, tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    refused(["cache", "merge", caches["good"], junk, "--out", tmp_path / "m.h5"], "junk.h5")
    assert not (tmp_path / "m.h5").exists()


def test_merge_a_zero_row_cache(caches, tmp_path):
    refused(["cache", "merge", caches["good"], caches["empty"], "--out", tmp_path / "m.h5"],
            "empty.h5", "no rows")


# -------------------------------------------------------------------------------- subgroups
@pytest.mark.parametrize("value", ["nosuchfield", "dx", "none,age"])
def test_subgroups_that_are_not_fields(synth_dir, caches, tmp_path, value):
    refused(["cv", "--data", synth_dir, "--cache", caches["good"], *HEAD, "--subgroups", value,
             "--out", tmp_path / "o"], "--subgroups")
    assert not (tmp_path / "o").exists()
