"""The auxiliary-loss ablation (docs/design.md §3): one budget, four lm2 runs (no auxiliary loss, reconstruction,
retrieval, both) and the same backbone without memory, on BABILong-style QA. Reports answer accuracy by
sample length and by how many segments lie between the supporting fact and the question, and the step-time
cost of each loss, timed in one process, interleaved.

Build the data first (the commands are in the header of conf/experiment/aux-ablation.yaml), then:

    python benchmarks/aux_ablation.py --json docs/aux_ablation.json
    python benchmarks/aux_ablation.py --seeds 0 1 2 train.max_tokens=8000000     # more seeds, a bigger budget
    python benchmarks/aux_ablation.py --timing-only model=small model.vocab_size=1024   # step cost, bigger model
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict

from step_time import cpu_model

VARIANTS = {  # lm2 with each auxiliary loss; the same backbone without memory (segment-local) as a reference
    "lm2": [],
    "lm2 + reconstruction": ["loss.reconstruction.weight={rec}"],
    "lm2 + retrieval": ["loss.retrieval.weight={ret}"],
    "lm2 + both": ["loss.reconstruction.weight={rec}", "loss.retrieval.weight={ret}"],
    "no memory": ["model.memory.kind=none"],
}


def variant_config(args, variant: str, seed: int):
    from l2m_train.config import load_config

    extra = [o.format(rec=args.rec, ret=args.ret) for o in VARIANTS[variant]]
    name = variant.replace(" + ", "+").replace(" ", "-")
    return load_config(args.config, args.overrides + extra + [f"train.seed={seed}", f"run.name=aux-ablation/{name}-s{seed}"])


GAPS = ["same segment", "1-2 back", "3+ back"]


def gap_bucket(row: dict, segment_len: int) -> str:
    """Segments between the earliest supporting fact's last token and the question's first."""
    end = min(row["facts"][i][1] for i in row["supporting"]) - 1
    gap = row["question_span"][0] // segment_len - end // segment_len
    return GAPS[0] if gap == 0 else GAPS[1] if gap <= 2 else GAPS[2]


def group_order(group: str) -> tuple[int, int]:
    """all, then lengths ascending, then the gaps from near to far."""
    if group.startswith("length "):
        return 1, int(group.split()[1])
    return (0, 0) if group == "all" else (2, GAPS.index(group))


def evaluate(run_dir: str) -> dict:
    """Exact answers (greedy decoding gives every answer token and end-of-text) on the held-out split, by group."""
    from l2m_train.eval.babilong import exact_answers, rows_from_dataset
    from l2m_train.train.checkpoint_layout import load_model

    model, cfg, tokenizer = load_model(run_dir)
    rows = rows_from_dataset(cfg.data.qa.path, tokenizer)
    right, total = defaultdict(int), defaultdict(int)
    for r, ok in zip(rows, exact_answers(model, rows)):
        for group in ("all", f"length {r['target_length']}", gap_bucket(r, cfg.model.segment_len)):
            right[group] += ok
            total[group] += 1
    return {g: {"accuracy": right[g] / total[g], "samples": total[g]} for g in total}


def step_times(args, repeats: int) -> dict[str, float]:
    """Median seconds per optimizer step of each variant on the same real batch, interleaved in this process."""
    import torch
    from omegaconf import OmegaConf

    from l2m_train.data.module import TrainingData
    from l2m_train.train.module import LM2Module
    from l2m_train.train.optim import adamw

    steps = {}
    for variant in VARIANTS:
        cfg = variant_config(args, variant, 0)
        data = TrainingData(cfg)
        batch = next(iter(data.train_dataloader()))  # the first stage's first micro-batch
        torch.manual_seed(0)
        module = LM2Module(OmegaConf.to_container(OmegaConf.structured(cfg)))
        module.log = lambda *a, **k: None  # no Trainer here: timing only
        steps[variant] = (module, adamw(module, cfg.optim), batch)
    times = defaultdict(list)
    for _ in range(repeats):
        for variant, (module, optimizer, batch) in steps.items():
            started = time.perf_counter()
            module._shared_step(batch, "train").backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times[variant].append(time.perf_counter() - started)
    return {variant: statistics.median(t[1:]) for variant, t in times.items()}  # the first step warms up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="aux-ablation", help="experiment (default: the built-in aux-ablation)")
    parser.add_argument("--rec", type=float, default=5.0, help="reconstruction weight when on (default 5)")
    parser.add_argument("--ret", type=float, default=0.1, help="retrieval weight when on (default 0.1)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--timing-steps", type=int, default=21)
    parser.add_argument("--timing-only", action="store_true", help="only time the steps (e.g. of a bigger model)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. train.max_tokens=8000000")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from l2m_train.train.run import execute, plan

    runs = []
    for seed in [] if args.timing_only else args.seeds:
        for variant in VARIANTS:
            result = execute(plan(variant_config(args, variant, seed)))
            accuracy = evaluate(result.run_dir)  # its latest checkpoint
            runs.append({"variant": variant, "seed": seed, "seconds": result.seconds, "tokens": result.tokens,
                         "accuracy": accuracy})
            print(f"{variant} seed {seed}: {accuracy['all']['accuracy']:.1%} exact in {result.seconds:.0f} s", flush=True)
    seconds = step_times(args, args.timing_steps)

    groups = sorted(runs[0]["accuracy"], key=group_order) if runs else []
    table = Table(title=f"Exact answers on held-out stories, mean of {len(args.seeds)} seed(s); step time on one batch")
    for column in ["run", *groups, "s/step", "× lm2"]:
        table.add_column(column, justify="left" if column == "run" else "right")
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        cells = [f"{statistics.mean(r['accuracy'][g]['accuracy'] for r in mine):.1%}" for g in groups]
        table.add_row(variant, *cells, f"{seconds[variant]:.3f}", f"{seconds[variant] / seconds['lm2']:.2f}")
    Console().print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": cpu_model(), "args": vars(args), "runs": runs, "seconds_per_step": seconds}, f, indent=2)


if __name__ == "__main__":
    main()
