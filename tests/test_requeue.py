"""Preemption on a real SLURM cluster (tests/slurm_cluster.py): a job is signalled mid-training twice, checkpoints,
requeues itself and resumes, and ends exactly where an uninterrupted job of the same config ends, with one W&B run
(offline) holding every step once. On one node with two DDP ranks, and on two nodes of two ranks each, with DDP and with ZeRO-2."""
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from wandb_records import config as wandb_config
from wandb_records import history, run_record

from l2m_train.config import load_config
from l2m_train.train.checkpoint_layout import complete_checkpoints, read_state
from l2m_train.train.export import export

pytest_plugins = ["slurm_cluster"]
pytestmark = pytest.mark.slow

# The quickstart's tiny LM2 in fp32, one thread per rank: samples of 3 × 16 tokens, 64 of them per step.
TIME_LIMIT = 30  # minutes: a job waits at most this long behind another, and no wait below needs longer
ARGS = ["train.accelerator=cpu", "train.devices=2", "train.threads=1", "train.compare_baseline=false", "train.log_every_steps=1",
        "train.val_every_steps=1000", "data.val_samples=64", "checkpoint.every_steps=4", "checkpoint.keep_last=2",
        "wandb.mode=offline", "slurm.cpus_per_task=1", f"slurm.time={TIME_LIMIT}", "slurm.signal_seconds=60", "slurm.output=logs/%x-%j.out"]


@dataclass
class Case:
    cluster: str  # the fixture
    nodes: int
    steps: int
    strategy: list[str]

    @property
    def ranks(self) -> int:
        return self.nodes * 2

    def args(self) -> list[str]:
        micro_batch = 64 // self.ranks
        return [*ARGS, f"train.nodes={self.nodes}", f"train.micro_batch={micro_batch}", f"train.max_tokens={self.steps * 64 * 48}",
                *self.strategy]


CASES = {
    "one-node-ddp": Case("slurm_cluster", nodes=1, steps=60, strategy=[]),
    # Four ranks share two cores: fewer steps, still two checkpoints between the signals.
    "two-nodes-ddp": Case("slurm_two_nodes", nodes=2, steps=24, strategy=[]),
    "two-nodes-zero2": Case("slurm_two_nodes", nodes=2, steps=24, strategy=["train.strategy=deepspeed", "train.deepspeed.stage=2"]),
}


def wait(condition, what: str, timeout: float = TIME_LIMIT * 60):
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


def final_weights(run_dir: Path, scratch: Path) -> dict[str, torch.Tensor]:
    """The newest checkpoint's weights, whole (ZeRO shards consolidated)."""
    out = export(complete_checkpoints(run_dir / "checkpoints")[-1], scratch / f"export-{run_dir.name}")
    weights = load_file(out / "model.safetensors")
    shutil.rmtree(out)
    return weights


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_job_signalled_twice_requeues_itself_and_ends_as_if_never_stopped(request, tmp_path, case):
    cluster = request.getfixturevalue(case.cluster)
    reference = cluster.submit(tmp_path, *case.args(), "run.name=straight")
    job = cluster.submit(tmp_path, *case.args(), "run.name=preempted")  # queued behind: each job takes every CPU
    run_dir = tmp_path / "runs" / "preempted"
    log_file = tmp_path / "logs" / f"preempted-{job}.out"
    stopped_at = []
    for restart in range(2):
        # Mid-training: past a checkpoint of this start, with steps left.
        wait(lambda: cluster.live_job(job, log_file)["JobState"] == "RUNNING" and newest_step(run_dir) > max(stopped_at, default=0),
             f"start {restart} training")
        subprocess.run(["scancel", "--signal=USR1", job], env=cluster.env, check=True, timeout=30)  # as at a time limit
        # Requeued: SLURM holds a requeued job ~2 min (its begin time); release it sooner, but only once every node is
        # idle: slurmd still ending the last run's processes (a slow rank, on busy cores) also kills a new start of the
        # same job id. slurmd revokes the last run's credential with one-second resolution: a start within that second
        # fails ("Job credential revoked").
        wait(lambda: (j := cluster.live_job(job, log_file))["JobState"] == "PENDING" and j["Restarts"] == str(restart + 1)
             and j["Reason"] == "BeginTime", f"requeue {restart}")
        wait(cluster.idle, f"the nodes idle after start {restart}")
        time.sleep(2)
        stopped_at.append(newest_step(run_dir))
        cluster.scontrol("update", f"JobId={job}", "StartTime=now")
    done = cluster.wait_for_job(job, timeout=TIME_LIMIT * 60)
    log = log_file.read_text()
    assert (done["JobState"], done["ExitCode"], done["Restarts"]) == ("COMPLETED", "0:0", "2"), log[-3000:]
    assert 0 < stopped_at[0] < stopped_at[1] < case.steps, stopped_at
    assert log.count("stopped by SIGUSR1") == 2 * case.ranks  # every rank, both times
    assert not list(run_dir.rglob("hpc_ckpt_*"))  # Lightning's own requeue handler never ran

    # The uninterrupted job: its ranks and their rendezvous found through SLURM, its metrics in one offline W&B run.
    straight = tmp_path / "runs" / "straight"
    finished = cluster.wait_for_job(reference, timeout=60)
    log = (tmp_path / "logs" / f"straight-{reference}.out").read_text()  # l2m submit made logs/: SLURM would not have
    assert (finished["JobState"], finished["ExitCode"], finished["Restarts"]) == ("COMPLETED", "0:0", "0"), log[-3000:]
    every_node = cluster.scontrol("show", "hostlist", ",".join(cluster.nodes)).strip()  # e.g. node[1-2]
    assert (finished["NumNodes"], finished["NumTasks"], finished["NodeList"]) == (str(case.nodes), str(case.ranks), every_node)
    assert all(f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/{case.ranks}" in log for rank in range(case.ranks)), log[-3000:]
    cfg = load_config(straight / "config.yaml")
    assert (cfg.train.nodes, cfg.train.devices) == (case.nodes, 2)
    assert json.loads((straight / "result.json").read_text())["steps"] == case.steps
    assert read_state(complete_checkpoints(straight / "checkpoints")[-1])["world_size"] == case.ranks
    [file] = wandb_files(straight)
    logged = set().union(*history(file))
    assert {"train/loss", "train/lr", "train/grad_norm", "gates/layer0/forget", "data/stage", "val/loss", "results/_type"} <= logged

    expected = final_weights(straight, tmp_path)
    weights = final_weights(run_dir, tmp_path)
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in expected)

    # One W&B run across the three starts, every step logged once, the same losses as the uninterrupted job.
    files = wandb_files(run_dir)
    run_id = (run_dir / "wandb_run_id").read_text()
    assert len(files) == 3 and {run_record(f).run_id for f in files} == {run_id}
    assert read_state(complete_checkpoints(run_dir / "checkpoints")[-1])["wandb_run_id"] == run_id
    rows = train_rows(files)
    assert [r["trainer/global_step"] for r in rows] == list(range(case.steps))
    assert [r["train/loss"] for r in rows] == [r["train/loss"] for r in train_rows(wandb_files(straight))]
    assert wandb_config(files[-1])["train"]["nodes"] == case.nodes

    # Retention held through the requeues: the newest two, and nothing half-written.
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [f"step-{s:08d}" for s in (case.steps - 4, case.steps)]
