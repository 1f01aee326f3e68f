"""The stage-two model protocol: training, bundles, predict and export dispatch through the
model's class (the registry, ``learn.models``) and its capability attributes, not kind strings."""
from __future__ import annotations

import dataclasses
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from plugin_model import PriorConfig, PriorModel

from skinfeat.cli import main
from skinfeat.deploy.model import Model
from skinfeat.embed.cache import read_cache
from skinfeat.errors import SkinfeatError
from skinfeat.learn.baseline import LGBMConfig, LGBMModel
from skinfeat.learn.head import HeadConfig
from skinfeat.learn.head_model import HeadModel
from skinfeat.learn.linear import LinearConfig, LinearProbe
from skinfeat.learn.models import MODELS, model_class
from skinfeat.learn.protocol import NotFittedError, StageTwoModel
from skinfeat.learn.runconfig import ConfigError, RunConfig
from skinfeat.learn.train import align_embeddings, as_dataset, bundle_config, fit_split
from skinfeat.workflows.fit import save_fit


def test_the_registry_and_capabilities():
    assert {"head", "lgbm", "linear"} <= set(MODELS)
    assert all(issubclass(c, StageTwoModel) and model_class(k) is c and c.kind == k
               for k, c in MODELS.items())
    built_in = {k: MODELS[k] for k in ("head", "lgbm", "linear")}
    assert [k for k, c in built_in.items() if c.exportable is None] == ["head", "linear"]
    assert [k for k, c in built_in.items() if c.differentiable] == ["head", "linear"]
    assert [k for k, c in built_in.items() if c.folds_fallback] == ["head", "linear"]
    assert [k for k, c in built_in.items() if c.batched] == ["head"]
    assert all(isinstance(c.exportable, str) and "\n" not in c.exportable
               for c in built_in.values() if c.exportable)
    # each model names its own weights file
    assert [c.file_name() for c in built_in.values()] == \
        ["model.safetensors", "model.lgbm.txt", "model.safetensors"]
    with pytest.raises(ValueError, match="head, lgbm, linear"):
        model_class("svm")


@pytest.mark.parametrize("config", [HeadConfig(), LGBMConfig(), LinearConfig(), RunConfig(),
                                    PriorConfig()])
def test_configs_are_frozen(config):
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1


def config_dataclasses() -> list[type]:
    """Every dataclass of the package named ``...Config``, found in the source (so a new one
    is checked without being listed here)."""
    import ast
    import importlib
    from pathlib import Path

    import skinfeat

    root = Path(skinfeat.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Config") and any(
                    ast.unparse(d).startswith("dataclass") for d in node.decorator_list):
                found.append(getattr(importlib.import_module(module), node.name))
    return found


def test_every_config_dataclass_is_frozen():
    found = config_dataclasses()
    assert {"HeadConfig", "LGBMConfig", "LinearConfig", "RunConfig", "CVConfig", "TuneConfig",
            "BundleConfig", "EnsembleConfig"} <= {c.__name__ for c in found}
    for cls in found:
        value = object.__new__(cls)   # no field values needed: assignment itself is refused
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, dataclasses.fields(cls)[0].name, None)


def test_fit_returns_the_model_with_trailing_underscore_state():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    m = rng.normal(size=(60, 2)).astype(np.float32)
    y = np.arange(60) % 3
    for model in (HeadModel(HeadConfig(epochs=2)), LGBMModel(LGBMConfig(n_estimators=5,
                                                                         num_threads=1)),
                  LinearProbe(LinearConfig(cs=(1.0,)))):
        assert model.fit((x, m, y), (x, m, y), n_classes=3) is model
        assert len(model.class_weights_) == 3
        assert model.logits(x, m).shape == (60, 3)
        np.testing.assert_allclose(model.predict_proba(x, m).sum(axis=1), 1.0, atol=1e-6)
    assert HeadModel(HeadConfig(epochs=2)).fit((x, m, y), (x, m, y)).epochs_run_ == 2


def test_a_model_used_before_fit_is_a_one_line_error():
    x, m = np.zeros((4, 6), np.float32), np.zeros((4, 2), np.float32)
    head = HeadModel(HeadConfig())
    for use in (lambda: head.logits(x, m), head.to_bundle, head.torch_module,
                lambda: head.image_only(6, 3),
                lambda: LGBMModel(LGBMConfig()).meta_contributions(x[:1], m[:1])):
        with pytest.raises(NotFittedError, match=r"^this (fusion head|LightGBM) is not fitted"):
            use()
    assert issubclass(NotFittedError, SkinfeatError) and issubclass(NotFittedError,
                                                                    AttributeError)


def test_check_returns_a_new_value_and_leaves_the_recipe_alone():
    recipe = RunConfig(split="lesion")   # the older spelling, read as group
    assert recipe.split == "group" and recipe.check() == recipe
    with pytest.raises(ConfigError, match="LGBMConfig"):
        RunConfig(model="lgbm", params=HeadConfig()).check()
    with pytest.raises(ConfigError, match="head.lr"):
        RunConfig(params=HeadConfig(lr=-1.0)).check()


@pytest.mark.slow   # end to end (CLI or worker processes)
def test_a_new_model_is_one_class_and_one_entry(monkeypatch, synth_table, synth_cache,
                                                tmp_path):
    """Fit, calibrate, bundle, predict and export a model the code base has never heard of."""
    monkeypatch.setitem(MODELS, "prior", PriorModel)
    data = as_dataset(synth_table)
    contents = read_cache(synth_cache)
    table, image = align_embeddings(data.table, contents)
    data = replace(data, table=table)
    n = len(table)
    rows = {"train": np.arange(0, n // 2), "val": np.arange(n // 2, 3 * n // 4),
            "test": np.arange(3 * n // 4, n)}
    fit = fit_split(data, image, rows, RunConfig(model="prior",
                                                 params=PriorConfig(inputs="image")))
    assert fit.model.kind == "prior" and isinstance(fit.model, PriorModel)
    config = bundle_config(data, fit, contents.identity, "random", embed_dim=image.shape[-1],
                           tta=False, split="lesion", seed=0)
    out = tmp_path / "prior"
    save_fit(out, fit, config)
    assert (out / "model.prior.txt").is_file()   # the text weights, in the file it names
    p = Model(out)
    assert isinstance(p.model, PriorModel)
    preds = p.predict_table(table.iloc[rows["test"]], cache=synth_cache)
    np.testing.assert_allclose(preds.proba, fit.calibrator(fit.test_logits), atol=1e-9)
    r = CliRunner().invoke(main, ["export", "--model", str(out), "--onnx",
                                  str(tmp_path / "m.onnx")])
    assert r.exit_code == 1 and "a class prior (nothing to export)" in r.output
