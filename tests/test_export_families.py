"""export --onnx for every encoder family: a bundle trained on each family's cache (tiny models
saved to disk as they are published: a timm folder, an open_clip config + weights, transformers
``save_pretrained`` folders) exports, and ONNX Runtime's probabilities on raw images equal the
torch bundle's; a graph that does not trace is refused in one line naming the family and why."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import SAMPLE, run_cli  # noqa: E402
from test_encoders import SIZE, save_tiny_clip, save_tiny_vit  # noqa: E402
from test_local_dir import save_timm_folder  # noqa: E402

from skinfeat.deploy.export import onnx_probabilities  # noqa: E402
from skinfeat.deploy.model import Model  # noqa: E402
from skinfeat.embed.extract import VIEW_NAMES, extract  # noqa: E402
from skinfeat.embed.transform import TransformSpec, preprocess  # noqa: E402
from skinfeat.learn.head import HeadConfig  # noqa: E402
from skinfeat.learn.runconfig import RunConfig  # noqa: E402
from skinfeat.workflows.fit import fit_run  # noqa: E402

pytestmark = pytest.mark.slow   # encoder families: real encoders, exports, int8

REAL = SAMPLE.parent / "mobilenetv2_100.coral_in1k"


def save_tiny_hf_clip(folder) -> None:
    """A transformers CLIP (vision tower + visual_projection), for ``--pool proj``."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, image_size=SIZE, patch_size=8),
        text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, vocab_size=64, max_position_embeddings=8),
        projection_dim=16)
    transformers.CLIPModel(cfg).save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": SIZE},
                                    crop_size={"height": SIZE, "width": SIZE},
                                    ).save_pretrained(folder)


# case -> (how its folder is saved, --backbone prefix, --pool); open_clip's towers use
# nn.MultiheadAttention, whose inference fast path has no ONNX symbolic (export avoids it).
CASES = {
    "timm": (lambda f: save_timm_folder(f, seed=0), "local-dir:", None),
    "open_clip-proj": (save_tiny_clip, "open_clip:", "proj"),
    "open_clip-cls": (save_tiny_clip, "open_clip:", "cls"),
    "hf-vit-cls": (save_tiny_vit, "hf:", "cls"),
    "hf-clip-proj": (save_tiny_hf_clip, "hf:", "proj"),
}


@pytest.fixture(scope="module")
def family_run(synth_table, tmp_path_factory):
    """case -> a fusion-head run trained on that case's cache (built on first use)."""
    root, runs = tmp_path_factory.mktemp("export-families"), {}

    def get(case: str):
        if case not in runs:
            save, prefix, pool = CASES.get(case, (None, "local-dir:", None))
            folder = REAL if save is None else root / case
            if save is not None:
                save(folder)
            cache = root / f"{case}.h5"
            extract(synth_table, cache, backbone=f"{prefix}{folder}", pool=pool,
                    precision="fp32", num_workers=0)
            fit_run(synth_table, cache, root / f"run-{case}",
                    RunConfig(seed=0, model="head", params=HeadConfig(seed=0, max_epochs=3)))
            runs[case] = root / f"run-{case}"
        return runs[case]
    return get


def onnx_equals_torch_on_raw_images(run, synth_table, out) -> None:
    run_cli("export", "--model", run, "--onnx", out)
    p = Model(run)
    rows = synth_table.iloc[:6][["image_id", "path", "age", "sex", "localization"]].astype(object)
    rows.iloc[1, 2:] = None                                   # all metadata missing
    rows.iloc[2, 3] = None                                    # sex missing
    want = p.predict_table(rows).proba                        # the torch bundle, raw images
    _, spec = p._backbone()
    image = np.stack([preprocess(path, spec).numpy() for path in rows["path"]])
    got = onnx_probabilities(out, image, p.encode_metadata(rows))
    assert np.isfinite(got).all() and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_each_family_exports_and_onnx_runtime_equals_the_torch_bundle(case, family_run,
                                                                     synth_table, tmp_path):
    run = family_run(case)
    family = Model(run).identity["family"]
    assert family == case.split("-")[0]
    onnx_equals_torch_on_raw_images(run, synth_table, tmp_path / "m.onnx")


def test_real_mobilenetv2_weights_export(family_run, synth_table, tmp_path):
    """The one real network here: batch norms and depthwise convolutions with trained weights."""
    if not REAL.is_dir():
        pytest.skip(f"{REAL} not here")
    onnx_equals_torch_on_raw_images(family_run("timm-real"), synth_table, tmp_path / "m.onnx")


def test_the_graph_averages_views_of_real_images_as_the_cache_did(tmp_path):
    """On real photos (200x150, squashed) and trained weights, turning the squashed tensor is
    not the same as turning the decoded photo (8-bit rounding between the resize's axes: up to
    1.5 % of an embedding); the default extraction turns the tensor, so the graph's view
    average equals the cache."""
    if not REAL.is_dir() or not SAMPLE.is_dir():
        pytest.skip(f"{REAL} or {SAMPLE} not here")
    from skinfeat.data.datasets import load_dataset
    from skinfeat.embed.backbone import create_backbone
    from skinfeat.embed.cache import read_cache
    from skinfeat.embed.encoders import resolve_backbone
    from skinfeat.embed.engines import Embedder
    from skinfeat.embed.turns import ViewAveraged
    from skinfeat.embed.weights import WeightSource

    table = load_dataset(SAMPLE, "ham10000").table.iloc[:12]
    cache = tmp_path / "c.h5"
    res = extract(table, cache, backbone=f"local-dir:{REAL}", precision="fp32", num_workers=0)
    cached = read_cache(cache)
    assert cached.identity["average_views"] == ["flip", "rot90", "rot180", "rot270"]
    spec = TransformSpec.from_dict(cached.identity["preprocessing"])
    ref, weights = resolve_backbone(f"local-dir:{REAL}", WeightSource("pretrained"))
    net = Embedder(create_backbone(ref.name, weights), torch.device("cpu"), "fp32",
                   layers=cached.identity["layers"]).net
    x = torch.stack([preprocess(p, spec) for p in table["path"]])
    with torch.inference_mode():
        graph = ViewAveraged(net, VIEW_NAMES)(x).numpy()
    order = [list(cached.image_ids).index(i) for i in table["image_id"]]
    want = cached.embeddings[order]
    rel = np.linalg.norm(graph - want, axis=1) / np.linalg.norm(want, axis=1)
    assert res.embedded == 12 and rel.max() < 1e-5, rel.max()


def test_a_graph_that_does_not_trace_is_refused_in_one_line(family_run, tmp_path, capfd):
    """transformers' ViT attends with scaled_dot_product_attention, which ONNX has from opset
    14: at opset 13 export refuses, naming the family, the backbone and the operator, without
    torch's dump of the TorchScript graph."""
    out = tmp_path / "m.onnx"
    run = family_run("hf-vit-cls")
    capfd.readouterr()
    r = run_cli("export", "--model", run, "--onnx", out, "--opset", 13, ok=False)
    assert r.exit_code == 1
    assert "Torch IR graph" not in "".join(capfd.readouterr())
    # transformers' own "Loading weights" bar is the loading, not the refusal
    lines = [ln for ln in r.output.splitlines()
             if ln.strip() and not ln.startswith("Loading weights")]
    assert len(lines) == 1, r.output
    assert lines[0].startswith("Error: ") and "the hf encoder hf:hf-vit-cls" in lines[0]
    assert "opset 13" in lines[0] and "scaled_dot_product_attention" in lines[0]
    assert not out.exists() and not list(tmp_path.iterdir())   # no graph, no temp file left
