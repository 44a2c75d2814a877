"""The LightningDataModule: a mixture of sources, a curriculum, and a global position that makes resume exact.

Every rank draws the same global micro-batch from the global order and keeps its own slice, so ranks read
disjoint parts of each batch. The position of the batches actually trained (not of those prefetched) is
what a checkpoint saves; it is global, so a run resumes on any number of ranks with the same batches.
"""
from __future__ import annotations

from functools import partial

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, IterableDataset

from l2m_train.config import Config
from l2m_train.data import DataError
from l2m_train.data.curriculum import samples_per_micro_batch, stage_at
from l2m_train.data.order import GlobalOrder, OrderState
from l2m_train.data.sample import Sample, collate
from l2m_train.data.sources import SOURCES


class TrainingData(L.LightningDataModule):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.sources = [SOURCES[name](cfg) for name in cfg.data.sources]
        self.tokenizer = self.sources[0].tokenizer
        for source in self.sources[1:]:
            if source.tokenizer.fingerprint != self.tokenizer.fingerprint:
                raise DataError(f"data sources {self.sources[0].name} and {source.name} use different tokenizers "
                                f"({self.tokenizer.fingerprint[:12]} vs {source.tokenizer.fingerprint[:12]})")
        for stage in cfg.data.stages:  # a stage that no source can fill fails now, not hours into the run
            for source in self.sources:
                source.pools(stage.segments)
        self.fingerprints = {s.name: s.fingerprint for s in self.sources} | {"tokenizer": self.tokenizer.fingerprint}
        self.state = OrderState()  # the position after the last micro-batch trained
        self.rank, self.world = 0, 1

    def setup(self, stage: str) -> None:
        if self.trainer is not None:
            self.rank, self.world = self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> DataLoader:
        stream = MicroBatches(self.cfg, self.sources, OrderState.from_dict(self.state.as_dict()), self.rank, self.world)
        return DataLoader(stream, batch_size=None)

    def val_dataloader(self) -> list[DataLoader]:
        length = self.cfg.data.segments * self.cfg.model.segment_len
        return [DataLoader(source.val(self.cfg.data.val_samples), batch_size=self.cfg.train.micro_batch,
                           collate_fn=partial(collate, length=length, context=self.cfg.loss.context.weight > 0))
                for source in self.sources]

    def state_dict(self) -> dict:
        return {"order": self.state.as_dict(), "fingerprints": self.fingerprints, "tokenizer": self.tokenizer.to_json()}

    def load_state_dict(self, state: dict) -> None:
        self.check_fingerprints(state["fingerprints"])
        self.state = OrderState.from_dict(state["order"])

    def check_fingerprints(self, saved: dict) -> None:
        """Refuse, naming it, a source or tokenizer other than the checkpoint's."""
        for key in sorted(set(saved) | set(self.fingerprints)):
            if saved.get(key) != self.fingerprints.get(key):
                raise DataError(f"the checkpoint was trained with {key} {_short(saved.get(key))}, this run has "
                                f"{_short(self.fingerprints.get(key))}: resume with the same data and tokenizer")


def _short(fingerprint: str | None) -> str:
    return "(none)" if fingerprint is None else f"'{fingerprint[:16]}'"


class MicroBatches(IterableDataset):
    """This rank's micro-batches, from a global position on. Each carries the global position after it."""

    def __init__(self, cfg: Config, sources: list, state: OrderState, rank: int, world: int):
        self.cfg, self.sources, self.state, self.rank, self.world = cfg, sources, state, rank, world
        weights = cfg.data.weights or [1.0] * len(sources)
        self.order = GlobalOrder(cfg.data.seed, weights)

    def __iter__(self):
        cfg, state = self.cfg, self.state
        L, full, stages = cfg.model.segment_len, cfg.data.segments, cfg.data.stages
        per_step = cfg.tokens_per_step
        pools: dict[int, list] = {}
        while True:
            # The stage is fixed for a whole optimizer step: it follows the tokens seen when the step began.
            k = stage_at(stages, state.tokens // per_step * per_step)
            segments = stages[k].segments
            n = samples_per_micro_batch(cfg.train.micro_batch, full, segments)
            if segments not in pools:  # a stage's pools are fixed: build them once
                pools[segments] = [s.pools(segments) for s in self.sources]
            picked = self.order.draw(state, pools[segments], n * self.world)
            state.tokens += cfg.train.micro_batch * full * L * self.world
            samples: list[Sample] = [pool.get(i) for pool, i in picked[self.rank * n:(self.rank + 1) * n]]
            batch = collate(samples, segments * L, context=cfg.loss.context.weight > 0)
            batch.update(stage=k, segments=segments, order=state.as_dict())
            yield batch


class DataPosition(Callback):
    """Records the global position of the micro-batch just trained, which the next checkpoint saves."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        trainer.datamodule.state = OrderState.from_dict(batch["order"])
