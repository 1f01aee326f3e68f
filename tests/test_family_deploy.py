"""evaluate and serve on raw images for the open_clip and transformers families (tiny models
saved to disk as published): evaluate from the images scores as evaluate from the cache, and
serve's JSON API answers as predict_image, with its heatmaps."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("pytorch_grad_cam")
from fastapi.testclient import TestClient  # noqa: E402
from test_encoders import FAMILIES  # noqa: E402

from skinfeat.api import evaluate_model  # noqa: E402
from skinfeat.deploy.model import Model  # noqa: E402
from skinfeat.deploy.serve import create_app  # noqa: E402
from skinfeat.embed.extract import extract  # noqa: E402
from skinfeat.learn.head import HeadConfig  # noqa: E402
from skinfeat.learn.runconfig import RunConfig  # noqa: E402
from skinfeat.workflows.fit import fit_run  # noqa: E402

pytestmark = pytest.mark.slow   # encoder families: real encoders, exports, int8


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_run(request, synth_table, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(f"deploy-{family}")
    FAMILIES[family](root / f"tiny-{family}")
    cache = root / "cache.h5"
    extract(synth_table, cache, backbone=f"{family}:{root / f'tiny-{family}'}",
            precision="fp32", num_workers=0)
    fit_run(synth_table, cache, root / "run",
            RunConfig(seed=0, model="head", params=HeadConfig(seed=0, max_epochs=3)))
    return family, root / "run", cache


def test_evaluate_on_raw_images_equals_evaluate_on_the_cache(family_run, synth_dir, tmp_path):
    family, run, cache = family_run
    raw = evaluate_model(run, synth_dir, tmp_path / "raw", include_seen=True)
    cached = evaluate_model(run, synth_dir, tmp_path / "cached", include_seen=True,
                            embeddings=[cache])
    assert raw.metrics["n"] == cached.metrics["n"] == raw.info["n"] > 0
    for key in ("balanced_accuracy", "accuracy", "macro_f1"):   # the same decisions
        assert raw.metrics[key] == pytest.approx(cached.metrics[key], abs=1e-9), (family, key)
    for key in ("macro_auc", "ece"):                            # probabilities within 1e-5
        assert raw.metrics[key] == pytest.approx(cached.metrics[key], abs=1e-5), (family, key)


def test_serve_answers_as_predict_image(family_run, synth_table):
    family, run, _ = family_run
    predictor = Model(run)
    row = synth_table.iloc[3]
    with TestClient(create_app(predictor)) as client:
        r = client.post("/api/predict",
                        files={"image": ("x.jpg", Path(row["path"]).read_bytes(), "image/jpeg")},
                        data={"age": "50", "sex": "male", "localization": "back"})
    assert r.status_code == 200, r.text
    out = r.json()
    want = predictor.predict_image(row["path"], age=50, sex="male",
                                   localization="back").probabilities
    np.testing.assert_allclose([out["probabilities"][c] for c in want], list(want.values()),
                               atol=1e-6)
    png = base64.b64decode(out["cams"][out["prediction"]].split(",", 1)[1])
    assert Image.open(io.BytesIO(png)).format == "PNG"      # the ViT token-map heatmap
