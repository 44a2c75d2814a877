"""A ZeRO-2 checkpoint of a two-node SLURM job (tests/slurm_cluster.py), resumed by a one-node job through DeepSpeed's
universal form. Preemption on two nodes is tests/test_requeue.py."""
import shutil
from importlib.util import find_spec

import pytest
import torch
from test_requeue import ARGS, TIME_LIMIT, final_weights

from l2m_train.train.checkpoint_layout import complete_checkpoints, read_state
from l2m_train.train.universal import convert

pytest_plugins = ["slurm_cluster"]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(find_spec("deepspeed") is None, reason="DeepSpeed is not installed")]

# 16 samples per rank and step; the one-node job accumulates two micro-batches, so every step sees the same 64.
ZERO2 = [*ARGS, "train.strategy=deepspeed", "train.deepspeed.stage=2", "train.micro_batch=16", f"train.max_tokens={6 * 64 * 48}",
         "checkpoint.every_steps=3", "wandb.mode=disabled"]


def test_a_two_node_zero2_checkpoint_resumes_on_one_node_through_the_universal_form(slurm_two_nodes, tmp_path):
    cluster = slurm_two_nodes
    job = cluster.submit(tmp_path, *ZERO2, "train.nodes=2", "run.name=two-nodes")
    done = cluster.wait_for_job(job, timeout=TIME_LIMIT * 60)
    assert (done["JobState"], done["ExitCode"], done["NumNodes"]) == ("COMPLETED", "0:0", "2"), \
        (tmp_path / "logs" / f"two-nodes-{job}.out").read_text()[-3000:]
    straight = tmp_path / "runs" / "two-nodes"
    run = tmp_path / "runs" / "one-node"
    shutil.copytree(straight, run)  # as if stopped after its step-3 checkpoint
    shutil.rmtree(run / "checkpoints" / "step-00000006")
    convert(run)  # what `l2m ckpt universal` does (tests/test_deepspeed.py runs the command)

    job = cluster.submit(tmp_path, *ZERO2, "train.nodes=1", "train.accumulate=2", "run.name=one-node")
    done = cluster.wait_for_job(job, timeout=TIME_LIMIT * 60)
    log = (tmp_path / "logs" / f"one-node-{job}.out").read_text()
    assert (done["JobState"], done["ExitCode"], done["NumNodes"], done["NumTasks"]) == ("COMPLETED", "0:0", "1", "2"), log[-3000:]
    [two, one] = [complete_checkpoints(r / "checkpoints")[-1] for r in (straight, run)]
    assert (two.name, one.name) == ("step-00000006",) * 2
    assert (read_state(two)["world_size"], read_state(one)["world_size"]) == (4, 2)
    assert read_state(one)["data"] == read_state(two)["data"]  # the same samples, in the same order
    a, b = final_weights(straight, tmp_path), final_weights(run, tmp_path)
    # Three more steps from the kept Adam moments: equal up to the order of float sums (tests/test_deepspeed.py measures
    # how far fresh moments would land instead).
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
