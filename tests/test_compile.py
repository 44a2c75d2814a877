"""train.compile: the per-segment step through torch.compile (inductor on CPU) gives eager's losses and gradients,
in one graph per segment."""
import pytest
import torch
from conftest import tiny_model
from test_segment_backward import _batch

from l2m_train.train.compile import compile_segment_step
from l2m_train.train.segment_backward import lm_forward


def _loss_and_grads(model, idx, labels, valid):
    model.zero_grad(set_to_none=True)
    out = lm_forward(model, idx, labels, valid, early_params=list(model.parameters()))
    out.loss.backward()
    return out.lm.loss.detach(), out.lm.per_segment, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow  # inductor compiles a graph per segment shape: ~20-40 s per case on 2 cores
@pytest.mark.parametrize("kind,attention,extra", [
    ("lm2", "segment", {}), ("lm2", "segment", {"activation_checkpointing": True}),
    ("rmt", "segment", {}), ("none", "segment", {}), ("none", "full", {})])
def test_compiled_step_gives_eager_losses_and_gradients(kind, attention, extra):
    torch._dynamo.reset()
    model = tiny_model(kind, attention, memory={"bptt_segments": 1}, **extra).train()
    idx, labels, valid = _batch(45)  # 5 full segments and a short one, with padding
    eager = _loss_and_grads(model, idx, labels, valid)
    compile_segment_step(model)  # fullgraph: a graph break inside a segment fails here
    for _ in range(2):  # the second time from the compiled cache, with no recompilation
        compiled = _loss_and_grads(model, idx, labels, valid)
        torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(compiled[1], eager[1], rtol=1e-5, atol=1e-6, equal_nan=True)
        assert compiled[2].keys() == eager[2].keys()
        for name, grad in eager[2].items():
            torch.testing.assert_close(compiled[2][name], grad, rtol=1e-4, atol=1e-6, msg=name)
