"""Device, precision, batch and worker choice for CPUs, CUDA and Apple GPUs (GPUs mocked where
absent), the demo's choice of the fastest path, and import on platforms without fcntl."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from skinfeat import demo
from skinfeat.embed import device, engines
from skinfeat.embed.device import default_batch_size, resolve_device, resolve_precision
from skinfeat.embed.extract import default_workers

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


@pytest.fixture
def machine(monkeypatch):
    """Pretend to be a machine: ``machine(cuda=..., mps=..., flags=..., cuda_bf16=...)``."""
    def make(cuda=False, mps=False, flags="", cuda_bf16=True, cuda_gib=80):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda *a: SimpleNamespace(total_memory=cuda_gib * 2**30))
        monkeypatch.setattr(device, "mps_available", lambda: mps)
        monkeypatch.setattr(device, "cpu_flags", lambda: f"flags : fpu {flags}")
    return make


@pytest.mark.parametrize("cuda,mps,want", [(True, False, "cuda"), (True, True, "cuda"),
                                           (False, True, "mps"), (False, False, "cpu")])
def test_auto_device_prefers_cuda_then_apple_gpu(machine, cuda, mps, want):
    machine(cuda=cuda, mps=mps)
    assert resolve_device("auto").type == want


def test_asking_for_an_absent_gpu_is_a_clear_error(machine):
    machine()
    with pytest.raises(ValueError, match="no Apple GPU"):
        resolve_device("mps")
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")


@pytest.mark.parametrize("device,kw,want", [
    (CPU, dict(flags="avx512f avx512_bf16"), "bf16"),     # Zen 4, Cooper Lake
    (CPU, dict(flags="avx512f amx_bf16 amx_tile"), "bf16"),  # Sapphire Rapids
    (CPU, dict(flags="avx512f avx512_vnni"), "fp32"),     # Ice Lake: no native bf16
    (CPU, dict(flags="avx2 fma"), "fp32"),
    (CUDA, dict(cuda=True, cuda_bf16=True), "bf16"),      # Ampere and later
    (CUDA, dict(cuda=True, cuda_bf16=False), "fp16"),     # Turing, Volta
    (MPS, dict(mps=True), "fp16"),
])
def test_auto_precision_is_native_half_or_fp32(machine, device, kw, want):
    machine(**kw)
    assert resolve_precision("auto", device) == want


def test_impossible_precisions_are_refused(machine):
    machine(cuda=True)
    with pytest.raises(ValueError, match="int8 runs on the CPU"):
        resolve_precision("int8", CUDA)
    with pytest.raises(ValueError, match="fp16 is for GPUs"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="must be one of"):
        resolve_precision("int4", CPU)


@pytest.mark.parametrize("device,gib,want", [(CUDA, 80, 256), (CUDA, 16, 128), (CUDA, 6, 64),
                                             (MPS, 0, 64), (CPU, 0, 32)])
def test_batch_size_fills_a_gpu(machine, device, gib, want):
    machine(cuda=device.type == "cuda", cuda_gib=gib)
    assert default_batch_size(device) == want


def test_gpus_get_more_decode_workers(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_workers(CPU) == 4 and default_workers(CUDA) == 8 and default_workers(MPS) == 8
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert default_workers(CUDA) == 0


@pytest.mark.parametrize("kw,int8,want", [
    (dict(flags="avx512_vnni"), True, "auto"),     # no bf16: fp32 (int8 failed on real weights)
    (dict(flags="avx512_vnni"), False, "auto"),    # ... OpenVINO or not
    (dict(flags="avx512_bf16"), True, "auto"),     # native bf16 is lossless and fast
    (dict(cuda=True), True, "auto"),
    (dict(mps=True), True, "auto"),
])
def test_demo_takes_the_fastest_validated_path(machine, monkeypatch, kw, int8, want):
    machine(**kw)
    monkeypatch.setattr(demo, "int8_available", lambda: int8)
    chosen, why = demo.demo_precision("auto")
    assert chosen == want and ("int8" not in chosen)
    assert ("no native bf16" in why) == (kw == dict(flags="avx512_vnni") and int8)
    assert demo.demo_precision("fp32") == ("fp32", "")     # asked for: kept
    # extract's own auto stays lossless whatever the demo does
    assert resolve_precision("auto", resolve_device("auto")) != "int8"


@pytest.mark.parametrize("cap,want", [("AVX512_CORE_VNNI", "fp32"), ("avx2", "fp32"),
                                      ("AVX512_CORE_BF16", "bf16"), ("ALL", "bf16"), ("", "bf16")])
def test_a_onednn_isa_cap_below_bf16_means_no_native_bf16(machine, monkeypatch, cap, want):
    machine(flags="avx512f avx512_vnni avx512_bf16")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert resolve_precision("auto", CPU) == want


def test_int8_without_the_extra_says_what_to_install(monkeypatch):
    monkeypatch.setattr(engines, "int8_available", lambda: False)
    with pytest.raises(engines.EngineUnavailable, match=r"pip install 'skinfeat\[openvino\]'"):
        engines.require_int8()


@pytest.mark.slow   # subprocess: imports every module afresh
def test_every_module_imports_without_posix_only_apis():
    """Windows has no fcntl, resource, termios, pwd or grp: importing any skinfeat module must
    not need them (the cache lock is filelock's, which uses msvcrt there)."""
    code = """
import importlib, pkgutil, sys
for name in ("fcntl", "resource", "termios", "pwd", "grp"):
    sys.modules[name] = None  # 'import fcntl' now raises ImportError, as on Windows
import skinfeat
names = [m.name for m in pkgutil.walk_packages(skinfeat.__path__, "skinfeat.")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) >= 20
