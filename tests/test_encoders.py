"""Encoder families: tiny random-init open_clip and transformers models saved to disk as real
checkpoints are published, loaded by path through extract, trained on, and predicted on raw
images exactly as on their cache; the typed cache identity; ``skinfeat backbones``."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from skinfeat.cli import main
from skinfeat.embed.cache import CacheError, CacheIdentity, comparable, read_cache
from skinfeat.embed.encoders import list_backbones, parse_backbone
from skinfeat.embed.extract import extract
from skinfeat.embed.weights import WeightSource
from skinfeat.learn.runconfig import RunConfig

pytestmark = pytest.mark.slow   # encoder families: real encoders, exports, int8

SIZE = 32


def save_tiny_vit(folder) -> None:
    """A transformers ViT, as ``save_pretrained`` publishes one (config, weights, processor)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, image_size=SIZE, patch_size=8)
    transformers.ViTModel(cfg).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": SIZE, "width": SIZE}, image_mean=[0.5] * 3,
                                   image_std=[0.5] * 3, resample=2).save_pretrained(folder)


def save_tiny_clip(folder, seed: int = 0) -> None:
    """An open_clip model as hub folders hold one: open_clip_config.json + safetensors."""
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": SIZE, "layers": 2, "width": 32,
                                           "patch_size": 8, "head_width": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2,
                        "layers": 1}}
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic", "resize_mode": "shortest"}}))


FAMILIES = {"hf": save_tiny_vit, "open_clip": save_tiny_clip}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("encoders")
    out = {}
    for family, save in FAMILIES.items():
        save(root / f"tiny-{family}")
        out[family] = root / f"tiny-{family}"
    return out


@pytest.fixture(scope="module")
def family_caches(folders, synth_table, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("family-caches")
    return {f: extract(synth_table, root / f"{f}.h5", backbone=f"{f}:{folders[f]}",
                       precision="fp32", num_workers=0).contents
            for f in FAMILIES}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_saved_folder_is_recorded_by_content_with_its_own_preprocessing(family, folders,
                                                                          family_caches):
    ident = family_caches[family].identity
    assert ident["family"] == family and ident["backbone"] == f"{family}:tiny-{family}"
    assert ident["weights"]["kind"] == "local" and len(ident["weights"]["sha256"]) == 64
    assert ident["location"].endswith(str(folders[family]))
    pre = ident["preprocessing"]
    assert pre["size"] == SIZE
    if family == "open_clip":   # the folder's preprocess_cfg, not ImageNet's
        assert pre["mean"][0] == pytest.approx(0.48145466) and pre["interpolation"] == "bicubic"
        assert ident["pool"] == "proj" and family_caches[family].dim == 16
    else:
        assert pre["mean"] == [0.5, 0.5, 0.5] and pre["interpolation"] == "bilinear"
        assert ident["pool"] == "cls" and family_caches[family].dim == 32
    assert "RANDOM" not in family_caches[family].attrs["weights"]
    assert "local folder" in family_caches[family].attrs["weights"]


def assert_raw_predict_equals_cached(table, cache, run) -> None:
    """A head trained on ``cache`` embeds raw images of ``table`` as the cache was filled: its
    predictions from the files equal those from the cache."""
    from skinfeat.deploy.model import Model
    from skinfeat.learn.head import HeadConfig
    from skinfeat.workflows.fit import fit_run

    fit_run(table, cache, run,
            RunConfig(seed=0, model="head", params=HeadConfig(seed=0, max_epochs=3)))
    p = Model(run)
    rows = table.iloc[:4]
    raw = p.predict_table(rows)
    cached = p.predict_table(rows, cache=[cache])
    assert raw.ok.all()
    np.testing.assert_allclose(raw.proba, cached.proba, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_raw_image_predict_equals_the_cached_path(family, folders, family_caches, synth_table,
                                                  tmp_path):
    from skinfeat.embed.cache import write_cache

    cache = tmp_path / "c.h5"
    write_cache(cache, family_caches[family])
    assert_raw_predict_equals_cached(synth_table, cache, tmp_path / "run")


def test_pooling_is_part_of_the_identity(folders, synth_table, tmp_path):
    sub = synth_table.iloc[:6]
    spec = f"open_clip:{folders['open_clip']}"
    proj = extract(sub, tmp_path / "a.h5", backbone=spec, precision="fp32", num_workers=0)
    cls = extract(sub, tmp_path / "b.h5", backbone=spec, pool="cls", precision="fp32",
                  num_workers=0)
    assert proj.contents.dim == 16 and cls.contents.dim == 32
    assert cls.contents.identity["pool"] == "cls"
    with pytest.raises(CacheError, match="pool"):   # one cache never takes the other's rows
        extract(sub, tmp_path / "a.h5", backbone=spec, pool="cls", precision="fp32",
                num_workers=0)
    with pytest.raises(ValueError, match="--pool avg"):
        extract(sub, tmp_path / "c.h5", backbone=spec, pool="avg", num_workers=0)


def test_layers_of_a_transformers_encoder_and_refusals_elsewhere(folders, synth_table,
                                                                 tmp_path):
    """--layers last2 on a transformers ViT: the hidden state before the last layer's, pooled
    like it, each standardised; predict embeds raw images the same way. open_clip and a
    projection refuse it in one line."""
    from skinfeat.deploy.model import Model as Predictor
    from skinfeat.errors import InputError
    from skinfeat.learn.head import HeadConfig
    from skinfeat.workflows.fit import fit_run

    hf = f"hf:{folders['hf']}"
    res = extract(synth_table, tmp_path / "l.h5", backbone=hf, pool="mean", layers="last2",
                  precision="fp32", num_workers=0, average_views=())   # one view: as computed
    c = res.contents
    assert c.dim == 64 and c.identity["layers"] == "last2" and c.identity["pool"] == "mean"
    earlier, last = c.embeddings[:, :32], c.embeddings[:, 32:]
    np.testing.assert_allclose(earlier.mean(1), 0, atol=1e-4)
    np.testing.assert_allclose(last.std(1), 1, atol=1e-3)
    fit_run(synth_table, tmp_path / "l.h5", tmp_path / "run",
            RunConfig(seed=0, model="head", params=HeadConfig(seed=0, max_epochs=2)))
    p = Predictor(tmp_path / "run")
    rows = synth_table.iloc[:3]
    np.testing.assert_allclose(p.predict_table(rows).proba,
                               p.predict_table(rows, cache=[tmp_path / "l.h5"]).proba,
                               atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="--layers last2: a open_clip encoder offers last"):
        extract(synth_table.iloc[:2], tmp_path / "o.h5", layers="last2", precision="fp32",
                backbone=f"open_clip:{folders['open_clip']}", num_workers=0)
    with pytest.raises(InputError, match="--pool gem: a hf encoder pools by"):
        extract(synth_table.iloc[:2], tmp_path / "g.h5", backbone=hf, pool="gem",
                num_workers=0)


def test_another_folder_at_the_same_path_is_another_encoder(folders, synth_table, tmp_path):
    sub = synth_table.iloc[:4]
    folder = tmp_path / "derm-clip"
    save_tiny_clip(folder, seed=0)
    extract(sub, tmp_path / "c.h5", backbone=f"local-dir:{folder}", precision="fp32",
            num_workers=0)
    save_tiny_clip(folder, seed=1)           # new weights, same path and name
    with pytest.raises(CacheError, match="sha256"):
        extract(sub, tmp_path / "c.h5", backbone=f"local-dir:{folder}", precision="fp32",
                num_workers=0)


def test_a_moved_folder_is_the_same_encoder_and_predict_verifies_the_copy(
        folders, family_caches, synth_table, tmp_path):
    """The identity holds a portable name and the content hash; predict re-points to a copy
    with --weights-file and refuses a folder of other content."""
    import shutil

    from skinfeat.deploy.model import Model
    from skinfeat.embed.cache import write_cache
    from skinfeat.embed.weights import WeightsUnavailable
    from skinfeat.learn.head import HeadConfig
    from skinfeat.workflows.fit import fit_run

    copy = tmp_path / "elsewhere" / "tiny-hf"
    shutil.copytree(folders["hf"], copy)
    ref = parse_backbone(f"hf:{copy}")
    assert ref.name == "hf:tiny-hf"
    write_cache(tmp_path / "c.h5", family_caches["hf"])
    fit_run(synth_table, tmp_path / "c.h5", tmp_path / "run",
            RunConfig(seed=0, model="head", params=HeadConfig(seed=0, max_epochs=2)))
    rows = synth_table.iloc[:2]
    want = Model(tmp_path / "run").predict_table(rows).proba
    got = Model(tmp_path / "run", weights_file=copy).predict_table(rows).proba
    np.testing.assert_allclose(got, want, atol=1e-6)
    other = tmp_path / "other"
    save_tiny_clip(other)
    with pytest.raises(WeightsUnavailable, match="does not match"):
        Model(tmp_path / "run", weights_file=other).predict_table(rows)


def test_identity_is_typed_strict_and_reads_old_caches(synth_cache, tmp_path):
    ident = read_cache(synth_cache).identity
    typed = CacheIdentity.from_dict(ident)
    assert typed.to_dict() == ident and typed.family == "timm"
    old = {k: v for k, v in ident.items()
           if k not in ("family", "format", "embed_dim", "skinfeat_version")}
    assert comparable(old) == comparable(ident)       # a cache from before is the same encoder
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f["image_id"] = np.array(["a"], dtype=object).astype("S")
        f["embedding"] = np.zeros((1, 4), np.float32)
        f.attrs["identity"] = json.dumps({**ident, "colour": "red"})
    with pytest.raises(CacheError, match=r"bad.h5: .*unknown key\(s\) colour"):
        read_cache(bad)
    with h5py.File(bad, "a") as f:
        f.attrs["identity"] = json.dumps({**ident, "weights": {"kind": "borrowed"}})
    with pytest.raises(CacheError, match=r"bad.h5: key 'identity.weights.kind'"):
        read_cache(bad)


def test_shared_real_cache_still_reads():
    """The shared real-embeddings file (no identity attribute: made outside skinfeat)."""
    from conftest import SAMPLE
    real = SAMPLE.parent / "ham10000-mobilenetv2-embeddings.h5"
    if not real.is_file():
        pytest.skip(f"{real} not here")
    c = read_cache(real)
    assert c.dim == 1280 and c.identity == {}


def test_backbones_lists_families_and_recommended_encoders():
    rows = list_backbones()
    assert {r["family"] for r in rows} >= {"timm", "open_clip", "hf"}
    assert all(r["licence"] and r["weights"] for r in rows)
    out = CliRunner().invoke(main, ["backbones"])
    assert out.exit_code == 0, out.output
    assert "convnext_tiny.fb_in1k" in out.output and "families: timm" in out.output
    assert "open_clip" in out.output and "hf:facebook/dinov2-small" in out.output


def test_backbone_names_parse_by_family():
    assert parse_backbone("timm:convnext_tiny").name == "convnext_tiny"
    assert parse_backbone("convnext_tiny").family == "timm"
    assert parse_backbone("open_clip:ViT-B-16:openai").family == "open_clip"
    assert parse_backbone("hf:facebook/dinov2-small").name == "hf:facebook/dinov2-small"
    with pytest.raises(FileNotFoundError, match="folder not found"):
        parse_backbone("local-dir:/no/such/folder")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_vit_token_maps_give_a_grad_cam_heatmap(family, folders):
    """The hooks explain needs for ViTs: a token-sequence layer and grad-cam's reshape to the
    patch grid; the map follows the weights (model randomisation changes it)."""
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from skinfeat.embed.backbone import create_backbone
    from skinfeat.embed.encoders import resolve_backbone

    def heatmap(weights: WeightSource) -> np.ndarray:
        ref, source = resolve_backbone(f"{family}:{folders[family]}", weights)
        enc = create_backbone(ref.name, source)
        torch.manual_seed(0)
        head = torch.nn.Linear(enc.num_features, 3)
        net = torch.nn.Sequential(PooledNet(enc), head)
        torch.manual_seed(1)
        x = torch.rand(1, 3, SIZE, SIZE, requires_grad=True)
        cam = GradCAM(model=net, target_layers=[enc.cam_layer()],
                      reshape_transform=enc.cam_reshape)
        try:   # every class: a tiny random net's map for one class can be all negative (zero)
            return np.stack([cam(input_tensor=x, targets=[ClassifierOutputTarget(k)])[0]
                             for k in range(3)])
        finally:
            cam.activations_and_grads.release()

    real = heatmap(WeightSource("pretrained"))
    assert real.shape == (3, SIZE, SIZE) and np.isfinite(real).all() and real.std() > 0
    rand = heatmap(WeightSource("random", seed=5))
    assert np.abs(real - rand).mean() > 1e-3


class PooledNet(torch.nn.Module):
    def __init__(self, enc):
        super().__init__()
        self.enc = enc

    def forward(self, x):
        return self.enc.pooled(x)
