"""The default model of fit-head and cv is the ensemble of the fusion head and the linear probe
(issue 29: +1.58 [+0.93, +2.23] points on image features and +1.06 [+0.30, +1.86] with
metadata over the head, 3 seeds). What a default has to keep: flags reach its members, the
reference recipe stays the published head, an older recipe still means the head, rows without
metadata get an exact image-only fallback, and the bundle explains and exports."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from skinfeat.api import make_recipe
from skinfeat.learn.ensemble import EnsembleConfig, EnsembleModel, member_config
from skinfeat.learn.head import HeadConfig
from skinfeat.learn.linear import LinearConfig, LinearProbe
from skinfeat.learn.models import default_models
from skinfeat.learn.runconfig import RunConfig


def _data(n=150, d=10, m=4, k=4, seed=0, missing_class=None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    if missing_class is not None:
        y[y == missing_class] = 0
    image = (rng.normal(size=(n, d)) + 1.5 * np.eye(k, d)[y]).astype(np.float32)
    meta = rng.normal(size=(n, m)).astype(np.float32)
    return image, meta, y


def test_the_default_recipe_is_the_head_and_linear_ensemble():
    recipe = make_recipe()
    assert recipe.model == "ensemble" and recipe.params.members == ("head", "linear")
    assert recipe.params.combine == "logmean" and RunConfig().model == "ensemble"
    assert default_models() == ("ensemble", "lgbm")
    # the head member keeps issue 29's defaults
    head = member_config(recipe.params, "head")
    assert (head.lr, head.max_epochs, head.patience) == (3e-4, 80, 10)


def test_head_flags_reach_the_head_member_and_are_stored():
    """On the old code --lr set nothing on an ensemble (its config has no such field)."""
    recipe = make_recipe(run={"seed": 3}, head={"lr": 1e-4, "max_epochs": 7, "cs": None})
    assert recipe.params.settings == {"lr": 1e-4, "max_epochs": 7}
    head = member_config(recipe.params, "head")
    assert (head.lr, head.max_epochs, head.seed) == (1e-4, 7, 3)
    assert member_config(recipe.params, "linear") == LinearConfig(seed=3)
    back = RunConfig.from_dict(json.loads(json.dumps(recipe.to_dict())))
    assert back == recipe
    with pytest.raises(ValueError, match="lr"):
        make_recipe(head={"lr": -1.0})
    with pytest.raises(ValueError, match="no member"):
        EnsembleConfig(members=("linear",), settings={"lr": 1e-3}).check()


def test_the_reference_recipe_and_older_recipes_stay_the_head():
    ref = make_recipe(run={"encoding": "reference"})
    assert ref.model == "head" and ref.params == HeadConfig.reference()
    assert default_models(ref.model) == ("head", "lgbm")
    # a recipe without "model" written when the head was the default, and a bare HeadConfig
    assert RunConfig.from_dict({"seed": 1, "head": {"lr": 0.01}}).model == "head"
    assert RunConfig.from_dict({"encoding": "reference"}).model == "head"
    assert RunConfig(params=HeadConfig(lr=0.01)).model == "head"
    assert RunConfig.from_dict({"seed": 1}).model == "ensemble"


@pytest.mark.parametrize("k,missing", [(4, None), (4, 2), (2, None)])
def test_the_probe_as_a_torch_module_equals_its_logits(k, missing):
    image, meta, y = _data(k=k, missing_class=missing)
    probe = LinearProbe(LinearConfig(cs=(0.1,), inputs="fused")).fit(
        (image, meta, y), (image, meta, y), n_classes=k)
    net = probe.torch_module()
    x, m = torch.tensor(image, requires_grad=True), torch.as_tensor(meta)
    z = net(x, m)
    np.testing.assert_allclose(z.detach().numpy(), probe.logits(image, meta), atol=1e-4)
    z[:, -1].sum().backward()   # explain's gradients reach the embedding
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_probe_fitted_on_zero_metadata_folds_into_the_exact_image_only_probe():
    image, meta, y = _data()
    zero = np.zeros_like(meta)
    fused = LinearProbe(LinearConfig(cs=(0.1,), inputs="fused")).fit(
        (image, zero, y), (image, zero, y), n_classes=4)
    alone = fused.image_only(image.shape[1], 4)
    assert alone.config.inputs == "image" and alone.mean_.shape == (image.shape[1],)
    np.testing.assert_allclose(alone.logits(image, meta), fused.logits(image, zero), atol=1e-9)


def test_an_ensemble_fitted_on_zero_metadata_folds_into_its_image_only_ensemble():
    image, meta, y = _data(n=160)
    zero = np.zeros_like(meta)
    cfg = EnsembleConfig(seed=0, settings={"epochs": 3})
    assert EnsembleModel.can_fold_fallback(cfg)
    assert not EnsembleModel.can_fold_fallback(EnsembleConfig(members=("head", "lgbm")))
    model = EnsembleModel(cfg).fit((image, zero, y), (image, zero, y), n_classes=4)
    assert model.members_[0].epochs_run_ == 3   # the setting reached the head member
    alone = model.image_only(image.shape[1], 4)
    assert alone.config.inputs == "image"
    assert [m.config.inputs for m in alone.members_] == ["image", "image"]
    np.testing.assert_allclose(alone.logits(image, meta), model.logits(image, zero), atol=1e-4)


@pytest.mark.slow
def test_fit_head_by_default_fits_the_ensemble_with_a_fallback_and_exports(
        synth_dir, synth_cache, synth_table, tmp_path):
    pytest.importorskip("onnxruntime")
    from conftest import run_cli

    from skinfeat.deploy.export import onnx_probabilities
    from skinfeat.deploy.model import Model
    from skinfeat.embed.transform import preprocess

    out = tmp_path / "fit"
    run_cli("fit-head", "--data", synth_dir, "--cache", synth_cache, "--out", out,
            "--max-epochs", "6", "--seed", "0", "--subgroups", "none")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "ensemble" and config["state"]["members"] == ["head", "linear"]
    assert config["run"]["ensemble"]["settings"] == {"max_epochs": 6}
    assert config["fallback"] == "fallback"
    fb = json.loads((out / "fallback" / "config.json").read_text())
    assert fb["model_type"] == "ensemble" and fb["head"]["inputs"] == "image"
    run_cli("export", "--model", out, "--onnx", tmp_path / "m.onnx")
    p = Model(out)
    rows = synth_table.iloc[:5][["image_id", "path", "age", "sex", "localization"]].astype(object)
    rows.iloc[1, 2:] = None      # every metadata field missing: the fallback's row
    rows.iloc[2, 3] = None
    want = p.predict_table(rows).proba
    _, spec = p._backbone()
    image = np.stack([preprocess(path, spec).numpy() for path in rows["path"]])
    got = onnx_probabilities(tmp_path / "m.onnx", image, p.encode_metadata(rows))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_the_probe_fits_on_one_thread_and_restores_the_callers(monkeypatch):
    """As the head and cv's workers: a fit-head probe equals the cv one, and its many small
    L-BFGS products do not wait on intra-op threads (benchmarks/default_model.py)."""
    from skinfeat.learn import linear_search

    seen, real = [], linear_search.LogisticBatch.solve

    def spy(self, *args, **kw):
        seen.append(torch.get_num_threads())
        return real(self, *args, **kw)

    monkeypatch.setattr(linear_search.LogisticBatch, "solve", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        image, meta, y = _data()
        LinearProbe(LinearConfig(cs=(0.01, 1.0))).fit((image, meta, y), (image, meta, y),
                                                       np.arange(len(y)) % 30, n_classes=4)
        assert seen and set(seen) == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
