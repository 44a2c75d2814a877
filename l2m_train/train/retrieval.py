"""The retrieval loss (docs/design.md §3): where the data marks the evidence (bAbI supporting facts), the memory read-out
at the question should single out the supporting facts among all the facts placed before it."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2m_train.model.memory import MemoryTrace

_MASKED = -1e4  # a finite score for excluded facts, so rows without evidence stay finite (then weigh 0)


@dataclass
class RetrievalResult:
    loss: Tensor  # InfoNCE, mean over samples with evidence (0 when none has)
    correct: Tensor  # samples with evidence whose top-scored fact is a supporting one
    evidence: Tensor  # samples with evidence: a question and a supporting fact before the question's segment
    samples: Tensor  # samples in the batch


class RetrievalHead(nn.Module):
    """Two small projection heads and InfoNCE with the supporting facts as positives.

    Question: the mean memory read-out over the question tokens at one layer (the top one that reads memory).
    Facts: the mean block input over each fact's tokens at that layer, stop-gradient. Candidates are the facts
    that end before the question's segment: the memory read there holds only earlier segments, so a fact in
    the question's own segment cannot be in it (attention sees it directly).
    """

    def __init__(self, d_model: int, dim: int, temperature: float, segment_len: int):
        super().__init__()
        self.question = nn.Linear(d_model, dim)
        self.fact = nn.Linear(d_model, dim)
        self.temperature, self.segment_len = temperature, segment_len

    def forward(self, traces: list[dict[int, MemoryTrace]], layer: int, batch: dict[str, Tensor]) -> RetrievalResult:
        readout = torch.cat([t[layer].readout for t in traces], dim=1)  # B × T × d
        hidden = torch.cat([t[layer].hidden for t in traces], dim=1).detach()
        B, T, _ = readout.shape
        spans, support, question_span = _evidence(batch, B, readout.device)
        q_start, q_end = question_span.unbind(-1)
        positions = torch.arange(T, device=readout.device)
        question = _mean_over(readout, (positions >= q_start[:, None]) & (positions < q_end[:, None]))
        in_fact = (positions >= spans[..., :1]) & (positions < spans[..., 1:])  # B × F × T
        facts = torch.einsum("bft,btd->bfd", in_fact.to(hidden.dtype), hidden) / in_fact.sum(-1, keepdim=True).clamp(min=1)
        candidate = (spans[..., 0] >= 0) & (spans[..., 1] <= (q_start // self.segment_len * self.segment_len)[:, None])
        positive = candidate & support
        has_evidence = positive.any(1) & (q_start >= 0)
        scores = torch.einsum("bp,bfp->bf", F.normalize(self.question(question).float(), dim=-1),
                              F.normalize(self.fact(facts).float(), dim=-1)) / self.temperature
        scores = scores.masked_fill(~candidate, _MASKED)
        per_sample = scores.logsumexp(1) - scores.masked_fill(~positive, _MASKED).logsumexp(1)
        weight = has_evidence.float()
        loss = (per_sample * weight).sum() / weight.sum().clamp(min=1)
        top_is_supporting = positive.gather(1, scores.argmax(1, keepdim=True)).squeeze(1)
        return RetrievalResult(loss, (top_is_supporting & has_evidence).sum(), has_evidence.sum(),
                               torch.tensor(B, device=readout.device))


def _evidence(batch: dict[str, Tensor], B: int, device) -> tuple[Tensor, Tensor, Tensor]:
    """fact spans B × F × 2, support B × F, question span B × 2, with -1 spans where absent and F ≥ 1.

    A batch without evidence still runs the heads (to a loss of 0), so every rank's backward touches them.
    """
    if "fact_spans" in batch and batch["fact_spans"].shape[1] > 0:
        return batch["fact_spans"], batch["fact_support"], batch["question_span"]
    return (torch.full((B, 1, 2), -1, device=device), torch.zeros(B, 1, dtype=torch.bool, device=device),
            torch.full((B, 2), -1, device=device))


def _mean_over(x: Tensor, mask: Tensor) -> Tensor:
    """x B × T × d averaged over the positions of mask B × T (zero where a row is empty)."""
    mask = mask.to(x.dtype)
    return (mask[..., None] * x).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
