"""The BABILong results of record (issue 7, docs/RESULTS.md), as one command: build the data, train five kinds of one
backbone on one token budget and curriculum, evaluate each on held-out stories at every length, and write a JSON
record and a markdown table.

    python benchmarks/babilong_results.py --preset cpu     # 2 CPU cores, ~40 min: the pipeline at a tiny scale
    python benchmarks/babilong_results.py --preset gpu     # one GPU, bf16: the results of record
    python benchmarks/babilong_results.py --preset gpu --long              # also 64k and 128k
    python benchmarks/babilong_results.py --preset gpu train.max_tokens=400000000 --runs runs/bl-400m   # a bigger budget
    python benchmarks/babilong_results.py --preset cpu --haystack BOOKS --eval-haystack OTHER_BOOKS --data data/bl-unseen \
        --runs runs/bl-unseen
        # evaluated among books the runs never saw: a recipe that learned the training books, not the task, shows
    python benchmarks/babilong_results.py --preset ladder-cpu --kinds none-full lm2 rmt none-local --init-from none-full
        # none-full first; the other kinds then start from its weights (the memory fresh): pretrain, then add memory

Every step is an `l2m` command, run as users run it, printed before it runs and recorded in the JSON. The kinds:
segment-local and full-attention `none`, `rmt`, `lm2`, and `lm2` with both auxiliary losses (docs/aux-losses.md).
Each output directory keeps a stamp of the command and inputs that made it, so a step already done is skipped and an
interrupted run picks up where it stopped (a training run resumes from its checkpoint). A finished run made by another
command or on other data is refused: pass another --runs.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch
from common import KINDS, machine

from l2m_train.data_pipelines.babilong import parse_length
from l2m_train.eval.report import length_label

BABI = "../shared/data/babi/en-10k"  # train files only: evaluation takes the stories `--holdout` kept out of training
TEXT = "../shared/data/text"  # the default background text, for training and evaluation alike
STAMP = ".babilong_results"  # in each output directory: the key of the command and inputs that made it
# LM2-1.7B, BABILong at 8k, as issue 7 quotes the LM2 paper (arXiv:2502.06049; not re-checked here): another scale,
# budget and training data, shown beside ours for orientation only.
PAPER = {"model": "LM2-1.7B (paper)", "length": 8192, "accuracy": {"qa1": 0.34, "qa2": 0.12, "qa3": 0.31, "qa4": 0.26, "qa5": 0.63}}


@dataclass(frozen=True)
class Preset:
    config: str  # the experiment in conf/experiment/: model, curriculum, budget
    vocab: int  # BPE vocabulary, trained on the books and the bAbI files
    train_lengths: tuple[str, ...]  # sample lengths built for training
    train_samples: int  # per task and length
    val_samples: int  # per task and length, held-out stories (training's own end-of-run validation)
    tasks: tuple[str, ...]
    lengths: tuple[str, ...]  # evaluated
    long: tuple[str, ...]  # evaluated too with --long
    samples: int  # evaluated per task and length
    batch_tokens: int  # padded positions per evaluation batch
    full_max: int | None  # longest length full attention is evaluated at (its cost grows with the square); None: all
    eval_threads: int | None  # OMP_NUM_THREADS for evaluation (training sets train.threads in its YAML)
    generated: int = 0  # train on this many stories per task from `l2m data babi-generate`; 0: the real bAbI stories
    finetune_tokens: int = 0  # with --init-from: the budget of the runs that start from another's weights; 0: the config's


PRESETS = {
    "cpu": Preset(config="babilong-results-cpu", vocab=1024, train_lengths=("0k", "256", "512", "1k"), train_samples=8000,
                  val_samples=25, tasks=("qa1",), lengths=("0k", "1k", "2k", "4k", "8k", "16k", "32k"), long=("64k", "128k"),
                  samples=25, batch_tokens=65536, full_max=16384, eval_threads=1),
    "gpu": Preset(config="babilong-results-gpu", vocab=8192, train_lengths=("0k", "1k", "2k", "4k"), train_samples=5000,
                  val_samples=50, tasks=("qa1", "qa2", "qa4", "qa5"), lengths=("0k", "1k", "2k", "4k", "8k", "16k", "32k"),
                  long=("64k", "128k"), samples=100, batch_tokens=262144, full_max=None, eval_threads=None),
    # Issue 14's rungs 1 and 2: qa1 at 0k in segments of 16 tokens, trained on generated stories (none repeats),
    # evaluated on real ones.
    "ladder-gpu": Preset(config="babilong-ladder-gpu", vocab=1024, train_lengths=("0k",), train_samples=100000, val_samples=200,
                         tasks=("qa1",), lengths=("0k",), long=(), samples=250, batch_tokens=65536, full_max=None,
                         eval_threads=None, generated=20000, finetune_tokens=18432000),
    # Rung 1 at CPU scale: the same data, 2 blocks of d=128, ~1 hour of one core per run (use --kinds none-full).
    # Rung 2 at CPU scale: --init-from none-full, 6,000 steps from its weights.
    "ladder-cpu": Preset(config="babilong-ladder-cpu", vocab=1024, train_lengths=("0k",), train_samples=100000, val_samples=200,
                         tasks=("qa1",), lengths=("0k",), long=(), samples=250, batch_tokens=65536, full_max=None,
                         eval_threads=1, generated=20000, finetune_tokens=18432000),
}
FULL = "none-full"


class Steps:
    """Runs `l2m` commands, each unless its output directory holds the stamp of the same command on the same inputs."""

    def __init__(self, env: dict[str, str]):
        self.env, self.log = env, []  # env: variables set for evaluation (shown in the commands)

    def run(self, command: list[str], out: Path, upstream: str = "", env: bool = False, keep: bool = False,
            log: Path | None = None) -> tuple[str, str | None]:
        """(stamp, None) on success; (stamp, the last line on stderr) on failure. keep: refuse to redo an output that
        another command made (a finished training run) instead of replacing it. log: stderr goes there, not to ours
        (commands running side by side)."""
        extra = self.env if env else {}
        shown = " ".join([*(f"{k}={v}" for k, v in extra.items()), shlex.join(command)])
        stamp = hashlib.sha256(f"{shown}\n{upstream}".encode()).hexdigest()[:16]
        old = out / STAMP
        if old.is_file() and old.read_text() == stamp:
            print(f"up to date: {shown}", flush=True)
            self.log.append({"command": shown, "ran": False})
            return stamp, None
        if keep and old.is_file():
            raise SystemExit(f"{out} was made by another command or from other data; remove it or pass another --runs")
        print(f"$ {shown}", flush=True)
        started = time.perf_counter()
        proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=None if log is None else subprocess.DEVNULL, text=True,
                                env=os.environ | extra)
        last = ""
        with contextlib.ExitStack() as stack:
            sink = sys.stderr if log is None else stack.enter_context(open(log, "a"))
            for line in proc.stderr:  # streamed through; the last line is the reason of a failure
                sink.write(line)
                last = line.strip() or last
        code = proc.wait()
        self.log.append({"command": shown, "ran": True, "seconds": round(time.perf_counter() - started, 1), "exit_code": code})
        if code:
            return stamp, last or f"exit code {code}"
        old.write_text(stamp)
        return stamp, None

    def check(self, command: list[str], out: Path, upstream: str = "", **kw) -> str:
        stamp, failed = self.run(command, out, upstream, **kw)
        if failed:
            raise SystemExit(f"failed: {shlex.join(command)}\n  {failed}")
        return stamp


def kind_overrides(kind: str, rec: float, ret: float) -> list[str]:
    if kind == "lm2+aux":
        return [*KINDS["lm2"], f"loss.reconstruction.weight={rec}", f"loss.retrieval.weight={ret}"]
    return KINDS[kind]


def eval_command(run: Path, lengths: list[int], args: argparse.Namespace, preset: Preset, tasks: list[str], out: Path) -> list[str]:
    return ["l2m", "eval", "babilong", str(run), "--babi-dir", args.babi_dir, "--babi-split", "train", "--holdout",
            str(args.holdout), "--tasks", *tasks, "--haystack", *(args.eval_haystack or args.haystack),
            "--lengths", *map(length_label, lengths),
            "--samples", str(args.samples or preset.samples), "--batch-tokens", str(preset.batch_tokens), "--out", str(out)]


def read_rows(path: Path) -> dict:
    """task -> length label -> correct, samples, accuracy, from an `l2m eval babilong` JSON."""
    cells: dict = {}
    for task, length, correct, samples, accuracy in json.loads(path.read_text())["rows"]:
        cells.setdefault(task, {})[length_label(length)] = {"correct": correct, "samples": samples, "accuracy": accuracy}
    return cells


def read_by_distance(run: Path) -> dict:
    """task -> facts after the last supporting one -> [correct, samples], summed over the run's evaluated lengths."""
    by: dict = {}
    for path in sorted((run / "eval-babilong").rglob("babilong.json")):
        for task, counts in json.loads(path.read_text()).get("by_distance", {}).items():
            for n, (correct, samples) in counts.items():
                cell = by.setdefault(task, {}).setdefault(n, [0, 0])
                cell[0], cell[1] = cell[0] + correct, cell[1] + samples
    return by


def evaluate(steps: Steps, kind: str, run: Path, stamp: str, lengths: list[int], args: argparse.Namespace, preset: Preset,
             tasks: list[str], log: Path | None) -> tuple[dict, dict]:
    """(accuracy cells, {length label: why not run}). Full attention runs one length at a time, shortest first, so
    that a length it cannot run (time, memory) costs only that length and the longer ones."""
    if kind != FULL:
        out = run / "eval-babilong"
        steps.check(eval_command(run, lengths, args, preset, tasks, out), out, stamp, env=True, log=log)
        return read_rows(out / "babilong.json"), {}
    cells: dict = {}
    not_run: dict[str, str] = {}
    failed = None
    for length in lengths:
        label = length_label(length)
        if failed:
            not_run[label] = f"not run: failed at {failed}"
        elif preset.full_max is not None and length > preset.full_max:
            not_run[label] = (f"not run: full attention is evaluated up to {length_label(preset.full_max)} in the "
                              f"{args.preset} profile (its cost grows with the square of the length)")
        else:
            out = run / "eval-babilong" / label
            _, reason = steps.run(eval_command(run, [length], args, preset, tasks, out), out, stamp, env=True, log=log)
            if reason:
                failed, not_run[label] = label, f"failed: {reason}"
            else:
                for task, by_length in read_rows(out / "babilong.json").items():
                    cells.setdefault(task, {}).update(by_length)
    return cells, not_run


def chance(babi_dir: str, tasks: list[str]) -> dict[str, dict]:
    """Per task: 1 / the number of distinct answers, and the share of the most frequent one (all its bAbI stories)."""
    levels = {}
    for task in tasks:
        path = next(Path(babi_dir).glob(f"{task}_*_train.txt"))
        answers = Counter(line.split("\t")[1] for line in path.read_text().splitlines() if "\t" in line)
        levels[task] = {"answers": len(answers), "uniform": 1 / len(answers), "majority": max(answers.values()) / sum(answers.values())}
    return levels


def pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.0f}%"


def markdown(record: dict) -> str:
    """Per task and averaged over the tasks (if several): kinds down, lengths across; "—" where a kind was not run, with why."""
    labels, tasks = record["lengths"], record["tasks"]
    paper_label = length_label(PAPER["length"])
    lines = [f"Machine: {record['machine']}; torch {record['torch']}; {record['date']}.", f"Command: `{record['command']}`", ""]
    lines += ["| kind | params | tokens | train time | val exact (end of training) |", "|---|---|---|---|---|"]
    for kind, r in record["kinds"].items():
        t = r["train"]
        lines.append(f"| {kind} | {t['params'] / 1e6:.2f}M | {t['tokens']:,} | {t['seconds']:.0f} s | {pct(t['val_exact'])} |")
    notes: dict[str, str] = {}

    def row(name: str, values: dict) -> str:
        cells = []
        for label in labels:
            value = values.get(label)
            if isinstance(value, str):  # a reason: not run
                mark = notes.setdefault(value, "†" * (len(notes) + 1))
                cells.append(f"—{mark}")
            else:
                cells.append(pct(value))
        return f"| {name} | " + " | ".join(cells) + " |"

    def table(title: str, value) -> None:
        lines.extend(["", f"**{title}**", "", "| kind | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"])
        for kind, r in record["kinds"].items():
            lines.append(row(kind, {label: r["not_run"].get(label) or value(r, label) for label in labels}))

    for task in tasks:
        c = record["chance"][task]
        table(f"{task}: exact answers, {record['samples']} held-out samples per length (chance: 1/{c['answers']} = "
              f"{pct(c['uniform'])}; always the most frequent answer: {pct(c['majority'])})",
              lambda r, label, task=task: r["accuracy"].get(task, {}).get(label, {}).get("accuracy"))
        if task in PAPER["accuracy"] and paper_label in labels:
            lines.append(row(PAPER["model"], {paper_label: PAPER["accuracy"][task]}))

    def mean(r: dict, label: str) -> float | None:
        values = [r["accuracy"].get(t, {}).get(label, {}).get("accuracy") for t in tasks]
        return None if None in values else sum(values) / len(values)

    if len(tasks) > 1:
        table(f"average over {', '.join(tasks)}", mean)
        if paper_label in labels and all(t in PAPER["accuracy"] for t in tasks):
            lines.append(row(f"{PAPER['model']}, same tasks", {paper_label: sum(PAPER["accuracy"][t] for t in tasks) / len(tasks)}))
    if len(record.get("seeds", [0])) > 1:
        lines += seed_spread(record)
    lines += distance_table(record)
    if notes:
        lines.append("")
        lines += [f"{mark} {reason}" for reason, mark in notes.items()]
    if record.get("failed"):
        lines += ["", *(f"{name} failed: {why}" for name, why in record["failed"].items())]
    return "\n".join(lines) + "\n"


def seed_spread(record: dict) -> list[str]:
    """Per task, each kind's accuracy by length as mean ± standard deviation over its seeds (and their range)."""
    by_kind: dict[str, list[dict]] = {}
    for name, r in record["kinds"].items():
        by_kind.setdefault(name.split(" seed ")[0], []).append(r)
    lines = []
    for task in record["tasks"]:
        lines += ["", f"**{task} over seeds {record['seeds']}: mean ± standard deviation (min–max)**", "",
                  "| kind | seeds | " + " | ".join(record["lengths"]) + " |", "|---" * (len(record["lengths"]) + 2) + "|"]
        for kind, rs in by_kind.items():
            cells = []
            for label in record["lengths"]:
                xs = [100 * a for r in rs if (a := r["accuracy"].get(task, {}).get(label, {}).get("accuracy")) is not None]
                sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
                cells.append(f"{statistics.mean(xs):.1f} ± {sd:.1f} ({min(xs):.0f}–{max(xs):.0f})" if xs else "—")
            lines.append(f"| {kind} | {len(rs)} | " + " | ".join(cells) + " |")
    return lines


def distance_table(record: dict) -> list[str]:
    """Per task: each run's accuracy by how many facts follow the last supporting one (all its evaluated lengths)."""
    lines = []
    for task in record["tasks"]:
        runs = {name: r["by_distance"][task] for name, r in record["kinds"].items() if task in r.get("by_distance", {})}
        if not runs:
            continue
        distances = sorted({n for by in runs.values() for n in by})
        lines += ["", f"**{task} by facts after the last supporting one (correct/samples)**", "",
                  "| kind | " + " | ".join(distances) + " |", "|---" * (len(distances) + 1) + "|"]
        for name, by in runs.items():
            lines.append(f"| {name} | " + " | ".join(f"{pct(by[n][0] / by[n][1])} ({by[n][0]}/{by[n][1]})" if n in by else ""
                                                      for n in distances) + " |")
    return lines


def mean_line(ax, points: list[tuple[int, list[float]]], label: str) -> None:
    """Accuracies at x positions: the mean over seeds, bars their standard deviation."""
    ax.errorbar([i for i, _ in points], [100 * statistics.mean(xs) for _, xs in points],
                yerr=[100 * statistics.stdev(xs) if len(xs) > 1 else 0 for _, xs in points], marker="o", capsize=3, label=label)


def plot(record: dict, path: Path) -> None:
    """Per task, accuracy against context length (left) and by facts after the last supporting one (right), one line
    per kind (the mean over its seeds, bars: their standard deviation), chance dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_kind: dict[str, list[dict]] = {}
    for name, r in record["kinds"].items():
        by_kind.setdefault(name.split(" seed ")[0], []).append(r)
    labels, tasks = record["lengths"], record["tasks"]
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.6 * len(tasks)), squeeze=False)
    for (ax, by_facts), task in zip(axes, tasks):
        chance_line = 100 * record["chance"][task]["uniform"]
        for kind, rs in by_kind.items():
            points = [(i, [r["accuracy"][task][label]["accuracy"] for r in rs if label in r["accuracy"].get(task, {})])
                      for i, label in enumerate(labels)]
            mean_line(ax, [(i, xs) for i, xs in points if xs], f"{kind} ({len(rs)} seed{'s' * (len(rs) > 1)})")
            counts = [r.get("by_distance", {}).get(task, {}) for r in rs]
            distances = sorted({n for by in counts for n in by})
            if distances:  # records written before the by-distance counts have none
                mean_line(by_facts, [(i, [by[n][0] / by[n][1] for by in counts if n in by]) for i, n in enumerate(distances)],
                          kind)
                by_facts.set(xticks=range(len(distances)), xticklabels=distances, xlim=(-0.5, len(distances) - 0.5))
        ax.set(xticks=range(len(labels)), xticklabels=labels, xlim=(-0.5, len(labels) - 0.5), xlabel="context length (tokens)",
               title=f"{task}, {record['samples']} held-out samples per length")
        by_facts.set(xlabel="facts after the last supporting one", title=f"{task}, all evaluated lengths")
        for a in (ax, by_facts):
            a.axhline(chance_line, color="grey", linestyle="--", label="chance")
            a.set(ylim=(0, 105), ylabel="exact answers (%)")
            a.legend(fontsize=7, loc="best")  # where it hides the fewest points
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="cpu", help="cpu: a tiny model, ~40 min on 2 cores; gpu: "
                        "~28-35M parameters, segments of 512, bf16; ladder-gpu: qa1 at 0k in segments of 16 (issue 14's "
                        "rungs 1-2), trained on generated stories; ladder-cpu: rungs 1 and 2 at CPU scale (rung 2: --init-from "
                        "none-full) (default: cpu)")
    parser.add_argument("--tasks", nargs="+", metavar="qaN", help="bAbI tasks (default: cpu qa1; gpu qa1 qa2 qa4 qa5; "
                        f"{BABI} has no qa3)")
    parser.add_argument("--lengths", nargs="+", metavar="LEN", help="evaluated lengths (default: 0k 1k 2k 4k 8k 16k 32k)")
    parser.add_argument("--long", action="store_true", help="also evaluate at 64k and 128k")
    parser.add_argument("--samples", type=int, help="evaluated samples per task and length (default: cpu 25, gpu 100)")
    parser.add_argument("--kinds", nargs="+", choices=[*KINDS, "lm2+aux"], default=[*KINDS, "lm2+aux"])
    parser.add_argument("--rec", type=float, default=5.0, help="lm2+aux: loss.reconstruction.weight (default 5)")
    parser.add_argument("--ret", type=float, default=0.1, help="lm2+aux: loss.retrieval.weight (default 0.1)")
    parser.add_argument("--babi-dir", default=BABI, help="bAbI files (qaN_*_train.txt): the tokenizer's text, training "
                        f"stories unless the preset generates them, and the held-out stories evaluated (default: {BABI})")
    parser.add_argument("--haystack", nargs="+", metavar="PATH", default=[TEXT], help="background text (.txt files or "
                        f"directories) for the tokenizer and the training samples (default: {TEXT})")
    parser.add_argument("--eval-haystack", nargs="+", metavar="PATH", help="background text evaluation hides the facts in, "
                        "e.g. books kept out of --haystack, to see whether a recipe learned the task or the training books "
                        "(default: --haystack)")
    parser.add_argument("--holdout", type=float, default=0.1, help="fraction of each task's stories kept out of training "
                        "and evaluated on (default 0.1)")
    parser.add_argument("--data", help="tokenizer and samples go here (default: data/babilong-results-PRESET)")
    parser.add_argument("--runs", help="one run directory per kind here (default: runs/babilong-results-PRESET)")
    parser.add_argument("--out", help="the JSON record (default: benchmarks/out/babilong_results-PRESET.json)")
    parser.add_argument("--markdown", help="also write the tables here (they are printed anyway)")
    parser.add_argument("--plot", help="also plot accuracy against context length here (PNG; default: beside --out)")
    parser.add_argument("--init-from", choices=KINDS, metavar="KIND", help="train KIND first; every other kind then starts "
                        "from the weights of KIND's run of its seed (train.init_from: a memory added to a model without starts "
                        "fresh), with the preset's fine-tuning budget, in a run named KIND2-from-KIND")
    parser.add_argument("--replot", metavar="JSON", help="only draw the plot of a record this command wrote (to --plot, "
                        "default: beside JSON), and stop")
    parser.add_argument("--data-only", action="store_true", help="build the tokenizer and samples, then stop")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="train.seed of each kind's runs; tables then give "
                        "each seed and the mean ± standard deviation over them (default: 0)")
    parser.add_argument("--parallel", type=int, default=1, help="runs trained side by side, each logging to RUNS/<run>.log "
                        "(default: 1)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every training run, e.g. "
                        "train.max_tokens=400000000 (after `--` when they follow --tasks, --lengths or --kinds)")
    args = parser.parse_args()
    if args.replot:
        return plot(json.loads(Path(args.replot).read_text()), Path(args.plot or Path(args.replot).with_suffix(".png")))
    preset = PRESETS[args.preset]
    if args.preset.endswith("gpu") and not args.data_only and not torch.cuda.is_available():
        raise SystemExit(f"--preset {args.preset}: no CUDA device is visible")
    tasks = args.tasks or list(preset.tasks)
    lengths = sorted({parse_length(x) for x in args.lengths or [*preset.lengths, *(preset.long if args.long else ())]})
    data = Path(args.data or f"data/babilong-results-{args.preset}")
    runs = Path(args.runs or f"runs/babilong-results-{args.preset}")
    out = Path(args.out or f"benchmarks/out/babilong_results-{args.preset}.json")
    steps = Steps({"OMP_NUM_THREADS": str(preset.eval_threads)} if preset.eval_threads else {})
    started = time.perf_counter()

    tok, samples, stories = data / "tok", data / "babilong", args.babi_dir
    stamp = steps.check(["l2m", "data", "tokenizer", "--input", *args.haystack, args.babi_dir, "--vocab-size", str(preset.vocab),
                         "--out", str(tok)], tok)
    if preset.generated:  # training stories from the generator; evaluation keeps the real held-out ones
        stories = str(data / "babi-generated")
        stamp = steps.check(["l2m", "data", "babi-generate", "--tasks", *tasks, "--stories", str(preset.generated),
                             "--out", stories], Path(stories), stamp)
    stamp = steps.check(["l2m", "data", "babilong", "--babi-dir", stories, "--tasks", *tasks, "--haystack", *args.haystack,
                         "--lengths", *preset.train_lengths, "--samples", str(preset.train_samples),
                         "--val-samples", str(preset.val_samples), "--holdout", str(args.holdout), "--tokenizer", str(tok),
                         "--out", str(samples)], samples, stamp)
    if args.data_only:
        return
    record = {"machine": machine(torch.device("cuda" if torch.cuda.is_available() else "cpu")), "torch": torch.__version__,
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": shlex.join(["python", *sys.argv]), "preset": args.preset, "tasks": tasks,
              "lengths": [length_label(n) for n in lengths], "samples": args.samples or preset.samples, "holdout": args.holdout,
              "seeds": args.seeds, "steps": steps.log, "chance": chance(args.babi_dir, tasks), "paper": PAPER, "kinds": {}, "failed": {}}

    def fine_tuned(kind: str) -> bool:
        """Whether kind starts from the weights of the --init-from kind."""
        return args.init_from not in (None, kind)

    def run_name(kind: str, seed: int) -> str:
        source = f"-from-{args.init_from}" if fine_tuned(kind) else ""
        return kind.replace("+", "-") + source + (f"-seed{seed}" if seed else "")

    sources = {}  # (seed) -> the future of the --init-from kind's run: the others start from its weights

    def train_and_evaluate(kind: str, seed: int) -> dict:
        run = runs / run_name(kind, seed)
        log = runs / f"{run.name}.log" if args.parallel > 1 else None
        start, upstream = [], stamp
        if fine_tuned(kind):
            upstream = sources[seed].result()["stamp"]  # submitted first, so it runs (or is done) before this waits
            start = [f"train.init_from={runs / run_name(args.init_from, seed)}",
                     *([f"train.max_tokens={preset.finetune_tokens}"] if preset.finetune_tokens else [])]
        train = ["l2m", "train", "--config", preset.config, *kind_overrides(kind, args.rec, args.ret), f"data.qa.path={samples}",
                 f"run.root={runs}", f"run.name={run.name}", *([f"train.seed={seed}"] if seed else []), *start, *args.overrides]
        trained = steps.check(train, run, upstream, keep=True, log=log)
        cells, not_run = evaluate(steps, kind, run, trained, lengths, args, preset, tasks, log)
        return {"run": str(run), "seed": seed, "stamp": trained, "train": json.loads((run / "result.json").read_text()),
                "accuracy": cells, "not_run": not_run, "by_distance": read_by_distance(run)}

    if args.init_from and args.init_from not in args.kinds:
        raise SystemExit(f"--init-from {args.init_from}: list it in --kinds too (a run already trained is not trained again)")
    runs.mkdir(parents=True, exist_ok=True)
    kinds = sorted(args.kinds, key=lambda kind: kind != args.init_from)  # the source first
    names = {kind: f"{kind} from {args.init_from}" if fine_tuned(kind) else kind for kind in kinds}
    jobs = {(kind, seed): f"{names[kind]} seed {seed}" if len(args.seeds) > 1 else names[kind] for kind in kinds for seed in args.seeds}
    with ThreadPoolExecutor(args.parallel) as pool:  # side by side: small models leave most of a GPU idle
        futures = {}
        for (kind, seed), name in jobs.items():
            futures[future := pool.submit(train_and_evaluate, kind, seed)] = name
            if kind == args.init_from:
                sources[seed] = future
        for future in as_completed(futures):
            try:
                record["kinds"][futures[future]] = future.result()
            except SystemExit as failure:  # one run failing leaves the others' results
                record["failed"][futures[future]] = str(failure)
                print(failure, file=sys.stderr)
            record["kinds"] = {name: record["kinds"][name] for name in jobs.values() if name in record["kinds"]}
            record["wall_seconds"] = round(time.perf_counter() - started)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(record, indent=1) + "\n")  # after every run: an interrupted command keeps what it did
    table = markdown(record)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    plot(record, Path(args.plot) if args.plot else out.with_suffix(".png"))
    print(f"wrote {out}" + (f" and {args.markdown}" if args.markdown else ""))


if __name__ == "__main__":
    main()
