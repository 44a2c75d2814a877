"""train.compile: the decoder's per-segment step through torch.compile, applied from the training side.

The step (`MemoryDecoder._step`: every block over one segment's tokens, and the memory write when the segment ends) is
what the segment loop repeats, so it is what is compiled: the loop, the early backwards and the losses stay eager.
Shapes are static (a new shape, such as a shorter last segment, compiles once more) and the whole step must be one
graph (fullgraph: a graph break is an error, not a silent slowdown).
"""
from __future__ import annotations

import torch

from l2m_train.model import MemoryDecoder


def compile_segment_step(model: MemoryDecoder) -> None:
    """Replace `model`'s per-segment step by its compiled form (the weights and everything else stay shared)."""
    model._step = torch.compile(model._step, dynamic=False, fullgraph=True)
