"""How much each segment changes a trained model's memory, by what the segment holds: a fact the question needs, another
fact, only background text, or the question. A memory that keeps facts across long stretches of book text should
change little on book text and much on facts; lm2 also reports its input and forget gates. An analysis of a trained
run (docs/RESULTS.md, rung 3), not a test.

    python benchmarks/memory_writes.py runs/lm2 runs/rmt --babi-dir ../shared/data/babi/en-10k --babi-split train \
        --holdout 0.1 --haystack ../shared/data/text --lengths 1k --samples 100

Each sample runs alone (batch 1) up to its answer, a segment at a time. Per memory bank (lm2: each memory layer's
slots, `layerN`; rmt: its memory tokens, `tokens`), a segment's change is the root mean square of after − before over
the write that ends it; and the memory's own root mean square after 1, 2, 4, … segments shows whether it stays in
the range training saw when samples grow longer. Per slot (lm2's slots, rmt's memory tokens): `slots_changed`, the
share of slots a write changes (1: every slot alike, 1/S: one slot), and the slots' mean pairwise cosine after n
segments (1: every slot holds the same vector, so the bank holds one thing however many slots it has).
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from l2m_train.cli.arguments import fraction, positive_int
from l2m_train.data import DataError
from l2m_train.data_pipelines.babilong import parse_length
from l2m_train.eval.babilong import Row, rows_from_babi
from l2m_train.eval.report import length_label
from l2m_train.model import MemoryDecoder
from l2m_train.train.checkpoint_layout import CheckpointError, load_model

KINDS_OF_SEGMENT = ("supporting fact", "other fact", "background only", "question")


def kind_of_segment(row: Row, a: int, b: int) -> str:
    """What tokens a…b of the row hold, the first that applies of KINDS_OF_SEGMENT."""
    def overlaps(span) -> bool:
        return span[0] < b and a < span[1]

    facts = [tuple(f) for f in row["facts"]]
    if any(overlaps(facts[i]) for i in row["supporting"]):
        return "supporting fact"
    if any(overlaps(f) for f in facts):
        return "other fact"
    return "question" if overlaps(row["question_span"]) else "background only"


def rms(x: torch.Tensor) -> float:
    return float(x.pow(2).mean().sqrt())


def share_changed(change: torch.Tensor) -> float:
    """change: 1 × S × d. The participation ratio of the slots' RMS changes, over S: 1/S (one slot) … 1 (all alike)."""
    per_slot = change[0].pow(2).mean(-1).sqrt()
    return float(per_slot.sum().pow(2) / (per_slot.pow(2).sum() * per_slot.numel()).clamp_min(1e-30))


def slot_cosine(memory: torch.Tensor) -> float:
    """memory: 1 × S × d. The mean cosine between the S(S − 1) ordered pairs of distinct slots."""
    unit = F.normalize(memory[0], dim=-1)
    n = unit.shape[0]
    return float(((unit @ unit.T).sum() - n) / (n * (n - 1)))


def memory_banks(model: MemoryDecoder) -> list[str]:
    """The names of the model's memory banks, in the order of its state's memory: lm2 one per memory layer, rmt one."""
    return [f"layer{i}" for i in model.memory_layers] or ["tokens"]


@torch.no_grad()
def measure(model: MemoryDecoder, rows: list[Row]) -> dict:
    """by_segment: per kind of segment, segments seen, each memory bank's mean RMS change and (lm2) the mean gates;
    by_written: per bank, the memory's RMS after 1, 2, 4, … segments (mean over the samples that long); slot_cosine:
    per bank, the slots' mean pairwise cosine after as many segments."""
    banks = memory_banks(model)
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    sizes: dict[str, dict[int, list[float]]] = {bank: defaultdict(list) for bank in banks}
    cosines: dict[str, dict[int, list[float]]] = {bank: defaultdict(list) for bank in banks}
    for row in rows:
        idx = torch.as_tensor(row["input_ids"][:row["answer_start"]]).unsqueeze(0)
        before, written = model.initial_state(1).memory, 0
        for piece in model.pieces(idx):
            after = piece.state.memory
            if piece.state.pos != 0:  # the segment is not complete: nothing written yet
                continue
            written += 1
            cell = sums[kind_of_segment(row, piece.start, piece.end)]
            cell["segments"] += 1
            for bank, new, old in zip(banks, after, before):
                cell[f"{bank}/change"] += rms(new - old)
                cell[f"{bank}/slots_changed"] += share_changed(new - old)
                if written & (written - 1) == 0:  # a power of 2
                    sizes[bank][written].append(rms(new))
                    cosines[bank][written].append(slot_cosine(new))
            for name, value in piece.gates.items():
                if name.endswith(("/in", "/forget")):
                    cell[name] += float(value)
            before = after
    by_segment = {kind: {name: total if name == "segments" else total / cell["segments"] for name, total in cell.items()}
                  for kind in KINDS_OF_SEGMENT if (cell := sums.get(kind))}
    def means(per_bank: dict[str, dict[int, list[float]]]) -> dict[str, dict[int, float]]:
        return {bank: {n: sum(xs) / len(xs) for n, xs in sorted(by.items())} for bank, by in per_bank.items()}
    return {"by_segment": by_segment, "by_written": means(sizes), "slot_cosine": means(cosines)}


def add_sample_arguments(parser: argparse.ArgumentParser, tasks: bool = True) -> None:
    """The samples as `l2m eval babilong` builds them from bAbI files and background text (the same arguments);
    without `tasks`, the caller fixes the tasks."""
    parser.add_argument("--babi-dir", required=True, help="a directory of bAbI files (qaN_*_train.txt / _test.txt)")
    parser.add_argument("--babi-split", default="test", help="train or test (default: test)")
    parser.add_argument("--holdout", type=fraction, default=0.0, help="with --babi-split train: only the stories "
                        "`l2m data babilong --holdout` kept out of training, the last fraction (default: 0, all)")
    parser.add_argument("--haystack", nargs="+", help="background text (.txt files or directories); lengths above 0k "
                        "need it")
    if tasks:
        parser.add_argument("--tasks", nargs="+", default=["qa1"], help="bAbI tasks (default: qa1)")
    parser.add_argument("--lengths", nargs="+", type=parse_length, default=[1024], help="sample lengths, e.g. 1k 4k "
                        "(default: 1k)")
    parser.add_argument("--samples", type=positive_int, default=100, help="per task and length (default: 100)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories, checkpoints or exports of memory models")
    add_sample_arguments(parser)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for run in args.runs:
        try:
            model, cfg, tokenizer = load_model(run)
            rows = rows_from_babi(args.babi_dir, args.haystack, args.tasks, args.lengths, args.samples, tokenizer,
                                  split=args.babi_split, holdout=args.holdout)
        except (CheckpointError, DataError, ValueError) as err:
            raise SystemExit(f"memory_writes: {err}") from None
        if cfg.model.memory.kind == "none":
            raise SystemExit(f"{run}: a model without memory (memory.kind=none) has nothing to measure")
        results[run] = measure(model.eval(), rows)
        print(f"\n{run}: per segment, {len(rows)} samples ({', '.join(args.tasks)}; {' '.join(map(length_label, args.lengths))})")
        for kind, cell in results[run]["by_segment"].items():
            figures = "  ".join(f"{name} {value:.3f}" for name, value in sorted(cell.items()) if "/" in name)
            print(f"  {kind:16} {int(cell['segments']):6,} segments  {figures}")
        for bank, by in results[run]["by_written"].items():
            print(f"  {bank} RMS after n segments: " + "  ".join(f"{n}: {value:.3f}" for n, value in by.items()))
        for bank, by in results[run]["slot_cosine"].items():
            print(f"  {bank} slots' mean cosine after n segments: " + "  ".join(f"{n}: {v:.3f}" for n, v in by.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
