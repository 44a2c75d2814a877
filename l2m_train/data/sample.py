"""One training sample and how samples of different lengths become a padded batch."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from l2m_train.data import IGNORE


@dataclass
class Sample:
    ids: np.ndarray  # every token of the sample, the answer included
    loss_from: int  # tokens ids[loss_from:] are supervised, each predicted from the tokens before it

    def __post_init__(self):
        if not 1 <= self.loss_from < len(self.ids):
            raise ValueError(f"loss_from={self.loss_from} must lie in 1..{len(self.ids) - 1}")

    @property
    def inputs(self) -> int:
        """Positions the model reads: all tokens but the last, which is only a label."""
        return len(self.ids) - 1


def collate(samples: list[Sample], length: int) -> dict[str, torch.Tensor]:
    """B × length batch, right-padded; `valid` marks real tokens (padding is never written to memory)."""
    B = len(samples)
    input_ids = torch.zeros(B, length, dtype=torch.long)
    labels = torch.full((B, length), IGNORE, dtype=torch.long)
    valid = torch.zeros(B, length, dtype=torch.bool)
    for row, s in enumerate(samples):
        if s.inputs > length:
            raise ValueError(f"a sample of {s.inputs} input tokens does not fit {length} positions")
        ids = torch.as_tensor(np.asarray(s.ids, dtype=np.int64))
        input_ids[row, : s.inputs] = ids[:-1]
        labels[row, s.loss_from - 1 : s.inputs] = ids[s.loss_from :]
        valid[row, : s.inputs] = True
    batch = {"input_ids": input_ids, "labels": labels}
    if not valid.all():
        batch["valid"] = valid
    return batch
