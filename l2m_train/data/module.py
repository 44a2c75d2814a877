"""The LightningDataModule: a mixture of sources, a curriculum, and a global position that makes resume exact.

Every rank draws the same global optimizer step from the global order (bucketed by length: bucketing.py) and
keeps its own slice of each micro-step, so ranks read disjoint parts of each batch. The position of the batches
actually trained (not of those prefetched) is what a checkpoint saves; it is global, so a run resumes on any number
of ranks from the same position.
"""
from __future__ import annotations

import bisect
from dataclasses import replace
from functools import partial

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, IterableDataset

from l2m_train.config import Config
from l2m_train.data import DataError
from l2m_train.data.bucketing import cut, fits, rank_slice, segments_of
from l2m_train.data.curriculum import samples_per_micro_batch, stage_at
from l2m_train.data.order import GlobalOrder, OrderState
from l2m_train.data.sample import collate
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
    """This rank's micro-batches, from a global position on. Each carries the global position after it.

    An optimizer step's samples are drawn at once (`bucketing.py`) and cut into `train.accumulate` global
    micro-batches; a position inside a step is the step's start and the micro-steps of it already trained.
    """

    def __init__(self, cfg: Config, sources: list, state: OrderState, rank: int, world: int):
        self.cfg, self.sources, self.state, self.rank, self.world = cfg, sources, state, rank, world
        weights = cfg.data.weights or [1.0] * len(sources)
        self.order = GlobalOrder(cfg.data.seed, weights)
        self.capacity = cfg.train.micro_batch * cfg.data.segments  # segments of positions per micro-batch and rank

    def __iter__(self):
        cfg, begin, L, stages = self.cfg, self.state, self.cfg.model.segment_len, self.cfg.data.stages
        pools: dict[int, list] = {}
        while True:
            # The stage is fixed for a whole optimizer step: it follows the real tokens seen when the step began.
            k = stage_at(stages, begin.tokens)
            segments = stages[k].segments
            if segments not in pools:  # a stage's pools are fixed: build them once
                pools[segments] = [s.pools(segments) for s in self.sources]
            end = replace(begin, taken=dict(begin.taken), skip=0)
            picked, bounds = self._step(end, pools[segments], segments)
            for m, (a, b) in enumerate(bounds):
                end.tokens += sum(inputs for _, _, inputs in picked[a:b])
                if m < begin.skip:  # trained before the run was resumed
                    continue
                mine = picked[a:b][rank_slice(0, b - a, self.rank, self.world)]
                length = segments_of(picked[a][2], L) * L if cfg.data.bucket else segments * L
                batch = collate([pool.get(i) for pool, i, _ in mine], length, context=cfg.loss.context.weight > 0)
                after = end if m + 1 == len(bounds) else replace(begin, skip=m + 1)
                batch.update(stage=k, segments=segments, tokens=end.tokens, order=after.as_dict())
                yield batch
            begin = end

    def _step(self, state: OrderState, pools: list, segments: int) -> tuple[list[tuple], list[tuple[int, int]]]:
        """The step's (pool, index, inputs), advancing `state`, and each global micro-batch's [start, end) of them."""
        steps, world, L = self.cfg.train.accumulate, self.world, self.cfg.model.segment_len
        n = samples_per_micro_batch(self.cfg.train.micro_batch, self.cfg.data.segments, segments) * world
        picked = [(pool, i, pool.inputs(i)) for pool, i in self.order.draw(state, pools, n * steps)]
        if not self.cfg.data.bucket:
            return picked, [(m * n, (m + 1) * n) for m in range(steps)]
        longest_first = sorted((segments_of(inputs, L) for _, _, inputs in picked), reverse=True)
        while True:  # more samples while the step still holds them
            pool, i = self.order.peek(state, pools)
            inputs = pool.inputs(i)
            bisect.insort(longest_first, segments_of(inputs, L), key=lambda s: -s)
            if not fits(longest_first, steps, world, self.capacity):
                break
            self.order.advance(state, pool)
            picked.append((pool, i, inputs))
        picked.sort(key=lambda p: -p[2])  # stable: equal lengths keep the global order
        return picked, cut([segments_of(inputs, L) for _, _, inputs in picked], steps, world, self.capacity)


class DataPosition(Callback):
    """Records the global position of the micro-batch just trained, which the next checkpoint saves."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        trainer.datamodule.state = OrderState.from_dict(batch["order"])
