"""Rung 0 of issue 14 (docs/RESULTS.md): does the quickstart's recall learn on any CPU, whatever the seed?

Trains the quickstart config (`l2m train`, nothing changed but the overrides given) for each kind, seed and torch
CPU kernel path, side by side, and reports each run's held-out accuracy and the first validation step at which it
reached 99%. `ATEN_CPU_CAPABILITY` picks the kernels torch would use on another CPU (avx2 on a CPU without AVX-512,
default on one without AVX2), so one machine shows what float rounding elsewhere does to the trajectory.

    python benchmarks/quickstart_seeds.py                                    # lm2 and rmt, seeds 0-4, avx2 and native
    python benchmarks/quickstart_seeds.py --kinds lm2 --seeds 0 1 --capabilities avx2 -- optim.lr=3e-3
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from common import cpu_model

TARGET = 0.99  # the accuracy a run has to reach, and keep, to count as learned


def train(kind: str, seed: int, capability: str, args: argparse.Namespace) -> dict:
    name = f"{kind}-seed{seed}-{capability}"
    command = ["l2m", "train", f"model.memory.kind={kind}", f"train.seed={seed}", "train.compare_baseline=false",
               "train.threads=1", "wandb.mode=disabled", f"run.root={args.runs}", f"run.name={name}", *args.overrides]
    env = os.environ | {"OMP_NUM_THREADS": "1"} | ({} if capability == "native" else {"ATEN_CPU_CAPABILITY": capability})
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    run = Path(args.runs) / name
    if done.returncode:
        return {"name": name, "kind": kind, "seed": seed, "capability": capability, "failed": done.stderr.strip()[-300:]}
    result = json.loads((run / "result.json").read_text())
    curve = [(int(row["step"]), float(row["val/acc"])) for row in csv.DictReader(open(run / "logs" / "metrics.csv"))
             if row.get("val/acc")]
    learned = next((step for i, (step, _) in enumerate(curve) if all(acc >= TARGET for _, acc in curve[i:])), None)
    print(f"{name}: {result['val_acc']:.1%}", flush=True)
    return {"name": name, "kind": kind, "seed": seed, "capability": capability, "command": shlex.join(command),
            "val_acc": result["val_acc"], "learned_at_step": learned, "steps": result["steps"], "seconds": result["seconds"],
            "curve": curve}


def markdown(runs: list[dict]) -> str:
    lines = ["| kind | kernels | seed | held-out accuracy | ≥ 99% from step | steps | train time |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        if "failed" in r:
            lines.append(f"| {r['kind']} | {r['capability']} | {r['seed']} | failed: {r['failed'][-80:]} | | | |")
        else:
            lines.append(f"| {r['kind']} | {r['capability']} | {r['seed']} | {r['val_acc']:.1%} | {r['learned_at_step'] or 'never'} "
                         f"| {r['steps']:,} | {r['seconds']:.0f} s |")
    for kind in dict.fromkeys(r["kind"] for r in runs):
        ok = [r for r in runs if r["kind"] == kind and r.get("val_acc", 0) >= TARGET]
        lines.append(f"\n{kind}: {len(ok)} of {sum(r['kind'] == kind for r in runs)} runs at ≥ {TARGET:.0%}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", nargs="+", default=["lm2", "rmt"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--capabilities", nargs="+", default=["avx2", "native"],
                        help="ATEN_CPU_CAPABILITY values (avx2, avx512, default) or native: torch's own choice")
    parser.add_argument("--parallel", type=int, default=2, help="runs side by side, one thread each (default: 2)")
    parser.add_argument("--runs", default="runs/quickstart-seeds", help="one run directory per run here")
    parser.add_argument("--out", default="benchmarks/out/quickstart_seeds.json")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run (after --)")
    args = parser.parse_args()
    jobs = [(k, s, c) for c in args.capabilities for k in args.kinds for s in args.seeds]
    with ThreadPoolExecutor(args.parallel) as pool:
        runs = list(pool.map(lambda job: train(*job, args), jobs))
    record = {"machine": f"{cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__} (native kernels: "
                         f"{torch.backends.cpu.get_cpu_capability()})", "command": shlex.join(["python", *sys.argv]), "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(record["machine"])
    print(markdown(runs))


if __name__ == "__main__":
    main()
