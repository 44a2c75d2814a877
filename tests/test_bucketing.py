"""Length bucketing: a step's samples sorted by length into micro-batches of a fixed capacity, lockstep across ranks,
exact resume inside a step, and tokens that count real tokens, not padding."""
import itertools

import numpy as np
import pytest
import torch

from l2m_train.config import load_config
from l2m_train.data.bucketing import cut, fits
from l2m_train.data.module import MicroBatches, TrainingData
from l2m_train.data.order import OrderState, Pool
from l2m_train.data.sample import Sample, collate, real_tokens
from l2m_train.data.tokenizer import TextTokenizer
from l2m_train.data_pipelines.babi_generate import write_babi_dir
from l2m_train.data_pipelines.babilong import build

L = 16
LENGTHS = [3, 40, 15, 60, 17, 5, 33, 64, 9, 20]  # inputs of a hand-made mixture: 1 to 4 segments


class Mixture:
    """A source whose sample i has LENGTHS[i % 10] input tokens, all equal to i (so a row names its sample)."""

    def pools(self, segments):
        def inputs(i):
            return min(LENGTHS[i % len(LENGTHS)], segments * L)
        return [Pool(f"mix/{segments}", None, lambda i: Sample(np.full(inputs(i) + 1, i), loss_from=inputs(i)), inputs)]


def config(*overrides):
    return load_config(None, ["model.segment_len=16", "data.segments=4", "train.micro_batch=2", *overrides])


def take(cfg, n, state=None, rank=0, world=1, sources=None):
    return list(itertools.islice(iter(MicroBatches(cfg, sources or [Mixture()], state or OrderState(), rank, world)), n))


def samples(batch):
    return [int(row[0]) for row in batch["input_ids"]]


@pytest.mark.parametrize("world,steps", [(1, 1), (2, 3), (4, 2)])
def test_cuts_fill_each_micro_batch_to_its_capacity_with_a_sample_per_rank(world, steps):
    rng = np.random.default_rng(world)
    for _ in range(200):
        segments = sorted(rng.integers(1, 5, rng.integers(1, 60)).tolist(), reverse=True)
        if not fits(segments, steps, world, capacity=8):
            # too few for a sample per rank, or no room for a shorter one either
            assert len(segments) < steps * world or not fits(segments + [1], steps, world, capacity=8)
            continue
        bounds = cut(segments, steps, world, capacity=8)
        assert len(bounds) == steps and bounds[0][0] == 0 and bounds[-1][1] == len(segments)
        assert all(a == b for (_, a), (b, _) in zip(bounds, bounds[1:]))
        assert all(world <= b - a <= world * (8 // segments[a]) for a, b in bounds)  # ranks' rows × segments ≤ 8


def test_a_step_holds_more_short_samples_in_fewer_positions_than_without_bucketing():
    steps = 6
    on = take(config(), steps)
    drawn = on[-1]["order"]["position"]
    off = take(config("data.bucket=false"), drawn // 2 + 1)  # 2 samples per micro-batch, in the global order
    in_order = [s for b in off for s in samples(b)][:drawn]
    assert sorted(s for b in on for s in samples(b)) == sorted(in_order)  # the same samples, rearranged
    assert drawn > 2 * steps  # short samples come more than 2 to a micro-batch
    for b in on:
        rows, positions = b["input_ids"].shape
        lengths = [LENGTHS[s % 10] for s in samples(b)]
        assert positions == -(-max(lengths) // L) * L and rows * positions <= 2 * 4 * L  # padded to whole segments
        assert lengths == sorted(lengths, reverse=True)  # similar lengths together, longest first
    padded_on = sum(b["input_ids"].numel() for b in on)
    assert padded_on < drawn * 4 * L  # bucketing off pads every sample to the stage's 4 segments


def test_fixed_length_samples_give_the_same_batches_as_without_bucketing():
    cfg = ["data.recall.pairs=2", "train.accumulate=2"]
    on, off = config(*cfg), config(*cfg, "data.bucket=false")
    for a, b in zip(take(on, 6, sources=TrainingData(on).sources), take(off, 6, sources=TrainingData(off).sources)):
        assert torch.equal(a["input_ids"], b["input_ids"]) and a["order"] == b["order"]


@pytest.mark.parametrize("cut_at", [1, 2, 5])  # inside a step, at its end, inside a later one
def test_resume_inside_a_step_gives_exactly_the_next_micro_batches(cut_at):
    cfg = config("train.accumulate=3")
    straight = take(cfg, 9)
    resumed = take(cfg, 9 - cut_at, OrderState.from_dict(straight[cut_at - 1]["order"]))
    assert [samples(b) for b in straight[cut_at:]] == [samples(b) for b in resumed]
    assert [b["tokens"] for b in straight[cut_at:]] == [b["tokens"] for b in resumed]


def test_ranks_take_disjoint_rows_padded_alike_and_resume_exactly():
    cfg = config("train.devices=2", "train.accumulate=2")
    ranks = [take(cfg, 8, rank=r, world=2) for r in (0, 1)]
    for a, b in zip(*ranks):
        assert a["input_ids"].shape[1] == b["input_ids"].shape[1]  # lockstep: the same segments on every rank
        assert not set(samples(a)) & set(samples(b)) and a["order"] == b["order"]
    state = OrderState.from_dict(ranks[0][2]["order"])  # inside the second step
    for r in (0, 1):
        assert [samples(b) for b in take(cfg, 5, state, rank=r, world=2)] == [samples(b) for b in ranks[r][3:]]


def test_tokens_and_the_curriculum_count_real_tokens():
    cfg = config("train.accumulate=2", "data.curriculum=[{start_tokens: 0, segments: 2}, {start_tokens: 500, segments: 4}]")
    batches = take(cfg, 16)
    seen, stage_at_step_start = 0, []
    for m, b in enumerate(batches):
        if m % 2 == 0:
            stage_at_step_start.append((seen, b["stage"]))
        seen += real_tokens(b)
        assert b["tokens"] == seen and b["order"]["tokens"] == (seen if m % 2 else seen - real_tokens(b))
    assert [stage for _, stage in stage_at_step_start] == [int(tokens >= 500) for tokens, _ in stage_at_step_start]
    assert 0 in [s for _, s in stage_at_step_start] and 1 in [s for _, s in stage_at_step_start]


def test_real_tokens_leave_out_padding():
    batch = collate([Sample(np.arange(6), 1), Sample(np.arange(10), 1)], 16)
    assert real_tokens(batch) == 5 + 9 and real_tokens(collate([Sample(np.arange(17), 1)], 16)) == 16


@pytest.fixture(scope="module")
def qa(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    write_babi_dir(root / "babi", ["qa1", "qa2"], stories=40, seed=0)
    words = ["the", "old", "house", "stood", "by", "a", "quiet", "river", "and", "nobody", "came", "there"]
    rng = np.random.default_rng(0)
    (root / "book.txt").write_text(" ".join(" ".join(rng.choice(words, 8)).capitalize() + "." for _ in range(300)))
    build(str(root / "babi"), [str(root / "book.txt")], [0, 300], ["qa1", "qa2"], 20, 2, TextTokenizer.byte(),
          str(root / "bl"))
    return root / "bl"


def test_babilong_steps_train_the_samples_without_bucketing_in_fewer_positions(qa):
    base = [f"data.qa.path={qa}", "data.sources=[qa]", "model.segment_len=128", "data.segments=5", "train.micro_batch=2",
            "train.accumulate=2"]
    on, off = load_config(None, base), load_config(None, [*base, "data.bucket=false"])
    bucketed = take(on, 8, sources=TrainingData(on).sources)
    drawn = bucketed[-1]["order"]["position"]
    plain = take(off, drawn // 2 + 1, sources=TrainingData(off).sources)  # 2 samples a micro-batch, in the global order

    def rows(batches):
        return [tuple(r[v].tolist()) for b in batches for r, v in zip(b["input_ids"], b.get("valid", b["input_ids"] >= 0))]
    assert sorted(rows(bucketed)) == sorted(rows(plain)[:drawn]) and drawn > 2 * 8
    assert sum(real_tokens(b) for b in bucketed) == bucketed[-1]["tokens"]
    assert sum(b["input_ids"].numel() for b in bucketed) < 0.7 * drawn * 5 * 128  # off: every sample in 5 segments
