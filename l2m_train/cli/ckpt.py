"""Checkpoint tools:

  universal   convert a DeepSpeed ZeRO checkpoint to DeepSpeed's universal form, to resume it on another number of
              ranks (or between ZeRO-1 and ZeRO-2): `l2m train` then picks the universal form by itself
  export      consolidate any checkpoint into one directory (model.safetensors, config.yaml, tokenizer.json) that
              `l2m generate` loads without DeepSpeed

A CHECKPOINT is a checkpoint directory (<run>/checkpoints/step-N) or a run directory (its latest complete checkpoint).

examples:
  l2m ckpt universal runs/big                          then: l2m train … train.devices=4 (was 8)
  l2m ckpt export runs/big --out exports/big           then: l2m generate exports/big --prompt '…'
"""
from __future__ import annotations

import argparse

HELP = "convert checkpoints: universal (resume on another number of ranks), export (safetensors for inference)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    universal = commands.add_parser("universal", help="ZeRO shards → DeepSpeed's universal form (<checkpoint>/universal)")
    universal.add_argument("checkpoint", help="a checkpoint or run directory")
    export = commands.add_parser("export", help="any checkpoint → model.safetensors + config.yaml + tokenizer.json")
    export.add_argument("checkpoint", help="a checkpoint or run directory, or a Lightning .ckpt file")
    export.add_argument("--out", required=True, help="the directory to create")


def run(args: argparse.Namespace) -> int:
    if args.command == "universal":
        from l2m_train.train.universal import convert

        print(f"universal checkpoint: {convert(args.checkpoint)}")
    else:
        from l2m_train.train.export import export

        print(f"exported: {export(args.checkpoint, args.out)}")
    return 0
