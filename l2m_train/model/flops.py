"""Model FLOPs per token of a MemoryDecoder, for throughput (TFLOP/s) and MFU.

Convention (docs/benchmarks.md):
- Matmuls only: a matmul with an m × n weight costs 2·m·n FLOPs per row it is applied to. Every weight
  matrix counts, the LM head included (tied or not); the embedding lookup, norms, rotary, softmax, gates'
  elementwise products, biases and the optimizer step do not.
- Where a weight runs once per segment rather than once per token (lm2's maps applied to the memory slots,
  rmt's memory-token positions), it is counted per segment and divided by `segment_len`.
- Attention scores and values: 2·2·d_model FLOPs per (query, key) pair (QKᵀ and AV, all heads). Every query
  is charged for every key of its attention call, masked or not (the non-causal convention of PaLM's MFU,
  no halving for causality): a segment of L tokens costs L² pairs, a full-attention sample of T tokens T².
- Training = 3 × forward (the backward pass costs twice the forward), so for `none` with segment attention
  train_flops_per_token = 6·N + 12·n_layers·d_model·segment_len, N the matmul parameters.
- A sample's short last segment is counted as it runs: its tokens attend to fewer keys and it writes no memory.
- Activation checkpointing's recomputation is not counted: these are model FLOPs, as MFU uses. Nor is the
  backward pass's saving where nothing needs a gradient (the last segment's memory write, memory detached by
  the BPTT window): the memory models' true backward is a few percent under 2× their forward.
"""
from __future__ import annotations

from l2m_train.config import ModelConfig
from l2m_train.model.kinds import MEMORY_KINDS


def block_matmul_params(cfg: ModelConfig) -> int:
    """Weights of one backbone block: attention (q, grouped k/v, out) and SwiGLU (gate, up, down)."""
    d, d_kv = cfg.d_model, cfg.n_kv_heads * (cfg.d_model // cfg.n_heads)
    return 2 * d * d + 2 * d * d_kv + 3 * d * cfg.d_ff


def segment_forward_flops(cfg: ModelConfig, length: int, complete: bool = True) -> float:
    """Forward FLOPs of one segment of `length` tokens under segment attention, the LM head included. Only a complete
    segment writes the memory (a sample's short last segment does not). The memory kind says what it adds."""
    kind = MEMORY_KINDS[cfg.memory.kind]
    positions, pairs = kind.segment_positions(cfg, length, complete)
    backbone = cfg.n_layers * (2 * block_matmul_params(cfg) * positions + 4 * cfg.d_model * pairs)
    return backbone + 2 * cfg.d_model * cfg.vocab_size * length + kind.memory_flops(cfg, length, complete)  # LM head: tokens only


def forward_flops_per_token(cfg: ModelConfig, context: int | None = None) -> float:
    """Forward FLOPs per token of a sample of `context` tokens. Full attention needs it (each token is charged for every
    key of the sample); segment attention counts the sample's segments, a short last one included (None or 0: whole
    segments, whose cost per token is the same at any sample length)."""
    d, L = cfg.d_model, cfg.segment_len
    if cfg.attention == "full":
        if context is None:
            raise ValueError("attention: full costs FLOPs in proportion to the sample length: pass context")
        return cfg.n_layers * (2 * block_matmul_params(cfg) + 4 * d * context) + 2 * d * cfg.vocab_size
    if not context:
        return segment_forward_flops(cfg, L) / L
    whole, rest = divmod(context, L)
    return (whole * segment_forward_flops(cfg, L) + (segment_forward_flops(cfg, rest, complete=False) if rest else 0)) / context


def train_flops_per_token(cfg: ModelConfig, context: int | None = None) -> float:
    """Forward and backward FLOPs per sample token: 3 × forward."""
    return 3 * forward_flops_per_token(cfg, context)
