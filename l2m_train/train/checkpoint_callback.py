"""Checkpoints every checkpoint.every_steps optimizer steps, at the end of training (train.stop_at's end too), and at the
first step boundary after a preemption signal (SIGUSR1, SIGTERM) or an interrupt (SIGINT, Ctrl-C), when training then
stops. A second interrupt stops at once, without saving.

Every rank writes into one temporary directory; rank 0 adds the train state and, last, the `complete` marker, and
publishes the directory with one rename. A crash mid-write leaves a `.partial` directory that no reader takes for a
checkpoint, and the last complete one as it was. Retention then keeps the newest checkpoint.keep_last plus milestones.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn

from l2m_train.config import Config
from l2m_train.io import publish_text
from l2m_train.train.checkpoint_layout import (
    CHECKPOINTS,
    COMPLETE,
    LIGHTNING,
    STATE,
    CheckpointError,
    complete_checkpoints,
    is_complete,
    step_name,
)
from l2m_train.train.divergence import Diverged, weights_finite
from l2m_train.train.lightning_compat import shift_batch_progress
from l2m_train.train.state import rng_state, set_rng_state, train_state

PREEMPTION_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Training stopped early on a signal, after saving a checkpoint to resume from."""

    def __init__(self, signum: int, checkpoint: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name} at {checkpoint}; the same command resumes from there")
        self.signum = signum


class Checkpointing(Checkpoint):
    def __init__(self, cfg: Config, run_dir: Path, resumed_from: Path | None, wandb_run_id: str | None,
                 init_from: dict[str, str] | None):
        self.cfg, self.dir, self.resumed_from, self.wandb_run_id = cfg, run_dir / CHECKPOINTS, resumed_from, wandb_run_id
        self.init_from = init_from  # the train state's record of where the first weights came from
        self.signal: int | None = None  # a preemption signal received by this process
        self.preempted: Preempted | None = None
        self._previous_handlers: dict[int, object] = {}
        self._last_step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:  # what a killed run left behind is never a checkpoint
            for stale in [*self.dir.glob(".*.partial"), *self.dir.glob(".*.deleting")]:
                shutil.rmtree(stale, ignore_errors=True)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # Lightning ends an accumulation when its count of batches trained reaches a multiple of train.accumulate
        # (DeepSpeed counts afresh from the resume). After a change of train.accumulate (e.g. on fewer ranks), count
        # the batches as if accumulated the new way, so that the first step after the resume is a whole one.
        shift_batch_progress(checkpoint, checkpoint["global_step"] * trainer.accumulate_grad_batches)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step
        rng = self.resumed_from / "rng" / f"rank-{trainer.global_rank}.json" if self.resumed_from else None
        if rng is not None and rng.is_file():  # on another number of ranks, the new ranks keep their seeded generators
            set_rng_state(json.loads(rng.read_text()))
        # After Lightning's own handlers (installed just before training), which it restores when the run ends.
        self._previous_handlers = {s: signal.signal(s, self._on_signal) for s in PREEMPTION_SIGNALS}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for s, handler in self._previous_handlers.items():
            signal.signal(s, handler)

    def _on_signal(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.signal is not None:  # Ctrl-C again: no waiting for the step to end
            raise KeyboardInterrupt
        self.signal = signum

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_step:  # inside a gradient accumulation
            return
        self._last_step = step
        stop = trainer.strategy.reduce_boolean_decision(self.signal is not None, all=False)  # any rank's signal
        if stop or step % self.cfg.checkpoint.every_steps == 0 or step >= trainer.max_steps:
            path = self.save(trainer)
            if stop:
                self.preempted = Preempted(self.signal or signal.SIGTERM, path)
                trainer.should_stop = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # train.stop_at ended training at this validation (StopAt runs first: Lightning calls checkpoint callbacks
        # last): keep the weights it stopped at, with the metric that stopped it, even if the step was saved before.
        if trainer.state.fn == TrainerFn.FITTING and trainer.should_stop and self.signal is None:
            self.save(trainer, again=True)

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        # A validation inside training ends early at a signal (every rank validates the same batches, so they agree
        # batch by batch): Lightning's loop ends on StopIteration, and the step after it saves and stops. (Lightning
        # also validates once more on stopping early; that one then ends before its first batch.)
        if trainer.state.fn == TrainerFn.FITTING and trainer.strategy.reduce_boolean_decision(self.signal is not None, all=False):
            raise StopIteration

    def save(self, trainer: L.Trainer, again: bool = False) -> Path:
        """The checkpoint of this step; again: replace it if it exists (what the callbacks hold has changed since)."""
        final = self.dir / step_name(trainer.global_step)
        if is_complete(final) and not again:  # e.g. a run resumed at its last step
            return final
        if not weights_finite(trainer):
            raise Diverged(trainer.global_step, "the weights are not finite, so they were not saved", self.dir)
        partial = self.dir / f".{final.name}.partial"  # one name for every rank
        try:
            self._write(trainer, partial, final)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            shutil.rmtree(partial, ignore_errors=True)  # give back what the unfinished write took
            previous = complete_checkpoints(self.dir)
            then = f"the previous checkpoint {previous[-1]} is intact: free some space and run the same command to " \
                   "resume from it" if previous else "there is no earlier checkpoint: free some space and run again"
            raise CheckpointError(f"{err.strerror} while saving checkpoint {final.name} in {self.dir}; {then}") from None
        return final

    def _write(self, trainer: L.Trainer, partial: Path, final: Path) -> None:
        if trainer.is_global_zero:
            shutil.rmtree(partial, ignore_errors=True)
            (partial / "rng").mkdir(parents=True)
        trainer.strategy.barrier("checkpoint-begin")
        trainer.save_checkpoint(partial / LIGHTNING, weights_only=False)  # collective: under DeepSpeed every rank writes its shards
        publish_text(partial / "rng" / f"rank-{trainer.global_rank}.json", json.dumps(rng_state()))
        trainer.strategy.barrier("checkpoint-written")
        if trainer.is_global_zero:
            data = trainer.datamodule
            state = train_state(self.cfg, data, trainer.global_step, self.wandb_run_id, self.init_from)
            publish_text(partial / STATE, json.dumps(state, indent=1))
            data.tokenizer.save(partial)
            publish_text(partial / COMPLETE, "")
            replaced = final.with_name(f".{final.name}.deleting")
            if final.exists():  # saved again: the old one steps aside only once the new one is complete
                os.rename(final, replaced)
            os.rename(partial, final)
            shutil.rmtree(replaced, ignore_errors=True)
            self._retain()
        trainer.strategy.barrier("checkpoint-published")

    def _retain(self) -> None:
        keep_last, every = self.cfg.checkpoint.keep_last, self.cfg.checkpoint.keep_every_steps
        for path in complete_checkpoints(self.dir)[:-keep_last]:
            if every and int(path.name.removeprefix("step-")) % every == 0:
                continue  # a milestone
            doomed = path.with_name(f".{path.name}.deleting")
            os.rename(path, doomed)  # never a half-deleted directory under a checkpoint's name
            shutil.rmtree(doomed)
