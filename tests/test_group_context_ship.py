"""explain and export --onnx on a bundle trained with --group-context: both refuse in one line
(the context features need the patient's other lesions, which one image or a one-image graph
does not have), while the same bundle without context features explains and exports."""
from __future__ import annotations

from pathlib import Path

import h5py
import pandas as pd
import pytest
from conftest import EXTRACT_TINY as EXTRACT
from conftest import run_cli as cli

from skinfeat.data.synthetic import make_synthetic

pytestmark = pytest.mark.slow   # end to end: whole CLI / API runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = make_synthetic("isic2024", tmp_path_factory.mktemp("isic2024"), n_images=90, seed=4)
    cache = root / "c.h5"
    cli("extract", "--data", root, "--cache", cache, *EXTRACT)
    out = {"root": root}
    for name, flag in (("context", "--group-context"), ("plain", "--no-group-context")):
        out[name] = root / name
        cli("fit-head", "--data", root, "--cache", cache, "--out", out[name], "--epochs", "2",
            flag)
    return out


def one_image(runs, tmp_path) -> Path:
    """One lesion's image (JPEG bytes in train-image.hdf5) as a file."""
    key = pd.read_csv(runs["root"] / "train-metadata.csv")["isic_id"][0]
    with h5py.File(runs["root"] / "train-image.hdf5") as f:
        (tmp_path / f"{key}.jpg").write_bytes(f[key][()])
    return tmp_path / f"{key}.jpg"


def test_explain_refuses_a_group_context_model(runs, tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    image = one_image(runs, tmp_path)
    r = cli("explain", "--model", runs["context"], "--image", image, "--out", tmp_path / "ex",
            ok=False)
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "--group-context" in r.output and "explain takes one image" in r.output
    assert not (tmp_path / "ex").exists() or not list((tmp_path / "ex").glob("*.png"))
    # The refusal is the context features': the same recipe without them explains the image.
    cli("explain", "--model", runs["plain"], "--image", image, "--out", tmp_path / "ok")
    assert len(list((tmp_path / "ok").glob("*.png"))) == 1


def test_export_refuses_a_group_context_model(runs, tmp_path):
    pytest.importorskip("onnx")
    r = cli("export", "--model", runs["context"], "--onnx", tmp_path / "m.onnx", ok=False)
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "--group-context" in r.output and "cannot compute them" in r.output
    assert not (tmp_path / "m.onnx").exists()
    cli("export", "--model", runs["plain"], "--onnx", tmp_path / "plain.onnx")
    assert (tmp_path / "plain.onnx").stat().st_size > 1000
