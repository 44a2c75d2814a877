"""Tokens/s, FLOP/s and MFU: Lightning's ThroughputMonitor, with the FLOPs of l2m_train/model/flops.py (the module's
`flops_per_batch`) and the device's peak: train.peak_tflops when set, else in bf16 or fp16 our table of dense peaks
(train/peak_flops.py), else Lightning's figure (none for CPUs: no MFU).
Tokens are real tokens, padding excluded; FLOPs count every position the model ran, padding included."""
from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ThroughputMonitor

from l2m_train.data.sample import real_tokens
from l2m_train.train.lightning_compat import compute_dtype, set_available_flops
from l2m_train.train.peak_flops import device_peak_flops


class Throughput(ThroughputMonitor):
    def __init__(self, peak_tflops: float):
        super().__init__(batch_size_fn=lambda b: b["input_ids"].shape[0], length_fn=real_tokens, window_size=10)
        self.peak_flops = peak_tflops * 1e12 or None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        half = compute_dtype(trainer) in (torch.bfloat16, torch.float16)
        peak = self.peak_flops or (device_peak_flops(trainer.strategy.root_device) if half else None)
        if peak:
            set_available_flops(self, peak)
