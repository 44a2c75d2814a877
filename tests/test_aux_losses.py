"""docs/design.md §3: the reconstruction and retrieval losses, for lm2 and rmt; switchable, and free when switched off."""
import csv
from dataclasses import replace

import pytest
import torch
from conftest import tiny_model

from l2m_train.config import ConfigError, load_config
from l2m_train.data.sample import Evidence, Sample, collate
from l2m_train.model.memory import MemoryTrace
from l2m_train.train.module import LM2Module
from l2m_train.train.reconstruction import reconstruction_loss
from l2m_train.train.retrieval import RetrievalHead

B, L, D = 2, 8, 32


def _traces(kind, **overrides):
    model = tiny_model(kind, **overrides).train()
    out = model(torch.randint(0, 64, (B, 3 * L)), keep_aux=True)
    return model, out.aux


@pytest.mark.parametrize("kind,layers", [("lm2", {1}), ("rmt", {0, 1})])
def test_traces_hold_one_read_per_segment_and_reading_layer(kind, layers):
    model, aux = _traces(kind, memory={"layers": [1]} if kind == "lm2" else {})
    assert len(aux) == 3 and all(set(step) == layers for step in aux)
    t = aux[2][1]
    assert t.hidden.shape == t.readout.shape == (B, L, D) and t.queries.shape == (B, 4, L, 8)
    slots = 4
    assert t.memory[0].shape[-2:] == (slots, 8) and t.tokens[0].shape[-2:] == (L, 8)
    assert model(torch.randint(0, 64, (B, 3 * L))).aux is None  # not kept unless asked for


@pytest.mark.parametrize("kind", ["lm2", "rmt"])
def test_reconstruction_is_zero_when_the_memory_holds_the_previous_segment_exactly(kind):
    _, aux = _traces(kind)
    layers = sorted(aux[0])
    assert reconstruction_loss(aux, layers) > 1e-6
    # A memory whose keys and values are those of the previous segment's tokens: student = teacher.
    exact = [aux[0]] + [{i: replace(step[i], memory=prev[i].tokens) for i in layers} for prev, step in zip(aux, aux[1:])]
    assert reconstruction_loss(exact, layers).item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("kind", ["lm2", "rmt"])
def test_reconstruction_trains_the_write_path_and_memory_not_the_teacher_or_the_queries(kind):
    model, aux = _traces(kind)
    layers = sorted(aux[0])
    loss = reconstruction_loss(aux, layers)
    # The teacher's keys/values and the queries may reach the loss through the model's own forward pass (a later
    # write reads them), but never through the loss's use of them: cutting that use changes no gradient.
    leaves = [kv for step in aux for t in step.values() for kv in t.tokens] + [t.queries for step in aux for t in step.values()]
    cut = [{i: replace(t, tokens=tuple(kv.detach() for kv in t.tokens), queries=t.queries.detach()) for i, t in step.items()}
           for step in aux]
    for got, want in zip(torch.autograd.grad(loss, leaves, retain_graph=True, allow_unused=True),
                         torch.autograd.grad(reconstruction_loss(cut, layers), leaves, retain_graph=True, allow_unused=True)):
        assert (got is None and want is None) or torch.equal(got, want)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    if kind == "lm2":
        for name in ("write_attn.wk", "write_attn.wv", "write_attn.wo", "gates_from_update", "gates_from_memory",
                     "read_attn.wk", "read_attn.wv", "read_attn.wo", "memory.initial"):
            assert any(grads[n] is not None and grads[n].abs().sum() > 0 for n in grads if name in n), name
    else:  # rmt's memory is the previous segment's write-token outputs: the loss reaches them and rmt_initial
        assert grads["rmt_initial"].abs().sum() > 0


def test_reconstruction_is_the_same_under_activation_checkpointing_and_runs_under_a_bptt_window():
    losses, grads = [], []
    for checkpointing in (False, True):
        model, aux = _traces("lm2", activation_checkpointing=checkpointing)
        loss = reconstruction_loss(aux, [0, 1])
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])
    model, aux = _traces("lm2", memory={"bptt_segments": 0})
    reconstruction_loss(aux, [0, 1]).backward()
    assert model.blocks[0].memory.gates_from_update.weight.grad.abs().sum() > 0


def _handmade(readout_at_question, facts_hidden):
    """One segment-aligned trace list: facts in segment 0 (positions 0-1, 2-3, 4-5), the question in segment 1."""
    T = 2 * L
    hidden = torch.zeros(1, T, D)
    for f, vec in enumerate(facts_hidden):
        hidden[0, 2 * f:2 * f + 2] = vec
    readout = torch.zeros(1, T, D)
    readout[0, L:L + 2] = readout_at_question

    def trace(a, b):
        return {0: MemoryTrace(hidden[:, a:b], None, None, None, None, readout[:, a:b], None)}
    return [trace(0, L), trace(L, T)]


def _identity_head(temperature=0.01):
    head = RetrievalHead(D, D, temperature, L)
    with torch.no_grad():
        for linear in (head.question, head.fact):
            linear.weight.copy_(torch.eye(D))
            linear.bias.zero_()
    return head


def _evidence_batch(supporting, question=(L, L + 2)):
    ids = list(range(2 * L + 2))
    sample = Sample(torch.tensor(ids).numpy(), loss_from=2 * L + 1,
                    evidence=Evidence([(0, 2), (2, 4), (4, 6)], supporting, question))
    return collate([sample], 2 * L + 1)


def test_retrieval_is_zero_when_the_supporting_fact_is_separable_by_construction():
    e = torch.eye(D)
    traces = _handmade(e[1], [e[0], e[1], e[2]])  # the read-out points at fact 1 exactly
    result = _identity_head()(traces, 0, _evidence_batch([1]))
    assert result.loss.item() < 1e-6 and result.correct.item() == 1 and result.evidence.item() == 1
    wrong = _identity_head()(traces, 0, _evidence_batch([2]))  # call fact 2 supporting: a large loss, top-1 wrong
    assert wrong.loss.item() > 10 and wrong.correct.item() == 0


def test_retrieval_ignores_samples_without_evidence():
    e = torch.eye(D)
    traces = _handmade(e[1], [e[0], e[1], e[2]])
    head = _identity_head(temperature=1.0)
    alone = head(traces, 0, _evidence_batch([1]))
    # The same sample twice; the second row's read-out is noise, and it carries no evidence.
    double = [{0: replace(t[0], hidden=t[0].hidden.repeat(2, 1, 1),
                          readout=torch.cat((t[0].readout, torch.randn_like(t[0].readout))))} for t in traces]
    ids = list(range(2 * L + 2))
    with_evidence = Sample(torch.tensor(ids).numpy(), 2 * L + 1, Evidence([(0, 2), (2, 4), (4, 6)], [1], (L, L + 2)))
    without = Sample(torch.tensor(ids).numpy(), 2 * L + 1)  # e.g. a recall or pretraining sample
    result = head(double, 0, collate([with_evidence, without], 2 * L + 1))
    torch.testing.assert_close(result.loss, alone.loss)
    assert result.evidence.item() == 1 and result.samples.item() == 2
    # A supporting fact inside the question's own segment is not in the memory read there: no evidence either.
    late = Sample(torch.tensor(ids).numpy(), 2 * L + 1, Evidence([(0, 2), (L, L + 2)], [1], (L + 2, L + 4)))
    assert head(traces, 0, collate([late], 2 * L + 1)).evidence.item() == 0
    empty = head(traces, 0, collate([without], 2 * L + 1))
    assert empty.loss.item() == 0 and empty.loss.requires_grad  # the heads still take part in the backward pass


@pytest.mark.parametrize("loss", ["reconstruction", "retrieval"])
def test_enabling_a_memory_loss_without_a_memory_is_refused(loss):
    with pytest.raises(ConfigError, match=f"loss.{loss}.weight=0.5 supervises the memory, but model.memory.kind is none"):
        load_config(None, ["model.memory.kind=none", f"loss.{loss}.weight=0.5"])
    load_config(None, ["model.memory.kind=rmt", f"loss.{loss}.weight=0.5"])  # rmt has a read-out: accepted
    # The quickstart's comparison run has no memory, so it drops the memory losses rather than fail.
    from l2m_train.config import validate
    from l2m_train.train.run import baseline_config
    validate(baseline_config(load_config(None, [f"loss.{loss}.weight=0.5"])))
    with pytest.raises(ConfigError, match="must be blocks that read memory"):
        load_config(None, ["model.memory.layers=[1]", "loss.reconstruction.weight=1", "loss.reconstruction.layers=[0]"])


def _module(*overrides):
    cfg = load_config(None, ["model.segment_len=8", "data.segments=3", *overrides])
    from omegaconf import OmegaConf
    return LM2Module(OmegaConf.to_container(OmegaConf.structured(cfg)))


def test_losses_at_weight_zero_are_not_computed(monkeypatch):
    asked = []
    module = _module()
    pieces = module.model.pieces
    monkeypatch.setattr(module.model, "pieces", lambda *a, **k: asked.append(k["keep_aux"]) or pieces(*a, **k))
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    batch = collate([Sample(torch.randint(0, 200, (25,)).numpy(), 20)], 24)
    module._shared_step(batch, "val")
    assert asked == [False] and module.retrieval is None and module.reconstruction_layers == []
    on = _module("loss.reconstruction.weight=1", "loss.retrieval.weight=1")
    assert on.reconstruction_layers == [0, 1] and on.retrieval is not None
    assert any(n.startswith("retrieval.") for n, _ in on.named_parameters())  # the heads are trained with the model


def test_a_run_with_both_losses_logs_each_on_babilong_data(tmp_path):
    """Both losses through the real pipeline: generated bAbI stories, a BABILong-style build, `plan` and `execute`."""
    from l2m_train.data.tokenizer import TextTokenizer
    from l2m_train.data_pipelines.babi_generate import write_babi_dir
    from l2m_train.data_pipelines.babilong import build
    from l2m_train.train.run import execute, plan

    write_babi_dir(tmp_path / "babi", ["qa1"], stories=30, seed=0)
    build(str(tmp_path / "babi"), [str(tmp_path / "babi")], [0], ["qa1"], 40, 8, TextTokenizer.byte(), str(tmp_path / "bl"))
    cfg = load_config(None, [f"run.root={tmp_path}", "data.sources=[qa]", f"data.qa.path={tmp_path / 'bl'}",
                             "model.segment_len=32", "data.segments=12", "train.micro_batch=4", "train.max_tokens=15000",
                             "train.val_every_steps=5", "train.log_every_steps=1", "data.val_samples=8",
                             "loss.reconstruction.weight=0.5", "loss.retrieval.weight=0.5"])
    execute(plan(cfg))
    rows = list(csv.DictReader(open(tmp_path / "quickstart" / "logs" / "metrics.csv")))
    for name in ("train/reconstruction", "train/retrieval", "train/retrieval_acc", "train/evidence",
                 "val/reconstruction", "val/retrieval", "val/retrieval_acc", "val/evidence"):
        values = [float(r[name]) for r in rows if r.get(name)]
        assert values and all(v == v for v in values), name  # logged, and never NaN
    evidence = [float(r["train/evidence"]) for r in rows if r.get("train/evidence")]
    assert 0 < max(evidence) <= 1  # qa1 samples whose supporting fact lies before the question's segment
