"""The memory-augmented decoder: a Llama-style backbone run segment by segment with a carried state.

One code path serves training, segment-by-segment streaming and token-by-token generation: `forward`
cuts its input at segment boundaries and `_step` processes a piece that stays inside one segment,
extending the state's KV cache; when a segment completes, the memory is written and the cache dropped.
lm2's read keys/values of the memory are projected on a segment's first read and kept until the next write.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from l2m_train.config import ModelConfig, memory_read_layers
from l2m_train.model.layers import SelfAttention, SwiGLU
from l2m_train.model.memory import KV, LM2Memory, MemoryRead, MemoryTrace

KVCache = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class DecoderState:
    """Everything carried between calls. Its size is O(layers · (N + L) · d) for the memory models."""

    pos: int  # tokens of the current segment already consumed (of the whole past, for full attention)
    caches: tuple[KVCache | None, ...]  # per block: keys/values of the current segment
    memory: tuple[Tensor, ...]  # lm2: B × N × d per memory layer; rmt: one B × K × d; none: ()
    pending: tuple[Tensor | None, ...]  # lm2: per memory layer, block outputs y awaiting the segment's write
    memory_kv: tuple[KV | None, ...]  # lm2: per memory layer, the read's keys/values of `memory` (None: not yet read)
    valid: Tensor | None  # B × cached tokens: which are real (None: all)

    def tensors(self) -> list[Tensor]:
        kv = [t for c in self.caches + self.memory_kv if c is not None for t in c]
        return kv + list(self.memory) + [p for p in self.pending if p is not None]

    def detach(self) -> DecoderState:
        """The same state, cut from the graph that computed it: the next call's backward stops here."""
        def cut(x):
            return None if x is None else tuple(cut(t) for t in x) if isinstance(x, tuple) else x.detach()

        return DecoderState(self.pos, cut(self.caches), cut(self.memory), cut(self.pending), cut(self.memory_kv), self.valid)


@dataclass
class DecoderOutput:
    logits: Tensor  # B × T × vocab
    state: DecoderState
    gates: dict[str, Tensor]  # mean gate values per memory layer ("layer0/in", ...), detached
    aux: list[dict[int, MemoryTrace]] | None  # per step, per layer that reads memory (rmt: every block); when asked for


@dataclass
class Piece:
    """What `MemoryDecoder.pieces` yields: the result of one stretch of the input that lies inside one segment."""

    start: int  # its first and one-past-last positions in the call's input
    end: int
    hidden: Tensor  # B × (end − start) × d: block outputs before the final norm (`logits` makes logits of them)
    state: DecoderState  # after it
    gates: dict[str, Tensor]  # gate means of its memory layers, detached
    aux: dict[int, MemoryTrace]  # per layer that reads memory, when asked for
    cut: bool  # no later piece's graph reaches this one's: the next starts from detached memory, or there is none


class Block(nn.Module):
    """Pre-norm block; with a memory, h = x + SelfAttn(norm x) + g_out ⊙ E_mem, then y = h + MLP(norm h)."""

    def __init__(self, cfg: ModelConfig, with_memory: bool):
        super().__init__()
        d = cfg.d_model
        self.attn_norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.attn = SelfAttention(d, cfg.n_heads, cfg.n_kv_heads, cfg.rope_base)
        self.mlp_norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.mlp = SwiGLU(d, cfg.d_ff)
        mem = cfg.memory
        self.memory = (
            LM2Memory(d, cfg.n_heads, mem.slots, mem.init, mem.forget_bias, cfg.norm_eps, mem.write_norm)
            if with_memory
            else None
        )

    def forward(
        self, x: Tensor, cache: KVCache | None, key_valid: Tensor | None, memory_kv: KV | None
    ) -> tuple[Tensor, KVCache, Tensor, MemoryRead | None]:
        """memory_kv: the memory's read keys/values. Returns (block output, extended cache, self-attention queries,
        the memory read if any)."""
        x_normed = self.attn_norm(x)
        attn_out, cache, queries = self.attn(x_normed, cache, key_valid)
        h = x + attn_out
        read = None
        if self.memory is not None:
            gated, read = self.memory.read(x_normed, memory_kv)  # RMSNorm(x) is shared with self-attention
            h = h + gated
        return h + self.mlp(self.mlp_norm(h)), cache, queries, read


class MemoryDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        kind = cfg.memory.kind
        self.memory_layers = memory_read_layers(cfg) if kind == "lm2" else []
        self.memory_slot = {layer: slot for slot, layer in enumerate(self.memory_layers)}  # block → state.memory index
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i in self.memory_layers) for i in range(cfg.n_layers))
        self.final_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.rmt_initial = nn.Parameter(torch.randn(cfg.memory.slots, cfg.d_model) * 0.02) if kind == "rmt" else None
        self.apply(self._init_weights)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):  # biases are set by the modules that own them
            nn.init.normal_(module.weight, std=0.02)

    @property
    def window(self) -> int | None:
        """Tokens per segment, or None for full attention (the cache never resets)."""
        return None if self.cfg.attention == "full" else self.cfg.segment_len

    def initial_state(self, batch_size: int) -> DecoderState:
        if self.cfg.memory.kind == "lm2":
            memory = tuple(self.blocks[i].memory.initial_state(batch_size) for i in self.memory_layers)
        elif self.cfg.memory.kind == "rmt":
            memory = (self.rmt_initial.unsqueeze(0).expand(batch_size, -1, -1),)
        else:
            memory = ()
        return self._segment_start(memory)

    def _segment_start(self, memory: tuple[Tensor, ...]) -> DecoderState:
        """The state before a segment's first token: its memory, nothing cached or pending yet."""
        n = len(self.memory_layers)
        return DecoderState(0, (None,) * len(self.blocks), memory, (None,) * n, (None,) * n, None)

    def forward(
        self, idx: Tensor, state: DecoderState | None = None, valid: Tensor | None = None, keep_aux: bool = False,
        last_only: bool = False,
    ) -> DecoderOutput:
        """idx: B × T token ids continuing from `state` (a fresh sample when None); valid: B × T, False = padding.

        last_only: logits of the last position only (B × 1 × vocab), for consuming a context (see `consume`).
        """
        pieces = list(self.pieces(idx, state, valid, keep_aux))
        hidden = pieces[-1].hidden[:, -1:] if last_only else torch.cat([p.hidden for p in pieces], dim=1)
        gates = mean_gates([p.gates for p in pieces])
        return DecoderOutput(self.logits(hidden), pieces[-1].state, gates, [p.aux for p in pieces] if keep_aux else None)

    def logits(self, hidden: Tensor) -> Tensor:
        """The final norm and the LM head over block outputs B × t × d."""
        return self.lm_head(self.final_norm(hidden))

    def pieces(
        self, idx: Tensor, state: DecoderState | None = None, valid: Tensor | None = None, keep_aux: bool = False
    ) -> Iterator[Piece]:
        """Run idx (as `forward`) a piece at a time, a piece being its tokens that lie in one segment; yield each when done.

        Backpropagation through memory is truncated here (`memory.bptt_segments`): each piece says whether the
        next one starts from detached memory, so a caller may run a piece's backward before the next one is computed.
        """
        B, T = idx.shape
        if T == 0:
            raise ValueError("forward needs at least one token")
        valid = None if valid is None else valid.bool()
        state = state or self.initial_state(B)
        spans = self._spans(state.pos, T)
        bptt, n_segments = self.cfg.memory.bptt_segments, sum(1 for start, _ in spans if start == 0)
        segment = 0  # segments started in this call so far

        def truncated(s: int) -> bool:  # is segment s of this call to start from detached memory?
            return bptt >= 0 and 0 < s < n_segments - bptt

        for i, (start, (a, b)) in enumerate(spans):
            attached = state.memory  # what the auxiliary losses read: their gradient is not truncated
            if start == 0:  # a new segment: truncate backpropagation through memory written too long ago
                if truncated(segment):  # the memory the call starts from is kept as given
                    state = self._segment_start(tuple(m.detach() for m in state.memory))
                segment += 1
            step_valid = None if valid is None else valid[:, a:b]
            if self.cfg.activation_checkpointing and torch.is_grad_enabled():
                out = checkpoint(self._step, idx[:, a:b], state, step_valid, keep_aux, attached, use_reentrant=False)
            else:
                out = self._step(idx[:, a:b], state, step_valid, keep_aux, attached)
            hidden, state, gates, aux = out
            # Segments without memory (kind none, local attention) never reach each other; the others through memory.
            cut = i + 1 < len(spans) and spans[i + 1][0] == 0 and (not state.memory or truncated(segment))
            yield Piece(a, b, hidden, state, gates, aux, cut)

    def _spans(self, pos: int, T: int) -> list[tuple[int, tuple[int, int]]]:
        """Cut T tokens, starting `pos` tokens into a segment, at segment boundaries: (pos at start, (a, b))."""
        if self.window is None:
            return [(pos, (0, T))]
        spans, a = [], 0
        while a < T:
            b = min(T, a + self.window - pos)
            spans.append((pos, (a, b)))
            pos, a = (pos + b - a) % self.window, b
        return spans

    def _step(
        self, idx: Tensor, state: DecoderState, valid: Tensor | None, keep_aux: bool, attached: tuple[Tensor, ...]
    ) -> tuple[Tensor, DecoderState, dict[str, Tensor], dict[int, MemoryTrace]]:
        """Process tokens that lie inside one segment; write the memory when the segment completes."""
        B, T = idx.shape
        x = self.embed(idx)
        rmt_prefix = self.cfg.memory.kind == "rmt" and state.pos == 0
        K = state.memory[0].shape[1] if rmt_prefix else 0
        if rmt_prefix:  # [read-mem; segment ...]: memory tokens open every segment
            x = torch.cat((state.memory[0], x), dim=1)
            valid = None if valid is None else torch.cat((valid.new_ones(B, x.shape[1] - T), valid), dim=1)
        cached = 0 if state.caches[0] is None else state.caches[0][0].shape[2]
        key_valid = _concat_valid(state.valid, cached, valid, x.shape[1], B, idx.device)
        caches, pending, memory_kv, gates, aux = list(state.caches), list(state.pending), list(state.memory_kv), {}, {}
        for i, block in enumerate(self.blocks):
            slot = self.memory_slot.get(i)
            if slot is not None and memory_kv[slot] is None:  # the segment's first read: project the slots, once
                memory_kv[slot] = block.memory.read_keys_values(state.memory[slot])
            x_in = x
            x, caches[i], queries, read = block(x, caches[i], key_valid, None if slot is None else memory_kv[slot])
            if read is not None:
                pending[slot] = x if pending[slot] is None else torch.cat((pending[slot], x), dim=1)
                gates[f"layer{i}/out"] = read.out_gate.detach().mean()
                if keep_aux:
                    aux[i] = block.memory.trace(x_in, valid, read, attached[slot])
            elif rmt_prefix and keep_aux:
                aux[i] = _rmt_trace(block, x_in[:, K:], None if valid is None else valid[:, K:], queries[:, :, K:], caches[i], K)
        hidden = x[:, -T:]
        state = DecoderState(state.pos + T, tuple(caches), state.memory, tuple(pending), tuple(memory_kv), key_valid)
        if self.window is not None and state.pos == self.window:
            state = self._finish_segment(state, gates)
        return hidden, state, gates, aux

    def _finish_segment(self, state: DecoderState, gates: dict[str, Tensor]) -> DecoderState:
        """Write the memory from the completed segment and drop its cache."""
        if self.cfg.memory.kind == "lm2":
            segment_valid = state.valid  # lm2 caches hold exactly the segment's tokens
            memory = []
            for slot, i in enumerate(self.memory_layers):
                new, in_gate, forget_gate = self.blocks[i].memory.write(state.pending[slot], state.memory[slot], segment_valid)
                gates[f"layer{i}/in"] = in_gate.detach().mean()
                gates[f"layer{i}/forget"] = forget_gate.detach().mean()
                memory.append(new)
            state = replace(state, memory=tuple(memory))
        elif self.cfg.memory.kind == "rmt":  # [...; write-mem]: their outputs become the next read memory
            x, caches = state.memory[0], list(state.caches)
            B, K, _ = x.shape
            cached = caches[0][0].shape[2]
            key_valid = _concat_valid(state.valid, cached, None, K, B, x.device)
            for i, block in enumerate(self.blocks):
                x, caches[i], _, _ = block(x, caches[i], key_valid, None)
            # The raw residual stream, not final_norm(x): normed memory tokens (RMS 1 against embeddings' 0.02)
            # drown their own attention updates, and RMT stayed at chance (docs/design-notes.md).
            state = replace(state, memory=(x,))
        return self._segment_start(state.memory)

    @torch.no_grad()
    def consume(self, idx: Tensor, state: DecoderState | None = None, valid: Tensor | None = None) -> tuple[Tensor, DecoderState]:
        """Feed a context of any length: (the last position's logits, B × vocab; the state after it).

        One call per segment_len tokens, each keeping only its last logits, so the working memory is that of one
        segment however long the context (for full attention, one segment's queries over the growing cache).
        """
        if idx.shape[1] == 0:
            raise ValueError("consume needs at least one token")
        L = self.cfg.segment_len
        for a in range(0, idx.shape[1], L):
            out = self(idx[:, a:a + L], state, None if valid is None else valid[:, a:a + L], last_only=True)
            state = out.state
        return out.logits[:, -1], state

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 state: DecoderState | None = None, valid: Tensor | None = None):
        """Yield (token ids B × 1, state) one at a time: the prompt is consumed (`consume`), then a token per step.

        valid marks the prompt's padding (e.g. left padding in a batch); generated tokens are always real.
        """
        logits, state = self.consume(idx, state, valid)
        for _ in range(max_new_tokens):
            if temperature <= 0:
                token = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                token = torch.multinomial(torch.softmax(logits, dim=-1), 1)
            logits, state = self.consume(token, state)
            yield token, state


def mean_gates(gates: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Each gate's mean over the pieces that have it (a memory is written only where a segment ends)."""
    names = dict.fromkeys(name for piece in gates for name in piece)
    return {name: torch.stack([piece[name] for piece in gates if name in piece]).mean() for name in names}


def _rmt_trace(block: Block, hidden: Tensor, valid: Tensor | None, queries: Tensor, cache: KVCache, K: int) -> MemoryTrace:
    """RMT's memory read: the segment's attention restricted to the K read-memory positions that open it.

    Its keys/values come from the cache, so under a BPTT window they are those of the truncated memory.
    """
    k, v = cache
    memory, tokens = (k[:, :, :K], v[:, :, :K]), (k[:, :, K:], v[:, :, K:])
    readout = block.attn.attend(queries, *memory)  # every memory position precedes every token: no mask
    return MemoryTrace(hidden, valid, queries, memory, tokens, readout, block.attn.attend)


def _concat_valid(past: Tensor | None, n_past: int, new: Tensor | None, n_new: int, B: int, device) -> Tensor | None:
    """Validity of all cached plus new tokens, or None when every one of them is real."""
    if past is None and new is None:
        return None
    past = torch.ones(B, n_past, dtype=torch.bool, device=device) if past is None else past
    new = torch.ones(B, n_new, dtype=torch.bool, device=device) if new is None else new
    return torch.cat((past, new), dim=1)
