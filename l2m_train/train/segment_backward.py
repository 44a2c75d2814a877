"""The model over a batch with its LM loss (and context loss), running the backward of each piece of a sample that the
BPTT window cuts off as soon as it is computed: a training step then holds the activations of one window, not of the
whole sample, and its gradients are those of one backward over the whole sample.

With `memory.bptt_segments = k ≥ 0` every segment but the last k + 1 starts from detached memory (and segments
without memory never reach each other), so nothing later reads such a segment's graph. Its loss's gradient is
taken there (`torch.autograd.grad`, which frees the graph and leaves `.grad`, DDP's and DeepSpeed's hooks alone)
and summed in fp32; the returned loss carries it as a term of value 0 whose backward hands those sums to the
parameters (`_CarriedGradients`). So one ordinary backward of the returned loss, by whatever strategy trains,
applies and synchronises all of it. The price: the sum, one fp32 copy of the gradients (two while a segment's
gradient is being added), held on every rank. The sum and the hand-over are for-each ops (a few kernel launches for
all parameters, not a few per parameter), and nothing here reads a device value on the host.
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
from l2m_train.train.losses import LMLoss, answer_and_context_losses, lm_stats


@dataclass
class LMForward:
    loss: Tensor  # to backward: LM + context_weight · context, the gradients already taken carried as Σ⟨p, g⟩ − its value
    lm: LMLoss  # the LM loss (its value over the whole batch) and its statistics
    context: Tensor | None  # the context loss over the whole batch, when context labels were given
    gates: dict[str, Tensor]
    aux: list[dict[int, MemoryTrace]] | None


def lm_forward(model: MemoryDecoder, input_ids: Tensor, labels: Tensor, valid: Tensor | None = None,
               keep_aux: bool = False, early_params: Sequence[Tensor] = (), context_labels: Tensor | None = None,
               context_weight: float = 0.0) -> LMForward:
    """early_params: the parameters whose gradients are taken early (none: one graph for the whole batch).
    Their gradients are taken unscaled, so not with fp16, whose loss scaling they would miss (they underflow).

    context_labels: the context's next-token targets (IGNORE elsewhere); their mean cross-entropy over the batch, the
    context loss, joins the loss times context_weight. A piece's share of either loss is its sum over the whole
    batch's count, so the pieces' early gradients add up to the whole batch's.
    """
    if early_params and keep_aux:  # the auxiliary losses read across segments and would need the released graphs
        raise ValueError("early backwards cannot be combined with the auxiliary losses")
    count = (labels != IGNORE).sum().clamp(min=1)
    context_count = None if context_labels is None else (context_labels != IGNORE).sum().clamp(min=1)

    def share(loss: Tensor, context: Tensor | None) -> Tensor:  # a piece's token losses → its share of the loss
        answer = loss.sum() / count
        return answer if context is None else answer + context_weight * context.sum() / context_count

    losses, contexts, rights, gates, aux, early = [], [], [], [], [], None
    for piece in model.pieces(input_ids, valid=valid, keep_aux=keep_aux):
        span = slice(piece.start, piece.end)
        loss, context, right = answer_and_context_losses(
            model.logits(piece.hidden), labels[:, span], None if context_labels is None else context_labels[:, span])
        if early_params and piece.cut:
            # A backward, as Lightning's, outside autocast; named for torch.profiler (benchmarks/profile_step.py).
            with torch.autocast(input_ids.device.type, enabled=False), torch.profiler.record_function("early_backward"):
                early = _accumulate(early, torch.autograd.grad(share(loss, context), early_params, allow_unused=True))
            loss, context = loss.detach(), None if context is None else context.detach()
        losses.append(loss)
        contexts.append(context)
        rights.append(right)
        gates.append(piece.gates)
        aux.append(piece.aux)
    lm = lm_stats(torch.cat(losses, dim=1), torch.cat(rights, dim=1), labels, model.cfg.segment_len)
    total, context = lm.loss, None
    if context_labels is not None:
        context = torch.cat(contexts, dim=1).sum() / context_count
        total = total + context_weight * context
    if early is not None:
        reached = [i for i, g in enumerate(early) if g is not None]
        total = total + _CarriedGradients.apply([early[i] for i in reached], *[early_params[i] for i in reached])
    return LMForward(total, lm, context, mean_gates(gates), aux if keep_aux else None)


class _CarriedGradients(torch.autograd.Function):
    """A scalar 0 over the parameters whose backward gives each its early gradient (times the incoming gradient):
    the gradient of Σ⟨p, g⟩ − its value, without computing that sum."""

    @staticmethod
    def forward(ctx, grads: list[Tensor], *params: Tensor) -> Tensor:
        ctx.grads = grads
        return params[0].new_zeros((), dtype=torch.float32)

    @staticmethod
    def backward(ctx, scale: Tensor) -> tuple[None, ...] | tuple[Tensor, ...]:
        grads, ctx.grads = ctx.grads, None  # autograd casts each to its parameter's dtype
        return None, *torch._foreach_mul(grads, scale)


def _accumulate(total: list[Tensor | None] | None, grads: tuple[Tensor | None, ...]) -> list[Tensor | None]:
    """total + grads in fp32, in place (None: a parameter no piece has reached yet)."""
    total = [None] * len(grads) if total is None else total
    first = [i for i, g in enumerate(grads) if g is not None and total[i] is None]
    more = [i for i, g in enumerate(grads) if g is not None and total[i] is not None]
    if first:  # copies (×1): autograd may hand back a tensor it shares
        for i, copy in zip(first, torch._foreach_mul([grads[i].float() for i in first], 1.0)):
            total[i] = copy
    if more:
        torch._foreach_add_([total[i] for i in more], [grads[i] for i in more])
    return total
