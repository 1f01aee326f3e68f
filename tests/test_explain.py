"""explain: heatmaps land where the class signal is; a field the model ignores gets no
attribution."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

pytest.importorskip("pytorch_grad_cam")

from skinfeat.cli import main  # noqa: E402
from skinfeat.data.metadata import MetadataEncoder  # noqa: E402
from skinfeat.deploy.bundle import save_bundle  # noqa: E402
from skinfeat.deploy.explain import Explainer  # noqa: E402
from skinfeat.deploy.model import Model  # noqa: E402
from skinfeat.embed.extract import Embedder  # noqa: E402
from skinfeat.embed.transform import TransformSpec  # noqa: E402
from skinfeat.learn.head import FusionHead  # noqa: E402

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs

SIZE = 64
SPEC = TransformSpec(size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), draft=False)
CLASSES = ["plain", "signal"]


def quadrant_image(rng: np.random.Generator, signal: bool) -> np.ndarray:
    """Grey noise, a green distractor square anywhere; class "signal" adds a red square in the
    top-left quadrant (and only there)."""
    img = np.clip(rng.normal(128, 12, (SIZE, SIZE, 3)), 0, 255)
    x, y = rng.integers(0, SIZE - 10, 2)
    img[y:y + 10, x:x + 10] = (40, 200, 40)
    if signal:
        x, y = rng.integers(2, SIZE // 2 - 12, 2)
        img[y:y + 10, x:x + 10] = (220, 30, 30)
    return img.astype(np.uint8)


class TinyCNN(nn.Module):
    """A backbone small enough to train in a test, with timm's ``forward_features`` interface."""

    def __init__(self):
        super().__init__()
        self.stages = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                                    nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())

    def forward_features(self, x):
        return self.stages(x)


def to_input(images: np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(images, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    return (x - 0.5) / 0.25


@pytest.fixture(scope="module")
def quadrant_model(tmp_path_factory):
    """A CNN + fusion head trained on quadrant images, saved as a bundle, loaded by Model."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = np.arange(160) % 2
    images = np.stack([quadrant_image(rng, bool(t)) for t in y])
    meta_rows = pd.DataFrame({"age": rng.integers(20, 80, len(y)).astype(float),
                              "sex": rng.choice(["female", "male", "unknown"], len(y))})
    encoder = MetadataEncoder(numeric=("age",), categorical=("sex",)).fit(meta_rows)
    meta = torch.as_tensor(encoder.transform(meta_rows))
    cnn, head = TinyCNN(), FusionHead(16, encoder.n_features, 2)
    opt = torch.optim.Adam([*cnn.parameters(), *head.parameters()], lr=3e-3)
    x, target = to_input(images), torch.as_tensor(y)
    for _ in range(8):
        for batch in torch.randperm(len(y)).split(32):
            loss = nn.functional.cross_entropy(
                head(cnn.forward_features(x[batch]).mean((2, 3)), meta[batch]), target[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    # The head now ignores sex: its first metadata layer gets zero weights on the sex columns.
    sex_cols = [j for j, n in enumerate(encoder.feature_names) if n.startswith("sex_")]
    with torch.no_grad():
        head.meta_mlp.fc1.weight[:, sex_cols] = 0.0
    head.eval()
    run = tmp_path_factory.mktemp("quadrant")
    save_bundle(run, {"model_type": "head", "classes": CLASSES, "encoder": encoder.to_dict(),
                      "temperature": 10.0, "weights": "a test CNN",
                      "head": {"embed_dim": 16, "meta_dim": encoder.n_features, "n_classes": 2,
                               "head": "reference", "inputs": "fused"},
                      "backbone": {"backbone": "tiny-cnn", "weights": {"kind": "file"},
                                   "preprocessing": SPEC.to_dict(), "precision": "fp32"}},
                state=head.state_dict())
    p = Model(run)
    # The bundle cannot rebuild a test's CNN from a timm name: hand the Model its backbone.
    p._embedders = [(Embedder(cnn.eval(), torch.device("cpu"), "fp32"), SPEC)]
    images_dir = run / "images"
    images_dir.mkdir()
    paths = []
    for i in range(6):
        path = images_dir / f"signal_{i}.png"
        Image.fromarray(quadrant_image(np.random.default_rng(100 + i), True)).save(path)
        paths.append(path)
    return p, paths


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam"])
def test_heatmap_mass_falls_in_the_signal_quadrant(quadrant_model, method):
    p, paths = quadrant_model
    ex = Explainer(p)
    shares = []
    for path in paths:
        res = ex.explain(path, {"age": 70, "sex": "male"}, target="signal", method=method)
        assert res.predicted == "signal", res.proba
        heat = res.cams["signal"]
        assert heat.shape == (SIZE, SIZE) and res.view.shape == (SIZE, SIZE, 3)
        shares.append(heat[:SIZE // 2, :SIZE // 2].sum() / heat.sum())
    # A uniform map would put 25 % there.
    assert np.mean(shares) > 0.7 and min(shares) > 0.5, shares


def test_an_ignored_field_gets_zero_attribution(quadrant_model):
    p, paths = quadrant_model
    res = Explainer(p).explain(paths[0], {"age": 75, "sex": "female"})
    assert set(res.attribution) == {"age", "sex"}
    assert np.abs(res.attribution["sex"]).max() < 1e-6, res.attribution
    assert np.abs(res.attribution["age"]).max() > 1e-4, res.attribution
    # Probability changes of one field sum to zero over the classes.
    assert abs(res.attribution["age"].sum()) < 1e-6
    # A field left out is missing: setting it to missing changes nothing.
    assert np.abs(Explainer(p).explain(paths[0], {"sex": "female"}).attribution["age"]).max() \
        < 1e-9


def test_lightgbm_attribution_uses_its_own_contributions(ship_runs, synth_table):
    p = Model(ship_runs["lgbm"])
    ex = Explainer(p)
    row = synth_table.iloc[0]
    res = ex.explain(row["path"], {"age": row["age"], "sex": row["sex"],
                                   "localization": row["localization"]})
    assert res.method == "scorecam" and "LightGBM" in res.attribution_kind
    assert set(res.attribution) == set(p.encoder.numeric + p.encoder.categorical)
    # Age is one encoded column: its attribution is exactly the booster's contribution of it.
    from skinfeat.learn.baseline import design_matrix
    model = p.model
    meta = p.encode_metadata(ex.metadata_table({"age": row["age"], "sex": row["sex"],
                                                "localization": row["localization"]}))
    x = design_matrix(p.embed([row["path"]])[0], meta, model.config.inputs, model.pca_)
    contrib = model.booster_.predict(x, pred_contrib=True,
                                    num_iteration=model.booster_.best_iteration or None)
    age_col = x.shape[1] - meta.shape[1] + p.encoder.feature_names.index("age")
    want = np.asarray(contrib).reshape(len(p.classes), x.shape[1] + 1)[:, age_col]
    np.testing.assert_allclose(res.attribution["age"], want, atol=1e-9)


def test_explain_cli_single_image_batch_and_errors(ship_runs, synth_table, tmp_path):
    image = synth_table["path"].iloc[0]
    out = tmp_path / "ex"
    r = CliRunner().invoke(main, ["explain", "--model", str(ship_runs["head"]), "--image", image,
                                  "--meta", "age=55", "--meta", "sex=female", "--class", "mel",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    png = out / f"{synth_table['image_id'].iloc[0]}.png"
    assert png.is_file() and "RANDOM" in r.stderr
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 600
    rows = synth_table.iloc[1:4]
    rows[["path", "age", "sex"]].rename(columns={"path": "image"}).to_csv(tmp_path / "t.csv",
                                                                           index=False)
    r = CliRunner().invoke(main, ["explain", "--model", str(ship_runs["lgbm"]), "--csv",
                                  str(tmp_path / "t.csv"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert all((out / f"{i}.png").is_file() for i in rows["image_id"])
    for args, message in [(["--meta", "weight=3"], "weight: this model has no such field; its "
                                                   "fields are age, sex, localization"),
                          (["--class", "cat"], "unknown class 'cat'"),
                          (["--meta", "age"], "use FIELD=VALUE")]:
        r = CliRunner().invoke(main, ["explain", "--model", str(ship_runs["head"]), "--image",
                                      image, "--out", str(out), *args])
        assert r.exit_code in (1, 2) and message in r.output, r.output
    r = CliRunner().invoke(main, ["explain", "--model", str(ship_runs["lgbm"]), "--image", image,
                                  "--method", "gradcam", "--out", str(out)])
    assert r.exit_code == 2 and "not differentiable" in r.output


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_a_view_averaged_model_gets_one_map_per_view(synth_table, tmp_path, method):
    """The model scores the mean of the image's and its flip's embeddings, so it cannot tell an
    image from its mirror image: its heatmap of the mirror image is the mirror of its heatmap
    (a map of one view, as before the views were averaged, is not)."""
    from conftest import TINY

    from skinfeat.embed.extract import extract
    from skinfeat.embed.transform import preprocess
    from skinfeat.embed.turns import turn
    from skinfeat.embed.weights import WeightSource
    from skinfeat.learn.head import HeadConfig
    from skinfeat.learn.runconfig import RunConfig
    from skinfeat.workflows.fit import fit_run

    cache = tmp_path / "c.h5"
    extract(synth_table, cache, backbone=TINY, weights=WeightSource("random"), precision="fp32",
            num_workers=0, image_size=64, average_views=("flip",))
    fit_run(synth_table, cache, tmp_path / "run",
            RunConfig(seed=0, model="head", params=HeadConfig(seed=0, max_epochs=3)))
    p = Model(tmp_path / "run")
    assert p.average_views == ("flip",)
    ex, (_, spec) = Explainer(p), p._backbone()
    x = preprocess(synth_table["path"].iloc[0], spec)[None]
    meta = p.encode_metadata(synth_table.iloc[:1])
    heat = ex.heatmap(x, meta, 1, method)
    mirrored = ex.heatmap(turn(x, "flip"), meta, 1, method)
    assert heat.shape == (64, 64) and heat.max() > 0 and not np.allclose(heat, heat[:, ::-1])
    np.testing.assert_allclose(mirrored, heat[:, ::-1], atol=1e-5)
