"""Exact resume through a real Lightning checkpoint, and the pretraining and mixture sources on packed shards."""
import itertools

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf

from l2m_train.config import load_config
from l2m_train.data import DataError
from l2m_train.data.module import MicroBatches, TrainingData
from l2m_train.data.order import OrderState
from l2m_train.data.tokenizer import TextTokenizer
from l2m_train.data_pipelines.pack import pack
from l2m_train.train.module import LM2Module
from l2m_train.train.run import plan


class Seen(Callback):
    """The global position and the inputs of every micro-batch trained."""

    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append((batch["order"]["position"], batch["input_ids"].clone()))


def fit(cfg, steps, ckpt_path=None):
    run = plan(cfg)
    seen = Seen()
    run.trainer.callbacks.append(seen)
    run.trainer.fit_loop.epoch_loop.max_steps = steps  # the same schedule (max_tokens), stopped early
    torch.manual_seed(0)
    module = LM2Module(OmegaConf.to_container(OmegaConf.structured(cfg)))
    run.trainer.fit(module, datamodule=run.data, ckpt_path=ckpt_path)
    return seen.batches, run


def tiny(tmp_path, name, *extra):
    return load_config(None, [f"run.root={tmp_path}", f"run.name={name}", "train.micro_batch=4", "train.accumulate=2",
                              "model.segment_len=16", "data.segments=4", "train.val_every_steps=3", "checkpoint.every_steps=3",
                              "data.recall.train_samples=40", "train.max_tokens=100000",
                              "data.curriculum=[{start_tokens: 0, segments: 2}, {start_tokens: 2048, segments: 4}]",
                              "data.val_samples=8", *extra])


def test_resume_from_a_lightning_checkpoint_trains_exactly_the_next_batches(tmp_path):
    straight, _ = fit(tiny(tmp_path, "straight"), 8)
    first, run = fit(tiny(tmp_path, "first"), 6)  # saves a checkpoint at step 3 and at step 6
    ckpt = run.run_dir / "checkpoints" / "step-00000006" / "lightning.ckpt"
    resumed, _ = fit(tiny(tmp_path, "resumed"), 8, ckpt_path=ckpt)
    assert len(straight) == 16 and len(resumed) == 4  # 2 micro-batches per step
    assert [p for p, _ in straight] == [p for p, _ in first + resumed]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(straight, first + resumed))
    assert {x.shape[1] for _, x in straight[:4]} == {32} and {x.shape[1] for _, x in straight[-4:]} == {64}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "text").mkdir()
    for i in range(6):
        (root / "text" / f"doc{i}.txt").write_text(" ".join(f"word{i}-{j}" for j in range(800)) + ".\n")
    manifest, _ = pack([str(root / "text")], TextTokenizer.byte(), root / "shards", shard_tokens=10_000)
    return root / "shards", manifest


def test_pretraining_windows_come_from_the_stream_and_validation_from_its_held_out_tail(shards):
    path, manifest = shards
    cfg = load_config(None, ["data.sources=[pretrain]", f"data.pretrain.shards={path}", "data.pretrain.val_fraction=0.1",
                             "model.segment_len=16", "data.segments=4", "train.micro_batch=2"])
    data = TrainingData(cfg)
    source = data.sources[0]
    stream_tokens = source.shards.read(0, manifest["tokens"])
    batch = next(iter(MicroBatches(cfg, data.sources, OrderState(), 0, 1)))
    for row, labels in zip(batch["input_ids"], batch["labels"]):
        start = next(i for i in range(0, source.train_tokens, 64) if torch.equal(torch.from_numpy(stream_tokens[i:i + 64]), row))
        assert torch.equal(labels, torch.from_numpy(stream_tokens[start + 1:start + 65]))  # every next token
        assert start + 65 <= source.train_tokens  # training never reads the held-out tail
    val = source.val(1000)
    assert val and all(len(s.ids) == 65 for s in val)
    assert len(val) == (manifest["tokens"] - source.train_tokens - 1) // 64


def test_a_mixture_draws_each_source_by_its_weight(shards):
    path, _ = shards
    cfg = load_config(None, ["data.sources=[recall, pretrain]", f"data.pretrain.shards={path}", "data.weights=[3, 1]",
                             "model.segment_len=16", "data.segments=3", "train.micro_batch=8"])
    data = TrainingData(cfg)
    batches = list(itertools.islice(iter(MicroBatches(cfg, data.sources, OrderState(), 0, 1)), 50))
    recall = sum(int((b["labels"] != -100).sum(1).eq(1).sum()) for b in batches)  # recall supervises one token
    assert 0.65 < recall / 400 < 0.85  # 3 : 1
    taken = batches[-1]["order"]["taken"]
    assert set(taken) == {"recall/3", "pretrain/48"} and sum(taken.values()) == 400
    assert len(data.val_dataloader()) == 2  # one validation set per source


def test_sources_with_different_tokenizers_cannot_be_mixed(shards, tmp_path):
    root = tmp_path / "text"
    root.mkdir()
    (root / "a.txt").write_text("some text to learn a tokenizer from. " * 50)
    bpe = TextTokenizer.train_bpe([(root / "a.txt").read_text()], 300)
    pack([str(root)], bpe, tmp_path / "bpe-shards", shard_tokens=1000)
    cfg = load_config(None, ["data.sources=[recall, pretrain]", f"data.pretrain.shards={tmp_path / 'bpe-shards'}",
                             "model.segment_len=16", "data.segments=3"])
    with pytest.raises(DataError, match="use different tokenizers"):
        TrainingData(cfg)


def test_resuming_on_other_shards_is_refused_naming_the_source(shards, tmp_path):
    path, _ = shards
    cfg = load_config(None, ["data.sources=[pretrain]", f"data.pretrain.shards={path}", "model.segment_len=16"])
    state = TrainingData(cfg).state_dict()
    root = tmp_path / "other"
    root.mkdir()
    (root / "b.txt").write_text("different words entirely. " * 500)
    pack([str(root)], TextTokenizer.byte(), tmp_path / "other-shards")
    other = load_config(None, ["data.sources=[pretrain]", f"data.pretrain.shards={tmp_path / 'other-shards'}",
                               "model.segment_len=16"])
    with pytest.raises(DataError, match="trained with pretrain"):
        TrainingData(other).load_state_dict(state)
