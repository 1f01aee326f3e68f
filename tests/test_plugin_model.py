"""Issue 31's acceptance test: a model defined in one file outside the package
(tests/plugin_model.py) and registered from here runs fit-head, cv, predict and evaluate, from
the CLI and from the Python API, with no edit to the package."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from plugin_model import PriorConfig, PriorModel

from skinfeat.cli import main
from skinfeat.learn.models import MODELS, register


@pytest.fixture
def prior():
    register(PriorModel)
    yield PriorModel
    MODELS.pop("prior", None)


@pytest.mark.slow   # end to end: whole CLI / API runs
def test_cli_fit_head_cv_predict_evaluate(prior, synth_dir, synth_cache, synth_table, tmp_path):
    runner = CliRunner()

    def cli(*args):
        r = runner.invoke(main, [str(a) for a in args])
        assert r.exit_code == 0, r.output
        return r.output

    cli("fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", tmp_path / "fit",
        "--model", "prior", "--calibration", "temperature")
    config = json.loads((tmp_path / "fit" / "config.json").read_text())
    assert config["model_type"] == "prior" and config["run"]["model"] == "prior"
    assert config["run"]["prior"] == PriorConfig(seed=42).to_dict()
    assert (tmp_path / "fit" / "model.prior.txt").is_file()
    # the recipe in config.json reproduces the run, through --config
    cli("fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", tmp_path / "again",
        "--config", tmp_path / "fit" / "config.json")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["run"] == config["run"]

    cli("cv", "--data", synth_dir, "--cache", synth_cache, "--out", tmp_path / "cv",
        "--models", "prior", "--folds", "2", "--inputs", "fused", "--save-models", "--jobs", "1")
    res = json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())
    assert set(res["summary"]) == {"prior"} and "prior" in (tmp_path / "cv" /
                                                          "cv_report.md").read_text()
    assert (tmp_path / "cv" / "models" / "prior_fused" / "config.json").is_file()

    shown = [cli("predict", "--model", tmp_path / "fit", "--image", path, "--json")
             for path in synth_table["path"].iloc[:2]]
    assert "probabilities" in shown[0] or "proba" in shown[0]

    cli("evaluate", "--model", tmp_path / "fit", "--data", synth_dir, "--out", tmp_path / "ev",
        "--include-seen")
    assert "prior, class prior" in (tmp_path / "ev" / "evaluate_report.md").read_text()
    cli("evaluate", "--model", tmp_path / "cv" / "models" / "prior_fused", "--data", synth_dir,
        "--out", tmp_path / "ev_cv", "--include-seen")


@pytest.mark.slow   # end to end: whole CLI / API runs
def test_api_fit_cross_validate_predict_evaluate(prior, synth_dir, synth_cache, tmp_path):
    import skinfeat

    data = skinfeat.load_dataset(synth_dir)
    recipe = skinfeat.Recipe(seed=0, model="prior", params=PriorConfig(smoothing=2.0),
                             calibration="temperature")
    fit = skinfeat.fit(data, synth_cache, recipe=recipe, out=tmp_path / "fit")
    assert fit.info.model == "prior" and fit.info.config["smoothing"] == 2.0
    model = skinfeat.load_model(tmp_path / "fit")
    preds = model.predict(embeddings=synth_cache, metadata=data.table.head(5))
    # the same probabilities for every row: the prior, calibrated
    assert np.allclose(preds.proba, preds.proba[0]) and np.allclose(preds.proba.sum(1), 1)

    # two worker processes: the model registered here reaches them with their tasks
    from skinfeat.learn.linear import LinearConfig

    cv = skinfeat.cross_validate(data, synth_cache, folds=2, models=("prior", "linear"),
                                 inputs=("image",), recipe=recipe, out=tmp_path / "cv",
                                 params={"linear": LinearConfig(cs=(0.1,))},
                                 save_models=True, jobs=2)
    assert set(cv.table["model"]) == {"prior", "linear"}
    assert cv.raw["config"]["params"]["prior"]["smoothing"] == 2.0
    assert "prior_image" in cv.models

    ev = skinfeat.evaluate_model(model, synth_dir, tmp_path / "ev", include_seen=True)
    assert 0 <= ev.metrics["balanced_accuracy"] <= 1


def test_unknown_model_is_refused_by_name(synth_dir, synth_cache, tmp_path):
    r = CliRunner().invoke(main, ["fit-head", "--data", str(synth_dir), "--cache",
                                  str(synth_cache), "--out", str(tmp_path), "--model", "prior"])
    assert r.exit_code != 0 and "head" in r.output and "prior" in r.output


def _models_page_blocks() -> list[str]:
    """The python blocks of docs/models.md that name this file as their test."""
    from test_docs_examples import ROOT, blocks

    return [code for lang, code, test, _ in blocks(ROOT / "docs" / "models.md")
            if lang == "python" and test == "tests/test_plugin_model.py"]


def test_the_models_page_shows_this_model_as_it_is():
    """docs/models.md says its block is the whole of tests/plugin_model.py (less the module
    docstring and the __future__ import): it must stay so."""
    import ast
    from pathlib import Path

    source = (Path(__file__).parent / "plugin_model.py").read_text()
    body = ast.parse(source).body
    start = next(n for n in body if not (isinstance(n, ast.Expr) or
                                          (isinstance(n, ast.ImportFrom)
                                           and n.module == "__future__")))
    code = "\n".join(source.splitlines()[start.lineno - 1:]).strip()
    assert _models_page_blocks()[0].strip() == code


@pytest.mark.slow   # end to end: whole CLI / API runs
def test_the_models_page_api_example_runs(prior, synth_dir, synth_cache, tmp_path, monkeypatch):
    import skinfeat

    monkeypatch.chdir(tmp_path)
    scope = {"data": skinfeat.load_dataset(synth_dir), "cache": synth_cache}
    exec(compile(_models_page_blocks()[1], "docs/models.md", "exec"), scope)
    assert 0.0 <= scope["fit"].metrics["balanced_accuracy"] <= 1.0
    assert set(scope["cv"].table["model"]) == {"prior", "linear"}
