"""A model fused from a real cache and a random-weight one: predict, explain and serve name the
random source (as the reports do, ``model_text.random_scope``), not the whole model; a model
whose every source is random keeps the whole-model wording."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_byo import write_foreign_cache
from test_report_truth import fit

from skinfeat.cli import main

pytestmark = pytest.mark.slow   # fits a model


@pytest.fixture(scope="module")
def fused(synth_table, synth_cache, tmp_path_factory):
    """A head on [a real (foreign, non-random) cache, the random synthetic cache]."""
    root = tmp_path_factory.mktemp("random-source")
    real = root / "real.h5"
    write_foreign_cache(real, synth_table["image_id"], synth_table["label"].to_numpy())
    fit(synth_table, [real, synth_cache], root / "run")
    return {"run": root / "run", "caches": [real, synth_cache],
            "image": f"{synth_table['image_id'].iloc[0]}.jpg"}


def named_only_random(text: str) -> None:
    assert "1 of 2 fused sources" in text and "synth.h5" in text, text
    assert "real.h5" not in text, text
    assert "mean nothing clinically" not in text, text   # the whole-model wording


def predict(fused, *extra):
    args = ["predict", "--model", str(fused["run"]), "--image", fused["image"]]
    for c in fused["caches"]:
        args += ["--cache", str(c)]
    r = CliRunner().invoke(main, args + list(extra))
    assert r.exit_code == 0, r.output
    return r


def test_predict_text_names_the_random_source(fused):
    r = predict(fused)
    note = next(line for line in r.stderr.splitlines() if "RANDOM" in line)
    named_only_random(note)


def test_predict_json_names_the_random_source(fused):
    out = json.loads(predict(fused, "--json").stdout)
    assert out["random_weights"] is True
    named_only_random(out["random_note"])


def test_serve_info_names_the_random_source(fused):
    pytest.importorskip("fastapi")
    pytest.importorskip("pytorch_grad_cam")
    from fastapi.testclient import TestClient

    from skinfeat.deploy.model import Model
    from skinfeat.deploy.serve import create_app

    with TestClient(create_app(Model(fused["run"], device="cpu"))) as client:
        info = client.get("/api/info").json()
    assert info["random_weights"] is True
    named_only_random(info["random_note"])


def test_explain_refuses_a_fused_model_with_a_foreign_source(fused, tmp_path, synth_dir):
    """explain embeds raw images, which a source made outside skinfeat cannot: it refuses
    this model, so there is no explain output to name the source in (the figure's banner takes
    the same ``random_note`` line)."""
    pytest.importorskip("pytorch_grad_cam")
    image = next(synth_dir.rglob("*.jpg"))
    r = CliRunner().invoke(main, ["explain", "--model", str(fused["run"]), "--image", str(image),
                                  "--out", str(tmp_path / "ex")])
    assert r.exit_code != 0
    assert "made outside skinfeat" in r.output


def test_the_whole_model_wording_stays_when_every_source_is_random(ship_runs):
    from skinfeat.deploy.model import Model
    from skinfeat.evaluate.model_text import random_line, random_scope

    p = Model(ship_runs["head"], device="cpu")
    assert p.random_note("these probabilities mean nothing clinically.") == \
        "RANDOM backbone weights: these probabilities mean nothing clinically."
    both = {"fused": [{"backbone": "a", "weights": {"kind": "random"}},
                      {"backbone": "b", "weights": {"kind": "random"}}],
            "sources": ["a.h5", "b.h5"]}
    assert random_scope(both) == "RANDOM backbone weights"
    assert random_line(both, "x") == "RANDOM backbone weights: x"
    assert random_scope({"fused": [{"backbone": "a"}, {"backbone": "b"}]}) == ""
