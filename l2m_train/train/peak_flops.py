"""Dense bf16 tensor-core peaks of common GPUs, for MFU when train.peak_tflops is 0.

Lightning's table misses the H200 as CUDA names it ("NVIDIA H200") and quotes some GPUs with 2:4 sparsity, which
halves their MFU. Vendor datasheet figures without sparsity; fp16 peaks are the same on all of these.
"""
from __future__ import annotations

import torch

# (substrings of the lower-cased torch.cuda.get_device_name, all present; TFLOP/s), the first match wins.
DENSE_BF16_TFLOPS: list[tuple[tuple[str, ...], float]] = [
    (("b200",), 2250.0),
    (("h200", "nvl"), 835.0),
    (("h200",), 989.0),  # SXM; also GH200's GPU
    (("h100", "nvl"), 835.0),
    (("h100", "pcie"), 756.0),
    (("h100", "hbm2e"), 756.0),  # a PCIe card's name on some drivers
    (("h100",), 989.0),  # SXM: "NVIDIA H100 80GB HBM3"
    (("a100",), 312.0),  # SXM and PCIe alike
    (("l40s",), 362.0),
    (("l40",), 181.0),
    (("l4",), 121.0),
]


def dense_bf16_tflops(device_name: str) -> float | None:
    """The peak for a CUDA device name (e.g. "NVIDIA H200"), None when the table does not know it."""
    name = device_name.lower()
    return next((tflops for parts, tflops in DENSE_BF16_TFLOPS if all(p in name for p in parts)), None)


def device_peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of a device from the table; None for a CPU or a GPU the table does not know."""
    tflops = dense_bf16_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    return None if tflops is None else tflops * 1e12
