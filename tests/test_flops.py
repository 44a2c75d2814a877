"""FLOPs per token (l2m_train/model/flops.py): hand-computed cases, the parameter count, and torch's FLOP counter."""
import pytest
import torch
from conftest import KINDS, tiny_config
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from l2m_train.config import MemoryConfig, ModelConfig
from l2m_train.model import MemoryDecoder
from l2m_train.model.flops import forward_flops_per_token, train_flops_per_token


def hand_config(kind: str, attention: str = "segment") -> ModelConfig:
    # d=8, 2 heads of 4, 1 KV head (d_kv=4), d_ff=12, vocab 10, 2 layers, segments of L=4, 2 slots; lm2 in block 1 only
    return ModelConfig(vocab_size=10, n_layers=2, d_model=8, n_heads=2, n_kv_heads=1, d_ff=12, segment_len=4, attention=attention,
                       memory=MemoryConfig(kind=kind, slots=2, layers=[1]))


# Per block: q 8·8 + k,v 2·8·4 + out 8·8 = 192 attention, gate/up 8·24 + down 12·8 = 288 SwiGLU: 480 weights.
# LM head 8·10 = 80. Matmuls per token forward: 2 · (2·480 + 80) = 2080. Attention per block: 4·d·L = 4·8·4 = 128.
@pytest.mark.parametrize("kind, attention, context, forward", [
    ("none", "segment", None, 2080 + 2 * 128),  # 2336
    ("none", "full", 12, 2080 + 2 * 4 * 8 * 12),  # every token charged for all 12 keys: 2848
    # rmt, S=2: each segment of 4 runs 4 + 2 + 2 positions through both blocks (the LM head on the 4 tokens only):
    # 2·2·480·8/4 + 2·80 = 4000; pairs per block and segment (2+4)² + 2·(2·2+4) = 52: 2 · 4·8·52/4 = 832.
    ("rmt", "segment", None, 4000 + 832),  # 4832
    # lm2 in one block: per token 5·8·8 = 320 weights (read q, out, gate; write k, v), per segment 8·8·8·2 = 1024 on
    # the slots (read k, v; write q, out; 2 gate maps of 8×16): 2·(320 + 1024/4) = 1152; attention 4·8·(2·2·4)/4 = 128.
    ("lm2", "segment", None, 2336 + 1152 + 128),  # 3616
])
def test_hand_computed(kind, attention, context, forward):
    cfg = hand_config(kind, attention)
    assert forward_flops_per_token(cfg, context) == forward
    assert train_flops_per_token(cfg, context) == 3 * forward


def test_a_short_last_segment_attends_to_fewer_keys_and_writes_nothing():
    # lm2 (one memory layer), a sample of 6 tokens: a whole segment of 4 and a last one of 2.
    # Whole segment: 4 · 3616 = 14464. Short one: backbone 2 · (2·480·2 + 4·8·2²) + 2·80·2 = 4416; the read alone:
    # 2 · (3·8·8·2 + 2·8·8·2) + 4·8·2·2 = 1408 (its write, 2 · (2·8·8·2 + 6·8·8·2) + 4·8·2·2, never runs).
    assert forward_flops_per_token(hand_config("lm2"), 6) == (14464 + 4416 + 1408) / 6


def test_six_n_is_the_matmul_parameter_count_for_none():
    cfg = tiny_config("none")
    model = MemoryDecoder(cfg)
    # Every weight matrix, the (tied) LM head included; the embedding lookup is not a matmul.
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = 3 * cfg.n_layers * 4 * cfg.d_model * cfg.segment_len
    assert train_flops_per_token(cfg) == 6 * n + attention


def test_full_attention_needs_the_sample_length():
    with pytest.raises(ValueError, match="context"):
        forward_flops_per_token(tiny_config("none", "full"))


@pytest.mark.parametrize("segments", [3, 2.5])
@pytest.mark.parametrize("kind, attention", KINDS + [("lm2-bptt", "segment")])
def test_agrees_with_torch_flop_counter(kind, attention, segments):
    """FlopCounterMode counts matmuls (bias adds, norms, softmax, rotary and elementwise gates are not counted, as
    in the formula) and, on the math attention backend, every (query, key) pair of an SDPA call, masked or not.
    The forward agrees exactly, a short last segment included. The backward is 2× the forward, except for the memory
    models where a whole last segment's write feeds no loss or the BPTT window detaches memory (no gradient needed)."""
    overrides = {"memory": {"bptt_segments": 1, "layers": [1]}} if kind == "lm2-bptt" else {}
    cfg = tiny_config(kind.removesuffix("-bptt"), attention, **overrides)
    model = MemoryDecoder(cfg)
    B, T = 2, int(segments * cfg.segment_len)
    idx = torch.randint(0, cfg.vocab_size, (B, T))
    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU kernel is invisible to FlopCounterMode
        with FlopCounterMode(display=False) as forward:
            out = model(idx)
        with FlopCounterMode(display=False) as backward:
            out.logits.logsumexp(-1).mean().backward()
    counted_forward = forward.get_total_flops() / (B * T)
    counted_train = counted_forward + backward.get_total_flops() / (B * T)
    assert counted_forward == pytest.approx(forward_flops_per_token(cfg, T), rel=1e-9)
    low = 1.0 if kind == "none" else 0.9  # measured: 0.92-0.95
    assert low * train_flops_per_token(cfg, T) <= counted_train <= train_flops_per_token(cfg, T) * (1 + 1e-9)
