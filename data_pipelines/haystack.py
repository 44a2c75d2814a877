"""Background text for BABILong-style samples: books cut into sentences, tokenized once.

Sentences are found by punctuation (., !, ? and closing quotes) followed by a capital letter, inside
paragraphs whose hard line wraps are joined; common abbreviations (Mr., Mrs., …) do not end a sentence.
"""
from __future__ import annotations

import re

import numpy as np

from l2m_train.data import DataError
from l2m_train.data.tokenizer import TextTokenizer
from l2m_train.data_pipelines.files import find_files

_END = re.compile(r"""[.!?]["'’”)\]]*(?=\s+["'‘“(\[]?[A-Z]|\s*$)""")
_ABBREVIATIONS = ("Mr.", "Mrs.", "Dr.", "St.", "Mme.", "Col.", "Capt.", "Gen.", "Lt.", "Sir.")


def split_sentences(text: str) -> list[str]:
    sentences = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        start = 0
        for match in _END.finditer(paragraph):
            if paragraph[: match.end()].endswith(_ABBREVIATIONS):
                continue
            sentences.append(paragraph[start : match.end()].strip())
            start = match.end()
        if paragraph[start:].strip():
            sentences.append(paragraph[start:].strip())
    return sentences


class Haystack:
    """Every sentence of the books, in reading order, as token ids (each with its leading space)."""

    def __init__(self, paths: list[str], tokenizer: TextTokenizer):
        self.files = find_files(paths, (".txt",), "haystack")
        sentences = []
        for path in self.files:
            try:
                sentences += split_sentences(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError as err:
                raise DataError(f"haystack file {path} is not UTF-8 text: {err.reason} at byte {err.start}") from None
        if not sentences:
            raise DataError(f"the haystack is empty: no sentences in {', '.join(map(str, self.files))}")
        self.ids = [np.asarray(ids, dtype=np.int32) for ids in tokenizer.encode_batch([" " + s for s in sentences])]
        self.lengths = np.asarray([len(ids) for ids in self.ids])

    def fill(self, rng: np.random.Generator, budget: int) -> tuple[list[np.ndarray], int]:
        """Consecutive sentences from a random place, as many as fit `budget` tokens, and the length of the next one.

        Reading wraps around from the last book to the first; the result is within one sentence of the budget.
        """
        i = int(rng.integers(len(self.ids)))
        taken, used = [], 0
        while used + self.lengths[i] <= budget:
            taken.append(self.ids[i])
            used += int(self.lengths[i])
            i = (i + 1) % len(self.ids)
            if len(taken) == len(self.ids):  # the budget exceeds the whole haystack: use it all, once
                raise DataError(f"the haystack ({int(self.lengths.sum()):,} tokens) is shorter than a {budget:,}-token "
                                "sample: add more background text")
        return taken, int(self.lengths[i])
