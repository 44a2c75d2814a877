"""Train a byte-level BPE tokenizer (with `tokenizers`) on local text or a hub dataset.

The result, DIR/tokenizer.json, is what `l2m data pack --tokenizer DIR` and `l2m data babilong --tokenizer DIR`
take; its end-of-text token separates documents. DIR is new, or an earlier output of this command (holding
tokenizer.json alone), which it replaces.

examples:
  l2m data tokenizer --input ../shared/data/text --vocab-size 8192 --out data/bpe8k
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from l2m_train.data import DataError
from l2m_train.data.tokenizer import TextTokenizer
from l2m_train.data_pipelines.pack import add_source_arguments, input_files, load_documents
from l2m_train.io import publish_dir

HELP = "train a byte-level BPE tokenizer on text"


def _is_tokenizer_output(path: Path) -> bool:
    return path.is_dir() and [p.name for p in path.iterdir()] == ["tokenizer.json"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size (default: 8192)")


def run(args: argparse.Namespace) -> int:
    if args.vocab_size <= 257:
        raise DataError(f"--vocab-size must exceed the 256 bytes and end-of-text, got {args.vocab_size}")
    if not args.input and not args.hub:
        raise DataError("no input: name files or directories with --input, or a hub dataset with --hub")
    started = time.perf_counter()
    with publish_dir(args.out, replaces=_is_tokenizer_output, inputs=args.input) as out, \
            tempfile.TemporaryDirectory() as cache:
        docs = load_documents(input_files(args.input) if not args.hub else [], args.hub, args.hub_config, args.split,
                              args.text_field, args.streaming, Path(cache))
        texts = (row["text"] for row in docs)
        tokenizer = TextTokenizer.train_bpe(texts, args.vocab_size)
        tokenizer.save(out)
    path = Path(args.out) / "tokenizer.json"
    print(f"{path}: vocabulary {tokenizer.vocab_size:,}, fingerprint {tokenizer.fingerprint[:16]}, "
          f"{time.perf_counter() - started:.1f} s")
    return 0
