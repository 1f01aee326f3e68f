"""How stage one runs the frozen backbone: the engines behind ``Embedder``.

Two engines share one call signature (an NCHW float32 batch in, a (N, D) float32 CPU tensor out),
so ``extract.embed_files`` and ``predict`` work unchanged whichever filled the cache:

  * ``Embedder``: torch, fp32 or bf16 / fp16 autocast, channels-last, optional ``torch.compile``;
  * ``Int8Embedder``: OpenVINO running an int8 model made by NNCF post-training static
    quantization, calibrated on a few hundred of the dataset's own images. The quantized model is
    built once per backbone, weights, preprocessing and calibration set, and kept on disk
    (``quantized_store()``), so a resumed extract and ``predict`` use the very same model.

Why OpenVINO + NNCF for int8 (``benchmarks/engines.py`` measures the candidates, model alone,
interleaved, on 2 AVX-512 cores): it ran convnext_tiny 3.3x torch fp32, ahead of ONNX Runtime's
static QDQ int8 (2.7x to 3.1x, which agreed slightly better with fp32 on random weights), torch's
dynamic int8 (1.9x) and torch's PT2E x86 static int8 compiled (1.3x); it converts the torch
module directly (ONNX Runtime needs an ONNX export first) and quantizes in one call. It is an
optional extra (``pip install skinfeat[openvino]``): nothing here imports it until int8 is asked
for. OpenVINO's converter and NNCF send anonymous usage telemetry by default; the int8 path turns
it off for its process (``openvino_telemetry_off``).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_dir
from ..errors import SkinfeatError
from .encoders.base import FamilyEncoder
from .pooling import timm_pooled
from .transform import TransformSpec, preprocess
from .weights import sha256_file

log = logging.getLogger(__name__)

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
CALIBRATION_IMAGES = 300
INT8_ENGINE = "openvino-nncf"
# The identity keys that decide which quantized model a cache needs (views and shard do not).
_MODEL_KEYS = ("backbone", "weights", "preprocessing", "pool", "calibration")


class EngineUnavailable(SkinfeatError, RuntimeError):
    """The engine a precision needs is not installed or cannot run here."""


class QuantizedModelMissing(EngineUnavailable):
    """The int8 model a cache was made with is neither on disk nor rebuildable here."""


class PooledFeatures(torch.nn.Module):
    """Backbone -> one vector per image.

    A timm model pools as ``pool`` and ``layers`` say (``pooling.timm_pooled``): by default a
    plain global average of the last feature map, as Keras' ``pooling="avg"`` in the reference;
    timm's pre-logits output would add ConvNeXt's head LayerNorm, which the reference does not
    have. Models whose features are not a 2-D map (ViTs) use timm's head pooling.
    open_clip and transformers encoders pool as they were set (``FamilyEncoder.set_options``).
    """

    def __init__(self, model: torch.nn.Module, pool: str | None = None, layers: str = "last"):
        super().__init__()
        self.model: Any = model   # a timm model (untyped forward_features) or a FamilyEncoder
        self.pool, self.layers = pool or "avg", layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.model, FamilyEncoder):
            return self.model.pooled(x)
        return timm_pooled(self.model, x, self.pool, self.layers)


class Embedder:
    """The frozen backbone in torch: device, precision (fp32, bf16 or fp16 autocast),
    channels-last, compilation.

    ``compile`` uses ``torch.compile`` (Inductor fuses the bf16 convolutions, LayerNorms and
    GELUs); it costs ~30 s once, so it pays off on thousands of images, not on tests. Batches are
    padded to one fixed size so the compiled graph is never rebuilt for the last short batch.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str,
                 compile: bool = False, *, pool: str | None = None, layers: str = "last"):
        self.device, self.precision = device, precision
        self.net = PooledFeatures(model.to(device).to(memory_format=torch.channels_last),
                                  pool, layers).eval()
        self.compiled = torch.compile(self.net, dynamic=False) if compile else None
        self.batch_size: int | None = None

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self.net(x)
        n = x.shape[0]
        self.batch_size = self.batch_size or n
        if n < self.batch_size:
            pad = x.new_zeros((self.batch_size - n, *x.shape[1:]))
            x = torch.cat([x, pad]).contiguous(memory_format=torch.channels_last)
        try:
            return self.compiled(x)[:n]
        except Exception as exc:  # no C++ compiler, unsupported op: eager still works
            log.warning("torch.compile failed (%s); continuing without it",
                        str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__)
            self.compiled = None
            return self.net(x)[:n]

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        dtype = AUTOCAST.get(self.precision)
        with torch.autocast(self.device.type, dtype=dtype or torch.bfloat16,
                            enabled=dtype is not None):
            return self._run(x).float().cpu()


# ------------------------------------------------------------------------------------------ int8
def int8_available() -> bool:
    """Is the optional int8 engine (OpenVINO + NNCF) installed?"""
    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf"))


def require_int8() -> None:
    if not int8_available():
        raise EngineUnavailable("--precision int8 needs OpenVINO and NNCF: "
                           "pip install 'skinfeat[openvino]'")


def quantized_store() -> Path:
    """Where quantized models live: ``$SKINFEAT_HOME/int8`` (default ``~/.cache/skinfeat/int8``),
    beside the other downloaded or derived models, so extract and predict find them anywhere."""
    home = os.environ.get("SKINFEAT_HOME") or Path.home() / ".cache" / "skinfeat"
    return Path(home) / "int8"


def calibration_files(image_ids: Sequence[str], paths: Sequence[str],
                      n: int = CALIBRATION_IMAGES) -> list[tuple[str, str]]:
    """The calibration sample: the ``n`` images whose id hashes lowest.

    A hash order is a fixed pseudo-random sample of the whole data set (all classes, not the first
    folder), independent of table order and of sharding, so every shard calibrates alike.
    """
    def rank(iid: str) -> str:
        return hashlib.sha256(iid.encode("utf-8")).hexdigest()

    pairs = sorted(zip(map(str, image_ids), map(str, paths), strict=False),
                   key=lambda p: rank(p[0]))
    return pairs[:n]


def calibration_identity(files: Sequence[tuple[str, str]]) -> dict:
    """Names the calibration set by content (image id + file sha256), not by path."""
    h = hashlib.sha256()
    for iid, path in sorted(files):
        h.update(f"{iid}\0{sha256_file(Path(path)) if Path(path).is_file() else '-'}\n".encode())
    return {"engine": INT8_ENGINE, "images": len(files), "sha256": h.hexdigest()}


def quantized_key(identity: dict) -> str:
    wanted = {k: identity.get(k) for k in _MODEL_KEYS}
    if identity.get("layers", "last") != "last":   # absent before --layers: old keys unchanged
        wanted["layers"] = identity["layers"]
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:20]


def quantized_path(identity: dict, store: Path | None = None) -> Path:
    return (store or quantized_store()) / quantized_key(identity) / "model.xml"


def copy_quantized(identity: dict, store: Path) -> bool:
    """Copy the int8 model of ``identity`` from the store into ``store`` (a model bundle's), so
    that the bundle predicts on machines that never quantized it. False if it is not here."""
    src = quantized_path(identity).parent
    dst = Path(store) / src.name
    if (dst / "model.xml").is_file():
        return True
    if not (src / "model.xml").is_file():
        return False
    atomic_dir(dst, lambda tmp: shutil.copytree(src, tmp))
    return True


# OpenVINO's model converter (``ov.convert_model``) and NNCF send anonymous usage telemetry
# (Google Analytics) unless the user ran ``opt_in_out --opt_out``. Both ask openvino_telemetry
# with ``disable_in_ci=True``, which declines for a process whose environment has ``CI=true``;
# NNCF also stays silent when ``NNCF_CI`` is set when it is imported. Those are the per-process
# switches (openvino-telemetry 2025.x, nncf 2.x/3.x); the documented one is per user.
TELEMETRY_OFF = {"CI": "true", "NNCF_CI": "1"}


@contextlib.contextmanager
def openvino_telemetry_off():
    """OpenVINO and NNCF telemetry declined inside the block; the environment restored after."""
    saved = {key: os.environ.get(key) for key in TELEMETRY_OFF}
    os.environ.update(TELEMETRY_OFF)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def build_int8_model(model: torch.nn.Module, spec: TransformSpec,
                     files: Sequence[tuple[str, str]], out: Path, *, pool: str | None = None,
                     layers: str = "last") -> None:
    """Convert to OpenVINO, quantize with NNCF on the calibration images, save IR to ``out``;
    with OpenVINO's telemetry off (``openvino_telemetry_off``)."""
    with openvino_telemetry_off():
        quantize_int8_model(model, spec, files, out, pool=pool, layers=layers)


def quantize_int8_model(model: torch.nn.Module, spec: TransformSpec,
                        files: Sequence[tuple[str, str]], out: Path, *, pool: str | None = None,
                        layers: str = "last") -> None:
    import nncf
    import openvino as ov

    images = []
    for _, path in files:
        try:
            images.append(preprocess(path, spec)[None].numpy())
        except Exception:  # an unreadable calibration image is left out, as extract skips it
            continue
    if not images:
        raise QuantizedModelMissing("no calibration image could be read")
    net = PooledFeatures(model.float().cpu(), pool, layers).eval()
    with torch.inference_mode():
        ov_model = ov.convert_model(net, example_input=torch.from_numpy(images[0]),
                                    input=[(-1, 3, spec.size, spec.size)])
    # One image per calibration item: NNCF's activation statistics are per sample.
    quantized = nncf.quantize(ov_model, nncf.Dataset(images), subset_size=len(images))

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        ov.save_model(quantized, tmp / out.name, compress_to_fp16=False)
        (tmp / "calibration.json").write_text(json.dumps(
            {"images": [iid for iid, _ in files], "openvino": ov.__version__,
             "nncf": nncf.__version__}, indent=1))

    atomic_dir(out.parent, write)


class Int8Embedder:
    """An int8 OpenVINO model with ``Embedder``'s call signature (CPU only).

    Layers left in floating point run in fp32 (``INFERENCE_PRECISION_HINT``), not bf16 even where
    the CPU has it, so an int8 cache holds the same numbers on every x86 CPU up to kernel choice.
    """

    device = torch.device("cpu")
    precision = "int8"

    def __init__(self, xml: Path):
        import openvino as ov

        self.xml = xml
        self.compiled = ov.Core().compile_model(str(xml), "CPU",
                                                {"INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.request.infer({0: x.float().contiguous().numpy()})
        return torch.from_numpy(np.array(out[0], dtype=np.float32, copy=True))


def int8_embedder(model: torch.nn.Module, identity: dict, spec: TransformSpec,
                  files: Sequence[tuple[str, str]] | None,
                  bundled: Sequence[Path] = ()) -> Int8Embedder:
    """The quantized model of ``identity``: from the store, else from a model bundle's copy
    (``bundled`` stores), else built now from ``files``."""
    require_int8()
    from filelock import FileLock

    xml = quantized_path(identity)
    if not xml.is_file():
        copy = next((p for p in (quantized_path(identity, Path(d)) for d in bundled)
                     if p.is_file()), None)
        if copy is not None:
            return Int8Embedder(copy)
        if files is None:
            raise QuantizedModelMissing(
                f"the int8 model for this backbone and calibration set "
                f"({identity.get('calibration')}) is not in {xml.parent}; rerun skinfeat extract "
                "--precision int8 on the data the cache was made from to rebuild it, or copy that "
                "folder from the machine that made it")
        xml.parent.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{xml.parent}.lock"):  # two shards must not build it twice at once
            if not xml.is_file():
                log.info("quantizing %s to int8 on %d calibration images -> %s",
                         identity.get("backbone"), len(files), xml.parent)
                build_int8_model(model, spec, files, xml, pool=identity.get("pool"),
                                 layers=identity.get("layers") or "last")
    return Int8Embedder(xml)


def make_embedder(model: torch.nn.Module, device: torch.device, identity: dict,
                  spec: TransformSpec, *, compile: bool = False,
                  calibration: Sequence[tuple[str, str]] | None = None,
                  bundled: Sequence[Path] = ()):
    """The engine for a cache identity: int8 through OpenVINO, everything else through torch.
    Every encoder pools as the identity's ``pool`` and ``layers`` say."""
    pool, layers = identity.get("pool"), identity.get("layers") or "last"
    if isinstance(model, FamilyEncoder):
        model.set_options(pool, layers)
    if identity.get("precision") == "int8":
        return int8_embedder(model, identity, spec, calibration, bundled)
    return Embedder(model, device, str(identity.get("precision", "fp32")), compile=compile,
                    pool=pool, layers=layers)
