"""Loading a trained model back from a training checkpoint, without unpickling arbitrary objects."""
from __future__ import annotations

from pathlib import Path

import torch

from l2m_train.config import Config, ConfigError, from_dict
from l2m_train.data import DataError
from l2m_train.data.tokenizer import TextTokenizer
from l2m_train.model import MemoryDecoder


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not ours, described in one line."""


def load_model(path: str | Path) -> tuple[MemoryDecoder, Config, TextTokenizer]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # safe loader: tensors and plain containers only
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable checkpoint: {str(err).splitlines()[0]}") from None
    config = ckpt.get("hyper_parameters", {}).get("config") if isinstance(ckpt, dict) else None
    if config is None or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not an l2m_train checkpoint (no model config or weights inside)")
    try:
        cfg = from_dict(config)
    except ConfigError as err:
        raise CheckpointError(f"{path} holds an invalid config: {err}") from None
    model = MemoryDecoder(cfg.model)
    weights = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit its model config: {str(err).splitlines()[0]}") from None
    data_state = ckpt.get("TrainingData", {})  # the data module's state holds the tokenizer as JSON text
    try:
        tokenizer = TextTokenizer.from_json(data_state["tokenizer"]) if "tokenizer" in data_state else TextTokenizer.byte()
    except DataError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return model.eval(), cfg, tokenizer
