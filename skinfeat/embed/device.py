"""Where and how precisely an encoder runs: the device (CUDA, Apple GPU, CPU), the precision
(bf16 where the hardware runs it natively) and the batch size that fills it."""
from __future__ import annotations

import os

import torch

from ..errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
DEVICES = ("auto", "cpu", "cuda", "mps")


def cpu_flags() -> str:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo does not exist."""
    if not os.path.exists("/proc/cpuinfo"):
        return ""
    with open("/proc/cpuinfo") as fh:
        return next((line for line in fh if line.startswith("flags")), "")


# oneDNN's ISA caps below AVX512_CORE_BF16: with one of them in ONEDNN_MAX_CPU_ISA, torch's and
# OpenVINO's kernels run as on a CPU without bf16 (an Ice Lake, say), whatever this CPU has.
_ISA_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"}


def onednn_isa_cap() -> str:
    """The instruction-set cap given to oneDNN (``ONEDNN_MAX_CPU_ISA``, or its old name), if any."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    return cap.strip().upper()


def isa_capped_below_bf16() -> bool:
    """Has the user capped oneDNN's instruction set below bf16?"""
    return onednn_isa_cap() in _ISA_WITHOUT_BF16


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "mps":
        return False  # fp16 is the MPS half precision that every macOS version runs
    # Without native bf16 (AMX or avx512_bf16) autocast emulates it and is slower than fp32.
    if isa_capped_below_bf16():
        return False
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA, else Apple's GPU (MPS), else the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but torch sees no CUDA device")
    if device == "mps" and not mps_available():
        raise InputError("--device mps asked for, but torch sees no Apple GPU (MPS needs "
                           "Apple silicon, macOS 12.3+ and an arm64 Python)")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` stays lossless or validated: bf16 where the hardware runs it natively (AMX /
    avx512-bf16 CPUs, recent CUDA cards), fp16 on older CUDA cards and Apple GPUs, else fp32.
    int8 is never chosen by ``auto`` here: a cache is quantized only when asked (the demo alone
    picks it on CPUs without bf16; see README, "Stage one at speed")."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if bf16_supported(device):
            return "bf16"
        return "fp16" if device.type in ("cuda", "mps") else "fp32"
    if precision == "int8" and device.type != "cpu":
        raise InputError("--precision int8 runs on the CPU (OpenVINO); pass --device cpu")
    if precision == "fp16" and device.type == "cpu":
        raise InputError("--precision fp16 is for GPUs (cuda, mps); on a CPU use bf16, int8 or "
                         "fp32")
    return precision


def default_batch_size(device: torch.device) -> int:
    """32 on CPUs (bigger batches gain nothing there); on a GPU, enough images to fill it."""
    if device.type == "cuda":
        gib = torch.cuda.get_device_properties(device).total_memory / 2**30
        return 256 if gib >= 20 else 128 if gib >= 8 else 64
    return 64 if device.type == "mps" else 32
