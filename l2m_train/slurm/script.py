"""Render the sbatch script for a run from slurm/job.sbatch. Every value that reaches the shell is shlex-quoted,
so no config value can run a command; only slurm.setup lines, written to be run, are copied as they are."""
from __future__ import annotations

import re
import shlex
from importlib.resources import files
from pathlib import Path

from l2m_train.config import Config, ConfigError, to_yaml
from l2m_train.slurm.resources import directives

TEMPLATE = Path(str(files("l2m_train.slurm_templates"))) / "job.sbatch"
PLACEHOLDER = re.compile(r"\{\{ (\w+) \}\}")


def config_path(cfg: Config) -> Path:
    """Where the job writes the run's config: beside the run directory, which must not hold anything but the run."""
    return Path(cfg.run.root) / f"{cfg.run.name}.job.yaml"


def render(cfg: Config) -> str:
    values = directives(cfg) | {
        "environment": _environment(cfg),
        "config_path": shlex.quote(str(config_path(cfg))),
        "config_yaml": shlex.quote(to_yaml(cfg)),
        "srun_options": " ".join(shlex.quote(o) for o in _srun_options(cfg)),
    }
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], TEMPLATE.read_text())


def _environment(cfg: Config) -> str:
    s = cfg.slurm
    for key in s.env:
        if not re.fullmatch(r"[A-Za-z_]\w*", key):
            raise ConfigError(f"slurm.env key {key!r} is not an environment variable name")
    lines = [f"module load {shlex.quote(m)}" for m in s.modules]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in s.env.items()]
    return "\n".join(lines + s.setup)


def _srun_options(cfg: Config) -> list[str]:
    s = cfg.slurm
    return ["--kill-on-bad-exit=1"] + ([f"--container-image={s.container}"] if s.container else []) + s.srun
