"""The Lightning strategy from config: one device, DDP, or DeepSpeed ZeRO 1/2/3 with a DeepSpeed JSON generated from ours."""
from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, Strategy

from l2m_train.config import Config, ConfigError
from l2m_train.train.lightning_compat import setup_deepspeed_environment_on_cpu


def on_gpu(cfg: Config) -> bool:
    t = cfg.train
    return t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available())


def strategy_name(cfg: Config) -> str:
    """single, ddp or deepspeed (auto: single on one device, ddp on more)."""
    if cfg.train.strategy == "auto":
        return "single" if cfg.world_size == 1 else "ddp"
    return cfg.train.strategy


def build_strategy(cfg: Config, load_universal: bool = False) -> str | Strategy:
    name = strategy_name(cfg)
    if name != "deepspeed":
        # A micro-batch of one segment (short samples, data.bucket) never uses lm2's memory write: DDP must not wait for it.
        return {"single": "auto", "ddp": "ddp_find_unused_parameters_true"}[name]
    if not on_gpu(cfg):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed is imported; launched ranks inherit it
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ConfigError("train.strategy=deepspeed needs DeepSpeed: pip install 'l2m_train[deepspeed]'") from None
    cls = DeepSpeedStrategy if on_gpu(cfg) else CPUDeepSpeedStrategy
    return cls(config=deepspeed_config(cfg, load_universal))


def deepspeed_config(cfg: Config, load_universal: bool = False) -> dict[str, Any]:
    """Our DeepSpeed JSON, with train.deepspeed.extra merged over it. Lightning adds the accumulation and precision keys."""
    ds = cfg.train.deepspeed
    zero: dict[str, Any] = {"stage": ds.stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu(cfg)}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu(cfg)}
    generated = {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch,
        "gradient_clipping": cfg.optim.grad_clip,
        # Our torch AdamW, offloaded or not: it restores exactly (DeepSpeed's own Adams drift after a load).
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "checkpoint": {"load_universal": load_universal},
    }
    return _merge(generated, ds.extra)


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeed strategy, which accepts CUDA devices only, on CPU processes (gloo)."""

    def setup_environment(self) -> None:
        # DeepSpeed takes the device index as the rank's device and Lightning checks it: number CPU "devices" by rank.
        self.parallel_devices = [torch.device("cpu", i) for i in range(len(self.parallel_devices))]
        setup_deepspeed_environment_on_cpu(self)


class DeepSpeedSupport(Callback):
    """What the module needs under DeepSpeed: ZeRO-3 gathers a parameter only around its own module's forward and
    backward, but the learned initial memories are read outside (by the model's initial_state), so they are made
    parameters of the whole training step; and train/grad_norm comes from DeepSpeed, whose gradients live in its
    partitions (the norm of the step just taken)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        from deepspeed.runtime.zero.partition_parameters import register_external_parameter

        for name, param in pl_module.named_parameters():
            if name.endswith("initial"):  # the naming optim.adamw relies on too
                register_external_parameter(pl_module, param)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        norm = trainer.strategy.deepspeed_engine.get_global_grad_norm()
        if norm is not None:
            pl_module.log("train/grad_norm", float(norm))
