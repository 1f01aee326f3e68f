"""Subgroup tables: the worst subgroup is found, intervals are paired group-bootstrap ones, small
subgroups are flagged, "missing" is a value, and descriptive columns never become inputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skinfeat.data.datasets import load_dataset
from skinfeat.data.metadata import MetadataEncoder
from skinfeat.data.presets import PRESETS
from skinfeat.data.spec import SpecError
from skinfeat.evaluate.subgroup_fields import analyse_subgroups, band, fit_bands, subgroup_columns
from skinfeat.evaluate.subgroup_plot import save_forest_plots
from skinfeat.evaluate.subgroups import MISSING, subgroup_table

SHARED = Path(__file__).resolve().parents[2] / "shared/data"
CLASSES = ["a", "b", "c"]


def scored_set(n_groups=600, signal=2.0, dead=None, seed=0, k=3, values=("x", "y", "z")):
    """Groups of 1-3 images; ``dead``: the subgroup whose predictions carry no class signal."""
    rng = np.random.default_rng(seed)
    size = rng.integers(1, 4, n_groups)
    groups = np.repeat(np.arange(n_groups), size).astype(str)
    site = np.repeat(rng.choice(list(values), n_groups), size)
    y = np.repeat(rng.integers(0, k, n_groups), size)
    logit = rng.normal(0, 1, (len(y), k))
    logit[np.arange(len(y)), y] += np.where(site == dead, 0.0, signal)
    proba = np.exp(logit) / np.exp(logit).sum(1, keepdims=True)
    return y, proba, proba.argmax(1), groups, pd.DataFrame({"site": site})


def test_the_subgroup_without_signal_is_the_worst_and_the_gap_excludes_zero(tmp_path):
    y, p, d, g, cols = scored_set(dead="z")
    r = subgroup_table(y, p, d, g, cols, CLASSES, n_boot=500)
    t = r.field("site")
    assert t.worst == "z" and t.best in ("x", "y")
    z = next(row for row in t.rows if row.value == "z")
    others = [row.headline for row in t.rows if row.value != "z"]
    assert z.ci95[1] < min(others)                 # its interval excludes the others' means
    assert t.gap_ci95[0] > 0                       # and the gap's interval excludes 0
    assert t.gap == pytest.approx(max(others) - z.headline)
    assert sum(row.n_images for row in t.rows) == len(y)
    assert set(z.sensitivity) == set(CLASSES)
    # the dead subgroup is also the worst calibrated: its probabilities still look confident
    assert z.classwise_ece > max(row.classwise_ece for row in t.rows if row.value != "z")
    json.dumps(r.to_dict())                        # metrics.json carries the same numbers
    text = r.to_markdown()
    assert "### site" in text and "`z`" in text and "excludes 0" in text
    paths = save_forest_plots(r, tmp_path)
    assert [p.name for p in paths] == ["subgroups_site.png"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG"


def test_without_an_effect_the_gap_interval_includes_zero():
    y, p, d, g, cols = scored_set(dead=None, values=("x", "y"), seed=3)
    t = subgroup_table(y, p, d, g, cols, CLASSES, n_boot=500).field("site")
    assert t.gap is not None and t.gap_ci95[0] <= 0 <= t.gap_ci95[1]
    assert "includes 0" in subgroup_table(y, p, d, g, cols, CLASSES, n_boot=200).to_markdown()


def test_intervals_resample_groups_not_images():
    """Whole groups (lesions) are drawn: with every image of a group duplicated 3 times, the
    interval of the image bootstrap would shrink; the group one must not."""
    y, p, d, g, cols = scored_set(n_groups=300, seed=5)
    base = subgroup_table(y, p, d, g, cols, CLASSES, n_boot=400)
    rep = lambda a: np.concatenate([a] * 3)        # noqa: E731
    tripled = subgroup_table(rep(y), np.concatenate([p] * 3), rep(d), rep(g),
                             pd.concat([cols] * 3, ignore_index=True), CLASSES, n_boot=400)
    w0 = np.diff(base.overall_ci95)[0]
    w3 = np.diff(tripled.overall_ci95)[0]
    assert w3 == pytest.approx(w0, rel=0.25)
    assert tripled.field("site").rows[0].n_groups == base.field("site").rows[0].n_groups


def test_small_subgroups_are_flagged_and_never_ranked():
    y, p, d, g, cols = scored_set(dead=None, seed=1)
    first_five = pd.unique(g)[:5]
    site = cols["site"].to_numpy().copy()
    site[np.isin(g, first_five)] = "tiny"
    p = p.copy()
    p[np.isin(g, first_five)] = np.eye(3)[y[np.isin(g, first_five)]]   # perfect: would be best
    d = p.argmax(1)
    r = subgroup_table(y, p, d, g, pd.DataFrame({"site": site}), CLASSES, n_boot=200)
    t = r.field("site")
    tiny = next(row for row in t.rows if row.value == "tiny")
    assert tiny.n_groups == 5 and tiny.flagged and tiny.headline == 1.0
    assert t.best != "tiny" and t.worst != "tiny"
    assert not any(row.flagged for row in t.rows if row.value != "tiny")
    assert "tiny \u2020" in r.to_markdown()


def test_a_rare_class_missing_from_a_resample_does_not_move_the_interval():
    """Two lesions of class c, both missed, in an otherwise perfect set: a resample without c
    must not count as 100 % (averaging over fewer classes); the point stays inside its CI."""
    y = np.r_[np.zeros(200, int), np.ones(200, int), [2, 2]]
    groups = np.arange(len(y)).astype(str)
    proba = np.eye(3)[np.r_[y[:-2], [0, 0]]] * 0.9 + 0.1 / 3
    r = subgroup_table(y, proba, proba.argmax(1), groups, pd.DataFrame({"all": ["x"] * len(y)}),
                       CLASSES, n_boot=400, min_groups=1)
    row = r.field("all").rows[0]
    assert row.headline == pytest.approx(2 / 3)
    assert row.ci95[0] <= row.headline <= row.ci95[1] < 0.9


def test_missing_is_a_value_of_its_own():
    y, p, d, g, cols = scored_set(seed=2)
    sex = np.where(np.arange(len(y)) % 4 == 0, None, np.where(np.arange(len(y)) % 2, "m", "f"))
    sex = pd.Series(sex, dtype=object)
    sex[1] = np.nan
    sex[3] = ""
    t = subgroup_table(y, p, d, g, pd.DataFrame({"sex": sex}), CLASSES, n_boot=100).field("sex")
    values = [row.value for row in t.rows]
    assert values[-1] == MISSING and sorted(values) == sorted(["f", "m", MISSING])
    assert next(row for row in t.rows if row.value == MISSING).n_images == \
        int(sex.isna().sum() + (sex == "").sum())


def test_a_binary_task_ranks_by_roc_auc():
    y, p, d, g, cols = scored_set(k=2, dead="z", seed=4)
    r = subgroup_table(y, p, d, g, cols, ["benign", "malignant"], n_boot=200)
    assert r.metric == "auc"
    t = r.field("site")
    assert t.worst == "z" and 0.3 < next(x for x in t.rows if x.value == "z").headline < 0.7
    assert "ROC AUC" in r.to_markdown()


def test_misaligned_inputs_are_refused():
    y, p, d, g, cols = scored_set()
    with pytest.raises(ValueError, match="subgroup columns"):
        subgroup_table(y, p, d, g, cols.iloc[:-1], CLASSES)


def test_bands_age_in_15_years_and_other_numbers_in_training_quartiles():
    train = pd.DataFrame({"age": np.linspace(0, 90, 100), "diameter_1": np.arange(100.0)})
    edges = fit_bands(train, ["age", "diameter_1"])
    assert edges["age"][:3] == [15.0, 30.0, 45.0]
    assert edges["diameter_1"] == pytest.approx(np.quantile(np.arange(100.0), [.25, .5, .75]))
    scored = pd.DataFrame({"age": [0.0, 14.9, 15.0, 44.0, np.nan],
                           "diameter_1": [0.0, 30.0, 60.0, 1000.0, np.nan]})
    out = band(scored, edges)
    assert list(out["age"].astype(object).where(out["age"].notna(), None)) == \
        ["0-14", "0-14", "15-29", "30-44", None]
    # quartiles come from the training rows: a scored value of 1000 is in the top band, not a
    # band of its own, and the scored rows' own spread changes nothing
    assert list(out["diameter_1"].astype(str))[:4] == ["< 24.8", "24.8 to 49.5",
                                                        "49.5 to 74.2", ">= 74.2"]
    assert fit_bands(train, ["diameter_1"]) == fit_bands(train, ["diameter_1"])


def test_band_order_is_kept_in_the_table():
    y, p, d, g, _ = scored_set(seed=6)
    age = pd.Series(np.random.default_rng(0).uniform(0, 89, len(y)))
    cols = band(pd.DataFrame({"age": age}), fit_bands(pd.DataFrame({"age": age}), ["age"]))
    t = subgroup_table(y, p, d, g, cols, CLASSES, n_boot=50).field("age")
    assert [r.value for r in t.rows] == ["0-14", "15-29", "30-44", "45-59", "60-74", "75-89"]


def test_subgroup_fields_default_override_and_none():
    spec = PRESETS["ham10000"]
    assert subgroup_columns(None, spec) == ("age", "sex", "localization", "dataset", "dx_type")
    assert subgroup_columns("none", spec) == ()
    assert subgroup_columns("Dataset, sex", spec) == ("dataset", "sex")
    with pytest.raises(ValueError, match="unknown field.*skin_tone.*expected none or from"):
        subgroup_columns("sex,skin_tone", spec)
    assert "fitspatrick" in subgroup_columns(None, PRESETS["pad-ufes-20"])
    assert "biopsed" in PRESETS["pad-ufes-20"].subgroup_only
    assert "anatom_site_general_challenge" in subgroup_columns(None, PRESETS["isic2020"])


def _ham_with_dataset(tmp_path: Path, n: int = 240) -> Path:
    rng = np.random.default_rng(0)
    lesions = np.repeat(np.arange(n // 2), 2)
    table = pd.DataFrame({
        "lesion_id": [f"HAM_{i:07d}" for i in lesions],
        "image_id": [f"ISIC_{i:07d}" for i in range(n)],
        "dx": np.repeat(rng.choice(list(PRESETS["ham10000"].classes), n // 2), 2),
        "dx_type": "histo", "age": rng.integers(5, 90, n).astype(float),
        "sex": rng.choice(["male", "female", "unknown"], n),
        "localization": rng.choice(["back", "face"], n),
        "dataset": np.repeat(rng.choice(["vidir_modern", "rosendahl"], n // 2), 2)})
    path = tmp_path / "HAM10000_metadata.csv"
    table.to_csv(path, index=False)
    return path


def test_the_ham10000_dataset_column_is_a_subgroup_and_never_an_input(tmp_path):
    data = load_dataset(_ham_with_dataset(tmp_path), "ham10000", images=False)
    assert "dataset" in data.spec.subgroup_only
    # beside the table that models read, never in it
    assert "dataset" not in data.table.columns and "dx_type" not in data.table.columns
    assert list(data.described.columns) == ["dataset", "dx_type"]
    encoder = MetadataEncoder(data.spec.numeric, data.spec.categorical).fit(data.table)
    inputs = [name for name, _, _ in encoder.fields]
    assert "dataset" not in inputs and "dx_type" not in inputs
    data.spec.check_inputs(inputs)
    with pytest.raises(SpecError, match="dataset.*never be a model input"):
        data.spec.check_inputs([*inputs, "dataset"])
    with pytest.raises(SpecError, match="never be a model input"):
        data.spec.with_columns(categorical=("sex", "dataset"))
    t = data.with_described()
    assert "dataset" in t.columns
    rng = np.random.default_rng(1)
    proba = rng.dirichlet(np.ones(7), len(t))
    r = analyse_subgroups(t, t, t["label"].to_numpy(), proba, proba.argmax(1), data.spec,
                          data.classes, n_boot=50, out=tmp_path / "run")
    assert [f.field for f in r.fields] == ["age", "sex", "localization", "dataset", "dx_type"]
    assert (tmp_path / "run" / "subgroups_dataset.png").exists()
    assert analyse_subgroups(t, t, t["label"].to_numpy(), proba, proba.argmax(1), data.spec,
                             data.classes, fields="none") is None


def test_the_bundle_fields_of_a_run_hold_no_subgroup_only_column(ship_runs):
    """The fitted encoder a bundle ships reads the spec's metadata fields, never a descriptive
    column (the bundle of a run on a table that carries ``dataset``)."""
    for run in ship_runs.values():
        config = json.loads(next(run.rglob("config.json")).read_text())
        encoder = MetadataEncoder.from_dict(config["encoder"])
        names = [name for name, _, _ in encoder.fields]
        assert names == ["age", "sex", "localization"]
        PRESETS["ham10000"].check_inputs(names)


@pytest.mark.slow   # benchmark-like: all 10,015 real embeddings, 5 folds, 200 bootstraps
@pytest.mark.skipif(not (SHARED / "HAM10000_metadata_with_dataset.csv").exists()
                    or not (SHARED / "ham10000-mobilenetv2-embeddings.h5").exists(),
                    reason="real HAM10000 embeddings not present")
def test_real_ham10000_by_acquisition_source():
    """Lesion-grouped 5-fold linear probe (LDA on 32 PCA components) on the real embeddings, pooled
    out-of-fold
    probabilities, subgroup table by source, sex, age band, localization: runs, and every
    image is in exactly one row per field (numbers go to the report, not into asserts)."""
    h5py = pytest.importorskip("h5py")
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from skinfeat.data.splits import fold_ids
    data = load_dataset(SHARED / "HAM10000_metadata_with_dataset.csv", "ham10000", images=False)
    with h5py.File(SHARED / "ham10000-mobilenetv2-embeddings.h5", "r") as f:
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in f["image_id"][:]]
        emb = f["embedding"][:]
    t = data.with_described().set_index("image_id").loc[ids].reset_index()
    from sklearn.decomposition import PCA
    emb = PCA(32, random_state=0).fit_transform(emb)     # a quick probe: seconds, not minutes
    folds = fold_ids(t, 5, "lesion", seed=0)
    proba = np.zeros((len(t), len(data.classes)))
    for k in range(5):
        clf = LinearDiscriminantAnalysis(priors=np.full(7, 1 / 7))
        clf.fit(emb[folds != k], t["label"][folds != k])
        proba[folds == k] = clf.predict_proba(emb[folds == k])
    r = analyse_subgroups(t, t, t["label"].to_numpy(), proba, proba.argmax(1), data.spec,
                          data.classes, fields="dataset,sex,age,localization", n_boot=200)
    for table in r.fields:
        assert sum(row.n_images for row in table.rows) == len(t)
    assert {row.value for row in r.field("dataset").rows} == \
        {"vidir_molemax", "vidir_modern", "rosendahl", "vienna_dias"}


def test_subset_auc_equals_the_weighted_mann_whitney():
    """The binary subgroup bootstrap's sort-once AUC gives metrics._weighted_auc's numbers
    (ties counted half, NaN where a resample lacks a side)."""
    from skinfeat.evaluate.metrics import _weighted_auc, group_resamples
    from skinfeat.evaluate.subgroups import _SubsetAUC

    rng = np.random.default_rng(1)
    for n, decimals in ((3000, None), (3000, 1), (60, 1)):
        y = rng.random(n) < 0.05
        s = rng.random(n) if decimals is None else np.round(rng.random(n), decimals)
        rows = np.flatnonzero(rng.random(n) < 0.6)
        auc = _SubsetAUC(s, y, rows)
        for w in group_resamples(n, rng.integers(0, n // 3, n), 200, 0, 100):
            np.testing.assert_array_equal(auc(w), _weighted_auc(s[rows], y[rows], w[:, rows]))
