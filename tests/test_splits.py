"""No lesion on both sides; every class in train; the image split is the reference's."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from skinfeat.data.splits import assign_split, check_grouped, fold_ids, load_split, save_split


def test_lesion_split_keeps_lesions_whole_and_classes_in_train(synth_table):
    split = assign_split(synth_table, "lesion", seed=42)
    per_lesion = (pd.DataFrame({"l": synth_table["group_id"], "s": split})
                  .groupby("l")["s"].nunique())
    assert per_lesion.max() == 1
    assert set(synth_table.loc[split == "train", "dx"]) == set(synth_table["dx"])
    assert set(split) == {"train", "val", "test"}
    assert 0.12 < (split == "test").mean() < 0.30


def test_image_split_is_the_reference_split(synth_table):
    split = assign_split(synth_table, "image", seed=42)
    _, ref_test = train_test_split(np.arange(len(synth_table)), test_size=0.2,
                                   stratify=synth_table["dx"], random_state=42)
    assert set(np.flatnonzero(split == "test")) == set(ref_test)


def test_image_split_lets_lesions_cross_and_the_guard_sees_it(synth_table):
    split = assign_split(synth_table, "image", seed=42)
    with pytest.raises(ValueError, match="both sides"):
        check_grouped(synth_table["group_id"], split)


def test_folds_disjoint_by_lesion(synth_table):
    folds = fold_ids(synth_table, 5, "lesion", seed=0)
    assert set(folds) == set(range(5))
    assert pd.Series(folds).groupby(synth_table["group_id"].to_numpy()).nunique().max() == 1


def test_too_few_lesions_for_folds_is_explained(synth_table):
    with pytest.raises(ValueError, match="Use fewer folds"):
        fold_ids(synth_table, 50, "lesion")


def test_saved_split_round_trip_and_refusal(synth_table, tmp_path):
    split = assign_split(synth_table)
    save_split(synth_table, split, tmp_path / "splits.csv", "lesion", 42)
    again, kind, seed = load_split(synth_table, tmp_path / "splits.csv")
    assert kind == "group" and seed == 42 and (again == split).all()
    other = synth_table.assign(image_id=synth_table["image_id"] + "x")
    with pytest.raises(ValueError, match="not in the saved split"):
        load_split(other, tmp_path / "splits.csv")


def test_same_seed_same_split(synth_table):
    assert (assign_split(synth_table, seed=3) == assign_split(synth_table, seed=3)).all()


def sklearn_version() -> tuple[int, ...]:
    import sklearn
    return tuple(int(p) for p in sklearn.__version__.split(".")[:2] if p.isdigit())


# skinfeat's folds are scikit-learn 1.8's: 1.8 changed how StratifiedGroupKFold(shuffle=True)
# shuffles, so an older scikit-learn (the package needs 1.6) is not the reference.
@pytest.mark.skipif(sklearn_version() < (1, 8), reason="the reference is scikit-learn >= 1.8")
@pytest.mark.parametrize("n_folds, seed", [(5, 42), (8, 0), (3, 7)])
def test_fast_grouped_folds_equal_sklearns(n_folds, seed):
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    from skinfeat.data.splits import stratified_group_folds

    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 400, 1200).astype(str)          # 1-10 images per group
    y = np.where(rng.random(1200) < 0.6, "nv", rng.choice(list("abcdef"), 1200))
    ours = stratified_group_folds(y, groups, n_folds, seed)
    ref = np.empty(len(y), dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, (_, test) in enumerate(StratifiedGroupKFold(n_folds, shuffle=True,
                                                           random_state=seed).split(y, y, groups)):
            ref[test] = k
    assert np.array_equal(ours, ref)
