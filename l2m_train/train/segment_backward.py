"""The model over a batch with its LM loss, running the backward of each piece of a sample that the BPTT window
cuts off as soon as it is computed: a training step then holds the activations of one window, not of the whole
sample, and its gradients are those of one backward over the whole sample.

With `memory.bptt_segments = k ≥ 0` every segment but the last k + 1 starts from detached memory (and segments
without memory never reach each other), so nothing later reads such a segment's graph. Its loss's gradient is
taken there (`torch.autograd.grad`, which frees the graph and leaves `.grad`, DDP's and DeepSpeed's hooks alone)
and summed; the returned loss carries it as Σ⟨p, g⟩ with g constant, whose gradient is g. So one ordinary
backward of the returned loss, by whatever strategy trains, applies and synchronises all of it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from l2m_train.data import IGNORE
from l2m_train.model import MemoryDecoder
from l2m_train.model.decoder import mean_gates
from l2m_train.model.memory import MemoryTrace
from l2m_train.train.losses import LMLoss, lm_stats, token_losses


@dataclass
class LMForward:
    loss: Tensor  # to backward: the LM loss, with the gradients of pieces already released carried as Σ⟨p, g⟩
    lm: LMLoss  # the LM loss (its value over the whole batch) and its statistics
    gates: dict[str, Tensor]
    aux: list[dict[int, MemoryTrace]] | None


def lm_forward(model: MemoryDecoder, input_ids: Tensor, labels: Tensor, valid: Tensor | None = None,
               keep_aux: bool = False, release: Sequence[Tensor] = ()) -> LMForward:
    """release: the parameters whose gradients early backwards take (none: one graph for the whole batch)."""
    if release and keep_aux:  # the auxiliary losses read across segments and would need the released graphs
        raise ValueError("early backwards cannot be combined with the auxiliary losses")
    count = (labels != IGNORE).sum().clamp(min=1)
    losses, rights, gates, aux, released = [], [], [], [], None
    for piece in model.pieces(input_ids, valid=valid, keep_aux=keep_aux):
        loss, right = token_losses(model.logits(piece.hidden), labels[:, piece.start:piece.end])
        if release and piece.cut:
            released = _accumulate(released, torch.autograd.grad(loss.sum() / count, release, allow_unused=True))
            loss = loss.detach()
        losses.append(loss)
        rights.append(right)
        gates.append(piece.gates)
        aux.append(piece.aux)
    lm = lm_stats(torch.cat(losses, dim=1), torch.cat(rights, dim=1), labels, model.cfg.segment_len)
    total = lm.loss
    if released is not None:
        total = total + sum((p * g.to(p.dtype)).sum() for p, g in zip(release, released) if g is not None)
    return LMForward(total, lm, mean_gates(gates), aux if keep_aux else None)


def _accumulate(total: list[Tensor | None] | None, grads: tuple[Tensor | None, ...]) -> list[Tensor | None]:
    """total + grads in fp32, in place where total exists (None: a parameter no piece has reached yet)."""
    if total is None:
        return [None if g is None else g.float() for g in grads]
    for i, g in enumerate(grads):
        if g is not None:
            total[i] = g.float() if total[i] is None else total[i].add_(g)
    return total
