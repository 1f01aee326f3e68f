"""benchmarks/encoders.py runs end to end offline: every installed family at one input size, with
the CPU's flags, the widths and img/s per precision."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow   # encoder families: real encoders, exports, int8

ROOT = Path(__file__).resolve().parents[1]


def test_the_encoder_benchmark_runs_offline_on_tiny_models():
    pytest.importorskip("open_clip")
    pytest.importorskip("transformers")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/encoders.py"), "--size", "tiny",
                        "--image-size", "64", "--rounds", "1", "--batch-size", "2"],
                       capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert out.startswith("CPU: ") and "flags:" in out.splitlines()[0]
    labels = ("timm test_convnext", "timm test_vit", "open_clip tiny CLIP", "hf tiny ViT")
    rows = {}
    for line in out.splitlines():
        label = next((lab for lab in labels if line.startswith(lab + " ")), None)
        if label and " fp32 " in line:
            rows[label] = line[len(label):].split()   # input [(cfg N)] width fp32 img/s ratio -
    assert set(rows) == set(labels), out
    for parts in rows.values():        # one input size for all, img/s > 0
        assert parts[0] == "64" and parts[-4] == "fp32" and float(parts[-3]) > 0
    assert rows["open_clip tiny CLIP"][-5] == "32" and rows["hf tiny ViT"][-5] == "64"
