"""One training run: a Lightning Trainer over the module and data, in its own run directory."""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from l2m_train.config import Config, ConfigError, LossConfig, stop_rule, to_yaml, val_prefix
from l2m_train.data.module import DataPosition, TrainingData
from l2m_train.io import publish_text
from l2m_train.train.checkpoint_callback import Checkpointing
from l2m_train.train.checkpoint_layout import CONFIG, LIGHTNING, UNIVERSAL, CheckpointError, newest_resumable, read_state
from l2m_train.train.divergence import Diverged, NonFiniteLoss
from l2m_train.train.init_from import InitWeights, keep_on_resume, load_init
from l2m_train.train.lock import LOCK, run_lock
from l2m_train.train.module import LM2Module
from l2m_train.train.state import check_resume, config_dict
from l2m_train.train.stop_at import StopAt
from l2m_train.train.strategy import DeepSpeedSupport, build_strategy, on_gpu, strategy_name
from l2m_train.train.throughput import Throughput
from l2m_train.train.tracking import RUN_ID_FILE, Tracker


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
    checkpointing: Checkpointing
    resume_from: Path | None  # what trainer.fit restores: a checkpoint's Lightning part, or its universal form
    tracker: Tracker
    init: InitWeights | None  # train.init_from's weights, for a fresh run
    damaged: list[tuple[Path, str]]  # newer checkpoints than the one resumed from, that cannot be read, and why


def plan(cfg: Config, plugins: Sequence[object] = ()) -> PlannedRun:
    """Everything a run needs, built and checked before anything touches the disk. An existing run directory
    resumes from its newest complete checkpoint that is not damaged (truncated, empty, without its train state: those
    newer ones execute() sets aside), after checks that it continues the same model on the same data; a fresh one
    starts from train.init_from's weights, when set, after checks that they fit.

    `plugins` go to the Trainer, e.g. the cluster environment the command runs in.
    Raises ConfigError, DataError, CheckpointError or FileExistsError, so bad input leaves nothing behind.
    """
    run_dir = Path(cfg.run.root) / cfg.run.name
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir():
        raise FileExistsError(f"{existing} is a file, not a directory: run.root={cfg.run.root} and run.name={cfg.run.name} "
                              "must name a directory")
    # Rank 0 alone judges the directory it creates: a launched rank looking while rank 0 writes config.yaml (a
    # temporary file, then a rename) would take it for a stranger's directory, and fail a multi-node start.
    if rank_zero_only.rank == 0 and run_dir.exists() and any(p.name != LOCK for p in run_dir.iterdir()) and \
            not (run_dir / CONFIG).is_file():
        raise FileExistsError(f"{run_dir} exists and is not a run directory (no {CONFIG}); choose another run.name=… or remove it")
    # Every rank finds the same one: none is written before all have started.
    checkpoint, damaged = newest_resumable(run_dir)
    if damaged and checkpoint is None:
        raise CheckpointError(f"no checkpoint in {run_dir} can be resumed from: {damaged[0][1]}; move the checkpoints "
                              "aside to start over")
    if checkpoint is None and (run_dir / "result.json").is_file():  # e.g. a run from before checkpoints/step-N
        raise FileExistsError(f"{run_dir} holds a finished run but no checkpoint to resume from; choose another "
                              "run.name=… or remove it")
    data = TrainingData(cfg)
    if cfg.model.vocab_size < data.tokenizer.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the {data.tokenizer.vocab_size} "
                          f"tokens of the data's tokenizer")
    state = None if checkpoint is None else read_state(checkpoint)
    universal = state is not None and check_resume(state, cfg, data, checkpoint)
    if state is not None:
        cfg = keep_on_resume(cfg, state, checkpoint)
    init = load_init(cfg, data.tokenizer) if state is None and cfg.train.init_from else None
    steps = max(1, cfg.train.max_tokens // cfg.tokens_per_step)
    tracker = Tracker(cfg, run_dir, None if state is None else state.get("wandb_run_id"))
    init_record = init.record if init is not None else (state or {}).get("init_from")  # a resume keeps the run's own
    checkpointing = Checkpointing(cfg, run_dir, checkpoint, tracker.run_id, init_record)
    try:
        trainer = _trainer(cfg, run_dir, steps, checkpointing, universal, list(plugins))
    except (MisconfigurationException, ValueError) as err:  # e.g. a GPU asked for on a machine without one
        raise ConfigError(f"train: {str(err).splitlines()[0]}") from None
    resume_from = None if checkpoint is None else checkpoint / (UNIVERSAL if universal else LIGHTNING)
    return PlannedRun(cfg, run_dir, data, trainer, checkpointing, resume_from, tracker, init, damaged)


def _trainer(cfg: Config, run_dir: Path, steps: int, checkpointing: Checkpointing, universal: bool, plugins: list) -> L.Trainer:
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # no banners or tips
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning's own use of a deprecated torch API
    t = cfg.train
    precision = t.precision if t.precision != "auto" else ("bf16-mixed" if on_gpu(cfg) else "32-true")
    resumed = checkpointing.resumed_from
    callbacks = [checkpointing, Throughput(t.peak_tflops), DataPosition(),  # Lightning runs checkpoint callbacks last
                 NonFiniteLoss(t.max_nonfinite_steps, checkpointing.dir)]
    if strategy_name(cfg) == "deepspeed":
        callbacks.append(DeepSpeedSupport())
    if rule := stop_rule(cfg):
        callbacks.append(StopAt(rule))
    return L.Trainer(
        default_root_dir=run_dir,
        max_steps=steps,
        max_epochs=1,  # the training stream is endless: one "epoch" that max_steps ends
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.nodes,
        plugins=plugins,
        strategy=build_strategy(cfg, load_universal=universal),
        precision=precision,
        # optim.grad_clip: LM2Module.on_before_optimizer_step clips (and DeepSpeed itself, from strategy.py's config)
        accumulate_grad_batches=t.accumulate,
        val_check_interval=min(t.val_every_steps, steps) * t.accumulate,
        log_every_n_steps=t.log_every_steps,
        # A resumed run logs beside the first one: the steps after its checkpoint are logged again.
        logger=CSVLogger(run_dir, name="logs", version="" if resumed is None else f"resume-{resumed.name}"),
        callbacks=callbacks,
        use_distributed_sampler=False,  # ranks take disjoint slices of each global batch themselves
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )


def execute(run: PlannedRun) -> RunResult:
    """Create the run directory, write the resolved config, train (or resume), validate, and write result.json.

    Raises RunInUse, before writing anything, when another process trains in the run directory; Preempted when a signal
    stopped training early, after its checkpoint (the process should then exit: it ignores SIGTERM from there on);
    Diverged when training stopped on non-finite numbers.
    """
    with run_lock(run.run_dir) if rank_zero_only.rank == 0 else nullcontext():  # launched ranks run this too
        return _train(run)


def _train(run: PlannedRun) -> RunResult:
    cfg, run_dir, trainer = run.cfg, run.run_dir, run.trainer
    if rank_zero_only.rank == 0:
        for checkpoint, why in run.damaged:  # renamed out of the way of the steps that will be saved again, not deleted
            kept = checkpoint.with_name(f"{checkpoint.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            os.rename(checkpoint, kept)
            print(f"l2m: {why}; resuming from {run.checkpointing.resumed_from}, the newest readable checkpoint "
                  f"(kept the damaged one as {kept.name})", file=sys.stderr)
        publish_text(run_dir / CONFIG, to_yaml(cfg))
        run.data.tokenizer.save(run_dir)
        if logger := run.tracker.start(config_dict(cfg)):
            publish_text(run_dir / RUN_ID_FILE, run.tracker.run_id)
            trainer.loggers = [*trainer.loggers, logger]
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    L.seed_everything(cfg.train.seed, verbose=False)
    module = LM2Module(config_dict(cfg))
    if run.init is not None:
        module.model.load_state_dict(run.init.weights, strict=not run.init.fresh)  # load_init checked every name
        run.init.weights = {}  # every rank holds them whole: free them before training
    params = sum(p.numel() for p in module.model.parameters())  # counted now: ZeRO-3 partitions them
    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=run.data, ckpt_path=run.resume_from)
    except Diverged:
        run.tracker.finish(exit_code=1)
        raise
    seconds = time.perf_counter() - started
    if (stop := run.checkpointing.preempted) is not None:
        # Saved; leaving with 128 + signal, which a job script reads. A launcher may terminate the other ranks when the
        # first one exits (srun --kill-on-bad-exit): ignore that, and leave together once W&B is closed.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        run.tracker.finish(exit_code=128 + stop.signum)
        trainer.strategy.barrier("preempted")
        raise stop
    metrics = trainer.validate(module, datamodule=run.data, verbose=False)[0]
    run.tracker.log_results(metrics)
    prefix = val_prefix(cfg.data.sources, 0)  # a mixture reports its first source
    result = RunResult(
        kind=cfg.model.memory.kind,
        attention=cfg.model.attention,
        params=params,
        val_acc=metrics[f"{prefix}/acc"],
        val_exact=metrics[f"{prefix}/exact"],
        val_loss=metrics[f"{prefix}/loss"],
        steps=trainer.global_step,
        tokens=run.data.state.tokens,  # real tokens trained, padding excluded
        seconds=seconds,
        run_dir=str(run_dir),
    )
    if rank_zero_only.rank == 0:
        publish_text(run_dir / "result.json", json.dumps(result.__dict__, indent=2))
    run.tracker.finish()
    return result


def baseline_config(cfg: Config) -> Config:
    """The same run with segment-local attention and no memory (so no memory losses either; the context loss stays)."""
    memory = replace(cfg.model.memory, kind="none")
    return replace(cfg, model=replace(cfg.model, memory=memory, attention="segment"),
                   loss=LossConfig(context=cfg.loss.context), run=replace(cfg.run, name=f"{cfg.run.name}/baseline-none"))
