"""The linear probe: sklearn's LogisticRegression on standardized inputs, C by inner grouped CV,
and the whole stage-two path (fit-head, cv, bundle, predict on a table and a raw image, export)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from skinfeat.cli import main
from skinfeat.deploy.model import Model
from skinfeat.learn import linear
from skinfeat.learn.linear import LinearConfig, LinearProbe, design
from skinfeat.learn.runconfig import RunConfig

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs


def _data(n=240, d=12, m=3, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    image = rng.normal(size=(n, d)) + 0.8 * np.eye(k, d)[y] * 3
    meta = rng.normal(size=(n, m)) * 5 + 2
    groups = rng.integers(0, n // 3, n)
    return (image.astype(np.float32), meta.astype(np.float32), y), groups


@pytest.mark.parametrize("inputs,k", [("fused", 3), ("image", 3), ("meta", 3), ("fused", 2)])
def test_probabilities_equal_sklearn_logistic_regression(inputs, k):
    train, groups = _data(k=k)
    test, _ = _data(n=50, k=k, seed=1)
    # three Cs, still searched: the equality holds at whichever C the search picks, and the
    # whole grid costs 3x the CPU here (its far ends converge slowly on 240 rows)
    cfg = LinearConfig(inputs=inputs, cs=(1e-2, 1e-1, 1.0), seed=3)
    probe = LinearProbe(cfg).fit(train, train, groups, n_classes=k)
    assert probe.c_ in cfg.cs
    x = design(train[0], train[1], inputs)
    scaler = StandardScaler().fit(x)
    # the same strictly convex objective, both solved well past sklearn's default tol of 1e-4
    ref = LogisticRegression(C=probe.c_, solver="lbfgs", class_weight="balanced", tol=1e-10,
                             max_iter=10_000).fit(scaler.transform(x), train[2])
    want = ref.predict_proba(scaler.transform(design(test[0], test[1], inputs)))
    got = probe.predict_proba(test[0], test[1])
    # (the final fit runs on float32 products to max |gradient| 1e-6: ~2e-6 from sklearn's)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the logits are the model's: softmax gives the same probabilities
    z = probe.logits(test[0], test[1])
    np.testing.assert_allclose(np.exp(z) / np.exp(z).sum(1, keepdims=True), got, atol=1e-12)
    counts = np.bincount(train[2], minlength=k)
    np.testing.assert_allclose(probe.class_weights_, len(train[2]) / (k * counts), rtol=1e-6)


def test_c_is_chosen_by_grouped_inner_cv(monkeypatch):
    """Every inner fold keeps each group on one side, and the best-scoring C wins."""
    train, groups = _data()
    seen = []
    real = linear.choose_c

    def spy(x, y, g, cfg, basis=None, solutions=None):
        from sklearn.model_selection import StratifiedGroupKFold
        for tr, te in StratifiedGroupKFold(cfg.inner_folds, shuffle=True,
                                           random_state=cfg.seed).split(x, y, g):
            seen.append(set(g[tr]) & set(g[te]))
        best, scores = real(x, y, g, cfg, basis=basis, solutions=solutions)
        seen.append((best, scores))
        return best, scores

    monkeypatch.setattr(linear, "choose_c", spy)
    probe = LinearProbe(LinearConfig()).fit(train, train, groups, n_classes=3)
    monkeypatch.undo()
    best, scores = seen[-1]
    assert all(s == set() for s in seen[:-1])
    assert (probe.c_ == best and scores[best] == max(scores.values())
            and len(scores) == len(linear.C_GRID))
    # an absent class keeps a (near) zero probability, and one C skips the inner CV
    one = LinearProbe(LinearConfig(cs=(0.5,))).fit(train, train, n_classes=4)
    assert one.c_ == 0.5 and one.predict_proba(train[0], train[1])[:, 3].max() < 1e-12


TWO_CS = LinearConfig(cs=(0.01, 0.1))


@pytest.fixture(scope="module")
def linear_run(synth_table, synth_cache, tmp_path_factory):
    from skinfeat.workflows.fit import fit_run
    out = tmp_path_factory.mktemp("linear") / "run"
    # two Cs, still searched: the default grid's largest Cs run the solver to its cap on 160 rows
    return out, fit_run(synth_table, synth_cache, out, RunConfig(seed=0, model="linear",
                                                                params=TWO_CS))


def test_fit_bundle_and_predict_on_cache_and_raw_images(linear_run, synth_table, synth_cache):
    out, res = linear_run
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "linear" and config["state"]["C"] > 0
    assert (out / "model.safetensors").is_file() and "balanced_accuracy" in res.metrics
    p = Model(out)
    rows = synth_table.iloc[:6]
    cached = p.predict_table(rows, cache=synth_cache)
    raw = p.predict_table(rows)
    assert cached.ok.all() and raw.ok.all()
    np.testing.assert_allclose(raw.proba, cached.proba, atol=1e-5)
    np.testing.assert_allclose(cached.proba.sum(1), 1, atol=1e-6)


def test_cli_fit_head_cv_predict_and_export(synth_dir, synth_cache, linear_run, synth_table,
                                           tmp_path):
    runner = CliRunner()
    recipe = tmp_path / "recipe.toml"   # TWO_CS: the recipe's [linear] table reaches both
    recipe.write_text('model = "linear"\n[linear]\ncs = [0.01, 0.1]\n')
    r = runner.invoke(main, ["fit-head", "--data", str(synth_dir), "--cache", str(synth_cache),
                             "--out", str(tmp_path / "fit"), "--model", "linear",
                             "--config", str(recipe)])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "fit" / "config.json").read_text())["model_type"] == "linear"
    r = runner.invoke(main, ["cv", "--data", str(synth_dir), "--cache", str(synth_cache),
                             "--out", str(tmp_path / "cv"), "--models", "head,linear",
                             "--folds", "2", "--inputs", "fused", "--save-models",
                             "--max-epochs", "3", "--jobs", "1", "--config", str(recipe)])
    assert r.exit_code == 0, r.output
    assert "linear" in (tmp_path / "cv" / "cv_report.md").read_text()
    for name in ("head_fused", "linear_fused"):
        assert (tmp_path / "cv" / "models" / name / "config.json").is_file()
    ens = Model(tmp_path / "cv" / "models" / "linear_fused")
    assert len(ens.members) == 2 and all(m.model.kind == "linear" for m in ens.members)
    # export: the probe is a torch module too; ONNX Runtime gives predict's probabilities,
    # a row with every metadata field missing included
    pytest.importorskip("onnxruntime")
    from skinfeat.deploy.export import onnx_probabilities
    from skinfeat.embed.transform import preprocess

    r = runner.invoke(main, ["export", "--model", str(linear_run[0]), "--onnx",
                             str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    p = Model(linear_run[0])
    rows = synth_table.iloc[:4][["image_id", "path", "age", "sex", "localization"]].astype(object)
    rows.iloc[1, 2:] = None
    _, spec = p._backbone()
    image = np.stack([preprocess(path, spec).numpy() for path in rows["path"]])
    got = onnx_probabilities(tmp_path / "m.onnx", image, p.encode_metadata(rows))
    np.testing.assert_allclose(got, p.predict_table(rows).proba, atol=1e-4, rtol=0)


def test_explain_and_evaluate(linear_run, synth_table, synth_dir, tmp_path):
    from skinfeat.deploy.explain import Explainer

    p = Model(linear_run[0])
    row = synth_table.iloc[0]
    meta = {"age": row["age"], "sex": row["sex"], "localization": row["localization"]}
    res = Explainer(p).explain(row["path"], meta)   # differentiable: gradients, as a head's
    assert res.method == "gradcam" and set(res.attribution) == set(p.fields)
    assert Explainer(p).explain(row["path"], meta, method="scorecam").method == "scorecam"
    r = CliRunner().invoke(main, ["evaluate", "--model", str(linear_run[0]), "--data",
                                  str(synth_dir), "--out", str(tmp_path / "ev"),
                                  "--include-seen"])
    assert r.exit_code == 0, r.output
    assert "linear, logistic regression" in (tmp_path / "ev" / "evaluate_report.md").read_text()


def test_the_probe_has_its_own_config_in_a_recipe(tmp_path):
    """The C grid and inner folds come from the recipe's [linear] table, not LightGBM's."""
    from skinfeat.learn.runconfig import ConfigError, read_config_file

    path = tmp_path / "r.toml"
    path.write_text('model = "linear"\nseed = 4\n[linear]\ncs = [0.5, 2]\ninner_folds = 2\n'
                    '[lgbm]\ninputs = "meta"\n')
    recipe = read_config_file(path).seeded()
    assert recipe.params == LinearConfig(cs=(0.5, 2.0), inner_folds=2, seed=4)
    assert recipe.to_dict()["linear"]["cs"] == [0.5, 2.0] and "lgbm" not in recipe.to_dict()
    path.write_text('model = "linear"\n[linear]\ninner_folds = 1\n')
    with pytest.raises(ConfigError, match="linear.inner_folds"):
        read_config_file(path)
