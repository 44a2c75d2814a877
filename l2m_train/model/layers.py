"""Llama-style building blocks: rotary embeddings, grouped-query attention with a KV cache, SwiGLU, the block."""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2m_train.config import ModelConfig

KVCache = tuple[Tensor, Tensor]


def rotary_tables(head_dim: int, positions: Tensor, base: float) -> tuple[Tensor, Tensor]:
    """cos/sin tables (T × head_dim/2) for the given absolute positions."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[..., :h/2], x[..., h/2:]) of a B × H × T × head_dim tensor."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.type_as(x)


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """B × T × (H·h) → B × H × T × h."""
    B, T, _ = x.shape
    return x.view(B, T, n_heads, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """B × H × T × h → B × T × (H·h)."""
    B, H, T, h = x.shape
    return x.transpose(1, 2).reshape(B, T, H * h)


def causal_mask(q_len: int, past: int, key_valid: Tensor | None, device: torch.device) -> Tensor | None:
    """Boolean mask (True = may attend) for queries at positions past..past+q_len-1 over past+q_len keys.

    Returns None when plain top-left causal masking (SDPA's is_causal) is exact: no past and no padding.
    key_valid (B × keys) excludes padding keys; queries always see themselves so no row is empty.
    """
    if past == 0 and key_valid is None:
        return None
    k_len = past + q_len
    q_pos = torch.arange(past, k_len, device=device)[:, None]
    mask = torch.arange(k_len, device=device)[None, :] <= q_pos  # q_len × k_len
    if key_valid is not None:
        mask = mask[None] & (key_valid[:, None, :] | (torch.arange(k_len, device=device)[None, :] == q_pos)[None])
        mask = mask[:, None]  # B × 1 × q × k
    return mask


class SelfAttention(nn.Module):
    """Grouped-query causal self-attention with rotary positions and an optional KV cache."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, rope_base: float):
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.rope_base = rope_base
        self.wq = nn.Linear(d_model, d_model, bias=False)
        self.wkv = nn.Linear(d_model, 2 * n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(d_model, d_model, bias=False)

    def forward(
        self, x: Tensor, cache: tuple[Tensor, Tensor] | None, key_valid: Tensor | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
        """x: B × T × d, continuing after the cached keys/values. key_valid: B × (past+T) or None.

        Returns (output, the cache extended by x's keys/values, x's rotated queries).
        """
        past = 0 if cache is None else cache[0].shape[2]
        T = x.shape[1]
        q = split_heads(self.wq(x), self.n_heads)
        k, v = split_heads(self.wkv(x), 2 * self.n_kv_heads).chunk(2, dim=1)
        cos, sin = rotary_tables(self.head_dim, torch.arange(past, past + T, device=x.device), self.rope_base)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)
        mask = causal_mask(T, past, key_valid, x.device)
        return self.attend(q, k, v, mask, is_causal=mask is None and T > 1), (k, v), q

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """Queries over keys/values (grouped heads allowed), through the output map: B × Tq × d."""
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(merge_heads(out))


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w_gate_up = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.w_down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w_gate_up(x).chunk(2, dim=-1)
        return self.w_down(F.silu(gate) * up)


class BlockOutput(NamedTuple):
    output: Tensor  # B × T × d, the block's output y
    cache: tuple[Tensor, Tensor]  # the cache extended by the block's keys/values
    queries: Tensor  # the self-attention's rotated queries
    read: Any  # what the memory's read returned besides its addition (None: no read)


class Block(nn.Module):
    """Pre-norm block; with a memory read, h = x + SelfAttn(norm x) + read(norm x), then y = h + MLP(norm h)."""

    def __init__(self, cfg: ModelConfig, memory: Callable[[], nn.Module | None]):
        """memory: builds the block's memory module (called after the block's own, which fixes the init's order)."""
        super().__init__()
        d = cfg.d_model
        self.attn_norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.attn = SelfAttention(d, cfg.n_heads, cfg.n_kv_heads, cfg.rope_base)
        self.mlp_norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        self.mlp = SwiGLU(d, cfg.d_ff)
        self.memory = memory()

    def forward(self, x: Tensor, cache: tuple[Tensor, Tensor] | None, key_valid: Tensor | None,
                read: Callable[[Tensor], tuple[Tensor, Any]] | None = None) -> BlockOutput:
        """read: RMSNorm(x) → (what to add to the residual stream, anything to hand back as `read`)."""
        x_normed = self.attn_norm(x)
        attn_out, cache, queries = self.attn(x_normed, cache, key_valid)
        h = x + attn_out
        info = None
        if read is not None:
            added, info = read(x_normed)  # RMSNorm(x) is shared with self-attention
            h = h + added
        return BlockOutput(h + self.mlp(self.mlp_norm(h)), cache, queries, info)


def concat_valid(past: Tensor | None, n_past: int, new: Tensor | None, n_new: int, B: int, device) -> Tensor | None:
    """Validity of all cached plus new tokens, or None when every one of them is real."""
    if past is None and new is None:
        return None
    past = torch.ones(B, n_past, dtype=torch.bool, device=device) if past is None else past
    new = torch.ones(B, n_new, dtype=torch.bool, device=device) if new is None else new
    return torch.cat((past, new), dim=1)
