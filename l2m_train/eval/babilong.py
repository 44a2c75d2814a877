"""BABILong accuracy: bAbI questions whose facts lie hidden in background text, scored by task and length.

An answer counts when greedy decoding reproduces it exactly, end-of-text included. That happens exactly when,
at every answer position, the model's most likely token given the answer so far is the answer's own token;
so one teacher-forced forward pass per batch scores a whole batch, with no decoding loop, and right-padded
batches score as one sample at a time would.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from l2m_train.data import DataError
from l2m_train.data.sample import Sample, collate
from l2m_train.data.tokenizer import TextTokenizer
from l2m_train.data_pipelines.babi import read_babi_dir
from l2m_train.data_pipelines.babilong import build_split, held_out
from l2m_train.data_pipelines.haystack import Haystack
from l2m_train.model import MemoryDecoder
from l2m_train.train.losses import lm_loss

Row = dict  # a sample as `l2m data babilong` stores it: task, target_length, input_ids, answer_start, facts, …


def rows_from_babi(babi_dir: str, haystack: list[str] | None, tasks: list[str] | None, lengths: list[int],
                   samples: int, tokenizer: TextTokenizer, seed: int = 0, split: str = "test",
                   holdout: float = 0) -> list[Row]:
    """`samples` per task and length, built now from bAbI files and background text (seeded: the same every time).

    holdout > 0 takes only the stories `l2m data babilong --holdout` keeps out of training: the last fraction.
    """
    questions = read_babi_dir(babi_dir, tasks, split)
    if holdout:
        questions = {task: held_out(qs, holdout)[1] for task, qs in questions.items()}
    if any(lengths) and not haystack:
        raise DataError("lengths above 0k need background text: name it with --haystack")
    background = Haystack(haystack, tokenizer) if any(lengths) else None
    # split=1 draws as `l2m data babilong` draws its validation samples; the digest is not needed here
    columns, _ = build_split(questions, lengths, samples, background, tokenizer, seed, 1, hashlib.sha256())
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def rows_from_dataset(path: str, tokenizer: TextTokenizer, tasks: list[str] | None = None,
                      lengths: list[int] | None = None, samples: int | None = None) -> list[Row]:
    """The validation split of a `l2m data babilong` output, optionally only some tasks and lengths, at most
    `samples` of each."""
    import datasets  # heavy: only prebuilt data needs it

    root = Path(path)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
        split = datasets.load_from_disk(str(root))["validation"]
    except FileNotFoundError as err:
        raise DataError(f"{root} is not a `l2m data babilong` output: {err.strerror}: {err.filename}") from None
    except (ValueError, KeyError) as err:
        raise DataError(f"{root}: unreadable BABILong dataset: {str(err).splitlines()[0]}") from None
    if manifest["tokenizer"]["fingerprint"] != tokenizer.fingerprint:
        raise DataError(f"{root} was built with another tokenizer than the model's: rebuild it with the model's tokenizer")
    for name, wanted, have in (("task", tasks, manifest["tasks"]), ("length", lengths, manifest["lengths"])):
        missing = sorted(set(wanted or []) - set(have))
        if missing:
            raise DataError(f"{root} has no {name} {', '.join(map(str, missing))} (it has {', '.join(map(str, have))})")
    keep, taken = [], Counter()
    for i, cell in enumerate(zip(split["task"], split["target_length"])):  # columns only: rows are read once chosen
        if (not tasks or cell[0] in tasks) and (not lengths or cell[1] in lengths) and taken[cell] != samples:
            taken[cell] += 1
            keep.append(i)
    return list(split.select(keep))


def exact_answers(model: MemoryDecoder, rows: list[Row], batch_tokens: int = 65536,
                  on_batch: Callable[[int], None] | None = None) -> list[bool]:
    """Whether greedy decoding gives each row's answer exactly. Rows are batched by length, up to `batch_tokens`
    padded positions a batch (one row at least); `on_batch` hears how many tokens each batch held."""
    device = next(model.parameters()).device
    exact = [False] * len(rows)
    for batch in _batches([len(r["input_ids"]) - 1 for r in rows], batch_tokens):
        samples = [Sample(np.asarray(rows[i]["input_ids"]), rows[i]["answer_start"]) for i in batch]
        tensors = collate(samples, max(s.inputs for s in samples))
        start = min(s.loss_from for s in samples) - 1  # the first position that predicts an answer token
        valid = tensors.get("valid")
        with torch.no_grad():
            logits = _logits_from(model, tensors["input_ids"].to(device), None if valid is None else valid.to(device), start)
        labels = tensors["labels"][:, start:].to(device)
        for i, ok in zip(batch, lm_loss(logits, labels, model.cfg.segment_len).exact_rows.tolist()):
            exact[i] = ok
        if on_batch is not None:
            on_batch(sum(s.inputs for s in samples))
    return exact


def _batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices in order of length, cut so that rows × the longest row stays within batch_tokens."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if batches and (len(batches[-1]) + 1) * lengths[i] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _logits_from(model: MemoryDecoder, idx: torch.Tensor, valid: torch.Tensor | None, start: int) -> torch.Tensor:
    """Logits of positions start… only. The context runs a segment at a time and its logits are dropped: at 128k
    tokens they alone would take gigabytes. (Every row is real up to `start`: padding comes after the answer.)"""
    state, step = None, model.cfg.segment_len
    for a in range(0, start, step):
        state = model(idx[:, a:min(a + step, start)], state).state
    return model(idx[:, start:], state, None if valid is None else valid[:, start:]).logits


@dataclass
class Accuracy:
    """Exact answers by task (rows) and target length (columns)."""

    tasks: list[str]
    lengths: list[int]
    correct: np.ndarray  # tasks × lengths
    samples: np.ndarray  # tasks × lengths; 0 where no sample was scored

    @property
    def matrix(self) -> np.ndarray:
        """Accuracy in [0, 1], NaN where there was no sample."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.samples > 0, self.correct / self.samples, np.nan)


def tally(rows: list[Row], exact: list[bool]) -> Accuracy:
    tasks = sorted({r["task"] for r in rows}, key=lambda t: (len(t), t))  # qa2 before qa10
    lengths = sorted({r["target_length"] for r in rows})
    correct, samples = np.zeros((len(tasks), len(lengths)), dtype=int), np.zeros((len(tasks), len(lengths)), dtype=int)
    for r, ok in zip(rows, exact):
        cell = tasks.index(r["task"]), lengths.index(r["target_length"])
        correct[cell] += ok
        samples[cell] += 1
    return Accuracy(tasks, lengths, correct, samples)


def by_distance(rows: list[Row], exact: list[bool], pooled_from: int = 4) -> dict[str, dict[str, list[int]]]:
    """Per task, [correct, samples] by how many facts follow the last supporting one ("4+" pools 4 and more), over all
    lengths: a model that answers from the latest facts only, not from the facts asked about, shows as accuracy
    falling with distance."""
    counts: dict[str, dict[int, list[int]]] = {}
    for r, ok in zip(rows, exact):
        after = min(len(r["facts"]) - 1 - max(r["supporting"]), pooled_from)
        cell = counts.setdefault(r["task"], {}).setdefault(after, [0, 0])
        cell[0] += ok
        cell[1] += 1
    label = lambda n: f"{n}+" if n == pooled_from else str(n)  # noqa: E731
    return {task: {label(n): by[n] for n in sorted(by)} for task, by in counts.items()}
