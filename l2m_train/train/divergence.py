"""Stopping a run that no longer computes finite numbers, before it saves them.

NonFiniteLoss stops training after train.max_nonfinite_steps optimizer steps in a row whose training loss is nan or
±inf on some rank (a finite loss resets the count). Checkpointing saves no non-finite weights (weights_finite): it
stops the run instead, as such weights never become finite again. Either way the newest checkpoint holds the last
finite weights, and the same command resumes from it (with, say, a lower optim.lr).
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from l2m_train.train.checkpoint_layout import complete_checkpoints


class Diverged(Exception):
    """Training stopped on non-finite numbers, saying which checkpoint holds the last finite weights."""

    def __init__(self, step: int, why: str, checkpoints: Path):
        found = complete_checkpoints(checkpoints)
        newest = f"the newest checkpoint, {found[-1]}, holds finite weights" if found else "no checkpoint was saved"
        super().__init__(f"training stopped at step {step}: {why}; {newest}")


def weights_finite(trainer: L.Trainer) -> bool:
    """Every parameter finite, on every rank (each checks what it holds: under ZeRO-3, its partition)."""
    params = trainer.lightning_module.parameters()
    return trainer.strategy.reduce_boolean_decision(all(bool(torch.isfinite(getattr(p, "ds_tensor", p)).all())
                                                        for p in params), all=True)


class NonFiniteLoss(Callback):
    def __init__(self, max_steps: int, checkpoints: Path):
        self.max_steps, self.checkpoints = max_steps, checkpoints
        self.steps = 0  # optimizer steps in a row with a non-finite loss
        self._nonfinite = False  # in a micro-batch of the current step, on this rank
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        self._nonfinite |= not bool(torch.isfinite(outputs["loss"]).all())
        if trainer.global_step == self._last_step:  # inside a gradient accumulation
            return
        self._last_step = trainer.global_step
        nonfinite = trainer.strategy.reduce_boolean_decision(self._nonfinite, all=False)  # on any rank
        self._nonfinite = False
        self.steps = self.steps + 1 if nonfinite else 0
        if self.steps >= self.max_steps:
            raise Diverged(trainer.global_step, f"the training loss was not finite for {self.steps} steps in a row "
                                                "(train.max_nonfinite_steps)", self.checkpoints)
