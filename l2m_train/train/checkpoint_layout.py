"""Checkpoints on disk: their layout, the latest complete one, and loading a model for inference (without
DeepSpeed and without unpickling arbitrary objects). Nothing here imports Lightning.

<run>/checkpoints/step-00000100/   one checkpoint, published by renaming its finished temporary directory
    lightning.ckpt                 Lightning's checkpoint: a file, or under DeepSpeed a directory of ZeRO shards
    state.json                     the train state (l2m_train.train.state)
    rng/rank-<r>.json              each rank's random number generators
    tokenizer.json
    complete                       written last: a directory without it is not a checkpoint
    universal/                     `l2m ckpt universal`: the same, resumable on any number of ranks
An export (`l2m ckpt export`) is a directory with model.safetensors, config.yaml and tokenizer.json.
"""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_model as load_safetensors

from l2m_train.config import Config, ConfigError, from_dict
from l2m_train.data import DataError
from l2m_train.data.tokenizer import TextTokenizer
from l2m_train.model import MemoryDecoder

CHECKPOINTS, LIGHTNING, STATE, COMPLETE, UNIVERSAL = "checkpoints", "lightning.ckpt", "state.json", "complete", "universal"
WEIGHTS, CONFIG = "model.safetensors", "config.yaml"
_STEP = re.compile(r"step-(\d+)")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not ours, described in one line."""


def first_line(err: BaseException) -> str:
    """An error in one line: its message's first line, or its type when it has no message (EOFError on an empty file)."""
    return next(iter(str(err).splitlines()), "") or type(err).__name__


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file()


def complete_checkpoints(directory: Path) -> list[Path]:
    """The complete checkpoints in a checkpoints/ folder, oldest first."""
    found = [(int(m[1]), p) for p in directory.glob("step-*") if (m := _STEP.fullmatch(p.name)) and is_complete(p)]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = complete_checkpoints(run_dir / CHECKPOINTS)
    return found[-1] if found else None


def damage(checkpoint: Path) -> str | None:
    """Why a complete checkpoint cannot be resumed from, or None. Cheap: its train state parses, and every file of
    Lightning's part (one file, or DeepSpeed's shards) is a torch archive whose zip directory, at its end, is whole,
    which a truncated or empty file's is not."""
    try:
        read_state(checkpoint)
    except CheckpointError as err:
        return str(err)
    lightning = checkpoint / LIGHTNING
    files = [lightning] if lightning.is_file() else sorted(lightning.rglob("*.pt"))
    if not files:
        return f"{lightning} is missing"
    for file in files:
        try:
            zipfile.ZipFile(file).close()
        except (OSError, zipfile.BadZipFile) as err:
            return f"{file} is truncated or damaged ({file.stat().st_size:,} bytes: {first_line(err)})"
    return None


def newest_resumable(run_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint without damage, and the newer ones with theirs."""
    damaged = []
    for checkpoint in reversed(complete_checkpoints(run_dir / CHECKPOINTS)):
        if (why := damage(checkpoint)) is None:
            return checkpoint, damaged
        damaged.append((checkpoint, why))
    return None, damaged


def resolve(path: str | Path) -> Path:
    """A complete checkpoint directory, given one or a run directory (its latest); anything else is one clear line."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if is_complete(path):
        return path
    if (path / CHECKPOINTS).is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"run directory {path} holds no complete checkpoint yet")
        return latest
    if _STEP.fullmatch(path.name) or path.name.endswith(".partial"):
        raise CheckpointError(f"{path} is an incomplete checkpoint (its write never finished); use an earlier one")
    raise CheckpointError(f"{path} is not a checkpoint: expected a checkpoint directory (<run>/checkpoints/step-N), "
                          "a run directory, or an export")


def weights_path(path: str | Path) -> Path:
    """Where a model's weights are read from: an export or a Lightning .ckpt file as given, else the checkpoint
    `resolve` finds (a run directory's latest)."""
    path = Path(path)
    return path if path.is_file() or (path / WEIGHTS).is_file() else resolve(path)


def read_state(checkpoint: Path) -> dict:
    try:
        return json.loads((checkpoint / STATE).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{checkpoint} has no readable train state: {first_line(err)}") from None


def load_model(path: str | Path) -> tuple[MemoryDecoder, Config, TextTokenizer]:
    """The model, its config and tokenizer from an export, a checkpoint or run directory, or a Lightning .ckpt file."""
    path = weights_path(path)
    if path.is_file():
        return _from_lightning_file(path)
    if (path / WEIGHTS).is_file():
        return _from_export(path)
    if read_state(path)["strategy"] == "deepspeed":
        raise CheckpointError(f"{path} holds DeepSpeed ZeRO shards: consolidate them with `l2m ckpt export "
                              f"{path} --out DIR` and use DIR")
    return _from_lightning_file(path / LIGHTNING)


def _from_export(path: Path) -> tuple[MemoryDecoder, Config, TextTokenizer]:
    try:
        cfg = from_dict(OmegaConf.to_container(OmegaConf.load(path / CONFIG)))
        model = MemoryDecoder(cfg.model)
        load_safetensors(model, path / WEIGHTS)  # tensors only; restores tied weights that the file stores once
        return model.eval(), cfg, TextTokenizer.load(path)
    except (ConfigError, DataError) as err:
        raise CheckpointError(f"{path}: {err}") from None
    except Exception as err:  # a missing config, a corrupt file, weights that do not fit the config
        raise CheckpointError(f"{path} is not a readable export: {first_line(err)}") from None


def model_from_weights(cfg: Config, state_dict: dict[str, torch.Tensor], where: Path) -> MemoryDecoder:
    """The model from a LightningModule's state dict (its keys start with 'model.'; training heads are left out)."""
    model = MemoryDecoder(cfg.model)
    weights = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{where}: weights do not fit its model config: {first_line(err)}") from None
    return model.eval()


def _from_lightning_file(path: Path) -> tuple[MemoryDecoder, Config, TextTokenizer]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # safe loader: tensors and plain containers only
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable checkpoint: {first_line(err)}") from None
    config = ckpt.get("hyper_parameters", {}).get("config") if isinstance(ckpt, dict) else None
    if config is None or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not an l2m_train checkpoint (no model config or weights inside)")
    try:
        cfg = from_dict(config)
    except ConfigError as err:
        raise CheckpointError(f"{path} holds an invalid config: {err}") from None
    model = model_from_weights(cfg, ckpt["state_dict"], path)
    data_state = ckpt.get("TrainingData", {})  # the data module's state holds the tokenizer as JSON text
    try:
        tokenizer = TextTokenizer.from_json(data_state["tokenizer"]) if "tokenizer" in data_state else TextTokenizer.byte()
    except DataError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return model, cfg, tokenizer
