"""The training loop's parts: loss masking, optimizer groups, the token schedule, and a short run."""
import csv
import math

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from l2m_train.config import OptimConfig, load_config
from l2m_train.data import IGNORE
from l2m_train.data.recall import RecallTask
from l2m_train.data.sample import collate
from l2m_train.model import MemoryDecoder
from l2m_train.train.losses import lm_loss
from l2m_train.train.module import LM2Module
from l2m_train.train.optim import adamw, fused_on, lr_at
from l2m_train.train.run import execute, plan


def test_loss_counts_only_supervised_positions_and_splits_by_segment():
    logits = torch.zeros(1, 6, 4)
    logits[0, 1, 2] = 10.0  # confident and right at position 1
    labels = torch.tensor([[IGNORE, 2, IGNORE, IGNORE, 3, IGNORE]])
    out = lm_loss(logits, labels, segment_len=2)
    right, uniform = -torch.log_softmax(logits[0, 1], -1)[2], math.log(4)
    torch.testing.assert_close(out.loss, (right + uniform) / 2)
    torch.testing.assert_close(out.per_segment[0], right)
    assert math.isnan(out.per_segment[1])  # no supervised position in segment 1
    torch.testing.assert_close(out.per_segment[2], torch.tensor(uniform))
    assert out.correct == 1 and out.count == 2


def test_schedule_warms_up_then_decays_by_tokens():
    cfg = OptimConfig(lr=1.0, min_lr_ratio=0.1, warmup_tokens=100)
    assert lr_at(0, cfg, 1100) == 0 and lr_at(50, cfg, 1100) == 0.5 and lr_at(100, cfg, 1100) == 1.0
    assert lr_at(600, cfg, 1100) == pytest.approx(0.55)  # half way down the cosine
    assert lr_at(1100, cfg, 1100) == pytest.approx(0.1) and lr_at(5000, cfg, 1100) == pytest.approx(0.1)


def test_weight_decay_applies_to_matrices_only():
    model = MemoryDecoder(load_config().model)
    decay, no_decay = adamw(model, OptimConfig(), model.memory_parameters()).param_groups  # scale 1: memory shares them
    assert decay["weight_decay"] > 0 and no_decay["weight_decay"] == 0
    assert all(p.dim() >= 2 for p in decay["params"])
    initial = {id(b.memory.initial) for b in model.blocks}  # learned initial memories: states, not weights
    assert all(p.dim() < 2 or id(p) in initial for p in no_decay["params"])
    assert initial <= {id(p) for p in no_decay["params"]}
    n_unique = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_unique  # tied embeddings counted once


@pytest.mark.parametrize("kind", ["lm2", "rmt"])
def test_memory_parameters_learn_at_their_own_scale_on_the_same_schedule(kind):
    cfg = load_config(overrides=[f"model.memory.kind={kind}", "optim.memory_lr_scale=4"])
    module = LM2Module(OmegaConf.to_container(OmegaConf.structured(cfg)))
    memory = {id(p) for p in module.model.memory_parameters()}
    assert memory and memory < {id(p) for p in module.model.parameters()}  # rmt: its memory tokens only
    if kind == "rmt":
        assert memory == {id(module.model.rmt_initial)}
    optimizer, schedule = module.configure_optimizers().values()
    schedule = schedule["scheduler"]
    for _ in range(3):
        optimizer.step(), schedule.step()
    for group in optimizer.param_groups:
        in_memory = {id(p) in memory for p in group["params"]}
        assert len(in_memory) == 1  # a group is all memory or all backbone
        scale = 4 if in_memory.pop() else 1
        assert group["lr"] == pytest.approx(scale * lr_at(4 * cfg.tokens_per_step, cfg.optim, cfg.train.max_tokens))
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(module.parameters()))


def test_adamw_is_fused_on_cuda_only():
    model = MemoryDecoder(load_config().model)
    assert not fused_on(list(model.parameters())) and not fused_on([])
    assert adamw(model, OptimConfig()).defaults["fused"] is False  # CPU: the plain implementation
    if torch.cuda.is_available():  # where a GPU is (`pytest -k fused`)
        assert adamw(model.cuda(), OptimConfig()).defaults["fused"] is True
        assert adamw(model.cuda(), OptimConfig(), loss_scaled=True).defaults["fused"] is False  # fp16's loss scaler
        assert not fused_on([torch.zeros(1, device="cuda"), torch.zeros(1)])  # all on CUDA, or none fused


class GradNorms(Callback):
    """The norm of the gradients the optimizer stepped with, after each step (they are cleared before the next)."""

    def __init__(self):
        self.norms = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.norms.append(torch.nn.utils.get_total_norm([p.grad for p in pl_module.parameters() if p.grad is not None]))


def test_the_fused_adamw_under_bf16_mixed_precision_trains_with_clipped_gradients(tmp_path, monkeypatch):
    """The GPU's default path (fused AdamW, bf16-mixed; Lightning refuses to clip for a fused optimizer), with the
    fused kernel on CPU in place of CUDA's: the step takes gradients clipped to optim.grad_clip and logs their norm
    before clipping."""
    monkeypatch.setattr("l2m_train.train.optim.fused_on", lambda params, loss_scaled=False: not loss_scaled)
    run = plan(load_config(None, [f"run.root={tmp_path}", "train.max_tokens=3000", "train.micro_batch=8",
                                  "train.log_every_steps=1", "train.compare_baseline=false", "train.precision=bf16-mixed",
                                  "optim.grad_clip=0.01"]))
    norms = GradNorms()
    run.trainer.callbacks.append(norms)
    execute(run)
    assert run.trainer.optimizers[0].defaults["fused"] is True
    logged = _column(tmp_path / "quickstart" / "logs" / "metrics.csv", "train/grad_norm")
    assert len(norms.norms) == len(logged) == 3000 // (8 * 48) and min(logged) > 0.1  # well above the clip...
    assert [n.item() for n in norms.norms] == pytest.approx([0.01] * len(logged), rel=1e-3)  # ...so each step took 0.01


def test_a_launched_rank_leaves_the_judgement_of_the_run_directory_to_rank_zero(tmp_path, monkeypatch):
    # While the other ranks start, rank 0 creates the run directory and writes config.yaml through a temporary file: a
    # rank that looked at that moment took the directory for a stranger's and failed a two-node job's start.
    run_dir = tmp_path / "quickstart"
    run_dir.mkdir()
    (run_dir / ".config.yaml.tmp-k2j3").write_text("model: {}")
    cfg = load_config(None, [f"run.root={tmp_path}", "run.name=quickstart"])
    with pytest.raises(FileExistsError, match="is not a run directory"):
        plan(cfg)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert plan(cfg).run_dir == run_dir and [p.name for p in run_dir.iterdir()] == [".config.yaml.tmp-k2j3"]


def test_recall_samples_put_the_answer_only_in_the_first_segment():
    task = RecallTask(segment_len=16, segments=3, pairs=2, seed=0)
    for i in range(50):
        context, answer = task.text(i)
        assert len(context) == 48 and answer.isdigit()
        key = context[-2]
        assert f"{key}={answer}" in context[:16] and answer not in context[16:]
        batch = collate([task.sample(i)], length=48)
        assert (batch["labels"] != IGNORE).sum() == 1 and batch["labels"][0, -1] == ord(answer)
        assert batch["input_ids"][0].tolist() == list(context.encode())
    assert task.text(7) == RecallTask(16, 3, 2, 0).text(7)  # a pure function of (seed, index)


def _column(path, name):
    return [float(r[name]) for r in csv.DictReader(open(path)) if r.get(name)]


def test_a_short_run_lowers_the_loss_and_logs_what_it_should(tmp_path):
    cfg = load_config(None, [f"run.root={tmp_path}", "train.max_tokens=60000", "train.val_every_steps=40",
                             "train.log_every_steps=1", "train.compare_baseline=false", "optim.warmup_tokens=5000"])
    result = execute(plan(cfg))
    metrics = tmp_path / "quickstart" / "logs" / "metrics.csv"
    losses = _column(metrics, "train/loss")
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3  # from ~ln 256 towards ln 10 and below
    header = next(csv.reader(open(metrics)))
    for name in ("train/lr", "train/grad_norm", "train/loss_seg2", "train/device/items_per_sec", "gates/layer0/in",
                 "gates/layer0/forget", "gates/layer1/out", "val/acc"):
        assert name in header, name
    per_step = cfg.tokens_per_step  # micro-batch × 48 positions
    last = f"step-{result.steps:08d}"
    assert result.steps == 60000 // per_step and (tmp_path / "quickstart" / "checkpoints" / last / "complete").is_file()
    # The optimizer ran on the token schedule: step s used lr_at((s + 1) · tokens per step).
    rows = [r for r in csv.DictReader(open(metrics)) if r.get("train/lr")]
    for r in rows[:: max(1, len(rows) // 5)]:
        assert float(r["train/lr"]) == pytest.approx(lr_at((int(r["step"]) + 1) * per_step, cfg.optim, 60000))
    assert (tmp_path / "quickstart" / "config.yaml").read_text().startswith("model:")
