"""Perplexity on packed shards, overall and by segment index within a window.

Every window starts from an empty memory; a model that uses its memory predicts later segments better than
the first, so the loss by segment index shows what the memory is worth.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from l2m_train.config import Config
from l2m_train.data import DataError
from l2m_train.data.sample import Sample, collate
from l2m_train.data.sources import PretrainSource
from l2m_train.data.tokenizer import TextTokenizer
from l2m_train.model import MemoryDecoder
from l2m_train.train.losses import lm_loss


@dataclass
class Perplexity:
    loss: float  # mean next-token loss (nats) over every position
    per_segment: list[float]  # mean loss at segment index 0, 1, …
    windows: int
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


def held_out_windows(cfg: Config, shards: str, tokenizer: TextTokenizer, segments: int, val_fraction: float,
                     windows: int) -> list[Sample]:
    """Up to `windows` windows of `segments` segments from the last `val_fraction` of the shards' token stream:
    the very windows training validates on when it trains on these shards with that fraction held out."""
    if not 0 < val_fraction < 1:
        raise DataError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    data = replace(cfg.data, segments=segments, pretrain=replace(cfg.data.pretrain, shards=shards, val_fraction=val_fraction))
    source = PretrainSource(replace(cfg, data=data))
    if source.tokenizer.fingerprint != tokenizer.fingerprint:
        raise DataError(f"{shards} was packed with another tokenizer than the model's")
    found = source.val(windows)
    if not found:
        raise DataError(f"the last {val_fraction:g} of {shards} ({source.shards.tokens - source.train_tokens:,} tokens) holds no "
                        f"window of {segments} × {cfg.model.segment_len} tokens: raise --val-fraction or lower --segments")
    return found


def perplexity(model: MemoryDecoder, windows: list[Sample], batch_size: int = 8,
               on_batch: Callable[[int], None] | None = None) -> Perplexity:
    """Mean loss over whole windows (`held_out_windows`: whole segments, every position supervised), and by segment."""
    device = next(model.parameters()).device
    length = windows[0].inputs
    sums = torch.zeros(length // model.cfg.segment_len, dtype=torch.float64)
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        batch = collate(chunk, length)
        with torch.no_grad():
            logits = model(batch["input_ids"].to(device)).logits
        # each segment index holds the same number of positions in every window: means add up weighted by rows
        sums += lm_loss(logits, batch["labels"].to(device), model.cfg.segment_len).per_segment.double().cpu() * len(chunk)
        if on_batch is not None:
            on_batch(len(chunk) * length)
    per_segment = (sums / len(windows)).tolist()
    return Perplexity(sum(per_segment) / len(per_segment), per_segment, len(windows), len(windows) * length)
