"""`l2m ckpt export`: any checkpoint (ZeRO shards or not) as one directory that inference loads without DeepSpeed:
model.safetensors (fp32), config.yaml and tokenizer.json.
"""
from __future__ import annotations

import os
from pathlib import Path

from safetensors.torch import save_model

from l2m_train.config import Config, ConfigError, from_dict, to_yaml
from l2m_train.data import DataError
from l2m_train.data.tokenizer import TextTokenizer
from l2m_train.io import publish_dir, publish_text
from l2m_train.model import MemoryDecoder
from l2m_train.train.checkpoint_layout import (
    CONFIG,
    LIGHTNING,
    WEIGHTS,
    CheckpointError,
    is_complete,
    load_model,
    model_from_weights,
    read_state,
    weights_path,
)


def export(source: str | Path, out: str | Path) -> Path:
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose another --out or remove it")
    model, cfg, tokenizer = load_whole(source)
    with publish_dir(out) as tmp:
        save_model(model, str(tmp / WEIGHTS))  # stores tied weights once
        publish_text(tmp / CONFIG, to_yaml(cfg))
        tokenizer.save(tmp)
    return out


def load_whole(source: str | Path) -> tuple[MemoryDecoder, Config, TextTokenizer]:
    """`load_model` for any checkpoint or export, ZeRO shards included (consolidated)."""
    path = weights_path(source)
    if is_complete(path) and read_state(path)["strategy"] == "deepspeed":
        return _consolidate(path)
    return load_model(path)  # the weights are whole in an export, or a single-device or DDP checkpoint


def _consolidate(checkpoint: Path):
    """The fp32 model from ZeRO shards, with DeepSpeed's own tool."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # consolidation needs no GPU
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError:
        raise CheckpointError(f"{checkpoint} holds DeepSpeed ZeRO shards; consolidating them needs DeepSpeed: "
                              "pip install 'l2m_train[deepspeed]'") from None
    try:
        cfg = from_dict(read_state(checkpoint)["config"])
        tokenizer = TextTokenizer.load(checkpoint)
    except (ConfigError, DataError) as err:
        raise CheckpointError(f"{checkpoint}: {err}") from None
    weights = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint / LIGHTNING), tag="checkpoint")
    return model_from_weights(cfg, weights, checkpoint), cfg, tokenizer
