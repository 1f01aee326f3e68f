"""compare: several caches (encoders) / models on identical grouped folds, the paired group
bootstrap of the out-of-fold predictions, and its statistics function on known differences."""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from skinfeat.evaluate.compare_stats import paired_difference, weighted_metric
from skinfeat.learn.head import HeadConfig
from skinfeat.learn.runconfig import RunConfig

pytestmark = pytest.mark.slow   # end to end: caches and CLI compared, many fits

DIM = 16
# The batched head trains every fold at once: seconds, where the linear probe's C grid takes
# a minute per run.
FAST = RunConfig(params=HeadConfig(lr=1e-3, max_epochs=15))   # 15 epochs: the larger step


def write_cache(path, table: pd.DataFrame, signal: float, noise_seed: int):
    """Embeddings whose first columns carry the class (``signal`` apart) under unit noise."""
    rng = np.random.default_rng(noise_seed)
    y = table["label"].to_numpy()
    emb = rng.normal(size=(len(table), DIM))
    emb[np.arange(len(y)), y % DIM] += signal
    with h5py.File(path, "w") as f:
        f.create_dataset("image_id", data=np.asarray(table["image_id"], dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("embedding", data=emb.astype(np.float32))
    return path


@pytest.fixture(scope="module")
def data(synth_dir):
    import skinfeat
    return skinfeat.load_dataset(synth_dir)


@pytest.fixture(scope="module")
def caches(synth_table, tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp_caches")
    return {"weak": write_cache(root / "weak.h5", synth_table, 0.2, 1),
            "strong": write_cache(root / "strong.h5", synth_table, 4.0, 2),
            "same1": write_cache(root / "same1.h5", synth_table, 1.0, 3),
            "same2": write_cache(root / "same2.h5", synth_table, 1.0, 4)}


def test_a_cache_with_more_signal_wins_outside_noise(data, caches, tmp_path):
    import skinfeat

    res = skinfeat.compare(data, [caches["weak"], caches["strong"]], models=("head",), recipe=FAST,
                           folds=3, n_boot=500, out=tmp_path / "cmp")
    assert list(res.table["entry"]) == ["weak/head", "strong/head"]
    assert res.reference == "weak/head"
    d = res.difference("strong/head")
    assert d["diff"] > 0.1 and d["low"] > 0 and not d["within_noise"]
    assert d["p_value"] < 0.05
    # the table holds mean +- sd over folds of every headline metric
    for k in ("balanced_accuracy", "accuracy", "macro_f1"):
        assert res.table[f"{k}_mean"].notna().all() and res.table[f"{k}_std"].notna().all()
    assert res.table.loc[1, "balanced_accuracy_mean"] > res.table.loc[0, "balanced_accuracy_mean"]
    out = tmp_path / "cmp"
    for name in ("compare_report.md", "compare_leaderboard.csv", "compare_forest.png",
                 "compare.json", "cv/weak/oof_predictions.csv", "cv/strong/oof_predictions.csv"):
        assert (out / name).is_file(), name
    board = pd.read_csv(out / "compare_leaderboard.csv")
    assert board.loc[0, "entry"] == "strong/head" and list(board["rank"]) == [1, 2]
    text = res.report_path.read_text()
    assert "better" in text and "bootstrap" in text and "lesion" in text
    # identical folds: both runs put every image in the same fold
    a = pd.read_csv(out / "cv/weak/cv_folds.csv").sort_values("image_id")
    b = pd.read_csv(out / "cv/strong/cv_folds.csv").sort_values("image_id")
    assert (a["fold_seed42"].to_numpy() == b["fold_seed42"].to_numpy()).all()


def test_caches_of_the_same_signal_are_within_noise(data, caches, tmp_path):
    import skinfeat

    res = skinfeat.compare(data, [caches["same1"], caches["same2"]], models=("head",), recipe=FAST,
                           folds=3, n_boot=500, out=tmp_path / "cmp")
    d = res.difference("same2/head")
    assert d["low"] <= 0 <= d["high"] and d["within_noise"]
    assert d["p_value"] > 0.05
    assert "within noise" in res.report_path.read_text()


def test_the_cli_is_a_thin_call(synth_dir, caches, tmp_path):
    from skinfeat.cli import main

    out = tmp_path / "cli"
    r = CliRunner().invoke(main, ["compare", "--data", str(synth_dir), "--cache",
                                  str(caches["weak"]), "--cache", str(caches["strong"]),
                                  "--models", "head", "--max-epochs", "2", "--folds", "3",
                                  "--n-boot", "200", "--jobs", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "strong/head" in r.output and "weak/head" in r.output
    assert (out / "compare_report.md").is_file()
    bad = CliRunner().invoke(main, ["compare", "--data", str(synth_dir), "--cache",
                                    str(caches["weak"]), "--models", "linear", "--metric",
                                    "auc", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "binary" in bad.output


def test_paired_difference_of_a_known_gap():
    """B gets right every row A gets right plus 20 more of 200: the balanced accuracy of two
    balanced classes rises by exactly 0.1; identical entries differ by 0 with p = 1."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    groups = np.repeat(np.arange(100), 2)             # two images per lesion
    pred_a = np.where(rng.random(200) < 0.6, y, 1 - y)
    pred_b = pred_a.copy()
    wrong = np.flatnonzero(pred_a != y)
    flip = np.r_[wrong[y[wrong] == 0][:10], wrong[y[wrong] == 1][:10]]
    pred_b[flip] = y[flip]
    proba = np.eye(2)[pred_a][None]
    ones = np.ones((1, 200))
    ba_a = weighted_metric("balanced_accuracy", y, proba[0], pred_a, ones)[0]
    ba_b = weighted_metric("balanced_accuracy", y, proba[0], pred_b, ones)[0]
    assert ba_b - ba_a == pytest.approx(0.1)
    d = paired_difference("balanced_accuracy", y, groups, (proba, pred_a[None]),
                          (proba, pred_b[None]), n_boot=400)
    assert d.estimate == pytest.approx(0.1)
    # B is never worse on any resample (paired): the interval sits above 0
    assert 0 < d.low <= 0.1 <= d.high and d.p_value < 0.01 and not d.within_noise
    same = paired_difference("balanced_accuracy", y, groups, (proba, pred_a[None]),
                             (proba, pred_a[None]), n_boot=100)
    assert same.estimate == 0 and same.low == same.high == 0 and same.p_value == 1.0
    assert same.within_noise


def test_resamples_keep_groups_together_and_the_pairing():
    """With one group per class the bootstrap cannot mix them: a resample holding one class
    only has an undefined AUC, and unpaired noise would widen the interval; paired, a constant
    gap on every row stays exactly that gap."""
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    groups = np.arange(100) // 5
    score = np.linspace(0, 1, 100)
    pa = np.stack([1 - score, score], 1)[None]
    pb = np.stack([1 - score[::-1], score[::-1]], 1)[None]    # the exact inverse ranking
    d = paired_difference("auc", y, groups, (pa, (score > .5).astype(int)[None]),
                          (pb, (score < .5).astype(int)[None]), n_boot=200)
    assert d.estimate == pytest.approx(-1.0) and d.low == pytest.approx(-1.0)
    assert d.high == pytest.approx(-1.0) and not d.within_noise


def test_metric_choice_is_checked(data, caches):
    import skinfeat

    with pytest.raises(ValueError, match="binary"):
        skinfeat.compare(data, [caches["weak"], caches["strong"]], metric="pauc80",
                         folds=3)
    with pytest.raises(ValueError, match="two entries"):
        skinfeat.compare(data, [caches["weak"]], models=("linear",), folds=3)
