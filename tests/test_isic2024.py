"""ISIC 2024 (SLICE-3D) end to end on its synthetic layout (train-metadata.csv + JPEG bytes in
train-image.hdf5), through the CLI; HDF5 image bytes as a general image source (a spec file,
broken and missing keys, uint8 arrays, the folder fallback)."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import EXTRACT_TINY as EXTRACT
from conftest import run_cli as cli
from PIL import Image

from skinfeat.data.datasets import DataError, detect, load_dataset, load_images
from skinfeat.data.images import hdf5_locator, open_image, split_locator
from skinfeat.data.presets import ISIC2024_TRAIN_ONLY, PRESETS
from skinfeat.data.synthetic import make_synthetic

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs


@pytest.fixture(scope="module")
def isic24(tmp_path_factory) -> Path:
    return make_synthetic("isic2024", tmp_path_factory.mktemp("isic2024"), n_images=150, seed=3)


def test_the_layout_and_the_preset(isic24):
    raw = pd.read_csv(isic24 / "train-metadata.csv")
    assert len(raw.columns) == 55 and {"isic_id", "target", "patient_id", "tbp_lv_A",
                                       "iddx_full", "attribution"} <= set(raw.columns)
    with h5py.File(isic24 / "train-image.hdf5") as f:
        assert set(f) == set(raw["isic_id"]) and isinstance(f[raw["isic_id"][0]][()], bytes)
    assert detect(isic24)[0] == "isic2024"
    data = load_dataset(isic24)
    t = data.table
    assert str(data.task) == "binary:malignant" and data.classes == ("benign", "malignant")
    assert 0 < (t["dx"] == "malignant").mean() < 0.15                 # rare positives
    assert t["group_id"].nunique() < len(t) / 4                      # grouped by patient
    assert all(p.endswith(f"::{i}") for p, i in zip(t["path"], t["image_id"], strict=True))
    assert {split_locator(p)[0] for p in t["path"]} == {str(isic24 / "train-image.hdf5")}
    spec = PRESETS["isic2024"]
    fields = set(spec.metadata)
    assert not fields & {c.lower() for c in ISIC2024_TRAIN_ONLY}
    assert {"age_approx", "sex", "anatom_site_general", "clin_size_long_diam_mm", "tbp_lv_a",
            "tbp_lv_deltalbnorm", "tbp_tile_type"} <= fields
    # Every non-leaky column of the release is a field, but the one constant (image_type).
    assert set(raw.columns.str.lower()) - fields - {c.lower() for c in ISIC2024_TRAIN_ONLY} \
        == {"isic_id", "patient_id", "image_type"}


def test_open_image_reads_the_stored_jpeg(isic24):
    key = pd.read_csv(isic24 / "train-metadata.csv")["isic_id"][0]
    with h5py.File(isic24 / "train-image.hdf5") as f:
        want = np.asarray(Image.open(io.BytesIO(f[key][()])).convert("RGB"))
    img = open_image(hdf5_locator(isic24 / "train-image.hdf5", key))
    assert img.format == "JPEG" and np.array_equal(np.asarray(img.convert("RGB")), want)
    with pytest.raises(KeyError, match="no image 'ISIC_nope'"):
        open_image(hdf5_locator(isic24 / "train-image.hdf5", "ISIC_nope"))


def test_end_to_end_through_the_cli(isic24, tmp_path):
    s = json.loads(cli("data", "check", isic24, "--json").stdout)
    assert s["preset"] == "isic2024" and s["group"] == "patient" and s["images"] > 100
    assert not set(s["fields"]["numeric"] + s["fields"]["categorical"]) & {"target", "lesion_id",
                                                                           "mel_thick_mm"}
    cache = tmp_path / "c.h5"
    out = cli("extract", "--data", isic24, "--cache", cache, *EXTRACT).output
    assert f"{s['images']} embeddings" in out and "could not be read" not in out
    cv = cli("cv", "--data", isic24, "--cache", cache, "--out", tmp_path / "cv", "--folds", "3",
             "--models", "head,lgbm", "--inputs", "fused", "--epochs", "4", "--jobs", "1")
    assert "pauc80" in cv.output
    res = json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())
    assert res["dataset"] == "isic2024" and len(res["records"]) == 6
    assert all(0 <= r["metrics"]["pauc80"] <= 0.2 for r in res["records"])
    run = tmp_path / "run"
    cli("fit-head", "--data", isic24, "--cache", cache, "--out", run, "--epochs", "4")
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"]["image_file"] == ["train-image.hdf5"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["model"]["pauc80"] <= 0.2 and len(metrics["bootstrap_ci95"]["pauc80"]) == 2
    assert "pAUC above 80 % TPR" in (run / "report.md").read_text()
    # predict --csv on the release's own table: images from the HDF5 file beside it.
    cli("predict", "--model", run, "--csv", isic24 / "train-metadata.csv", "--output",
        tmp_path / "pred.csv")
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert len(pred) == s["images"] and pred["error"].isna().all()
    assert pred["p_malignant"].between(0, 1).all()
    ev = cli("evaluate", "--model", run, "--data", isic24, "--out", tmp_path / "ev")
    assert "pauc80" in ev.output
    evm = json.loads((tmp_path / "ev" / "evaluate_metrics.json").read_text())
    assert evm["info"]["overlap_with_training"]["rows"] == 0 and "pauc80" in evm["model"]


def test_broken_and_missing_keys(isic24, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(isic24, root)
    table = pd.read_csv(root / "train-metadata.csv")
    bad, gone = table["isic_id"][0], table["isic_id"][1]
    with h5py.File(root / "train-image.hdf5", "a") as f:
        del f[bad]
        f.create_dataset(bad, data=np.bytes_(b"not a jpeg at all"))
    small = table.iloc[:12]
    small.to_csv(root / "train-metadata.csv", index=False)
    r = cli("extract", "--data", root, "--cache", tmp_path / "c.h5", *EXTRACT)
    assert "1 image(s) could not be read" in r.output and bad in r.output
    assert "11 embeddings" in r.output
    with h5py.File(root / "train-image.hdf5", "a") as f:
        del f[gone]
    with pytest.raises(DataError, match=rf"1 listed image\(s\) not in .*train-image.hdf5.*{gone}"):
        load_dataset(root)
    r = cli("data", "check", root, ok=False)
    assert r.exit_code != 0 and gone in r.output and "train-image.hdf5" in r.output


def test_any_spec_can_read_images_from_hdf5_bytes(tmp_path):
    # A generic table with a spec file naming the HDF5 file; images as 1-d uint8 arrays.
    rng = np.random.default_rng(0)
    rows = []
    with h5py.File(tmp_path / "crops.h5", "w") as f:
        for i in range(6):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(buf, "PNG")
            f.create_dataset(f"img{i}", data=np.frombuffer(buf.getvalue(), np.uint8))
            rows.append({"image": f"img{i}", "dx": "a" if i % 2 else "b", "age": 30 + i})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    (tmp_path / "spec.json").write_text(json.dumps({
        "name": "mine", "label_column": "dx", "image_column": "image",
        "image_file": "crops.h5", "numeric": ["age"]}))
    data = load_dataset(tmp_path / "labels.csv", spec=tmp_path / "spec.json")
    assert data.table["path"].tolist() == [hdf5_locator(tmp_path / "crops.h5", f"img{i}")
                                           for i in range(6)]
    assert open_image(data.table["path"][2]).size == (24, 20)
    batch = load_images(tmp_path / "labels.csv", data.spec)
    assert batch["path"].tolist() == data.table["path"].tolist()
    with h5py.File(tmp_path / "crops.h5", "a") as f:
        f.create_dataset("img_float", data=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="img_float.*not encoded bytes"):
        open_image(hdf5_locator(tmp_path / "crops.h5", "img_float"))


def test_files_instead_of_the_hdf5_file(isic24, tmp_path):
    # The same release unpacked: train-image/image/ISIC_*.jpg, no HDF5 file.
    root = tmp_path / "files"
    (root / "train-image" / "image").mkdir(parents=True)
    shutil.copy(isic24 / "train-metadata.csv", root)
    with h5py.File(isic24 / "train-image.hdf5") as f:
        for key in f:
            (root / "train-image" / "image" / f"{key}.jpg").write_bytes(f[key][()])
    files = load_dataset(root).table
    stored = load_dataset(isic24).table
    assert files["image_id"].tolist() == stored["image_id"].tolist()
    assert files["path"].str.endswith(".jpg").all()
    a = np.asarray(open_image(files["path"][0]).convert("RGB"))
    assert np.array_equal(a, np.asarray(open_image(stored["path"][0]).convert("RGB")))
