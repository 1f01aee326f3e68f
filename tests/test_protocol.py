"""The stage-two model protocol: training, bundles, predict and export dispatch through the
model's class (``learn.models.MODELS``) and its capability attributes, not kind strings."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from skinfeat.learn.runconfig import RunConfig
from skinfeat.cli import main
from skinfeat.deploy.predict import Predictor
from skinfeat.embed.cache import read_cache
from skinfeat.learn.baseline import LGBMConfig
from skinfeat.learn.head import HeadConfig
from skinfeat.learn.models import MODELS, model_class
from skinfeat.learn.protocol import StageTwoModel, Trained
from skinfeat.learn.train import align_embeddings, as_dataset, bundle_config, fit_split
from skinfeat.workflows.fit import save_fit


class PriorModel(StageTwoModel):
    """A model this test adds: the training rows' class frequencies, whatever the input."""
    kind, title, weights_format = "prior", "class prior", "text"
    exportable = "a class prior (nothing to export)"

    def __init__(self, log_prior: np.ndarray, inputs: str):
        self.log_prior, self._inputs = log_prior, inputs

    @staticmethod
    def recipe(head_cfg, lgbm_cfg):
        return lgbm_cfg.inputs

    @classmethod
    def fit(cls, train, val, n_classes, recipe, meta_fields=None, groups=None):
        counts = np.bincount(train[2], minlength=n_classes) + 1.0
        return Trained(cls(np.log(counts / counts.sum()), recipe), class_weights=None)

    @property
    def config(self):
        return {"inputs": self._inputs}

    def logits(self, image, meta, tta=False):
        return np.tile(self.log_prior, (len(meta), 1))

    def to_bundle(self):
        return {}, " ".join(map(repr, self.log_prior.tolist()))

    @classmethod
    def from_bundle(cls, config, weights, dims, load_state=None):
        return cls(np.array([float(x) for x in weights.split()]), config["head"]["inputs"])


def test_the_registry_and_capabilities():
    assert set(MODELS) == {"head", "lgbm", "linear"}
    assert all(issubclass(c, StageTwoModel) and model_class(k) is c and c.kind == k
               for k, c in MODELS.items())
    assert [k for k, c in MODELS.items() if c.exportable is None] == ["head"]
    assert [k for k, c in MODELS.items() if c.differentiable] == ["head"]
    assert all(isinstance(c.exportable, str) and "\n" not in c.exportable
               for c in MODELS.values() if c.exportable)
    with pytest.raises(ValueError, match="head, lgbm, linear"):
        model_class("svm")


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
    fit = fit_split(data, image, rows, RunConfig(model="prior", head=HeadConfig(),
                                                 lgbm=LGBMConfig(inputs="image")))
    assert fit.trained.kind == "prior" and isinstance(fit.trained.model, PriorModel)
    config = bundle_config(data, fit, contents.identity, "random", embed_dim=image.shape[-1],
                           tta=False, split="lesion", seed=0)
    out = tmp_path / "prior"
    save_fit(out, fit, config)
    assert (out / "model.lgbm.txt").is_file()   # its text weights, where text weights go
    p = Predictor(out)
    assert isinstance(p.trained.model, PriorModel)
    preds = p.predict_table(table.iloc[rows["test"]], cache=synth_cache)
    np.testing.assert_allclose(preds.proba, fit.calibrator(fit.test_logits), atol=1e-9)
    r = CliRunner().invoke(main, ["export", "--model", str(out), "--onnx",
                                  str(tmp_path / "m.onnx")])
    assert r.exit_code == 1 and "a class prior (nothing to export)" in r.output
