"""Encoder parity with the reference recipe on a hand-built table."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from skinfeat.data.metadata import MetadataEncoder

SEX = ["female", "male", "unknown"]
SITES = ["abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand",
         "lower extremity", "neck", "scalp", "trunk", "unknown", "upper extremity"]


def hand_table() -> pd.DataFrame:
    # Every HAM10000 category appears, so the reference yields 1 + 2 + 14 = 17 columns.
    ages = [30.0, np.nan, 50.0, 70.0, 40.0] * 3
    return pd.DataFrame({"age": ages, "sex": [SEX[i % 3] for i in range(15)],
                         "localization": SITES})


def test_reference_parity_17_columns_exact_values():
    df = hand_table()
    x = MetadataEncoder(encoding="reference").fit_transform(df)
    assert x.shape == (15, 17)
    # Reference: fillna(mean) -> StandardScaler; pd.get_dummies(drop_first=True).
    age = df["age"].fillna(df["age"].mean())
    expected_age = (age - age.mean()) / age.std(ddof=0)
    dummies = pd.get_dummies(df[["sex", "localization"]], drop_first=True).astype(np.float32)
    np.testing.assert_allclose(x[:, 0], expected_age.to_numpy(), rtol=1e-6)
    np.testing.assert_array_equal(x[:, 1:], dummies.to_numpy())
    # Mean of [30, 50, 70, 40] is 47.5: the NaN row encodes as exactly zero.
    assert x[1, 0] == 0.0
    names = MetadataEncoder(encoding="reference").fit(df).feature_names
    assert names[1:3] == ["sex_male", "sex_unknown"]


def test_fitted_on_training_rows_only():
    train = hand_table()
    test = pd.DataFrame({"age": [100.0], "sex": ["male"], "localization": ["back"]})
    enc = MetadataEncoder(encoding="reference").fit(train)
    before = enc.to_dict()
    enc.transform(test)
    assert enc.to_dict() == before
    assert enc.means["age"] == pytest.approx(47.5)


def test_unseen_category_is_all_zero_with_warning(caplog):
    enc = MetadataEncoder(encoding="reference").fit(hand_table())
    new = pd.DataFrame({"age": [50.0], "sex": ["other"], "localization": ["tail"]})
    with caplog.at_level(logging.WARNING):
        x = enc.transform(new)
    assert x.shape == (1, 17) and np.all(x[0, 1:] == 0)
    assert "'other'" in caplog.text and "'tail'" in caplog.text


def test_round_trip_through_dict():
    enc = MetadataEncoder(encoding="reference").fit(hand_table())
    again = MetadataEncoder.from_dict(enc.to_dict())
    np.testing.assert_array_equal(enc.transform(hand_table()), again.transform(hand_table()))


def test_corrupt_state_is_a_clear_error():
    state = MetadataEncoder(encoding="reference").fit(hand_table()).to_dict()
    del state["means"]["age"]
    with pytest.raises(ValueError, match="no fitted values"):
        MetadataEncoder.from_dict(state)
