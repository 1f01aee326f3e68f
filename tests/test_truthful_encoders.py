"""What the user sees is true, stage one (issue 27): ``--weights-file`` inside a model folder
loads that folder's config (the local-dir: route), a folder is accepted where the error message
sends the user, every offline hint names local-dir: first, and broken encoder folders are one
line naming the file or folder."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import timm
import torch
from conftest import SAMPLE, TINY, run_cli
from hostile import refused

from skinfeat.embed.cache import read_cache

REAL = SAMPLE.parent / "mobilenetv2_100.coral_in1k"


def timm_folder(folder, mean=(0.5, 0.5, 0.5)):
    """A timm folder whose config.json normalises unlike timm's default for the name."""
    torch.manual_seed(0)
    timm.models.save_for_hf(timm.create_model(TINY, pretrained=False), folder,
                           safe_serialization=True)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["pretrained_cfg"].update(mean=list(mean), std=[0.5, 0.5, 0.5])
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def extract_args(synth_dir, cache, *backbone):
    return ("extract", "--data", synth_dir, "--cache", cache, "--precision", "fp32",
            "--workers", "0", "--compile", "off", *backbone)


@pytest.mark.slow   # encoder families: real encoders, exports, int8
def test_weights_file_inside_a_timm_folder_uses_the_folders_config(synth_dir, tmp_path):
    folder = timm_folder(tmp_path / "tiny")
    run_cli(*extract_args(synth_dir, tmp_path / "ld.h5", "--backbone", f"local-dir:{folder}"))
    run_cli(*extract_args(synth_dir, tmp_path / "wf.h5", "--backbone", TINY,
                          "--weights-file", folder / "model.safetensors"))
    ld, wf = read_cache(tmp_path / "ld.h5"), read_cache(tmp_path / "wf.h5")
    assert wf.identity["weights"]["kind"] == "local"
    assert wf.identity["weights"] == ld.identity["weights"]
    np.testing.assert_allclose(wf.embeddings, ld.embeddings[ld.rows_for(list(wf.image_ids))],
                               rtol=1e-5, atol=1e-6)


def test_weights_file_of_another_models_folder_is_refused_naming_local_dir(synth_dir,
                                                                            tmp_path):
    folder = timm_folder(tmp_path / "tiny")
    refused(extract_args(synth_dir, tmp_path / "x.h5", "--backbone", "resnet18",
                         "--weights-file", folder / "model.safetensors"),
            "resnet18", f"local-dir:{folder}")
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.slow   # end to end: whole CLI / API runs
def test_a_moved_folder_is_found_again_with_weights_file_folder(synth_dir, tmp_path):
    folder = timm_folder(tmp_path / "tiny")
    run_cli(*extract_args(synth_dir, tmp_path / "c.h5", "--backbone", f"local-dir:{folder}"))
    run_cli("fit-head", "--data", synth_dir, "--cache", tmp_path / "c.h5", "--out",
            tmp_path / "run", "--model", "lgbm", "--seed", "0")
    moved = tmp_path / "elsewhere"
    shutil.move(str(folder), moved)
    image = next(p for p in synth_dir.rglob("*.jpg"))
    # the error names the route, and the route works
    refused(["predict", "--model", tmp_path / "run", "--image", image],
            "--weights-file FOLDER")
    r = run_cli("predict", "--model", tmp_path / "run", "--image", image, "--json",
                "--weights-file", moved)
    assert "probabilities" in r.output
    # and extract takes the folder too
    run_cli(*extract_args(synth_dir, tmp_path / "d.h5", "--backbone", TINY,
                          "--weights-file", moved))
    assert read_cache(tmp_path / "d.h5").identity["weights"]["kind"] == "local"


def test_offline_hints_name_local_dir_first():
    from skinfeat.embed.backbone import create_backbone
    from skinfeat.embed.weights import WeightSource, WeightsUnavailable
    with pytest.raises(WeightsUnavailable) as exc:
        create_backbone("test_convnext.r160_in1k", WeightSource("pretrained"))
    for text in (str(exc.value),
                 run_cli("weights", "--backbone", "test_convnext.r160_in1k").output):
        assert "local-dir:" in text and "--weights-file" in text
        assert text.index("local-dir:") < text.index("--weights-file"), text
        assert "open_clip:FOLDER" in text and "hf:FOLDER" in text


@pytest.mark.slow   # encoder families: real encoders, exports, int8
@pytest.mark.skipif(not REAL.is_dir(), reason="the real MobileNetV2 folder is not beside the repo")
def test_real_mobilenet_weights_file_equals_local_dir(tmp_path):
    """On real images, the checkpoint route gives the local-dir embeddings (it gave a median
    cosine of 0.51-0.58 before: timm's default config for mobilenetv2_100)."""
    import pandas as pd
    rows = sorted((SAMPLE / "HAM10000_images_part_1").glob("*.jpg"))[:4]
    table = pd.DataFrame({"image": [str(p) for p in rows], "image_id": [p.stem for p in rows],
                          "dx": ["nv", "mel", "nv", "mel"], "lesion": ["a", "b", "c", "d"]})
    table.to_csv(tmp_path / "t.csv", index=False)
    base = ("extract", "--data", tmp_path / "t.csv", "--image-col", "image", "--label-col", "dx",
            "--group-col", "lesion", "--precision", "fp32", "--workers", "0", "--compile", "off")
    run_cli(*base, "--cache", tmp_path / "ld.h5", "--backbone", f"local-dir:{REAL}")
    run_cli(*base, "--cache", tmp_path / "wf.h5", "--backbone", "mobilenetv2_100",
            "--weights-file", REAL / "model.safetensors")
    a, b = read_cache(tmp_path / "ld.h5"), read_cache(tmp_path / "wf.h5")
    cos = (a.embeddings * b.embeddings).sum(1) / np.linalg.norm(a.embeddings, axis=1) \
        / np.linalg.norm(b.embeddings, axis=1)
    assert cos.min() > 0.999, cos
