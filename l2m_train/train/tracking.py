"""W&B run tracking through Lightning's WandbLogger: online with an API key, offline otherwise, and never the reason
training stops (no key, or no server within wandb.init_timeout, falls back to offline with one warning line).

One W&B run per run directory: its id is kept in <run_dir>/wandb_run_id and in every checkpoint's train state, so a
resumed or requeued run continues the same W&B run. Only rank 0 talks to W&B; the other ranks log nothing.
"""
from __future__ import annotations

import os
import secrets
import string
import sys
from pathlib import Path
from typing import Any

from l2m_train.config import Config

RUN_ID_FILE = "wandb_run_id"


def tracking_mode(cfg: Config) -> str:
    """online | offline | disabled. `auto` follows $WANDB_MODE when set, else tries online (offline without a key)."""
    mode = cfg.wandb.mode if cfg.wandb.mode != "auto" else os.environ.get("WANDB_MODE", "online")
    return {"dryrun": "offline", "run": "online"}.get(mode, mode)  # W&B's older names for the same modes


class Tracker:
    """The run's W&B side: built with the run's plan (nothing written, no network), started by rank 0 at training."""

    def __init__(self, cfg: Config, run_dir: Path, saved_run_id: str | None):
        self.cfg, self.run_dir, self.mode = cfg, run_dir, tracking_mode(cfg)
        self.run_id: str | None = None
        if self.mode != "disabled":
            self.run_id = saved_run_id or _read(run_dir / RUN_ID_FILE) or _new_id()
        self.logger = None  # a WandbLogger once started

    def start(self, config: dict[str, Any]):
        """Create (or continue) the W&B run; returns its WandbLogger, or None when tracking is disabled."""
        if self.mode == "disabled":
            return None
        from wandb.errors import UsageError

        try:
            self.logger = self._logger(self.mode, config)
        except Exception as err:  # UsageError (no key), CommError (no server), …: W&B never stops training
            if self.mode != "online":
                raise
            if not (self.cfg.wandb.mode == "auto" and isinstance(err, UsageError)):  # auto without a key: offline, as said
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                print(f"l2m: W&B cannot log online ({reason}); logging offline instead", file=sys.stderr)
            self.mode = "offline"
            self.logger = self._logger("offline", config)
        print(f"l2m: W&B {self.mode} run {self.run_id} ({self.logger.experiment.dir.removesuffix('/files')})")
        return self.logger

    def _logger(self, mode: str, config: dict[str, Any]):
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        from l2m_train.train.lightning_compat import drop_wandb_anonymous

        w = self.cfg.wandb
        logger = WandbLogger(name=self.cfg.run.name, project=w.project, entity=w.entity or None, id=self.run_id, save_dir=self.run_dir,
                             mode=mode, config=config, tags=list(w.tags),
                             settings=wandb.Settings(init_timeout=w.init_timeout, console="off", silent=True))
        drop_wandb_anonymous(logger)
        _ = logger.experiment  # creates the run now, where a failure can still fall back
        return logger

    def log_results(self, metrics: dict[str, float]) -> None:
        """The final validation as W&B tables: every metric, and the loss by segment index as a line plot."""
        if self.logger is None:
            return
        import wandb

        run = self.logger.experiment
        run.log({"results": wandb.Table(columns=["metric", "value"], data=[[k, float(v)] for k, v in sorted(metrics.items())])})
        by_segment = sorted((int(k.rsplit("_seg", 1)[1]), float(v)) for k, v in metrics.items() if "/loss_seg" in k)
        if by_segment:
            table = wandb.Table(columns=["segment", "loss"], data=[list(row) for row in by_segment])
            run.log({"val/loss_by_segment": wandb.plot.line(table, "segment", "loss", title="validation loss by segment index")})

    def finish(self, exit_code: int = 0) -> None:
        """Close the run (all records written); for an offline run, print the command that uploads it."""
        if self.logger is None:
            return
        import wandb

        self.logger.experiment.finish(exit_code=exit_code)
        wandb.teardown()  # waits until W&B's service has written every record: a preempted job's ranks exit next
        self.logger = None
        if self.mode == "offline":  # every start of this run wrote its own offline directory: upload them all
            print(f"l2m: W&B offline run {self.run_id}; upload it with: wandb sync {self.run_dir}/wandb/offline-run-*-{self.run_id}")


def _read(path: Path) -> str | None:
    return (path.read_text().strip() or None) if path.is_file() else None


def _new_id() -> str:
    """W&B's own form: 8 lowercase letters and digits."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
