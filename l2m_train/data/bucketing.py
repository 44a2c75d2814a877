"""Length bucketing: an optimizer step's samples, sorted by length, cut into micro-batches of a fixed capacity.

The model runs a batch segment by segment, so a micro-batch costs (its rows) × (the segments of its longest
sample). Every micro-batch keeps today's capacity, `train.micro_batch × data.segments` segments per rank, and
holds as many samples as fit: `capacity // S` per rank when its longest sample needs S segments, so short
samples come many to a micro-batch. Why a capacity, not a fixed number of samples per step: the work and the
memory of every micro-step stay those configured, and the real tokens of a step stay close to
`tokens_per_step`, so the step count (`train.max_tokens // tokens_per_step`), the learning-rate schedule and
curriculum thresholds keep their meaning when they count real tokens.

A step's window is drawn in the global order: the samples a step holds without bucketing (each as long as the
stage allows), then more while the window still fits the step. Sorting it, longest first and stable, puts
similar lengths together; the step's sample set does not depend on that arrangement. A global micro-batch
(one micro-step of every rank) is a contiguous run of the sorted window that every rank pads to the same
number of segments: ranks step through the model in lockstep, which ZeRO-3 needs (it gathers each module's
parameters collectively at every call) and which keeps DDP's ranks using the same parameters.
"""
from __future__ import annotations


def segments_of(inputs: int, segment_len: int) -> int:
    """Segments a sample of `inputs` positions runs through."""
    return -(-inputs // segment_len)


def _room(segments: int, capacity: int, world: int) -> int:
    """Samples a global micro-batch holds when its longest needs `segments` segments."""
    return world * (capacity // segments)


def fits(segments: list[int], steps: int, world: int, capacity: int) -> bool:
    """Can `segments` (longest first) be cut, in order, into `steps` global micro-batches, each holding at least one
    sample per rank and at most the room its longest sample leaves?

    With at most k micro-batches the cuts can end anywhere in [k·world, hi_k], where hi_k follows by filling each
    micro-batch to its room (the room grows as samples shorten, so no end in between is missed).
    """
    n, end = len(segments), 0
    if n < steps * world:
        return False
    for _ in range(steps):
        if end >= n:
            break
        end += _room(segments[end], capacity, world)
    return end >= n


def cut(segments: list[int], steps: int, world: int, capacity: int) -> list[tuple[int, int]]:
    """[start, end) of each global micro-batch for `segments` (longest first) that `fits`: each filled to its room
    while every micro-batch after it keeps one sample per rank."""
    bounds, start = [], 0
    for k in range(steps):
        end = min(start + _room(segments[start], capacity, world), len(segments) - world * (steps - k - 1))
        bounds.append((start, end))
        start = end
    return bounds


def rank_slice(start: int, end: int, rank: int, world: int) -> slice:
    """Rank `rank`'s rows of the global micro-batch [start, end): as even as the count allows, at least one each."""
    n = end - start
    return slice(start + rank * n // world, start + (rank + 1) * n // world)
