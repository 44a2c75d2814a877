"""Training step: tokens/s, TFLOP/s, MFU and peak memory of `none` (segment-local attention), `none` (full
attention), `rmt` and `lm2` on one backbone, and each one's step time and peak memory relative to segment-local
`none`, all measured in one invocation, beside a plain compiled GPT of the same shape (the anchor, below).

Each model trains in its own worker process (so that peak memory is its own) with a bare PyTorch loop: the model,
the LM loss over every token, AdamW and gradient clipping, as LM2Module trains (Lightning's own per-step overhead
was below this machine's noise: docs/benchmarks.md). The workers take turns, a few steps each per round, so
that machine noise hits all of them alike. FLOPs: l2m_train/model/flops.py. Not a test.

    python benchmarks/step_time.py                                  # CPU, fp32: 4 layers, d=256, batch 8 × 4 × 128 tokens
    python benchmarks/step_time.py --device cuda                    # GPU, bf16: base-125m, batch 8 × 4 × 512 tokens
    python benchmarks/step_time.py --compile                        # the kinds with train.compile=true
    python benchmarks/step_time.py --rounds 10 model.d_model=512    # config overrides come last

The anchor ("gpt-anchor") is what a GPU can do with this shape and nothing of this project: a plain GPT written
here (same width, depth, heads, SwiGLU width and vocabulary; learned positions, causal SDPA over the whole
sample, tied head), torch.compile'd, trained by AdamW (fused on CUDA). Its matmuls are exactly those of `none`
with full attention, so its FLOPs per token are that model's. Each row's "MFU / anchor" is its FLOP rate over the
anchor's, measured in the same run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from common import (
    KINDS,
    add_benchmark_arguments,
    autocast,
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
    worker_arguments,
    write_json,
)
from common import cpu_model as cpu_model  # noqa: F401  (other benchmarks import it from here)
from torch import Tensor, nn

from l2m_train.model.flops import train_flops_per_token

DEFAULTS = {"cpu": ["model=small", "model.n_layers=4", "data.segments=4", "train.micro_batch=8"],
            "cuda": ["model=base-125m", "data.segments=4", "train.micro_batch=8"]}
ANCHOR = "gpt-anchor"


class AnchorBlock(nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int, d_ff: int, eps: float):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, d // heads
        self.norm1, self.norm2 = nn.RMSNorm(d, eps=eps), nn.RMSNorm(d, eps=eps)
        self.qkv = nn.Linear(d, d + 2 * kv_heads * self.head_dim, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.gate_up = nn.Linear(d, 2 * d_ff, bias=False)
        self.down = nn.Linear(d_ff, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).split([d, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim], dim=-1)
        q, k, v = (t.view(B, T, -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv_heads != self.heads)
        x = x + self.out(y.transpose(1, 2).reshape(B, T, d))
        gate, up = self.gate_up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class AnchorGPT(nn.Module):
    """The anchor: a plain GPT of the backbone's shape (module docstring)."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, kv_heads: int, d_ff: int, context: int, eps: float):
        super().__init__()
        self.embed, self.position = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList(AnchorBlock(d, heads, kv_heads, d_ff, eps) for _ in range(layers))
        self.norm = nn.RMSNorm(d, eps=eps)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: Tensor) -> Tensor:
        x = self.embed(idx) + self.position.weight[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.T  # tied head


def anchor_step(model: nn.Module, opt: torch.optim.Optimizer, tokens: Tensor, grad_clip: float, device: torch.device) -> None:
    """One optimizer step of the anchor: the LM loss over the whole sample, clipping, AdamW. tokens: B × (T + 1)."""
    with autocast(device):
        logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()


def build_anchor(overrides: list[str], device: torch.device):
    """(config, compiled anchor, its AdamW, its FLOPs per token: those of `none` with full attention)."""
    cfg, _, _ = build(overrides + KINDS["none-full"], device, optimizer=False)
    m = cfg.model
    torch.manual_seed(0)
    model = AnchorGPT(m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ff, cfg.sample_len, m.norm_eps).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                            weight_decay=cfg.optim.weight_decay, fused=device.type == "cuda")
    return cfg, torch.compile(model), opt, train_flops_per_token(m, cfg.sample_len)


def worker(name: str, args: argparse.Namespace) -> None:
    device = setup(args.device, args.threads, args.cudnn_sdpa)
    runtime = runtime_mb(device)
    overrides = DEFAULTS[args.device] + args.overrides
    if name == ANCHOR:
        cfg, model, opt, flops_per_token = build_anchor(overrides, device)
        step = lambda tokens: anchor_step(model, opt, tokens, cfg.optim.grad_clip, device)  # noqa: E731
    else:
        compiled = [f"train.compile={str(args.compile).lower()}"]
        cfg, model, opt = build(overrides + KINDS[name] + compiled, device)
        flops_per_token = train_flops_per_token(cfg.model, cfg.sample_len)
        step = lambda tokens: train_step(model, opt, tokens, cfg, device)  # noqa: E731
    B, T = cfg.train.micro_batch, cfg.sample_len
    batches = torch.randint(0, cfg.model.vocab_size, (4, B, T + 1), device=device)  # random tokens, cycled
    done = 0

    def run(request: dict) -> dict:
        nonlocal done
        sync(device)
        start = time.perf_counter()
        for _ in range(request["steps"]):
            step(batches[done % len(batches)])
            done += 1
        sync(device)
        return {"seconds": time.perf_counter() - start, "params": sum(p.numel() for p in model.parameters()),
                "tokens_per_step": B * T, "flops_per_token": flops_per_token, "peak_mb": peak_memory_mb(device),
                "runtime_mb": runtime}

    serve(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of turns; each model runs --steps per turn (default: 5)")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per model per round (default: 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first (default: 2)")
    models = [*KINDS, ANCHOR]
    parser.add_argument("--kinds", nargs="+", choices=models, default=models, help="models (default: all four and the anchor)")
    parser.add_argument("--compile", action="store_true", help="the kinds with train.compile=true (the anchor is always compiled)")
    add_benchmark_arguments(parser, "step_time.json")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args)
    device = setup(args.device, 1)  # the parent only waits
    passed = [*worker_arguments(args), *(["--compile"] if args.compile else []), *args.overrides]
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
    anchor = next((r["tflops"] for r in rows if r["kind"] == ANCHOR), None)
    for r in rows:
        r["mfu_vs_anchor"] = None if anchor is None else r["tflops"] / anchor  # the same as the ratio of MFUs
    overrides = DEFAULTS[args.device] + args.overrides
    print_table(
        f"Training step, {args.device} ({' '.join(overrides)}){', train.compile=true' if args.compile else ''}",
        ["model", "params", "tokens/s", "TFLOP/s", "MFU", "MFU / anchor", "peak MB", f"step time / {base}", "(per round)",
         f"peak memory / {base}"],
        [[r["kind"], f"{r['params'] / 1e6:.2f}M", fmt(r["tokens_per_s"]), f"{r['tflops']:.3g}",
          "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%", fmt(r["mfu_vs_anchor"], ".2f"), fmt(r["peak_mb"]),
          f"{r['step_vs_base']:.2f}x", f"{min(r['step_vs_base_per_round']):.2f}-{max(r['step_vs_base_per_round']):.2f}",
          f"{r['memory_vs_base']:.2f}x"] for r in rows],
        caption=f"{args.rounds} rounds × {args.steps} steps per model after {args.warmup} warm-up steps, medians over rounds; "
                f"peak memory ratio without the {fmt(rows[0]['runtime_mb'])} MB of runtime before the model was built; "
                f"peak TFLOP/s for MFU: {fmt(None if peak is None else peak / 1e12, '.4g')}")
    write_json(args.json, device, args, {"overrides": overrides, "compile": args.compile, "rounds": args.rounds, "steps": args.steps,
                                         "warmup": args.warmup, "peak_tflops": None if peak is None else peak / 1e12, "rows": rows})


if __name__ == "__main__":
    main()
