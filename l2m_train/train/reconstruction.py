"""The reconstruction loss (docs/design.md §3): a segment's memory read should return what attention over the raw
previous segment would have returned, so the write keeps what later segments need."""
from __future__ import annotations

import torch
from torch import Tensor

from l2m_train.model.memory import MemoryTrace


def reconstruction_loss(traces: list[dict[int, MemoryTrace]], layers: list[int]) -> Tensor:
    """Mean over layers, segments s ≥ 1 and real tokens of ‖student − teacher‖².

    traces: one dict per whole segment (a forward over whole segments from a fresh state). student = the read
    of segment s's queries over the memory; teacher = the same queries over segment s−1's own keys and values
    at that layer. Queries and teacher are stop-gradient: the loss trains the write path and the memory.
    All segments of a layer go through one attention call, stacked along the batch.
    """
    if len(traces) < 2:  # a single segment: nothing earlier to reconstruct
        return traces[0][layers[0]].readout.new_zeros(())
    total = count = 0
    for layer in layers:
        previous, current = [step[layer] for step in traces[:-1]], [step[layer] for step in traces[1:]]
        attend = current[0].attend
        queries = torch.cat([t.queries for t in current]).detach()
        student = attend(queries, *(torch.cat(kv) for kv in zip(*(t.memory for t in current))))
        with torch.no_grad():
            keys, values = (torch.cat(kv) for kv in zip(*(t.tokens for t in previous)))
            teacher = attend(queries, keys, values, _key_mask([t.valid for t in previous]))
        error = (student.float() - teacher.float()).pow(2).sum(-1)  # (S−1)·B × T
        real = _stack_valid([t.valid for t in current], error)
        total = total + (error * real).sum()
        count = count + real.sum()
    return total / count.clamp(min=1)


def _stack_valid(valid: list[Tensor | None], like: Tensor) -> Tensor:
    return torch.ones_like(like) if valid[0] is None else torch.cat(valid).to(like.dtype)


def _key_mask(valid: list[Tensor | None]) -> Tensor | None:
    """(S−1)·B × 1 × 1 × T; a segment of padding only attends uniformly (its readers are padding too, and masked)."""
    if valid[0] is None:
        return None
    keys = torch.cat(valid)
    return (keys | ~keys.any(1, keepdim=True))[:, None, None, :]
