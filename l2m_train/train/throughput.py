"""Tokens/s, FLOP/s and MFU: Lightning's ThroughputMonitor, with the FLOPs of l2m_train/model/flops.py (the module's
`flops_per_batch`) and the device's peak from train.peak_tflops when set (Lightning knows the peaks of some GPUs only).
Tokens are real tokens, padding excluded; FLOPs count every position the model ran, padding included."""
from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ThroughputMonitor

from l2m_train.data.sample import real_tokens
from l2m_train.train.lightning_compat import set_available_flops


class Throughput(ThroughputMonitor):
    def __init__(self, peak_tflops: float):
        super().__init__(batch_size_fn=lambda b: b["input_ids"].shape[0], length_fn=real_tokens, window_size=10)
        self.peak_flops = peak_tflops * 1e12 or None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.peak_flops:
            set_available_flops(self, self.peak_flops)
