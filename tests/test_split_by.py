"""Held-out sources: ``by:COLUMN`` folds (leave-one-source-out) and ``by:COLUMN=VALUE`` hold-outs;
no value on both sides, no group across values, clear refusals."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skinfeat.data.splits import (
    SplitKind,
    assign_split,
    check_split,
    drop_crossing_groups,
    fold_ids,
    load_split,
    parse_split,
    protocol,
    save_split,
    source_sides,
)


def sourced(n_lesions: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lesions = np.repeat(np.arange(n_lesions), 2)
    return pd.DataFrame({
        "image_id": [f"ISIC_{i:05d}" for i in range(2 * n_lesions)],
        "group_id": [f"L{x}" for x in lesions],
        "dx": np.repeat(rng.choice(["mel", "nv", "bkl"], n_lesions), 2),
        "dataset": np.repeat(rng.choice(["rosendahl", "vidir_modern", "vienna_dias"],
                                        n_lesions), 2)})


def test_parse_split_reads_every_kind():
    assert parse_split("lesion") == parse_split("group") == SplitKind("group")
    assert parse_split("none").kind == "none"
    assert parse_split("by:Dataset") == SplitKind("by", "dataset")
    assert parse_split("by:dataset=Rosendahl") == SplitKind("by", "dataset", "rosendahl")
    assert str(parse_split("by:dataset=rosendahl")) == "by:dataset=rosendahl"
    for bad in ("by:", "by:dataset=", "lesions", "by:=x"):
        with pytest.raises(ValueError, match=r"use group \(or lesion\), image, none, by:COLUMN"):
            parse_split(bad)


def test_cv_by_column_makes_one_fold_per_value():
    t = sourced()
    folds = fold_ids(t, 5, "by:dataset")
    assert sorted(set(folds)) == [0, 1, 2]
    for k, value in enumerate(["rosendahl", "vidir_modern", "vienna_dias"]):
        assert set(t.loc[folds == k, "dataset"]) == {value}
    assert "leave-one-dataset-out" in protocol("by:dataset")


def test_the_cv_folds_keep_every_held_out_value_off_the_training_side():
    from skinfeat.learn.cv import iter_folds
    t = sourced()
    folds = list(iter_folds(t, fold_ids(t, 3, "by:dataset"), "by:dataset", seed=0))
    assert len(folds) == 3
    for f in folds:
        scored = set(t["dataset"].iloc[f.test])
        assert len(scored) == 1
        assert not scored & set(t["dataset"].iloc[np.r_[f.train, f.val]])
        assert not set(t["group_id"].iloc[f.val]) & set(t["group_id"].iloc[f.train])


def test_fit_head_by_value_scores_that_value_and_trains_on_the_others(tmp_path):
    t = sourced()
    split = assign_split(t, "by:dataset=vienna_dias", seed=1)
    assert set(t.loc[split == "test", "dataset"]) == {"vienna_dias"}
    assert (split == "test").sum() == (t["dataset"] == "vienna_dias").sum()
    assert set(split) == {"train", "val", "test"}
    assert source_sides(t, split, "by:dataset=vienna_dias") == {
        "column": "dataset", "trained_on": ["rosendahl", "vidir_modern"],
        "scored_on": ["vienna_dias"]}
    assert "scored on dataset = vienna_dias" in protocol("by:dataset=vienna_dias")
    save_split(t, split, tmp_path / "splits.csv", parse_split("by:dataset=vienna_dias"), 1)
    again, kind, seed = load_split(t, tmp_path / "splits.csv")
    assert kind == "by:dataset=vienna_dias" and seed == 1 and (again == split).all()


def test_the_guard_refuses_a_value_on_both_sides():
    t = sourced()
    split = assign_split(t, "by:dataset=rosendahl")
    moved = split.copy()
    lesion = t.loc[(t["dataset"] == "rosendahl"), "group_id"].iloc[0]
    moved[t["group_id"] == lesion] = "train"
    with pytest.raises(ValueError, match="rosendahl on both the scored and the training side"):
        check_split(t, moved, "by:dataset=rosendahl")


def test_groups_across_values_are_refused():
    t = sourced()
    t.loc[1, "dataset"] = "rosendahl" if t.loc[0, "dataset"] != "rosendahl" else "vienna_dias"
    for call in (lambda: fold_ids(t, 3, "by:dataset"),
                 lambda: assign_split(t, "by:dataset=rosendahl")):
        with pytest.raises(ValueError, match="1 group.*2 images.*more than one dataset value"
                           ".*L0.*drop_crossing_groups"):
            call()
    kept, dropped = drop_crossing_groups(t, "dataset")
    assert dropped == ["ISIC_00000", "ISIC_00001"] and len(kept) == len(t) - 2
    assert sorted(set(fold_ids(kept, 3, "by:dataset"))) == [0, 1, 2]


@pytest.mark.parametrize("kind, call, message", [
    ("by:site", "folds", "the table has no column 'site'"),
    ("by:dataset=mars", "assign", "no row has dataset = 'mars'; the values are rosendahl"),
    ("by:dataset", "assign", "fit-head holds one value out: by:dataset=VALUE"),
    ("by:dataset=rosendahl", "folds", "cv takes by:dataset"),
])
def test_clear_refusals(kind, call, message):
    t = sourced()
    with pytest.raises(ValueError, match=message):
        fold_ids(t, 3, kind) if call == "folds" else assign_split(t, kind)


def test_rows_without_a_value_and_a_single_value_are_refused():
    t = sourced()
    t.loc[[4, 5], "dataset"] = None
    with pytest.raises(ValueError, match="2 row.*have no dataset value.*ISIC_00004"):
        fold_ids(t, 3, "by:dataset")
    t["dataset"] = "rosendahl"
    with pytest.raises(ValueError, match="has one value"):
        fold_ids(t, 3, "by:dataset")


def test_a_class_only_in_the_held_out_value_is_refused():
    t = sourced()
    t.loc[t["dataset"] == "vienna_dias", "dx"] = "df"
    with pytest.raises(ValueError, match="df have no training images"):
        assign_split(t, "by:dataset=vienna_dias")


def test_lesion_and_image_kinds_are_unchanged():
    t = sourced()
    assert (fold_ids(t, 3, "lesion", seed=3) == fold_ids(t, 3, SplitKind("lesion"), seed=3)).all()
    assert (assign_split(t, "image") == assign_split(t, SplitKind("image"))).all()
    with pytest.raises(ValueError, match="unknown split kind"):
        fold_ids(t, 3, "patient")


def test_a_loaded_set_holds_its_source_out_through_with_described(tmp_path):
    from skinfeat.data.datasets import load_dataset
    t = sourced().rename(columns={"group_id": "lesion_id"})   # the raw HAM10000 column
    t["age"], t["sex"], t["localization"], t["dx_type"] = 50.0, "male", "back", "histo"
    t.to_csv(tmp_path / "HAM10000_metadata.csv", index=False)
    data = load_dataset(tmp_path / "HAM10000_metadata.csv", "ham10000", images=False)
    with pytest.raises(ValueError, match="no column 'dataset'"):
        fold_ids(data.table, 3, "by:dataset")        # the table models read has no source
    table = data.with_described()
    folds = fold_ids(table, 3, "by:dataset")
    assert sorted(set(folds)) == [0, 1, 2]
    split = assign_split(table, "by:dataset=rosendahl")
    assert set(table.loc[split == "test", "dataset"]) == {"rosendahl"}
