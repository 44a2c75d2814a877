"""The LM2 memory layer's arithmetic, its padding-aware write, and truncated backpropagation through it."""
import pytest
import torch
from conftest import KINDS, tiny_config, tiny_model

from l2m_train.model import MemoryDecoder
from l2m_train.model.memory import LM2Memory


def _identity_memory(write_norm: bool = False) -> LM2Memory:
    """d = 2, one head, every projection the identity, W_in = I, V_in = 0, W_f = 0, V_f = I, b_in = 0, b_f = 1."""
    memory = LM2Memory(d_model=2, n_heads=1, slots=1, init="learned", forget_bias=1.0, norm_eps=0.0,
                       write_norm=write_norm)
    eye = torch.eye(2)
    with torch.no_grad():
        for attn in (memory.read_attn, memory.write_attn):
            for lin in (attn.wq, attn.wk, attn.wv, attn.wo):
                lin.weight.copy_(eye)
        memory.out_gate.weight.copy_(eye)
        memory.gates_from_update.weight.copy_(torch.cat((eye, torch.zeros(2, 2))))
        memory.gates_from_memory.weight.copy_(torch.cat((torch.zeros(2, 2), eye)))
    return memory


def test_write_matches_hand_computation():
    # M = [1, 2]; RMSNorm(M) = [1, 2] / sqrt(2.5) = [0.63246, 1.26491]
    # the slot attends to y1 = [1, 0], y2 = [0, 1]: scores [0.44721, 0.89443] → weights [0.39002, 0.60998] = U
    # g_in = sigmoid(U) = [0.59629, 0.64794]; g_f = sigmoid(M + 1) = [0.88080, 0.95257]
    # M' = g_in · tanh(U) + g_f · M = [1.10225, 2.25770]
    memory = _identity_memory()
    M = torch.tensor([[[1.0, 2.0]]])
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    new, in_gate, forget_gate = memory.write(y, M, None)
    torch.testing.assert_close(in_gate, torch.tensor([[[0.596288, 0.647935]]]), rtol=0, atol=1e-5)
    torch.testing.assert_close(forget_gate, torch.tensor([[[0.880797, 0.952574]]]), rtol=0, atol=1e-5)
    torch.testing.assert_close(new, torch.tensor([[[1.102247, 2.257697]]]), rtol=0, atol=1e-5)


def test_normalised_write_ignores_the_scale_of_the_residual_stream():
    M = torch.tensor([[[1.0, 2.0]]])
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    normed, raw = _identity_memory(write_norm=True), _identity_memory(write_norm=False)
    torch.testing.assert_close(normed.write(0.02 * y, M, None)[0], normed.write(y, M, None)[0])
    assert (raw.write(0.02 * y, M, None)[0] - raw.write(y, M, None)[0]).abs().max() > 0.1


def test_a_convex_write_keeps_the_memory_within_one_however_many_segments_it_writes():
    torch.manual_seed(0)
    y = 10 * torch.randn(40, 1, 8, 2)  # 40 segments of 8 tokens
    for convex in (False, True):
        memory, M = _identity_memory(), torch.tensor([[[0.5, -0.5]]])
        memory.convex_write = convex
        for segment in y:
            M, in_gate, forget_gate = memory.write(segment, M, None)
            if convex:
                torch.testing.assert_close(in_gate, 1 - forget_gate)
        # the design's gates: g_f = sigmoid(M + 1) nears 1 as M grows, and M climbs with every write
        assert (M.abs().max() <= 1) == convex, M


def test_a_competing_write_changes_only_the_slots_the_tokens_claim():
    # One head; every token's key points along slot 0's (one-hot) row, so slot 0 claims every token and the rest none.
    memory = LM2Memory(d_model=4, n_heads=1, slots=3, init="identity", forget_bias=1.0, norm_eps=1e-6,
                       convex_write=True, slot_competition=True)
    with torch.no_grad():
        memory.write_attn.wq.weight.copy_(10 * torch.eye(4))
        memory.write_attn.wk.weight.zero_()
        memory.write_attn.wk.weight[0].fill_(10.0)  # k = 10 · sum(y) · e_0, positive for positive y
    M = memory.initial_state(2)
    y = torch.rand(2, 5, 4) + 0.5
    new, _, _ = memory.write(y, M, None)
    changed = (new - M).abs().amax(-1)
    assert (changed[:, 0] > 1e-2).all() and (changed[:, 1:] < 1e-6).all(), changed
    _, share = memory.competed_update(memory.norm(M), memory.write_attn.keys_values(memory.write_norm(y)), None)
    torch.testing.assert_close(share.amax(1), torch.ones(2, 1))


@torch.no_grad()
def test_a_competing_write_keeps_the_decoder_causal_and_streaming():
    model = tiny_model("lm2", memory={"slot_competition": True, "convex_write": True})
    idx = torch.randint(0, 64, (2, 29))
    whole, changed = model(idx).logits, idx.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 64
    after = model(changed).logits
    torch.testing.assert_close(after[:, :12], whole[:, :12], rtol=0, atol=0)
    assert (after[:, 16:] - whole[:, 16:]).abs().max() > 1e-6  # carried into later segments by the memory
    state, pieces = None, []
    for a, b in ((0, 3), (3, 13), (13, 29)):
        out = model(idx[:, a:b], state)
        state, pieces = out.state, pieces + [out.logits]
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=1e-5, atol=1e-5)


def test_read_matches_hand_computation():
    # One slot: E_mem = RMSNorm(M) = [0.63246, 1.26491]; g_out = sigmoid(E_mem); read = g_out · E_mem
    memory = _identity_memory()
    gated, read = memory.read(torch.randn(1, 3, 2), torch.tensor([[[1.0, 2.0]]]))
    expected = torch.tensor([0.413023, 0.986467]).expand(1, 3, 2)
    torch.testing.assert_close(gated, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(read.readout, torch.tensor([0.632456, 1.264911]).expand(1, 3, 2), rtol=0, atol=1e-5)


def test_forget_bias_starts_positive():
    memory = LM2Memory(d_model=8, n_heads=2, slots=4, init="learned", forget_bias=2.0, norm_eps=1e-6)
    assert torch.all(memory.gates_from_update.bias[8:] == 2.0) and torch.all(memory.gates_from_update.bias[:8] == 0)


def test_identity_init_is_one_hot_rows():
    memory = LM2Memory(d_model=8, n_heads=2, slots=4, init="identity", forget_bias=1.0, norm_eps=1e-6)
    assert torch.equal(memory.initial_state(3)[1], torch.eye(4, 8))
    assert not any(p is memory.initial for p in memory.parameters())


@torch.no_grad()
def test_padding_is_not_written_to_memory():
    memory = _identity_memory()
    M = torch.tensor([[[1.0, 2.0]]])
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    padded = torch.cat((y, torch.full((1, 3, 2), 50.0)), dim=1)
    valid = torch.tensor([[True, True, False, False, False]])
    torch.testing.assert_close(memory.write(padded, M, valid)[0], memory.write(y, M, None)[0])
    nothing = torch.zeros(1, 5, dtype=torch.bool)
    assert torch.equal(memory.write(padded, M, nothing)[0], M)  # an all-padding segment leaves memory alone


def _padded_batch():
    idx = torch.randint(0, 64, (3, 29))
    valid = torch.ones(3, 29, dtype=torch.bool)
    valid[0, 10:13] = False  # inside segment 1
    valid[1, :5] = False  # left padding
    valid[2, 8:16] = False  # a whole segment of padding
    return idx, valid


@pytest.mark.parametrize("kind,attention", KINDS)
@torch.no_grad()
def test_padding_content_changes_no_real_logit(kind, attention):
    model = tiny_model(kind, attention)
    idx, valid = _padded_batch()
    other = idx.clone()
    other[~valid] = (other[~valid] + 7) % 64
    out = model(idx, valid=valid)
    torch.testing.assert_close(model(other, valid=valid).logits[valid], out.logits[valid], rtol=0, atol=1e-6)
    assert all(torch.isfinite(m).all() for m in out.state.memory)


@pytest.mark.parametrize("kind,attention", KINDS)
@torch.no_grad()
def test_padded_batches_stream_token_by_token(kind, attention):
    model = tiny_model(kind, attention)
    idx, valid = _padded_batch()
    whole = model(idx, valid=valid).logits
    state, pieces = None, []
    for t in range(idx.shape[1]):
        out = model(idx[:, t : t + 1], state, valid=valid[:, t : t + 1])
        state, pieces = out.state, pieces + [out.logits]
    torch.testing.assert_close(torch.cat(pieces, 1)[valid], whole[valid], rtol=1e-5, atol=1e-5)


def _segment_grads(kind: str, bptt: int):
    """Gradient norm reaching the embedding rows of each of 4 segments from the last segment's loss."""
    torch.manual_seed(0)
    cfg = tiny_config(kind, tie_embeddings=False, segment_len=4, memory={"bptt_segments": bptt})
    model = MemoryDecoder(cfg)
    idx = torch.arange(16)[None]  # segment s uses token ids 4s .. 4s+3 only
    logits = model(idx).logits[:, 12:]
    torch.nn.functional.cross_entropy(logits.reshape(-1, 64), torch.arange(4) + 20).backward()
    rows = model.embed.weight.grad.view(16, 4, -1)[:4]  # ids 0..15 → 4 segments × 4 ids
    return [rows[s].norm().item() for s in range(4)], model


@pytest.mark.parametrize("kind", ["lm2", "rmt"])
@pytest.mark.parametrize("bptt,reached", [(-1, [1, 1, 1, 1]), (0, [0, 0, 0, 1]), (1, [0, 0, 1, 1]), (2, [0, 1, 1, 1])])
def test_gradients_cross_exactly_bptt_memory_writes(kind, bptt, reached):
    norms, model = _segment_grads(kind, bptt)
    assert [int(n > 0) for n in norms] == reached
    initial = model.blocks[0].memory.initial if kind == "lm2" else model.rmt_initial
    assert (initial.grad is not None and initial.grad.abs().sum() > 0) == (bptt == -1)


def test_no_gradient_reaches_the_write_path_outside_the_window():
    _, model = _segment_grads("lm2", 0)
    write = model.blocks[0].memory.gates_from_update.weight
    assert write.grad is None or write.grad.abs().sum() == 0
    _, model = _segment_grads("lm2", 1)
    assert model.blocks[0].memory.gates_from_update.weight.grad.abs().sum() > 0


def test_activation_checkpointing_saves_less_and_gives_the_same_gradients():
    grads, saved = [], []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = MemoryDecoder(tiny_config("lm2", activation_checkpointing=ckpt, memory={"bptt_segments": 2}))
        idx = torch.randint(0, 64, (2, 29))
        numel = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: numel.append(t.numel()) or t, lambda t: t):
            loss = model(idx).logits.square().mean()
        loss.backward()
        saved.append(sum(numel))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])
    assert saved[1] < 0.5 * saved[0]  # only segment inputs and the head's activations are kept
