"""Build BABILong-style samples: the facts of a bAbI story hidden, in order, among sentences of background
text until the sample reaches a target length in tokens, then the question; the answer is the label.

Every sample records the token span of each inserted fact, which facts support the answer, and the span
of the question, so retrieval losses and analyses know where the evidence lies. Validation samples come
from stories held out of training (the last --holdout fraction of each task's stories).

examples:
  l2m data babi-generate --tasks qa1 qa2 --out data/babi-gen
  l2m data babilong --babi-dir data/babi-gen --haystack ../shared/data/text --lengths 0k 1k 4k --out data/bl
  l2m data babilong --babi-dir ../shared/data/babi/en-10k --tasks qa1 qa2 qa3 qa4 qa5 \\
      --haystack ../shared/data/text/austen --lengths 0k 1k 2k 4k 8k 16k 32k --samples 200 --out data/bl-32k
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import track

from l2m_train.data import DataError, json_fingerprint
from l2m_train.data.tokenizer import TextTokenizer
from l2m_train.data_pipelines.babi import ASK, Question, read_babi_dir
from l2m_train.data_pipelines.files import manifest_of
from l2m_train.data_pipelines.haystack import Haystack
from l2m_train.io import publish_dir, publish_text

HELP = "build BABILong-style long-context QA samples from bAbI stories and background books"
QUESTION = " " + ASK


def parse_length(text: str) -> int:
    """'0k', '4k', '1.5k' (k = 1024 tokens) or a plain number of tokens."""
    try:
        value = float(text[:-1]) * 1024 if text.lower().endswith("k") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a length: '{text}' (use e.g. 0k, 4k, 128k or 3000)") from None
    if value < 0 or value != int(value):
        raise argparse.ArgumentTypeError(f"a length must be a whole number of tokens >= 0, got '{text}'")
    return int(value)


@dataclass
class Built:
    ids: np.ndarray  # context (haystack with the facts), question, answer, end-of-text
    answer_start: int
    facts: list[tuple[int, int]]  # token span [start, end) of each inserted fact, in story order
    question_span: tuple[int, int]
    length: int  # tokens before the answer
    next_sentence_tokens: int  # the haystack sentence that no longer fit (0 without haystack)


def build_sample(q: Question, target: int, haystack: Haystack, tokenizer: TextTokenizer,
                 rng: np.random.Generator) -> Built:
    """One sample of `target` tokens (0: the facts and question alone), facts at random sentence boundaries."""
    encode = lambda text: np.asarray(tokenizer.encode(text), dtype=np.int32)  # noqa: E731
    facts = [encode(" " + f) for f in q.facts]
    question = encode(QUESTION.format(q.question))
    answer = np.append(encode(" " + q.answer), np.int32(tokenizer.eos_id))
    fixed = sum(len(f) for f in facts) + len(question)
    if target and fixed > target:
        raise DataError(f"target length {target:,} tokens is shorter than the facts and question of {q.task} "
                        f"(line {q.line}: {fixed:,} tokens); use a longer length")
    background, next_len = haystack.fill(rng, target - fixed) if target else ([], 0)
    # Fact k goes in after slots[k] background sentences: sorted, so the story keeps its order.
    slots = np.sort(rng.integers(0, len(background) + 1, size=len(facts)))
    pieces, spans, position, k = [], [], 0, 0
    for n in range(len(background) + 1):
        while k < len(facts) and slots[k] == n:
            pieces.append(facts[k])
            spans.append((position, position + len(facts[k])))
            position += len(facts[k])
            k += 1
        if n < len(background):
            pieces.append(background[n])
            position += len(background[n])
    pieces += [question, answer]
    question_span = (position, position + len(question))
    length = position + len(question)
    return Built(np.concatenate(pieces), length, spans, question_span, length, next_len)


def fixed_tokens(q: Question, tokenizer: TextTokenizer) -> int:
    """Tokens a sample of this question needs before any background: its facts and the question."""
    return sum(len(ids) for ids in tokenizer.encode_batch([" " + f for f in q.facts] + [QUESTION.format(q.question)]))


def build_split(questions: dict[str, list[Question]], lengths: list[int], samples: int, haystack: Haystack,
                tokenizer: TextTokenizer, seed: int, split: int, digest) -> tuple[dict[str, list], dict[str, int]]:
    """`samples` per task and length, questions drawn without replacement (cycling when there are fewer).

    A question whose facts alone exceed a target length is left out of that length (counted in `skipped`);
    a length that no question of a task fits is an error.
    """
    columns: dict[str, list] = {k: [] for k in ("task", "story", "question", "answer", "target_length", "length",
                                                "tokens", "input_ids", "answer_start", "facts", "supporting",
                                                "question_span", "next_sentence_tokens")}
    skipped: dict[str, int] = {}
    jobs = [(task, target) for task in questions for target in lengths]
    need = {task: np.asarray([fixed_tokens(q, tokenizer) for q in qs]) for task, qs in questions.items()}
    for task, target in track(jobs, description=f"{'train' if split == 0 else 'validation'} samples", transient=True):
        fits = np.flatnonzero(need[task] <= target) if target else np.arange(len(questions[task]))
        if len(fits) == 0:
            raise DataError(f"target length {target:,} tokens is shorter than the facts and question of every {task} "
                            f"story (the shortest needs {need[task].min():,}); use a longer length")
        if len(fits) < len(questions[task]):
            skipped[f"{task}/{target}"] = len(questions[task]) - len(fits)
        rng = np.random.default_rng([seed, int(task.removeprefix("qa")), target, split])
        order = rng.permutation(fits)
        for i in range(samples):
            q = questions[task][order[i % len(order)]]
            b = build_sample(q, target, haystack, tokenizer, rng)
            digest.update(b.ids.tobytes())
            for key, value in (("task", task), ("story", q.story), ("question", q.question), ("answer", q.answer),
                               ("target_length", target), ("length", b.length), ("tokens", len(b.ids)),
                               ("input_ids", b.ids), ("answer_start", b.answer_start), ("facts", b.facts),
                               ("supporting", list(q.supporting)), ("question_span", b.question_span),
                               ("next_sentence_tokens", b.next_sentence_tokens)):
                columns[key].append(value)
    return columns, skipped


def held_out(questions: list[Question], holdout: float) -> tuple[list[Question], list[Question]]:
    """(train, validation): the last `holdout` fraction of the stories, whole, go to validation."""
    stories = sorted({q.story for q in questions})
    first_val = stories[len(stories) - max(1, round(holdout * len(stories)))] if holdout > 0 else stories[-1] + 1
    train = [q for q in questions if q.story < first_val]
    if not train:
        raise DataError(f"{questions[0].task}: {len(stories)} stories leave none for training after holding out {holdout}")
    return train, [q for q in questions if q.story >= first_val]


def build(babi_dir: str, haystack_paths: list[str], lengths: list[int], tasks: list[str] | None, samples: int,
          val_samples: int, tokenizer: TextTokenizer, out: str, seed: int = 0, holdout: float = 0.1,
          babi_split: str = "train", keep_questions: bool = False) -> dict:
    """Build train and validation splits and publish them (with manifest.json and tokenizer.json) at `out`.

    keep_questions: each sample's context also holds its story's earlier questions with their answers.
    """
    import datasets  # heavy: only this command needs it

    with publish_dir(out, replaces=_is_babilong_output, inputs=[babi_dir, *haystack_paths]) as tmp:
        started = time.perf_counter()
        stories = read_babi_dir(babi_dir, tasks, babi_split, keep_questions)
        haystack = Haystack(haystack_paths, tokenizer) if any(lengths) else None
        parts = {task: held_out(qs, holdout) for task, qs in stories.items()}
        digest = hashlib.sha256()
        splits, skipped = {}, {}
        for index, (name, n) in enumerate((("train", samples), ("validation", val_samples))):
            questions = {task: part[index] for task, part in parts.items() if part[index]}
            columns, skipped[name] = build_split(questions, lengths, n, haystack, tokenizer, seed, index, digest)
            splits[name] = datasets.Dataset.from_dict(columns)
        manifest = {
            "format": 1, "kind": "babilong",
            "tokenizer": {"fingerprint": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id},
            "babi_dir": str(babi_dir), "babi_split": babi_split, "keep_questions": keep_questions,
            "tasks": sorted(stories), "lengths": lengths,
            "haystack": [str(p) for p in haystack.files] if haystack else [], "samples": samples,
            "val_samples": val_samples, "holdout": holdout, "seed": seed,
            "counts": {name: len(split) for name, split in splits.items()},
            "tokens": {name: int(sum(split["tokens"])) for name, split in splits.items()},
            "skipped_questions": skipped,  # per split, task/length: questions too long for that length
            "content_sha256": digest.hexdigest(),
        }
        manifest["fingerprint"] = json_fingerprint(manifest)
        manifest["seconds"] = round(time.perf_counter() - started, 2)
        datasets.DatasetDict(splits).save_to_disk(str(tmp))
        tokenizer.save(tmp)
        publish_text(tmp / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def _is_babilong_output(path: Path) -> bool:
    return manifest_of(path).get("kind") == "babilong"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--babi-dir", required=True, help="a directory of bAbI files (qaN_*_train.txt), e.g. "
                        "../shared/data/babi/en-10k or the output of `l2m data babi-generate`")
    parser.add_argument("--haystack", nargs="+", required=True, metavar="PATH",
                        help="background text: .txt files or directories of them (e.g. ../shared/data/text)")
    parser.add_argument("--lengths", nargs="+", type=parse_length, default=[0, 1024, 2048, 4096], metavar="LEN",
                        help="target lengths in tokens: 0k 1k 2k 4k 8k 16k 32k 64k 128k or numbers (default: 0k 1k 2k 4k)")
    parser.add_argument("--tasks", nargs="+", metavar="qaN", help="bAbI tasks (default: every task in --babi-dir)")
    parser.add_argument("--samples", type=int, default=100, help="training samples per task and length (default: 100)")
    parser.add_argument("--val-samples", type=int, default=25, help="validation samples per task and length, from "
                        "held-out stories (default: 25)")
    parser.add_argument("--holdout", type=float, default=0.1, help="fraction of each task's stories kept for "
                        "validation (default: 0.1)")
    parser.add_argument("--tokenizer", default="byte", help="byte, a tokenizer.json, or a directory with one or with "
                        "GPT-2 vocab.json + merges.txt (default: byte)")
    parser.add_argument("--babi-split", default="train", help="which bAbI files to read: train or test (default: train)")
    parser.add_argument("--keep-questions", action="store_true", help="keep a story's earlier questions, answered, "
                        "among its facts as the bAbI files have them: a sample of a story's fifth question then holds "
                        "four more answers, which a context loss (loss.context.weight) trains on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output directory: new, or an earlier output of the same command "
                        "(replaced atomically when the build succeeds)")


def run(args: argparse.Namespace) -> int:
    if args.samples < 1 or args.val_samples < 0 or not 0 <= args.holdout < 1:
        raise DataError("--samples must be >= 1, --val-samples >= 0 and --holdout in [0, 1)")
    tokenizer = TextTokenizer.load(args.tokenizer)
    m = build(args.babi_dir, args.haystack, sorted(set(args.lengths)), args.tasks, args.samples, args.val_samples,
              tokenizer, args.out, args.seed, args.holdout, args.babi_split, args.keep_questions)
    print(f"{args.out}: {m['counts']['train']:,} train and {m['counts']['validation']:,} validation samples "
          f"({', '.join(m['tasks'])} × {len(m['lengths'])} lengths), {m['tokens']['train']:,} training tokens, "
          f"{m['seconds']:.1f} s")
    return 0
