"""The public Python API: the walkthrough of docs/python-api.md runs as it stands, the head
in it learns, and the results it returns are the typed objects the docs describe."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "python-api.md"


def walkthrough() -> str:
    """The walkthrough of docs/python-api.md (the README's front page links to it)."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("<!-- tested-by: tests/test_api.py -->"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def readme_example() -> str:
    """The README's short Python example (its section "Python API")."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_is_short():
    code = readme_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 12


def test_the_readme_example_runs_and_its_head_learns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_example(), "README.md#python-api", "exec"), scope)
    cv, preds = scope["cv"], scope["preds"]
    chance = 1 / len(scope["data"].classes)
    head = cv.table[(cv.table["model"] == "head") & (cv.table["inputs"] == "fused")]
    assert float(head["balanced_accuracy_mean"].iloc[0]) > 2 * chance
    assert len(preds.to_frame()) == 5


def test_the_readme_walkthrough_runs_verbatim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(walkthrough(), "docs/python-api.md#walkthrough", "exec"), scope)
    import skinfeat

    data, cv, fit, preds = scope["data"], scope["cv"], scope["fit"], scope["preds"]
    assert isinstance(data, skinfeat.Dataset) and len(data.table) == 160
    assert isinstance(scope["cache"], skinfeat.EmbeddingCache) and len(scope["cache"]) == 160
    assert isinstance(cv, skinfeat.CVResult)
    assert set(zip(cv.table["model"], cv.table["inputs"], strict=True)) == {
        (m, i) for m in ("head", "lgbm") for i in ("image", "meta", "fused")}
    assert len(cv.fits) == 3 * 6 and cv.report_path.is_file()
    assert isinstance(fit, skinfeat.FitResult) and fit.report_path.is_file()
    assert 0.0 <= fit.metrics["balanced_accuracy"] <= 1.0
    frame = preds.to_frame()
    assert list(frame["image_id"]) == list(data.table["image_id"].head(5))
    assert np.allclose(preds.proba.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(scope["same"].proba, preds.proba, atol=1e-6)
    # The head learns: well above chance in CV and on the test part, not one class for all.
    chance = 1 / len(data.classes)
    head = cv.table[(cv.table["model"] == "head") & (cv.table["inputs"] == "fused")]
    assert float(head["balanced_accuracy_mean"].iloc[0]) > 2 * chance
    assert fit.metrics["balanced_accuracy"] > 2 * chance
    every = fit.model.predict(embeddings=scope["cache"], metadata=data.table)
    assert len(set(every.decided)) >= len(data.classes) // 2
    # out=None: the run lives in a temporary folder owned by the result, gone with it
    where = fit.out
    assert where.is_dir() and not str(where).startswith(str(tmp_path))
    del scope, fit, preds
    import gc
    gc.collect()
    assert not where.exists()


def test_a_kept_run_loads_and_predicts_like_the_fit(synth_table, synth_cache, synth_dir, tmp_path):
    import skinfeat

    data = skinfeat.load_dataset(synth_dir)
    recipe = skinfeat.Recipe(seed=0, params=skinfeat.HeadConfig(max_epochs=6))
    fit = skinfeat.fit(data, synth_cache, recipe=recipe, out=tmp_path / "run")
    assert (tmp_path / "run" / "config.json").is_file()
    model = skinfeat.load_model(tmp_path / "run")
    rows = data.table.head(8)
    a = fit.model.predict(embeddings=synth_cache, metadata=rows)
    b = model.predict(embeddings=[synth_cache], metadata=rows)
    assert np.allclose(a.proba, b.proba, atol=1e-6)
    # raw images give the cached path's probabilities (same backbone, same weights)
    c = model.predict(images=list(rows["path"]), metadata=rows)
    assert np.allclose(c.proba, a.proba, atol=1e-4)
    assert model.classes == list(data.classes) and "age" in model.fields


def test_predict_refuses_ambiguous_inputs(ship_runs, synth_cache):
    import pytest

    import skinfeat

    model = skinfeat.load_model(ship_runs["head"])
    with pytest.raises(ValueError, match="not both"):
        model.predict(images=["a.jpg"], embeddings=synth_cache)
    with pytest.raises(ValueError, match="image_id"):
        model.predict(embeddings=synth_cache, metadata=pd.DataFrame({"age": [50]}))


def test_import_is_light_and_lists_the_api():
    import subprocess
    import sys

    code = ("import sys, skinfeat; assert 'torch' not in sys.modules, 'torch imported'; "
            "print(','.join(skinfeat.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    names = out.stdout.strip().split(",")
    assert {"load_dataset", "extract", "fit", "cross_validate", "tune", "load_model"} <= set(names)
