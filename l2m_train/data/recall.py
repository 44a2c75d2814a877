"""A synthetic recall task whose answer lies only in an earlier segment.

A sample is `segments × segment_len` characters of text (the byte tokenizer: bytes are the tokens):

    segment 0      K=v pairs, then filler        "A=3 Q=7 xkcdhewo"
    middle         filler                        "pqmzlrudwhfnyeat"
    last           filler, then the question     "bnvhsrtclkyeu?Q="   → answer "7"

Filler is random lowercase text, keys are distinct capitals, values are digits. Only the answer is
supervised. Attention confined to one segment never sees the pairs, so it can do no better than chance.
"""
from __future__ import annotations

import string

import numpy as np

from l2m_train.data.sample import Sample
from l2m_train.data.tokenizer import TextTokenizer


class RecallTask:
    chance = 1 / len(string.digits)  # the best a model that cannot see the pairs can do

    def __init__(self, segment_len: int, segments: int, pairs: int, seed: int):
        if pairs * 4 > segment_len or segment_len < 4:
            raise ValueError(f"{pairs} pairs of 4 characters do not fit a segment of {segment_len} tokens")
        if pairs > len(string.ascii_uppercase):
            raise ValueError(f"at most {len(string.ascii_uppercase)} pairs (the keys are distinct capitals), got {pairs}")
        if segments < 2:
            raise ValueError(f"recall samples need at least 2 segments (the answer lies in an earlier one), got {segments}")
        self.segment_len, self.segments, self.pairs, self.seed = segment_len, segments, pairs, seed
        self.tokenizer = TextTokenizer.byte()

    def text(self, index: int) -> tuple[str, str]:
        """(context ending with the question, answer), a pure function of (seed, index)."""
        rng = np.random.default_rng([self.seed, index])
        L = self.segment_len
        filler = lambda n: "".join(rng.choice(list(string.ascii_lowercase), n))  # noqa: E731
        keys = rng.choice(list(string.ascii_uppercase), self.pairs, replace=False)
        values = rng.choice(list(string.digits), self.pairs)
        pairs = "".join(f"{k}={v} " for k, v in zip(keys, values))
        asked = rng.integers(self.pairs)
        first = pairs + filler(L - len(pairs))
        middle = "".join(filler(L) for _ in range(self.segments - 2))
        last = filler(L - 3) + f"?{keys[asked]}="
        return first + middle + last, str(values[asked])

    def sample(self, index: int) -> Sample:
        """The text as tokens (bytes); only the answer, the last token, is supervised."""
        context, answer = self.text(index)
        ids = np.asarray(self.tokenizer.encode(context + answer))
        return Sample(ids, loss_from=len(ids) - 1)
