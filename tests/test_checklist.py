"""The model card's CLEAR Derm checklist: known items filled from the run, the rest asked."""
from __future__ import annotations

import json
import shutil

import pytest

from skinfeat.data.presets import PRESETS
from skinfeat.data.spec import DatasetSpec
from skinfeat.evaluate.card import rewrite_card
from skinfeat.evaluate.checklist import HEADING, checklist_lines


def summary(dataset="ham10000", **info):
    return {"model": {"n": 2000, "balanced_accuracy": 0.61, "accuracy": 0.8, "macro_f1": 0.55,
                      "macro_auc": 0.9, "ece": 0.04,
                      "classwise_calibration": {"classwise_ece": 0.012},
                      "classwise_calibration_uncalibrated": {"classwise_ece": 0.05}},
            "bootstrap_ci95": {"balanced_accuracy": [0.58, 0.64], "accuracy": [0.78, 0.82]},
            "info": {"dataset": dataset, "model": "head", "split": "lesion", "seed": 3,
                     "protocol": "lesion-grouped, stratified by dx: no lesion on both sides",
                     "group": "lesion", "select_on": "val", "sizes": {"train": 7000, "test": 2000},
                     "lesions": {"train": 5200, "test": 1500}, "weights": "pretrained",
                     "identity": {"backbone": "convnext_tiny"}, "fields": ["age", "sex"],
                     "classes": ["mel", "nv"], "calibration": "logit_adjust",
                     "encoding": "robust: 12 features; numeric with a missing indicator",
                     **info}}


def test_known_items_are_filled_from_the_run():
    text = "\n".join(checklist_lines(summary()))
    assert text.startswith(HEADING)
    for fact in ("dermoscopic", "convnext_tiny", "CC BY-NC 4.0", "train 7000 images / 5200 "
                 "lesions", "dx_type", "lesion-grouped", "seed 3", "logit_adjust",
                 "0.050 before, 0.012 after", "balanced accuracy 61.0 % (95 % CI 58.0 % to "
                 "64.0 %)", "missing indicator", "age, sex"):
        assert fact in text, fact
    assert "none: no external set was scored" in text
    assert "not computed for this run" in text
    assert "### Open questions (for the author)" in text and "- [ ] Intended use" in text


def test_unknown_facts_become_open_questions_never_guesses():
    spec = DatasetSpec(name="clinic_x", label_column="dx")
    text = "\n".join(checklist_lines(summary("clinic_x"), spec))
    assert "not known to skinfeat" in text
    questions = text.split("### Open questions")[1]
    assert "Image type of clinic_x" in questions
    assert "How the labels of clinic_x were established" in questions
    assert "provenance and licence of clinic_x" in questions
    assert "dermoscopic" not in text.split("### Open questions")[0]


def test_subgroups_and_external_tests_are_reported():
    s = summary(sources_split={"trained_on": ["rosendahl", "vidir_modern"],
                               "scored_on": ["vienna_dias"]})
    s["subgroups"] = {"metric": "balanced_accuracy", "group_name": "lesion", "fields": [
        {"field": "dataset", "gap": 0.12, "best": "rosendahl", "worst": "vienna_dias",
         "gap_ci95": [0.05, 0.2]},
        {"field": "sex", "gap": None}]}
    ext = [{"name": "eval-isic", "info": {"dataset": "isic2018-test"},
            "model": {"n": 1512, "balanced_accuracy": 0.5}, "bootstrap_ci95": {
                "balanced_accuracy": [0.47, 0.53]}}]
    text = "\n".join(checklist_lines(s, PRESETS["ham10000"], ext))
    assert "dataset: gap 12.0 % `rosendahl` - `vienna_dias` (95 % CI 5.0 % to 20.0 %)" in text
    assert "sex: not ranked" in text
    assert "isic2018-test (1512 images): balanced accuracy 50.0 % (95 % CI 47.0 % to 53.0 %)" \
        in text
    assert "trained on rosendahl, vidir_modern, scored on vienna_dias" in text


def test_a_run_card_has_the_checklist_and_rewrite_card_adds_evaluations(ship_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ship_runs["head"], run)
    card = (run / "README.md").read_text()
    assert HEADING in card and "## Known limits" in card
    assert "none: no external set was scored" in card
    metrics = json.loads((run / "metrics.json").read_text())
    eval_dir = run / "eval-isic2018"
    eval_dir.mkdir()
    (eval_dir / "evaluate_metrics.json").write_text(json.dumps({
        "info": {"dataset": "isic2018-test"}, "bootstrap_ci95": {},
        "model": {"n": 1512, "balanced_accuracy": 0.526}}))
    metrics["subgroups"] = {"metric": "balanced_accuracy", "fields": [
        {"field": "sex", "gap": 0.03, "best": "female", "worst": "male",
         "gap_ci95": [-0.02, 0.08]}]}
    (run / "metrics.json").write_text(json.dumps(metrics))
    path = rewrite_card(run)
    card = path.read_text()
    assert card.count(HEADING) == 1
    assert "isic2018-test (1512 images): balanced accuracy 52.6 %" in card
    assert "sex: gap 3.0 % `female` - `male`" in card


def test_rewrite_card_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(ValueError, match="metrics.json: not a fit-head run folder"):
        rewrite_card(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"folds": []}))
    with pytest.raises(ValueError, match="key 'model' missing"):
        rewrite_card(tmp_path)
