"""Next-token loss over unmasked labels, overall and by segment index."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from l2m_train.data import IGNORE


@dataclass
class LMLoss:
    loss: Tensor  # mean over supervised positions
    per_segment: Tensor  # mean per segment index; NaN where a segment has no supervised position
    correct: Tensor  # supervised positions predicted right (argmax)
    count: Tensor  # supervised positions
    exact: Tensor  # samples whose supervised positions are all right (a QA answer matched exactly)
    samples: Tensor  # samples with a supervised position
    exact_rows: Tensor  # B, which samples those are


def lm_loss(logits: Tensor, labels: Tensor, segment_len: int) -> LMLoss:
    """logits B × T × V, labels B × T with IGNORE where there is no loss."""
    return lm_stats(*token_losses(logits, labels), labels, segment_len)


def token_losses(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per position, B × T: the cross-entropy (0 where unsupervised) and whether the argmax is the label."""
    B, T, V = logits.shape
    token_loss = F.cross_entropy(logits.reshape(-1, V).float(), labels.reshape(-1), ignore_index=IGNORE, reduction="none")
    return token_loss.view(B, T), logits.argmax(-1) == labels


def answer_and_context_losses(logits: Tensor, labels: Tensor, context_labels: Tensor | None
                              ) -> tuple[Tensor, Tensor | None, Tensor]:
    """`token_losses` of labels and of context_labels (None: no context loss), from one cross-entropy as they never
    share a position: the labels' losses, the context's, and whether the argmax is right (read at labels' positions)."""
    if context_labels is None:
        loss, right = token_losses(logits, labels)
        return loss, None, right
    answer = labels != IGNORE
    both, right = token_losses(logits, torch.where(answer, labels, context_labels))
    return both.where(answer, 0), both.where(~answer, 0), right


def lm_stats(token_loss: Tensor, right: Tensor, labels: Tensor, segment_len: int) -> LMLoss:
    """The loss and its statistics from `token_losses` over whole samples (B × T)."""
    T = labels.shape[1]
    supervised = labels != IGNORE
    count = supervised.sum()
    loss = token_loss.sum() / count.clamp(min=1)
    segment_of = torch.arange(T, device=labels.device) // segment_len
    n_segments = (T + segment_len - 1) // segment_len
    seg_sum = torch.zeros(n_segments, device=labels.device).index_add_(0, segment_of, token_loss.detach().sum(0))
    seg_count = torch.zeros(n_segments, device=labels.device).index_add_(0, segment_of, supervised.sum(0).float())
    right = right & supervised
    has_label = supervised.any(1)
    exact_rows = (right == supervised).all(1) & has_label
    return LMLoss(loss, seg_sum / seg_count, right.sum(), count, exact_rows.sum(), has_label.sum(), exact_rows)
