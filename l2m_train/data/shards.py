"""Packed token shards: documents concatenated (each followed by end-of-text) in raw, memory-mapped files.

A shard directory holds manifest.json, tokenizer.json and shard-00000.bin, shard-00001.bin, …; opening it
checks every shard's size and sha256 against the manifest, so training never reads damaged bytes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from l2m_train.data import DataError
from l2m_train.data.tokenizer import TextTokenizer


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: Path) -> dict:
    try:
        return json.loads((directory / "manifest.json").read_text())
    except FileNotFoundError:
        raise DataError(f"{directory} holds no manifest.json: not a `l2m data pack` output") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{directory / 'manifest.json'} is not valid JSON: {err}") from None


class PackedShards:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise DataError(f"shard directory not found: {self.directory}")
        self.manifest = read_manifest(self.directory)
        self.dtype = np.dtype(self.manifest["dtype"])
        self.fingerprint: str = self.manifest["fingerprint"]
        self.tokenizer_fingerprint: str = self.manifest["tokenizer"]["fingerprint"]
        self.starts = np.cumsum([0] + [s["tokens"] for s in self.manifest["shards"]])
        self.tokens = int(self.starts[-1])
        for shard in self.manifest["shards"]:
            self._check(shard)
        self._maps: dict[int, np.memmap] = {}

    def _check(self, shard: dict) -> None:
        path = self.directory / shard["file"]
        if not path.is_file():
            raise DataError(f"{path}: shard missing (listed in manifest.json)")
        size, expected = path.stat().st_size, shard["tokens"] * self.dtype.itemsize
        if size != expected:
            raise DataError(f"{path}: {size:,} bytes, manifest says {expected:,}")
        if sha256_file(path) != shard["sha256"]:
            raise DataError(f"{path}: contents do not match the manifest's sha256 (the shard is damaged)")

    def tokenizer(self) -> TextTokenizer:
        tokenizer = TextTokenizer.load(self.directory)
        if tokenizer.fingerprint != self.tokenizer_fingerprint:
            raise DataError(f"{self.directory / 'tokenizer.json'} is not the tokenizer the manifest names")
        return tokenizer

    def _shard(self, k: int) -> np.memmap:
        if k not in self._maps:
            path = self.directory / self.manifest["shards"][k]["file"]
            self._maps[k] = np.memmap(path, dtype=self.dtype, mode="r")
        return self._maps[k]

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the concatenated stream, across shard boundaries, as int64."""
        if start < 0 or start + length > self.tokens:
            raise IndexError(f"tokens [{start}, {start + length}) outside the {self.tokens:,} of {self.directory}")
        out, k = [], int(np.searchsorted(self.starts, start, side="right") - 1)
        while length > 0:
            offset = start - int(self.starts[k])
            piece = self._shard(k)[offset : offset + length]
            out.append(piece)
            start, length, k = start + len(piece), length - len(piece), k + 1
        return np.concatenate(out).astype(np.int64)
