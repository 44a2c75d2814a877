"""Streaming generation: tokens/s and memory of `none` (segment-local and full attention), `rmt` and `lm2` after
consuming contexts of 1k tokens up to 1M (powers of 2).

Each model runs in its own worker process. It consumes one growing context, carrying its state (the memory; the
KV cache of the current segment, or of the whole past for full attention) through `MemoryDecoder.consume`, as
`generate` consumes a prompt: a call per segment, keeping only the last logits. At each context length it generates
--new-tokens tokens greedily from that state (`generate` continuing it; states are immutable, so consumption then
goes on from the saved one). Reported: generation tokens/s (from the median time per token), the largest state
generation carried (memory, KV cache), peak memory (on CUDA while generating; on CPU the process's high-water mark
so far), and in the JSON the context consumption tokens/s.
A model that runs out of memory (CUDA OOM, or its worker killed) is recorded as OOM and not grown further.
Not a test.

    python benchmarks/generation.py                                  # CPU: 4 layers, d=256, contexts 1k..16k
    python benchmarks/generation.py --device cuda --max-context 1048576
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from common import (
    KINDS,
    add_benchmark_arguments,
    autocast,
    build,
    fmt,
    is_oom,
    peak_memory_mb,
    print_table,
    release,
    reset_peak_memory,
    serve,
    setup,
    start_workers,
    sync,
    worker_arguments,
    write_json,
)

DEFAULTS = {"cpu": ["model=small", "model.n_layers=4"], "cuda": ["model=small"]}


def worker(name: str, args: argparse.Namespace) -> None:
    device = setup(args.device, args.threads, args.cudnn_sdpa)
    cfg, model, _ = build(DEFAULTS[args.device] + args.overrides + KINDS[name], device, optimizer=False)
    model.eval()
    V = cfg.model.vocab_size
    state, consumed = None, 0

    @torch.no_grad()
    def measure(C: int) -> tuple[float, list[float], float]:
        """Consume the context up to C tokens, then generate: (consumption tokens/s, seconds per token, largest state MB)."""
        nonlocal state, consumed
        fresh = C - consumed
        sync(device)
        start = time.perf_counter()
        with autocast(device):
            _, state = model.consume(torch.randint(0, V, (1, fresh), device=device), state)
        consumed = C
        sync(device)
        consume_tokens_per_s = fresh / (time.perf_counter() - start)
        reset_peak_memory(device)
        times, state_mb = [], 0.0
        with autocast(device):  # states are immutable: consumption later goes on from the saved one
            tokens = model.generate(torch.randint(0, V, (1, 1), device=device), args.new_tokens, temperature=0, state=state)
            start = time.perf_counter()
            for token, carried in tokens:
                token.cpu()  # waits for the device
                times.append(time.perf_counter() - start)
                state_mb = max(state_mb, sum(t.numel() * t.element_size() for t in carried.tensors()) / 2**20)
                start = time.perf_counter()
        return consume_tokens_per_s, times, state_mb

    def run(request: dict) -> dict:
        nonlocal state
        try:
            consume_tokens_per_s, times, state_mb = measure(request["context"])
        except RuntimeError as err:  # torch.OutOfMemoryError is one
            if not is_oom(err):
                raise
            times, state = None, None
        peak = peak_memory_mb(device)
        release(device)  # here, once the exception no longer holds the failed step's tensors
        if times is None:
            return {"oom": True}
        # The median token: robust to bursts of other work on a shared machine (the first includes the prompt token).
        return {"consume_tokens_per_s": consume_tokens_per_s, "token_s": times,
                "generate_tokens_per_s": 1 / statistics.median(times), "state_mb": state_mb, "peak_mb": peak}

    serve(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-context", type=int, default=1024, help="shortest context, tokens (default: 1024)")
    parser.add_argument("--max-context", type=int, default=16384, help="longest context, tokens; lengths double (default: 16384)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated at each context length (default: 128)")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS), help="models (default: all four)")
    add_benchmark_arguments(parser, "generation.json")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args)
    device = setup(args.device, 1)
    passed = [*worker_arguments(args), f"--new-tokens={args.new_tokens}", *args.overrides]
    contexts = [args.min_context * 2**i for i in range((args.max_context // args.min_context).bit_length())]
    workers = start_workers(__file__, args.kinds, passed)
    results: dict[str, dict[int, dict]] = {name: {} for name in args.kinds}
    for C in contexts:
        for name, w in workers.items():
            if any(r.get("oom") for r in results[name].values()):
                continue
            answer = w.ask({"context": C})
            results[name][C] = answer or {"oom": True, "killed": True}  # a dead worker: killed, on CPU for memory
            print(f"  {name} {C:,} tokens: {fmt(results[name][C].get('generate_tokens_per_s'))} tokens/s", file=sys.stderr)
    for w in workers.values():
        w.close()

    def cell(name: str, C: int, key: str, spec: str = ",.0f") -> str:
        r = results[name].get(C)
        return "" if r is None else "OOM" if r.get("oom") else fmt(r[key], spec)

    overrides = DEFAULTS[args.device] + args.overrides
    columns = (["context"] + [f"{n} gen tok/s" for n in args.kinds] + [f"{n} state MB" for n in args.kinds]
               + [f"{n} peak MB" for n in args.kinds])
    print_table(f"Generation after a long context, {args.device} ({' '.join(overrides)})", columns,
                [[f"{C:,}"] + [cell(n, C, "generate_tokens_per_s") for n in args.kinds]
                 + [cell(n, C, "state_mb", ".2f") for n in args.kinds] + [cell(n, C, "peak_mb") for n in args.kinds] for C in contexts],
                caption=f"batch 1, {args.new_tokens} tokens generated greedily at each context length, tokens/s from the median "
                        "token; state: the largest carried while generating; context consumption tokens/s in the JSON")
    write_json(args.json, device, args, {"overrides": overrides, "new_tokens": args.new_tokens,
                                         "results": {name: {str(C): r for C, r in rs.items()} for name, rs in results.items()}})


if __name__ == "__main__":
    main()
