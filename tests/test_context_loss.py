"""The context loss: next-token cross-entropy on the tokens before the answer, weighted on its own and logged apart."""
import numpy as np
import pytest
import torch
from conftest import tiny_model
from omegaconf import OmegaConf

from l2m_train.config import load_config
from l2m_train.data import IGNORE
from l2m_train.data.module import MicroBatches, TrainingData
from l2m_train.data.order import OrderState
from l2m_train.data.recall import RecallTask
from l2m_train.data.sample import Sample, collate
from l2m_train.train.losses import lm_loss
from l2m_train.train.module import LM2Module
from l2m_train.train.run import baseline_config
from l2m_train.train.segment_backward import lm_forward

# Two QA-like samples in 12 positions: 10 tokens answered from token 7 on, and 6 tokens answered from token 4 on.
LONG, SHORT = Sample(np.arange(10, 20), loss_from=7), Sample(np.arange(30, 36), loss_from=4)


def test_collate_puts_the_context_targets_before_the_answer_and_nowhere_else():
    batch = collate([LONG, SHORT], 12, context=True)
    assert batch["context_labels"].tolist() == [list(range(11, 17)) + [IGNORE] * 6,  # ids[1:7], the answer excluded
                                                [31, 32, 33] + [IGNORE] * 9]  # ids[1:4], then answer and padding
    assert batch["labels"].tolist() == [[IGNORE] * 6 + [17, 18, 19] + [IGNORE] * 3,
                                        [IGNORE] * 3 + [34, 35] + [IGNORE] * 7]  # as without the context loss
    assert collate([LONG, SHORT], 12).keys() == {"input_ids", "labels", "valid"}  # not asked: the batch of old
    pretraining = collate([Sample(np.arange(9), loss_from=1)], 8, context=True)
    assert (pretraining["context_labels"] == IGNORE).all()  # every token already supervised: nothing counted twice
    recall = collate([RecallTask(16, 3, 1, 0).sample(0)], 48, context=True)
    assert recall["context_labels"][0, :47].tolist() == recall["input_ids"][0, 1:].tolist()  # the filler, the question
    assert recall["context_labels"][0, 47] == IGNORE  # the answer's position


def test_the_context_loss_is_the_cross_entropy_of_exactly_the_context_positions():
    model = tiny_model("lm2").train()
    batch = collate([LONG, SHORT], 12, context=True)
    out = lm_forward(model, batch["input_ids"], batch["labels"], batch["valid"], context_labels=batch["context_labels"],
                     context_weight=0.3)
    logits = model(batch["input_ids"], valid=batch["valid"]).logits.detach()
    positions = [(0, p, 11 + p) for p in range(6)] + [(1, p, 31 + p) for p in range(3)]  # (row, position, target)
    by_hand = torch.stack([-torch.log_softmax(logits[r, p], -1)[t] for r, p, t in positions]).mean()
    torch.testing.assert_close(out.context.detach(), by_hand)
    answer = lm_loss(logits, batch["labels"], model.cfg.segment_len).loss
    torch.testing.assert_close(out.lm.loss.detach(), answer)  # the answer loss keeps its meaning
    torch.testing.assert_close(out.loss.detach(), answer + 0.3 * by_hand)


def _module(*overrides) -> LM2Module:
    cfg = load_config(None, ["model.segment_len=8", "data.segments=2", "model.memory.bptt_segments=0", *overrides])
    module = LM2Module(OmegaConf.to_container(OmegaConf.structured(cfg)))
    module.logged = {}
    module.log = lambda name, value, **k: module.logged.__setitem__(name, float(value))
    module.log_dict = lambda values, **k: None
    return module


def _step(module: LM2Module, batch: dict, prefix: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss = module._shared_step(batch, prefix)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_at_weight_zero_nothing_changes():
    module = _module()
    with_context, without = collate([LONG, SHORT], 12, context=True), collate([LONG, SHORT], 12)
    loss, grads = _step(module, with_context, "train")
    assert "train/context_loss" not in module.logged
    same_loss, same_grads = _step(module, without, "train")
    module.zero_grad(set_to_none=True)
    plain = lm_forward(module.model, without["input_ids"], without["labels"], without["valid"],
                       early_params=list(module.parameters())).loss
    plain.backward()
    assert torch.equal(loss, same_loss) and torch.equal(loss, plain.detach())
    for name, grad in grads.items():
        assert torch.equal(grad, same_grads[name]) and torch.equal(grad, module.get_parameter(name).grad), name
    cfg = load_config(None, ["model.segment_len=16", "data.segments=3"])
    data = TrainingData(cfg)
    train = next(iter(MicroBatches(cfg, data.sources, OrderState(), 0, 1)))
    val = next(iter(data.val_dataloader()[0]))
    assert "context_labels" not in train and "context_labels" not in val  # the data is what it always was


def test_a_weighted_context_loss_trains_and_is_logged_apart_from_the_answer_loss():
    module = _module("loss.context.weight=0.5")
    batch = collate([LONG, SHORT], 12, context=True)
    loss, grads = _step(module, batch, "train")
    logits = module.model(batch["input_ids"], valid=batch["valid"]).logits.detach()
    answer = lm_loss(logits, batch["labels"], 8).loss.item()
    assert module.logged["train/loss"] == pytest.approx(answer, rel=1e-6)  # the answer alone, comparable across runs
    assert loss.item() == pytest.approx(answer + 0.5 * module.logged["train/context_loss"], rel=1e-6)
    _step(module, batch, "val")
    assert module.logged["val/context_loss"] == module.logged["train/context_loss"]
    cfg = load_config(None, ["model.segment_len=16", "data.segments=3", "loss.context.weight=0.5"])
    data = TrainingData(cfg)
    for got in (next(iter(MicroBatches(cfg, data.sources, OrderState(), 0, 1))), next(iter(data.val_dataloader()[0]))):
        assert (got["context_labels"][:, :-1] == got["input_ids"][:, 1:]).all()  # recall: all but the answer's position
        assert (got["context_labels"][:, -1] == IGNORE).all()
    assert baseline_config(cfg).loss.context.weight == 0.5  # the memoryless comparison trains on the same loss
