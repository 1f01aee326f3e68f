"""From a trained run to a diagnosis: predict, evaluate, calibration, tampered bundles, offline
weights."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from skinfeat.cli import main
from skinfeat.data.datasets import CLASSES, load_dataset
from skinfeat.data.metadata import MetadataEncoder
from skinfeat.deploy.bundle import BundleError, load_into, load_state, load_typed
from skinfeat.deploy.model import Model
from skinfeat.embed.cache import read_cache
from skinfeat.evaluate.metrics import softmax
from skinfeat.learn.calibration import Calibrator
from skinfeat.learn.head import FusionHead, head_logits

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def runs(ship_runs) -> dict:
    """The session's head and LightGBM runs (tests/conftest.py), shared with
    explain/export/serve."""
    return ship_runs


def cached_probabilities(run, cache, table) -> np.ndarray:
    """What the trained model gives on the cached embeddings: the reference for predict."""
    config = load_typed(run)[0]
    contents = read_cache(cache)
    emb = contents.embeddings[contents.rows_for(table["image_id"].tolist())]
    meta = MetadataEncoder.from_dict(config["encoder"]).transform(table)
    if config["model_type"] == "head":
        h = config["head"]
        model = FusionHead(h["embed_dim"], h["meta_dim"], h["n_classes"], h["head"], h["inputs"])
        load_into(model, load_state(run), run)
        logits = head_logits(model, emb, meta)
    else:
        from skinfeat.learn.baseline import LGBMModel
        lgbm = LGBMModel.from_state((run / "model.lgbm.txt").read_text(), config["state"])
        logits = np.log(np.clip(lgbm.predict_proba(emb, meta), 1e-12, None))
    return Calibrator.from_dict(config["calibration"])(logits)


@pytest.mark.parametrize("kind", ["head", "lgbm"])
def test_predict_one_image_matches_the_cached_path(runs, synth_table, synth_cache, kind):
    row = synth_table.iloc[[3]]
    p = Model(runs[kind])
    assert p.temperature == load_typed(runs[kind])[0]["temperature"]
    r = row.iloc[0]
    probs = p.predict_image(r["path"], age=r["age"], sex=r["sex"],
                            localization=r["localization"]).probabilities
    assert list(probs) == list(CLASSES)
    got = np.array(list(probs.values()))
    assert abs(got.sum() - 1) < 1e-6
    np.testing.assert_allclose(got, cached_probabilities(runs[kind], synth_cache, row)[0],
                               atol=1e-5, rtol=0)


def test_batch_csv_with_missing_metadata(runs, synth_table, tmp_path):
    rows = synth_table.iloc[:3]
    (tmp_path / "img").mkdir()
    for path in rows["path"]:
        shutil.copy(path, tmp_path / "img")
    pd.DataFrame({"image": [f"img/{i}.jpg" for i in rows["image_id"]],
                  "age": ["", "55", "40"], "sex": ["female", "", "male"],
                  "localization": ["back", "trunk", ""]}).to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "preds.csv"
    r = cli("predict", "--model", str(runs["head"]), "--csv", str(tmp_path / "in.csv"),
            "--output", str(out))
    assert r.exit_code == 0, r.output
    preds = pd.read_csv(out, keep_default_na=False)
    assert preds["image_id"].tolist() == rows["image_id"].tolist()
    prob_cols = [f"p_{c}" for c in CLASSES]
    np.testing.assert_allclose(preds[prob_cols].sum(axis=1), 1.0, atol=1e-4)
    assert (preds["error"] == "").all() and set(preds["decision"]) <= set(CLASSES)
    # A blank is missing, exactly as None or the set's own token ("unknown") is (the robust
    # encoding: a missing age is not the training mean, it also sets age's missing indicator).
    p = Model(runs["head"])
    want0 = p.predict_image(rows["path"].iloc[0], age=None, sex="female",
                            localization="back").probabilities
    want1 = p.predict_image(rows["path"].iloc[1], age=55, sex="unknown",
                            localization="trunk").probabilities
    # float rows (pandas < 2.1 gives a row of this mixed-type frame the object dtype, which
    # numpy < 2 cannot compare)
    got = preds[prob_cols].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(got[0], list(want0.values()), atol=1e-5)
    np.testing.assert_allclose(got[1], list(want1.values()), atol=1e-5)
    # No metadata at all (as for the ISIC 2018 test set): every field is treated as missing.
    none = p.predict_image(rows["path"].iloc[2]).probabilities
    explicit = p.predict_image(rows["path"].iloc[2], age=None, sex="unknown",
                               localization="unknown").probabilities
    np.testing.assert_allclose(list(none.values()), list(explicit.values()), atol=1e-6)


def test_predict_json_parses(runs, synth_table):
    r = CliRunner().invoke(main, ["predict", "--model", str(runs["head"]), "--image",
                                  synth_table["path"].iloc[0], "--age", "55", "--sex", "female",
                                  "--localization", "back", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["prediction"] in CLASSES and abs(sum(out["probabilities"].values()) - 1) < 1e-6
    assert "RANDOM" in r.stderr
    r = cli("predict", "--model", str(runs["head"]), "--image", synth_table["path"].iloc[0])
    assert r.exit_code == 0 and "temperature" in r.output


def make_isic2018_test(synth_table, root):
    """An ISIC 2018 Task 3 test layout: images + one-hot ground truth, no metadata."""
    rows = synth_table.iloc[:40]
    (root / "ISIC2018_Task3_Test_Input").mkdir(parents=True)
    for path in rows["path"]:
        shutil.copy(path, root / "ISIC2018_Task3_Test_Input")
    order = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    gt = pd.DataFrame({"image": rows["image_id"]})
    for c in order:
        gt[c] = (rows["dx"] == c.lower()).astype(float).to_numpy()
    gt.to_csv(root / "ISIC2018_Task3_Test_GroundTruth.csv", index=False)
    return root


def test_evaluate_isic2018_layout(runs, synth_table, tmp_path):
    data = make_isic2018_test(synth_table, tmp_path / "isic")
    table = load_dataset(data).table
    assert table["dx"].tolist() == synth_table["dx"].iloc[:40].tolist()
    # The set ships no metadata: the table has no fields, so every model field is missing.
    assert not {"age", "sex", "localization"} & set(table.columns)
    card = (runs["head"] / "README.md").read_text()
    out = tmp_path / "eval"
    # The set reuses training images: scored only with --include-seen.
    r = cli("evaluate", "--model", str(runs["head"]), "--data", str(data), "--out", str(out),
            "--include-seen")
    assert r.exit_code == 0, r.output
    report = (out / "evaluate_report.md").read_text()
    first = [ln for ln in report.splitlines()[1:] if ln and not ln.startswith(">")][0]
    assert first.startswith("**Balanced multi-class accuracy"), first
    assert "metadata missing" in report and "ISIC 2018 Task 3 test set ships no metadata" in report
    metrics = json.loads((out / "evaluate_metrics.json").read_text())
    assert metrics["info"]["metadata_missing"] and metrics["info"]["layout"] == "isic2018-test"
    assert metrics["model"]["n"] == 40 and len(metrics["bootstrap_ci95"]["balanced_accuracy"]) == 2
    assert (out / "confusion.png").is_file() and (out / "reliability.png").is_file()
    # The run's model card is untouched, and says the backbone had random weights.
    assert (runs["head"] / "README.md").read_text() == card
    assert "random weights" in card.lower()


def test_evaluate_generic_csv_flags_training_overlap(runs, synth_table, tmp_path):
    import skinfeat
    rows = synth_table.iloc[:30]
    rows[["path", "image_id", "dx", "age", "sex", "localization"]].rename(
        columns={"path": "image"}).to_csv(tmp_path / "ext.csv", index=False)
    res = skinfeat.evaluate_model(runs["head"], tmp_path / "ext.csv")
    assert res.out == runs["head"] / "eval-ext"
    assert res.info["layout"] == "csv" and not res.info["metadata_missing"]
    # By default the images (and lesions) the model trained or early-stopped on are left out.
    seen = res.info["seen_in_training"]
    assert seen["images"] > 0 and res.info["n"] == 30 - seen["images"]
    assert res.info["overlap_with_training"]["rows"] == 0
    report = res.report_path.read_text()
    assert f"left out: {seen['images']} image(s)" in report and "majority baseline" in report
    res = skinfeat.evaluate_model(runs["head"], tmp_path / "ext.csv", tmp_path / "all",
                                  include_seen=True)
    assert res.info["n"] == 30 and res.info["overlap_with_training"]["rows"] == seen["images"]
    assert "optimistic" in (tmp_path / "all" / "evaluate_report.md").read_text()


@pytest.fixture
def tampered(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["head"], run)
    return run


def edit_config(run, change):
    config = json.loads((run / "config.json").read_text())
    change(config)
    (run / "config.json").write_text(json.dumps(config))


def test_tampered_bundles_give_clear_errors(runs, tampered, synth_table):
    image = synth_table["path"].iloc[0]
    edit_config(tampered, lambda c: c["head"].update(embed_dim=c["head"]["embed_dim"] + 1))
    with pytest.raises(BundleError, match="do not match config.json"):
        Model(tampered)
    r = cli("predict", "--model", str(tampered), "--image", image)
    assert r.exit_code == 1 and r.output.startswith("Error:") and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    shutil.copy(runs["head"] / "config.json", tampered / "config.json")
    edit_config(tampered, lambda c: c.pop("encoder"))
    with pytest.raises(BundleError, match="missing key.*encoder"):
        Model(tampered)
    shutil.copy(runs["head"] / "config.json", tampered / "config.json")
    edit_config(tampered, lambda c: c["calibration"].update(temperature="hot"))
    with pytest.raises(BundleError, match="invalid calibration state"):
        Model(tampered)
    shutil.copy(runs["head"] / "config.json", tampered / "config.json")
    edit_config(tampered, lambda c: c["calibration"].update(temperature=-1.0))
    with pytest.raises(BundleError, match="temperature must be a positive number"):
        Model(tampered)


def test_truncated_weights_and_wrong_backbone_source(runs, tmp_path, synth_table):
    run = tmp_path / "run"
    shutil.copytree(runs["head"], run)
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="unreadable weights"):
        Model(run)
    (run / "model.safetensors").write_bytes(data)
    image = synth_table["path"].iloc[0]
    edit_config(run, lambda c: c["backbone"].update(weights={"kind": "file", "sha256": "ab" * 32}))
    with pytest.raises(BundleError, match="--weights-file"):
        Model(run).predict_image(image)
    (tmp_path / "other.safetensors").write_bytes(b"not the checkpoint")
    with pytest.raises(BundleError, match="does not match"):
        Model(run, weights_file=tmp_path / "other.safetensors").predict_image(image)
    edit_config(run, lambda c: c.update(backbone={}))
    with pytest.raises(BundleError, match="outside skinfeat"):
        Model(run).predict_image(image)


def test_temperature_scaling_lowers_ece_of_an_overconfident_model():
    from skinfeat.evaluate.metrics import expected_calibration_error
    from skinfeat.learn.calibration import fit_temperature
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, (6000, 7))
    p = softmax(logits)
    y = np.array([rng.choice(7, p=row) for row in p])      # calibrated by construction
    sharp = 5 * logits                                      # the same model, over-confident
    fit, held = slice(0, 3000), slice(3000, None)
    t = fit_temperature(sharp[fit], y[fit])
    assert 4 < t < 6
    before = expected_calibration_error(y[held], softmax(sharp[held]))
    after = expected_calibration_error(y[held], softmax(sharp[held], t))
    assert after < before / 3, (before, after)


def test_offline_pretrained_weights_are_a_one_line_error():
    from skinfeat.embed.backbone import create_backbone
    from skinfeat.embed.weights import WeightSource, WeightsUnavailable
    with pytest.raises(WeightsUnavailable) as exc:
        create_backbone("test_convnext.r160_in1k", WeightSource("pretrained"))
    msg = str(exc.value)
    assert "\n" not in msg and "--weights-file" in msg


def test_layout_detection_and_malformed_ground_truth(synth_dir, synth_table, tmp_path):
    from skinfeat.data.datasets import DataError, load_dataset
    assert load_dataset(synth_dir, images=False).spec.name == "ham10000"
    data = make_isic2018_test(synth_table, tmp_path / "isic")
    assert load_dataset(data, images=False).spec.name == "isic2018-test"
    gt = data / "ISIC2018_Task3_Test_GroundTruth.csv"
    frame = pd.read_csv(gt)
    frame.loc[2, "VASC"] = 1.0 - frame.loc[2, "VASC"]   # row 2 (file line 4) no longer one-hot
    frame.to_csv(gt, index=False)
    with pytest.raises(DataError, match="not one-hot.*line 4"):
        load_dataset(data, "isic2018-test")
    with pytest.raises(DataError, match="no known dataset layout found"):
        load_dataset(tmp_path / "isic" / "ISIC2018_Task3_Test_Input", images=False)


def test_every_way_of_missing_metadata_at_predict_time_is_one_input(runs, synth_table, caplog):
    """Absent fields, blanks, None, the data set's token and a value never seen in training all
    reach the head as the same vector, so they give the same probabilities."""
    p = Model(runs["head"])
    path = synth_table["path"].iloc[5]
    absent = p.predict_image(path).probabilities
    with caplog.at_level(logging.WARNING):
        variants = [p.predict_image(path, age="", sex="", localization="").probabilities,
                    p.predict_image(path, age=None, sex=None, localization=None).probabilities,
                    p.predict_image(path, age="unknown", sex="unknown",
                                    localization="unknown").probabilities,
                    p.predict_image(path, age=float("nan"), sex="martian",
                                    localization="tail").probabilities]
    assert "never seen in training" in caplog.text and "'martian'" in caplog.text
    for got in variants:
        np.testing.assert_allclose(list(got.values()), list(absent.values()), atol=1e-7)
    known = p.predict_image(path, age=40, sex="male", localization="back").probabilities
    assert max(abs(a - b) for a, b in zip(known.values(), absent.values(), strict=False)) > 1e-6


def test_decisions_follow_the_balanced_rule(runs, synth_table, synth_cache):
    p = Model(runs["head"])
    rows = synth_table.iloc[:20]
    contents = read_cache(synth_cache)
    logits = p.logits(contents.embeddings[contents.rows_for(rows["image_id"].tolist())], rows)
    np.testing.assert_array_equal(p.decide(p.calibrate(logits)), p.calibrator.predict(logits))
