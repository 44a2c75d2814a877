"""Where samples come from: the synthetic recall task, packed pretraining shards, QA datasets on disk.

Each source cuts its data into pools for a given number of segments (the curriculum decides how many),
holds out a validation set never trained on, and names the tokenizer and fingerprint it was built with.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from l2m_train.config import Config
from l2m_train.data import DataError
from l2m_train.data.order import Pool
from l2m_train.data.recall import RecallTask
from l2m_train.data.sample import Evidence, Sample
from l2m_train.data.tokenizer import TextTokenizer


class RecallSource:
    name = "recall"
    fingerprint = "synthetic"  # a pure function of the config, which the checkpoint holds anyway

    def __init__(self, cfg: Config):
        self.cfg, self.tokenizer = cfg, TextTokenizer.byte()
        self.pools(cfg.data.segments)  # a recall sample that does not fit fails here, before training

    def _task(self, segments: int, seed: int) -> RecallTask:
        try:
            return RecallTask(self.cfg.model.segment_len, segments, self.cfg.data.recall.pairs, seed)
        except ValueError as err:
            raise DataError(f"data.recall: {err}") from None

    def pools(self, segments: int) -> list[Pool]:
        task = self._task(segments, self.cfg.data.seed)
        inputs = segments * self.cfg.model.segment_len  # every sample fills its segments exactly
        return [Pool(f"recall/{segments}", self.cfg.data.recall.train_samples or None, task.sample, lambda i: inputs)]

    def held_out(self) -> RecallTask:
        return self._task(self.cfg.data.segments, self.cfg.data.seed + 1)  # another seed: no story is shared

    def val(self, n: int) -> list[Sample]:
        task = self.held_out()
        return [task.sample(i) for i in range(n)]

    def example(self) -> tuple[str, str]:
        return self.held_out().text(0)


class PretrainSource:
    """Windows of `segments × L` tokens from the packed stream; its last `val_fraction` is held out."""

    name = "pretrain"

    def __init__(self, cfg: Config):
        from l2m_train.data.shards import PackedShards

        if not cfg.data.pretrain.shards:
            raise DataError("data.sources names 'pretrain' but data.pretrain.shards is not set (a `l2m data pack` output)")
        self.shards = PackedShards(cfg.data.pretrain.shards)
        self.tokenizer, self.fingerprint = self.shards.tokenizer(), self.shards.fingerprint
        self.L, self.full = cfg.model.segment_len, cfg.data.segments
        self.train_tokens = int(self.shards.tokens * (1 - cfg.data.pretrain.val_fraction))
        if self._windows(self.full, 0, self.train_tokens) == 0:
            raise DataError(f"{cfg.data.pretrain.shards}: {self.train_tokens:,} training tokens do not fill one sample of "
                            f"{self.full * self.L:,} tokens")

    def _windows(self, segments: int, start: int, end: int) -> int:
        return max(0, (end - start - 1) // (segments * self.L))  # each window also needs its next token as a label

    def _window(self, segments: int, start: int, i: int) -> Sample:
        n = segments * self.L
        return Sample(self.shards.read(start + i * n, n + 1), loss_from=1)

    def pools(self, segments: int) -> list[Pool]:
        size = self._windows(segments, 0, self.train_tokens)
        n = segments * self.L
        return [Pool(f"pretrain/{n}", size, lambda i: self._window(segments, 0, i), lambda i: n)]

    def val(self, n: int) -> list[Sample]:
        n = min(n, self._windows(self.full, self.train_tokens, self.shards.tokens))
        return [self._window(self.full, self.train_tokens, i) for i in range(n)]

    def example(self) -> None:
        return None


class QASource:
    """A `l2m data babilong` dataset: at each stage, one pool per target length, of its samples that fit.

    Short stages so draw from short lengths only (and from the shorter stories of a length's samples);
    a length none of whose samples fits is not allowed yet.
    """

    name = "qa"

    def __init__(self, cfg: Config):
        import datasets  # heavy: imported only when QA data is used

        path = cfg.data.qa.path
        if not path:
            raise DataError("data.sources names 'qa' but data.qa.path is not set (a `l2m data babilong` output)")
        root = Path(path)
        try:
            manifest = json.loads((root / "manifest.json").read_text())
            splits = datasets.load_from_disk(str(root))
        except FileNotFoundError as err:
            raise DataError(f"{root} is not a `l2m data babilong` output: {err.strerror}: {err.filename}") from None
        except (ValueError, KeyError) as err:
            raise DataError(f"{root}: unreadable QA dataset: {str(err).splitlines()[0]}") from None
        if set(splits) != {"train", "validation"}:
            raise DataError(f"{root}: expected train and validation splits, found {sorted(splits)}")
        self.fingerprint = manifest["fingerprint"]
        self.tokenizer = TextTokenizer.load(root)
        self.train, self.validation = splits["train"], splits["validation"]
        self.capacity, self.full = cfg.model.segment_len, cfg.data.segments
        self.lengths = np.asarray(self.train["target_length"])
        self.inputs = np.asarray(self.train["tokens"]) - 1  # positions each sample needs: all tokens but the last

    def _sample(self, split, i: int) -> Sample:
        row = split[int(i)]
        evidence = Evidence([tuple(f) for f in row["facts"]], list(row["supporting"]), tuple(row["question_span"]))
        return Sample(np.asarray(row["input_ids"], dtype=np.int64), loss_from=row["answer_start"], evidence=evidence)

    def pools(self, segments: int) -> list[Pool]:
        room = segments * self.capacity
        pools = []
        for t in np.unique(self.lengths):
            fits = np.flatnonzero((self.lengths == t) & (self.inputs <= room))
            if len(fits):
                pools.append(Pool(f"qa/{t}/{room}", len(fits), lambda i, fits=fits: self._sample(self.train, fits[i]),
                                  lambda i, fits=fits: int(self.inputs[fits[i]])))
        if not pools:
            raise DataError(f"no QA sample fits {segments} segments ({room:,} positions); the shortest needs "
                            f"{self.inputs.min():,}: raise the curriculum's segments or build shorter lengths")
        return pools

    def val(self, n: int) -> list[Sample]:
        """n validation samples, evenly spread over the tasks and lengths that fit the last stage."""
        fits = np.flatnonzero(np.asarray(self.validation["tokens"]) - 1 <= self.full * self.capacity)
        fits = fits[:: max(1, len(fits) // n)][:n]
        return [self._sample(self.validation, i) for i in fits]

    def example(self) -> tuple[str, str]:
        s = self._sample(self.validation, 0)
        return self.tokenizer.decode(s.ids[: s.loss_from]), self.tokenizer.decode(s.ids[s.loss_from:])


SOURCES = {"recall": RecallSource, "pretrain": PretrainSource, "qa": QASource}
