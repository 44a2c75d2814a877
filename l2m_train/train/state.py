"""The train state saved with every checkpoint (docs/design.md §5), and the checks that refuse a resume that would not continue
the same run. Plain JSON: readable by people and tools, loaded without unpickling.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from l2m_train.config import Config, ConfigError
from l2m_train.data import json_fingerprint
from l2m_train.data.curriculum import stage_at
from l2m_train.data.module import TrainingData
from l2m_train.train.checkpoint_layout import LIGHTNING, UNIVERSAL, CheckpointError, first_line, is_complete
from l2m_train.train.module import LM2Module
from l2m_train.train.strategy import strategy_name


def config_dict(cfg: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def train_state(cfg: Config, data: TrainingData, step: int, wandb_run_id: str | None,
                init_from: dict[str, str] | None) -> dict[str, Any]:
    """What a checkpoint at `step` records beside the weights and the optimizer (written by rank 0)."""
    config = config_dict(cfg)
    return {
        "step": step,
        "tokens": data.state.tokens,  # real input tokens trained, padding excluded: the curriculum's clock
        "data": data.state.as_dict(),  # the global data cursor
        "stage": stage_at(cfg.data.stages, data.state.tokens),
        "world_size": cfg.world_size,
        "strategy": strategy_name(cfg),
        "zero_stage": cfg.train.deepspeed.stage if strategy_name(cfg) == "deepspeed" else None,
        "wandb_run_id": wandb_run_id,  # a resumed run continues this W&B run
        "init_from": init_from,  # where the run's first weights came from (train.init_from): source and fingerprint
        "hashes": {"config": json_fingerprint(config), "model": json_fingerprint(config["model"]),
                   "data": data.fingerprints},  # data.fingerprints holds the tokenizer's and each source's manifest
        "config": config,
    }


def check_resume(state: dict[str, Any], cfg: Config, data: TrainingData, checkpoint: Path) -> bool:
    """Refuse, naming the difference, a resume with another model or data, or from weights that are not this
    model's; True when it needs the universal form."""
    config = config_dict(cfg)
    if json_fingerprint(config["model"]) != state["hashes"]["model"]:
        changed = ", ".join(config_differences(state["config"]["model"], config["model"], "model")[:4])
        raise ConfigError(f"{checkpoint} was trained with another model config ({changed}): resume with the same "
                          f"model, or choose a new run.name")
    data.check_fingerprints(state["hashes"]["data"])
    saved_scale = state["config"]["optim"].get("memory_lr_scale", 1.0)  # checkpoints from before the key: 1
    if saved_scale != cfg.optim.memory_lr_scale:  # it sets the optimizer's groups, which the checkpoint holds
        raise ConfigError(f"{checkpoint} was trained with optim.memory_lr_scale={saved_scale}, this run sets "
                          f"{cfg.optim.memory_lr_scale}: resume with the same, or start a new run from its weights "
                          f"(train.init_from)")
    name, stage = strategy_name(cfg), cfg.train.deepspeed.stage
    if (state["strategy"] == "deepspeed") != (name == "deepspeed"):
        raise ConfigError(f"{checkpoint} was saved with train.strategy={state['strategy']}, this run uses {name}: "
                          f"resume with the same kind of strategy")
    saved_stage = state["zero_stage"]
    if name == "deepspeed" and saved_stage != stage and 3 in (saved_stage, stage):  # measured with DeepSpeed 0.19
        raise ConfigError(f"{checkpoint} was saved with ZeRO-{saved_stage}; DeepSpeed cannot resume a run on another ZeRO "
                          f"stage to or from ZeRO-3, even from its universal form: resume with train.deepspeed.stage={saved_stage}")
    reshaped = name == "deepspeed" and (state["world_size"], saved_stage) != (cfg.world_size, stage)
    if reshaped and not is_complete(checkpoint / UNIVERSAL):
        raise ConfigError(f"{checkpoint} was saved on {state['world_size']} ranks with ZeRO-{saved_stage}, this "
                          f"run has {cfg.world_size} with ZeRO-{stage}: convert it first with `l2m ckpt universal {checkpoint}`")
    check_weights(checkpoint, cfg)
    return reshaped


def config_differences(saved: Any, now: Any, key: str) -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        return [d for k in sorted(set(saved) | set(now)) for d in config_differences(saved.get(k), now.get(k), f"{key}.{k}")]
    return [] if saved == now else [f"{key}: {saved} in the checkpoint, {now} now"]


def check_weights(checkpoint: Path, cfg: Config) -> None:
    """Refuse a checkpoint whose tensors are not those this run trains (e.g. a checkpoint copied in from another run):
    names and shapes only, the file memory-mapped, nothing read. DeepSpeed's shards are left to DeepSpeed."""
    path = checkpoint / LIGHTNING
    if not path.is_file():
        return
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
    except Exception as err:  # not a zip of tensors, or no state_dict
        raise CheckpointError(f"{path} is not a readable checkpoint: {first_line(err)}") from None
    with torch.device("meta"):  # names and shapes, no memory
        expected = LM2Module(config_dict(cfg)).state_dict()
    if difference := shape_difference(saved, expected):
        raise CheckpointError(f"{checkpoint} holds the weights of another model ({difference}): resume with the model "
                              "and losses it was trained with, or choose a new run.name")


def shape_difference(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str | None:
    """The first tensor that only one side has, or that differs in shape, in words; None when all agree."""
    for name in [*expected, *(n for n in weights if n not in expected)]:
        there = tuple(weights[name].shape) if name in weights else None
        here = tuple(expected[name].shape) if name in expected else None
        if there != here:
            return f"parameter {name} is {_shape(there)} in the checkpoint, {_shape(here)} now"
    return None


def _shape(shape: tuple[int, ...] | None) -> str:
    return "absent" if shape is None else "×".join(map(str, shape)) or "a scalar"


def rng_state() -> dict[str, Any]:
    """This process's generators as JSON-able lists."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state().tolist(),
            "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
            "numpy": [kind, keys.tolist(), pos, has_gauss, gauss], "python": [version, list(internal), gauss_next]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
