"""Build data artifacts: tokenizers, packed token shards, bAbI-style stories, BABILong-style samples.

examples:
  l2m data tokenizer --input ../shared/data/text --vocab-size 8192 --out data/bpe8k
  l2m data pack --input ../shared/data/text --tokenizer data/bpe8k --out data/books
  l2m data babi-generate --tasks qa1 qa2 --stories 2000 --out data/babi-gen
  l2m data babilong --babi-dir data/babi-gen --haystack ../shared/data/text --lengths 0k 1k 4k --out data/bl
"""
from __future__ import annotations

import argparse

from l2m_train.data_pipelines import babi_generate, babilong, pack, train_tokenizer

HELP = "build tokenizers, token shards, bAbI stories and BABILong-style samples"
COMMANDS = {"tokenizer": train_tokenizer, "pack": pack, "babi-generate": babi_generate, "babilong": babilong}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_arguments(commands.add_parser(name, help=command.HELP, description=command.__doc__,
                                                  formatter_class=argparse.RawDescriptionHelpFormatter))


def run(args: argparse.Namespace) -> int:
    return COMMANDS[args.command].run(args)
