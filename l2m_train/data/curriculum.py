"""The curriculum: segments per sample as a pure function of tokens seen, at a constant tokens per step."""
from __future__ import annotations

from l2m_train.config import Stage


def stage_at(stages: list[Stage], tokens: int) -> int:
    """Index of the stage in force after `tokens` tokens (stages start at 0 and increase)."""
    return max(i for i, s in enumerate(stages) if s.start_tokens <= tokens)


def samples_per_micro_batch(micro_batch: int, full_segments: int, segments: int) -> int:
    """`micro_batch` samples of `full_segments` segments, as shorter samples: the same tokens per micro-batch."""
    return micro_batch * full_segments // segments
