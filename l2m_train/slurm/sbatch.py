"""Hand a rendered script to sbatch."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from l2m_train.config import Config, ConfigError


class SlurmError(ConfigError):
    """SLURM is missing here, or sbatch refused the job: one line for the user."""


def submit(script: str, cfg: Config) -> str:
    """Submit the script (sbatch reads it from stdin, and keeps it for requeues); returns the job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SlurmError("SLURM is not available on this machine (no sbatch on PATH); --dry-run prints the job script")
    log_dir = Path(cfg.slurm.output).parent
    if cfg.slurm.output and "%" not in str(log_dir):  # SLURM does not create the log's directory: the job would fail silently
        log_dir.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([sbatch, "--parsable"], input=script, capture_output=True, text=True)
    if out.returncode != 0:
        lines = [line for line in out.stderr.splitlines() if line.strip()] or [f"exit status {out.returncode}"]
        raise SlurmError(f"sbatch refused the job: {lines[-1]}")
    return out.stdout.strip().split(";")[0]  # --parsable prints <id> or <id>;<cluster>
