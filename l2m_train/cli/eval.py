"""Evaluate a checkpoint:

  babilong   exact answers to bAbI questions hidden in background text, by task and context length: a table,
             OUT/babilong.json and a heatmap OUT/babilong.png. Samples are built now from any bAbI directory and
             background text (seeded), or read from a `l2m data babilong` output (its validation split).
  ppl        perplexity on packed shards (`l2m data pack`), overall and by segment index, on the tail of the
             token stream that training holds out; OUT/ppl.json.

A CHECKPOINT is a run directory (its latest checkpoint), a checkpoint directory, or an export.

examples:
  l2m eval babilong runs/bl --babi-dir data/babi/en-10k --tasks qa1 qa2 --haystack ../shared/data/text/austen \\
      --lengths 0k 1k 4k 16k 64k 128k --samples 100 --out eval/bl
  l2m eval babilong runs/bl --babi-dir ../shared/data/babi/en-10k --babi-split train --holdout 0.1 \\
      --haystack ../shared/data/text --lengths 0k 1k 2k        (stories `l2m data babilong` held out of training)
  l2m eval babilong runs/bl --data data/babilong-1k --samples 25
  l2m eval ppl runs/books --shards data/books --windows 256 --segments 16
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from l2m_train.cli.arguments import add_threads, device, fraction, positive_int, seed
from l2m_train.data import DataError
from l2m_train.data_pipelines.babilong import parse_length
from l2m_train.io import publish_text

HELP = "evaluate a checkpoint: BABILong accuracy by task and length, perplexity by segment"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    babilong = commands.add_parser("babilong", help="exact answers by task and context length (table, JSON, heatmap)")
    _common(babilong)
    source = babilong.add_mutually_exclusive_group(required=True)
    source.add_argument("--babi-dir", help="bAbI files (qaN_*_test.txt), e.g. ../shared/data/babi/en-10k: samples are built now")
    source.add_argument("--data", help="a `l2m data babilong` output: its validation split")
    babilong.add_argument("--haystack", nargs="+", metavar="PATH", help="background text with --babi-dir: .txt files or "
                          "directories (needed for lengths above 0k)")
    babilong.add_argument("--tasks", nargs="+", metavar="qaN", help="bAbI tasks (default: all there are)")
    babilong.add_argument("--lengths", nargs="+", type=parse_length, metavar="LEN", help="context lengths: 0k 1k … 128k "
                          "or more, or numbers of tokens (default with --babi-dir: 0k 1k 2k 4k; with --data: all)")
    babilong.add_argument("--samples", type=positive_int, default=50, help="samples per task and length (default: 50; "
                          "with --data at most this many)")
    babilong.add_argument("--babi-split", default="test", help="which bAbI files to read: test or train (default: test)")
    babilong.add_argument("--holdout", type=fraction, default=0, help="only the last fraction of each task's stories: those "
                          "`l2m data babilong --holdout` keeps out of training (e.g. 0.1 with --babi-split train)")
    babilong.add_argument("--seed", type=seed, default=0, help="which questions and background (default: 0)")
    babilong.add_argument("--batch-tokens", type=positive_int, default=65536, help="padded positions per batch "
                          "(default: 65536; one sample at least)")
    ppl = commands.add_parser("ppl", help="perplexity on packed shards, overall and by segment index")
    _common(ppl)
    ppl.add_argument("--shards", required=True, help="a `l2m data pack` output packed with the model's tokenizer")
    ppl.add_argument("--segments", type=positive_int, help="segments per window (default: the model's data.segments)")
    ppl.add_argument("--windows", type=positive_int, default=64, help="windows to evaluate, at most (default: 64)")
    ppl.add_argument("--val-fraction", type=float, help="the tail of the token stream to read windows from (default: "
                     "the model's data.pretrain.val_fraction, which training never sees)")
    ppl.add_argument("--batch-size", type=positive_int, default=8, help="windows per forward pass (default: 8)")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a run directory, a checkpoint directory, or an export")
    parser.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda, cuda:1, … (default: cuda when there is one; bf16 autocast on cuda)")
    parser.add_argument("--out", default="eval", help="directory for the JSON (and PNG) results (default: eval)")
    parser.add_argument("--wandb", action="store_true", help="also log the results to the W&B run the checkpoint was trained "
                        "in (a run or checkpoint directory)")
    add_threads(parser)


def run(args: argparse.Namespace) -> int:
    from l2m_train.train.checkpoint_layout import load_model  # heavy imports wait until the arguments are parsed

    torch.set_num_threads(args.threads)
    model, cfg, tokenizer = load_model(args.checkpoint)
    tracker = _tracker(args.checkpoint, cfg) if args.wandb else None  # before the work: a wrong --wandb fails fast
    device = args.device
    model.to(device)
    started = time.perf_counter()
    about = {"checkpoint": str(args.checkpoint), "device": str(device)}
    out = Path(args.out)
    console = Console()
    with torch.autocast(device.type, torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext():
        if args.command == "babilong":
            written = _babilong(args, model, tokenizer, about, out, console, started)
        else:
            written = _ppl(args, model, cfg, tokenizer, about, out, console, started)
    console.print(f"written: {', '.join(map(str, written))}")
    if tracker is not None:
        from l2m_train.eval import report
        from l2m_train.train.state import config_dict

        table = json.loads(written[0].read_text())
        tracker.start(config_dict(cfg))
        image = written[1] if len(written) > 1 else None
        report.log_to_wandb(tracker.logger.experiment, args.command, table["columns"], table["rows"], image)
        tracker.finish()
    return 0


def _tracker(checkpoint: str, cfg):
    """The W&B run a checkpoint was trained in, from its train state."""
    from l2m_train.train.checkpoint_layout import CheckpointError, read_state, resolve
    from l2m_train.train.tracking import Tracker

    found = resolve(checkpoint)
    run_id = read_state(found)["wandb_run_id"]
    if run_id is None:
        raise CheckpointError(f"{checkpoint} was trained without W&B (wandb.mode=disabled): --wandb has no run to log to")
    return Tracker(cfg, found.parent.parent, run_id)  # <run>/checkpoints/step-N


def _babilong(args, model, tokenizer, about: dict, out: Path, console: Console, started: float) -> list[Path]:
    from l2m_train.eval import babilong, report

    if args.data:
        rows = babilong.rows_from_dataset(args.data, tokenizer, args.tasks, args.lengths, args.samples)
        about.update(data=args.data)
    else:
        lengths = sorted(set(args.lengths or [0, 1024, 2048, 4096]))
        rows = babilong.rows_from_babi(args.babi_dir, args.haystack, args.tasks, lengths, args.samples, tokenizer,
                                       args.seed, args.babi_split, args.holdout)
        about.update(babi_dir=args.babi_dir, babi_split=args.babi_split, holdout=args.holdout, haystack=args.haystack,
                     seed=args.seed)
    if not rows:
        raise DataError(f"{args.data} holds no validation sample (built with --val-samples 0?)")
    with _progress("answering", sum(len(r["input_ids"]) - 1 for r in rows)) as advance:
        exact = babilong.exact_answers(model, rows, args.batch_tokens, advance)
    acc = babilong.tally(rows, exact)
    about.update(samples=args.samples, seconds=round(time.perf_counter() - started, 1))
    title = f"{args.checkpoint}: exact answers, {len(rows):,} samples"
    distance = babilong.by_distance(rows, exact)
    console.print(title, report.babilong_table(acc), *report.distance_lines(distance), sep="\n")
    json_path, png_path = out / "babilong.json", out / "babilong.png"
    publish_text(json_path, json.dumps({**report.babilong_json(acc, about), "by_distance": distance}, indent=2))  # creates OUT
    report.heatmap(acc, png_path, title)
    return [json_path, png_path]


def _ppl(args, model, cfg, tokenizer, about: dict, out: Path, console: Console, started: float) -> list[Path]:
    from l2m_train.eval import ppl, report

    segments = args.segments or cfg.data.segments
    fraction = cfg.data.pretrain.val_fraction if args.val_fraction is None else args.val_fraction
    windows = ppl.held_out_windows(cfg, args.shards, tokenizer, segments, fraction, args.windows)
    with _progress("scoring", len(windows) * windows[0].inputs) as advance:
        result = ppl.perplexity(model, windows, args.batch_size, advance)
    about.update(shards=args.shards, segments=segments, segment_len=cfg.model.segment_len, val_fraction=fraction,
                 seconds=round(time.perf_counter() - started, 1))
    console.print(f"{args.checkpoint}: loss by segment, {result.windows} windows of {segments} × {cfg.model.segment_len} tokens",
                  report.ppl_table(result), sep="\n")
    path = out / "ppl.json"
    publish_text(path, json.dumps(report.ppl_json(result, about), indent=2))
    return [path]


@contextlib.contextmanager
def _progress(what: str, tokens: int) -> Iterator[Callable[[int], None]]:
    """A bar over tokens (samples differ in length by orders of magnitude), with the time left."""
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} tokens"),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(what, total=tokens)
        yield lambda n: bar.advance(task, n)
