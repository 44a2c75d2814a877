"""Stopping a run that no longer computes finite numbers, before it saves them.

NonFiniteLoss stops training after train.max_nonfinite_steps optimizer steps in a row whose training loss is nan or
±inf on some rank (a finite loss resets the count), at the end of the step after (it reads each step's verdict a
step late, so that no step waits for the device). Checkpointing saves no non-finite weights (weights_finite): it
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
    """Counts optimizer steps in a row with a non-finite loss, without stalling the device for it: a step's flag (any
    micro-batch, any rank, reduced on the device) is copied to the host without waiting and read at the end of the
    next step, by when it has long arrived. So the count runs one step behind, and is brought up to date when
    training ends."""

    def __init__(self, max_steps: int, checkpoints: Path):
        self.max_steps, self.checkpoints = max_steps, checkpoints
        self.steps = 0  # optimizer steps in a row with a non-finite loss
        self._nonfinite: torch.Tensor | None = None  # in a micro-batch of the current step, on this rank (on the device)
        self._arriving: tuple[torch.Tensor, torch.cuda.Event | None] | None = None  # the last step's flag, on its way
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        nonfinite = ~torch.isfinite(outputs["loss"].detach()).all()
        self._nonfinite = nonfinite if self._nonfinite is None else self._nonfinite | nonfinite
        if trainer.global_step == self._last_step:  # inside a gradient accumulation
            return
        self._last_step = trainer.global_step
        self._count(trainer)
        on_any_rank = trainer.strategy.reduce(self._nonfinite.float(), reduce_op="sum")
        self._arriving, self._nonfinite = _to_host(on_any_rank), None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._count(trainer)

    def _count(self, trainer: L.Trainer) -> None:
        """Add the flag of the step before to the count, and stop at max_steps."""
        if self._arriving is None:
            return
        (flag, arrived), self._arriving = self._arriving, None
        if arrived is not None:
            arrived.synchronize()
        self.steps = self.steps + 1 if flag.item() > 0 else 0
        if self.steps >= self.max_steps:
            raise Diverged(trainer.global_step, f"the training loss was not finite for {self.steps} steps in a row "
                                                "(train.max_nonfinite_steps)", self.checkpoints)


def _to_host(value: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """A copy of a device scalar on its way to the host, and the event that says it has arrived (None: it has)."""
    if value.device.type != "cuda":
        return value, None
    host = torch.empty((), dtype=value.dtype, pin_memory=True)
    host.copy_(value, non_blocking=True)
    arrived = torch.cuda.Event()
    arrived.record()
    return host, arrived
