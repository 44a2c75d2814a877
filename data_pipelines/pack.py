"""Tokenize text and pack it into memory-mapped token shards with a manifest.

Sources are local files or directories (.txt: one document per file; .json/.jsonl: one document per record,
text in --text-field; .parquet) or a Hugging Face hub dataset (--hub, needs the network). Documents are
tokenized in parallel (--num-proc), each followed by end-of-text, and written as raw shards of
--shard-tokens tokens. Re-running on the same input is a no-op; a failed run leaves --out untouched. --out must be
new or an earlier output of `l2m data pack`, and never an input or inside one.

examples:
  l2m data pack --input ../shared/data/text --out data/books-bytes
  l2m data tokenizer --input ../shared/data/text --vocab-size 8192 --out data/bpe8k
  l2m data pack --input ../shared/data/text --tokenizer data/bpe8k --out data/books-bpe8k
  l2m data pack --hub wikitext --hub-config wikitext-103-raw-v1 --streaming --out data/wikitext
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from rich.progress import Progress

from l2m_train.data import DataError, json_fingerprint
from l2m_train.data.shards import sha256_file
from l2m_train.data.tokenizer import TextTokenizer
from l2m_train.data_pipelines.files import find_files, manifest_of
from l2m_train.io import publish_dir, publish_text

HELP = "tokenize text and pack it into memory-mapped token shards with a manifest"
BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
FORMAT = 1


def input_files(paths: list[str]) -> list[Path]:
    return find_files(paths, tuple(BUILDERS), "input")


def _is_pack_output(path: Path) -> bool:
    return {"input_fingerprint", "shards"} <= manifest_of(path).keys()


def describe_sources(files: list[Path], hub: str | None, hub_config: str | None, split: str) -> list[dict]:
    """What the output depends on: each file's path, size and sha256, or the hub dataset's name."""
    if hub:
        return [{"hub": hub, "config": hub_config, "split": split}]
    return [{"path": str(p.resolve()), "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files]


def load_documents(files: list[Path], hub: str | None, hub_config: str | None, split: str, text_field: str,
                   streaming: bool, cache_dir: Path):
    """A datasets Dataset (IterableDataset when streaming) with one column, `text`."""
    import datasets

    try:
        if hub:
            if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
                raise DataError(f"--hub {hub}: the hub is switched off (HF_HUB_OFFLINE); use local files")
            parts = [datasets.load_dataset(hub, hub_config, split=split, streaming=streaming, cache_dir=str(cache_dir))]
        else:
            parts = []
            for suffix in sorted({p.suffix for p in files}):
                builder = BUILDERS[suffix]
                kwargs = {"sample_by": "document"} if builder == "text" else {}
                group = [str(p) for p in files if p.suffix == suffix]
                parts.append(datasets.load_dataset(builder, data_files=group, split="train", streaming=streaming,
                                                   cache_dir=str(cache_dir), **kwargs))
    except DataError:
        raise
    except Exception as err:  # datasets raises many types; the first line says what went wrong
        raise DataError(f"cannot load the input: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    for part in parts:
        if text_field not in (part.column_names or [text_field]):
            raise DataError(f"the input has no '{text_field}' field (columns: {part.column_names}); set --text-field")
    parts = [p.select_columns([text_field]).rename_column(text_field, "text") if text_field != "text"
             else p.select_columns(["text"]) for p in parts]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


class ShardWriter:
    """Appends documents to fixed-size shard files, hashing as it writes."""

    def __init__(self, directory: Path, shard_tokens: int, dtype: np.dtype):
        self.directory, self.shard_tokens, self.dtype = directory, shard_tokens, dtype
        self.shards: list[dict] = []
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.documents = 0

    def add(self, ids: np.ndarray, eos: int) -> None:
        self.buffer.append(np.append(ids.astype(self.dtype), np.asarray(eos, dtype=self.dtype)))
        self.buffered += len(ids) + 1
        self.documents += 1
        while self.buffered >= self.shard_tokens:
            tokens = np.concatenate(self.buffer)
            self._write(tokens[: self.shard_tokens])
            rest = tokens[self.shard_tokens :]
            self.buffer, self.buffered = [rest], len(rest)

    def close(self) -> None:
        if self.buffered:
            self._write(np.concatenate(self.buffer))
        self.buffer, self.buffered = [], 0

    def _write(self, tokens: np.ndarray) -> None:
        name = f"shard-{len(self.shards):05d}.bin"
        data = tokens.astype(self.dtype.newbyteorder("<")).tobytes()
        (self.directory / name).write_bytes(data)
        self.shards.append({"file": name, "tokens": len(tokens), "sha256": hashlib.sha256(data).hexdigest()})


def _encode(batch: dict, tokenizer: TextTokenizer) -> dict:
    # numpy arrays, not Python lists: arrow stores them without a per-token Python object
    return {"ids": [np.asarray(ids, dtype=np.int32) for ids in tokenizer.encode_batch(batch["text"])]}


def pack(sources: list[str], tokenizer: TextTokenizer, out_dir: str | Path, *, shard_tokens: int = 100_000_000,
         num_proc: int = 1, text_field: str = "text", streaming: bool = False, hub: str | None = None,
         hub_config: str | None = None, split: str = "train") -> tuple[dict, bool]:
    """Build (or find up to date) the shards at out_dir. Returns (manifest, built: False when it was a no-op)."""
    out_dir = Path(out_dir)
    if not sources and not hub:
        raise DataError("no input: name files or directories with --input, or a hub dataset with --hub")
    files = input_files(sources) if not hub else []
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    settings = {"shard_tokens": shard_tokens, "text_field": text_field, "dtype": dtype.name}
    described = describe_sources(files, hub, hub_config, split)
    input_fingerprint = json_fingerprint({"sources": described, "tokenizer": tokenizer.fingerprint, "settings": settings})
    previous = manifest_of(out_dir)
    if previous.get("input_fingerprint") == input_fingerprint:
        return previous, False
    started = time.perf_counter()
    with publish_dir(out_dir, replaces=_is_pack_output, inputs=sources) as tmp:
        cache = tmp / ".cache"  # datasets' arrow caches live here and go away before publishing
        docs = load_documents(files, hub, hub_config, split, text_field, streaming, cache)
        writer = ShardWriter(tmp, shard_tokens, dtype)
        if streaming:
            tokenized = docs.map(_encode, batched=True, fn_kwargs={"tokenizer": tokenizer}, remove_columns=["text"])
        else:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked workers must not share its threads
            tokenized = docs.map(_encode, batched=True, batch_size=64, fn_kwargs={"tokenizer": tokenizer},
                                 num_proc=num_proc if num_proc > 1 else None, remove_columns=["text"],
                                 desc="tokenizing")
        with Progress(transient=True) as progress:
            task = progress.add_task("packing", total=None if streaming else len(tokenized))
            for batch in tokenized.with_format("numpy").iter(batch_size=256):
                for ids in batch["ids"]:
                    writer.add(ids, tokenizer.eos_id)
                progress.advance(task, len(batch["ids"]))
        writer.close()
        total = sum(s["tokens"] for s in writer.shards)
        if total == writer.documents:  # every document was empty: only end-of-text tokens
            raise DataError(f"the input holds no text ({writer.documents} empty documents)")
        shutil.rmtree(cache, ignore_errors=True)
        manifest = {
            "format": FORMAT, "sources": described,
            "tokenizer": {"fingerprint": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size,
                          "eos_id": tokenizer.eos_id},
            "dtype": dtype.name, "settings": settings, "shards": writer.shards, "tokens": total,
            "documents": writer.documents, "input_fingerprint": input_fingerprint,
        }
        manifest["fingerprint"] = json_fingerprint(manifest)
        manifest["seconds"] = round(time.perf_counter() - started, 2)
        tokenizer.save(tmp)
        publish_text(tmp / "manifest.json", json.dumps(manifest, indent=2))
    return manifest, True


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """The input options shared by `pack` and `tokenizer`."""
    parser.add_argument("--input", nargs="+", default=[], metavar="PATH", help="files or directories of "
                        ".txt/.json/.jsonl/.parquet")
    parser.add_argument("--hub", metavar="NAME", help="a Hugging Face hub dataset instead of --input (online only)")
    parser.add_argument("--hub-config", metavar="CONFIG", help="the hub dataset's configuration")
    parser.add_argument("--split", default="train", help="the hub dataset's split (default: train)")
    parser.add_argument("--text-field", default="text", help="the text field of json/parquet records (default: text)")
    parser.add_argument("--streaming", action="store_true", help="stream the input instead of loading it whole")
    parser.add_argument("--out", required=True, help="output directory: new, or an earlier output of the same command "
                        "(replaced atomically when the build succeeds)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--tokenizer", default="byte", help="byte, a tokenizer.json, or a directory with one or with "
                        "GPT-2 vocab.json + merges.txt (default: byte)")
    parser.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard (default: 100M)")
    parser.add_argument("--num-proc", type=int, default=min(4, os.cpu_count() or 1),
                        help="tokenizing processes (default: min(4, CPUs))")


def run(args: argparse.Namespace) -> int:
    if args.shard_tokens < 1 or args.num_proc < 1:
        raise DataError("--shard-tokens and --num-proc must be >= 1")
    tokenizer = TextTokenizer.load(args.tokenizer)
    manifest, built = pack(args.input, tokenizer, args.out, shard_tokens=args.shard_tokens, num_proc=args.num_proc,
                           text_field=args.text_field, streaming=args.streaming, hub=args.hub,
                           hub_config=args.hub_config, split=args.split)
    if not built:
        print(f"{args.out}: up to date ({manifest['tokens']:,} tokens, same input and tokenizer)")
        return 0
    seconds = manifest["seconds"]
    print(f"{args.out}: {manifest['documents']:,} documents, {manifest['tokens']:,} tokens in "
          f"{len(manifest['shards'])} shards, {seconds:.1f} s ({manifest['tokens'] / max(seconds, 1e-9):,.0f} tokens/s)")
    return 0
