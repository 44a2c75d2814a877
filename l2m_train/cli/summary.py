"""The end-of-training summary: held-out accuracy of each model (next to chance for the recall task)."""
from __future__ import annotations

import shlex

from rich.console import Console
from rich.table import Table

from l2m_train.config import Config
from l2m_train.data.recall import RecallTask
from l2m_train.train.run import RunResult

PROMPT_LIMIT = 400  # characters: longer held-out contexts are not worth pasting into a command line


def print_summary(results: list[RunResult], cfg: Config, example: tuple[str, str] | None) -> None:
    d = cfg.data
    source = d.sources[0]
    if source == "recall":
        pairs = "1 key/value pair" if d.recall.pairs == 1 else f"{d.recall.pairs} key/value pairs"
        title = f"Recall on {d.val_samples} held-out samples\n({pairs} in segment 1, the question in segment {d.segments})"
    else:
        title = f"{source} on up to {d.val_samples} held-out samples of at most {d.segments} segments"
    table = Table(title=title)
    # accuracy = whole answers right (exact match); per-token accuracy is in the logs as val/acc
    for column in ("model", "params", "tokens", "train time", "val loss", "accuracy"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in results:
        table.add_row(r.label, f"{r.params / 1e3:,.0f}k", f"{r.tokens:,}", f"{r.seconds:.0f} s",
                      f"{r.val_loss:.3f}", f"{100 * r.val_exact:.1f}%")
    if source == "recall":
        table.add_row("chance", "", "", "", "", f"{100 * RecallTask.chance:.1f}%", style="dim")
    console = Console()
    console.print(table)
    run_dir = results[0].run_dir  # generate takes the run's latest checkpoint
    console.print(f"run directory: {run_dir}")
    if example is not None and len(example[0]) <= PROMPT_LIMIT:
        context, answer = example
        print(f"ask it a held-out question (the answer is {answer.strip()!r}):\n"
              f"  l2m generate {shlex.quote(run_dir)} --prompt {shlex.quote(context)} --max-new-tokens {len(answer)} --temperature 0")
