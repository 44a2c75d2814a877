"""DeepSpeed ZeRO on two CPU processes (gloo), through `l2m` as a user runs it: exact resume, a resume on another
number of ranks through the universal form, and consolidation of the shards for export."""
import csv
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from l2m_train.train.checkpoint_layout import read_state
from l2m_train.train.export import export

pytestmark = [pytest.mark.slow, pytest.mark.skipif(find_spec("deepspeed") is None, reason="DeepSpeed is not installed")]

L2M = str(Path(sys.executable).parent / "l2m")
STEPS = 6  # checkpoints at 3 and 6
# fp32, one thread per rank; 4 samples of 3 segments per rank and step: 384 tokens per step on 2 ranks
ARGS = ["run.root=runs", "train.strategy=deepspeed", "train.accelerator=cpu", "train.devices=2", "train.threads=1",
        "train.micro_batch=4", "model.segment_len=16", "data.segments=3", f"train.max_tokens={STEPS * 384}",
        "checkpoint.every_steps=3", "train.val_every_steps=1000", "data.val_samples=4", "train.log_every_steps=1",
        "train.compare_baseline=false", "optim.warmup_tokens=0",
        # ZeRO-2 takes the early segments' gradients apart from the step's backward (train/segment_backward.py); ZeRO-3
        # does not, so their agreement below checks those gradients under DeepSpeed.
        "model.memory.bptt_segments=1"]


def l2m(cwd, *args):
    return subprocess.run([L2M, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def train(cwd, name, *extra):
    out = l2m(cwd, "train", *ARGS, f"run.name={name}", *extra)
    assert out.returncode == 0, out.stderr[-3000:]


def losses(metrics: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(open(metrics)) if r.get("train/loss")}


def interrupted_copy(root: Path, name: str, copy: str) -> Path:
    """The run as if it had been killed right after its step-3 checkpoint."""
    shutil.copytree(root / "runs" / name, root / "runs" / copy)
    shutil.rmtree(root / "runs" / copy / "checkpoints" / "step-00000006")
    return root / "runs" / copy


def weights(checkpoint: Path, out: Path) -> dict[str, torch.Tensor]:
    return load_file(export(checkpoint, out) / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """ZeRO-2 and ZeRO-3 runs of 6 steps on 2 ranks."""
    root = tmp_path_factory.mktemp("zero")
    for stage in (2, 3):
        train(root, f"zero{stage}", f"train.deepspeed.stage={stage}")
    return root


@pytest.mark.parametrize("stage", [2, 3])
def test_a_zero_run_resumed_from_its_checkpoint_equals_the_uninterrupted_run(uninterrupted, stage):
    root = uninterrupted
    interrupted_copy(root, f"zero{stage}", f"resumed{stage}")
    train(root, f"resumed{stage}", f"train.deepspeed.stage={stage}")
    straight, resumed = root / "runs" / f"zero{stage}", root / "runs" / f"resumed{stage}"
    after = losses(resumed / "logs" / "resume-step-00000003" / "metrics.csv")
    assert sorted(after) == [3, 4, 5] and after == {s: v for s, v in losses(straight / "logs" / "metrics.csv").items() if s >= 3}
    a = weights(straight / "checkpoints" / "step-00000006", root / f"export-straight{stage}")
    b = weights(resumed / "checkpoints" / "step-00000006", root / f"export-resumed{stage}")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_zero2_and_zero3_shards_consolidate_to_the_same_model(uninterrupted):
    root = uninterrupted
    a = weights(root / "runs" / "zero2" / "checkpoints" / "step-00000006", root / "export-2")
    b = weights(root / "runs" / "zero3" / "checkpoints" / "step-00000006", root / "export-3")
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:  # the same training, up to the order of float sums (which Adam magnifies where gradients are ~0)
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4)


def test_saved_on_two_ranks_resumed_on_one_through_the_universal_form(uninterrupted):
    root = uninterrupted
    run = interrupted_copy(root, "zero2", "one-rank")
    one_rank = ["train.devices=1", "train.accumulate=2"]  # the same 8 samples per step
    refused = l2m(root, "train", *ARGS, "run.name=one-rank", *one_rank)
    assert refused.returncode == 2 and "convert it first with `l2m ckpt universal" in refused.stderr
    refused = l2m(root, "train", *ARGS, "run.name=one-rank", "train.deepspeed.stage=3")
    assert refused.returncode == 2 and "to or from ZeRO-3" in refused.stderr and refused.stderr.count("\n") == 1

    converted = l2m(root, "ckpt", "universal", str(run))
    assert converted.returncode == 0, converted.stderr[-3000:]
    train(root, "one-rank", *one_rank)
    straight = root / "runs" / "zero2" / "checkpoints" / "step-00000006"
    resumed = run / "checkpoints" / "step-00000006"
    assert read_state(resumed)["world_size"] == 1
    assert read_state(resumed)["data"] == read_state(straight)["data"]  # the same samples, in the same order
    a, b = weights(straight, root / "export-two"), weights(resumed, root / "export-one")
    # Three more steps from the kept Adam moments: equal up to the order of float sums (measured: 1.2e-7 at most).
    # From fresh moments every tensor ends at least 4e-3 away (measured by resuming without the optimizer state).
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)


def test_a_zero3_run_starts_from_the_weights_of_a_zero2_checkpoint(uninterrupted):
    """train.init_from consolidates ZeRO shards as `l2m ckpt export` does, and its weights survive ZeRO-3's partitioning."""
    root = uninterrupted
    source = root / "runs" / "zero2" / "checkpoints" / "step-00000006"
    # One step at a learning rate that moves no weight by more than ~1e-9: what it saves is what it started from.
    train(root, "fine-tuned", "train.deepspeed.stage=3", f"train.init_from={source}", "train.max_tokens=384", "optim.lr=1e-9")
    tuned = root / "runs" / "fine-tuned" / "checkpoints" / "step-00000001"
    assert read_state(tuned)["init_from"]["source"] == str(source)
    a, b = weights(source, root / "export-source"), weights(tuned, root / "export-fine-tuned")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
