"""The image-only fallback of a fused head (issue 20, item 5): rows whose every metadata field
is missing are scored by an image-only model trained on the same split, so a fused model is the
image-only model on such rows by construction (``learn/fallback.py``)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from test_byo import write_foreign_cache

from skinfeat.data.datasets import load_dataset
from skinfeat.deploy.bundle import BundleError, load_typed
from skinfeat.deploy.model import Model
from skinfeat.embed.cache import read_cache
from skinfeat.learn.cv import CVConfig, run_cv
from skinfeat.learn.fallback import fallback_rows, image_part
from skinfeat.learn.head import HeadConfig, head_logits
from skinfeat.learn.head_batch import fit_heads
from skinfeat.learn.head_model import HeadModel
from skinfeat.learn.runconfig import RunConfig
from skinfeat.learn.train import align_embeddings, fit_split

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs

FIELDS = ("age", "sex", "localization")


@pytest.fixture(scope="module")
def blanked(synth_dir, synth_table, tmp_path_factory):
    """The synthetic set with every metadata field blank on a third of its rows, a
    ``dataset`` column that names the class (a subgroup column, never an input), and a cache
    of embeddings that carry the class."""
    root = tmp_path_factory.mktemp("fallback")
    table = pd.read_csv(synth_dir / "HAM10000_metadata.csv", dtype=str, keep_default_na=False)
    rng = np.random.default_rng(3)
    blank = rng.random(len(table)) < 0.35
    table.loc[blank, "age"] = ""
    table.loc[blank, ["sex", "localization"]] = "unknown"
    table["dataset"] = "site_" + table["dx"]   # leaks the class: must never reach a model
    (root / "data").mkdir()
    table.to_csv(root / "data" / "HAM10000_metadata.csv", index=False)
    labels = synth_table.set_index("image_id").loc[table["image_id"], "label"].to_numpy()
    write_foreign_cache(root / "cache.h5", table["image_id"], labels, dim=16)
    return root, dict(zip(table["image_id"], blank, strict=False))


def _dataset(root):
    data = load_dataset(root / "data", images=False)
    table, image = align_embeddings(data.with_described(), read_cache(root / "cache.h5"))
    return replace(data, table=table[list(data.table.columns)],
                   described=table[list(data.described.columns)]), image


def _table(root) -> pd.DataFrame:
    """The raw table, as predict reads it from cached embeddings (path: the image id)."""
    table = pd.read_csv(root / "data" / "HAM10000_metadata.csv", dtype=str,
                        keep_default_na=False)
    return table.assign(path=table["image_id"])


def _rows(n: int) -> dict[str, np.ndarray]:
    return {"train": np.arange(0, n // 2), "val": np.arange(n // 2, 3 * n // 4),
            "test": np.arange(3 * n // 4, n)}


@pytest.mark.parametrize("head", ["reference", "film"])
def test_folding_the_zero_metadata_member_is_exact(head):
    """The fallback trains as a fused member on all-zero metadata; as an image-only head it
    gives the same logits."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12)).astype(np.float32)
    m = rng.normal(size=(200, 5)).astype(np.float32)
    y = rng.integers(0, 3, 200)
    cfg = HeadConfig(head=head, epochs=3)
    r = fit_heads([(image_part((x, m, y)), image_part((x, m, y)))], 3, cfg)[0]
    folded = HeadModel.fitted(cfg, r.model).image_only(12, 3)
    assert folded.net.inputs == "image" and not folded.net.use_meta
    np.testing.assert_allclose(folded.logits(x, m), head_logits(r.model, x, np.zeros_like(m)),
                               atol=1e-5)


def test_fallback_rows_are_the_all_missing_encoding():
    missing = np.array([0.0, 1.0, 0.0, 0.0])
    meta = np.array([[0.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    np.testing.assert_array_equal(fallback_rows(meta, missing), [True, False, False])
    assert not fallback_rows(meta, np.zeros(0)).any()   # no fields: nothing falls back


@pytest.mark.parametrize("model", ["head", "ensemble"])
def test_split_fit_scores_missing_rows_with_the_image_only_model(blanked, model):
    """The head, and the default ensemble (head + linear probe: each member folds its own
    image-only model), score the rows without metadata with their image-only fallback."""
    from skinfeat.learn.ensemble import EnsembleConfig

    root, blank = blanked
    data, image = _dataset(root)
    rows = _rows(len(data.table))
    params = HeadConfig(seed=1, epochs=4) if model == "head" else \
        EnsembleConfig(seed=1, settings={"epochs": 4})
    fit = fit_split(data, image, rows, RunConfig(seed=1, params=params))
    assert fit.model.kind == model
    test = data.table.iloc[rows["test"]]
    want = np.array([blank[i] for i in test["image_id"]])
    assert fit.fallback is not None and 0 < want.sum() < len(want)
    np.testing.assert_array_equal(fit.missing_rows, want)
    assert fit.fell_back == int(want.sum())
    enc = fit.encoder
    assert set(enc.numeric) | set(enc.categorical) == set(FIELDS)   # no dataset, no dx_type
    meta = enc.transform(test)
    own = fit.calibrator(fit.model.logits(image[rows["test"]], meta))
    fb = fit.fallback
    fb_proba = fb.calibrator(fb.model.logits(image[rows["test"]], meta))
    assert fb.model.inputs == "image"
    np.testing.assert_array_equal(fit.test_proba[want], fb_proba[want])
    np.testing.assert_array_equal(fit.test_proba[~want], own[~want])
    assert np.abs(own[want] - fb_proba[want]).max() > 1e-4   # two different models
    # The fallback's own calibration: fitted on the same val rows, not the fused model's.
    assert fb.calibrator.to_dict() != fit.calibrator.to_dict()


def test_bundle_round_trip_and_reports(blanked, tmp_path):
    root, blank = blanked
    out = tmp_path / "run"
    run_cli("fit-head", "--data", root / "data", "--cache", root / "cache.h5", "--out", out,
            "--epochs", "4", "--seed", "2", "--subgroups", "none")
    config = json.loads((out / "config.json").read_text())
    assert config["fallback"] == "fallback"
    fb_config = json.loads((out / "fallback" / "config.json").read_text())
    assert fb_config["head"]["inputs"] == "image" and "fallback" not in fb_config
    for c in (config, fb_config):   # the subgroup-only columns never reach either model
        fields = set(c["encoder"]["numeric"]) | set(c["encoder"]["categorical"])
        assert fields == set(FIELDS)
    info = json.loads((out / "metrics.json").read_text())["info"]
    n_test = info["sizes"]["test"]
    assert info["fallback"].endswith(f"of {n_test} scored row(s)")
    assert "image-only fallback" in (out / "report.md").read_text()

    table = _table(root)
    p = Model(out)
    preds = p.predict_table(table, cache=root / "cache.h5")
    want = np.array([blank[i] for i in table["image_id"]])
    assert preds.fell_back == int(want.sum())
    fb = Model(out / "fallback").predict_table(table, cache=root / "cache.h5")
    np.testing.assert_array_equal(preds.proba[want], fb.proba[want])
    np.testing.assert_array_equal(preds.decided[want], fb.decided[want])
    p.fallback = None   # the fused model alone: the rows with metadata are its own
    fused = p.predict_table(table, cache=root / "cache.h5")
    np.testing.assert_array_equal(preds.proba[~want], fused.proba[~want])
    # evaluate scores through predict and says how many rows fell back.
    ev = tmp_path / "ev"
    run_cli("evaluate", "--model", out, "--data", root / "data", "--cache", root / "cache.h5",
            "--out", ev, "--include-seen", "--subgroups", "none")
    assert json.loads((ev / "evaluate_metrics.json").read_text())["info"]["fell_back"] == \
        int(want.sum())
    assert "image-only fallback:" in (ev / "evaluate_report.md").read_text()
    # The dataset / dx_type columns change nothing (they are not inputs).
    other = table.assign(dataset="elsewhere", dx_type="histo")
    again = Model(out).predict_table(other, cache=root / "cache.h5")
    np.testing.assert_array_equal(again.proba, preds.proba)


def test_no_fallback_bundle_is_an_old_bundle(blanked, tmp_path):
    root, _ = blanked
    out = tmp_path / "plain"
    run_cli("fit-head", "--data", root / "data", "--cache", root / "cache.h5", "--out", out,
            "--epochs", "4", "--seed", "2", "--subgroups", "none", "--no-fallback")
    config = json.loads((out / "config.json").read_text())
    assert "fallback" not in config and not (out / "fallback").exists()
    assert config["run"]["fallback"] is False
    p = Model(out)
    assert p.fallback is None
    table = _table(root)
    preds = p.predict_table(table, cache=root / "cache.h5")
    assert preds.fell_back == 0
    np.testing.assert_array_equal(preds.proba, p.calibrate(p.logits(
        *p.cached(table["image_id"].tolist(), root / "cache.h5")[:1], table)))


def test_a_broken_fallback_reference_is_refused(blanked, tmp_path):
    root, _ = blanked
    out = tmp_path / "run"
    run_cli("fit-head", "--data", root / "data", "--cache", root / "cache.h5", "--out", out,
            "--epochs", "2", "--subgroups", "none")
    config = json.loads((out / "config.json").read_text())
    for bad, message in (("../elsewhere", "folder name inside the bundle"),
                         ("nothing_here", "no nothing_here/config.json")):
        (out / "config.json").write_text(json.dumps({**config, "fallback": bad}))
        with pytest.raises(BundleError, match=message):
            Model(out)
    (out / "config.json").write_text(json.dumps(config))
    assert load_typed(out)[1].fallback == "fallback"


def test_reference_recipe_and_group_context_keep_no_fallback(blanked):
    root, _ = blanked
    data, image = _dataset(root)
    fit = fit_split(data, image, _rows(len(data.table)),
                    RunConfig.from_dict({"encoding": "reference", "head": {"epochs": 2}}))
    assert fit.fallback is None and fit.fell_back == 0


def test_cv_reuses_the_image_only_fold_model(blanked, tmp_path):
    """With the image input set in the run, a fused fold's missing rows take the same fold's
    image-only predictions (no extra training); without it, the fallback trains in the batch."""
    root, blank = blanked
    data = load_dataset(root / "data", images=False)
    contents = read_cache(root / "cache.h5")
    head = HeadConfig(epochs=3)
    both = run_cv(data, contents, CVConfig(folds=2, seeds=(0,), models=("head",),
                                           inputs=("image", "fused"),
                                           recipe=RunConfig(params=head)))
    oof = both.oof
    img = oof[oof["inputs"] == "image"].set_index("image_id")
    fused = oof[oof["inputs"] == "fused"].set_index("image_id")
    cols = [c for c in oof.columns if c.startswith("p_")]
    missing = np.array([blank[i] for i in fused.index])
    assert 0 < missing.sum() < len(missing)
    np.testing.assert_array_equal(fused.loc[missing, cols].to_numpy(),
                                  img.loc[fused.index[missing], cols].to_numpy())
    assert (np.abs(fused.loc[~missing, cols].to_numpy()
                   - img.loc[fused.index[~missing], cols].to_numpy()).max() > 1e-4)
    fell = {r["inputs"]: sum(x["fell_back"] for x in both.records if x["inputs"] ==
                             r["inputs"]) for r in both.records}
    assert fell == {"image": 0, "fused": int(missing.sum())}
    alone = run_cv(data, contents, CVConfig(folds=2, seeds=(0,), models=("head",),
                                            inputs=("fused",), recipe=RunConfig(params=head)))
    assert sum(r["fell_back"] for r in alone.records) == int(missing.sum())


def test_cv_saved_fused_folds_carry_their_fallback(blanked, tmp_path):
    root, blank = blanked
    out = tmp_path / "cv"
    run_cli("cv", "--data", root / "data", "--cache", root / "cache.h5", "--out", out,
            "--folds", "2", "--models", "head", "--inputs", "image,fused", "--epochs", "2",
            "--save-models", "--subgroups", "none", "--jobs", "1")
    fold = out / "models" / "head_fused" / "seed42_fold0"
    assert load_typed(fold)[1].fallback == "fallback"
    image_fold = out / "models" / "head_image" / "seed42_fold0"
    table = _table(root)
    want = np.array([blank[i] for i in table["image_id"]])
    got = Model(fold).predict_table(table, cache=root / "cache.h5")
    ref = Model(image_fold).predict_table(table, cache=root / "cache.h5")
    np.testing.assert_array_equal(got.proba[want], ref.proba[want])
    assert got.fell_back == int(want.sum())
    assert "Image-only fallback (head, fused)" in (out / "cv_report.md").read_text()
    ens = Model(out / "models" / "head_fused").predict_table(table, cache=root / "cache.h5")
    assert np.isfinite(ens.proba).all()


def test_explain_scores_a_row_without_metadata_by_the_fallback(ship_runs, synth_table):
    """explain (and serve, which answers through it) on a raw image: no metadata -> the
    fallback's probabilities and decision; with metadata -> the fused head's."""
    from skinfeat.deploy.explain import Explainer

    p = Model(ship_runs["head"])
    assert p.fallback is not None
    path = str(synth_table["path"].iloc[0])
    emb, _ = p.embed([path])
    none = pd.DataFrame(index=range(1))
    ex = Explainer(p).explain(path, {})
    want = p.fallback.calibrate(p.fallback.logits(emb, none))[0]
    np.testing.assert_allclose(ex.proba, want, atol=1e-6)
    assert np.abs(want - p.calibrate(p.logits(emb, none))[0]).max() > 1e-4   # not the fused
    assert ex.predicted == p.classes[int(p.fallback.decide(want[None])[0])]
    given = {"age": 55, "sex": "male", "localization": "back"}
    ex = Explainer(p).explain(path, given)
    np.testing.assert_allclose(
        ex.proba, p.calibrate(p.logits(emb, pd.DataFrame([given], dtype=object)))[0], atol=1e-6)
