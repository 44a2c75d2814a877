"""The LightningModule: owns the model and the losses, the optimizer and the schedule, and what gets logged."""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch.optim.lr_scheduler import LambdaLR

from l2m_train.config import Config, from_dict, val_prefix
from l2m_train.model import MemoryDecoder
from l2m_train.model.flops import forward_flops_per_token, train_flops_per_token
from l2m_train.model.kinds import memory_read_layers
from l2m_train.train.compile import compile_segment_step
from l2m_train.train.lightning_compat import attached_trainer, compute_dtype, logs_this_step
from l2m_train.train.optim import adamw, lr_at
from l2m_train.train.reconstruction import reconstruction_loss
from l2m_train.train.retrieval import RetrievalHead
from l2m_train.train.segment_backward import lm_forward


class LM2Module(L.LightningModule):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        # The plain-dict config travels inside every checkpoint; loggers get it from the run (W&B's config, config.yaml).
        self.save_hyperparameters(logger=False)
        self.cfg: Config = from_dict(config)
        self.model = MemoryDecoder(self.cfg.model)
        if self.cfg.train.compile:
            compile_segment_step(self.model)
        rec, ret, m = self.cfg.loss.reconstruction, self.cfg.loss.retrieval, self.cfg.model
        readers = memory_read_layers(m)
        self.reconstruction_layers = (rec.layers or readers) if rec.weight > 0 else []  # weight 0: never computed
        self.retrieval = RetrievalHead(m.d_model, ret.dim, ret.temperature, m.segment_len) if ret.weight > 0 else None
        self.retrieval_layer = readers[-1] if readers else None  # the top layer that reads memory
        self._batch_shape = (0, 0)  # (samples, tokens per sample) of the last batch, for flops_per_batch

    @property
    def flops_per_batch(self) -> float:
        """The last batch's FLOPs on this device (read by Lightning's ThroughputMonitor for FLOP/s and MFU)."""
        samples, length = self._batch_shape
        per_token = train_flops_per_token if self.training else forward_flops_per_token
        return samples * length * per_token(self.cfg.model, context=length)

    def _shared_step(self, batch: dict[str, torch.Tensor], prefix: str):
        keep_aux = bool(self.reconstruction_layers) or self.retrieval is not None
        train, context_weight = prefix == "train", self.cfg.loss.context.weight
        out = lm_forward(self.model, batch["input_ids"], batch["labels"], batch.get("valid"), keep_aux,
                         early_params=self._early_params() if train and not keep_aux else (),
                         context_labels=batch["context_labels"] if context_weight > 0 else None,
                         context_weight=context_weight)
        self._batch_shape = tuple(batch["input_ids"].shape)
        result = out.lm
        # Training logs every step; validation averages over the whole set (across ranks).
        how = dict(batch_size=batch["input_ids"].shape[0], on_step=train, on_epoch=not train, sync_dist=not train,
                   add_dataloader_idx=False)
        loss = out.loss + self._auxiliary_losses(out.aux, batch, prefix, how) if keep_aux else out.loss
        self.log(f"{prefix}/loss", result.loss.detach(), prog_bar=True, **how)  # the LM loss alone, comparable across runs
        self.log(f"{prefix}/acc", result.correct.float() / result.count.clamp(min=1), prog_bar=True, **how)
        self.log(f"{prefix}/exact", result.exact.float() / result.samples.clamp(min=1), **how)
        if out.context is not None:
            self.log(f"{prefix}/context_loss", out.context.detach(), **how)
        if not train or self._logs_this_step():  # reading them waits for the device: only where they are written
            for s, value in enumerate(result.per_segment.tolist()):  # one device sync for all segments
                if not math.isnan(value):  # segments without supervised tokens have no loss to show
                    self.log(f"{prefix}/loss_seg{s}", value, **how)
        if train:
            self.log_dict({f"gates/{name}": value for name, value in out.gates.items()}, **how)
        return loss

    def _logs_this_step(self) -> bool:
        trainer = attached_trainer(self)
        return trainer is None or logs_this_step(trainer)

    def _early_params(self) -> list[torch.nn.Parameter]:
        """What segment_backward takes gradients of early: every trainable parameter, except under ZeRO-3, whose
        parameters exist whole only inside their own module's forward and backward, and with fp16, whose loss
        scaling those gradients would miss (both: one backward per batch)."""
        trainer = attached_trainer(self)  # None when the module is used on its own (benchmarks/aux_ablation.py)
        if trainer is not None and (compute_dtype(trainer) == torch.float16 or (
                isinstance(trainer.strategy, DeepSpeedStrategy) and trainer.strategy.zero_stage_3)):
            return []
        return [p for p in self.parameters() if p.requires_grad]

    def _auxiliary_losses(self, aux, batch, prefix: str, how: dict) -> torch.Tensor:
        """λ_rec · reconstruction + λ_ret · retrieval, each logged on its own with the retrieval accuracy."""
        weights, total = self.cfg.loss, 0.0
        if self.reconstruction_layers:
            reconstruction = reconstruction_loss(aux, self.reconstruction_layers)
            self.log(f"{prefix}/reconstruction", reconstruction, **how)
            total = total + weights.reconstruction.weight * reconstruction
        if self.retrieval is not None:
            r = self.retrieval(aux, self.retrieval_layer, batch)
            self.log(f"{prefix}/retrieval", r.loss, **how)
            self.log(f"{prefix}/retrieval_acc", r.correct.float() / r.evidence.clamp(min=1), **how)
            self.log(f"{prefix}/evidence", r.evidence.float() / r.samples, **how)  # samples the loss could use
            total = total + weights.retrieval.weight * r.loss
        return total

    def training_step(self, batch, batch_idx):
        loss = self._shared_step(batch, "train")
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        if "stage" in batch:  # from the data module: real tokens so far, the curriculum and how long samples are
            self.log("train/tokens", float(batch["tokens"]))  # all ranks, padding excluded, through this micro-batch
            valid = batch.get("valid")
            rows, positions = batch["input_ids"].shape
            real = torch.full_like(batch["input_ids"][:, 0], positions) if valid is None else valid.sum(1)
            self.log_dict({"data/stage": float(batch["stage"]), "data/segments": float(batch["segments"]),
                           "data/batch_segments": float(-(-positions // self.cfg.model.segment_len)),
                           "data/samples": float(rows), "data/fill": real.sum().float() / real.numel() / positions,
                           "data/sample_tokens": real.float().mean(), "data/sample_tokens_max": real.max().float()})
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._shared_step(batch, val_prefix(self.cfg.data.sources, dataloader_idx))

    def on_before_optimizer_step(self, optimizer):
        # Clipped here, not by Lightning: its mixed-precision plugin refuses to clip for the fused AdamW (optim.py).
        # The gradients here are unscaled: the fused AdamW never runs under a loss scaler, and under one Lightning
        # unscales before this hook. DeepSpeed clips in its own partitions (strategy.py) and logs their norm
        # (strategy.DeepSpeedSupport).
        if not isinstance(self.trainer.strategy, DeepSpeedStrategy):  # logged: the norm before clipping
            self.log("train/grad_norm", torch.nn.utils.clip_grad_norm_(self.parameters(), self.cfg.optim.grad_clip or math.inf))

    def configure_optimizers(self):
        trainer = attached_trainer(self)
        optimizer = adamw(self, self.cfg.optim, self.model.memory_parameters(),  # the model and the retrieval heads
                          loss_scaled=trainer is not None and str(trainer.precision) == "16-mixed")
        per_step, total = self.cfg.tokens_per_step, self.cfg.train.max_tokens
        # The schedule is by tokens; with a fixed number of tokens per step, step s has seen (s + 1) · per_step.
        schedule = LambdaLR(optimizer, lambda step: lr_at((step + 1) * per_step, self.cfg.optim, total) / self.cfg.optim.lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
