"""The end-of-training summary: recall accuracy of each model next to what chance allows."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from l2m_train.config import Config
from l2m_train.data.recall import RecallTask
from l2m_train.data.recall_module import RecallDataModule
from l2m_train.train.run import RunResult


def print_summary(results: list[RunResult], cfg: Config) -> None:
    d = cfg.data
    pairs = "1 key/value pair" if d.pairs == 1 else f"{d.pairs} key/value pairs"
    table = Table(title=f"Recall on {d.val_samples} held-out samples\n({pairs} in segment 1, the question in segment {d.segments})")
    for column in ("model", "params", "tokens", "train time", "val loss", "recall"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in results:
        table.add_row(r.label, f"{r.params / 1e3:,.0f}k", f"{r.tokens:,}", f"{r.seconds:.0f} s",
                      f"{r.val_loss:.3f}", f"{100 * r.val_acc:.1f}%")
    table.add_row("chance", "", "", "", "", f"{100 * RecallTask.chance:.1f}%", style="dim")
    console = Console()
    console.print(table)
    ckpt = Path(results[0].run_dir) / "checkpoints" / "last.ckpt"
    console.print(f"run directory: {results[0].run_dir}\ncheckpoint: {ckpt}")
    context, answer = RecallDataModule(cfg, train_samples=1).val_set.text(0)
    print(f"ask it a held-out question (the answer is {answer}):\n"
          f"  l2m generate {ckpt} --prompt '{context}' --max-new-tokens 1 --temperature 0")
