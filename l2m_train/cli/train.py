"""Train a model. With no arguments, runs the built-in quickstart: a tiny LM2 learns to recall a value
that appears only in the first segment of its input, then the same budget trains segment-local
attention without memory, and a summary compares the two.

examples:
  l2m train                                        the quickstart (CPU, a few minutes)
  l2m train model.memory.kind=rmt run.name=rmt     the RMT baseline on the same task
  l2m train model=small train.max_tokens=5000000      a bigger preset, more tokens
  l2m train --config my.yaml --print-config        check a config without training
  l2m train --config babilong-curriculum           a built-in experiment (conf/experiment/); see its header
  l2m train train.devices=2 train.strategy=deepspeed train.deepspeed.stage=3     ZeRO-3 on 2 devices
  l2m train --config qa.yaml train.init_from=runs/books run.name=qa   fine-tune the latest weights of runs/books

The config is composed as in Hydra, each layer over the one before: the schema's defaults (l2m_train/config.py);
the presets the experiment lists under `defaults:` (conf/<group>/); the experiment YAML's own keys; the dotted
overrides, in the order typed. A group choice (model=small) replaces that group's preset wherever it is typed (the
replaced preset is never read), so `l2m train model.memory.kind=none model=small` trains small without memory.

An existing run directory resumes from its latest complete checkpoint (after SIGUSR1, SIGTERM or Ctrl-C, training
saves one at the next step and stops; a second Ctrl-C stops at once), passing over a damaged one. A resume with
another model, data or tokenizer is refused. A run whose loss stays nan or inf for train.max_nonfinite_steps steps
stops with exit code 1; it never saves non-finite weights.

train.init_from (a run directory, a checkpoint directory or an `l2m ckpt export`) starts a fresh run from those
weights, with a fresh optimizer, learning-rate schedule and data position. The model must be the same, on the same
tokenizer; only model.segment_len, attention, rope_base, activation_checkpointing, memory.bptt_segments and
memory.forget_bias may differ. A model without memory may also start a memory model (model.memory.kind=lm2 or rmt):
its backbone starts from the weights, the memory from scratch. A run directory that already holds a checkpoint
resumes from it instead. 'train.stop_at=val/exact>0.83' (quoted) ends training at the first validation past it.
"""
from __future__ import annotations

import argparse
import signal
import sys

from l2m_train.config import load_config, to_yaml

HELP = "train a model (default: the built-in quickstart)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", help="experiment config: a YAML file or the name of a built-in one "
                        "(quickstart, babilong-curriculum; default: quickstart)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. model.memory.slots=32; a group name replaces a preset: model=small")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    # Lightning loads in seconds: only a verb that trains pays for it.
    import torch
    from lightning.pytorch.utilities import rank_zero_only

    from l2m_train.cli.summary import print_summary
    from l2m_train.slurm.environment import cluster_plugins
    from l2m_train.train.checkpoint_callback import Preempted
    from l2m_train.train.checkpoint_layout import latest_checkpoint
    from l2m_train.train.divergence import Diverged
    from l2m_train.train.run import baseline_config, execute, plan

    configs = [cfg]
    if cfg.train.compare_baseline and cfg.model.memory.kind != "none":
        configs.append(baseline_config(cfg))
    runs = [plan(c, cluster_plugins()) for c in configs]  # every error surfaces before any run directory exists
    results = []
    try:
        for run in runs:
            results.append(execute(run))
    except Preempted as stop:
        print(f"l2m train: {stop}", file=sys.stderr)
        return 128 + stop.signum  # the shell's convention for a process ended by a signal
    except Diverged as stop:
        if rank_zero_only.rank == 0:
            print(f"l2m train: {stop}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit) as stop:  # Lightning turns an interrupt inside fit into sys.exit(1)
        if isinstance(stop, SystemExit) and not isinstance(stop.__context__, KeyboardInterrupt):
            raise
        latest = latest_checkpoint(run.run_dir)
        then = f"the same command resumes from {latest}" if latest else "no checkpoint yet: the same command starts over"
        print(f"l2m train: interrupted; {then}", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:  # a gloo process group left to interpreter exit can abort the process ("terminate called …")
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if rank_zero_only.rank == 0:  # every launched rank runs this command
        print_summary(results, cfg, runs[0].data.sources[0].example())
    return 0
