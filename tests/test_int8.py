"""int8 stage one (OpenVINO + NNCF, an optional extra): cache identity, resume, predict."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from conftest import TINY  # noqa: E402

from skinfeat.deploy.bundle import BundleError  # noqa: E402
from skinfeat.embed.cache import CacheError, read_cache  # noqa: E402
from skinfeat.embed.engines import (  # noqa: E402
    Int8Embedder,
    calibration_files,
    calibration_identity,
    quantized_path,
)
from skinfeat.embed.extract import extract  # noqa: E402
from skinfeat.embed.weights import WeightSource  # noqa: E402

pytestmark = pytest.mark.slow   # encoder families: real encoders, exports, int8

KW = dict(backbone=TINY, weights=WeightSource("random"), num_workers=0, batch_size=8,
          layers="last", average_views=())   # synth_cache's: the defaults before issue 29


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def int8_cache(synth_table, tmp_path_factory):
    """The whole synthetic set embedded in int8, calibrated on 32 of its images."""
    path = tmp_path_factory.mktemp("int8") / "int8.h5"
    extract(synth_table, path, precision="int8", calibration_images=32, **KW)
    return path


def test_int8_identity_names_the_calibration_set(int8_cache, synth_table, synth_cache):
    c = read_cache(int8_cache)
    files = calibration_files(synth_table["image_id"], synth_table["path"], 32)
    assert c.identity["precision"] == "int8"
    assert c.identity["calibration"] == calibration_identity(files)
    assert c.identity["calibration"]["images"] == 32
    assert quantized_path(c.identity).is_file()  # built once, kept on disk
    # Agreement with fp32 on test_convnext's random weights: an int8 model, not another model.
    fp32 = read_cache(synth_cache)
    cos = cosine(c.embeddings, fp32.embeddings[fp32.rows_for(list(c.image_ids))])
    assert np.median(cos) > 0.99 and cos.min() > 0.95, (cos.min(), np.median(cos))


def test_int8_and_fp32_rows_never_mix(int8_cache, synth_cache, synth_table):
    with pytest.raises(CacheError, match="precision"):
        extract(synth_table, synth_cache, precision="int8", calibration_images=32, **KW)
    with pytest.raises(CacheError, match="precision"):
        extract(synth_table, int8_cache, precision="fp32", **KW)
    # Another calibration set is another quantized model: refused too.
    with pytest.raises(CacheError, match="calibration"):
        extract(synth_table, int8_cache, precision="int8", calibration_images=16, **KW)


def test_int8_rerun_skips_everything(int8_cache, synth_table):
    before = read_cache(int8_cache).embeddings
    res = extract(synth_table, int8_cache, precision="int8", calibration_images=32, **KW)
    assert res.embedded == 0 and res.skipped == len(synth_table)
    np.testing.assert_array_equal(read_cache(int8_cache).embeddings, before)


def test_a_grown_int8_cache_keeps_its_quantized_model(synth_table, tmp_path, monkeypatch):
    """New images shift the hash-ranked calibration sample; the cache keeps the model that
    filled it, so old and new rows come from one quantized model."""
    small, grown = synth_table.iloc[:20], synth_table.iloc[:40]
    n = 6
    first = calibration_identity(calibration_files(small["image_id"], small["path"], n))
    assert first != calibration_identity(calibration_files(grown["image_id"], grown["path"], n))
    path = tmp_path / "g.h5"
    extract(small, path, precision="int8", calibration_images=n, **KW)
    before = read_cache(path)
    res = extract(grown, path, precision="int8", calibration_images=n, **KW)
    after = read_cache(path)
    assert res.embedded == 20 and after.identity == before.identity
    assert after.identity["calibration"] == first
    np.testing.assert_array_equal(after.embeddings[after.rows_for(list(before.image_ids))],
                                  before.embeddings)
    # The new rows are exactly what the stored quantized model gives.
    from skinfeat.embed.transform import TransformSpec, preprocess
    spec = TransformSpec.from_dict(after.identity["preprocessing"])
    new = grown.iloc[20:]
    x = torch.stack([preprocess(p, spec) for p in new["path"]])
    want = Int8Embedder(quantized_path(after.identity))(x).numpy()
    np.testing.assert_allclose(after.embeddings[after.rows_for(new["image_id"].tolist())], want,
                               rtol=1e-4, atol=1e-4)
    # Without the stored model and with its calibration images gone from the table: a clear error.
    shutil.rmtree(quantized_path(after.identity).parent)
    more = synth_table.iloc[:60]
    with pytest.raises(RuntimeError, match="not in"):
        extract(more, path, precision="int8", calibration_images=n, **KW)


def test_int8_runs_on_the_cpu_even_beside_a_gpu(synth_table, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    res = extract(synth_table.iloc[:4], tmp_path / "c.h5", precision="int8", calibration_images=4,
                  **KW)
    assert res.device == "cpu" and res.precision == "int8"
    with pytest.raises(ValueError, match="int8 runs on the CPU"):
        extract(synth_table.iloc[:4], tmp_path / "d.h5", precision="int8", device="cuda", **KW)


@pytest.fixture(scope="module")
def int8_run(synth_table, int8_cache, tmp_path_factory):
    from skinfeat.learn.head import HeadConfig
    from skinfeat.learn.runconfig import RunConfig
    from skinfeat.workflows.fit import fit_run
    out = tmp_path_factory.mktemp("int8run") / "head"
    fit_run(synth_table, int8_cache, out, RunConfig(seed=0, params=HeadConfig(max_epochs=8)))
    return out


def test_predict_on_an_int8_model_matches_the_cached_path(int8_run, int8_cache, synth_table):
    """Predict rebuilds the same quantized model (from the store) and embeds through it.

    Tolerance: the same int8 IR on the same pixels; only the batch composition differs (one image
    here, batches of 8 in the cache), which can change oneDNN's blocking and so the last float
    bits of the fp32 accumulations around the int8 layers: 1e-4 on probabilities is far above
    that and far below any change of model.
    """
    from test_predict import cached_probabilities

    from skinfeat.deploy.model import Model

    rows = synth_table.iloc[[3, 7]]
    p = Model(int8_run)
    got = p.predict_table(rows).proba
    want = cached_probabilities(int8_run, int8_cache, rows)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_the_bundle_carries_its_int8_model(int8_run, int8_cache, synth_table, monkeypatch,
                                          tmp_path):
    """A machine that never quantized (an empty store) predicts from the bundle's copy."""
    from test_predict import cached_probabilities

    from skinfeat.deploy.model import Model

    copies = list((int8_run / "int8").glob("*/model.xml"))
    assert len(copies) == 1 and copies[0].with_suffix(".bin").is_file()
    monkeypatch.setenv("SKINFEAT_HOME", str(tmp_path / "empty"))
    rows = synth_table.iloc[[3, 7]]
    got = Model(int8_run).predict_table(rows).proba
    np.testing.assert_allclose(got, cached_probabilities(int8_run, int8_cache, rows), atol=1e-4,
                               rtol=0)
    assert not (tmp_path / "empty").exists()   # nothing was rebuilt


def test_predict_without_the_quantized_model_says_how_to_rebuild(int8_run, int8_cache,
                                                                 synth_table, monkeypatch,
                                                                 tmp_path):
    from skinfeat.deploy.model import Model

    bare = tmp_path / "bare"
    shutil.copytree(int8_run, bare, ignore=shutil.ignore_patterns("int8"))
    monkeypatch.setenv("SKINFEAT_HOME", str(tmp_path / "empty"))
    with pytest.raises(BundleError, match="rerun skinfeat extract --precision int8"):
        Model(bare).predict_table(synth_table.iloc[[0]])


def test_a_fold_ensemble_holds_one_int8_copy_for_its_folds(int8_cache, synth_table, tmp_path,
                                                           monkeypatch):
    from skinfeat.deploy.model import Model
    from skinfeat.learn.cv import CVConfig
    from skinfeat.learn.head import HeadConfig
    from skinfeat.learn.runconfig import RunConfig
    from skinfeat.workflows.cv import cv_run

    cv_run(synth_table, int8_cache, tmp_path / "cv", CVConfig(
        folds=2, models=("head",), inputs=("fused",),
        recipe=RunConfig(params=HeadConfig(max_epochs=2))),
        save_models=True)
    ensemble = tmp_path / "cv" / "models" / "head_fused"
    assert len(list(ensemble.glob("int8/*/model.xml"))) == 1
    assert not list(ensemble.glob("seed*/int8"))          # the folds share the ensemble's copy
    monkeypatch.setenv("SKINFEAT_HOME", str(tmp_path / "empty"))
    rows = synth_table.iloc[[1]]
    assert np.isfinite(Model(ensemble).predict_table(rows).proba).all()
    fold = next(ensemble.glob("seed*"))
    assert np.isfinite(Model(fold).predict_table(rows).proba).all()
