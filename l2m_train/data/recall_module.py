"""LightningDataModule for the synthetic recall task."""
from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from l2m_train.config import Config
from l2m_train.data.recall import RecallTask


class RecallDataModule(L.LightningDataModule):
    def __init__(self, cfg: Config, train_samples: int):
        super().__init__()
        d, m = cfg.data, cfg.model
        self.micro_batch = cfg.train.micro_batch
        # Train and validation draw from different seeds: no story is shared.
        self.train_set = RecallTask(m.segment_len, d.segments, d.pairs, d.train_samples or train_samples, d.seed)
        self.val_set = RecallTask(m.segment_len, d.segments, d.pairs, d.val_samples, d.seed + 1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.micro_batch, shuffle=False, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.micro_batch)
