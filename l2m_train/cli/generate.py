"""Stream text from a checkpoint. The prompt is consumed segment by segment, the memory carrying what
earlier segments held; then tokens are generated one at a time with a KV cache inside each segment.
"""
from __future__ import annotations

import argparse
import codecs
import sys

import torch

from l2m_train.data.tokenizer import ByteTokenizer
from l2m_train.train.checkpoint import load_model

HELP = "stream generated text from a checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint written by `l2m train` (e.g. runs/quickstart/checkpoints/last.ckpt)")
    parser.add_argument("--prompt", default="", help="text to start from (default: empty)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens to generate (default: 64)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy (default: 0.8)")
    parser.add_argument("--top-k", type=positive_int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--seed", type=int, default=0, help="random seed for sampling (default: 0)")


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    model, _ = load_model(args.checkpoint)
    tokenizer = ByteTokenizer()
    prompt = tokenizer.encode(args.prompt) or tokenizer.encode("\n")
    torch.manual_seed(args.seed)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span several byte tokens
    sys.stdout.write(args.prompt)
    for token, _ in model.generate(torch.tensor([prompt]), args.max_new_tokens, args.temperature, args.top_k):
        sys.stdout.write(decoder.decode(bytes([token.item()])))
        sys.stdout.flush()
    sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    return 0
