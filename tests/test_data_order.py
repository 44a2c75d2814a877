"""The data order: curriculum stages, determinism, disjoint ranks, and exact resume (also from 2 ranks to 1)."""
import itertools

import pytest
import torch

from l2m_train.config import ConfigError, Stage, load_config
from l2m_train.data import DataError
from l2m_train.data.curriculum import stage_at
from l2m_train.data.module import MicroBatches, TrainingData
from l2m_train.data.order import OrderState

L = 16


def config(*overrides):
    base = ["model.segment_len=16", "data.segments=4", "train.micro_batch=4", "data.recall.pairs=2",
            "data.curriculum=[{start_tokens: 0, segments: 2}, {start_tokens: 2048, segments: 4}]"]
    return load_config(None, base + list(overrides))


def stream(cfg, state=None, rank=0, world=1):
    data = TrainingData(cfg)
    return MicroBatches(cfg, data.sources, state or OrderState(), rank, world)


def take(micro_batches, n):
    return list(itertools.islice(iter(micro_batches), n))


def test_stage_is_a_pure_function_of_tokens():
    stages = [Stage(0, 2), Stage(100, 4), Stage(250, 8)]
    assert [stage_at(stages, t) for t in (0, 99, 100, 249, 250, 10**9)] == [0, 0, 1, 1, 2, 2]


def test_curriculum_lengthens_samples_at_constant_tokens_per_micro_batch():
    cfg = config()  # 4 × 4 × 16 = 256 tokens per step: stage 1 from step 8 on
    batches = take(stream(cfg), 12)
    assert [b["stage"] for b in batches] == [0] * 8 + [1] * 4
    assert [tuple(b["input_ids"].shape) for b in batches] == [(8, 32)] * 8 + [(4, 64)] * 4
    assert {b["input_ids"].numel() for b in batches} == {256}


def test_the_stage_holds_for_a_whole_optimizer_step():
    cfg = config("train.accumulate=3")  # 768 tokens per step: step 2 (tokens 1536) stays, step 3 (2304) switches
    stages = [b["stage"] for b in take(stream(cfg), 12)]
    assert stages == [0] * 9 + [1] * 3


def test_same_seed_same_batches_other_seed_other_batches():
    cfg = config()
    a, b = take(stream(cfg), 10), take(stream(cfg), 10)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    c = take(stream(config("data.seed=7")), 10)
    assert not all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, c))


def test_ranks_read_disjoint_slices_of_the_global_batch():
    cfg = config("train.devices=2")
    r0, r1 = take(stream(cfg, rank=0, world=2), 6), take(stream(cfg, rank=1, world=2), 6)
    single = take(stream(config("train.accumulate=2")), 12)  # the same global batches, one rank
    for step in range(6):
        assert not torch.equal(r0[step]["input_ids"], r1[step]["input_ids"])
        assert r0[step]["order"] == r1[step]["order"]  # every rank agrees on the global position
        torch.testing.assert_close(torch.cat([r0[step]["input_ids"], r1[step]["input_ids"]]),
                                   torch.cat([single[2 * step]["input_ids"], single[2 * step + 1]["input_ids"]]))


@pytest.mark.parametrize("cut", [3, 8, 9])  # before, at and after the stage change
def test_resume_gives_exactly_the_next_batches(cut):
    cfg = config("data.recall.train_samples=20")  # a finite pool: resume must also keep its epochs and permutation
    straight = take(stream(cfg), 16)
    resumed = take(stream(cfg, OrderState.from_dict(straight[cut - 1]["order"])), 16 - cut)
    for x, y in zip(straight[cut:], resumed):
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])


def test_resume_on_one_rank_from_two():
    two = config("train.devices=2")
    ranks = [take(stream(two, rank=r, world=2), 10) for r in (0, 1)]
    state = OrderState.from_dict(ranks[0][4]["order"])  # saved after 5 global steps
    one = take(stream(config("train.accumulate=2"), state), 10)  # same tokens per step on one rank
    for step in range(5, 10):
        expected = torch.cat([ranks[0][step]["input_ids"], ranks[1][step]["input_ids"]])
        got = torch.cat([one[2 * (step - 5)]["input_ids"], one[2 * (step - 5) + 1]["input_ids"]])
        assert torch.equal(expected, got)


def test_a_finite_pool_is_seen_once_per_epoch():
    cfg = load_config(None, ["data.recall.train_samples=24", "train.micro_batch=4", "model.segment_len=16"])
    data = TrainingData(cfg)
    seen = [tuple(row.tolist()) for b in take(stream(cfg), 12) for row in b["input_ids"]]
    distinct = {tuple(data.sources[0].pools(3)[0].get(i).ids[:-1].tolist()) for i in range(24)}
    assert set(seen[:24]) == distinct == set(seen[24:]) and len(distinct) == 24  # two whole epochs


def test_a_checkpoint_from_other_data_is_refused_naming_the_difference():
    data = TrainingData(config())
    state = data.state_dict()
    state["fingerprints"]["tokenizer"] = "0123456789abcdef" * 4
    with pytest.raises(DataError, match="tokenizer '0123456789abcdef'"):
        TrainingData(config()).load_state_dict(state)


@pytest.mark.parametrize("override,message", [
    ("data.curriculum=[{start_tokens: 5, segments: 2}]", "must start with a stage at start_tokens: 0"),
    ("data.curriculum=[{start_tokens: 0, segments: 3}]", "must divide train.micro_batch × data.segments"),
    ("data.curriculum=[{start_tokens: 0, segments: 8}]", "must be in 1..data.segments=4"),
    ("data.sources=[books]", "data.sources must be distinct names"),
    ("data.weights=[1, 2]", "one non-negative weight per source"),
])
def test_bad_curricula_and_mixtures_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        config("train.micro_batch=1", override)


def test_missing_data_paths_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="data.pretrain.shards is not set"):
        TrainingData(config("data.sources=[pretrain]"))
    with pytest.raises(DataError, match="not a `l2m data babilong` output"):
        TrainingData(config("data.sources=[qa]", f"data.qa.path={tmp_path / 'nothing'}"))
