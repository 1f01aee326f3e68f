"""export: one ONNX graph whose ONNX Runtime probabilities equal predict's; the docs example
(docs/deploy.md) runs."""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from skinfeat.api import load_model  # noqa: E402
from skinfeat.cli import main  # noqa: E402
from skinfeat.deploy.export import onnx_probabilities  # noqa: E402
from skinfeat.deploy.model import Model  # noqa: E402
from skinfeat.embed.transform import preprocess  # noqa: E402

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs

DECISION_DOC = Path(__file__).resolve().parents[1] / "docs" / "decision.md"


@pytest.fixture(scope="module")
def exported(ship_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    r = CliRunner().invoke(main, ["export", "--model", str(ship_runs["head"]), "--onnx", str(out)])
    assert r.exit_code == 0, r.output
    return out


def assert_graph_equals_predict(graph: Path, p: Model, table: pd.DataFrame, n: int = 6) -> None:
    """ONNX Runtime's probabilities on the preprocessed images of ``table``'s first ``n`` rows
    equal predict's on the files, rows with every metadata field or the sex missing included."""
    rows = table.iloc[:n][["image_id", "path", "age", "sex", "localization"]].astype(object)
    rows.iloc[1, 2:] = None                                   # all metadata missing
    rows.iloc[2, 3] = None                                    # sex missing
    want = p.predict_table(rows).proba
    _, spec = p._backbone()
    image = np.stack([preprocess(path, spec).numpy() for path in rows["path"]])
    got = onnx_probabilities(graph, image, p.encode_metadata(rows))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_onnx_runtime_equals_predict(exported, ship_runs, synth_table):
    assert_graph_equals_predict(exported, Model(ship_runs["head"]), synth_table)


def test_the_graph_and_its_json_carry_what_a_caller_needs(exported, ship_runs):
    p = Model(ship_runs["head"])
    side = json.loads(exported.with_suffix(".json").read_text())
    graph = onnx.load(str(exported))
    stored = json.loads({e.key: e.value for e in graph.metadata_props}["skinfeat"])
    assert stored == side
    assert side["classes"] == p.classes and side["temperature"] == p.temperature
    assert side["preprocessing"] == p.identity["preprocessing"] and side["random_weights"]
    assert side["metadata"]["feature_names"] == p.encoder.feature_names
    missing = pd.DataFrame([{f: None for f in side["metadata"]["fields"]}], dtype=object)
    np.testing.assert_allclose(side["metadata"]["missing"], p.encode_metadata(missing)[0])
    assert [i.name for i in graph.graph.input] == ["image", "meta"]


def test_lightgbm_export_is_refused(ship_runs, tmp_path):
    r = CliRunner().invoke(main, ["export", "--model", str(ship_runs["lgbm"]), "--onnx",
                                  str(tmp_path / "m.onnx")])
    assert r.exit_code == 1 and "LightGBM" in r.output and not (tmp_path / "m.onnx").exists()


def onnx_example() -> str:
    """The ONNX example of docs/decision.md (the graph has two outputs, probabilities and the
    decision; the README's block, which unpacked one, moves to the docs site)."""
    text = DECISION_DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- tested-by: tests/test_export.py -->\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/decision.md lost its ONNX example"
    return match.group(1)


def test_docs_onnx_example_runs_and_matches_predict(exported, ship_runs, synth_table, tmp_path):
    code = onnx_example()
    assert len(code.strip().splitlines()) <= 22
    assert not re.search(r"^(import|from) skinfeat", code, re.M)
    shutil.copy(exported, tmp_path / "model.onnx")
    shutil.copy(exported.with_suffix(".json"), tmp_path / "model.json")
    image = synth_table["path"].iloc[5]
    shutil.copy(image, tmp_path / "lesion.jpg")
    (tmp_path / "example.py").write_text(code)
    r = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    *_, decided, probs = r.stdout.strip().splitlines()
    got = ast.literal_eval(probs)
    model = load_model(ship_runs["head"])
    want = model.predict_image(image, ["age=55"])
    assert list(got) == list(want.probabilities)
    np.testing.assert_allclose(list(got.values()), list(want.probabilities.values()), atol=1e-4)
    graph, by_hand, rule = decided.split(" ", 2)
    assert graph == by_hand == want.prediction and rule == want.rule


def _view_run(table, tmp_path, **extract_kw) -> Path:
    """A default-model run on a tiny-encoder cache of ``table`` made with ``extract_kw``."""
    from conftest import TINY

    from skinfeat.embed.extract import extract
    from skinfeat.embed.weights import WeightSource
    from skinfeat.learn.runconfig import RunConfig
    from skinfeat.workflows.fit import fit_run

    cache = tmp_path / "c.h5"
    extract(table, cache, backbone=TINY, weights=WeightSource("random"), precision="fp32",
            num_workers=0, image_size=64, **extract_kw)
    fit_run(table, cache, tmp_path / "run", RunConfig(seed=0))
    return tmp_path / "run"


@pytest.mark.parametrize("views", [None, ("rot90",)], ids=["default-all", "rot90"])
def test_a_view_averaged_model_exports_and_equals_predict(views, synth_table, tmp_path):
    """The graph turns the squashed image tensor as stage one turned the decoded image, and
    averages the embeddings (the default extraction: the image, its flip and three turns)."""
    kw = {} if views is None else {"average_views": views}
    run = _view_run(synth_table, tmp_path, **kw)
    p = Model(run)
    assert p.average_views == (("flip", "rot90", "rot180", "rot270") if views is None else views)
    out = tmp_path / "m.onnx"
    r = CliRunner().invoke(main, ["export", "--model", str(run), "--onnx", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.with_suffix(".json").read_text())["average_views"] == \
        list(p.average_views)
    assert_graph_equals_predict(out, p, synth_table, n=8)


def test_a_view_averaged_model_on_a_crop_cache_is_refused(synth_table, tmp_path):
    run = _view_run(synth_table.iloc[:60], tmp_path, resize="crop", average_views=("flip",))
    r = CliRunner().invoke(main, ["export", "--model", str(run), "--onnx",
                                  str(tmp_path / "m.onnx")])
    assert r.exit_code == 1 and "--resize squash" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "m.onnx").exists()
