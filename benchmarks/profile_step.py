"""Where a training step's time goes: torch.profiler over the step of `benchmarks/step_time.py` (the same models,
sizes and `train_step`), per model: the top operators by their own time, host-device syncs, kernel launches, the
early backwards of `segment_backward.py`, recomputation by activation checkpointing and the attention kernel
that SDPA chose. Not a test.

    python benchmarks/profile_step.py                                  # CPU, fp32, step_time's CPU sizes
    python benchmarks/profile_step.py --device cuda --trace benchmarks/out/traces
    python benchmarks/profile_step.py --kinds lm2 model.activation_checkpointing=true

Reading the columns:
- syncs: operators that hand a device value to the host (`aten::_local_scalar_dense`: `.item()`, `bool()`,
  `.tolist()`; `aten::nonzero`), plus on CUDA the runtime's explicit synchronisations. On CPU they cost nothing
  but show where a GPU would wait.
- linear calls: `aten::linear` calls per step; with activation checkpointing the recomputed forward shows here
  as more calls than the same model without it.
- attention: which SDPA implementation ran (flash, efficient, cuDNN or math), by call count.
"""
from __future__ import annotations

import argparse
import time
from collections import Counter

import torch
from common import KINDS, add_benchmark_arguments, build, fmt, print_table, setup, sync, train_step, write_json
from step_time import DEFAULTS
from torch.profiler import ProfilerActivity, profile, record_function

SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "cudaStreamSynchronize", "cudaDeviceSynchronize",
            "cudaEventSynchronize")
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")
ATTENTION = {"flash": "flash_attention", "efficient": "efficient_attention", "cudnn": "cudnn_attention",
             "math": "_scaled_dot_product_attention_math"}


def profile_kind(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    cfg, model, opt = build(DEFAULTS[args.device] + args.overrides + KINDS[name], device)
    B, T = cfg.train.micro_batch, cfg.sample_len
    tokens = torch.randint(0, cfg.model.vocab_size, (B, T + 1), device=device)
    for _ in range(args.warmup):
        train_step(model, opt, tokens, cfg, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            with record_function("step"):
                train_step(model, opt, tokens, cfg, device)
        sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    if args.trace:
        prof.export_chrome_trace(f"{args.trace}/{name}.json")
    events = prof.key_averages()
    calls = Counter({e.key: e.count for e in events})
    own = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    top = sorted(events, key=lambda e: getattr(e, own), reverse=True)[: args.top]
    total_own = sum(getattr(e, own) for e in events) or 1
    early_us = next((e.cpu_time_total for e in events if e.key == "early_backward"), 0.0)
    segments = -(-T // cfg.model.segment_len)
    return {
        "kind": name, "step_s": seconds, "segments": segments,
        "syncs_per_step": {op: calls[op] / args.steps for op in SYNC_OPS if calls[op]},
        "launches_per_step": sum(calls[op] for op in LAUNCHES) / args.steps,
        "early_backwards_per_step": calls["early_backward"] / args.steps,
        "early_backward_share": early_us / 1e6 / args.steps / seconds,
        "linear_calls_per_step": calls["aten::linear"] / args.steps,
        "activation_checkpointing": cfg.model.activation_checkpointing,
        "attention": {kind: sum(c for op, c in calls.items() if key in op) / args.steps for kind, key in ATTENTION.items()},
        "top": [{"op": e.key, "calls_per_step": e.count / args.steps, "ms_per_step": getattr(e, own) / 1e3 / args.steps,
                 "share": getattr(e, own) / total_own} for e in top],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="profiled optimizer steps per model (default: 3)")
    parser.add_argument("--warmup", type=int, default=2, help="unprofiled steps per model first (default: 2)")
    parser.add_argument("--top", type=int, default=8, help="operators listed per model (default: 8)")
    parser.add_argument("--trace", help="a folder to write each model's Chrome trace to (default: none)")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS), help="models (default: all four)")
    add_benchmark_arguments(parser, "profile_step.json")
    args = parser.parse_args()
    device = setup(args.device, args.threads, args.cudnn_sdpa)
    rows = [profile_kind(name, args, device) for name in args.kinds]
    print_table(f"Training step profile, {args.device} ({' '.join(DEFAULTS[args.device] + args.overrides)})",
                ["model", "step ms", "syncs/step", "launches/step", "early backwards (share of step)", "linear calls/step",
                 "attention calls/step"],
                [[r["kind"], fmt(1e3 * r["step_s"], ",.1f"), fmt(sum(r["syncs_per_step"].values()), ".0f"),
                  fmt(r["launches_per_step"], ",.0f"),
                  f"{r['early_backwards_per_step']:.0f} ({100 * r['early_backward_share']:.0f}%)",
                  fmt(r["linear_calls_per_step"], ".0f"),
                  ", ".join(f"{k} {v:.0f}" for k, v in r["attention"].items() if v) or "none"] for r in rows])
    for r in rows:
        print_table(f"{r['kind']}: top operators by own time", ["operator", "calls/step", "ms/step", "share"],
                    [[t["op"], fmt(t["calls_per_step"], ",.0f"), fmt(t["ms_per_step"], ",.1f"), f"{100 * t['share']:.1f}%"]
                     for t in r["top"]])
    write_json(args.json, device, args, {"overrides": DEFAULTS[args.device] + args.overrides, "steps": args.steps,
                                         "warmup": args.warmup, "rows": rows})


if __name__ == "__main__":
    main()
