"""train.stop_at: training ends at the first validation where a metric passes a threshold, e.g. `val/exact>0.83`.

Lightning's EarlyStopping with a stopping threshold and a patience that never runs out. The run then ends as at its
last step: Checkpointing saves the weights it stopped at, and the run validates and writes result.json, so the next
command of a chain starts from it with train.init_from=<this run>. The same command again trains nothing more: the
checkpoint it resumes from carries the metric that stopped it. A threshold it has not passed resumes training.
"""
from __future__ import annotations

import sys
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from l2m_train.config import StopRule


class StopAt(EarlyStopping):
    def __init__(self, rule: StopRule):
        super().__init__(monitor=rule.metric, mode="max" if rule.above else "min", stopping_threshold=rule.threshold,
                         patience=sys.maxsize, check_finite=False, check_on_train_epoch_end=False)  # nan: NonFiniteLoss
        self.stopped_on: float | None = None  # the value that stopped training (EarlyStopping keeps no best score then)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopped_on is not None and self.monitor_op(torch.tensor(self.stopped_on), self.stopping_threshold):
            trainer.should_stop = True  # resumed from where it stopped

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stopping = trainer.should_stop
        super().on_validation_end(trainer, pl_module)
        if trainer.should_stop and not stopping and self.stopping_reason == EarlyStoppingReason.STOPPING_THRESHOLD:
            self.stopped_on = float(trainer.callback_metrics[self.monitor])
            if trainer.is_global_zero:
                print(f"l2m: step {trainer.global_step}: {self.stopping_reason_message} (train.stop_at)", file=sys.stderr)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "stopped_on": self.stopped_on}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.stopped_on = state_dict.get("stopped_on")
