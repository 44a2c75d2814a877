"""LM2 as a memory kind: a memory bank in each memory layer, read by cross-attention, written at a segment's end.

A memory layer's read keys/values of its bank change only when the bank is written, so they are projected on a
segment's first read and kept in the state until the next write.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor, nn

from l2m_train.config import ModelConfig
from l2m_train.model.layers import Block, BlockOutput, KVCache
from l2m_train.model.memory import KV, LM2Memory, MemoryTrace
from l2m_train.model.memory_kind import MemoryKind, MemoryState


@dataclass(frozen=True)
class LM2State(MemoryState):
    """memory: one B × N × d bank per memory layer."""

    pending: tuple[Tensor | None, ...]  # per memory layer: the segment's block outputs y awaiting the write
    memory_kv: tuple[KV | None, ...]  # per memory layer: the read's keys/values of its bank (None: not yet read)


class LM2(MemoryKind):
    KEYS: ClassVar[frozenset[str]] = frozenset({"slots", "layers", "init", "forget_bias", "write_norm", "convex_write",
                                             "slot_competition", "bptt_segments"})

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.layers = self.read_layers(cfg)
        self.index = {layer: n for n, layer in enumerate(self.layers)}  # block → its place among the memory layers

    @staticmethod
    def read_layers(cfg: ModelConfig) -> list[int]:
        layers = cfg.memory.layers
        return list(range(cfg.n_layers)) if layers is None else sorted(set(layers))

    @classmethod
    def config_checks(cls, cfg: ModelConfig) -> list[tuple[bool, str]]:
        mem = cfg.memory
        return super().config_checks(cfg) + [
            (mem.init in ("learned", "identity"), f"model.memory.init must be learned or identity, got '{mem.init}'"),
            (mem.init != "identity" or mem.slots <= cfg.d_model, "model.memory.init=identity needs memory.slots <= model.d_model"),
            (all(0 <= i < cfg.n_layers for i in mem.layers or []),
             f"model.memory.layers {mem.layers} out of range for {cfg.n_layers} layers"),
            (mem.layers != [], "model.memory.layers is empty: for no memory use model.memory.kind=none"),
        ]

    @classmethod
    def memory_flops(cls, cfg: ModelConfig, length: int, complete: bool) -> float:
        d, S = cfg.d_model, cfg.memory.slots
        # Read: q, output map and output gate per token (3 d×d), k and v on the S slots (2 d×d); attention: tokens × slots.
        read = 2 * (3 * d * d * length + 2 * d * d * S) + 4 * d * length * S
        # Write: k and v per token (2 d×d); q, output map and both gate maps (2 d×2d) on the slots (6 d×d); slots × tokens.
        write = 2 * (2 * d * d * length + 6 * d * d * S) + 4 * d * S * length
        return len(cls.read_layers(cfg)) * (read + (write if complete else 0))

    def build_block_memory(self, layer: int) -> nn.Module | None:
        c, mem = self.cfg, self.cfg.memory
        if layer not in self.index:
            return None
        return LM2Memory(c.d_model, c.n_heads, mem.slots, mem.init, mem.forget_bias, c.norm_eps, mem.write_norm,
                         mem.convex_write, mem.slot_competition)

    def segment_start(self, memory: tuple[Tensor, ...]) -> LM2State:
        n = len(self.layers)
        return LM2State(memory, (None,) * n, (None,) * n)

    def initial_state(self, batch_size: int, blocks: nn.ModuleList) -> LM2State:
        return self.segment_start(tuple(blocks[i].memory.initial_state(batch_size) for i in self.layers))

    def run_block(self, layer: int, block: Block, x: Tensor, cache: KVCache | None, key_valid: Tensor | None,
                  state: LM2State) -> tuple[BlockOutput, LM2State, dict[str, Tensor]]:
        n = self.index.get(layer)
        if n is None:
            return block(x, cache, key_valid), state, {}
        memory_kv = state.memory_kv[n]
        if memory_kv is None:  # the segment's first read: project the bank, once
            memory_kv = block.memory.read_keys_values(state.memory[n])
        out = block(x, cache, key_valid, partial(block.memory.read, memory=memory_kv))
        pending = out.output if state.pending[n] is None else torch.cat((state.pending[n], out.output), dim=1)
        state = replace(state, pending=_put(state.pending, n, pending), memory_kv=_put(state.memory_kv, n, memory_kv))
        return out, state, {f"layer{layer}/out": out.read.out_gate.detach().mean()}

    def trace(self, layer: int, block: Block, x: Tensor, out: BlockOutput, opening: int, valid: Tensor | None,
              attached: LM2State) -> MemoryTrace | None:
        n = self.index.get(layer)
        return None if n is None else block.memory.trace(x, valid, out.read, attached.memory[n])

    def write(self, state: LM2State, blocks: nn.ModuleList, caches: tuple[KVCache, ...],
              valid: Tensor | None) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        memory, gates = [], {}
        for n, layer in enumerate(self.layers):  # valid: the caches hold exactly the segment's tokens
            new, in_gate, forget_gate = blocks[layer].memory.write(state.pending[n], state.memory[n], valid)
            gates[f"layer{layer}/in"] = in_gate.detach().mean()
            gates[f"layer{layer}/forget"] = forget_gate.detach().mean()
            memory.append(new)
        return tuple(memory), gates


def _put(items: tuple, n: int, value) -> tuple:
    """items with its n-th entry replaced by value."""
    return items[:n] + (value,) + items[n + 1:]
