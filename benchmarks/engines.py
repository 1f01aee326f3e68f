"""Which engine for int8 stage one? Every candidate on one batch, interleaved, in one run.

    .venv/bin/python benchmarks/engines.py [--backbone convnext_tiny] [--rounds 3]

Model only (one preloaded batch of real HAM10000 images, no decoding), random weights, images/s
and the ratio to torch fp32 eager channels-last, plus per-image cosine vs torch fp32 on that
batch. Static int8 candidates are calibrated on other images of the sample. Candidates that are
not installed are listed as skipped:
  * torch fp32 eager (channels-last): what ``--precision fp32`` runs; the reference;
  * torch bf16 autocast + torch.compile: ``auto`` where the CPU has native bf16;
  * torch dynamic int8 (``torch.ao.quantization.quantize_dynamic`` on the Linear layers);
  * torch static x86 int8: PT2E + X86InductorQuantizer + torch.compile (torchao);
  * ONNX Runtime fp32, and static int8 (QDQ, calibrated);
  * OpenVINO fp32 (f32 inference precision), and int8 made by NNCF (what ``--precision int8`` runs).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ham10000-sample"


def have(*mods: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in mods)


def candidates(net, x, calib, tmp: Path) -> dict:
    """name -> callable(batch ndarray) -> (N, D) ndarray, or a string saying why it is skipped."""
    out: dict = {}
    cl = net.to(memory_format=torch.channels_last)

    def torch_run(m, dtype=None):
        def run(a):
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16,
                                                        enabled=dtype is not None):
                t = torch.from_numpy(a).contiguous(memory_format=torch.channels_last)
                return m(t).float().numpy()
        return run

    out["torch fp32 eager"] = torch_run(cl)
    out["torch bf16 + compile"] = torch_run(torch.compile(cl), torch.bfloat16)
    dyn = torch.ao.quantization.quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8)
    out["torch dynamic int8 (Linear)"] = torch_run(dyn)

    if have("torchao"):
        try:
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
            exported = torch.export.export(net, (torch.from_numpy(x),)).module()
            q = xiq.X86InductorQuantizer().set_global(
                xiq.get_default_x86_inductor_quantization_config())
            prepared = prepare_pt2e(exported, q)
            with torch.inference_mode():  # the exported graph has the batch size baked in
                for i in range(0, len(calib) - len(x) + 1, len(x)):
                    prepared(torch.from_numpy(calib[i:i + len(x)]))
            converted = torch.compile(convert_pt2e(prepared))

            def pt2e(a):
                with torch.inference_mode():
                    return converted(torch.from_numpy(a)).float().numpy()
            out["torch static int8 (PT2E x86, compiled)"] = pt2e
        except Exception as exc:  # an API moved between torchao versions: say so, keep going
            out["torch static int8 (PT2E x86, compiled)"] = f"failed: {str(exc)[:100]}"
    else:
        out["torch static int8 (PT2E x86, compiled)"] = "skipped: pip install torchao"

    onnx_path = tmp / "m.onnx"
    if have("onnxruntime", "onnx"):
        import onnxruntime as ort
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
        torch.onnx.export(net, (torch.from_numpy(x[:1]),), str(onnx_path), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                          dynamo=False)

        def ort_run(path):
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            return lambda a: sess.run(None, {"x": a})[0]
        out["ONNX Runtime fp32"] = ort_run(onnx_path)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.items = iter([{"x": calib[i:i + 1]} for i in range(len(calib))])

            def get_next(self):
                return next(self.items, None)
        pre = tmp / "pre.onnx"
        quant_pre_process(str(onnx_path), str(pre))
        quantize_static(str(pre), str(tmp / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True)
        out["ONNX Runtime static int8 (QDQ)"] = ort_run(tmp / "q.onnx")
    else:
        out["ONNX Runtime"] = "skipped: pip install onnxruntime onnx"

    if have("openvino", "nncf"):
        import nncf
        import openvino as ov
        with torch.inference_mode():
            ov_model = ov.convert_model(net, example_input=torch.from_numpy(x[:1]),
                                        input=[(-1, *x.shape[1:])])
        core = ov.Core()
        f32 = {"INFERENCE_PRECISION_HINT": "f32"}
        cf = core.compile_model(ov_model, "CPU", f32)
        out["OpenVINO fp32"] = lambda a: cf(a)[0]
        q = nncf.quantize(ov_model, nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]),
                          subset_size=len(calib))
        cq = core.compile_model(q, "CPU", f32)
        out["OpenVINO int8 (NNCF)"] = lambda a: cq(a)[0]
    else:
        out["OpenVINO"] = "skipped: pip install openvino nncf"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backbone", default="convnext_tiny")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--calibration-images", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    import warnings
    warnings.filterwarnings("ignore")
    from skinfeat.data.datasets import load_dataset
    from skinfeat.embed.backbone import create_backbone
    from skinfeat.embed.engines import PooledFeatures
    from skinfeat.embed.transform import preprocess, transform_for
    from skinfeat.embed.weights import WeightSource

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from extract import cpu_line

    table = load_dataset(args.data, "ham10000").table.sort_values("image_id").reset_index(drop=True)
    model = create_backbone(args.backbone, WeightSource("random"))
    spec = transform_for(model)
    net = PooledFeatures(model).eval()
    paths = table["path"].tolist()
    x = np.stack([preprocess(p, spec).numpy() for p in paths[:args.batch_size]])
    calib = np.stack([preprocess(p, spec).numpy() for p in
                      paths[args.batch_size:args.batch_size + args.calibration_images]])
    print(cpu_line())
    print(f"{args.backbone} (random weights), batch {args.batch_size}, {torch.get_num_threads()} "
          f"torch threads; static int8 calibrated on {len(calib)} other images")
    with tempfile.TemporaryDirectory() as tmp:
        runs = candidates(net, x, calib, Path(tmp))
        ready = {k: v for k, v in runs.items() if callable(v)}
        ref = ready["torch fp32 eager"](x)
        outs = {k: run(x) for k, run in ready.items()}  # warm-up, compile, and the outputs
        best = {k: float("inf") for k in ready}
        for _ in range(args.rounds):
            for k, run in ready.items():
                t0 = time.perf_counter()
                run(x)
                best[k] = min(best[k], time.perf_counter() - t0)
    base = len(x) / best["torch fp32 eager"]
    print(f"\n{'engine':<42}{'img/s':>8}{'vs fp32':>9}{'cos min':>9}{'cos median':>11}")
    for k, v in runs.items():
        if not callable(v):
            print(f"{k:<42}{v}")
            continue
        y = outs[k]
        cos = (y * ref).sum(1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1))
        ips = len(x) / best[k]
        print(f"{k:<42}{ips:8.1f}{ips / base:8.2f}x{cos.min():9.4f}{np.median(cos):11.5f}")


if __name__ == "__main__":
    main()
