"""The LM2 memory layer (docs/design.md §2.2): a gated read into the residual stream and a gated, segment-level write.

Every token of a segment reads the same memory M, which holds only information from earlier segments,
so the read needs no causal mask. The write runs once, after the whole segment has been processed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2m_train.model.layers import merge_heads, split_heads

KV = tuple[Tensor, Tensor]


@dataclass
class MemoryRead:
    """What a memory read produced, for auxiliary losses and gate statistics."""

    queries: Tensor  # B × H × T × head_dim, the read queries q
    readout: Tensor  # B × T × d, E_mem before the output gate
    out_gate: Tensor  # B × T × d, g_out


@dataclass
class MemoryTrace:
    """One segment's memory read at one layer, in the one form both auxiliary losses use, for lm2 and rmt alike."""

    hidden: Tensor  # B × T × d, the block inputs x of the segment's tokens
    valid: Tensor | None  # B × T, False = padding (None: all real)
    queries: Tensor  # B × H × T × head_dim, the read queries
    memory: KV  # the memory the segment reads, as keys and values
    tokens: KV  # the segment's own tokens under the same key/value maps: the next segment's reconstruction teacher
    readout: Tensor  # B × T × d, what the tokens read from memory (lm2: E_mem; rmt: attention restricted to memory)
    attend: Callable[..., Tensor]  # (queries, keys, values, key mask) → B × T × d through the read's output map


class CrossAttention(nn.Module):
    """Multi-head attention of one sequence over another: no positions, no causal order."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.wq = nn.Linear(d_model, d_model, bias=False)
        self.wk = nn.Linear(d_model, d_model, bias=False)
        self.wv = nn.Linear(d_model, d_model, bias=False)
        self.wo = nn.Linear(d_model, d_model, bias=False)

    def keys_values(self, source: Tensor) -> KV:
        return split_heads(self.wk(source), self.n_heads), split_heads(self.wv(source), self.n_heads)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """key_mask: broadcastable to B × H × Tq × Ts, True = may attend."""
        return self.wo(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)))

    def forward(self, queries: Tensor, source: KV, source_valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """source: the keys/values of the attended sequence (`keys_values`), so that a caller can keep them.

        Returns (output B × Tq × d, per-head queries). source_valid: B × Ts, at least one True per row.
        """
        q = split_heads(self.wq(queries), self.n_heads)
        mask = None if source_valid is None else source_valid[:, None, None, :]
        return self.attend(q, *source, mask), q


class LM2Memory(nn.Module):
    def __init__(self, d_model: int, n_heads: int, slots: int, init: str, forget_bias: float, norm_eps: float,
                 write_norm: bool = True, convex_write: bool = False, slot_competition: bool = False):
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=norm_eps)  # RMSNorm(M), shared by the read keys/values and write queries
        self.read_attn = CrossAttention(d_model, n_heads)
        self.out_gate = nn.Linear(d_model, d_model)  # W_out, b_out
        self.write_attn = CrossAttention(d_model, n_heads)
        # RMSNorm(y) before the write's keys/values: the raw residual stream is ~0.02 in scale at init, which left
        # the design-exact write ~1e-4 of RMSNorm(M) and training on a long plateau (docs/design-notes.md).
        self.write_norm = nn.RMSNorm(d_model, eps=norm_eps) if write_norm else nn.Identity()
        self.gates_from_update = nn.Linear(d_model, 2 * d_model)  # [W_in | W_f], [b_in | b_f]
        self.gates_from_memory = nn.Linear(d_model, 2 * d_model, bias=False)  # [V_in | V_f]
        self.forget_bias = forget_bias
        # g_in = 1 − g_f: M_next is a convex mix of M and tanh(U). The design's independent gates let the slots grow
        # with every segment written, past the range training saw (docs/RESULTS.md, rung 3). An experiment: the W_in
        # half of gates_from_update then goes unused, kept so that a fine-tune may switch either way.
        self.convex_write = convex_write
        # Tokens compete for the slots in the write (a softmax over slots, as in Slot Attention), and each slot is
        # written in proportion to what it won. The design's softmax over tokens lets every write change every slot
        # alike, which trained runs do (benchmarks/memory_writes.py: slots_changed 0.76–0.95). An experiment.
        self.slot_competition = slot_competition
        if init == "learned":
            self.initial = nn.Parameter(torch.empty(slots, d_model))
        else:  # "identity": one-hot rows as in LM2, fixed
            self.register_buffer("initial", torch.eye(slots, d_model), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Gate biases and the initial memory (the decoder initialises every weight matrix before this)."""
        d = self.out_gate.weight.shape[0]
        nn.init.zeros_(self.out_gate.bias)
        nn.init.zeros_(self.gates_from_update.bias)
        self.gates_from_update.bias[d:].fill_(self.forget_bias)  # b_f > 0: remember by default
        if isinstance(self.initial, nn.Parameter):
            nn.init.normal_(self.initial, std=1 / math.sqrt(d))

    def initial_state(self, batch_size: int) -> Tensor:
        return self.initial.unsqueeze(0).expand(batch_size, -1, -1)

    def read_keys_values(self, memory: Tensor) -> KV:
        """k = RMSNorm(M) Wk and v = RMSNorm(M) Wv: they change only when the memory is written, so the decoder
        computes them once per segment and keeps them in its state."""
        return self.read_attn.keys_values(self.norm(memory))

    def read(self, x_normed: Tensor, memory: Tensor | KV) -> tuple[Tensor, MemoryRead]:
        """Gated read-out g_out ⊙ E_mem (B × T × d) to add to the residual stream after self-attention.

        memory: the state M (B × N × d), or its `read_keys_values` when the caller keeps them.
        """
        memory_kv = self.read_keys_values(memory) if isinstance(memory, Tensor) else memory
        readout, queries = self.read_attn(x_normed, memory_kv)
        out_gate = torch.sigmoid(self.out_gate(readout))
        return out_gate * readout, MemoryRead(queries, readout, out_gate)

    def trace(self, x: Tensor, valid: Tensor | None, read: MemoryRead, memory: Tensor) -> MemoryTrace:
        """The read as the auxiliary losses see it; the segment's own keys use the maps that read the memory.

        memory: the state as the write produced it, before any BPTT truncation, so that the reconstruction
        loss trains every write, not only those inside the window.
        """
        memory_kv = self.read_keys_values(memory)
        tokens = self.read_attn.keys_values(self.norm(x))
        return MemoryTrace(x, valid, read.queries, memory_kv, tokens, read.readout, self.read_attn.attend)

    def write(self, y: Tensor, memory: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """M_next = g_in ⊙ tanh(U) + g_f ⊙ M, where the slots attend to the segment's block outputs y (convex_write:
        g_in = 1 − g_f).

        valid (B × T) keeps padding out of the write; a sample with no real token keeps its memory.
        Returns (M_next, g_in, g_f).
        """
        has_tokens = None
        if valid is not None:
            has_tokens = valid.any(dim=1)
            valid = valid | ~has_tokens[:, None]  # an all-padding row attends uniformly; its result is discarded below
        tokens = self.write_attn.keys_values(self.write_norm(y))
        if self.slot_competition:
            update, share = self.competed_update(self.norm(memory), tokens, valid)
        else:
            update, _ = self.write_attn(self.norm(memory), tokens, valid)
        in_gate, forget_gate = torch.sigmoid(self.gates_from_update(update) + self.gates_from_memory(memory)).chunk(2, -1)
        if self.convex_write:
            in_gate = 1 - forget_gate
        new_memory = in_gate * torch.tanh(update) + forget_gate * memory
        if self.slot_competition:
            new_memory = memory + share * (new_memory - memory)
        if has_tokens is not None:
            new_memory = torch.where(has_tokens[:, None, None], new_memory, memory)
        return new_memory, in_gate, forget_gate

    def competed_update(self, memory_normed: Tensor, tokens: KV, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        """U with a softmax over slots: each token's claim on each slot (per head), then each slot's weighted mean of
        the tokens it claimed. Also each slot's share of the write (B × N × 1): what it claimed over the heads,
        relative to the slot that claimed most, so the most-claimed slot is written fully and an unclaimed one not.
        """
        attn = self.write_attn
        q = split_heads(attn.wq(memory_normed), attn.n_heads)  # B × H × N × head_dim
        keys, values = tokens
        claim = torch.softmax(q @ keys.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-2)  # B × H × N × T, over slots
        if valid is not None:
            claim = claim * valid[:, None, None, :]
        claimed = claim.sum(-1, keepdim=True)  # B × H × N × 1
        update = attn.wo(merge_heads(claim @ values / claimed.clamp_min(1e-6)))
        share = claimed.mean(1)
        return update, share / share.amax(1, keepdim=True).clamp_min(1e-6)
