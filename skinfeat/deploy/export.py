"""Export a trained run to one ONNX graph: image tensor + encoded metadata -> calibrated probabilities.

The graph holds the frozen backbone (with stage one's average pooling), the fusion head and the
calibration temperature. What the graph does not hold travels beside it, both as ONNX model
metadata (key ``skinfeat``) and as ``FILE.json``: the preprocessing spec (size, resize, mean,
std), the class order, the metadata encoder's fitted state with its feature names, and the
encoded vector of "every field missing". The exporter is torch's TorchScript-based one
(``dynamo=False``), which needs nothing beyond ``onnx``.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from .bundle import BundleError

OPSET = 17
META_KEY = "skinfeat"


class CalibratedModel(nn.Module):
    """Backbone (pooled) + head + calibration, as one module: (image, meta) -> probabilities.

    The calibration is the bundle's ``Calibrator``: softmax((logits - adjust) / T + bias), with
    ``adjust`` the log training class weights (logit adjustment) and ``bias`` a fitted per-class
    offset, each zero where the method has none."""

    def __init__(self, features: nn.Module, head: nn.Module, calibrator):
        super().__init__()
        self.features, self.head = features, head
        k = head.classifier[-1].out_features

        def vector(values) -> torch.Tensor:
            return torch.tensor(values if values is not None else [0.0] * k, dtype=torch.float32)

        self.register_buffer("adjust", vector(calibrator.adjust))
        self.register_buffer("temperature", torch.tensor(float(calibrator.temperature)))
        self.register_buffer("bias", vector(calibrator.bias))

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(image), meta)
        if not getattr(self.head, "use_meta", True):
            # A head without metadata (an image-only set: zero features) ignores ``meta``, and
            # the exporter would drop the unused input; adding the sum of its empty slice (0,
            # even for NaN values) keeps "meta" in the graph, so every graph takes (image,
            # meta) and an (N, 0) array runs (ONNX Runtime accepts zero-width inputs).
            logits = logits + meta[:, :0].sum(dim=1, keepdim=True)
        return torch.softmax((logits - self.adjust) / self.temperature + self.bias, dim=1)


def sidecar(predictor) -> dict:
    """What a caller needs besides the graph: preprocessing, classes, metadata encoding."""
    _, spec = predictor._backbone()
    enc = predictor.encoder
    fields = list(enc.numeric) + list(enc.categorical)
    missing = predictor.encode_metadata(pd.DataFrame([{f: None for f in fields}], dtype=object))
    return {"format": "skinfeat-onnx/1", "inputs": {"image": "float32 (N, 3, size, size), "
                                                    "normalised as in preprocessing",
                                                    "meta": f"float32 (N, {enc.n_features}), "
                                                    "encoded as in metadata"},
            "output": "probabilities: float32 (N, K), calibrated, in the order of classes",
            "classes": list(predictor.classes), "temperature": predictor.temperature,
            "calibration": predictor.calibrator.to_dict(), "threshold": predictor.threshold,
            "decision": "argmax of log(probabilities) + calibration.decision_offset (the "
                        "balanced rule), or for two classes probabilities[:, 1] >= threshold",
            "preprocessing": spec.to_dict(), "backbone": predictor.identity.get("backbone"),
            "weights": predictor.weights, "random_weights": predictor.random_weights,
            "metadata": {"fields": fields, "feature_names": enc.feature_names,
                         "missing": [float(v) for v in missing[0]], "encoder": enc.to_dict()},
            "note": "research use only; not a medical device"}


def export_onnx(predictor, out: str | Path, opset: int = OPSET) -> tuple[Path, Path]:
    """Write ``out`` (the ONNX graph) and ``out`` with suffix .json; returns both paths."""
    import onnx

    from ..atomic import atomic_write

    if predictor.trained.kind != "head":
        raise BundleError(f"{predictor.run}: ONNX export covers fusion-head models; this one is "
                          "LightGBM (predict with skinfeat, or convert it with onnxmltools)")
    if predictor.views:
        raise BundleError(f"{predictor.run}: this model averages over test-time views (--tta); "
                          "export supports single-view models only")
    embedder, spec = predictor._backbone()
    if embedder.precision != "fp32":
        warnings.warn(f"the model's cache was made in {embedder.precision}; the ONNX graph "
                      "runs in fp32, so probabilities may differ slightly from predict's")
    model = CalibratedModel(embedder.net, predictor.trained.model, predictor.calibrator)
    model = model.to("cpu").eval()
    image = torch.zeros(1, 3, spec.size, spec.size)
    meta = torch.zeros(1, predictor.encoder.n_features)
    info = sidecar(predictor)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():  # the legacy exporter announces its own deprecation
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (image, meta), str(tmp), input_names=["image", "meta"],
                              output_names=["probabilities"], opset_version=opset, dynamo=False,
                              dynamic_axes={"image": {0: "batch"}, "meta": {0: "batch"},
                                            "probabilities": {0: "batch"}})
        graph = onnx.load(str(tmp))
        graph.doc_string = "skinfeat: image + encoded metadata -> calibrated probabilities"
        entry = graph.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps(info)
        onnx.save(graph, str(tmp))

    atomic_write(out, write)
    side = out.with_suffix(".json")
    atomic_write(side, lambda tmp: tmp.write_text(json.dumps(info, indent=2), encoding="utf-8"))
    return out, side


def onnx_probabilities(path: str | Path, image: np.ndarray, meta: np.ndarray) -> np.ndarray:
    """Run an exported graph with ONNX Runtime (CPU)."""
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": image.astype(np.float32),
                              "meta": meta.astype(np.float32)})[0]
