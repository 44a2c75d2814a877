"""`train.init_from`: a fresh run that starts from another run's weights (pretrain, then fine-tune), with its own
optimizer, learning-rate schedule and data position, all fresh.

The source is a run directory (its latest complete checkpoint), a checkpoint directory (ZeRO shards are consolidated
as `l2m ckpt export` does) or an export. It must hold the model this run trains: the same tokenizer, parameter names
and shapes, and the same model config except RUNTIME_KEYS. The training heads of the auxiliary losses start fresh.
A model without memory may also start a memory model: the backbone from its weights, the memory parameters fresh
(a pretrained model that memory is added to, as RMT's recipe fine-tunes one).
A run directory that already holds a checkpoint resumes from it instead: init_from only ever starts a run.
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import asdict, dataclass, replace
from functools import reduce
from operator import getitem
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_only

from l2m_train.config import Config, ConfigError, MemoryConfig, ModelConfig
from l2m_train.data import DataError
from l2m_train.data.tokenizer import TextTokenizer
from l2m_train.model import MemoryDecoder
from l2m_train.model.kinds import MEMORY_KINDS
from l2m_train.train.checkpoint_layout import CheckpointError, weights_path
from l2m_train.train.export import load_whole
from l2m_train.train.state import config_differences, shape_difference

# What sets how the weights run, not what they are, so a fine-tune may change it: longer segments, full attention (for a
# model without memory), a larger rotary base for longer contexts, less BPTT or recomputation to save memory.
# memory.forget_bias only initialises b_f, which the source's weights replace; memory.convex_write ties lm2's g_in to
# its g_f, and memory.slot_competition normalises the write's attention over slots: the same parameters.
RUNTIME_KEYS = ("segment_len", "attention", "rope_base", "activation_checkpointing", "memory.bptt_segments",
                "memory.forget_bias", "memory.convex_write", "memory.slot_competition")


@dataclass
class InitWeights:
    source: Path  # the checkpoint or export they were read from
    fingerprint: str  # of the tensors: a checkpoint and its export have the same
    weights: dict[str, torch.Tensor]
    fresh: list[str]  # the parameters the weights lack, which start as initialised: a memory added to the source's model

    @property
    def record(self) -> dict[str, str]:
        """What every checkpoint's train state keeps: where the run's weights came from."""
        return {"source": str(self.source), "fingerprint": self.fingerprint}


def load_init(cfg: Config, tokenizer: TextTokenizer) -> InitWeights:
    """The weights a fresh run starts from, checked against its model and its data's tokenizer."""
    where = f"train.init_from={cfg.train.init_from}"
    try:
        source = weights_path(cfg.train.init_from).absolute()
        model, source_cfg, source_tokenizer = load_whole(source)
    except CheckpointError as err:
        raise CheckpointError(f"train.init_from: {err}") from None
    weights = model.state_dict()
    fresh = check_same_model(source_cfg.model, weights, cfg.model, where)
    if source_tokenizer.fingerprint != tokenizer.fingerprint:  # equal vocab sizes are not enough: ids would mean other text
        raise DataError(f"{where} was trained with another tokenizer ('{source_tokenizer.fingerprint[:16]}') than "
                        f"this run's data ('{tokenizer.fingerprint[:16]}'): fine-tune on data tokenized with its tokenizer")
    init = InitWeights(source, weights_fingerprint(weights), weights, fresh)
    added = f"; its memory ({len(fresh)} tensors) starts fresh" if fresh else ""
    say(f"{Path(cfg.run.root) / cfg.run.name} starts from the weights of {source} (fingerprint {init.fingerprint[:16]}){added}")
    return init


def check_same_model(source: ModelConfig, weights: dict[str, torch.Tensor], model: ModelConfig, where: str) -> list[str]:
    """Refuse, naming the first difference, weights that are not those of `model`, or of its backbone where a model
    without memory starts a memory model. The names of the parameters that start fresh (the added memory's)."""
    adds_memory = source.memory.kind == "none" != model.memory.kind
    backbone = replace(model, memory=MemoryConfig(kind="none")) if adds_memory else model
    changed = config_differences(_weight_keys(source, adds_memory), _weight_keys(backbone, adds_memory), "model")
    changed = [d for d in changed if d.startswith("model.memory.kind:")] or changed  # another kind: its keys differ too
    if changed:
        raise ConfigError(f"{where} holds another model ({changed[0]}): fine-tune the same model, or add a memory to "
                          f"one without; only model.{', model.'.join(RUNTIME_KEYS)} may differ")
    with torch.device("meta"):  # names and shapes, no memory
        expected, whole = MemoryDecoder(backbone).state_dict(), MemoryDecoder(model).state_dict()
    if difference := shape_difference(weights, expected):
        raise ConfigError(f"{where} holds another model: {difference}")
    return [name for name in whole if name not in expected]


def _weight_keys(model: ModelConfig, without_memory: bool = False) -> dict[str, Any]:
    """The model config's keys that decide the weights: the memory keys its kind uses (all of them without_memory: a
    memory added to a model without, so only the backbone's must agree), less RUNTIME_KEYS."""
    keys = asdict(model)
    used = MEMORY_KINDS[model.memory.kind].KEYS
    keys["memory"] = {} if without_memory else {k: v for k, v in keys["memory"].items() if k == "kind" or k in used}
    for key in RUNTIME_KEYS:
        *parents, leaf = key.split(".")
        reduce(getitem, parents, keys).pop(leaf, None)
    return keys


def weights_fingerprint(weights: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def keep_on_resume(cfg: Config, state: dict[str, Any], checkpoint: Path) -> Config:
    """A resume continues from its own checkpoint, so train.init_from is not applied; the config keeps the value the
    run started with, so that config.yaml still names where its weights came from."""
    started_from = state["config"]["train"].get("init_from", "")
    if cfg.train.init_from:
        record = state.get("init_from")
        origin = f"; its weights started from {record['source']}" if record else ""
        say(f"{checkpoint.parent.parent} resumes from {checkpoint.name}{origin}: train.init_from={cfg.train.init_from} "
            "applies only to a fresh run and is not loaded")
    return replace(cfg, train=replace(cfg.train, init_from=started_from))


def say(line: str) -> None:
    if rank_zero_only.rank == 0:  # every launched rank plans the run
        print(f"l2m: {line}", file=sys.stderr)
