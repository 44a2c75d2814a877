"""Preemption on a real SLURM cluster (tests/slurm_cluster.py): a job of two srun tasks is signalled mid-training twice,
checkpoints, requeues itself and resumes, and ends exactly where an uninterrupted job of the same config ends, with
one W&B run (offline) holding every step once."""
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from wandb_records import config as wandb_config
from wandb_records import history, run_record

from l2m_train.config import load_config
from l2m_train.train.checkpoint_layout import complete_checkpoints, read_state

pytest_plugins = ["slurm_cluster"]
pytestmark = pytest.mark.slow

L2M_BIN = str(Path(sys.executable).parent)
STEPS = 60
# Two CPU ranks of the quickstart's tiny LM2: 32 samples of 3 × 16 tokens each per step.
ARGS = ["train.accelerator=cpu", "train.devices=2", "train.threads=1", "train.micro_batch=32", f"train.max_tokens={STEPS * 2 * 32 * 48}",
        "train.compare_baseline=false", "train.log_every_steps=1", "train.val_every_steps=1000", "data.val_samples=64",
        "checkpoint.every_steps=4", "checkpoint.keep_last=2", "wandb.mode=offline", "slurm.cpus_per_task=1", "slurm.time=10",
        "slurm.signal_seconds=60", "slurm.output=logs/%x-%j.out"]


def submit(cluster, cwd: Path, name: str) -> str:
    env = {**cluster.env, "PATH": f"{L2M_BIN}:{cluster.env['PATH']}"}
    out = subprocess.run(["l2m", "submit", *ARGS, f"run.name={name}"], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return re.fullmatch(r"submitted job (\d+): .*\n", out.stdout).group(1)


def wait(condition, what: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)
    return value


def newest_step(run_dir: Path) -> int:
    found = complete_checkpoints(run_dir / "checkpoints")
    return int(found[-1].name.removeprefix("step-")) if found else 0


def wandb_files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def train_rows(files: list[Path]) -> list[dict]:
    return [row for f in files for row in history(f) if "train/loss" in row]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(complete_checkpoints(run_dir / "checkpoints")[-1] / "lightning.ckpt", weights_only=True)["state_dict"]


def test_a_job_signalled_twice_requeues_itself_and_ends_as_if_never_stopped(slurm_cluster, tmp_path):
    reference = submit(slurm_cluster, tmp_path, "straight")
    job = submit(slurm_cluster, tmp_path, "preempted")  # queued behind: the node has a CPU per task of one job
    run_dir = tmp_path / "runs" / "preempted"
    stopped_at = []
    for restart in range(2):
        # Mid-training: past a checkpoint of this start, with steps left.
        wait(lambda: slurm_cluster.job(job)["JobState"] == "RUNNING" and newest_step(run_dir) > max(stopped_at, default=0),
             f"start {restart} training")
        subprocess.run(["scancel", "--signal=USR1", job], env=slurm_cluster.env, check=True, timeout=30)  # as at a time limit
        # Requeued: SLURM holds a requeued job ~2 min (its begin time); release it sooner. slurmd revokes the last
        # run's credential with one-second resolution: a start within that second fails ("Job credential revoked").
        wait(lambda: (j := slurm_cluster.job(job))["JobState"] == "PENDING" and j["Restarts"] == str(restart + 1)
             and j["Reason"] == "BeginTime", f"requeue {restart}")
        time.sleep(2)
        stopped_at.append(newest_step(run_dir))
        slurm_cluster.scontrol("update", f"JobId={job}", "StartTime=now")
    done = slurm_cluster.wait_for_job(job, timeout=300)
    log = (tmp_path / "logs" / f"preempted-{job}.out").read_text()
    assert (done["JobState"], done["ExitCode"], done["Restarts"]) == ("COMPLETED", "0:0", "2"), log[-3000:]
    assert 0 < stopped_at[0] < stopped_at[1] < STEPS, stopped_at
    assert log.count("stopped by SIGUSR1") == 2 * 2  # both ranks, both times
    assert not list(run_dir.rglob("hpc_ckpt_*"))  # Lightning's own requeue handler never ran

    # The uninterrupted job: two ranks found through SLURM, its metrics in an offline W&B run.
    straight = tmp_path / "runs" / "straight"
    finished = slurm_cluster.wait_for_job(reference, timeout=60)
    log = (tmp_path / "logs" / f"straight-{reference}.out").read_text()  # l2m submit made logs/: SLURM would not have
    assert (finished["JobState"], finished["ExitCode"], finished["NumTasks"], finished["Restarts"]) == ("COMPLETED", "0:0", "2", "0"), \
        log[-3000:]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    assert load_config(straight / "config.yaml").train.devices == 2 and json.loads((straight / "result.json").read_text())["steps"] == STEPS
    [file] = wandb_files(straight)
    logged = set().union(*history(file))
    assert {"train/loss", "train/lr", "train/grad_norm", "gates/layer0/forget", "data/stage", "val/loss", "results/_type"} <= logged

    expected = final_weights(straight)
    weights = final_weights(run_dir)
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in expected)

    # One W&B run across the three starts, every step logged once, the same losses as the uninterrupted job.
    files = wandb_files(run_dir)
    run_id = (run_dir / "wandb_run_id").read_text()
    assert len(files) == 3 and {run_record(f).run_id for f in files} == {run_id}
    assert read_state(complete_checkpoints(run_dir / "checkpoints")[-1])["wandb_run_id"] == run_id
    rows = train_rows(files)
    assert [r["trainer/global_step"] for r in rows] == list(range(STEPS))
    assert [r["train/loss"] for r in rows] == [r["train/loss"] for r in train_rows(wandb_files(straight))]
    assert wandb_config(files[-1])["train"]["devices"] == 2

    # Retention held through the requeues: the newest two, and nothing half-written.
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [f"step-{s:08d}" for s in (STEPS - 4, STEPS)]
