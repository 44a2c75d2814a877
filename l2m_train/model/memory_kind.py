"""What the decoder's segment loop asks of a memory kind, and the kind without memory.

A kind builds its modules (inside the blocks, or on the decoder under names of its choosing), owns the state it
carries between segments, and answers five questions: the initial state, what a segment starts with, how a block
reads, what is written when a segment ends, and the trace of a read for the auxiliary losses. The decoder knows no
kind by name: a new memory is one new module with one subclass, listed in l2m_train/model/kinds.py.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from torch import Tensor, nn

from l2m_train.config import ModelConfig
from l2m_train.model.layers import Block, BlockOutput, KVCache
from l2m_train.model.memory import MemoryTrace


@dataclass(frozen=True)
class MemoryState:
    """A kind's state between calls; kinds add fields for what a segment gathers before its write."""

    memory: tuple[Tensor, ...]  # as the last write left it, one tensor per bank: what the next segment starts from

    def tensors(self) -> list[Tensor]:
        return [t for f in fields(self) for t in flatten(getattr(self, f.name))]

    def detach(self) -> MemoryState:
        """The same state, cut from the graph that computed it."""
        return type(self)(**{f.name: detach(getattr(self, f.name)) for f in fields(self)})


class MemoryKind:
    """No memory: segments never reach each other (segment-local attention) or attention spans the whole sample."""

    KEYS: ClassVar[frozenset[str]] = frozenset()  # the model.memory keys the kind uses (besides `kind`)

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg

    @staticmethod
    def read_layers(cfg: ModelConfig) -> list[int]:
        """Blocks whose tokens read memory: where the auxiliary losses can supervise a read."""
        return []

    @classmethod
    def config_checks(cls, cfg: ModelConfig) -> list[tuple[bool, str]]:
        """(ok, one-line message) for the values of the kind's own keys; kinds add their own."""
        mem = cfg.memory
        checks = {"slots": (mem.slots > 0, f"model.memory.slots must be > 0, got {mem.slots}"),
                  "bptt_segments": (mem.bptt_segments >= -1, f"model.memory.bptt_segments must be >= -1, got {mem.bptt_segments}")}
        return [check for key, check in checks.items() if key in cls.KEYS]

    @staticmethod
    def segment_positions(cfg: ModelConfig, length: int, complete: bool) -> tuple[int, int]:
        """For l2m_train/model/flops.py: (positions the blocks run over, attention (query, key) pairs per block) for a
        segment of `length` tokens; complete: a whole segment, which writes the memory."""
        return length, length**2

    @staticmethod
    def memory_flops(cfg: ModelConfig, length: int, complete: bool) -> float:
        """Forward FLOPs of the kind's own memory modules over such a segment (flops.py's conventions)."""
        return 0.0

    def build_block_memory(self, layer: int) -> nn.Module | None:
        """The memory module block `layer` holds (its parameters are saved as blocks.<layer>.memory.*), if any."""
        return None

    def build_decoder_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters the kind keeps on the decoder itself, by their names in checkpoints (built after the blocks)."""
        return {}

    def segment_start(self, memory: tuple[Tensor, ...]) -> MemoryState:
        """The state before a segment's first token: the memory as written, nothing read or gathered yet."""
        return MemoryState(memory)

    def initial_state(self, batch_size: int, blocks: nn.ModuleList) -> MemoryState:
        return self.segment_start(())

    def opening(self, state: MemoryState) -> Tensor | None:
        """B × K × d tokens placed before a segment's first token (their outputs are not the model's), or None."""
        return None

    def run_block(self, layer: int, block: Block, x: Tensor, cache: KVCache | None, key_valid: Tensor | None,
                  state: MemoryState) -> tuple[BlockOutput, MemoryState, dict[str, Tensor]]:
        """Block `layer` over x with its read of the memory, if any: (its output, the state, gate means by name)."""
        return block(x, cache, key_valid), state, {}

    def trace(self, layer: int, block: Block, x: Tensor, out: BlockOutput, opening: int, valid: Tensor | None,
              attached: MemoryState) -> MemoryTrace | None:
        """The read of block `layer` for the auxiliary losses, or None where it reads nothing.

        x: the block's input (`opening` tokens first); valid: the step's own tokens'; attached: the state the piece
        started from before any BPTT truncation, so that a loss on a read trains the write that produced it.
        """
        return None

    def write(self, state: MemoryState, blocks: nn.ModuleList, caches: tuple[KVCache, ...],
              valid: Tensor | None) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        """At a segment's end: (the memory written from it, gate means by name). valid: its cached tokens'."""
        return state.memory, {}


def flatten(x) -> list[Tensor]:
    """The tensors in nested tuples (None entries skipped)."""
    if x is None:
        return []
    return [t for item in x for t in flatten(item)] if isinstance(x, tuple) else [x]


def detach(x):
    """Nested tuples of tensors (or None), each tensor detached."""
    if x is None:
        return None
    return tuple(detach(t) for t in x) if isinstance(x, tuple) else x.detach()
