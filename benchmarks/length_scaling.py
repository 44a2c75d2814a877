"""Sample length scaling: training tokens/s and peak memory of `none` (segment-local and full attention), `rmt`
and `lm2` as one sample grows from 1k to 128k tokens (powers of 2) at a fixed BPTT window.

A step is what `l2m train` does: the whole sample forward with the loss over every token, the backward of each
segment that the BPTT window (`model.memory.bptt_segments`) cuts off taken as soon as it is computed and the rest
at the end (so activations are kept for one window), clipping, AdamW.
Each model runs in its own worker process, lengths in increasing order; a model that runs out of memory
(CUDA OOM, or its worker killed) is recorded as OOM and not grown further. Not a test.

    python benchmarks/length_scaling.py                              # CPU: tiny model, 1k..16k tokens, batch 1
    python benchmarks/length_scaling.py --device cuda --max-len 131072
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
    train_step,
    worker_arguments,
    write_json,
)

DEFAULTS = {"cpu": ["model=tiny", "model.segment_len=128", "model.memory.slots=16", "model.memory.bptt_segments=4"],
            "cuda": ["model=small", "model.memory.bptt_segments=4"]}


def worker(name: str, args: argparse.Namespace) -> None:
    device = setup(args.device, args.threads, args.cudnn_sdpa)
    cfg, model, opt = build(DEFAULTS[args.device] + args.overrides + KINDS[name], device)

    def measure(T: int, warmup: bool) -> float:
        """Seconds of one step on a sample of T tokens, after the warm-up steps if asked."""
        tokens = torch.randint(0, cfg.model.vocab_size, (args.batch, T + 1), device=device)
        if warmup:
            for _ in range(args.warmup):
                train_step(model, opt, tokens, cfg, device)
            reset_peak_memory(device)
        sync(device)
        start = time.perf_counter()
        train_step(model, opt, tokens, cfg, device)
        sync(device)
        return time.perf_counter() - start

    def run(request: dict) -> dict:
        try:
            seconds = measure(request["length"], request["warmup"])
        except RuntimeError as err:  # torch.OutOfMemoryError is one
            if not is_oom(err):
                raise
            seconds = None
        opt.zero_grad(set_to_none=True)
        peak = peak_memory_mb(device)
        release(device)  # here, once the exception no longer holds the failed step's tensors
        return {"oom": True} if seconds is None else {"seconds": seconds, "peak_mb": peak}

    serve(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-len", type=int, default=1024, help="shortest sample, tokens (default: 1024)")
    parser.add_argument("--max-len", type=int, default=16384, help="longest sample, tokens; lengths double (default: 16384)")
    parser.add_argument("--batch", type=int, default=1, help="samples per step (default: 1)")
    parser.add_argument("--steps", type=int, default=5,
                        help="timed steps per model and length, the models taking turns; tokens/s from the median (default: 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model and length first (default: 2)")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS), help="models (default: all four)")
    add_benchmark_arguments(parser, "length_scaling.json")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args)
    device = setup(args.device, 1)
    passed = worker_arguments(args) + [f"--{k}={getattr(args, k)}" for k in ("batch", "steps", "warmup")]
    passed += args.overrides
    lengths = [args.min_len * 2**i for i in range((args.max_len // args.min_len).bit_length())]
    workers = start_workers(__file__, args.kinds, passed)
    results: dict[str, dict[int, dict]] = {name: {} for name in args.kinds}
    for T in lengths:
        # Steps take turns between the models, so that a burst of other work on the machine hits no model alone.
        alive = [n for n in args.kinds if not any(r.get("oom") for r in results[n].values())]
        answers: dict[str, list[dict]] = {n: [] for n in alive}
        for i in range(args.steps):
            for name in alive if i % 2 == 0 else reversed(alive):
                last = answers[name][-1] if answers[name] else {}
                if last is not None and not last.get("oom"):  # None: the worker was killed, on CPU for memory
                    answers[name].append(workers[name].ask({"length": T, "warmup": i == 0}))
        for name, got in answers.items():
            if any(a is None or a.get("oom") for a in got):
                results[name][T] = {"oom": True, "killed": None in got}
            else:
                times = [a["seconds"] for a in got]
                results[name][T] = {"tokens_per_s": args.batch * T / statistics.median(times), "step_s": times,
                                    "peak_mb": got[-1]["peak_mb"]}
        print(f"  {T:,} tokens: " + ", ".join(f"{n} {fmt(results[n][T].get('tokens_per_s'))}" for n in alive), file=sys.stderr)
        # After every length, so that a run stopped by a time limit (benchmarks/gpu_check.sh) keeps what it measured.
        write_json(args.json, device, args, {"overrides": DEFAULTS[args.device] + args.overrides, "batch": args.batch,
                                             "results": {name: {str(T): r for T, r in rs.items()} for name, rs in results.items()}})
    for w in workers.values():
        w.close()

    def cell(name: str, T: int, key: str) -> str:
        r = results[name].get(T)
        return "" if r is None else "OOM" if r.get("oom") else fmt(r[key])

    overrides = DEFAULTS[args.device] + args.overrides
    columns = ["tokens"] + [f"{name} tok/s" for name in args.kinds] + [f"{name} peak MB" for name in args.kinds]
    print_table(f"Sample length scaling, {args.device} ({' '.join(overrides)})", columns,
                [[f"{T:,}"] + [cell(n, T, "tokens_per_s") for n in args.kinds] + [cell(n, T, "peak_mb") for n in args.kinds]
                 for T in lengths],
                caption=f"batch {args.batch}; tokens/s from the median of {args.steps} steps after {args.warmup} per length")


if __name__ == "__main__":
    main()
