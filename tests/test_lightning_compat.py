"""Each of Lightning's internals that l2m_train/train/lightning_compat.py uses still works as the installed Lightning
runs: tiny CPU fits of Lightning's own BoringModel, no l2m model."""
import csv
import os
from importlib import metadata
from importlib.util import find_spec

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.strategies import DeepSpeedStrategy
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from torch.utils.data import DataLoader

from l2m_train.config import load_config
from l2m_train.train.lightning_compat import (
    SUPPORTED,
    UnsupportedLightning,
    attached_trainer,
    check_version,
    compute_dtype,
    drop_wandb_anonymous,
    logs_this_step,
    shift_batch_progress,
)
from l2m_train.train.strategy import build_strategy
from l2m_train.train.throughput import Throughput


def trainer(tmp_path, **kwargs) -> L.Trainer:
    options = dict(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    return L.Trainer(**{**options, **kwargs})


class CountingModel(BoringModel):
    def __init__(self):
        super().__init__()
        self.batches = 0

    def training_step(self, batch, batch_idx):
        self.batches += 1
        return super().training_step(batch, batch_idx)


def test_the_version_guard_holds_pyprojects_range():
    required = next(Requirement(r) for r in metadata.requires("l2m_train") if Requirement(r).name == "lightning")
    assert required.specifier == SpecifierSet(SUPPORTED)
    check_version(L.__version__)
    with pytest.raises(UnsupportedLightning, match=f"needs lightning{SUPPORTED}, found 2.7.0"):
        check_version("2.7.0")


def test_shifted_batch_progress_is_what_a_resumed_fit_accumulates_from(tmp_path):
    """3 steps of 2 batches, then resumed with 4 batches a step: counted as 12 batches trained, the next step is
    a whole 4 batches (unshifted, 6 batches, it would end after 2)."""
    first = trainer(tmp_path, max_steps=3, accumulate_grad_batches=2)
    first.fit(CountingModel())
    path = tmp_path / "last.ckpt"
    first.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    shift_batch_progress(checkpoint, checkpoint["global_step"] * 4)
    torch.save(checkpoint, path)
    resumed, model = trainer(tmp_path, max_steps=4, accumulate_grad_batches=4), CountingModel()
    resumed.fit(model, ckpt_path=path)
    assert model.batches == 4


def test_a_set_peak_reaches_every_counter_behind_mfu(tmp_path):
    class Batches(BoringModel):
        flops_per_batch = 1e6

        def train_dataloader(self):
            return DataLoader([{"input_ids": torch.zeros(2, 8, dtype=torch.long)}] * 12, batch_size=None)

        def training_step(self, batch, batch_idx):
            return self.layer(torch.ones(2, 32)).sum()

    fit = trainer(tmp_path, max_steps=12, callbacks=[Throughput(peak_tflops=1.0)], log_every_n_steps=1,
                  logger=CSVLogger(tmp_path))
    fit.fit(Batches())
    metrics = fit.logged_metrics  # on CPU Lightning knows no peak, so without ours there is no MFU
    assert metrics["train/device/mfu"] == pytest.approx(metrics["train/device/flops_per_sec"] / 1e12) and metrics["train/device/mfu"] > 0


def test_w_and_b_no_longer_hears_of_anonymous(tmp_path, capfd):
    logger = WandbLogger(save_dir=tmp_path, mode="offline", project="compat")
    drop_wandb_anonymous(logger)
    logger.experiment.finish()
    assert "anonymous" not in capfd.readouterr().err


@pytest.mark.slow  # importing DeepSpeed and starting its process group: minutes on 2 shared cores
@pytest.mark.skipif(find_spec("deepspeed") is None, reason="DeepSpeed is not installed")
def test_deepspeed_sets_up_on_cpu_without_its_cuda_check(tmp_path):
    cfg = load_config(None, ["train.strategy=deepspeed", "train.accelerator=cpu"])
    with pytest.raises(RuntimeError, match="only supported on CUDA"):  # why the check is skipped
        trainer(tmp_path, strategy=DeepSpeedStrategy()).strategy.setup_environment()
    strategy = trainer(tmp_path, strategy=build_strategy(cfg)).strategy
    environment = dict(os.environ)
    try:
        strategy.setup_environment()
        assert torch.distributed.is_initialized() and strategy.root_device == torch.device("cpu", 0)
    finally:
        torch.distributed.destroy_process_group()
        # The setup exports MASTER_ADDR, RANK, WORLD_SIZE, …: a later test's `l2m train train.devices=2` would inherit
        # them, take itself for one rank of a launched world of 1 and wait for its second rank forever.
        os.environ.clear()
        os.environ.update(environment)


@pytest.mark.parametrize("precision,dtype", [("bf16-mixed", torch.bfloat16), ("16-true", torch.float16),
                                             ("32-true", torch.float32)])
def test_the_trainer_attached_and_its_compute_dtype(tmp_path, precision, dtype):
    model, fit = BoringModel(), trainer(tmp_path, max_steps=1, precision=precision)
    assert attached_trainer(model) is None
    fit.fit(model)
    assert attached_trainer(model) is fit and compute_dtype(fit) == dtype


def test_the_steps_whose_logs_reach_the_loggers(tmp_path):
    """LM2Module reads its per-segment losses (a device sync) only in the steps whose logs are written."""
    class Asking(BoringModel):
        asked: list[tuple[int, bool]] = []

        def training_step(self, batch, batch_idx):
            self.asked.append((self.trainer.global_step, logs_this_step(self.trainer)))
            self.log("x", float(batch_idx))
            return super().training_step(batch, batch_idx)

    fit = trainer(tmp_path, max_steps=7, log_every_n_steps=3, logger=CSVLogger(tmp_path))
    fit.fit(Asking())
    assert [step for step, logs in Asking.asked if logs] == [2, 5]  # the 3rd and the 6th step
    with open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv") as f:
        assert [row["x"] for row in csv.DictReader(f)] == ["2.0", "5.0"]  # the x of exactly those steps
