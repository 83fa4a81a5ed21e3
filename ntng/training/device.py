"""Where a run computes and in which precision, and what it records about the machine and its packages: the
helpers the loop, calibration, fine-tuning and RHO-LOSS's irreducible-loss pipeline share (no training here)."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

import torch


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run natively (elsewhere bf16 autocast is emulated and slower)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


PRECISIONS = ("fp32", "bf16")  # what a preset may pin (Preset.precision); None follows the host


def autocast_dtype(device: torch.device, pinned: str | None = None) -> torch.dtype | None:
    """The autocast dtype of a run: the preset's `pinned` precision ("fp32" -> None, "bf16"), or where it pins none,
    bf16 where the hardware runs it natively, else fp32 (None). NTNG_PRECISION=fp32 forces fp32 when nothing is
    pinned."""
    if pinned is not None:
        if pinned not in PRECISIONS:
            raise ValueError(f"unknown precision {pinned!r} (choose from {', '.join(PRECISIONS)})")
        return torch.bfloat16 if pinned == "bf16" else None
    if os.environ.get("NTNG_PRECISION", "").lower() == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_bf16() else None


def precision_name(dtype: torch.dtype | None) -> str:
    """How config.json names a run's precision: "float32" or the autocast dtype ("bfloat16")."""
    return str(dtype).replace("torch.", "") if dtype else "float32"


def describe_machine(device: torch.device) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device.type}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def package_versions() -> dict:
    versions = {}
    for name in ("ntng", "torch", "transformers", "tokenizers", "datasets", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
