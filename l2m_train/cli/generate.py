"""Stream text from a checkpoint. The prompt is consumed segment by segment, the memory carrying what
earlier segments held; then tokens are generated one at a time with a KV cache inside each segment.
"""
from __future__ import annotations

import argparse
import sys

import torch

from l2m_train.cli.arguments import add_threads, positive_int, seed, temperature
from l2m_train.train.checkpoint_layout import load_model

HELP = "stream generated text from a checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a run directory (its latest checkpoint, e.g. runs/quickstart), a checkpoint "
                        "directory, or an export (`l2m ckpt export`)")
    parser.add_argument("--prompt", default="", help="text to start from (default: empty)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens to generate (default: 64)")
    parser.add_argument("--temperature", type=temperature, default=0.8, help="sampling temperature; 0 = greedy (default: 0.8)")
    parser.add_argument("--top-k", type=positive_int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--seed", type=seed, default=0, help="random seed for sampling (default: 0)")
    add_threads(parser)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    model, _, tokenizer = load_model(args.checkpoint)
    prompt = tokenizer.encode(args.prompt) or [tokenizer.eos_id]
    torch.manual_seed(args.seed)
    sys.stdout.write(args.prompt)
    generated, shown = [], ""
    for token, _ in model.generate(torch.tensor([prompt]), args.max_new_tokens, args.temperature, args.top_k):
        if token.item() == tokenizer.eos_id:
            break
        generated.append(token.item())
        text = tokenizer.decode(generated)
        if not text.endswith("\ufffd"):  # a character may span several tokens: wait until it is whole
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
    sys.stdout.write(tokenizer.decode(generated)[len(shown):] + "\n")
    return 0
