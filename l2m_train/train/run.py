"""One training run: a Lightning Trainer over the module and data, in its own run directory."""
from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ThroughputMonitor
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import OmegaConf

from l2m_train.config import Config, ConfigError, LossConfig, to_yaml
from l2m_train.data.module import DataPosition, TrainingData
from l2m_train.train.module import LM2Module, val_prefix


@dataclass
class RunResult:
    kind: str
    attention: str
    params: int
    val_acc: float  # supervised tokens predicted right
    val_exact: float  # samples whose every supervised token is right (a whole answer)
    val_loss: float
    steps: int
    tokens: int
    seconds: float
    run_dir: str

    @property
    def label(self) -> str:
        return {"segment": "none (local)", "full": "none (full)"}[self.attention] if self.kind == "none" else self.kind


@dataclass
class PlannedRun:
    """A run checked from end to end, with nothing written yet."""

    cfg: Config
    run_dir: Path
    data: TrainingData
    trainer: L.Trainer


def plan(cfg: Config) -> PlannedRun:
    """Everything a run needs, built and checked before anything touches the disk.

    Raises ConfigError (or FileExistsError for a run directory in use), so bad input leaves nothing behind.
    """
    run_dir = Path(cfg.run.root) / cfg.run.name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"run directory {run_dir} already exists; choose another run.name=… or remove it")
    data = TrainingData(cfg)
    if cfg.model.vocab_size < data.tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the {data.tokenizer.vocab_size} "
                          f"tokens of the data's tokenizer")
    steps = max(1, cfg.train.max_tokens // cfg.tokens_per_step)
    try:
        trainer = _trainer(cfg, run_dir, steps)
    except (MisconfigurationException, ValueError) as err:  # e.g. a GPU asked for on a machine without one
        raise ConfigError(f"train: {str(err).splitlines()[0]}") from None
    return PlannedRun(cfg, run_dir, data, trainer)


def _trainer(cfg: Config, run_dir: Path, steps: int) -> L.Trainer:
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # no banners or tips
    warnings.filterwarnings("ignore", message=".*flops_per_batch.*")  # FLOPs and MFU arrive with W&B tracking
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own use of a deprecated torch API
    t = cfg.train
    on_gpu = t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available())
    precision = t.precision if t.precision != "auto" else ("bf16-mixed" if on_gpu else "32-true")
    checkpoints = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
                                  every_n_train_steps=t.val_every_steps)
    throughput = ThroughputMonitor(batch_size_fn=lambda b: b["input_ids"].shape[0],
                                   length_fn=lambda b: b["input_ids"].numel(), window_size=10)
    return L.Trainer(
        default_root_dir=run_dir,
        max_steps=steps,
        max_epochs=1,  # the training stream is endless: one "epoch" that max_steps ends
        accelerator=t.accelerator,
        devices=t.devices,
        precision=precision,
        gradient_clip_val=cfg.optim.grad_clip,
        accumulate_grad_batches=t.accumulate,
        val_check_interval=min(t.val_every_steps, steps) * t.accumulate,
        log_every_n_steps=t.log_every_steps,
        logger=CSVLogger(run_dir, name="logs", version=""),
        callbacks=[checkpoints, throughput, DataPosition()],
        use_distributed_sampler=False,  # ranks take disjoint slices of each global batch themselves
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )


def execute(run: PlannedRun) -> RunResult:
    """Create the run directory, write the resolved config, train, validate, and write result.json."""
    cfg, run_dir, trainer = run.cfg, run.run_dir, run.trainer
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    run.data.tokenizer.save(run_dir)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    L.seed_everything(cfg.train.seed, verbose=False)
    module = LM2Module(OmegaConf.to_container(OmegaConf.structured(cfg)))
    started = time.perf_counter()
    trainer.fit(module, datamodule=run.data)
    seconds = time.perf_counter() - started
    metrics = trainer.validate(module, datamodule=run.data, verbose=False)[0]
    prefix = val_prefix(cfg.data.sources, 0)  # a mixture reports its first source
    result = RunResult(
        kind=cfg.model.memory.kind,
        attention=cfg.model.attention,
        params=sum(p.numel() for p in module.model.parameters()),
        val_acc=metrics[f"{prefix}/acc"],
        val_exact=metrics[f"{prefix}/exact"],
        val_loss=metrics[f"{prefix}/loss"],
        steps=trainer.global_step,
        tokens=trainer.global_step * cfg.tokens_per_step,
        seconds=seconds,
        run_dir=str(run_dir),
    )
    (run_dir / "result.json").write_text(json.dumps(result.__dict__, indent=2))
    return result


def baseline_config(cfg: Config) -> Config:
    """The same run with segment-local attention and no memory (so no memory losses either)."""
    memory = replace(cfg.model.memory, kind="none")
    return replace(cfg, model=replace(cfg.model, memory=memory, attention="segment"), loss=LossConfig(),
                   run=replace(cfg.run, name=f"{cfg.run.name}/baseline-none"))
