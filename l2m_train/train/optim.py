"""AdamW with weight decay on matrices only, and a warmup + cosine learning rate by tokens."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from l2m_train.config import OptimConfig


def adamw(model: nn.Module, cfg: OptimConfig, memory: Iterable[nn.Parameter] = (), loss_scaled: bool = False) -> torch.optim.AdamW:
    """Weight decay on matrices only; `memory` (the memory kind's parameters) in groups of their own at
    lr · cfg.memory_lr_scale where that scale is not 1 (so runs without it keep the groups their checkpoints hold).
    loss_scaled: a loss scaler runs (fp16 mixed precision), so the plain implementation (below)."""
    # named_parameters lists tied weights once. Learned initial memories are states, not weights: no decay.
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    apart = {id(p) for p in memory} if cfg.memory_lr_scale != 1 else set()
    groups = []
    for is_memory, lr in ((False, cfg.lr), (True, cfg.lr * cfg.memory_lr_scale)):
        params = [(n, p) for n, p in named if (id(p) in apart) == is_memory]
        decay = [p for n, p in params if p.dim() >= 2 and not n.endswith("initial")]
        no_decay = [p for n, p in params if p.dim() < 2 or n.endswith("initial")]
        groups += [{"params": ps, "weight_decay": wd, "lr": lr} for ps, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)) if ps]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused_on([p for _, p in named], loss_scaled))


def fused_on(params: list[torch.Tensor], loss_scaled: bool = False) -> bool:
    """The fused AdamW kernel (one launch for all parameters) where every parameter is on CUDA; on CPU the plain
    (for-each) implementation, which the fused CPU kernel does not beat and whose results the CPU tests pin. Not
    under a loss scaler: the fused kernel unscales inside its step, so Lightning leaves the gradients scaled
    until then, and clipping them before it (LM2Module.on_before_optimizer_step) would clip scaled gradients."""
    return bool(params) and all(p.is_cuda for p in params) and not loss_scaled


def lr_at(tokens: int, cfg: OptimConfig, total_tokens: int) -> float:
    """Linear warmup to cfg.lr over warmup_tokens, then cosine down to lr · min_lr_ratio at total_tokens."""
    if tokens < cfg.warmup_tokens:
        return cfg.lr * tokens / cfg.warmup_tokens
    progress = min(1.0, (tokens - cfg.warmup_tokens) / max(1, total_tokens - cfg.warmup_tokens))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
