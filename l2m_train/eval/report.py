"""Evaluation results as people and tools read them: terminal tables, JSON, a heatmap PNG, W&B tables."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from rich.table import Table

from l2m_train.eval.babilong import Accuracy
from l2m_train.eval.ppl import Perplexity

BABILONG_COLUMNS = ["task", "length", "correct", "samples", "accuracy"]
PPL_COLUMNS = ["segment", "loss", "perplexity"]


def length_label(tokens: int) -> str:
    """4096 -> '4k' (k = 1024 tokens, as the lengths are given); other counts as they are."""
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else str(tokens)


def _percent(value: float) -> str:
    return "" if math.isnan(value) else f"{100 * value:.0f}%"


def babilong_table(acc: Accuracy) -> Table:
    """Tasks down, lengths across, and every task pooled per length."""
    table = Table()
    table.add_column("task")
    for length in acc.lengths:
        table.add_column(length_label(length), justify="right")
    matrix = acc.matrix
    for task, values in zip(acc.tasks, matrix):
        table.add_row(task, *map(_percent, values))
    if len(acc.tasks) > 1:
        samples = acc.samples.sum(0)
        pooled = np.where(samples > 0, acc.correct.sum(0) / np.maximum(samples, 1), np.nan)
        table.add_row("all", *map(_percent, pooled), style="bold")
    return table


def babilong_rows(acc: Accuracy) -> list[list]:
    """One row per task and length, as BABILONG_COLUMNS: for a W&B table or a spreadsheet."""
    return [[task, length, int(acc.correct[i, j]), int(acc.samples[i, j]), float(acc.matrix[i, j])]
            for i, task in enumerate(acc.tasks) for j, length in enumerate(acc.lengths) if acc.samples[i, j]]


def babilong_json(acc: Accuracy, about: dict) -> dict:
    """`about` (what was evaluated, on what) plus the accuracy by task and length label, and the flat rows."""
    accuracy = {task: {length_label(length): _value(acc.matrix[i, j]) for j, length in enumerate(acc.lengths)}
                for i, task in enumerate(acc.tasks)}
    return {"kind": "babilong", **about, "tasks": acc.tasks, "lengths": acc.lengths, "accuracy": accuracy,
            "columns": BABILONG_COLUMNS, "rows": babilong_rows(acc)}


def distance_lines(distance: dict[str, dict[str, list[int]]]) -> list[str]:
    """One line per task: accuracy by facts after the evidence, with the samples behind each figure."""
    return [f"{task} by facts after the last supporting one: "
            + " · ".join(f"{n}: {_percent(c / total)} of {total}" for n, (c, total) in by.items())
            for task, by in distance.items()]


def _value(x: float) -> float | None:
    return None if math.isnan(x) else float(x)  # JSON has no NaN


def heatmap(acc: Accuracy, path: str | Path, title: str = "") -> Figure:
    """Accuracy as a tasks × lengths grid of coloured, labelled cells (as in the BABILong paper); saved as PNG."""
    matrix = acc.matrix
    fig = Figure(figsize=(1.2 + 0.75 * len(acc.lengths), 1.0 + 0.45 * len(acc.tasks)), layout="constrained")
    ax = fig.subplots()
    ax.imshow(matrix, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")  # NaN cells stay blank
    ax.set_xticks(range(len(acc.lengths)), [length_label(n) for n in acc.lengths])
    ax.set_yticks(range(len(acc.tasks)), acc.tasks)
    ax.set_xlabel("context length (tokens)")
    for (i, j), value in _cells(matrix):
        ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=120)
    return fig


def _cells(matrix):
    return [((i, j), v) for i, row in enumerate(matrix) for j, v in enumerate(row) if not math.isnan(v)]


def ppl_table(result: Perplexity) -> Table:
    table = Table()
    for column in PPL_COLUMNS:
        table.add_column(column, justify="left" if column == "segment" else "right")
    for segment, loss in enumerate(result.per_segment, start=1):
        table.add_row(str(segment), f"{loss:.4f}", f"{math.exp(loss):,.2f}")
    table.add_row("all", f"{result.loss:.4f}", f"{result.perplexity:,.2f}", style="bold")
    return table


def ppl_rows(result: Perplexity) -> list[list]:
    """One row per segment index (from 1), then 'all', as PPL_COLUMNS."""
    rows = [[str(s), loss, math.exp(loss)] for s, loss in enumerate(result.per_segment, start=1)]
    return rows + [["all", result.loss, result.perplexity]]


def ppl_json(result: Perplexity, about: dict) -> dict:
    return {"kind": "ppl", **about, "windows": result.windows, "tokens": result.tokens, "loss": result.loss,
            "perplexity": result.perplexity, "loss_per_segment": result.per_segment, "columns": PPL_COLUMNS,
            "rows": ppl_rows(result)}


def log_to_wandb(run, name: str, columns: list[str], rows: list[list], image: str | Path | None = None) -> None:
    """Log a result table (and its picture) to a W&B run as eval/<name> (and eval/<name>_heatmap)."""
    import wandb  # only when a run is attached

    logged = {f"eval/{name}": wandb.Table(columns=columns, data=rows)}
    if image is not None:
        logged[f"eval/{name}_heatmap"] = wandb.Image(str(image))
    run.log(logged)
