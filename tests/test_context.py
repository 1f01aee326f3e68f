"""Patient context features: hand-computed values, no label used, groups of one neutral."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skinfeat.learn.context import context_columns, group_context


def small():
    # Patient p: sizes 2, 4, 9 (mean 5, population std sqrt(26/3)); q: 3 and a missing value;
    # r: one lesion.
    table = pd.DataFrame({"size": [2.0, 4.0, 9.0, 3.0, np.nan, 6.0],
                          "label": [0, 0, 1, 0, 0, 1]})
    groups = ["p", "p", "p", "q", "q", "r"]
    emb = np.array([[0, 0], [2, 0], [1, 3], [1, 1], [3, 1], [5, 5]], dtype=np.float64)
    return table, groups, emb


def test_hand_computed_example():
    table, groups, emb = small()
    out = group_context(table, ["size"], groups, emb)
    assert list(out.columns) == context_columns(["size"]) == [
        "size_group_z", "size_group_rank", "embedding_group_distance", "group_single"]
    sd = np.sqrt(((2 - 5) ** 2 + (4 - 5) ** 2 + (9 - 5) ** 2) / 3)
    assert out["size_group_z"].iloc[:3].tolist() == pytest.approx([-3 / sd, -1 / sd, 4 / sd])
    assert out["size_group_rank"].iloc[:3].tolist() == [0.0, 0.5, 1.0]
    # q: the only known value of its group is neutral; the missing one stays missing.
    assert out["size_group_z"].iloc[3] == 0 and out["size_group_rank"].iloc[3] == 0.5
    assert np.isnan(out["size_group_z"].iloc[4]) and np.isnan(out["size_group_rank"].iloc[4])
    # p's mean embedding is (1, 1): distances sqrt(2), sqrt(2), 2; q's (2, 1): 1 and 1.
    assert out["embedding_group_distance"].tolist() == pytest.approx(
        [np.sqrt(2), np.sqrt(2), 2, 1, 1, 0])
    assert out["group_single"].tolist() == [0, 0, 0, 0, 0, 1]
    # r, a group of one: neutral values and the flag.
    assert out.iloc[5].tolist() == [0.0, 0.5, 0.0, 1.0]


def test_no_label_is_used():
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"a": rng.normal(size=60), "b": rng.integers(0, 4, 60).astype(float),
                          "label": rng.integers(0, 2, 60), "dx": rng.choice(["x", "y"], 60)})
    groups, emb = rng.integers(0, 8, 60), rng.normal(size=(60, 5))
    before = group_context(table, ["a", "b"], groups, emb)
    shuffled = table.assign(label=rng.permutation(table["label"].to_numpy()),
                            dx=rng.permutation(table["dx"].to_numpy()))
    pd.testing.assert_frame_equal(group_context(shuffled, ["a", "b"], groups, emb), before)
    pd.testing.assert_frame_equal(group_context(table.drop(columns=["label", "dx"]), ["a", "b"],
                                                groups, emb), before)


def test_only_the_groups_own_rows_count():
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"a": rng.normal(size=40)})
    groups, emb = rng.integers(0, 5, 40), rng.normal(size=(40, 3))
    out = group_context(table, ["a"], groups, emb)
    # Another patient's rows added, and the rows shuffled: every old row keeps its values.
    more = pd.concat([table, pd.DataFrame({"a": rng.normal(size=10) * 100})], ignore_index=True)
    order = rng.permutation(50)
    both = group_context(more.iloc[order], ["a"], np.r_[groups, [99] * 10][order],
                         np.r_[emb, rng.normal(size=(10, 3))][order])
    pd.testing.assert_frame_equal(both.loc[range(40)], out)


def test_views_blank_groups_and_bad_input():
    table, groups, emb = small()
    views = np.stack([emb, emb + 100], axis=1)               # (N, V, D): view 0 is used
    pd.testing.assert_frame_equal(group_context(table, ["size"], groups, views),
                                  group_context(table, ["size"], groups, emb))
    blank = group_context(table, ["size"], ["", None, "p", "p", "p", "p"])
    assert blank["group_single"].tolist() == [1, 1, 0, 0, 0, 0]
    assert "embedding_group_distance" not in blank.columns
    with pytest.raises(KeyError, match="age"):
        group_context(table, ["age"], groups)
    with pytest.raises(ValueError, match="5 group ids for 6 rows"):
        group_context(table, ["size"], groups[:5])
