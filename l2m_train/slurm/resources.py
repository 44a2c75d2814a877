"""The job's resources as `#SBATCH` options, refusing what a job script cannot express.

`#SBATCH` lines are read by sbatch, not by the shell, so their values cannot be quoted: a value is accepted only
if it is one word without spaces, quotes, backslashes, `$` or line breaks (a line break would start a new script line).
"""
from __future__ import annotations

import re

from l2m_train.config import Config, ConfigError

WORD_CHARS = r"\w.,:=+/@%\[\]&|*()!-"  # enough for SLURM's values, e.g. --constraint=(a100|h100)&ib
WORD = re.compile(f"[{WORD_CHARS}]+")
OPTION = re.compile(f"--[a-z][a-z-]*(=[{WORD_CHARS}]+)?")
ALLOWED = "letters, digits and . , : = + / @ % [ ] & | * ( ) ! - _"
MAX_SIGNAL_SECONDS = 65535  # SLURM's limit for the time in --signal
# Options the template or a slurm.* key sets: set twice, sbatch would silently take one of them.
OWNED = {"job-name": "run.name", "nodes": "train.nodes", "ntasks-per-node": "train.devices", "ntasks": "train.devices × train.nodes",
         "gpus": "train.devices", "gpus-per-node": "train.devices", "gres": "train.devices", "gpus-per-task": "train.devices",
         "cpus-per-task": "slurm.cpus_per_task", "time": "slurm.time", "requeue": "(always set)", "no-requeue": "(requeue is always set)",
         "signal": "slurm.signal_seconds", "open-mode": "(always append)", "mem": "slurm.mem", "partition": "slurm.partition",
         "account": "slurm.account", "qos": "slurm.qos", "constraint": "slurm.constraint", "output": "slurm.output"}


def uses_gpus(cfg: Config) -> bool:
    """A SLURM job asks for GPUs unless the run says cpu: on a cluster, `auto` means the GPUs it was given."""
    return cfg.train.accelerator != "cpu"


def time_seconds(limit: str) -> int:
    """SLURM's --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", limit)
    if not match:
        raise ConfigError(f"slurm.time='{limit}' is not a SLURM time limit (minutes, H:MM:SS or D-HH:MM:SS)")
    days, *parts = match.groups()
    values = [int(p) for p in parts if p is not None]
    if days is not None:  # D-H, D-H:M, D-H:M:S
        units = [3600, 60, 1][:len(values)]
        return int(days) * 86400 + sum(v * u for v, u in zip(values, units))
    units = {1: [60], 2: [60, 1], 3: [3600, 60, 1]}[len(values)]
    return sum(v * u for v, u in zip(values, units))


def _word(key: str, value: str) -> str:
    if not WORD.fullmatch(value):
        raise ConfigError(f"{key}={value!r} cannot be written as an #SBATCH option: use {ALLOWED}")
    return value


def job_name(cfg: Config) -> str:
    """run.name made one word: the job name only labels the job in squeue."""
    return re.sub(r"[^\w.-]", "_", cfg.run.name)[:128] or "l2m"


def directives(cfg: Config) -> dict[str, str]:
    """The template's #SBATCH values, checked."""
    s, t = cfg.slurm, cfg.train
    limit = time_seconds(s.time)
    if not s.signal_seconds < min(limit, MAX_SIGNAL_SECONDS + 1):
        raise ConfigError(f"slurm.signal_seconds={s.signal_seconds} must be shorter than slurm.time={s.time} "
                          f"and at most {MAX_SIGNAL_SECONDS}")
    if t.threads > s.cpus_per_task:
        raise ConfigError(f"train.threads={t.threads} exceeds the slurm.cpus_per_task={s.cpus_per_task} each task is given")
    if s.gpu_type and not uses_gpus(cfg):
        raise ConfigError(f"slurm.gpu_type={s.gpu_type} asks for GPUs, but train.accelerator=cpu")
    if s.mem and not re.fullmatch(r"\d+[KMGT]?", s.mem):
        raise ConfigError(f"slurm.mem='{s.mem}' must be a size such as 64G or 500M")
    return {"job_name": job_name(cfg), "nodes": str(t.nodes), "tasks_per_node": str(t.devices),
            "cpus_per_task": str(s.cpus_per_task), "time": s.time, "signal_seconds": str(s.signal_seconds),
            "sbatch_options": "\n".join(f"#SBATCH {option}" for option in _options(cfg))}


def _options(cfg: Config) -> list[str]:
    s = cfg.slurm
    options = []
    if uses_gpus(cfg):
        gpus = f"{_word('slurm.gpu_type', s.gpu_type)}:{cfg.train.devices}" if s.gpu_type else str(cfg.train.devices)
        options.append(f"--gpus-per-node={gpus}")
    for name in ("mem", "partition", "account", "qos", "constraint", "output"):
        if value := getattr(s, name):
            options.append(f"--{name}={_word(f'slurm.{name}', value)}")
    for option in s.sbatch:
        if not OPTION.fullmatch(option):
            raise ConfigError(f"slurm.sbatch entry {option!r} cannot be written as an #SBATCH line: expected --name or --name=value, "
                              f"the value one word of {ALLOWED}")
        name = option[2:].partition("=")[0]
        if name in OWNED:
            raise ConfigError(f"slurm.sbatch must not set --{name}: it comes from {OWNED[name]}")
        options.append(option)
    return options
