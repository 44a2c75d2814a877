"""The memory kinds by name (`model.memory.kind`)."""
from __future__ import annotations

from l2m_train.config import ModelConfig
from l2m_train.model.lm2 import LM2
from l2m_train.model.memory_kind import MemoryKind
from l2m_train.model.rmt import RMT

MEMORY_KINDS: dict[str, type[MemoryKind]] = {"lm2": LM2, "rmt": RMT, "none": MemoryKind}


def memory_read_layers(cfg: ModelConfig) -> list[int]:
    """Blocks whose tokens read memory: lm2's memory layers, every block for rmt (its memory tokens), none for none."""
    return MEMORY_KINDS[cfg.memory.kind].read_layers(cfg)
