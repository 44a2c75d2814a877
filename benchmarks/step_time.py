"""Training step: tokens/s, TFLOP/s, MFU and peak memory of `none` (segment-local attention), `none` (full
attention), `rmt` and `lm2` on one backbone, and each one's step time and peak memory relative to segment-local
`none`, all measured in one invocation.

Each model trains in its own worker process (so that peak memory is its own) with a bare PyTorch loop: the model,
the LM loss over every token, AdamW and gradient clipping, as LM2Module trains (Lightning's own per-step overhead
was below this machine's noise: docs/benchmarks.md). The workers take turns, a few steps each per round, so
that machine noise hits all of them alike. FLOPs: l2m_train/model/flops.py. Not a test.

    python benchmarks/step_time.py                                  # CPU, fp32: 4 layers, d=256, batch 8 × 4 × 128 tokens
    python benchmarks/step_time.py --device cuda                    # GPU, bf16: base-125m, batch 8 × 4 × 512 tokens
    python benchmarks/step_time.py --rounds 10 model.d_model=512    # config overrides come last
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
    peak_flops,
    peak_memory_mb,
    print_table,
    runtime_mb,
    serve,
    setup,
    start_workers,
    sync,
    train_step,
    write_json,
)
from common import cpu_model as cpu_model  # noqa: F401  (other benchmarks import it from here)

from l2m_train.model.flops import train_flops_per_token

DEFAULTS = {"cpu": ["model=small", "model.n_layers=4", "data.segments=4", "train.micro_batch=8"],
            "cuda": ["model=base-125m", "data.segments=4", "train.micro_batch=8"]}


def worker(name: str, args: argparse.Namespace) -> None:
    device = setup(args.device, args.threads)
    runtime = runtime_mb(device)
    cfg, model, opt = build(DEFAULTS[args.device] + KINDS[name] + args.overrides, device)
    B, T = cfg.train.micro_batch, cfg.sample_len
    batches = torch.randint(0, cfg.model.vocab_size, (4, B, T + 1), device=device)  # random tokens, cycled
    done = 0

    def run(request: dict) -> dict:
        nonlocal done
        sync(device)
        start = time.perf_counter()
        for _ in range(request["steps"]):
            train_step(model, opt, batches[done % len(batches)], cfg, device)
            done += 1
        sync(device)
        return {"seconds": time.perf_counter() - start, "params": sum(p.numel() for p in model.parameters()),
                "tokens_per_step": B * T, "flops_per_token": train_flops_per_token(cfg.model, T), "peak_mb": peak_memory_mb(device),
                "runtime_mb": runtime}

    serve(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of turns; each model runs --steps per turn (default: 5)")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per model per round (default: 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first (default: 2)")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS), help="models (default: all four)")
    add_benchmark_arguments(parser, "step_time.json")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args)
    device = setup(args.device, 1)  # the parent only waits
    passed = [f"--device={args.device}", f"--threads={args.threads}", *args.overrides]
    workers = start_workers(__file__, args.kinds, passed)
    for w in workers.values():
        w.ask({"steps": args.warmup})
    turns: dict[str, list[dict]] = {name: [] for name in args.kinds}
    for r in range(args.rounds):
        for name in args.kinds if r % 2 == 0 else reversed(args.kinds):  # alternate who follows whom
            turns[name].append(workers[name].ask({"steps": args.steps}))
        print(f"  round {r + 1}/{args.rounds}", file=sys.stderr)
    for w in workers.values():
        w.close()

    peak = peak_flops(device, args.peak_tflops)
    base = args.kinds[0]
    # On CPU the runtime (Python, torch) is taken out of the peak for the ratio, leaving what training the model costs.
    training_mb = {name: ts[-1]["peak_mb"] - ts[-1]["runtime_mb"] for name, ts in turns.items()}
    rows = []
    for name, ts in turns.items():
        # Medians over rounds resist bursts of other work; a ratio is taken within each round, between adjacent turns.
        last, step_s = ts[-1], statistics.median(t["seconds"] for t in ts) / args.steps
        tokens_per_s = last["tokens_per_step"] / step_s
        flops_per_s = tokens_per_s * last["flops_per_token"]
        per_round = [t["seconds"] / b["seconds"] for t, b in zip(ts, turns[base])]
        rows.append({"kind": name, "params": last["params"], "tokens_per_step": last["tokens_per_step"], "step_s": step_s,
                     "turn_s": [t["seconds"] for t in ts], "tokens_per_s": tokens_per_s, "flops_per_token": last["flops_per_token"],
                     "tflops": flops_per_s / 1e12, "mfu": None if peak is None else flops_per_s / peak, "peak_mb": last["peak_mb"],
                     "runtime_mb": last["runtime_mb"], "step_vs_base": statistics.median(per_round), "step_vs_base_per_round": per_round,
                     "memory_vs_base": training_mb[name] / training_mb[base]})
    overrides = DEFAULTS[args.device] + args.overrides
    print_table(
        f"Training step, {args.device} ({' '.join(overrides)})",
        ["model", "params", "tokens/s", "TFLOP/s", "MFU", "peak MB", f"step time / {base}", "(per round)", f"peak memory / {base}"],
        [[r["kind"], f"{r['params'] / 1e6:.2f}M", fmt(r["tokens_per_s"]), f"{r['tflops']:.3g}",
          "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%", fmt(r["peak_mb"]),
          f"{r['step_vs_base']:.2f}x", f"{min(r['step_vs_base_per_round']):.2f}-{max(r['step_vs_base_per_round']):.2f}",
          f"{r['memory_vs_base']:.2f}x"] for r in rows],
        caption=f"{args.rounds} rounds × {args.steps} steps per model after {args.warmup} warm-up steps, medians over rounds; "
                f"peak memory ratio without the {fmt(rows[0]['runtime_mb'])} MB of runtime before the model was built; "
                f"peak TFLOP/s for MFU: {fmt(None if peak is None else peak / 1e12, '.4g')}")
    write_json(args.json, device, args, {"overrides": overrides, "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
                                         "peak_tflops": None if peak is None else peak / 1e12, "rows": rows})


if __name__ == "__main__":
    main()
