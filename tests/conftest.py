import os
from pathlib import Path

import pytest
import torch

from l2m_train.config import MemoryConfig, ModelConfig
from l2m_train.model import MemoryDecoder

# DeepSpeed compiles its C++ ops on first use into a cache keyed by op name only: one per checkout, so that
# checkouts with other torch builds do not invalidate (or wait on) each other's.
os.environ["TORCH_EXTENSIONS_DIR"] = str(Path(__file__).resolve().parents[1] / ".torch_extensions")
# W&B off unless a test asks for it (wandb.mode=offline): a W&B run costs seconds per training, and tests train often.
os.environ["WANDB_MODE"] = "disabled"

KINDS = [("lm2", "segment"), ("rmt", "segment"), ("none", "segment"), ("none", "full")]


def tiny_config(kind: str = "lm2", attention: str = "segment", **overrides) -> ModelConfig:
    memory = MemoryConfig(kind=kind, slots=4, **overrides.pop("memory", {}))
    base = dict(vocab_size=64, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, segment_len=8,
                attention=attention, memory=memory)
    return ModelConfig(**{**base, **overrides})


def tiny_model(kind: str = "lm2", attention: str = "segment", seed: int = 0, **overrides) -> MemoryDecoder:
    torch.manual_seed(seed)
    model = MemoryDecoder(tiny_config(kind, attention, **overrides)).eval()
    # Start from non-trivial gates and memory so that a test sees the memory at work.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
