"""Every use of Lightning's private internals, in one place, so that a Lightning upgrade that moves one fails here.

A Lightning outside the range we test (pyproject.toml) is refused on import, with the range in the message.
tests/test_lightning_compat.py checks each function below against the installed Lightning.
"""
from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from packaging.specifiers import SpecifierSet

SUPPORTED = ">=2.4,<2.7"  # pyproject.toml's lightning range (a test keeps them equal)


class UnsupportedLightning(ImportError):
    """The installed Lightning is outside the range whose internals this module knows."""


def check_version(version: str) -> None:
    if version not in SpecifierSet(SUPPORTED):
        raise UnsupportedLightning(f"l2m_train needs lightning{SUPPORTED}, found {version}: pip install 'lightning{SUPPORTED}' "
                                   "(what it uses of Lightning's internals is in l2m_train/train/lightning_compat.py)")


check_version(L.__version__)


def shift_batch_progress(checkpoint: dict, batches: int) -> None:
    """Make the fit loop's batch counters in a Lightning checkpoint count `batches` trained batches (every counter
    moves by the same amount): Lightning ends an accumulation where that count reaches a multiple of it."""
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    shift = batches - progress["total"]["ready"]
    for counts in (progress["total"], progress["current"]):
        for key in counts:
            counts[key] += shift


def set_available_flops(monitor: ThroughputMonitor, flops: float) -> None:
    """The peak FLOP/s behind MFU, after ThroughputMonitor.setup fixed Lightning's own figure into each stage's counter."""
    monitor.available_flops = flops
    for counter in monitor._throughputs.values():
        counter.available_flops = flops


def drop_wandb_anonymous(logger: WandbLogger) -> None:
    """Lightning passes anonymous=None to wandb.init, which wandb 0.31 warns is deprecated."""
    logger._wandb_init.pop("anonymous", None)


def setup_deepspeed_environment_on_cpu(strategy: DeepSpeedStrategy) -> None:
    """DeepSpeedStrategy.setup_environment less its CUDA-only check: what DDPStrategy does (devices, process group)."""
    DDPStrategy.setup_environment(strategy)


def attached_trainer(module: L.LightningModule) -> L.Trainer | None:
    """The module's Trainer, None when the module is used on its own (`module.trainer` raises then)."""
    return module._trainer


def compute_dtype(trainer: L.Trainer) -> torch.dtype:
    """The dtype the matmuls run in under the trainer's precision (bf16-mixed, 16-mixed, 32-true, ...)."""
    precision = str(trainer.precision)
    return torch.bfloat16 if precision.startswith("bf16") else torch.float16 if precision.startswith("16") else torch.float32


def logs_this_step(trainer: L.Trainer) -> bool:
    """Whether what a training step logs now reaches the loggers (every trainer.log_every_n_steps-th step does;
    the values of the others are overwritten unseen)."""
    return trainer._logger_connector.should_update_logs
