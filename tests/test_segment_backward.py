"""A backward for each piece of a sample that the BPTT window cuts off: the gradients of one backward over the whole
sample, activations kept for one window however long the sample, and gradients synchronised across DDP ranks."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from omegaconf import OmegaConf
from safetensors.torch import load_file

from l2m_train.config import load_config
from l2m_train.data import IGNORE
from l2m_train.data.sample import Sample, collate
from l2m_train.train.export import export
from l2m_train.train.losses import lm_loss
from l2m_train.train.module import LM2Module
from l2m_train.train.segment_backward import lm_forward


def _batch(T: int):
    g = torch.Generator().manual_seed(1)
    idx, labels = torch.randint(0, 64, (2, T), generator=g), torch.randint(0, 64, (2, T), generator=g)
    valid = torch.ones(2, T, dtype=torch.bool)
    valid[1, :5] = False  # left padding in one row
    labels[:, ::3] = IGNORE
    labels[~valid] = IGNORE
    return idx, labels, valid


def _context_labels(labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Targets on every real position without a label, but a few (so some positions carry neither)."""
    context = torch.randint(0, 64, labels.shape, generator=torch.Generator().manual_seed(2))
    context[(labels != IGNORE) | ~valid] = IGNORE
    context[:, 1::7] = IGNORE
    return context


def _backward(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# 6 segments of 8 tokens, the last one short. Early backwards: after every segment whose successor starts from
# detached memory (bptt k: segments 1 … 5 − k); without memory, after the 5 whole segments, run as one batch.
@pytest.mark.parametrize("context_weight", [None, 0.7])  # the context loss off, and on
@pytest.mark.parametrize("kind,attention,bptt,early,extra", [
    ("lm2", "segment", 0, 5, {}), ("lm2", "segment", 3, 2, {}), ("lm2", "segment", -1, 0, {}),
    ("lm2", "segment", 1, 4, {"activation_checkpointing": True, "tie_embeddings": False}),
    ("rmt", "segment", 1, 4, {}), ("none", "segment", -1, 1, {}), ("none", "full", 0, 0, {})])
def test_early_backwards_give_the_gradients_of_one_backward(kind, attention, bptt, early, extra, context_weight,
                                                           monkeypatch):
    model = tiny_model(kind, attention, memory={"bptt_segments": bptt}, **extra).train()
    idx, labels, valid = _batch(45)
    logits = model(idx, valid=valid).logits
    plain = lm_loss(logits, labels, model.cfg.segment_len)
    context = None if context_weight is None else _context_labels(labels, valid)
    objective = plain.loss
    if context is not None:  # the context loss as one mean over the whole batch's context positions
        context_loss = F.cross_entropy(logits.flatten(0, 1), context.flatten(), ignore_index=IGNORE)
        objective = objective + context_weight * context_loss
    reference = _backward(model, objective)

    taken, grad = [], torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: taken.append(1) or grad(*a, **k))
    out = lm_forward(model, idx, labels, valid, early_params=list(model.parameters()), context_labels=context,
                     context_weight=context_weight or 0.0)
    assert len(taken) == early
    streamed = _backward(model, out.loss)
    assert streamed.keys() == reference.keys() and len(reference) > 10
    for name in reference:
        torch.testing.assert_close(streamed[name], reference[name], rtol=1e-5, atol=1e-7, msg=name)
    assert out.lm.loss.item() == pytest.approx(plain.loss.item(), rel=1e-6)  # the whole sample's loss, logged
    assert out.loss.item() == pytest.approx(objective.item(), rel=1e-6)  # and the value Lightning's hooks see
    if context is None:
        assert out.context is None
    else:
        assert out.context.item() == pytest.approx(context_loss.item(), rel=1e-6)
    assert out.lm.exact == plain.exact and out.lm.correct == plain.correct
    torch.testing.assert_close(out.lm.per_segment, plain.per_segment, equal_nan=True)


class _SavedBytes:
    """Bytes autograd holds for backward: live now and at peak (each saved tensor is boxed until its graph frees it)."""

    def __init__(self):
        self.live = self.peak = 0

    def pack(self, tensor):
        return _Box(self, tensor)

    def unpack(self, box):
        return box.tensor


class _Box:
    def __init__(self, counter: _SavedBytes, tensor: torch.Tensor):
        # Detached: a saved output would otherwise hold its own graph in a cycle, which only the garbage collector frees.
        self.counter, self.tensor, self.bytes = counter, tensor.detach(), tensor.numel() * tensor.element_size()
        counter.live += self.bytes
        counter.peak = max(counter.peak, counter.live)

    def __del__(self):
        self.counter.live -= self.bytes


def _peak_saved(segments: int, early: bool) -> int:
    model = tiny_model("lm2", memory={"bptt_segments": 1}).train()
    idx, labels, valid = _batch(8 * segments)
    saved = _SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        out = lm_forward(model, idx, labels, valid, early_params=list(model.parameters()) if early else ())
    out.loss.backward()
    return saved.peak


def test_activations_kept_stay_those_of_one_window_however_long_the_sample():
    assert _peak_saved(16, early=False) > 3 * _peak_saved(4, early=False)  # one backward: grows with the sample
    assert _peak_saved(16, early=True) < 1.1 * _peak_saved(4, early=True)  # early backwards: flat


def test_the_lightning_module_trains_with_early_backwards_on_its_own_too():
    """benchmarks/aux_ablation.py times LM2Module's step without a Trainer."""
    cfg = load_config(None, ["model.segment_len=8", "data.segments=4", "model.memory.bptt_segments=1"])
    module = LM2Module(OmegaConf.to_container(OmegaConf.structured(cfg)))
    module.log = module.log_dict = lambda *a, **k: None
    batch = collate([Sample(torch.randint(0, 200, (33,)).numpy(), 30)], 32)
    reference = _backward(module, lm_loss(module.model(batch["input_ids"]).logits, batch["labels"], 8).loss)
    streamed = _backward(module, module._shared_step(batch, "train"))
    assert len(module._early_params()) == len(list(module.parameters())) and streamed.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(streamed[name], reference[name], rtol=1e-5, atol=1e-7, msg=name)


def test_early_backwards_refuse_the_auxiliary_losses():
    model = tiny_model("lm2", memory={"bptt_segments": 0}).train()
    with pytest.raises(ValueError, match="auxiliary losses"):
        lm_forward(model, *_batch(24), keep_aux=True, early_params=list(model.parameters()))


@pytest.mark.slow
def test_two_ddp_ranks_train_as_one_rank_with_the_same_samples(tmp_path):
    """Early gradients reach DDP's all-reduce: two ranks of 4 samples equal one rank accumulating 2 × 4."""
    l2m = str(Path(sys.executable).parent / "l2m")
    args = ["run.root=runs", "train.accelerator=cpu", "train.threads=1", "train.micro_batch=4", "model.segment_len=16",
            "data.segments=3", "model.memory.bptt_segments=1", f"train.max_tokens={4 * 384}", "checkpoint.every_steps=4",
            "train.val_every_steps=1000", "data.val_samples=4", "train.compare_baseline=false", "optim.warmup_tokens=0"]
    found = {}
    for name, ranks in (("ddp", ["train.devices=2", "train.strategy=ddp"]), ("one", ["train.devices=1", "train.accumulate=2"])):
        out = subprocess.run([l2m, "train", *args, *ranks, f"run.name={name}"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        found[name] = load_file(export(tmp_path / "runs" / name / "checkpoints" / "step-00000004", tmp_path / f"export-{name}")
                                / "model.safetensors")
    assert found["ddp"].keys() == found["one"].keys()
    for k in found["ddp"]:  # the same training up to the order of float sums
        torch.testing.assert_close(found["ddp"][k], found["one"][k], rtol=0, atol=1e-5)
