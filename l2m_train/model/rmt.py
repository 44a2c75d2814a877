"""RMT as a memory kind: K memory tokens open every segment ([read-mem; segment]) and K more close it
([...; write-mem]); the closing tokens' outputs become the next segment's read memory. Every block reads memory
through its own self-attention.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from l2m_train.config import ModelConfig
from l2m_train.model.layers import Block, BlockOutput, KVCache, concat_valid
from l2m_train.model.memory import MemoryTrace
from l2m_train.model.memory_kind import MemoryKind, MemoryState


class RMT(MemoryKind):
    """memory: one B × K × d bank, the memory tokens' embeddings."""

    KEYS: ClassVar[frozenset[str]] = frozenset({"slots", "bptt_segments"})

    @staticmethod
    def read_layers(cfg: ModelConfig) -> list[int]:
        return list(range(cfg.n_layers))

    @staticmethod
    def segment_positions(cfg: ModelConfig, length: int, complete: bool) -> tuple[int, int]:
        # [read-mem; segment]: S + length positions, causal over themselves; once complete, the S write tokens run over
        # that cache and themselves.
        S = cfg.memory.slots
        writes = S if complete else 0
        return S + length + writes, (S + length) ** 2 + writes * (2 * S + length)

    def build_decoder_parameters(self) -> dict[str, nn.Parameter]:
        self.initial = nn.Parameter(torch.randn(self.cfg.memory.slots, self.cfg.d_model) * 0.02)
        return {"rmt_initial": self.initial}

    def initial_state(self, batch_size: int, blocks: nn.ModuleList) -> MemoryState:
        return self.segment_start((self.initial.unsqueeze(0).expand(batch_size, -1, -1),))

    def opening(self, state: MemoryState) -> Tensor:
        return state.memory[0]

    def trace(self, layer: int, block: Block, x: Tensor, out: BlockOutput, opening: int, valid: Tensor | None,
              attached: MemoryState) -> MemoryTrace | None:
        """The segment's attention restricted to the K read-memory positions that open it (its first step only).

        Its keys/values come from the cache, so under a BPTT window they are those of the truncated memory.
        """
        if not opening:
            return None
        K, (k, v) = opening, out.cache
        memory, tokens = (k[:, :, :K], v[:, :, :K]), (k[:, :, K:], v[:, :, K:])
        queries = out.queries[:, :, K:]
        readout = block.attn.attend(queries, *memory)  # every memory position precedes every token: no mask
        return MemoryTrace(x[:, K:], valid, queries, memory, tokens, readout, block.attn.attend)

    def write(self, state: MemoryState, blocks: nn.ModuleList, caches: tuple[KVCache, ...],
              valid: Tensor | None) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        """The write-memory tokens run through every block after the segment; their outputs are the next memory."""
        x, caches = state.memory[0], list(caches)
        B, K, _ = x.shape
        key_valid = concat_valid(valid, caches[0][0].shape[2], None, K, B, x.device)
        for i, block in enumerate(blocks):
            x, caches[i], _, _ = block(x, caches[i], key_valid)
        # The raw residual stream, not final_norm(x): normed memory tokens (RMS 1 against embeddings' 0.02)
        # drown their own attention updates, and RMT stayed at chance (docs/design-notes.md).
        return (x,), {}
