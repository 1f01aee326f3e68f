"""Properties over generated tables (hypothesis): the encoder's width and finiteness, and
splits and folds that keep every lesion whole."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from skinfeat.data.datasets import AGE_RANGE, CLASSES, MISSING_CATEGORY
from skinfeat.data.metadata import MetadataEncoder
from skinfeat.data.splits import assign_split, fold_ids

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Values as the validated table holds them: age a number in range or NaN; categories lower-case
# non-empty strings, "unknown" for missing; some values the encoder never saw in training.
ages = st.one_of(st.floats(*AGE_RANGE, allow_nan=False), st.just(float("nan")))
categories = st.one_of(st.sampled_from(["male", "female", "back", "face", "lower extremity",
                                        MISSING_CATEGORY]),
                       st.text(min_size=1, max_size=12).map(str.lower))
rows = st.fixed_dictionaries({"age": ages, "sex": categories, "localization": categories})


def frame(records: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(records, columns=["age", "sex", "localization"])


@pytest.mark.parametrize("encoding", ["robust", "reference"])
@SETTINGS
@example(  # found by hypothesis: a rounding-error std once scaled ages to inf
    train=[{"age": 0.0, "sex": "male", "localization": "back"},
           {"age": 3.6e-43, "sex": "male", "localization": "back"}],
    others=[[{"age": 1.0, "sex": "male", "localization": "back"}]])
@given(train=st.lists(rows, min_size=1, max_size=30),
       others=st.lists(st.lists(rows, min_size=0, max_size=20), min_size=1, max_size=3))
def test_encoder_output_is_finite_and_of_fixed_width(encoding, train, others):
    enc = MetadataEncoder(encoding=encoding).fit(frame(train))
    logging.getLogger("skinfeat.data.metadata").disabled = True  # unseen values warn, by design
    try:
        for records in [train, *others]:
            x = enc.transform(frame(records))
            assert x.shape == (len(records), enc.n_features) and x.dtype == np.float32
            assert np.isfinite(x).all()
            # Each one-hot field holds at most a single 1 (none for a missing value, a value
            # never seen in training, or the reference's dropped first category).
            for name, lo, hi in enc.fields:
                if name in enc.categorical:
                    block = x[:, lo:hi]
                    assert set(np.unique(block)) <= {0.0, 1.0} and (block.sum(1) <= 1).all()
    finally:
        logging.getLogger("skinfeat.data.metadata").disabled = False
    again = MetadataEncoder.from_dict(enc.to_dict())
    np.testing.assert_array_equal(again.transform(frame(train)), enc.transform(frame(train)))


@st.composite
def lesion_tables(draw, min_lesions_per_class: int = 1) -> pd.DataFrame:
    """A table of 1 to 4 classes, each with some lesions of 1 to 4 images."""
    classes = draw(st.lists(st.sampled_from(CLASSES), min_size=1, max_size=4, unique=True))
    records = []
    for dx in classes:
        for _ in range(draw(st.integers(min_lesions_per_class, 14))):
            lesion = f"HAM_{len({r['group_id'] for r in records}):04d}"
            for _ in range(draw(st.integers(1, 4))):
                records.append({"image_id": f"ISIC_{len(records):05d}", "group_id": lesion,
                                "dx": dx})
    order = draw(st.permutations(range(len(records))))
    return pd.DataFrame([records[i] for i in order])


def lesions_on_one_side(table: pd.DataFrame, side: np.ndarray) -> bool:
    return bool((pd.Series(side).groupby(table["group_id"].to_numpy()).nunique() == 1).all())


@SETTINGS
@given(table=lesion_tables(min_lesions_per_class=10), seed=st.integers(0, 2**16))
def test_every_lesion_lands_on_exactly_one_side_of_the_split(table, seed):
    try:
        split = assign_split(table, "lesion", seed=seed)
    except ValueError as exc:  # a set too small for a split is refused, and says so
        assert "the data set is too small" in str(exc), exc
        event("refused: too small")
        return
    assert len(split) == len(table) and set(split) <= {"train", "val", "test"}
    assert lesions_on_one_side(table, split.to_numpy())
    assert set(table.loc[split == "train", "dx"]) == set(table["dx"])


@SETTINGS
@given(table=lesion_tables(), n_folds=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_every_lesion_lands_in_exactly_one_fold(table, n_folds, seed):
    fewest = int(table.groupby("dx")["group_id"].nunique().min())
    if fewest < n_folds:
        with pytest.raises(ValueError, match=rf"Use fewer folds \(at most {fewest}\)"):
            fold_ids(table, n_folds, "lesion", seed)
        event("refused: fewer folds")
        return
    folds = fold_ids(table, n_folds, "lesion", seed)
    assert len(folds) == len(table) and set(folds) <= set(range(n_folds))
    assert lesions_on_one_side(table, folds)
    # Each lesion-fold holds out rows: every fold is someone's test set.
    assert set(folds) == set(range(n_folds))
