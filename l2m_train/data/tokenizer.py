"""Tokenizers: byte-level (token id = byte value), a BPE trained on the user's text, or GPT-2's BPE files.

All are `tokenizers.Tokenizer`s with an end-of-text token, fingerprinted by their canonical JSON so a
run can tell whether its data and its checkpoint were tokenized the same way.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers.pre_tokenizers import ByteLevel

from l2m_train.data import DataError, json_fingerprint
from l2m_train.io import publish_text


class TextTokenizer:
    EOS = "<|endoftext|>"

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        eos = tokenizer.token_to_id(self.EOS)
        if eos is None:
            raise DataError(f"the tokenizer has no end-of-text token {self.EOS}")
        self.eos_id: int = eos

    @classmethod
    def byte(cls) -> "TextTokenizer":
        """256 byte tokens with id = byte value, and end-of-text at 256: any text round-trips."""
        alphabet = ByteLevel.alphabet()  # the printable stand-ins byte-level BPE uses for the 256 bytes
        by_byte = sorted(alphabet, key=lambda ch: _BYTE_OF[ch])
        vocab = {ch: b for b, ch in enumerate(by_byte)} | {cls.EOS: 256}
        # No merges, so no need to split words first: without the regex, encoding is ~4× faster.
        return cls._byte_level(models.BPE(vocab=vocab, merges=[]), split_words=False)

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int) -> "TextTokenizer":
        tokenizer = cls._byte_level(models.BPE()).tokenizer
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[cls.EOS], show_progress=True,
                                      initial_alphabet=ByteLevel.alphabet())
        tokenizer.train_from_iterator(texts, trainer)
        return cls(tokenizer)

    @classmethod
    def _byte_level(cls, model: models.BPE, split_words: bool = True) -> "TextTokenizer":
        tokenizer = Tokenizer(model)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split_words)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.add_special_tokens([cls.EOS])
        return cls(tokenizer)

    @classmethod
    def load(cls, path: str | Path) -> "TextTokenizer":
        """'byte'; a tokenizer.json; a directory with tokenizer.json, or with GPT-2's vocab.json and merges.txt."""
        if str(path) == "byte":
            return cls.byte()
        path = Path(path)
        try:
            if path.is_dir() and (path / "tokenizer.json").is_file():
                path = path / "tokenizer.json"
            if path.is_file():
                return cls(Tokenizer.from_file(str(path)))
            if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
                model = models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt"))
                return cls._byte_level(model)
        except DataError as err:
            raise DataError(f"{path}: {err}") from None
        except Exception as err:  # tokenizers raises plain Exceptions for malformed files
            raise DataError(f"{path} is not a readable tokenizer: {str(err).splitlines()[0]}") from None
        raise DataError(f"tokenizer not found: {path} (expected 'byte', a tokenizer.json, or a directory with "
                        "tokenizer.json or GPT-2's vocab.json + merges.txt)")

    @classmethod
    def from_json(cls, text: str) -> "TextTokenizer":
        try:
            return cls(Tokenizer.from_str(text))
        except Exception as err:
            raise DataError(f"not a tokenizer: {str(err).splitlines()[0]}") from None

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def fingerprint(self) -> str:
        return json_fingerprint(json.loads(self.to_json()))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # the fast variant skips character offsets, which cost ~100 MB per book and are never used here
        return [e.ids for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / "tokenizer.json"
        publish_text(path, self.to_json())
        return path


def _bytes_to_unicode() -> dict[str, int]:
    """Byte-level BPE's fixed map from each byte to a printable character (GPT-2's convention)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_OF = _bytes_to_unicode()
