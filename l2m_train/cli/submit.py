"""Submit a training run to SLURM: renders an sbatch script from slurm/job.sbatch and the run's config (the
slurm.* keys, and train.nodes × train.devices tasks, one per device) and hands it to sbatch. The job requeues
itself at its time limit after a checkpoint, and resumes from it.

examples:
  l2m submit --dry-run                                          print the quickstart's job script
  l2m submit --config my.yaml train.nodes=4 train.devices=8 slurm.partition=gpu slurm.time=1-00:00:00
  l2m submit train.accelerator=cpu train.devices=2 slurm.cpus_per_task=2      CPU nodes: no GPUs asked for
  l2m submit slurm.modules=[cuda/12.4] 'slurm.setup=[source venv/bin/activate]'
"""
from __future__ import annotations

import argparse

from l2m_train.config import load_config
from l2m_train.slurm.sbatch import submit
from l2m_train.slurm.script import render

HELP = "submit a training run to SLURM (--dry-run: print the job script)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", help="experiment config, as for `l2m train` (default: quickstart)")
    parser.add_argument("--dry-run", action="store_true", help="print the job script and exit, without submitting")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for `l2m train`")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    script = render(cfg)  # every refusal comes before anything is submitted
    if args.dry_run:
        print(script, end="")
        return 0
    job = submit(script, cfg)
    print(f"submitted job {job}: trains {cfg.run.root}/{cfg.run.name}")
    return 0
