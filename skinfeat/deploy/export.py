"""Export a trained run to one ONNX graph: image tensor + encoded metadata -> calibrated
probabilities.

The graph holds the frozen backbone (pooled as stage one pooled it: timm, open_clip or
transformers, under the cache's ``--pool``), the fusion head and the calibration, and a fused
head's image-only fallback with the switch between them (rows whose encoded metadata is the
all-missing vector). A backbone whose graph does not trace to ONNX at the opset asked for is
refused in one line that names its family, the backbone and the exporter's reason. A fold
ensemble (``cv --save-models``) is exported exactly as ``predict`` scores it:
one backbone shared by every member, each member's head and calibration, the members'
probabilities averaged, then the ensemble's own calibration. Each member has its own metadata
encoder (fitted on its fold's training rows), so the graph takes one encoded metadata input per
member, ``meta_0 .. meta_{k-1}``; a single model takes ``meta``.

What the graph does not hold travels beside it, both as ONNX model metadata (key ``skinfeat``)
and as ``FILE.json``: the preprocessing spec (size, resize, mean, std), the class order, each
metadata input's encoder state with its feature names and the encoded vector of "every field
missing", the decision rule. The exporter is torch's TorchScript-based one (``dynamo=False``),
which needs nothing beyond ``onnx``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..embed.turns import ViewAveraged
from ..errors import InputError
from .bundle import BundleError
from .decision import predictor_rule

log = logging.getLogger(__name__)

OPSET = 17
META_KEY = "skinfeat"
FLOOR = 1e-12   # predict's floor on an ensemble's mean probability before its log
OUTPUTS = ["probabilities", "decision"]


class Calibration(nn.Module):
    """The bundle's ``Calibrator`` on logits: softmax((logits - adjust) / T + bias), with
    ``adjust`` the log training class weights (logit adjustment) and ``bias`` a fitted
    per-class offset, each zero where the method has none."""

    adjust: torch.Tensor        # buffers (register_buffer below), declared for the type checker
    temperature: torch.Tensor
    bias: torch.Tensor

    def __init__(self, calibrator, n_classes: int):
        super().__init__()

        def vector(values) -> torch.Tensor:
            return torch.tensor(values if values is not None else [0.0] * n_classes,
                                dtype=torch.float32)

        self.register_buffer("adjust", vector(calibrator.adjust))
        self.register_buffer("temperature", torch.tensor(float(calibrator.temperature)))
        self.register_buffer("bias", vector(calibrator.bias))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax((logits - self.adjust) / self.temperature + self.bias, dim=1)


class Decide(nn.Module):
    """``Calibrator.decide`` in the graph: (N, K) calibrated probabilities -> (N,) int64 class
    indices; a binary model with a validation threshold: p(class 1) >= threshold, otherwise the
    balanced rule argmax(log p + decision_offset) (plain argmax without offsets)."""

    threshold: torch.Tensor     # buffers (register_buffer below), declared for the type checker
    offset: torch.Tensor

    def __init__(self, calibrator, threshold: float | None, n_classes: int):
        super().__init__()
        offset = calibrator.decision_offset
        self.binary = threshold is not None and n_classes == 2
        self.register_buffer("threshold", torch.tensor(float(threshold or 0.0)))
        self.register_buffer("offset", torch.tensor(
            offset if offset is not None else [0.0] * n_classes, dtype=torch.float32))

    def forward(self, proba: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return (proba[:, 1] >= self.threshold).to(torch.int64)
        return torch.argmax(torch.log(proba) + self.offset, dim=1)


def decider(p) -> Decide:
    return Decide(p.calibrator, p.threshold, len(p.classes))


class CalibratedHead(nn.Module):
    """One model's head and calibration: (pooled features, encoded meta) -> probabilities."""

    def __init__(self, head: nn.Module, calibrator, n_classes: int):
        super().__init__()
        self.head = head
        self.calibration = Calibration(calibrator, n_classes)

    def forward(self, features: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        logits = self.head(features, meta)
        if not getattr(self.head, "use_meta", True):
            # A head without metadata (an image-only set: zero features) ignores ``meta``, and
            # the exporter would drop the unused input; adding the sum of its empty slice (0,
            # even for NaN values) keeps "meta" in the graph, so every graph takes (image,
            # meta) and an (N, 0) array runs (ONNX Runtime accepts zero-width inputs).
            logits = logits + meta[:, :0].sum(dim=1, keepdim=True)
        return self.calibration(logits)


class WithFallback(nn.Module):
    """A fused head with its image-only fallback (``learn/fallback.py``): rows whose encoded
    metadata is exactly the all-missing vector get the fallback's probabilities, as predict."""

    missing: torch.Tensor   # a buffer: the encoded all-missing metadata row

    def __init__(self, model: CalibratedHead, fallback: CalibratedHead, missing: np.ndarray):
        super().__init__()
        self.model, self.fallback = model, fallback
        self.register_buffer("missing", torch.as_tensor(np.asarray(missing, np.float32)))

    def fell_back(self, meta: torch.Tensor) -> torch.Tensor:
        return (meta[:, :self.missing.shape[0]] == self.missing).all(dim=1, keepdim=True)

    def forward(self, features: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return torch.where(self.fell_back(meta), self.fallback(features, meta),
                           self.model(features, meta))


def calibrated_head(p) -> CalibratedHead | WithFallback:
    """A loaded model's calibrated head, with its fallback if it has one."""
    k = len(p.classes)
    own = CalibratedHead(p.model.torch_module(), p.calibrator, k)
    if p.fallback is None:
        return own
    return WithFallback(own, CalibratedHead(p.fallback.model.torch_module(),
                                            p.fallback.calibrator, k), p.encoder.missing_row())


class ExportGraph(nn.Module):
    """Backbone (pooled) once, then every member's calibrated head on its own metadata input.

    One member is a single model. Several are a fold ensemble, combined as
    ``Model.logits`` / ``calibrate`` do: the ensemble calibration of
    log(max(mean of the members' probabilities, 1e-12))."""

    def __init__(self, features: nn.Module, members: Sequence[CalibratedHead | WithFallback],
                 combined: Calibration | None = None, decide: Decide | None = None,
                 fallback_decide: Decide | None = None):
        super().__init__()
        self.features, self.members, self.combined = features, nn.ModuleList(members), combined
        self.decide, self.fallback_decide = decide, fallback_decide

    def forward(self, image: torch.Tensor, *metas: torch.Tensor):
        features = self.features(image)
        probs = [m(features, meta) for m, meta in zip(self.members, metas, strict=False)]
        if self.combined is None:
            proba = probs[0]
        else:
            mean = torch.stack(probs).mean(dim=0)
            proba = self.combined(torch.log(torch.clamp(mean, min=FLOOR)))
        if self.decide is None:
            return proba
        decision = self.decide(proba)
        if self.fallback_decide is not None:   # those rows are decided by the fallback's rule
            first = self.members[0]
            assert isinstance(first, WithFallback)   # a model with a fallback rule has one
            rows = first.fell_back(metas[0])[:, 0]
            decision = torch.where(rows, self.fallback_decide(proba), decision)
        return proba, decision


def meta_inputs(predictor) -> list[tuple[str, Any]]:
    """``(input name, the predictor whose encoder fills it)`` for each metadata input."""
    if predictor.members:
        return [(f"meta_{i}", m) for i, m in enumerate(predictor.members)]
    return [("meta", predictor)]


def agreement(precision: str, view_transform: str | None = None) -> str:
    """How closely the graph's probabilities equal predict's, stated truthfully: within 1e-4
    for a model on an fp32 cache (tested), views averaged as today's caches make them included.
    The graph always runs in fp32, so a model on a bf16 or fp16 cache sees slightly other
    embeddings; an averaged-view cache made before views turned the squashed tensor turned the
    decoded image, a rounding away from the graph's. Both measured on the first 300 images of
    the real HAM10000 sample with MobileNetV2 (``--layers last3``) and the default model."""
    from ..embed.extract import TURNED_TENSOR

    parts = []
    if precision != "fp32":
        parts.append(f"the model's cache was made in {precision}, the graph runs in fp32 "
                     "(measured in bf16: up to 0.06, median 0.013, on averaged views, 8 of 300 "
                     "decisions differing; up to 0.08 on one view, 15 of 300)")
    if view_transform is not None and view_transform != TURNED_TENSOR:
        parts.append("its cache averaged views turned before the resize, the graph turns the "
                     "resized image (up to 0.022, median 0.003 measured; 4 of 300 decisions "
                     "differed)")
    if not parts:
        return "probabilities equal predict's within 1e-4 (tested)"
    return ("probabilities differ from predict's, not 1e-4 as for a model on an fp32 cache: "
            + "; ".join(parts) + "; a near-tie may be decided otherwise")


def metadata_info(predictor) -> dict:
    """How a caller builds one metadata input: its fields, the encoder's fitted state, the
    encoded vector of "every field missing"."""
    enc = predictor.encoder
    fields = list(enc.numeric) + list(enc.categorical)
    missing = predictor.encode_metadata(pd.DataFrame([{f: None for f in fields}], dtype=object))
    info = {"fields": fields, "feature_names": enc.feature_names,
            "missing": [float(v) for v in missing[0]], "encoder": enc.to_dict()}
    fb = predictor.fallback
    if fb is not None:   # the graph already switches; a binary decision needs its threshold
        info["fallback"] = {
            "rows": "encoded metadata equal to missing: the graph's probabilities are the "
                    "image-only fallback's; decide those rows with this calibration and "
                    "threshold", "calibration": fb.calibrator.to_dict(),
            "threshold": fb.threshold}
    return info


def sidecar(predictor) -> dict:
    """What a caller needs besides the graph: preprocessing, classes, metadata encoding, the
    decision rule (an ensemble: every member's encoder and calibration, and how they combine)."""
    _, spec = predictor._backbone()
    views = predictor.average_views
    inputs = {"image": "float32 (N, 3, size, size), normalised as in preprocessing"
                       + ("; once: the graph averages the embeddings of it and of its turned "
                          "copies (average_views)" if views else "")}
    for i, (name, p) in enumerate(meta_inputs(predictor)):
        where = f"members[{i}].metadata" if predictor.members else "metadata"
        inputs[name] = f"float32 (N, {p.encoder.n_features}), encoded as in {where}"
    info = {"format": "skinfeat-onnx/1", "inputs": inputs,
            "outputs": {"probabilities": "float32 (N, K), calibrated, in the order of classes",
                        "decision": "int64 (N,): the model's decision, an index into classes, "
                                    "as predict decides (the rule below)"},
            "rule": predictor_rule(predictor),
            "classes": list(predictor.classes), "temperature": predictor.temperature,
            "calibration": predictor.calibrator.to_dict(), "threshold": predictor.threshold,
            "decision": "the graph's decision output: argmax of log(probabilities) + "
                        "calibration.decision_offset (the balanced rule), or for two classes "
                        "probabilities[:, 1] >= threshold",
            "agreement": agreement(predictor._backbone()[0].precision,
                                   predictor.sources[0].get("view_transform") if views
                                   else None),
            "preprocessing": spec.to_dict(), "average_views": list(views),
            "backbone": predictor.identity.get("backbone"),
            "weights": predictor.weights, "random_weights": predictor.random_weights}
    if not predictor.members:
        info["metadata"] = metadata_info(predictor)
    else:
        # No top-level encoder: code written for a single model fails instead of feeding
        # every member one member's encoding.
        info["metadata"] = {"fields": metadata_info(predictor.members[0])["fields"],
                            "inputs": [name for name, _ in meta_inputs(predictor)],
                            "note": "one encoded input per member: meta_i is encoded with "
                                    "members[i].metadata.encoder"}
        info["combine"] = ("the mean of the members' calibrated probabilities, floored at "
                           f"{FLOOR:g}, renormalised (calibration: the identity); threshold "
                           "and calibration.decision_offset are the means of the members'")
        info["members"] = [{"name": m.run.name, "input": name, "metadata": metadata_info(m),
                            "calibration": m.calibrator.to_dict(), "threshold": m.threshold}
                           for name, m in meta_inputs(predictor)]
    info["note"] = "research use only; not a medical device"
    return info


def export_graph(predictor) -> ExportGraph:
    """The module to export, or a one-line refusal where the graph could not equal predict."""
    models = predictor.members or [predictor]
    refused = [m for m in models if m.model.exportable]
    if refused:   # the model says why (LightGBM: onnxmltools; an ensemble: its members)
        reason = refused[0].model.exportable
        members = f" (members {', '.join(m.run.name for m in refused)})" \
            if predictor.members else ""
        raise BundleError(f"{predictor.run}: ONNX export covers torch models (head, linear "
                          "probe, their ensemble); this one "
                          f"is {reason}{members}")
    if predictor.group_context:
        # The graph maps one image and its metadata to probabilities; the context features
        # need the embeddings and fields of the patient's other lesions, outside that graph.
        raise BundleError(f"{predictor.run}: the model uses patient context features "
                          "(--group-context), computed from the patient's other lesions; an "
                          "ONNX graph of one image cannot compute them: export a model "
                          "trained without --group-context")
    if predictor.views or any(m.views for m in models):
        raise BundleError(f"{predictor.run}: this model averages over test-time views (--tta); "
                          "export supports single-view models only")
    embedder, spec = predictor._backbone()
    views = predictor.average_views
    if views and spec.resize != "squash":
        raise BundleError(f"{predictor.run}: its embeddings average turned copies of each image "
                          f"(--average-views) made before the {spec.resize} resize; the graph "
                          "can only turn the resized tensor, a pixel off the cache's views "
                          "under a crop: export a model on a --resize squash cache")
    features = ViewAveraged(embedder.net, views) if views else embedder.net
    combined = Calibration(predictor.calibrator, len(predictor.classes)) \
        if predictor.members else None
    fallback = decider(predictor.fallback) if predictor.fallback is not None else None
    graph = ExportGraph(features, [calibrated_head(m) for m in models], combined,
                        decider(predictor), fallback)
    return graph.to("cpu").eval()


@contextlib.contextmanager
def exporter_log_silenced():
    """Standard output (file descriptor 1) to /dev/null for the duration, restored after.

    torch's TorchScript exporter turns its C++ log on unconditionally (``setup_onnx_logging``
    tests the function ``_jit_is_onnx_log_enabled`` instead of calling it), so an export that
    fails prints the whole TorchScript graph, thousands of lines for a ViT, before its error.
    A successful export logs nothing there, so nothing of value is lost."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:          # no descriptor 1 (a detached process): nothing to silence
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def refusal(predictor, opset: int, exc: BaseException) -> str:
    """The one line ``export`` refuses with when the encoder's graph does not trace to ONNX:
    the family, the backbone and the exporter's own reason (an operator without an ONNX
    symbolic at this opset, say)."""
    from ..embed.encoders import family_of

    backbone = str(predictor.identity.get("backbone"))
    family = predictor.identity.get("family") or family_of(backbone)
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = lines[0] if lines else type(exc).__name__
    reason = reason if len(reason) <= 200 else reason[:197] + "..."
    return (f"{predictor.run}: the {family} encoder {backbone} cannot be exported to ONNX "
            f"opset {opset}: {reason}")


def export_onnx(predictor, out: str | Path, opset: int = OPSET) -> tuple[Path, Path]:
    """Write ``out`` (the ONNX graph) and ``out`` with suffix .json; returns both paths."""
    import onnx

    from ..atomic import atomic_write

    model = export_graph(predictor)
    embedder, spec = predictor._backbone()
    info = sidecar(predictor)
    if info["agreement"] != agreement("fp32"):   # a log line, not a Python warning
        log.warning("%s: %s", predictor.run, info["agreement"])
    names = ["image"] + [name for name, _ in meta_inputs(predictor)]
    # nn.MultiheadAttention (open_clip's towers) takes its inference fast path,
    # the native multi-head-attention op, which has no ONNX symbolic, whenever nothing needs a
    # gradient; an image input that requires one keeps the trace on the exportable path
    # (per call, unlike the process-wide torch.backends.mha switch).
    example = (torch.zeros(1, 3, spec.size, spec.size).requires_grad_(),
               *(torch.zeros(1, p.encoder.n_features) for _, p in meta_inputs(predictor)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():  # the legacy exporter announces its own deprecation
            warnings.simplefilter("ignore")
            try:
                with exporter_log_silenced():
                    torch.onnx.export(model, example, str(tmp), input_names=names,
                                      output_names=OUTPUTS, opset_version=opset,
                                      dynamo=False, dynamic_axes={
                                          n: {0: "batch"} for n in names + OUTPUTS})
            except (torch.onnx.errors.OnnxExporterError, RuntimeError) as exc:
                raise BundleError(refusal(predictor, opset, exc)) from exc
        graph = onnx.load(str(tmp))
        graph.doc_string = ("skinfeat: image + encoded metadata -> calibrated probabilities "
                              "and the decision")
        entry = graph.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps(info)
        onnx.save(graph, str(tmp))

    atomic_write(out, write)
    side = out.with_suffix(".json")
    atomic_write(side, lambda tmp: tmp.write_text(json.dumps(info, indent=2), encoding="utf-8"))
    return out, side


def onnx_probabilities(path: str | Path, image: np.ndarray,
                       meta: np.ndarray | Sequence[np.ndarray] | Mapping[str, np.ndarray]
                       ) -> np.ndarray:
    """Run an exported graph with ONNX Runtime (CPU). ``meta``: the encoded metadata; for an
    ensemble, one array per member in order (or a dict by input name)."""
    return onnx_outputs(path, image, meta)[0]


def onnx_outputs(path: str | Path, image: np.ndarray,
                 meta: np.ndarray | Sequence[np.ndarray] | Mapping[str, np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``onnx_probabilities`` and the graph's ``decision`` output (class indices, as predict
    decides)."""
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs() if i.name != "image"]
    if not isinstance(meta, Mapping):
        arrays = [meta] if isinstance(meta, np.ndarray) else list(meta)
        if len(arrays) != len(names):
            raise InputError(f"{path}: the graph takes {len(names)} metadata input(s) "
                             f"({', '.join(names)}), got {len(arrays)}")
        meta = dict(zip(names, arrays, strict=False))
    if sorted(meta) != sorted(names):
        raise InputError(f"{path}: the graph takes the metadata inputs {', '.join(names)}, "
                         f"got {', '.join(sorted(meta))}")
    out = session.run(None, {"image": image.astype(np.float32),
                             **{k: np.asarray(v, np.float32) for k, v in meta.items()}})
    return out[0], out[1]
