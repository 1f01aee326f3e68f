"""One decision, shown the same everywhere: the most probable class and its probability, the
decision and the rule, in predict (text, --json, CSV), explain (figure title and JSON), serve
and the ONNX graph, whose ``decision`` output equals predict's for head, FiLM and fold-ensemble
bundles (ONNX Runtime)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from skinfeat.deploy.decision import FIELDS, calibration_text

CLASSES_COLS = ("image_id", "path", "age", "sex", "localization")


def rows_of(synth_table, n: int = 24) -> pd.DataFrame:
    return synth_table.iloc[:n][list(CLASSES_COLS)].astype(object)


def test_predict_csv_has_the_decision_fields_consistent(ship_runs, synth_table, tmp_path):
    csv = tmp_path / "in.csv"
    rows = rows_of(synth_table).drop(columns="image_id").rename(columns={"path": "image"})
    rows.to_csv(csv, index=False)
    out = tmp_path / "out.csv"
    run_cli("predict", "--model", ship_runs["head"], "--csv", csv, "--output", out)
    got = pd.read_csv(out)
    assert list(got.columns[2:6]) == list(FIELDS)
    probs = got[[c for c in got.columns if c.startswith("p_")]]
    classes = [c[2:] for c in probs.columns]
    top = probs.to_numpy().argmax(1)
    assert (got["most_probable"] == [classes[i] for i in top]).all()
    np.testing.assert_allclose(got["most_probable_probability"], probs.to_numpy().max(1), atol=1e-6)
    from skinfeat.deploy.model import Model
    p = Model(ship_runs["head"])
    want = p.predict_table(rows_of(synth_table))
    assert list(got["decision"]) == [p.classes[i] for i in want.decided]
    assert got["rule"].nunique() == 1 and got["rule"][0].startswith("balanced")


@pytest.fixture(scope="module")
def skewed_run(ship_runs, tmp_path_factory):
    """The head run with a strong class weight on its last class (as a rare class gets from
    balanced weights), so that the decision differs from the most probable class."""
    out = tmp_path_factory.mktemp("skewed") / "run"
    shutil.copytree(ship_runs["head"], out)
    config = json.loads((out / "config.json").read_text())
    k = len(config["classes"])
    config["calibration"]["decision_offset"] = [0.0] * (k - 1) + [3.0]
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_predict_text_and_json_name_most_probable_and_decision(skewed_run, synth_table):
    from skinfeat.deploy.model import Model
    p = Model(skewed_run)
    preds = p.predict_table(rows_of(synth_table, 60))
    differ = np.flatnonzero(preds.decided != preds.proba.argmax(1))
    assert len(differ), "no row where the decision differs from the most probable class"
    image = preds.paths[int(differ[0])]
    meta = [f"{k}={v}" for k, v in rows_of(synth_table, 60).iloc[int(differ[0])][
        ["age", "sex", "localization"]].items() if v is not None and v == v]
    args = ["predict", "--model", skewed_run, "--image", image,
            *[a for m in meta for a in ("--meta", m)]]
    text = run_cli(*args).output
    top, decided = p.classes[int(preds.proba[differ[0]].argmax())], \
        p.classes[int(preds.decided[differ[0]])]
    assert f"most probable: {top} (" in text and f"decision: {decided} (differs" in text
    assert "rule: balanced" in text
    text = run_cli(*args, "--json").output
    out = json.loads(text[text.index("{"):])
    assert (out["most_probable"], out["decision"]) == (top, decided)
    assert out["most_probable_probability"] == pytest.approx(out["probabilities"][top])
    assert out["rule"].startswith("balanced")


def test_explain_json_and_figure_title_lead_with_the_decision(ship_runs, synth_table):
    pytest.importorskip("pytorch_grad_cam")
    from skinfeat.deploy.explain import Explainer, explanation_figure
    from skinfeat.deploy.model import Model
    p = Model(ship_runs["head"])
    ex = Explainer(p).explain(synth_table["path"].iloc[3])
    d = ex.to_dict()
    assert set(FIELDS) <= set(d) and d["decision"] == ex.predicted
    assert d["most_probable"] == ex.classes[int(np.argmax(ex.proba))]
    title = explanation_figure(ex, "random", False)._suptitle.get_text().replace("\n", " ")
    assert title.startswith(f"most probable: {d['most_probable']}")
    assert f"decision: {d['decision']}" in title and "rule:" in title


def test_serve_answer_carries_the_decision_fields(ship_runs, synth_table):
    pytest.importorskip("fastapi")
    from skinfeat.deploy.model import Model
    from skinfeat.deploy.serve import Service
    service = Service(Model(ship_runs["head"]))
    with open(synth_table["path"].iloc[2], "rb") as f:
        out = service.run(f.read(), {})
    assert set(FIELDS) <= set(out)
    assert out["most_probable"] == max(out["probabilities"], key=out["probabilities"].get)


def test_ensemble_states_its_members_calibration(cv_ensemble):
    from skinfeat.api import load_model
    model = load_model(cv_ensemble)
    text = calibration_text(model)
    assert "T = 1.000)" not in text and "members" in text and "logit adjustment" in text


# ---------------------------------------------------------------- ONNX
@pytest.fixture(scope="module")
def film_run(synth_table, synth_cache, tmp_path_factory):
    from skinfeat.learn.head import HeadConfig
    from skinfeat.learn.runconfig import RunConfig
    from skinfeat.workflows.fit import fit_run
    out = tmp_path_factory.mktemp("film") / "run"
    fit_run(synth_table, synth_cache, out,
            RunConfig(seed=0, model="head", params=HeadConfig(seed=0, head="film", max_epochs=6)))
    return out


@pytest.fixture(scope="module")
def cv_ensemble(synth_dir, synth_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("decision_cv") / "cv"
    run_cli("cv", "--data", synth_dir, "--cache", synth_cache, "--out", out, "--folds", "2",
            "--epochs", "3", "--inputs", "fused", "--models", "head", "--jobs", "1",
            "--save-models", "--subgroups", "none")
    return out / "models" / "head_fused"


@pytest.mark.parametrize("which", ["head", "skewed", "film", "ensemble"])
def test_onnx_decision_output_equals_predict(which, ship_runs, skewed_run, film_run, cv_ensemble,
                                             synth_table, tmp_path):
    pytest.importorskip("onnxruntime")
    from skinfeat.deploy.export import meta_inputs, onnx_outputs
    from skinfeat.deploy.model import Model
    from skinfeat.embed.transform import preprocess
    run = {"head": ship_runs["head"], "skewed": skewed_run, "film": film_run,
           "ensemble": cv_ensemble}[which]
    graph = tmp_path / "m.onnx"
    run_cli("export", "--model", run, "--onnx", graph)
    p = Model(run)
    rows = rows_of(synth_table, 40)
    rows.iloc[1, 2:] = None
    want = p.predict_table(rows)
    _, spec = p._backbone()
    image = np.stack([preprocess(path, spec).numpy() for path in rows["path"]])
    metas = [m.encode_metadata(rows) for _, m in meta_inputs(p)]
    proba, decision = onnx_outputs(graph, image, metas)
    np.testing.assert_allclose(proba, want.proba, atol=1e-4)
    np.testing.assert_array_equal(decision, want.decided)
    side = json.loads(graph.with_suffix(".json").read_text())
    assert side["rule"] == want.rule and "1e-4" in side["agreement"]


def test_ensemble_evaluation_states_its_members_calibration(cv_ensemble, synth_dir,
                                                             synth_cache, tmp_path):
    from skinfeat.api import evaluate_model
    res = evaluate_model(cv_ensemble, synth_dir, tmp_path / "ev", embeddings=synth_cache,
                         include_seen=True)
    text = res.info["calibration"]
    assert "members" in text and "T = 1.000)" not in text


def test_explain_cli_writes_json_beside_the_png_and_prints_the_decision(skewed_run, synth_table,
                                                                        tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    image = synth_table["path"].iloc[0]
    out = tmp_path / "ex"
    r = run_cli("explain", "--model", skewed_run, "--image", image, "--out", out)
    side = json.loads((out / f"{synth_table['image_id'].iloc[0]}.json").read_text())
    assert set(FIELDS) <= set(side)
    assert f"most probable: {side['most_probable']}" in r.output
    assert f"decision: {side['decision']}" in r.output


def test_class_probability_columns_are_the_only_p_columns(ship_runs, synth_table):
    """``p_CLASS`` columns sum to one: no decision field shares their prefix."""
    from skinfeat.deploy.model import Model
    frame = Model(ship_runs["head"]).predict_table(rows_of(synth_table, 5)).to_frame()
    assert np.allclose(frame.filter(like="p_").sum(axis=1), 1, atol=1e-5)
