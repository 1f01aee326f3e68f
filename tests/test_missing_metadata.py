"""One representation of "missing" per metadata field (issue #10), and a head that survives it."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from skinfeat.data.metadata import MetadataEncoder
from skinfeat.evaluate.metrics import classification_metrics, softmax
from skinfeat.learn.head import HeadConfig, head_logits
from skinfeat.learn.head_batch import _blank_fields, fit_head

TRAIN = pd.DataFrame({
    "age": [30.0, 45.0, np.nan, 70.0, 55.0, 60.0],
    "sex": ["male", "female", "unknown", "male", "female", "male"],
    "localization": ["back", "face", "unknown", "lower extremity", "back", "trunk"],
})


def encoder(**kw) -> MetadataEncoder:
    return MetadataEncoder(**kw).fit(TRAIN)


def test_robust_layout_no_dropped_category_and_no_unknown_category():
    enc = encoder()
    assert enc.encoding == "robust"
    assert enc.feature_names == ["age", "age_missing", "sex_female", "sex_male",
                                 "localization_back", "localization_face",
                                 "localization_lower extremity", "localization_trunk"]
    assert enc.fields == [("age", 0, 2), ("sex", 2, 4), ("localization", 4, 8)]
    assert enc.means["age"] == pytest.approx(52.0)
    np.testing.assert_array_equal(enc.missing_row(), [0, 1, 0, 0, 0, 0, 0, 0])
    assert enc.missing_row().dtype == np.float32 and enc.missing_row().ndim == 1


@pytest.mark.parametrize("field,values", [
    ("age", [None, np.nan, "", "  ", "unknown", "UNK", "n/a", "?", "not a number", np.inf]),
    ("sex", [None, np.nan, "", " ", "unknown", "UNKNOWN", "unk", "N/A", "null", "?", "other"]),
    ("localization", [None, np.nan, "", "unknown", " Unknown ", "nan", "tail", "palms/soles"]),
])
def test_every_path_into_missing_gives_the_identical_vector(field, values, caplog):
    enc = encoder()
    known = {"age": 40.0, "sex": "female", "localization": "back"}
    base = pd.DataFrame([known] * len(values))
    with caplog.at_level(logging.WARNING, logger="skinfeat.data.metadata"):
        given = enc.transform(base.assign(**{field: values}))           # blank / token / unseen
    absent = enc.transform(base.drop(columns=[field]))                  # column absent
    dropped = enc.blank(enc.transform(base), field)                     # blanked afterwards
    lo, hi = next((lo, hi) for name, lo, hi in enc.fields if name == field)
    gen = torch.Generator().manual_seed(0)
    dropout = _blank_fields(torch.as_tensor(enc.transform(base)),        # training dropout, p = 1
                            [f for f, (name, _, _)
                             in zip(enc.dropout_fields(), enc.fields, strict=False)
                             if name == field], 1.0, gen).numpy()
    for x in (given, absent, dropout):
        np.testing.assert_array_equal(x, dropped)
    np.testing.assert_array_equal(dropped[:, lo:hi], np.tile(enc.missing_row()[lo:hi],
                                                             (len(values), 1)))
    # The other fields are untouched.
    keep = np.ones(enc.n_features, bool)
    keep[lo:hi] = False
    np.testing.assert_array_equal(dropped[:, keep], enc.transform(base)[:, keep])


def test_unseen_values_warn_with_field_and_values(caplog):
    enc = encoder()
    with caplog.at_level(logging.WARNING, logger="skinfeat.data.metadata"):
        enc.transform(pd.DataFrame({"age": [1.0], "sex": ["other"], "localization": ["tail"]}))
    assert "sex" in caplog.text and "'other'" in caplog.text and "'tail'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="skinfeat.data.metadata"):
        enc.transform(pd.DataFrame({"age": [1.0], "sex": ["unknown"], "localization": [None]}))
    assert caplog.text == ""  # a missing token is not "unseen"


def test_case_whitespace_and_aliases_are_not_unseen():
    enc = encoder()
    variants = pd.DataFrame({"age": ["45", 45.0, 45], "sex": ["M", " Male", "MALE"],
                             "localization": ["Lower_Extremity", "lower  extremity",
                                              "LOWER EXTREMITY"]})
    x = enc.transform(variants)
    np.testing.assert_array_equal(x, np.tile(x[0], (3, 1)))
    assert x[0, enc.feature_names.index("sex_male")] == 1
    assert x[0, enc.feature_names.index("localization_lower extremity")] == 1
    assert enc.transform(pd.DataFrame({"sex": ["f", "Woman"]}))[:, 2].tolist() == [1, 1]


def test_per_field_missing_tokens_are_configurable():
    enc = MetadataEncoder(missing_tokens={"localization": ["not recorded"]}).fit(
        TRAIN.assign(localization=["back", "face", "not recorded", "unknown", "back", "trunk"]))
    # "unknown" is no longer a missing token for localization: it is a category.
    assert enc.categories["localization"] == ["back", "face", "trunk", "unknown"]
    x = enc.transform(pd.DataFrame({"localization": ["Not Recorded"]}))
    np.testing.assert_array_equal(x, enc.missing_row()[None])
    # sex keeps the default tokens.
    assert enc.categories["sex"] == ["female", "male"]


def test_reference_encoding_codes_missing_as_unknown():
    enc = encoder(encoding="reference")
    assert enc.n_features == 1 + 2 + 4 and "sex_unknown" in enc.feature_names
    blank = enc.transform(pd.DataFrame({"age": [np.nan], "sex": [None]}))
    np.testing.assert_array_equal(blank[0], enc.missing_row())
    assert blank[0, enc.feature_names.index("sex_unknown")] == 1
    assert blank[0, enc.feature_names.index("localization_unknown")] == 1


@pytest.mark.parametrize("encoding", ["robust", "reference"])
def test_round_trip_through_dict(encoding):
    enc = encoder(encoding=encoding, missing_tokens={"sex": ["x"]})
    again = MetadataEncoder.from_dict(enc.to_dict())
    assert again.to_dict() == enc.to_dict() and again.encoding == encoding
    probe = pd.DataFrame({"age": [33, None], "sex": ["x", "M"], "localization": ["face", "?"]})
    np.testing.assert_array_equal(enc.transform(probe), again.transform(probe))


def test_a_bundle_from_before_encodings_loads_as_reference():
    old = {"numeric": ["age"], "categorical": ["sex", "localization"], "drop_first": True,
           "means": {"age": 50.0}, "stds": {"age": 10.0},
           "categories": {"sex": ["female", "male", "unknown"],
                          "localization": ["back", "face", "unknown"]}}
    enc = MetadataEncoder.from_dict(old)
    assert enc.encoding == "reference" and enc.n_features == 5
    x = enc.transform(pd.DataFrame({"age": [60.0], "sex": ["male"], "localization": ["back"]}))
    np.testing.assert_array_equal(x, [[1.0, 1, 0, 0, 0]])
    assert "reference" in enc.describe()


def test_blank_by_name_index_or_all():
    enc = encoder()
    x = enc.transform(TRAIN)
    np.testing.assert_array_equal(enc.blank(x, "sex"), enc.blank(x, 1))
    np.testing.assert_array_equal(enc.blank(x), np.tile(enc.missing_row(), (len(x), 1)))
    with pytest.raises(ValueError, match="no metadata field 'site'"):
        enc.blank(x, "site")


# ---------------------------------------------------------------- the head on missing metadata
def synthetic_problem(n: int, seed: int, d: int = 16):
    """Weak image signal; age and site carry real signal; "unknown" is label-correlated
    (class 0 writes 10 % of its sites as unknown: 2.5 % of rows, as in HAM10000, where 2.3 %
    of sites are unknown and 84 % of those are nv)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    centers = np.random.default_rng(7).normal(0, 1, (4, d))
    image = (0.5 * centers[y] + rng.normal(0, 1, (n, d))).astype(np.float32)
    age = np.array([30, 45, 60, 75])[y] + rng.normal(0, 25, n)
    sites = np.array(["back", "face", "lower extremity", "trunk"])
    site = np.where(rng.random(n) < 0.35, sites[y], sites[rng.integers(0, 4, n)]).astype(object)
    site[(y == 0) & (rng.random(n) < 0.1)] = "unknown"
    sex = np.where(rng.random(n) < 0.5, "male", "female").astype(object)
    return image, pd.DataFrame({"age": age, "sex": sex, "localization": site}), y


def test_fused_head_is_not_hurt_by_missing_metadata():
    (xi, tab, y), (vi, vtab, vy), (ti, ttab, ty) = (synthetic_problem(n, s)
                                                    for n, s in ((1500, 0), (400, 1), (1500, 2)))
    enc = MetadataEncoder().fit(tab)
    xm, vm, tm = enc.transform(tab), enc.transform(vtab), enc.transform(ttab)
    classes = ["a", "b", "c", "d"]

    def score(inputs: str, meta: np.ndarray) -> float:
        res = fit_head((xi, xm, y), (vi, vm, vy), 4, HeadConfig(inputs=inputs, seed=0),
                       enc.dropout_fields())
        return classification_metrics(ty, softmax(head_logits(res.model, ti, meta)),
                                      classes)["balanced_accuracy"]

    image_only = score("image", tm)
    fused_full = score("fused", tm)
    fused_missing = score("fused", enc.blank(tm))
    assert fused_full > image_only + 0.03, (fused_full, image_only)
    assert fused_missing >= image_only - 0.03, (fused_missing, image_only)
