"""Segment-local attention without memory runs a call's whole segments as one batch (segments folded into the batch
dimension): its losses and gradients are those of running the segments one at a time, padding and partial segments
at either end of a streamed call included."""
import pytest
import torch
from conftest import tiny_model

from l2m_train.data import IGNORE
from l2m_train.train.losses import lm_loss
from l2m_train.train.segment_backward import lm_forward

L = 8  # tiny_config's segment_len


def _batch(T: int):
    g = torch.Generator().manual_seed(3)
    idx, labels = torch.randint(0, 64, (3, T), generator=g), torch.randint(0, 64, (3, T), generator=g)
    valid = torch.ones(3, T, dtype=torch.bool)
    valid[1, :5] = False  # left padding
    valid[2, 9:20] = False  # a whole segment of padding and parts of two more
    labels[~valid] = IGNORE
    return idx, labels, valid


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def _one_segment_at_a_time(model, idx, valid, pos: int = 0):
    """The looped path by hand: each stretch inside one segment is its own call, from the state the previous left."""
    logits, state, a = [], None, 0
    if pos:  # a call that starts `pos` tokens into a segment
        state = model(idx[:, :pos], valid=valid[:, :pos]).state
        a = pos
    while a < idx.shape[1]:
        b = min(idx.shape[1], a + L - (a % L))
        out = model(idx[:, a:b], state, valid=valid[:, a:b])
        logits.append(out.logits)
        state, a = out.state, b
    return torch.cat(logits, dim=1)


def _assert_same(batched: dict, looped: dict):
    assert batched.keys() == looped.keys() and len(looped) > 10
    for name in looped:
        torch.testing.assert_close(batched[name], looped[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("T", [5 * L + 3, 4 * L, L])  # a short last segment, whole segments only, one segment
@pytest.mark.parametrize("checkpointing", [False, True])
def test_batched_segments_give_the_losses_and_gradients_of_the_loop(T, checkpointing):
    model = tiny_model("none", activation_checkpointing=checkpointing).train()
    idx, labels, valid = _batch(T)
    looped = _one_segment_at_a_time(model, idx, valid)
    looped_loss = lm_loss(looped, labels, L).loss
    looped_loss.backward()
    reference = _grads(model)
    pieces = list(model.pieces(idx, valid=valid))
    assert [(p.start, p.end) for p in pieces] == [(0, T // L * L)] + ([(T // L * L, T)] if T % L else [])
    batched = model(idx, valid=valid).logits
    torch.testing.assert_close(batched[valid], looped[valid], rtol=1e-5, atol=1e-6)
    batched_loss = lm_loss(batched, labels, L).loss
    assert batched_loss.item() == pytest.approx(looped_loss.item(), rel=1e-6)
    batched_loss.backward()
    _assert_same(_grads(model), reference)
    # and with segment_backward's early backward of each piece that no later piece reaches
    out = lm_forward(model, idx, labels, valid, early_params=list(model.parameters()))
    assert out.lm.loss.item() == pytest.approx(looped_loss.item(), rel=1e-6)
    out.loss.backward()
    _assert_same(_grads(model), reference)


@pytest.mark.parametrize("pos", [3, 1])
@torch.no_grad()
def test_a_streamed_call_starting_inside_a_segment_batches_its_whole_segments(pos):
    model = tiny_model("none")
    idx, _, valid = _batch(4 * L + 5)  # after `pos` tokens: the rest of a segment, 3 whole ones, 5 tokens of one more
    state = model(idx[:, :pos], valid=valid[:, :pos]).state
    pieces = list(model.pieces(idx[:, pos:], state, valid=valid[:, pos:]))
    assert [(p.start, p.end) for p in pieces] == [(0, L - pos), (L - pos, 4 * L - pos), (4 * L - pos, 4 * L + 5 - pos)]
    assert pieces[-1].state.pos == 5 and pieces[1].state.pos == 0
    streamed = model(idx[:, pos:], state, valid=valid[:, pos:]).logits
    looped = _one_segment_at_a_time(model, idx, valid, pos)
    v = valid[:, pos:]
    torch.testing.assert_close(streamed[v], looped[v], rtol=1e-5, atol=1e-6)
