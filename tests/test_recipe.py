"""One recipe: the ``RunConfig`` read from ``--config`` and the flags is the object every fit of
fit-head, cv and tune trains by (cv and tune set only the fold's model, input set and seed), the
bundle stores it, and fit-head's run summary is typed and keeps metrics.json's keys."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

import skinfeat.learn.cv as cv_module
from skinfeat.api import make_recipe
from skinfeat.cli import main
from skinfeat.learn.baseline import LGBMConfig
from skinfeat.learn.cv import CVConfig
from skinfeat.learn.head import HeadConfig
from skinfeat.learn.protocol import with_fields
from skinfeat.learn.runconfig import RunConfig, model_params, read_model_tables
from skinfeat.schema import SchemaError
from skinfeat.workflows.summary import RunSummary

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs

# metrics.json's "info" keys before the summary was typed (tests and users read them).
OLD_INFO_KEYS = {
    "model", "config", "best_epoch", "epochs_run", "split", "protocol", "select_on",
    "scored_on", "seed", "dataset", "task", "classes", "class_names", "group", "fields",
    "reference_recipe", "sizes", "lesions", "without_embedding", "cache", "identity", "weights",
    "random_weights", "sources", "temperature", "calibration", "threshold", "tta", "tta_models",
    "encoding", "skinfeat", "embed_dim", "meta_features"}


def cli(*args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text('calibration = "temperature"\nseed = 3\n[head]\nmax_epochs = 2\n'
                    'dense_width = 32\n[lgbm]\nn_estimators = 7\n')
    return path


def test_cv_trains_every_fold_by_the_recipe_of_the_file_and_flags(
        synth_dir, synth_cache, recipe_file, tmp_path, monkeypatch):
    seen = []
    real = cv_module.fit_splits

    def spy(data, image, splits, recipe, **kw):
        seen.append(recipe)
        return real(data, image, splits, recipe, **kw)

    monkeypatch.setattr(cv_module, "fit_splits", spy)
    cli("cv", "--data", synth_dir, "--cache", synth_cache, "--out", tmp_path / "cv",
        "--folds", "2", "--jobs", "1", "--inputs", "image,fused", "--config", recipe_file,
        "--lr", "0.002", "--lgbm-num-leaves", "5")
    expected = make_recipe(recipe_file, run={}, head={"lr": 0.002}, lgbm={"num_leaves": 5})
    params = model_params(("head", "lgbm"), expected, {"lr": 0.002}, {"num_leaves": 5},
                          tables=read_model_tables(recipe_file))   # [lgbm] beside [head]
    assert expected.seed == 3 and expected.params.seed == 3
    assert params["lgbm"].n_estimators == 7 and params["lgbm"].num_leaves == 5
    assert len(seen) == 2 + 2 * 2   # the head: both folds at once; LightGBM fold by fold
    for r in seen:
        inputs = r.params.inputs
        # The fused head's fallback is the same fold's image-only head (no extra training).
        reused = r.model == "head" and inputs == "fused"
        assert r == replace(expected, model=r.model, select_on="val",
                            fallback=expected.fallback and not reused,
                            params=with_fields(params[r.model], inputs=inputs, num_threads=1))
    # cv_metrics.json holds the recipe, nested, as the file and flags made it
    saved = json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())["config"]
    assert saved["recipe"] == expected.to_dict() and saved["seeds"] == [3]
    assert saved["params"]["lgbm"] == params["lgbm"].to_dict()
    assert "head" not in saved and "lgbm" not in saved   # one copy of the recipe


def test_fit_head_bundle_stores_the_recipe_it_trained_by(synth_dir, synth_cache, recipe_file,
                                                         tmp_path):
    cli("fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", tmp_path / "run",
        "--config", recipe_file, "--model", "lgbm", "--inputs", "image")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    expected = make_recipe(recipe_file, run={"model": "lgbm"},
                           head={"inputs": "image"}, lgbm={"inputs": "image"})
    assert config["run"] == expected.to_dict()
    # and --config on that config.json reproduces the recipe
    assert make_recipe(tmp_path / "run" / "config.json") == expected


def test_task_recipe_changes_only_model_inputs_seed_and_threads():
    recipe = RunConfig(seed=5, encoding="reference", calibration="temperature", tta=True,
                       params=HeadConfig(lr=0.01, max_epochs=4))
    cfg = CVConfig(recipe=recipe)
    r = cfg.task_recipe("lgbm", "meta", 9)
    assert (r.model, r.seed, r.params.inputs, r.params.seed, r.params.num_threads) == \
        ("lgbm", 9, "meta", 9, 1)
    h = cfg.task_recipe("head", "meta", 9)
    assert (h.encoding, h.calibration, h.tta, h.params.lr, h.params.max_epochs) == \
        ("reference", "temperature", True, 0.01, 4)
    assert cfg.recipe == recipe   # the study's recipe itself is untouched
    assert cfg.to_dict()["recipe"] == recipe.to_dict()


def test_run_summary_keeps_metrics_json_keys_and_round_trips(ship_runs):
    info = json.loads((ship_runs["head"] / "metrics.json").read_text())["info"]
    assert set(info) >= OLD_INFO_KEYS
    summary = RunSummary.from_dict(info)
    assert summary.to_dict() == info and summary.format == 1
    assert summary.scored_size == info["sizes"]["test"]
    with pytest.raises(SchemaError, match="info.colour"):
        RunSummary.from_dict({**info, "colour": "red"})
    with pytest.raises(SchemaError, match="info.sizes"):
        RunSummary.from_dict({k: v for k, v in info.items() if k != "sizes"})
    with pytest.raises(SchemaError, match="format"):
        RunSummary.from_dict({**info, "format": 99})


def test_fit_returns_the_typed_summary(synth_dir, synth_cache):
    import skinfeat

    fit = skinfeat.fit(synth_dir, synth_cache, recipe=skinfeat.Recipe(
        seed=1, model="lgbm", params=LGBMConfig(num_threads=1, n_estimators=30)))
    assert isinstance(fit.info, RunSummary)
    assert fit.info.model == "lgbm" and fit.info.seed == 1 and fit.info.split == "group"
    saved = json.loads((fit.out / "metrics.json").read_text())["info"]
    assert saved == fit.info.to_dict()
    # the recipe's seed is the run's one seed: the bundle's LightGBM was seeded with it
    run = json.loads((fit.out / "config.json").read_text())["run"]
    assert run["seed"] == run["lgbm"]["seed"] == 1 and "head" not in run


def test_evaluate_returns_a_typed_result(ship_runs, synth_dir, synth_cache):
    import skinfeat

    model = skinfeat.load_model(ship_runs["head"])
    res = model.evaluate(synth_dir, embeddings=synth_cache)
    assert isinstance(res, skinfeat.EvaluationResult) and res.report_path.is_file()
    # the images the model trained or early-stopped on are left out: the test part remains
    assert 0 < res.info["n"] < 160
    again = skinfeat.evaluate_model(ship_runs["head"], synth_dir, res.out / "again",
                                    embeddings=[synth_cache])
    assert again.metrics["balanced_accuracy"] == res.metrics["balanced_accuracy"]


def test_the_reference_recipe_keeps_its_step_size_when_the_default_head_changes():
    """Issue 29 chose a smaller step and longer early stopping for the default head; the
    published recipe (--encoding reference) keeps Adam 1e-3, 40 epochs, patience 5."""
    published = (1e-3, 40, 5)
    ref = make_recipe(run={"encoding": "reference"}).params
    assert (ref.lr, ref.max_epochs, ref.patience) == published
    default = make_recipe(run={"model": "head"}).params   # also the default ensemble's head
    assert (default.lr, default.max_epochs, default.patience) == (3e-4, 80, 10)
    # a flag still wins over the reference's values
    flagged = make_recipe(run={"encoding": "reference"}, head={"lr": 2e-3}).params
    assert (flagged.lr, flagged.max_epochs) == (2e-3, 40)
