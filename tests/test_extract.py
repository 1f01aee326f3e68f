"""Stage one: views, preprocessing options, shards + merge, torchrun, the real convnext_tiny."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY

from skinfeat.cli import main
from skinfeat.embed.backbone import create_backbone
from skinfeat.embed.cache import read_cache
from skinfeat.embed.extract import Embedder, extract
from skinfeat.embed.transform import preprocess, transform_for
from skinfeat.embed.weights import WeightSource

# layers="last": these tests compare with the plain embedder (Embedder's default); the last3
# default of timm encoders is tested in test_stage_one_options
KW = dict(backbone=TINY, weights=WeightSource("random"), precision="fp32", num_workers=0,
          layers="last")


def test_views_are_an_extra_axis(synth_table, tmp_path):
    sub = synth_table.iloc[:12]
    res = extract(sub, tmp_path / "v.h5", views=("flip", "rot90"), **KW)
    c = read_cache(tmp_path / "v.h5")
    assert c.view_embeddings.shape == (12, 2, 64) and c.views == ["flip", "rot90"]
    assert res.embedded == 12
    # A flipped image is a different input: its embedding differs from the original's.
    assert not np.allclose(c.view_embeddings[:, 0], c.embeddings)


@pytest.mark.parametrize("view,resize", [("flip", "squash"), ("rot90", "squash"),
                                         ("rot90", "crop")])
def test_views_are_made_before_the_resize(synth_table, tmp_path, view, resize):
    """A view embeds the whole decoded image flipped or rotated, then resized. With the centre
    crop, turning the resized tensor instead shifts the crop by a pixel: another input."""
    from PIL import Image

    from skinfeat.embed.transform import load_image, to_tensor

    sub = synth_table.iloc[:4]
    extract(sub, tmp_path / "v.h5", views=(view,), resize=resize, **KW)
    c = read_cache(tmp_path / "v.h5")
    assert c.identity["view_transform"] == "image-before-resize"
    model = create_backbone(TINY, WeightSource("random"))
    spec = transform_for(model, resize)
    imgs = [load_image(p, spec) for p in sub["path"]]
    assert all(i.width != i.height for i in imgs)  # the synthetic photos are not square
    how = {"flip": Image.Transpose.FLIP_LEFT_RIGHT, "rot90": Image.Transpose.ROTATE_90}[view]
    x = torch.stack([to_tensor(i.transpose(how), spec) for i in imgs])
    emb = Embedder(model, torch.device("cpu"), "fp32")
    rows = c.rows_for(sub["image_id"].tolist())
    np.testing.assert_allclose(c.view_embeddings[rows, 0], emb(x).numpy(), rtol=1e-4, atol=1e-5)
    if resize == "crop":
        resized = torch.stack([to_tensor(i, spec) for i in imgs])
        late = emb(torch.rot90(resized, 1, dims=[2, 3])).numpy()
        assert not np.allclose(c.view_embeddings[rows, 0], late, rtol=1e-3, atol=1e-4)


def test_caches_with_views_made_after_the_resize_are_refused(synth_table, tmp_path):
    """Caches from before views were made on the full image have no ``view_transform``: their
    rot90 rows must not be mixed with new ones."""
    import json

    import h5py

    sub = synth_table.iloc[:4]
    extract(sub, tmp_path / "v.h5", views=("rot90",), **KW)
    with h5py.File(tmp_path / "v.h5", "r+") as f:
        ident = json.loads(f.attrs["identity"])
        del ident["view_transform"]
        f.attrs["identity"] = json.dumps(ident)
    with pytest.raises(Exception, match="view_transform"):
        extract(synth_table.iloc[:8], tmp_path / "v.h5", views=("rot90",), **KW)


def test_crop_and_image_size_are_part_of_the_identity(synth_table, tmp_path):
    sub = synth_table.iloc[:4]
    extract(sub, tmp_path / "a.h5", resize="crop", image_size=96, **KW)
    ident = read_cache(tmp_path / "a.h5").identity["preprocessing"]
    assert ident["resize"] == "crop" and ident["size"] == 96
    with pytest.raises(Exception, match="preprocessing"):
        extract(sub, tmp_path / "a.h5", resize="squash", image_size=96, **KW)


@pytest.mark.slow   # end to end: two extract processes
def test_two_shards_merged_equal_one_process(synth_dir, synth_cache, tmp_path):
    """Two CPU processes, one shard each (as a SLURM array would run them), then merge."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "skinfeat.cli", "extract", "--data",
                               str(synth_dir), "--cache", str(tmp_path / f"s{i}.h5"), "--backbone",
                               TINY, "--weights", "random", "--precision", "fp32", "--workers", "0",
                               "--shard", f"{i}/2", "--layers", "last",  # synth_cache's
                               "--average-views", "none"],              # layers, one view
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out.decode()
    parts = [read_cache(tmp_path / f"s{i}.h5") for i in range(2)]
    assert not set(parts[0].image_ids) & set(parts[1].image_ids)
    r = CliRunner().invoke(main, ["cache", "merge", str(tmp_path / "s0.h5"),
                                  str(tmp_path / "s1.h5"), "--out", str(tmp_path / "m.h5")],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    merged, single = read_cache(tmp_path / "m.h5"), read_cache(synth_cache)
    assert list(merged.image_ids) == list(single.image_ids)
    np.testing.assert_allclose(merged.embeddings, single.embeddings, rtol=1e-5, atol=1e-6)
    assert "shard" not in merged.identity


@pytest.mark.slow   # end to end: extract processes
def test_torchrun_environment_shards_automatically(synth_dir, tmp_path):
    r = CliRunner(env={"WORLD_SIZE": "2", "RANK": "1"}).invoke(
        main, ["extract", "--data", str(synth_dir), "--cache", str(tmp_path / "t.h5"),
               "--backbone", TINY, "--weights", "random", "--precision", "fp32", "--workers", "0"],
        catch_exceptions=False)
    assert r.exit_code == 0, r.output
    c = read_cache(tmp_path / "t.shard1of2.h5")
    assert c.identity["shard"] == "1/2" and 0 < len(c.image_ids) < 200


def test_cache_info_lists_identity_and_failures(synth_cache):
    r = CliRunner().invoke(main, ["cache", "info", str(synth_cache)], catch_exceptions=False)
    assert r.exit_code == 0
    assert TINY in r.output and "RANDOM" in r.output and "failures: 0" in r.output


@pytest.mark.slow
def test_real_convnext_tiny_gives_768_dims(synth_table, tmp_path):
    sub = synth_table.iloc[:6]
    res = extract(sub, tmp_path / "ct.h5", backbone="convnext_tiny", weights=WeightSource("random"),
                  precision="fp32", num_workers=0, batch_size=3, layers="last")
    c = res.contents
    assert c.embeddings.shape == (6, 768) and np.isfinite(c.embeddings).all()
    assert c.identity["preprocessing"]["size"] == 224
    assert c.identity["preprocessing"]["resize"] == "squash"


@pytest.mark.slow   # benchmark-like: torch.compile, minutes on 2 cores
def test_compiled_bf16_matches_eager_fp32(synth_table):
    model = create_backbone(TINY, WeightSource("random"))
    spec = transform_for(model)
    x = torch.stack([preprocess(p, spec) for p in synth_table["path"].iloc[:3]])
    ref = Embedder(model, torch.device("cpu"), "fp32")(x)
    fast = Embedder(model, torch.device("cpu"), "bf16", compile=True)
    got = torch.cat([fast(x[:2]), fast(x[2:])])  # a short last batch is padded, not recompiled
    cos = torch.nn.functional.cosine_similarity(ref, got)
    assert cos.min() > 0.99, cos


def test_local_weights_file_is_loaded_and_stamped(synth_table, tmp_path):
    """--weights-file: a local checkpoint, no network; its sha256 is the identity."""
    import timm
    from safetensors.torch import save_file

    from skinfeat.embed.weights import resolve_weights

    torch.manual_seed(3)
    full = timm.create_model(TINY, pretrained=False)  # as a user's checkpoint: with its classifier
    save_file(full.state_dict(), str(tmp_path / "w.safetensors"))
    source = resolve_weights(weights_file=tmp_path / "w.safetensors")
    sub = synth_table.iloc[:4]
    c = extract(sub, tmp_path / "f.h5", backbone=TINY, weights=source, precision="fp32",
                num_workers=0, layers="last", average_views=()).contents
    assert c.identity["weights"]["kind"] == "file" and len(c.identity["weights"]["sha256"]) == 64
    model = create_backbone(TINY, WeightSource("random"))
    model.load_state_dict({k: v for k, v in full.state_dict().items()
                           if not k.startswith("head.fc")})
    spec = transform_for(model)
    x = torch.stack([preprocess(p, spec) for p in sub["path"]])
    want = Embedder(model, torch.device("cpu"), "fp32")(x).numpy()
    np.testing.assert_allclose(c.embeddings[c.rows_for(sub["image_id"].tolist())], want,
                               rtol=1e-5, atol=1e-6)
