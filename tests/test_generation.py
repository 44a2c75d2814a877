"""Streaming generation: lm2 projects its memory's read keys/values once per segment, and a prompt of any length is
consumed keeping only the last position's logits; the tokens generated stay those of the whole-sample forward."""
import pytest
import torch
from conftest import KINDS, tiny_config, tiny_model

from l2m_train.model import MemoryDecoder


@pytest.mark.parametrize("prompt_len", [19, 16])  # ends inside a segment, or on a boundary
@pytest.mark.parametrize("kind,attention", KINDS)
@torch.no_grad()
def test_greedy_generation_equals_the_whole_sample_argmax(kind, attention, prompt_len):
    model = tiny_model(kind, attention)
    prompt = torch.randint(0, 64, (2, prompt_len))
    valid = torch.ones(2, prompt_len, dtype=torch.bool)
    valid[1, :5] = False  # left padding, consumed across segments
    generated = torch.cat([token for token, _ in model.generate(prompt, 20, temperature=0, valid=valid)], dim=1)
    seq = prompt
    for _ in range(20):
        seq_valid = torch.cat((valid, valid.new_ones(2, seq.shape[1] - prompt_len)), dim=1)
        seq = torch.cat((seq, model(seq, valid=seq_valid).logits[:, -1:].argmax(-1)), dim=1)
    assert torch.equal(generated, seq[:, prompt_len:])


def _memory_blocks(model: MemoryDecoder):
    return [model.blocks[i].memory for i in model.memory_layers]


@torch.no_grad()
def test_kept_keys_values_are_a_fresh_projection_of_the_memory():
    model = tiny_model("lm2", memory={"layers": [1]})  # one memory layer, in the second block
    state = model(torch.randint(0, 64, (1, 16))).state
    assert state.memory_kv == (None,)  # a segment's memory is not projected before a token reads it
    for _, state in model.generate(torch.randint(0, 64, (1, 3)), 12, temperature=0, state=state):
        kept = state.memory_kv[0]
        if state.pos == 0:  # the segment just completed: the memory was written
            assert kept is None
        else:
            for k, fresh in zip(kept, _memory_blocks(model)[0].read_keys_values(state.memory[0])):
                torch.testing.assert_close(k, fresh, rtol=0, atol=0)


@torch.no_grad()
def test_tokens_after_a_segments_first_do_not_project_the_slots():
    model = tiny_model("lm2")
    L = model.cfg.segment_len
    calls = []
    for memory in _memory_blocks(model):
        for projection in (memory.read_attn.wk, memory.read_attn.wv):
            projection.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[1]))
    state = model(torch.randint(0, 64, (1, 5))).state
    for t in range(5, 3 * L):
        calls.clear()
        pos = state.pos
        state = model(torch.randint(0, 64, (1, 1)), state).state
        # The slots (N rows) are projected by each memory layer's wk and wv at a segment's first token only.
        expected = [model.cfg.memory.slots] * 2 * len(model.memory_layers) if pos == 0 else []
        assert calls == expected, (t, pos)


@pytest.mark.parametrize("kind,attention", KINDS)
@torch.no_grad()
def test_prompt_consumption_keeps_only_the_last_logits(kind, attention):
    model = tiny_model(kind, attention)
    prompt = torch.randint(0, 64, (2, 6 * model.cfg.segment_len + 3))
    shapes = []
    model.final_norm.register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    model.lm_head.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    list(model.generate(prompt, 2, temperature=0))
    assert set(shapes) == {(2, 1, model.cfg.d_model), (2, 1, model.cfg.vocab_size)}
    logits, _ = model.consume(prompt)
    torch.testing.assert_close(logits, model(prompt).logits[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bptt", [0, -1])
def test_every_read_trains_the_read_key_value_maps_under_any_bptt_window(bptt):
    """Kept keys/values must not be detached with the memory: truncation re-projects the detached memory."""
    torch.manual_seed(0)
    model = MemoryDecoder(tiny_config("lm2", memory={"bptt_segments": bptt}))
    logits = model(torch.randint(0, 64, (2, 29))).logits
    logits[:, 24:].square().mean().backward()  # the last segment only: its reads see memory detached when bptt = 0
    for memory in _memory_blocks(model):
        assert memory.read_attn.wk.weight.grad.abs().sum() > 0 and memory.read_attn.wv.weight.grad.abs().sum() > 0


def test_a_detached_state_keeps_every_value_and_no_graph():
    model = tiny_model("lm2").train()
    state = model(torch.randint(0, 64, (2, 12))).state  # mid-segment: caches, pending outputs and memory keys/values
    cut = state.detach()
    assert all(t.requires_grad for t in state.tensors()) and not any(t.requires_grad for t in cut.tensors())
    assert len(cut.tensors()) == len(state.tensors()) and all(torch.equal(a, b) for a, b in zip(cut.tensors(), state.tensors()))
    assert (cut.pos, cut.valid) == (state.pos, state.valid)
