"""Hostile data at the seams: sets without metadata, group columns that are not there, and
``--meta age=nan``.

A set with no metadata fields (a CSV given by flags alone, a spec with label, image and group
columns only) trains, cross-validates, tunes, predicts, evaluates, exports and serves on the
image alone; asking it for a metadata-only model is a one-line error. A group column that is
named (spec ``group_column``, ``--group-col``, a preset's) but absent from the table is a
one-line error naming the file, the column and the columns found, never a silent image-level
split. ``--meta FIELD=nan`` / ``inf`` / ``-inf`` is missing with a warning naming the field and
the value, and it counts in predict's "missing metadata" summary.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY
from hostile import ok, refused

from skinfeat.data.metadata import MetadataEncoder
from skinfeat.deploy.model import Model

pytestmark = pytest.mark.slow   # hostile input and faults: one CLI run per bad input

FAST = ["--max-epochs", "3", "--lgbm-n-estimators", "20"]


# ---------------------------------------------------------------- data
@pytest.fixture(scope="module")
def nometa(synth_table, synth_cache, tmp_path_factory) -> dict:
    """The synthetic set as a plain CSV of image paths, labels and lesions (no metadata
    column), beside the same rows with the group column renamed, two spec files and a
    fusion-head run trained on it."""
    root = tmp_path_factory.mktemp("nometa")
    t = synth_table
    plain = root / "nometa.csv"
    pd.DataFrame({"image": t["path"], "dx": t["dx"], "lesion_id": t["group_id"]}).to_csv(
        plain, index=False)
    grp = root / "grp.csv"
    pd.DataFrame({"image": t["path"], "dx": t["dx"], "grp": t["group_id"]}).to_csv(
        grp, index=False)
    (root / "bad_spec.json").write_text(json.dumps(
        {"name": "clinic", "label_column": "dx", "image_column": "image",
         "group_column": "patient"}))
    (root / "good_spec.json").write_text(json.dumps(
        {"name": "clinic", "label_column": "dx", "image_column": "image",
         "group_column": "grp"}))
    run = root / "head"
    ok("fit-head", "--data", plain, "--cache", synth_cache, "--out", run, *FAST)
    return {"root": root, "plain": plain, "grp": grp, "bad_spec": root / "bad_spec.json",
            "good_spec": root / "good_spec.json", "head": run, "cache": synth_cache}


@pytest.fixture()
def cache_copy(synth_cache, tmp_path) -> Path:
    """A cache a refused command could touch (extract writes into it)."""
    return Path(shutil.copy(synth_cache, tmp_path / "mine.h5"))


@pytest.fixture(scope="module")
def ham_without_lesions(synth_dir, tmp_path_factory) -> Path:
    """The HAM10000 table with its lesion_id column removed (images not needed by stage two)."""
    root = tmp_path_factory.mktemp("ham_no_lesion")
    table = pd.read_csv(synth_dir / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
    table.drop(columns=["lesion_id"]).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def isic2019_without_metadata(tmp_path_factory) -> Path:
    """ISIC 2019's layout without ISIC_2019_Training_Metadata.csv, which holds lesion_id."""
    from skinfeat.data.synthetic import make_synthetic
    root = make_synthetic("isic2019", tmp_path_factory.mktemp("isic2019"), n_images=30, seed=4)
    (root / "ISIC_2019_Training_Metadata.csv").unlink()
    return root


# ---------------------------------------------------------------- hostile: one-line refusals
def test_group_col_not_in_table_is_refused_by_data_check(nometa):
    refused(["data", "check", nometa["grp"], "--group-col", "lesion_id"],
            "grp.csv", "group column lesion_id not found", "found: image, dx, grp",
            protect=[nometa["grp"]])


def test_spec_group_column_not_in_table_is_refused_by_data_check(nometa):
    refused(["data", "check", nometa["grp"], "--spec", nometa["bad_spec"]],
            "grp.csv", "group column patient", "found: image, dx, grp",
            protect=[nometa["grp"], nometa["bad_spec"]])


@pytest.mark.parametrize("how", ["--group-col", "--spec"])
def test_missing_group_column_is_refused_by_fit_head_over_an_earlier_run(nometa, how, tmp_path):
    # The earlier run folder is the --out: nothing in it may change.
    run = Path(shutil.copytree(nometa["head"], tmp_path / "run"))
    flag = ["--group-col", "patient_id"] if how == "--group-col" else ["--spec", nometa["bad_spec"]]
    column = "patient_id" if how == "--group-col" else "patient"
    refused(["fit-head", "--data", nometa["grp"], *flag, "--cache", nometa["cache"], "--out", run,
             *FAST], "grp.csv", f"group column {column} not found", "found:",
            protect=[run, nometa["cache"], nometa["grp"]])


def test_missing_group_column_is_refused_by_cv(nometa, tmp_path):
    out = tmp_path / "cv"
    refused(["cv", "--data", nometa["grp"], "--group-col", "lesion", "--cache", nometa["cache"],
             "--out", out, "--folds", "3", *FAST], "grp.csv", "group column lesion not found",
            protect=[nometa["cache"]])
    assert not out.exists()


def test_missing_group_column_is_refused_by_tune(nometa, tmp_path):
    out = tmp_path / "tune"
    refused(["tune", "--data", nometa["grp"], "--spec", nometa["bad_spec"], "--cache",
             nometa["cache"], "--out", out, "--trials", "1", "--folds", "2", *FAST],
            "grp.csv", "group column patient not found", protect=[nometa["cache"]])
    assert not out.exists()


def test_missing_group_column_is_refused_by_extract(nometa, cache_copy):
    refused(["extract", "--data", nometa["grp"], "--group-col", "patient_id", "--cache",
             cache_copy, "--backbone", TINY, "--weights", "random", "--precision", "fp32"],
            "grp.csv", "group column patient_id not found", protect=[cache_copy])


def test_a_preset_table_without_its_group_column_is_refused(ham_without_lesions, synth_cache,
                                                            tmp_path):
    table = ham_without_lesions / "HAM10000_metadata.csv"
    refused(["fit-head", "--data", ham_without_lesions, "--cache", synth_cache, "--out",
             tmp_path / "r", *FAST], "HAM10000_metadata.csv", "group column lesion_id not found",
            "found: image_id, dx", protect=[table, synth_cache])
    assert not (tmp_path / "r").exists()


def test_isic2019_without_its_metadata_table_has_no_lesions_and_is_refused(
        isic2019_without_metadata):
    refused(["data", "check", isic2019_without_metadata], "ISIC_2019_Training_GroundTruth.csv",
            "group column lesion_id not found", "ISIC_2019_Training_Metadata.csv",
            protect=[isic2019_without_metadata])


@pytest.mark.parametrize("command,args", [
    ("fit-head", ["--inputs", "meta"]),
    ("fit-head", ["--model", "lgbm", "--inputs", "meta"]),
    ("cv", ["--inputs", "image,meta", "--folds", "3"]),
    ("tune", ["--inputs", "meta", "--trials", "1", "--folds", "2"]),
])
def test_a_metadata_only_model_of_a_set_without_fields_is_refused(nometa, tmp_path, command,
                                                                  args):
    out = tmp_path / "out"
    refused([command, "--data", nometa["plain"], "--cache", nometa["cache"], "--out", out,
             *args, *FAST], "nometa.csv", "--inputs meta needs metadata fields",
            protect=[nometa["cache"], nometa["plain"]])
    assert not out.exists()                    # refused before anything is written


@pytest.mark.parametrize("meta", [["--meta", "age=50"], ["--age", "50"], ["--sex", "male"]])
def test_metadata_for_a_model_without_fields_is_refused(nometa, synth_table, meta, tmp_path):
    field = meta[1].split("=")[0] if meta[0] == "--meta" else meta[0][2:]
    refused(["predict", "--model", nometa["head"], "--image", synth_table["path"].iloc[0],
             *meta, "--json"], f"--meta {field}", "takes no metadata fields",
            protect=[nometa["head"]])


# ---------------------------------------------------------------- behaviour: image-only sets
def test_encoder_without_fields_is_fitted_with_zero_features_and_round_trips():
    enc = MetadataEncoder((), ())
    assert enc.fitted and enc.n_features == 0 and enc.fields == []
    rows = pd.DataFrame({"age": [1.0, 2.0], "x": ["a", "b"]})
    assert enc.fit(rows).transform(rows).shape == (2, 0)
    again = MetadataEncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    assert again.fitted and again.transform(rows).shape == (2, 0)
    assert again.missing_row().shape == (0,) and again.dropout_fields() == []
    assert "no metadata fields" in again.describe()
    # An encoder with fields is not fitted until fit: transform before fit still fails.
    with pytest.raises(RuntimeError):
        MetadataEncoder(("age",), ()).transform(rows)


def test_image_only_set_fits_head_and_lgbm_predicts_and_evaluates(nometa, synth_table, tmp_path):
    run = nometa["head"]
    config = json.loads((run / "config.json").read_text())
    assert config["head"]["meta_dim"] == 0 and config["encoder"]["numeric"] == []
    assert MetadataEncoder.from_dict(config["encoder"]).n_features == 0
    report = (run / "report.md").read_text()
    assert "metadata: none: the data set has no metadata fields" in report
    assert "- split: **group** (lesions): lesion-grouped" in report
    for extra in (["--model", "lgbm"], ["--inputs", "image"], ["--model", "lgbm", "--inputs",
                                                                "image"]):
        out = tmp_path / "_".join(extra).strip("-")
        ok("fit-head", "--data", nometa["plain"], "--cache", nometa["cache"], "--out", out,
           *extra, *FAST)
        m = json.loads((out / "metrics.json").read_text())["model"]
        assert 0 <= m["balanced_accuracy"] <= 1 and np.isfinite(m["macro_auc"])
    # predict: cached rows, a raw image (through the backbone) and the library agree.
    rows = tmp_path / "rows.csv"
    synth_table[["image_id"]].iloc[:5].assign(age=[1, 2, 3, 4, 5]).to_csv(rows, index=False)
    preds_csv = tmp_path / "preds.csv"
    r = ok("predict", "--model", run, "--csv", rows, "--cache", nometa["cache"], "--output",
           preds_csv)
    assert "missing metadata" not in r.output     # the model has no field to miss
    preds = pd.read_csv(preds_csv)
    assert len(preds) == 5 and preds["error"].isna().all()
    image = synth_table["path"].iloc[0]
    out = json.loads(ok("predict", "--model", run, "--image", image, "--json").stdout)
    want = Model(run).predict_image(image).probabilities
    np.testing.assert_allclose([out["probabilities"][c] for c in want], list(want.values()))
    assert out["metadata"] == {} and out["missing_metadata"] == []
    cached = preds.set_index("image_id").loc[synth_table["image_id"].iloc[0]]
    np.testing.assert_allclose([cached[f"p_{c}"] for c in want], list(want.values()), atol=1e-5)
    ev = tmp_path / "ev"
    ok("evaluate", "--model", run, "--data", nometa["plain"], "--cache", nometa["cache"],
       "--out", ev, "--include-seen")
    assert json.loads((ev / "evaluate_metrics.json").read_text())["info"]["n"] == len(synth_table)


def test_image_only_set_cross_validates_image_alone_with_a_note(nometa, tmp_path):
    out = tmp_path / "cv"
    r = ok("cv", "--data", nometa["plain"], "--cache", nometa["cache"], "--out", out, "--folds",
           "3", "--jobs", "1", "--save-models", *FAST)
    res = json.loads((out / "cv_metrics.json").read_text())
    assert res["config"]["inputs"] == ["image"]
    assert {m: list(v) for m, v in res["summary"].items()} == {"ensemble": ["image"],
                                                               "lgbm": ["image"]}
    assert "only the image input set" in (out / "cv_report.md").read_text()
    assert "ensemble_image" in r.output
    ens = Model(out / "models" / "ensemble_image")   # 3 folds' head + linear ensembles
    assert len(ens.members) == 3 and ens.encoder.n_features == 0
    # fused asked for explicitly runs, and the report says it is the image alone.
    fused = tmp_path / "fused"
    ok("cv", "--data", nometa["plain"], "--cache", nometa["cache"], "--out", fused, "--folds",
       "3", "--jobs", "1", "--models", "head", "--inputs", "fused", *FAST)
    assert "fused is the image alone" in (fused / "cv_report.md").read_text()


def test_image_only_set_tunes(nometa, tmp_path):
    out = tmp_path / "tune"
    r = ok("tune", "--data", nometa["plain"], "--cache", nometa["cache"], "--out", out,
           "--trials", "2", "--folds", "2", "--jobs", "1", *FAST)
    assert "best trial" in r.output
    res = json.loads((out / "tune_metrics.json").read_text())
    assert len([h for h in res["history"] if h["value"] is not None]) == 2
    assert (out / "best_config.json").is_file()


def test_image_only_model_exports_a_zero_width_meta_input_that_onnxruntime_runs(
        nometa, synth_table, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from skinfeat.deploy.export import onnx_probabilities
    from skinfeat.embed.transform import preprocess

    graph = tmp_path / "m.onnx"
    ok("export", "--model", nometa["head"], "--onnx", graph)
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert list(inputs) == ["image", "meta"] and inputs["meta"][1] == 0   # zero-width, kept
    side = json.loads(graph.with_suffix(".json").read_text())
    assert side["metadata"]["missing"] == [] and side["metadata"]["fields"] == []
    p = Model(nometa["head"])
    rows = synth_table.iloc[:4][["image_id", "path"]]
    want = p.predict_table(rows).proba
    _, spec = p._backbone()
    image = np.stack([preprocess(path, spec).numpy() for path in rows["path"]])
    meta = np.array([side["metadata"]["missing"]] * len(rows), np.float32)   # (4, 0)
    assert meta.shape == (4, 0)
    got = onnx_probabilities(graph, image, meta)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_image_only_model_serves_with_no_fields(nometa, synth_table):
    pytest.importorskip("fastapi")
    pytest.importorskip("pytorch_grad_cam")
    from fastapi.testclient import TestClient

    from skinfeat.deploy.serve import create_app

    p = Model(nometa["head"])
    image = synth_table["path"].iloc[1]
    with TestClient(create_app(p)) as client:
        assert client.get("/api/info").json()["fields"] == []
        assert "takes no metadata fields" in client.get("/").text
        r = client.post("/api/predict",
                        files={"image": ("x.jpg", Path(image).read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["metadata"] == {} and out["attribution"] == {}
        want = p.predict_image(image).probabilities
        np.testing.assert_allclose([out["probabilities"][c] for c in want], list(want.values()),
                                   atol=1e-6)
        r = client.post("/api/predict", data={"age": "50"},
                        files={"image": ("x.jpg", Path(image).read_bytes(), "image/jpeg")})
        assert r.status_code == 422 and "no metadata fields" in r.json()["detail"]


def test_image_only_model_explains(nometa, synth_table, tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    out = tmp_path / "ex"
    r = ok("explain", "--model", nometa["head"], "--image", synth_table["path"].iloc[2], "--out",
           out)
    assert len(list(out.glob("*.png"))) == 1 and "%" in r.output


# ---------------------------------------------------------------- behaviour: groups
def test_a_spec_naming_its_group_column_splits_by_it_and_says_so(nometa, tmp_path):
    out = tmp_path / "run"
    ok("fit-head", "--data", nometa["grp"], "--spec", nometa["good_spec"], "--cache",
       nometa["cache"], "--out", out, *FAST)
    splits = pd.read_csv(out / "splits.csv")
    assert splits.groupby("group_id")["split"].nunique().max() == 1   # no group crosses
    assert splits["group_id"].nunique() < len(splits)                 # grouped, not by image
    report = (out / "report.md").read_text()
    assert "- split: **group** (grps): grp-grouped" in report


def test_a_set_without_groups_says_no_groups(nometa, synth_table, tmp_path):
    table = tmp_path / "ungrouped.csv"
    pd.DataFrame({"image": synth_table["path"], "dx": synth_table["dx"]}).to_csv(table,
                                                                                 index=False)
    out = tmp_path / "run"
    ok("fit-head", "--data", table, "--cache", nometa["cache"], "--out", out, *FAST)
    assert "- split: **group** (no groups: each image alone): image-level stratified" in \
        (out / "report.md").read_text()
    s = json.loads(ok("data", "check", table, "--json").stdout)
    assert s["group"] == "image" and s["groups"] == s["images"]


def test_blank_group_values_stay_the_image_alone(tmp_path):
    # ISIC 2019: a blank lesion_id is its own group; the preset keeps working.
    from skinfeat.data.datasets import load_dataset
    from skinfeat.data.synthetic import make_synthetic
    root = make_synthetic("isic2019", tmp_path / "isic", n_images=30, seed=4)
    data = load_dataset(root, "isic2019")
    meta = pd.read_csv(root / "ISIC_2019_Training_Metadata.csv", keep_default_na=False)
    blank = meta.loc[meta["lesion_id"] == "", "image"].str.replace("_downsampled", "")
    assert len(blank) and data.spec.group_name == "lesion"
    by_id = data.table.set_index("image_id")["group_id"]
    assert (by_id[blank] == blank.to_numpy()).all()


# ---------------------------------------------------------------- behaviour: --meta age=nan
@pytest.mark.parametrize("given,value", [(["--age", "nan"], "nan"),
                                         (["--meta", "age=NaN"], "NaN"),
                                         (["--meta", "age=inf"], "inf"),
                                         (["--meta", "age=-inf"], "-inf")])
def test_meta_nan_or_inf_is_missing_with_a_warning_and_counted(ship_runs, synth_table, caplog,
                                                               given, value):
    image = synth_table["path"].iloc[0]
    with caplog.at_level(logging.WARNING):
        out = json.loads(ok("predict", "--model", ship_runs["head"], "--image", image, *given,
                            "--meta", "sex=female", "--localization", "back", "--json").stdout)
    warned = [m for m in caplog.messages if "age" in m and repr(value) in m]
    assert warned, caplog.messages
    assert out["missing_metadata"] == ["age"]
    # Missing exactly as a blank age is: the same probabilities as leaving it out.
    want = Model(ship_runs["head"]).predict_image(image, sex="female",
                                                  localization="back").probabilities
    np.testing.assert_allclose([out["probabilities"][c] for c in want], list(want.values()))
    text = ok("predict", "--model", ship_runs["head"], "--image", image, *given, "--meta",
              "sex=female", "--localization", "back").output
    assert "missing metadata (treated as missing, as in training): age\n" in text


def test_nan_and_inf_in_a_predict_csv_are_counted_and_warned(ship_runs, synth_table,
                                                             synth_cache, tmp_path, caplog):
    rows = synth_table.iloc[:6][["image_id"]].assign(
        age=["50", "nan", "inf", "", "-inf", "forty"],
        sex=["male", "nan", "female", "", "xx", "male"], localization="back")
    path = tmp_path / "rows.csv"
    rows.to_csv(path, index=False)
    with caplog.at_level(logging.WARNING):
        r = ok("predict", "--model", ship_runs["head"], "--csv", path, "--cache", synth_cache,
               "--output", tmp_path / "p.csv")
    assert "rows: age on 5, sex on 3 of 6" in r.output
    assert any("rows.csv" in m and "not a finite number" in m and "'inf', '-inf'" in m
               for m in caplog.messages), caplog.messages



def test_serve_refuses_a_non_finite_number(ship_runs, synth_table):
    pytest.importorskip("fastapi")
    pytest.importorskip("pytorch_grad_cam")
    from fastapi.testclient import TestClient

    from skinfeat.deploy.serve import create_app

    image = Path(synth_table["path"].iloc[0]).read_bytes()
    with TestClient(create_app(Model(ship_runs["head"]))) as client:
        for value in ("nan", "inf", "-Infinity"):
            r = client.post("/api/predict", data={"age": value},
                            files={"image": ("x.jpg", image, "image/jpeg")})
            assert r.status_code == 422 and "age must be a finite number" in r.json()["detail"]


def test_missing_mask_names_what_the_encoder_encodes_as_missing():
    train = pd.DataFrame({"age": [30.0, 40.0], "sex": ["male", "female"]})
    enc = MetadataEncoder(("age",), ("sex",)).fit(train)
    rows = pd.DataFrame({"age": [np.nan, np.inf, 50.0, 20.0],
                         "sex": [None, "male", "xx", "M"]})
    mask = enc.missing_mask(rows)
    assert mask["age"].tolist() == [True, True, False, False]
    assert mask["sex"].tolist() == [True, False, True, False]   # unseen -> missing; M = male
    encoded = enc.transform(rows)
    assert encoded[:, 1].tolist() == [1.0, 1.0, 0.0, 0.0]        # the age_missing indicator
    assert MetadataEncoder((), ()).missing_mask(rows) == {}
