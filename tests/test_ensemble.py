"""The ensemble model (``--model ensemble``): members trained on the same rows, calibrated, and
combined by the mean of their log-probabilities or a stacker on inner out-of-fold predictions;
its bundle (a folder per member), predict, evaluate, cv, explain and export (the default
members, head + linear probe, export; with LightGBM the export refuses)."""
from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest

from skinfeat.learn.ensemble import EnsembleConfig, EnsembleModel
from skinfeat.learn.models import model_names

pytestmark = pytest.mark.slow   # members train: heads, probes, boosters


THREE = ("head", "linear", "lgbm")


def _data(n=240, d=12, m=3, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    image = rng.normal(size=(n, d)) + 1.5 * np.eye(k, d)[y]
    meta = rng.normal(size=(n, m))
    groups = rng.integers(0, n // 3, n)
    return (image.astype(np.float32), meta.astype(np.float32), y), groups


def _log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def test_registered_with_its_own_config_and_refusals():
    assert "ensemble" in model_names()
    cfg = EnsembleConfig()
    assert cfg.members == ("head", "linear") and cfg.combine == "logmean"
    for bad, why in (((), "at least one"), (("head", "head"), "more than once"),
                     (("ensemble",), "cannot be a member"), (("forest",), "must be one of")):
        with pytest.raises(ValueError, match=why):
            EnsembleConfig(members=bad).check()


def test_logmean_is_the_mean_of_the_members_calibrated_log_probabilities():
    (train, groups), (val, _), (test, _) = _data(), _data(n=90, seed=1), _data(n=60, seed=2)
    model = EnsembleModel(EnsembleConfig(inputs="fused", seed=0, members=THREE)).fit(
        train, val, groups, n_classes=3)
    assert [m.kind for m in model.members_] == ["head", "linear", "lgbm"]
    # every member trained on the same rows, each calibrated on val
    assert all(m.config.inputs == "fused" and m.config.seed == 0 for m in model.members_)
    logs = model.member_log_probas(test[0], test[1])
    for member, cal, lp in zip(model.members_, model.calibrators_, logs, strict=True):
        np.testing.assert_allclose(lp, _log_softmax(cal.logits(member.logits(test[0], test[1]))))
        np.testing.assert_allclose(np.exp(lp).sum(1), 1, atol=1e-9)
    counts = np.bincount(train[2], minlength=3)
    w = len(train[2]) / (3 * counts)
    z = model.logits(test[0], test[1])
    np.testing.assert_allclose(z, np.mean(logs, 0) + np.log(w), atol=1e-9)
    proba = model.predict_proba(test[0], test[1])
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-9)
    assert model.stacker_ is None and model.class_weights_ == pytest.approx(w.tolist())
    assert model.differentiable and model.exportable and "member(s) lgbm do" in model.exportable


def test_stack_is_fitted_on_inner_out_of_fold_predictions(monkeypatch):
    """Each member is fitted once per inner grouped fold (never on that fold's groups) and once
    on every training row; the stacker's logits are its linear map of the final members'."""
    from skinfeat.learn import ensemble

    (train, groups), (val, _), (test, _) = _data(), _data(n=90, seed=1), _data(n=60, seed=2)
    seen = []
    real = ensemble.model_class

    def spy(kind):
        cls = real(kind)

        class Spy(cls):
            @classmethod
            def fit_batched(klass, config, trains, vals, groups_, **kw):
                seen.append((kind, [len(t[2]) for t in trains], groups_))
                return cls.fit_batched(config, trains, vals, groups_, **kw)
        return Spy

    monkeypatch.setattr(ensemble, "model_class", spy)
    cfg = EnsembleConfig(members=("linear", "lgbm"), combine="stack", inner_folds=3, seed=0)
    model = EnsembleModel(cfg).fit(train, val, groups, n_classes=3)
    monkeypatch.undo()
    assert [s[0] for s in seen] == ["linear", "lgbm"]
    for _, sizes, parts_groups in seen:
        assert len(sizes) == 4 and sizes[-1] == len(train[2]) and sum(sizes[:3]) == 2 * sizes[-1]
        held = [set(groups) - set(g) for g in parts_groups[:3]]
        assert all(held) and not set.intersection(*held)   # each fold holds its own groups out
    s = model.stacker_
    assert s["coef"].shape == (3, 6) and s["intercept"].shape == (3,)
    x = (np.concatenate(model.member_log_probas(test[0], test[1]), 1) - s["mean"]) / s["scale"]
    np.testing.assert_allclose(model.logits(test[0], test[1]), x @ s["coef"].T + s["intercept"])


@pytest.mark.parametrize("combine", ["logmean", "stack"])
def test_bundle_round_trip_predicts_identically(combine, tmp_path):
    from skinfeat.deploy.bundle import read_file, save_bundle

    (train, groups), (val, _), (test, _) = _data(), _data(n=90, seed=1), _data(n=60, seed=2)
    model = EnsembleModel(EnsembleConfig(seed=0, combine=combine, members=THREE)).fit(
        train, val, groups, n_classes=3)
    state, files = model.to_bundle()
    save_bundle(tmp_path, {"state": state}, files=files)
    for kind, weights in (("head", "model.safetensors"), ("linear", "model.safetensors"),
                          ("lgbm", "model.lgbm.txt")):
        assert (tmp_path / kind / weights).is_file()
        assert json.loads((tmp_path / kind / "member.json").read_text())["model_type"] == kind
    config = {"head": model.config_dict(), "state": json.loads(json.dumps(state))}
    back = EnsembleModel.from_bundle(config, partial(read_file, tmp_path), (12, 3, 3))
    np.testing.assert_array_equal(back.logits(test[0], test[1]), model.logits(test[0], test[1]))
    np.testing.assert_array_equal(back.predict_proba(test[0], test[1]),
                                  model.predict_proba(test[0], test[1]))
    # the torch module of an all-differentiable ensemble is its logits (export's graph)
    heads = EnsembleModel(EnsembleConfig(members=("head",), seed=0, combine=combine))
    heads.fit(train, val, groups, n_classes=3)
    import torch
    with torch.no_grad():
        got = heads.torch_module()(torch.as_tensor(test[0]), torch.as_tensor(test[1])).numpy()
    np.testing.assert_allclose(got, heads.logits(test[0], test[1]), atol=1e-4)
    assert heads.exportable is None


def test_a_bundle_file_outside_its_folder_is_refused(tmp_path):
    from skinfeat.deploy.bundle import BundleError, read_file

    with pytest.raises(BundleError, match="inside the bundle"):
        read_file(tmp_path, "../config.json")
    with pytest.raises(BundleError, match="missing"):
        read_file(tmp_path, "head/member.json")


def test_cli_fit_head_cv_predict_evaluate_explain_export(synth_dir, synth_cache, synth_table,
                                                         tmp_path, caplog):
    from click.testing import CliRunner

    from skinfeat.cli import main
    from skinfeat.deploy.explain import Explainer
    from skinfeat.deploy.model import Model as Predictor

    runner = CliRunner()

    def cli(*args, code=0):
        r = runner.invoke(main, [str(a) for a in args])
        assert r.exit_code == code, r.output
        return r.output

    fit = tmp_path / "fit"
    cli("fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", fit,
        "--model", "ensemble", "--members", "head,linear,lgbm", "--seed", "0")
    config = json.loads((fit / "config.json").read_text())
    assert config["model_type"] == "ensemble" and config["state"]["members"] == \
        ["head", "linear", "lgbm"] and config["run"]["ensemble"]["combine"] == "logmean"
    assert (fit / "lgbm" / "model.lgbm.txt").is_file() and (fit / "head" / "member.json").is_file()
    assert "model: **ensemble**" in (fit / "report.md").read_text()

    p = Predictor(fit)
    rows = synth_table.iloc[:5]
    cached, raw = p.predict_table(rows, cache=synth_cache), p.predict_table(rows)
    np.testing.assert_allclose(raw.proba, cached.proba, atol=1e-5)
    assert "probabilities" in cli("predict", "--model", fit, "--image",
                                  synth_table["path"].iloc[0], "--json")
    cli("evaluate", "--model", fit, "--data", synth_dir, "--out", tmp_path / "ev",
        "--include-seen")
    assert "ensemble" in (tmp_path / "ev" / "evaluate_report.md").read_text()

    # explain: the head's gradients only, and it says so
    row = synth_table.iloc[0]
    with caplog.at_level("WARNING"):
        res = Explainer(p).explain(row["path"], {"age": row["age"]})
    assert res.method == "gradcam" and "differentiable member(s) head, linear" in caplog.text
    # export: one line, naming the members that do not export
    out = cli("export", "--model", fit, "--onnx", tmp_path / "m.onnx", code=1)
    assert "member(s) lgbm do not export" in out and len(out.strip().splitlines()) == 1

    cli("cv", "--data", synth_dir, "--cache", synth_cache, "--out", tmp_path / "cv",
        "--models", "ensemble,linear", "--members", "linear,lgbm", "--combine", "stack",
        "--folds", "2", "--inputs", "image", "--save-models", "--jobs", "1")
    res = json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())
    assert set(res["summary"]) == {"ensemble", "linear"}
    assert res["config"]["params"]["ensemble"]["members"] == ["linear", "lgbm"]
    cli("evaluate", "--model", tmp_path / "cv" / "models" / "ensemble_image", "--data",
        synth_dir, "--out", tmp_path / "ev_cv", "--include-seen")
