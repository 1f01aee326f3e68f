"""Explain for every encoder family: open_clip and transformers ViTs are hooked at their last
block's tokens (``FamilyEncoder.cam_layer`` + ``cam_reshape``), timm at its last stage; the
model-randomisation sanity check (Adebayo et al. 2018) on the real MobileNetV2 weights; the
figure's banner wraps inside the figure."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pytorch_grad_cam")

from test_encoders import FAMILIES  # noqa: E402

from skinfeat.deploy.explain import Explainer, cam_target, explanation_figure  # noqa: E402
from skinfeat.deploy.model import Model  # noqa: E402
from skinfeat.embed.extract import extract  # noqa: E402
from skinfeat.learn.head import HeadConfig  # noqa: E402
from skinfeat.learn.runconfig import RunConfig  # noqa: E402
from skinfeat.workflows.fit import fit_run  # noqa: E402

pytestmark = pytest.mark.slow   # encoder families: real encoders, exports, int8

REAL = Path(__file__).resolve().parents[2] / "shared/data/mobilenetv2_100.coral_in1k"
SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/ham10000-sample"
FAST = HeadConfig(seed=0, max_epochs=3)


def trained_run(table, backbone: str, root: Path) -> Path:
    cache = root / "cache.h5"
    extract(table, cache, backbone=backbone, precision="fp32", num_workers=0)
    fit_run(table, cache, root / "run", RunConfig(seed=0, model="head", params=FAST))
    return root / "run"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_vit_family_gets_a_heatmap_from_its_token_grid(family, synth_table, tmp_path):
    folder = tmp_path / f"tiny-{family}"
    FAMILIES[family](folder)
    run = trained_run(synth_table, f"{family}:{folder}", tmp_path)
    p = Model(run)
    embedder, _ = p._backbone()
    layer, reshape = cam_target(embedder.net.model)
    assert reshape is not None          # tokens are folded into the patch grid
    path = synth_table["path"].iloc[0]
    ex = Explainer(p)
    res = ex.explain(path, method="eigencam")
    heat = res.cams[res.predicted]
    assert heat.shape == res.view.shape[:2]
    assert np.isfinite(heat).all() and heat.max() == pytest.approx(1.0)
    assert heat.std() > 0               # a map, not a constant
    # Grad-CAM through the trained head: a random tiny tower can leave one class's map all
    # negative (clipped to 0), but the gradients reach the token grid for the others.
    maps = [ex.explain(path, target=c).cams[c] for c in p.classes]
    assert all(m.shape == heat.shape and np.isfinite(m).all() for m in maps)
    assert sum(m.std() > 0 for m in maps) >= 2


def test_timm_keeps_its_last_stage(ship_runs):
    embedder, _ = Model(ship_runs["head"])._backbone()
    layer, reshape = cam_target(embedder.net.model)
    assert reshape is None and isinstance(layer, torch.nn.Module)


def test_a_long_banner_wraps_inside_the_figure(ship_runs, synth_table):
    res = Explainer(Model(ship_runs["head"])).explain(synth_table["path"].iloc[0])
    weights = "local folder " + "/very/long/path/to/a/checkpoint" * 8 + " (sha256 0123456789ab)"
    fig = explanation_figure(res, weights, random_weights=True)
    fig.canvas.draw()
    title = fig._suptitle
    box, frame = title.get_window_extent(), fig.bbox
    assert "\n" in title.get_text()
    assert box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y1 <= frame.y1
    # the panels sit below the banner
    assert max(ax.get_window_extent().y1 for ax in fig.axes) <= box.y0 + 1


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a.ravel())).astype(float)
    rb = np.argsort(np.argsort(b.ravel())).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.mark.skipif(not (REAL / "model.safetensors").is_file() or not SAMPLE.is_dir(),
                    reason="real MobileNetV2 weights or the HAM10000 sample absent")
def test_heatmap_changes_when_the_backbone_is_randomised(tmp_path):
    """Adebayo et al. (2018): a saliency map that survives randomising the model's weights
    explains the image, not the model. Real weights, real lesions; then every backbone
    parameter re-drawn; the rank correlation of the two maps falls below 0.5."""
    import skinfeat

    data = skinfeat.load_dataset(SAMPLE)
    table = data.table.groupby("dx", group_keys=False).head(10).reset_index(drop=True)
    run = trained_run(table, f"local-dir:{REAL}", tmp_path)
    p = Model(run)
    ex = Explainer(p)
    paths = list(table["path"].iloc[::10][:3])
    before = [ex.explain(path).cams for path in paths]
    assert all(np.ptp(next(iter(b.values()))) > 0 for b in before)
    embedder, _ = p._backbone()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in embedder.net.model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    rhos = []
    for path, b in zip(paths, before, strict=False):
        c = next(iter(b))                       # the class explained before, again
        rhos.append(spearman(b[c], ex.explain(path, target=c).cams[c]))
    assert np.median(rhos) < 0.5, rhos


def test_the_overlay_is_the_models_input_for_both_resize_modes(ship_runs, synth_table):
    """The map is drawn on the pixels the backbone saw: the squashed image (the default) or,
    with ``--resize crop``, the centre crop, never the original frame."""
    from dataclasses import replace

    from PIL import Image

    from skinfeat.deploy.explain import model_view
    from skinfeat.embed.transform import load_image, to_tensor

    path = synth_table["path"].iloc[0]
    p = Model(ship_runs["head"])
    _, spec = p._backbone()
    res = Explainer(p).explain(path)
    img = load_image(path, spec)
    squashed = np.asarray(img.resize((spec.size, spec.size), Image.BILINEAR), dtype=int)
    assert spec.resize == "squash" and np.abs(res.view.astype(int) - squashed).max() <= 1
    crop = replace(spec, resize="crop")
    view = model_view(to_tensor(img, crop), crop).astype(int)
    short = int(crop.size / crop.crop_pct)
    scale = short / min(img.size)
    big = img.resize((max(short, round(img.width * scale)), max(short, round(img.height * scale))),
                     Image.BILINEAR)
    left, top = (big.width - crop.size) // 2, (big.height - crop.size) // 2
    centre = np.asarray(big.crop((left, top, left + crop.size, top + crop.size)), dtype=int)
    assert np.abs(view - centre).max() <= 1
