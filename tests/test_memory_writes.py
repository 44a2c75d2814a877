"""benchmarks/memory_writes.py: segments classified by what they hold, and the memory's changes measured write by write."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model

spec = importlib.util.spec_from_file_location("memory_writes", Path(__file__).resolve().parents[1] / "benchmarks/memory_writes.py")
memory_writes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memory_writes)

# 45 tokens in segments of 8: facts at 2–5 and 10–12 (the second supports the answer), the question at 36–41.
ROW = {"input_ids": np.arange(45) % 60, "answer_start": 42, "facts": [[2, 5], [10, 12]], "supporting": [1],
       "question_span": [36, 41]}


@pytest.mark.parametrize("span, kind", [((0, 8), "other fact"), ((8, 16), "supporting fact"), ((4, 12), "supporting fact"),
                                        ((16, 24), "background only"), ((32, 40), "question"), ((12, 36), "background only")])
def test_a_segment_is_what_it_holds_first_of_supporting_fact_other_fact_question(span, kind):
    assert memory_writes.kind_of_segment(ROW, *span) == kind


def test_lm2_reports_each_memory_layer_s_change_and_gates_for_the_complete_segments():
    model = tiny_model("lm2")
    result = memory_writes.measure(model, [ROW])
    by = result["by_segment"]
    # 42 tokens before the answer: 5 complete segments (the sixth, 40–42, writes nothing yet)
    assert {k: v["segments"] for k, v in by.items()} == {"supporting fact": 1, "other fact": 1, "background only": 2,
                                                         "question": 1}
    assert set(by["other fact"]) == {"segments"} | {f"layer{i}/{name}" for i in (0, 1)
                                                    for name in ("change", "slots_changed", "in", "forget")}
    assert list(result["by_written"]["layer0"]) == [1, 2, 4] == list(result["slot_cosine"]["layer0"])
    with torch.no_grad():  # the first segment (a fact, not supporting): its write against the initial memory
        start = model.initial_state(1).memory
        after = model(torch.as_tensor(ROW["input_ids"][:8]).unsqueeze(0)).state.memory
    for i, (new, old) in enumerate(zip(after, start)):
        expected = (new - old).pow(2).mean().sqrt().item()
        assert by["other fact"][f"layer{i}/change"] == pytest.approx(expected, rel=1e-5)
        assert result["by_written"][f"layer{i}"][1] == pytest.approx(new.pow(2).mean().sqrt().item(), rel=1e-5)


def test_rmt_reports_its_memory_tokens_change_and_no_gates():
    by = memory_writes.measure(tiny_model("rmt"), [ROW])["by_segment"]
    assert set(by["background only"]) == {"segments", "tokens/change", "tokens/slots_changed"}
    assert by["background only"]["tokens/change"] > 0


def test_share_changed_is_one_when_every_slot_changes_alike_and_one_over_s_for_a_single_slot():
    alike, single = torch.ones(1, 4, 8), torch.zeros(1, 4, 8)
    single[0, 2] = 3.0
    assert memory_writes.share_changed(alike) == pytest.approx(1.0)
    assert memory_writes.share_changed(single) == pytest.approx(0.25)
    assert memory_writes.share_changed(torch.zeros(1, 4, 8)) == 0.0


def test_slot_cosine_is_one_for_identical_slots_and_zero_for_orthogonal_ones():
    assert memory_writes.slot_cosine(torch.ones(1, 3, 5) * torch.tensor([1.0, 2.0, 3.0])[:, None]) == pytest.approx(1.0)
    assert memory_writes.slot_cosine(torch.eye(4, 6).unsqueeze(0)) == pytest.approx(0.0)
