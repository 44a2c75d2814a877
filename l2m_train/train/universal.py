"""`l2m ckpt universal`: a ZeRO checkpoint in DeepSpeed's universal form, which resumes on any number of ranks.

DeepSpeed's own converter writes it into <checkpoint>/universal/, published atomically; a resume on another number
of ranks (or another ZeRO stage) loads it with `checkpoint.load_universal` (train/strategy.py).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from l2m_train.io import publish_dir, publish_text
from l2m_train.train.checkpoint_layout import COMPLETE, LIGHTNING, UNIVERSAL, CheckpointError, is_complete, read_state, resolve


def convert(source: str | Path) -> Path:
    checkpoint = resolve(source)
    strategy = read_state(checkpoint)["strategy"]
    if strategy != "deepspeed":
        raise CheckpointError(f"{checkpoint} was saved with train.strategy={strategy}, not as ZeRO shards: it resumes "
                              "on any number of ranks as it is")
    out = checkpoint / UNIVERSAL
    if is_complete(out):
        return out
    if importlib.util.find_spec("deepspeed") is None:
        raise CheckpointError("converting ZeRO shards needs DeepSpeed: pip install 'l2m_train[deepspeed]'")
    with publish_dir(out) as tmp:
        # --inject_missing_state: Lightning's checkpoints lack the universal-checkpoint info DeepSpeed's own carry.
        command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--inject_missing_state",
                   "--input_folder", str(checkpoint / LIGHTNING / "checkpoint"), "--output_folder", str(tmp / "checkpoint")]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "DS_ACCELERATOR": "cpu"})
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            raise CheckpointError(f"DeepSpeed could not convert {checkpoint}: {lines[-1]}")
        publish_text(tmp / COMPLETE, "")
    return out
