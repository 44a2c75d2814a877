"""The memory-augmented decoder: a Llama-style backbone run segment by segment with a carried state.

One code path serves training, segment-by-segment streaming and token-by-token generation: `forward`
cuts its input at segment boundaries and `_step` processes a piece that stays inside one segment,
extending the state's KV cache; when a segment completes, the memory is written and the cache dropped.
Segments that never reach each other (segment-local attention without memory) run a call's whole segments as one
batch instead, folded into the batch dimension.
The memory is its kind's (l2m_train/model/memory_kind.py: lm2.py, rmt.py, or none): the loop knows none by name.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from l2m_train.config import ModelConfig
from l2m_train.model.kinds import MEMORY_KINDS
from l2m_train.model.layers import Block, KVCache, concat_valid
from l2m_train.model.memory import MemoryTrace
from l2m_train.model.memory_kind import MemoryState, detach, flatten


@dataclass(frozen=True)
class DecoderState:
    """Everything carried between calls. Its size is O(layers · (N + L) · d) for the memory models."""

    pos: int  # tokens of the current segment already consumed (of the whole past, for full attention)
    caches: tuple[KVCache | None, ...]  # per block: keys/values of the current segment
    valid: Tensor | None  # B × cached tokens: which are real (None: all)
    memory_state: MemoryState  # the memory kind's own (l2m_train/model/memory_kind.py)

    def __getattr__(self, name: str):
        """The memory state's fields read through this state: state.memory, and the kind's own (lm2: memory_kv)."""
        if name == "memory_state":  # not set yet (an object being copied): no recursion
            raise AttributeError(name)
        return getattr(self.memory_state, name)

    def tensors(self) -> list[Tensor]:
        return flatten(self.caches) + self.memory_state.tensors()

    def detach(self) -> DecoderState:
        """The same state, cut from the graph that computed it: the next call's backward stops here."""
        return DecoderState(self.pos, detach(self.caches), self.valid, self.memory_state.detach())


@dataclass
class DecoderOutput:
    logits: Tensor  # B × T × vocab
    state: DecoderState
    gates: dict[str, Tensor]  # mean gate values per memory layer ("layer0/in", ...), detached
    aux: list[dict[int, MemoryTrace]] | None  # per step, per layer that reads memory (`memory_read_layers`); when asked for


@dataclass
class Piece:
    """What `MemoryDecoder.pieces` yields: the result of one stretch of the input that lies inside one segment, or of
    a run of whole segments computed as one batch (segments that never reach each other)."""

    start: int  # its first and one-past-last positions in the call's input
    end: int
    hidden: Tensor  # B × (end − start) × d: block outputs before the final norm (`logits` makes logits of them)
    state: DecoderState  # after it
    gates: dict[str, Tensor]  # gate means of its memory layers, detached
    aux: dict[int, MemoryTrace]  # per layer that reads memory, when asked for
    cut: bool  # no later piece's graph reaches this one's: the next starts from detached memory, or there is none


class MemoryDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.memory = MEMORY_KINDS[cfg.memory.kind](cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, partial(self.memory.build_block_memory, i)) for i in range(cfg.n_layers))
        self.final_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        decoder_memory = self.memory.build_decoder_parameters()
        for name, parameter in decoder_memory.items():
            self.register_parameter(name, parameter)
        self._decoder_memory = list(decoder_memory)
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

    @property
    def memory_layers(self) -> list[int]:
        """Blocks that hold a memory module of their own (lm2's memory layers)."""
        return [i for i, block in enumerate(self.blocks) if block.memory is not None]

    def memory_parameters(self) -> list[nn.Parameter]:
        """The memory kind's own parameters: its modules in the blocks and its parameters on the decoder."""
        in_blocks = [p for block in self.blocks if block.memory is not None for p in block.memory.parameters()]
        return in_blocks + [getattr(self, name) for name in self._decoder_memory]

    def initial_state(self, batch_size: int) -> DecoderState:
        return self._segment_start(self.memory.initial_state(batch_size, self.blocks))

    def _segment_start(self, memory: MemoryState) -> DecoderState:
        """The state before a segment's first token: its memory, nothing cached yet."""
        return DecoderState(0, (None,) * len(self.blocks), None, memory)

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
        spans = self._spans(state.pos, T, fold=not state.memory)
        # A run of whole segments folded into one span counts as one: without memory there is nothing to truncate.
        bptt, n_segments = self.cfg.memory.bptt_segments, sum(1 for start, _ in spans if start == 0)
        segment = 0  # segments started in this call so far

        def truncated(s: int) -> bool:  # is segment s of this call to start from detached memory?
            return bptt >= 0 and 0 < s < n_segments - bptt

        for i, (start, (a, b)) in enumerate(spans):
            attached = state.memory_state  # what the auxiliary losses read: their gradient is not truncated
            if start == 0:  # a new segment: truncate backpropagation through memory written too long ago
                if truncated(segment):  # the memory the call starts from is kept as given
                    state = self._segment_start(self.memory.segment_start(tuple(m.detach() for m in state.memory)))
                segment += 1
            step_valid = None if valid is None else valid[:, a:b]
            step = self._step if self.window is None or b - a <= self.window else self._whole_segments
            if self.cfg.activation_checkpointing and torch.is_grad_enabled():
                out = checkpoint(step, idx[:, a:b], state, step_valid, keep_aux, attached, use_reentrant=False)
            else:
                out = step(idx[:, a:b], state, step_valid, keep_aux, attached)
            hidden, state, gates, aux = out
            # Segments without memory (local attention) never reach each other; the others through memory.
            cut = i + 1 < len(spans) and spans[i + 1][0] == 0 and (not state.memory or truncated(segment))
            yield Piece(a, b, hidden, state, gates, aux, cut)

    def _spans(self, pos: int, T: int, fold: bool = False) -> list[tuple[int, tuple[int, int]]]:
        """Cut T tokens, starting `pos` tokens into a segment, at segment boundaries: (pos at start, (a, b)).

        fold: consecutive whole segments make one span (segments that never reach each other run as one batch).
        """
        if self.window is None:
            return [(pos, (0, T))]
        L, spans, a = self.window, [], 0
        while a < T:
            b = min(T, a + L - pos)
            last = spans[-1] if spans else None
            if fold and pos == 0 and b - a == L and last and last[0] == 0 and (last[1][1] - last[1][0]) % L == 0:
                spans[-1] = (0, (last[1][0], b))
            else:
                spans.append((pos, (a, b)))
            pos, a = (pos + b - a) % L, b
        return spans

    def _whole_segments(
        self, idx: Tensor, state: DecoderState, valid: Tensor | None, keep_aux: bool, attached: MemoryState
    ) -> tuple[Tensor, DecoderState, dict[str, Tensor], dict[int, MemoryTrace]]:
        """Whole segments that never reach each other, as one `_step` over B · segments rows of one segment each."""
        B, T = idx.shape
        rows = B * (T // self.window)
        hidden, state, gates, aux = self._step(
            idx.reshape(rows, self.window), state, None if valid is None else valid.reshape(rows, self.window), keep_aux, attached)
        return hidden.reshape(B, T, -1), state, gates, aux

    def _step(
        self, idx: Tensor, state: DecoderState, valid: Tensor | None, keep_aux: bool, attached: MemoryState
    ) -> tuple[Tensor, DecoderState, dict[str, Tensor], dict[int, MemoryTrace]]:
        """Process tokens that lie inside one segment; write the memory when the segment completes."""
        B, T = idx.shape
        x, step_valid = self.embed(idx), valid
        opening = self.memory.opening(state.memory_state) if state.pos == 0 else None
        K = 0 if opening is None else opening.shape[1]
        if K:  # tokens of the memory's own open the segment
            x = torch.cat((opening, x), dim=1)
            valid = None if valid is None else torch.cat((valid.new_ones(B, K), valid), dim=1)
        cached = 0 if state.caches[0] is None else state.caches[0][0].shape[2]
        key_valid = concat_valid(state.valid, cached, valid, x.shape[1], B, idx.device)
        caches, memory, gates, aux = list(state.caches), state.memory_state, {}, {}
        for i, block in enumerate(self.blocks):
            out, memory, read_gates = self.memory.run_block(i, block, x, caches[i], key_valid, memory)
            gates.update(read_gates)
            if keep_aux and (trace := self.memory.trace(i, block, x, out, K, step_valid, attached)) is not None:
                aux[i] = trace
            x, caches[i] = out.output, out.cache
        hidden = x[:, -T:]
        state = DecoderState(state.pos + T, tuple(caches), key_valid, memory)
        if self.window is not None and state.pos == self.window:
            state = self._finish_segment(state, gates)
        return hidden, state, gates, aux

    def _finish_segment(self, state: DecoderState, gates: dict[str, Tensor]) -> DecoderState:
        """Write the memory from the completed segment and drop its cache."""
        written, write_gates = self.memory.write(state.memory_state, self.blocks, state.caches, state.valid)
        gates.update(write_gates)
        return self._segment_start(self.memory.segment_start(written))

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
