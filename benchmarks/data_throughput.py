"""Data pipeline throughput: tokenization + packing (tokens/s, MB/s) with the byte tokenizer and a trained
BPE, on one and on two processes, plus BPE training time and BABILong-style sample building. Not a test.

    python benchmarks/data_throughput.py                         # the books in ../shared/data/text
    python benchmarks/data_throughput.py --input my_corpus/ --vocab-size 32000 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import cpu_model  # noqa: E402

from l2m_train.data.tokenizer import TextTokenizer  # noqa: E402
from l2m_train.data_pipelines.babi_generate import write_babi_dir  # noqa: E402
from l2m_train.data_pipelines.babilong import build  # noqa: E402
from l2m_train.data_pipelines.pack import input_files, pack  # noqa: E402

BOOKS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", default=[str(BOOKS)], help="text files or directories (default: the books)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--json", default="benchmarks/out/data_throughput.json")
    args = parser.parse_args()
    files = input_files(args.input)
    mb = sum(p.stat().st_size for p in files) / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        bpe = TextTokenizer.train_bpe((p.read_text() for p in files), args.vocab_size)
        bpe_seconds = time.perf_counter() - started
        for name, tokenizer in (("byte", TextTokenizer.byte()), (f"bpe-{args.vocab_size}", bpe)):
            for procs in (1, 2):
                out = Path(tmp) / f"{name}-{procs}"
                started = time.perf_counter()
                manifest, _ = pack(args.input, tokenizer, out, num_proc=procs)
                seconds = time.perf_counter() - started
                rows.append({"tokenizer": name, "processes": procs, "tokens": manifest["tokens"], "seconds": seconds,
                             "tokens_per_s": manifest["tokens"] / seconds, "mb_per_s": mb / seconds})
        stories = Path(tmp) / "babi"
        write_babi_dir(stories, ["qa1", "qa2"], stories=500, seed=0)
        started = time.perf_counter()
        built = build(str(stories), args.input, [4096, 16384], ["qa1", "qa2"], 50, 0, TextTokenizer.byte(),
                      str(Path(tmp) / "bl"))
        babilong_seconds = time.perf_counter() - started
    result = {"machine": f"{cpu_model()}, {os.cpu_count()} CPUs", "input_mb": mb, "files": len(files),
              "bpe_train_seconds": bpe_seconds, "pack": rows,
              "babilong": {"samples": built["counts"]["train"], "tokens": built["tokens"]["train"],
                           "seconds": babilong_seconds, "tokens_per_s": built["tokens"]["train"] / babilong_seconds}}
    print(f"{result['machine']}; input {mb:.1f} MB in {len(files)} files")
    print(f"BPE training (vocabulary {args.vocab_size}): {bpe_seconds:.1f} s ({mb / bpe_seconds:.2f} MB/s)")
    print(f"{'tokenizer':<12}{'processes':>10}{'tokens':>14}{'seconds':>9}{'tokens/s':>12}{'MB/s':>7}")
    for r in rows:
        print(f"{r['tokenizer']:<12}{r['processes']:>10}{r['tokens']:>14,}{r['seconds']:>9.1f}"
              f"{r['tokens_per_s']:>12,.0f}{r['mb_per_s']:>7.2f}")
    b = result["babilong"]
    print(f"BABILong-style build (qa1+qa2, 4k and 16k, byte tokens): {b['samples']} samples, {b['tokens']:,} tokens "
          f"in {b['seconds']:.1f} s ({b['tokens_per_s']:,.0f} tokens/s, book loading included)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
