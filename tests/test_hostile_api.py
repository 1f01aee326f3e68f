"""Hostile input to the Python API: what a notebook user has (one path, an (N, D) array, a
DataFrame) works; a wrong kind of value is a TypeError naming the argument; an out-of-range
value a ValueError naming it (``FusionHeadClassifier``: at ``fit``, the scikit-learn way)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import skinfeat
from skinfeat.learn.sklearn import FusionHeadClassifier

FIELDS = ["age", "sex", "localization"]


@pytest.fixture(scope="module")
def model(ship_runs):
    return skinfeat.load_model(ship_runs["head"])


@pytest.fixture(scope="module")
def cached(synth_cache, synth_table):
    """The first 12 rows: their metadata and their embeddings as an in-memory array."""
    contents = skinfeat.open_cache(synth_cache).contents
    rows = synth_table.iloc[:12].reset_index(drop=True)
    pos = {iid: i for i, iid in enumerate(contents.image_ids)}
    array = contents.embeddings[[pos[i] for i in rows["image_id"]]]
    return rows, np.asarray(array)


# ---------------------------------------------------------------- predict: embeddings arrays
def test_an_in_memory_array_with_a_metadata_frame_predicts_as_the_cache_does(model, cached,
                                                                            synth_cache):
    rows, array = cached
    got = model.predict(embeddings=array, metadata=rows[FIELDS])
    want = model.predict(embeddings=synth_cache, metadata=rows[["image_id", *FIELDS]])
    assert got.ok.all() and len(got.image_ids) == len(rows)
    np.testing.assert_allclose(got.proba, want.proba, atol=1e-6)
    np.testing.assert_array_equal(got.decided, want.decided)


def test_an_array_without_metadata_is_scored_with_every_field_missing(model, cached):
    _, array = cached
    got = model.predict(embeddings=array[:3])
    assert got.proba.shape == (3, len(model.classes)) and got.ok.all()
    assert all(n == 3 for n in got.missing.values())


def test_an_array_of_the_wrong_width_names_both_widths(model, cached):
    rows, array = cached
    with pytest.raises(ValueError, match=r"embeddings: .*\b65\b.*\b64-d"):
        model.predict(embeddings=np.hstack([array, array[:, :1]]), metadata=rows[FIELDS])


def test_an_array_with_other_row_count_than_metadata_is_refused(model, cached):
    rows, array = cached
    with pytest.raises(ValueError, match="embeddings: 11 rows but metadata has 12"):
        model.predict(embeddings=array[:11], metadata=rows[FIELDS])


def test_a_one_dimensional_array_is_refused(model, cached):
    with pytest.raises(ValueError, match=r"embeddings: expected a 2-d array"):
        model.predict(embeddings=cached[1][0])


def test_an_array_with_nan_rows_is_refused_naming_the_row(model, cached):
    rows, array = cached
    bad = array.copy()
    bad[4, 7] = np.nan
    with pytest.raises(ValueError, match="1 row.* NaN .*row 4"):
        model.predict(embeddings=bad, metadata=rows[FIELDS])


def test_an_array_of_strings_is_a_type_error(model):
    with pytest.raises(TypeError, match="embeddings: expected a numeric array"):
        model.predict(embeddings=np.array([["a"] * 64]))


# ---------------------------------------------------------------- predict: images
@pytest.mark.parametrize("as_type", [str, Path])
def test_one_image_path_is_one_row(model, synth_table, as_type):
    path = as_type(synth_table["path"].iloc[0])
    got = model.predict(images=path)
    assert len(got.image_ids) == 1 and got.ok.all()
    assert got.image_ids == [Path(path).stem]


def test_images_of_the_wrong_type_name_the_argument(model):
    with pytest.raises(TypeError, match="images: expected a path or a list of paths"):
        model.predict(images=[1, 2])
    with pytest.raises(TypeError, match="images: .* got int"):
        model.predict(images=42)


def test_images_and_embeddings_together_are_refused(model, synth_table, synth_cache):
    with pytest.raises(ValueError, match="not both"):
        model.predict(images=synth_table["path"].iloc[0], embeddings=synth_cache)


def test_metadata_as_a_dict_names_the_argument(model, cached):
    with pytest.raises(TypeError, match=r"metadata: expected a pandas DataFrame .*got dict"):
        model.predict(embeddings=cached[1][:1], metadata={"age": 55})


def test_one_image_id_string_with_a_cache_is_one_row(model, synth_cache, synth_table):
    got = model.predict(embeddings=synth_cache, image_ids=synth_table["image_id"].iloc[0])
    assert len(got.image_ids) == 1 and got.ok.all()


def test_a_cache_of_the_wrong_type_names_the_argument(model):
    with pytest.raises(TypeError, match="embeddings: expected a cache path"):
        model.predict(embeddings={"path": "x.h5"}, image_ids=["a"])


# ---------------------------------------------------------------- fit / cross_validate
def test_fit_on_a_dataframe_names_the_data_argument(synth_table, synth_cache):
    with pytest.raises(TypeError, match="data: expected a Dataset .*got DataFrame"):
        skinfeat.fit(synth_table, synth_cache)


def test_a_recipe_as_a_dict_names_the_argument(synth_dir, synth_cache):
    with pytest.raises(TypeError, match="recipe: expected a skinfeat.Recipe .*got dict"):
        skinfeat.fit(synth_dir, synth_cache, recipe={"model": "head"})
    with pytest.raises(TypeError, match="recipe: .*got dict"):
        skinfeat.cross_validate(synth_dir, synth_cache, recipe={"seed": 1})


def test_caches_of_the_wrong_type_name_the_argument(synth_dir):
    with pytest.raises(TypeError, match="caches: expected a cache path"):
        skinfeat.fit(synth_dir, 123)
    with pytest.raises(ValueError, match="caches: give at least one"):
        skinfeat.fit(synth_dir, [])


# ---------------------------------------------------------------- FusionHeadClassifier
@pytest.mark.parametrize("params, error, needle", [
    ({"val_fraction": 1.5}, ValueError, r"val_fraction must be in \[0, 1\), got 1.5"),
    ({"val_fraction": -0.1}, ValueError, "val_fraction"),
    ({"max_epochs": 0}, ValueError, "max_epochs must be >= 1"),
    ({"lr": -1e-3}, ValueError, "lr must be > 0"),
    ({"lr": float("nan")}, ValueError, "lr must be > 0"),
    ({"meta_dropout": 1.0}, ValueError, "meta_dropout"),
    ({"head": "cnn"}, ValueError, "head must be one of 'reference', 'film'"),
    ({"inputs": "both"}, ValueError, "inputs must be one of"),
    ({"class_weight": None}, ValueError, "class_weight must be one of"),
    ({"batch_size": 2.5}, TypeError, "batch_size must be an integer"),
    ({"meta_dim": -1}, ValueError, "meta_dim must be >= 0"),
    ({"patience": "5"}, TypeError, "patience must be an integer"),
])
def test_head_classifier_parameters_are_checked_at_fit(params, error, needle):
    est = FusionHeadClassifier(**{"max_epochs": 1, **params})   # __init__ only stores them
    X = np.random.default_rng(0).normal(size=(40, 6))
    y = np.repeat([0, 1], 20)
    with pytest.raises(error, match=needle):
        est.fit(X, y)


def test_head_classifier_with_valid_parameters_still_fits():
    X = np.random.default_rng(0).normal(size=(40, 6))
    y = np.repeat(["a", "b"], 20)
    est = FusionHeadClassifier(max_epochs=2, val_fraction=0.0).fit(X, y)
    assert set(est.predict(X)) <= {"a", "b"}


def test_metadata_frame_index_is_ignored(model, cached):
    """A filtered DataFrame (index 5..16) aligns with the array by position, not by label."""
    rows, array = cached
    shifted = rows[FIELDS].set_axis(range(5, 17))
    got = model.predict(embeddings=array, metadata=shifted)
    want = model.predict(embeddings=array, metadata=rows[FIELDS])
    np.testing.assert_allclose(got.proba, want.proba)
    assert isinstance(got.to_frame(), pd.DataFrame)
