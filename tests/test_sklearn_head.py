"""FusionHeadClassifier: a scikit-learn estimator over the fusion head."""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from skinfeat import FusionHeadClassifier

# What the head cannot do, by design (the rest of sklearn's checks must pass).
EXPECTED = {
    "check_classifiers_train": "3 epochs (kept short for the test) do not reach the check's "
                               "83% accuracy on its tiny blobs; the pipeline test below learns",
    "check_class_weight_classifiers": "class_weight is 'balanced' or 'none' (the head's recipe), "
                                      "not a per-class dict",
}


@parametrize_with_checks([FusionHeadClassifier(max_epochs=3, patience=1, batch_size=32)],
                         expected_failed_checks=lambda est: EXPECTED)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _rows(n=300, d=16, m=4, seed=0, signal="image"):
    rng = np.random.default_rng(seed)
    y = rng.choice(np.array(["bkl", "mel", "nv"]), n)
    code = np.searchsorted(["bkl", "mel", "nv"], y)
    image, meta = rng.normal(size=(n, d)), rng.normal(size=(n, m))
    if signal == "image":
        image[:, :3] += 3 * np.eye(3)[code]
    else:
        meta[:, :3] += 3 * np.eye(3)[code]
    return np.concatenate([image, meta], axis=1), y


def test_in_a_pipeline_and_cross_val_score():
    X, y = _rows()
    pipe = make_pipeline(StandardScaler(), FusionHeadClassifier(meta_dim=4, max_epochs=30,
                                                                   batch_size=16, lr=3e-3))
    scores = cross_val_score(pipe, X, y, cv=3, scoring="balanced_accuracy")
    assert scores.mean() > 0.9
    pipe.fit(X, y)
    assert list(pipe.classes_) == ["bkl", "mel", "nv"]
    proba = pipe.predict_proba(X[:5])
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-6)
    assert (pipe.predict(X[:5]) == pipe.classes_[proba.argmax(1)]).all()


def test_meta_dim_splits_the_columns():
    """With the signal in the last 4 columns only, inputs meta learns it and image does not."""
    X, y = _rows(signal="meta")
    Xt, yt = _rows(seed=1, signal="meta")
    meta = FusionHeadClassifier(meta_dim=4, inputs="meta", max_epochs=15).fit(X, y)
    image = FusionHeadClassifier(meta_dim=4, inputs="image", max_epochs=15).fit(X, y)
    assert meta.score(Xt, yt) > 0.9 and image.score(Xt, yt) < 0.6
    assert meta.n_features_in_ == 20


def test_docs_example_runs():
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "stage-two.md"
    text = page.read_text(encoding="utf-8")
    section = text.split("## The head in your own scikit-learn pipelines", 1)[1]
    section = section.split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "docs/stage-two.md#the-head-in-your-own-scikit-learn-pipelines", "exec"), {})
