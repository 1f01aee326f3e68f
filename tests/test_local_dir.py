"""Local model folders are identified by content: the sha256 of their files and a portable name,
never "pretrained from the hub" and never the absolute path; the real MobileNetV2 folder beside
the repo (skipped cleanly when absent) is extracted with its own weights, not a random init."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from conftest import SAMPLE, TINY

from skinfeat.cli import main
from skinfeat.embed.cache import CacheError, random_weights
from skinfeat.embed.encoders import folder_sha256, parse_backbone
from skinfeat.embed.engines import Embedder
from skinfeat.embed.extract import extract
from skinfeat.embed.transform import preprocess, transform_for
from skinfeat.embed.weights import WeightSource

pytestmark = pytest.mark.slow   # encoder families: real encoders, exports, int8

REAL = SAMPLE.parent / "mobilenetv2_100.coral_in1k"
TAGGED = f"{TINY}.r160_in1k"   # timm's save_for_hf writes the pretrained tag into config.json
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def save_timm_folder(folder, seed: int) -> None:
    """A timm folder as the hub publishes one: config.json (+ pretrained_cfg) and safetensors."""
    torch.manual_seed(seed)
    timm.models.save_for_hf(timm.create_model(TINY, pretrained=False), folder)


def benchmark_module():
    spec = importlib.util.spec_from_file_location("bench_extract", ROOT / "benchmarks/extract.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_timm_folder_is_recorded_by_content_under_a_portable_name(synth_table, tmp_path):
    folder = tmp_path / "mine"
    save_timm_folder(folder, seed=0)
    sub = synth_table.iloc[:4]
    c = extract(sub, tmp_path / "c.h5", backbone=f"local-dir:{folder}", precision="fp32",
                num_workers=0, layers="last", average_views=()).contents  # the Embedder's output
    ident = c.identity
    # architecture.tag from its config.json, not the absolute path
    assert ident["backbone"] == TAGGED and ident["family"] == "timm"
    assert ident["weights"] == {"kind": "local", "sha256": folder_sha256(folder), "seed": 0}
    assert c.attrs["weights"].startswith("local folder") and not random_weights(ident)
    # the folder's weights, exactly: timm loading the same folder gives the same embeddings
    model = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0)
    spec = transform_for(model)
    x = torch.stack([preprocess(p, spec) for p in sub["path"]])
    want = Embedder(model, torch.device("cpu"), "fp32")(x).numpy()
    np.testing.assert_allclose(c.embeddings[c.rows_for(sub["image_id"].tolist())], want,
                               rtol=1e-5, atol=1e-6)
    save_timm_folder(folder, seed=1)          # other weights at the same path: another encoder
    with pytest.raises(CacheError, match="sha256"):
        extract(sub, tmp_path / "c.h5", backbone=f"local-dir:{folder}", precision="fp32",
                num_workers=0)


def test_the_benchmark_uses_a_folders_own_weights(tmp_path):
    folder = tmp_path / "mine"
    save_timm_folder(folder, seed=0)
    bench = benchmark_module()
    ref, source = bench.benchmark_weights(f"local-dir:{folder}", None)
    assert source.kind == "local" and source.sha256 == folder_sha256(folder)
    assert ref.name == TAGGED
    _, plain = bench.benchmark_weights(TINY, None)
    assert plain.kind == "random"               # a bare name stays random (no network here)


@pytest.mark.skipif(not (REAL / "model.safetensors").is_file() or
                    not (SAMPLE / "HAM10000_metadata.csv").is_file(),
                    reason=f"real MobileNetV2 folder or HAM10000 sample not found ({REAL})")
def test_real_mobilenetv2_folder_extracts_with_its_real_weights(tmp_path):
    from skinfeat.data.datasets import load_dataset

    table = load_dataset(SAMPLE, "ham10000").table.sort_values("image_id").iloc[:6]
    c = extract(table, tmp_path / "real.h5", backbone=f"local-dir:{REAL}", precision="fp32",
                num_workers=0).contents
    ident = c.identity
    # the default --layers of a timm encoder: last3, 96 + 320 + 1,280 columns
    assert ident["backbone"] == "mobilenetv2_100.coral_in1k" and c.dim == 96 + 320 + 1280
    assert ident["layers"] == "last3"
    assert ident["weights"]["kind"] == "local" and not random_weights(ident)
    assert ident["weights"]["sha256"] == folder_sha256(REAL)
    assert "RANDOM" not in c.attrs["weights"] and "local folder" in c.attrs["weights"]
    ref, source = benchmark_module().benchmark_weights(f"local-dir:{REAL}", None)
    assert source.kind == "local" and ref.name == "mobilenetv2_100.coral_in1k"
    # a random init of the same architecture gives other embeddings: the weights were loaded
    rand = extract(table, tmp_path / "rand.h5", backbone=f"local-dir:{REAL}",
                   weights=WeightSource("random"), precision="fp32", num_workers=0).contents
    assert random_weights(rand.identity)
    assert not np.allclose(rand.embeddings, c.embeddings, atol=1e-3)
    out = CliRunner().invoke(main, ["cache", "info", str(tmp_path / "real.h5")])
    assert out.exit_code == 0 and "local folder" in out.output


def test_parse_local_dir_names_the_family(tmp_path):
    folder = tmp_path / "mine"
    save_timm_folder(folder, seed=0)
    ref = parse_backbone(f"local-dir:{folder}")
    assert (ref.family, ref.name, ref.location) == ("timm", TAGGED, f"local-dir:{folder}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        parse_backbone(f"local-dir:{tmp_path / 'empty'}")
