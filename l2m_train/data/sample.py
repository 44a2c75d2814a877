"""One training sample and how samples of different lengths become a padded batch."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from l2m_train.data import IGNORE


@dataclass
class Evidence:
    """Where a QA sample's evidence lies, as token spans [start, end) into its ids (for the retrieval loss)."""

    facts: list[tuple[int, int]]  # every fact sentence placed in the sample, in order
    supporting: list[int]  # indices into facts of those the answer rests on
    question: tuple[int, int]


@dataclass
class Sample:
    """Its context is ids[:loss_from], the tokens before the supervised ones: ids[1:loss_from] are the context's
    next-token targets (the context loss, `loss.context`). Pretraining windows supervise every token (loss_from=1),
    so they have none and nothing is counted twice; a QA sample's context is its story and question."""

    ids: np.ndarray  # every token of the sample, the answer included
    loss_from: int  # tokens ids[loss_from:] are supervised, each predicted from the tokens before it
    evidence: Evidence | None = None

    def __post_init__(self):
        if not 1 <= self.loss_from < len(self.ids):
            raise ValueError(f"loss_from={self.loss_from} must lie in 1..{len(self.ids) - 1}")

    @property
    def inputs(self) -> int:
        """Positions the model reads: all tokens but the last, which is only a label."""
        return len(self.ids) - 1


def collate(samples: list[Sample], length: int, context: bool = False) -> dict[str, torch.Tensor]:
    """B × length batch, right-padded; `valid` marks real tokens (padding is never written to memory).

    context: also `context_labels`, the context's next-token targets (IGNORE elsewhere: answer and padding), for
    the context loss; only asked for when that loss is on, so that a batch without it is what it always was."""
    B = len(samples)
    input_ids = torch.zeros(B, length, dtype=torch.long)
    labels = torch.full((B, length), IGNORE, dtype=torch.long)
    context_labels = torch.full((B, length), IGNORE, dtype=torch.long) if context else None
    valid = torch.zeros(B, length, dtype=torch.bool)
    for row, s in enumerate(samples):
        if s.inputs > length:
            raise ValueError(f"a sample of {s.inputs} input tokens does not fit {length} positions")
        ids = torch.as_tensor(np.asarray(s.ids, dtype=np.int64))
        input_ids[row, : s.inputs] = ids[:-1]
        labels[row, s.loss_from - 1 : s.inputs] = ids[s.loss_from :]
        if context:
            context_labels[row, : s.loss_from - 1] = ids[1 : s.loss_from]
        valid[row, : s.inputs] = True
    batch = {"input_ids": input_ids, "labels": labels}
    if context:
        batch["context_labels"] = context_labels
    if not valid.all():
        batch["valid"] = valid
    if any(s.evidence is not None for s in samples):
        batch.update(_collate_evidence([s.evidence for s in samples]))
    return batch


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Positions of a collated batch that hold real tokens (padding excluded)."""
    valid = batch.get("valid")
    return batch["input_ids"].numel() if valid is None else int(valid.sum())


def _collate_evidence(evidence: list[Evidence | None]) -> dict[str, torch.Tensor]:
    """fact_spans B × F × 2 and question_span B × 2 (-1 where absent), fact_support B × F."""
    F = max((len(e.facts) for e in evidence if e is not None), default=0)
    spans = torch.full((len(evidence), F, 2), -1, dtype=torch.long)
    support = torch.zeros(len(evidence), F, dtype=torch.bool)
    question = torch.full((len(evidence), 2), -1, dtype=torch.long)
    for row, e in enumerate(evidence):
        if e is not None and e.facts:
            spans[row, : len(e.facts)] = torch.as_tensor(e.facts, dtype=torch.long)
            support[row, list(e.supporting)] = True
            question[row] = torch.as_tensor(e.question)
    return {"fact_spans": spans, "fact_support": support, "question_span": question}
