"""benchmarks/memory_probe.py: which people's places lie in memory, the memory collected for them, and a probe that
reads a place only where the memory holds it."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model

from l2m_train.data.tokenizer import TextTokenizer

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))  # as the scripts import each other
import memory_probe  # noqa: E402

FACTS = [" Mary went to the kitchen.", " John moved to the office.", " Mary went back to the garden."]
QUESTION = " Question: Where is Mary? Answer:"


def story_row(tokenizer: TextTokenizer) -> dict:
    """A qa1 sample as `l2m data babilong` stores it, in bytes: one token per character."""
    text, facts = "", []
    for fact in FACTS:
        facts.append([len(text), len(text) + len(fact)])
        text += fact
    question = [len(text), len(text) + len(QUESTION)]
    text += QUESTION
    return {"input_ids": np.asarray(tokenizer.encode(text + " garden")), "answer_start": len(text), "facts": facts,
            "supporting": [2], "question_span": question}


@pytest.mark.parametrize("segment_len, expected", [
    # 115 characters before the answer: 7 segments of 16 written; Mary's latest fact (52–82) was written by the
    # sixth of them, John's (26–52) by the fourth: 2 and 4 writes since
    (16, (7, [("Mary", "garden", 0, 2, True), ("John", "office", 1, 4, False)])),
    # 1 segment of 64 written: Mary's latest fact reaches into the answer's segment, so only John's counts
    (64, (1, [("John", "office", 1, 1, False)])),
])
def test_a_person_counts_by_the_latest_fact_and_only_where_it_lies_wholly_in_written_segments(segment_len, expected):
    tokenizer = TextTokenizer.byte()
    assert memory_probe.people_in_memory(story_row(tokenizer), tokenizer, segment_len) == expected


def test_collect_takes_the_memory_the_answer_s_segment_reads_per_bank_and_all_banks_side_by_side():
    tokenizer = TextTokenizer.byte()
    row = story_row(tokenizer)
    model = tiny_model("lm2", vocab_size=256, segment_len=16)
    examples = memory_probe.collect(model, [row, row], tokenizer, batch=1)
    assert set(examples) == {"layer0", "layer1", "all"}
    assert examples["layer0"].person == ["Mary", "John"] * 2
    assert examples["layer0"].row.tolist() == [0, 0, 1, 1]
    assert examples["layer0"].asked.tolist() == [True, False] * 2
    with torch.no_grad():
        memory = model(torch.as_tensor(row["input_ids"][:7 * 16]).unsqueeze(0)).state.memory
    for i, bank in enumerate(memory):
        assert torch.allclose(examples[f"layer{i}"].memory[3], bank[0], atol=1e-6)
    assert examples["all"].memory.shape == (4, 8, 32)  # 4 slots of each bank


def examples(places: torch.Tensor, people: torch.Tensor, memory: torch.Tensor, asked: torch.Tensor):
    n = len(places)
    return memory_probe.Examples(memory, [f"p{i}" for i in people.tolist()], [f"q{i}" for i in places.tolist()],
                                 facts_after=torch.arange(n) % 3, writes_since=torch.ones(n, dtype=torch.long),
                                 row=torch.arange(n), asked=asked)


def test_the_probe_reads_a_place_the_memory_holds_and_not_one_it_does_not():
    torch.manual_seed(0)
    n, slots, d = 800, 4, 16
    people, places = torch.randint(0, 3, (n,)), torch.randint(0, 5, (n,))
    noise = torch.randn(n, slots, d) * 0.3
    held = noise.clone()  # slot p holds person p's place, as a one-hot among the first dimensions, and a key for p
    held[torch.arange(n), people, places] += 3.0
    held[torch.arange(n), people, 8 + people] += 3.0
    asked = torch.arange(n) % 2 == 0
    fit, test = slice(0, 600), slice(600, n)
    split = lambda memory, part: examples(places[part], people[part], memory[part], asked[part])  # noqa: E731
    answered = [i % 3 == 0 for i in range(200)]  # the model's answers, per test row
    good = memory_probe.fit_and_score(split(held, fit), split(held, test), answered)
    assert good["accuracy"] > 0.9 and good["examples"] == 200 and good["places"] == 5
    assert sum(total for _, total in good["by_facts_after"].values()) == 200
    # the asked people only (even rows), beside the model's answers there: rows 0, 6, …, 198 answered
    asked_cells = good["asked_by_facts_after"].values()
    assert sum(total for _, _, total in asked_cells) == 100
    assert sum(model for model, _, _ in asked_cells) == 34
    blind = memory_probe.fit_and_score(split(noise, fit), split(noise, test), answered)
    assert blind["accuracy"] < 0.4  # chance is 0.2
