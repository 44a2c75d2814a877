"""Training step time: tokens/s and peak memory of `none`, `rmt` and `lm2` on one backbone, each trained
by l2m_train's Lightning loop and by a bare PyTorch loop, so the framework's overhead is a measured ratio.

Every (model, loop) pair runs in its own process, so peak resident memory is its own. Not a test.

    python benchmarks/step_time.py                       # the default: 4 layers, d=256, 4 segments of 128
    python benchmarks/step_time.py --steps 30 --json out.json model.d_model=512
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

DEFAULTS = ["model=small", "model.n_layers=4", "data.segments=4", "train.micro_batch=8", "model.memory.slots=32"]
KINDS = ["none", "rmt", "lm2"]
LOOPS = ["bare", "lightning"]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(kind: str, loop: str, steps: int, warmup: int, overrides: list[str]) -> dict:
    """One (model, loop) pair in this process: seconds per optimizer step after `warmup` steps."""
    import torch
    from torch.utils.data import DataLoader

    from l2m_train.config import load_config
    from l2m_train.train.losses import lm_loss
    from l2m_train.train.optim import adamw

    cfg = load_config(None, DEFAULTS + overrides + [f"model.memory.kind={kind}"])
    torch.manual_seed(0)
    T = cfg.data.segments * cfg.model.segment_len
    tokens = torch.randint(0, cfg.model.vocab_size, ((steps + warmup) * cfg.train.micro_batch, T + 1))
    # A full language-modelling loss on random tokens, as in pretraining; both loops read the same loader.
    samples = [{"input_ids": row[:-1], "labels": row[1:]} for row in tokens]
    batches = DataLoader(samples, batch_size=cfg.train.micro_batch)
    marks: list[float] = []

    if loop == "bare":
        from l2m_train.model import MemoryDecoder

        model = MemoryDecoder(cfg.model)
        opt = adamw(model, cfg.optim)
        for batch in batches:
            loss = lm_loss(model(batch["input_ids"]).logits, batch["labels"], cfg.model.segment_len).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            opt.step()
            marks.append(time.perf_counter())
        params = sum(p.numel() for p in model.parameters())
    else:
        import lightning as L
        from lightning.pytorch.callbacks import Callback
        from omegaconf import OmegaConf

        from l2m_train.train.module import LM2Module

        class Clock(Callback):
            def on_train_batch_end(self, *args):
                marks.append(time.perf_counter())

        module = LM2Module(OmegaConf.to_container(OmegaConf.structured(cfg)))
        trainer = L.Trainer(max_steps=steps + warmup, accelerator="cpu", devices=1, precision="32-true",
                            gradient_clip_val=cfg.optim.grad_clip, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[Clock()])
        trainer.fit(module, train_dataloaders=batches)
        params = sum(p.numel() for p in module.model.parameters())
    seconds = (marks[-1] - marks[warmup - 1]) / (len(marks) - warmup)
    return {"kind": kind, "loop": loop, "params": params, "tokens_per_step": cfg.train.micro_batch * T,
            "step_s": seconds, "tokens_per_s": cfg.train.micro_batch * T / seconds, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per run (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--one", nargs=2, metavar=("KIND", "LOOP"), help=argparse.SUPPRESS)  # child process
    parser.add_argument("overrides", nargs="*", help="config overrides on top of the benchmark's defaults")
    args = parser.parse_args()
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(measure(*args.one, args.steps, args.warmup, args.overrides)))
        return
    rows = []
    for kind in KINDS:
        for loop in LOOPS:
            cmd = [sys.executable, __file__, "--one", kind, loop, f"--steps={args.steps}", f"--warmup={args.warmup}",
                   f"--threads={args.threads}", *args.overrides]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  measured {kind:5s} {loop:9s} {rows[-1]['tokens_per_s']:9.0f} tokens/s", file=sys.stderr)
    by = {(r["kind"], r["loop"]): r for r in rows}
    machine = f"{cpu_model()}, {os.cpu_count()} cores, torch threads {args.threads}"
    print(f"config: {' '.join(DEFAULTS + args.overrides)}; {args.steps} timed steps after {args.warmup}; {machine}")
    print(f"{'model':6s} {'params':>8s} {'bare tok/s':>11s} {'Lightning tok/s':>16s} {'overhead':>9s} "
          f"{'bare peak MB':>13s} {'Lightning peak MB':>18s} {'step vs none':>13s}")
    for kind in KINDS:
        bare, lit = by[kind, "bare"], by[kind, "lightning"]
        print(f"{kind:6s} {bare['params'] / 1e6:7.2f}M {bare['tokens_per_s']:11.0f} {lit['tokens_per_s']:16.0f} "
              f"{lit['step_s'] / bare['step_s']:8.3f}x {bare['peak_rss_mb']:13.0f} {lit['peak_rss_mb']:18.0f} "
              f"{bare['step_s'] / by['none', 'bare']['step_s']:12.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "overrides": DEFAULTS + args.overrides, "steps": args.steps, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
