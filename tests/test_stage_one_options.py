"""Stage-one feature options (issue 29): --pool gem/avgmax, --layers last2/last3, --size
train/test/N, --average-views; each in the cache identity, predicted on raw images exactly as
cached, refused in one line where an encoder cannot give it."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from conftest import EXTRACT_TINY, TINY, run_cli

from skinfeat.embed.backbone import create_backbone
from skinfeat.embed.cache import CacheError, read_cache
from skinfeat.embed.engines import Embedder
from skinfeat.embed.extract import extract
from skinfeat.embed.transform import preprocess, transform_for
from skinfeat.embed.weights import WeightSource
from skinfeat.errors import InputError

KW = dict(backbone=TINY, weights=WeightSource("random"), precision="fp32", num_workers=0,
          image_size=64)


def _batch(table, spec, n=4) -> torch.Tensor:
    return torch.stack([preprocess(p, spec) for p in table["path"][:n]])


def test_gem_and_avgmax_pool_the_feature_map_as_defined(synth_table):
    model = create_backbone(TINY, WeightSource("random"))
    x = _batch(synth_table, transform_for(model, "squash", 64))
    with torch.inference_mode():
        fmap = model.forward_features(x)                  # (N, 64, h, w)
        got = {p: Embedder(model, torch.device("cpu"), "fp32", pool=p)(x) for p in
               ("avg", "gem", "avgmax")}
    flat = fmap.flatten(2)
    np.testing.assert_allclose(got["avg"], flat.mean(-1), rtol=1e-5, atol=1e-6)
    gem = flat.clamp(min=1e-6).pow(3).mean(-1).pow(1 / 3)
    np.testing.assert_allclose(got["gem"], gem, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["avgmax"], (flat.mean(-1) + flat.amax(-1)) / 2,
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(got["gem"], got["avg"])


@pytest.mark.parametrize("name,stages", [(TINY, (32, 48, 64)),
                                         # MobileNet / EfficientNet: a head conv after the
                                         # last stage, whose output is the final features
                                         ("test_efficientnet", None)])
def test_layers_concatenate_the_last_stages_each_standardised(synth_table, name, stages):
    model = create_backbone(name, WeightSource("random"))
    x = _batch(synth_table, transform_for(model, "squash", 64))
    chs = [f["num_chs"] for f in model.feature_info]
    if stages is None:   # the head conv: stages before it are the last feature_info entries
        assert chs[-1] != model.num_features
        stages = (chs[-2], chs[-1], model.num_features)
    with torch.inference_mode():
        last = Embedder(model, torch.device("cpu"), "fp32")(x)
        three = Embedder(model, torch.device("cpu"), "fp32", layers="last3")(x)
        two = Embedder(model, torch.device("cpu"), "fp32", layers="last2")(x)
    assert three.shape == (4, sum(stages)) and two.shape == (4, sum(stages[1:]))
    parts = torch.split(three, list(stages), dim=1)
    for part in parts:   # each stage standardised per image
        np.testing.assert_allclose(part.mean(1), 0, atol=1e-4)
        np.testing.assert_allclose(part.var(1, unbiased=False), 1, atol=1e-3)
    # the last part is the default embedding, standardised; last2 is the tail of last3
    want = (last - last.mean(1, keepdim=True)) / last.std(1, unbiased=False, keepdim=True)
    np.testing.assert_allclose(parts[-1], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(two, three[:, stages[0]:], rtol=1e-4, atol=1e-4)


def test_options_are_in_the_identity_and_caches_do_not_mix(synth_table, tmp_path):
    sub = synth_table.iloc[:6]
    plain = extract(sub, tmp_path / "plain.h5", layers="last", average_views=(), **KW).contents
    # a cache of the options' first values reads as before the options existed
    assert "layers" not in plain.identity and "average_views" not in plain.identity
    gem = extract(sub, tmp_path / "gem.h5", pool="gem", layers="last2", **KW).contents
    assert gem.identity["pool"] == "gem" and gem.identity["layers"] == "last2"
    assert gem.dim == 48 + 64 and gem.identity["embed_dim"] == 112
    with pytest.raises(CacheError, match="layers"):
        extract(synth_table.iloc[:8], tmp_path / "gem.h5", pool="gem", layers="last3", **KW)
    with pytest.raises(CacheError, match="pool"):
        extract(synth_table.iloc[:8], tmp_path / "gem.h5", pool="avgmax", layers="last2", **KW)
    with pytest.raises(CacheError, match="average_views"):
        extract(synth_table.iloc[:8], tmp_path / "plain.h5", average_views=("flip",), **KW)
    with pytest.raises(CacheError, match="size"):
        extract(synth_table.iloc[:8], tmp_path / "plain.h5", **{**KW, "image_size": 96})


def test_timm_default_is_last3_and_a_cache_of_the_old_default_keeps_its_layers(synth_table,
                                                                               tmp_path):
    """--layers' default (issue 29's paired compare): last3 for a timm model; a cache made with
    the earlier default (last, no key in its identity) grows as it was made, and a model trained
    on it embeds raw images as it was filled."""
    from test_encoders import assert_raw_predict_equals_cached

    from skinfeat.embed.extract import default_layers

    new = extract(synth_table.iloc[:4], tmp_path / "new.h5", **KW).contents
    assert new.identity["layers"] == "last3" and new.dim == 32 + 48 + 64
    old = tmp_path / "old.h5"
    extract(synth_table.iloc[:4], old, layers="last", **KW)
    grown = extract(synth_table, old, **KW)
    assert grown.embedded == len(synth_table) - 4 and grown.skipped == 4
    assert "layers" not in grown.contents.identity and grown.contents.dim == 64
    assert_raw_predict_equals_cached(synth_table, old, tmp_path / "run")
    # no timm forward_intermediates (or fewer than three stages): the last layer only
    spec = transform_for(create_backbone(TINY, WeightSource("random")), "squash", 64)
    assert default_layers(torch.nn.Flatten(), spec, None, tmp_path / "none.h5") == "last"


@pytest.mark.parametrize("layers", ["last2", "last3"])
def test_pooled_stages_trace_to_onnx_and_equal_torch(synth_table, tmp_path, layers):
    """A bundle on a --layers last2/last3 cache exports: the standardisation of each stage
    traces to ONNX (F.layer_norm's shape argument did not)."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from skinfeat.embed.engines import PooledFeatures

    net = PooledFeatures(create_backbone(TINY, WeightSource("random")), "avg", layers).eval()
    x = _batch(synth_table, transform_for(net.model, "squash", 64))
    path = tmp_path / "m.onnx"
    with torch.inference_mode():
        want = net(x).numpy()
    torch.onnx.export(net, (x,), str(path), opset_version=17, dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    got = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_average_views_store_the_mean_of_the_views(synth_table, tmp_path):
    sub = synth_table.iloc[:5]
    extract(sub, tmp_path / "v.h5", views=("flip", "rot90"), **KW)
    extract(sub, tmp_path / "m.h5", average_views=("flip", "rot90"), **KW)
    views, mean = read_cache(tmp_path / "v.h5"), read_cache(tmp_path / "m.h5")
    assert mean.identity["average_views"] == ["flip", "rot90"] and not mean.views
    # averaged views turn the squashed tensor (as export's graph does); stored views, and
    # averaged ones under the centre crop, turn the decoded image
    assert mean.identity["view_transform"] == "squashed-tensor-turned"
    assert views.identity["view_transform"] == "image-before-resize"
    crop = extract(sub.iloc[:2], tmp_path / "c.h5", average_views=("flip",),
                   **{**KW, "resize": "crop"}).contents
    assert crop.identity["view_transform"] == "image-before-resize"
    want = (views.embeddings + views.view_embeddings.sum(1)) / 3
    np.testing.assert_allclose(mean.embeddings, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="--average-views"):
        extract(sub, tmp_path / "x.h5", views=("flip",), average_views=("flip",), **KW)


def test_default_averages_all_views_for_a_new_cache_and_an_old_cache_keeps_its_own(
        synth_table, tmp_path):
    """--average-views' default (issue 29's paired compare): the image, its flip and three
    quarter turns for a new cache; a cache made before (one view, no key in its identity) grows
    as it was made; stored --views turn the default off."""
    from skinfeat.embed.extract import VIEW_NAMES

    sub = synth_table.iloc[:4]
    new = extract(sub, tmp_path / "new.h5", **KW).contents
    assert new.identity["average_views"] == list(VIEW_NAMES)
    old = tmp_path / "old.h5"
    extract(sub.iloc[:2], old, average_views=(), **KW)
    grown = extract(sub, old, **KW)          # no CacheError: the cache keeps its one view
    assert grown.skipped == 2 and "average_views" not in grown.contents.identity
    stored = extract(sub, tmp_path / "views.h5", views=("flip",), **KW).contents
    assert stored.views == ["flip"] and "average_views" not in stored.identity


def test_tensor_turns_equal_the_decoded_image_views():
    """explain and export turn the resized tensor the way stage one turns the decoded image."""
    from PIL import Image

    from skinfeat.embed.extract import VIEW_NAMES, apply_view
    from skinfeat.embed.turns import turn, turn_back

    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None]          # (1, 3, 5, 7)
    for view in VIEW_NAMES:
        want = np.asarray(apply_view(Image.fromarray(pixels), view))
        got = turn(x, view)[0].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, want, err_msg=view)
        assert torch.equal(turn_back(turn(x, view), view), x), view


def test_size_train_test_and_pixels():
    model = create_backbone(TINY, WeightSource("random"))
    assert transform_for(model).size == transform_for(model, "squash", "train").size == 160
    assert transform_for(model, "squash", "96").size == 96
    with pytest.raises(InputError, match="--size test: test_convnext has no test_input_size"):
        transform_for(model, "squash", "test")
    with pytest.raises(InputError, match="--size big"):
        transform_for(model, "squash", "big")
    # an encoder whose timm config names a test size (convnext_tiny.fb_in1k: 288, crop 1.0)
    tested = timm.create_model(TINY, pretrained=False, num_classes=0, pretrained_cfg_overlay={
        "test_input_size": (3, 192, 192), "test_crop_pct": 1.0})
    spec = transform_for(tested, "crop", "test")
    assert spec.size == 192 and spec.crop_pct == 1.0
    assert transform_for(tested, "crop").size == 160


def test_token_models_refuse_map_pools_in_one_line(synth_table, tmp_path):
    with pytest.raises(InputError, match="--pool gem: .* gives tokens"):
        extract(synth_table.iloc[:2], tmp_path / "v.h5", **{**KW, "backbone": "test_vit",
                                                            "image_size": None}, pool="gem")
    assert not (tmp_path / "v.h5").exists()


def test_raw_image_predict_equals_the_cached_path_with_every_option(synth_table, tmp_path):
    """A bundle trained on an option cache embeds raw images as that cache was filled."""
    from test_encoders import assert_raw_predict_equals_cached

    cache = tmp_path / "c.h5"
    extract(synth_table, cache, pool="gem", layers="last2", average_views=("rot90",), **KW)
    assert_raw_predict_equals_cached(synth_table, cache, tmp_path / "run")


def test_cli_options(synth_dir, tmp_path):
    out = run_cli("extract", "--data", synth_dir, "--cache", tmp_path / "c.h5", *EXTRACT_TINY,
                  "--size", "64", "--pool", "avgmax", "--layers", "last3",
                  "--average-views", "flip")
    assert "of dim 144" in out.output and "views averaged: image, flip)" in out.output
    assert "NOTE: each embedding averages" not in out.output          # --average-views given
    default = run_cli("extract", "--data", synth_dir, "--cache", tmp_path / "e.h5",
                      *EXTRACT_TINY, "--size", "64")
    assert "five encoder passes per image" in default.output
    assert "views averaged: image, flip, rot90, rot180, rot270)" in default.output
    ident = read_cache(tmp_path / "c.h5").identity
    assert (ident["pool"], ident["layers"], ident["average_views"],
            ident["preprocessing"]["size"]) == ("avgmax", "last3", ["flip"], 64)
    bad = run_cli("extract", "--data", synth_dir, "--cache", tmp_path / "d.h5", *EXTRACT_TINY,
                  "--size", "tiny", ok=False)
    assert bad.exit_code != 0
    assert bad.output.strip().splitlines()[-1] == \
        "Error: --size tiny: expected train, test or a side in pixels"
