"""train.init_from: a fresh run from another run's weights, with a fresh optimizer, schedule and data position; refused,
in one line and before anything is written, when the weights do not fit; ignored by a run that resumes."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config
from lightning.pytorch.callbacks import Callback

from l2m_train.config import ConfigError, load_config
from l2m_train.data import DataError
from l2m_train.data.tokenizer import TextTokenizer
from l2m_train.model import MemoryDecoder
from l2m_train.train.checkpoint_layout import CheckpointError, load_model, read_state
from l2m_train.train.export import export
from l2m_train.train.init_from import RUNTIME_KEYS, check_same_model
from l2m_train.train.run import execute, plan

L2M = str(Path(sys.executable).parent / "l2m")
TOKENS_PER_STEP = 4 * 2 * 16  # 4 samples of 2 segments of 16 tokens


def overrides(root, name, steps, *extra):
    return [f"run.root={root}", f"run.name={name}", "train.micro_batch=4", "model.segment_len=16", "data.segments=2",
            f"train.max_tokens={steps * TOKENS_PER_STEP}", "train.val_every_steps=1000", "data.val_samples=4",
            "train.compare_baseline=false", "checkpoint.every_steps=2", "train.threads=1", *extra]


def tiny(root, name, steps, *extra):
    return load_config(None, overrides(root, name, steps, *extra))


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()  # execute() sets train.threads=1 process-wide
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A run of 4 steps (checkpoints at steps 2 and 4), and an export of its step 2."""
    root = tmp_path_factory.mktemp("source")
    execute(plan(tiny(root, "src", 4)))
    run_dir = root / "src"
    return run_dir, export(run_dir / "checkpoints" / "step-00000002", root / "export-2")


class FirstStep(Callback):
    """What the run holds when training starts, before its first step."""

    def on_train_start(self, trainer, pl_module):
        optimizer = trainer.optimizers[0]
        self.weights = {k: v.clone() for k, v in pl_module.model.state_dict().items()}
        self.step, self.optimizer_state = trainer.global_step, dict(optimizer.state)
        self.scheduled_steps = trainer.lr_scheduler_configs[0].scheduler.last_epoch
        self.data_position = trainer.datamodule.state.as_dict()


def source_weights(path):
    return load_model(path)[0].state_dict()


@pytest.mark.parametrize("kind", ["run", "step", "export"])
def test_a_fresh_run_starts_from_the_source_weights_with_a_fresh_optimizer_schedule_and_data(source, tmp_path, kind):
    run_dir, exported = source
    given = {"run": run_dir, "step": run_dir / "checkpoints" / "step-00000002", "export": exported}[kind]
    read_from = run_dir / "checkpoints" / "step-00000004" if kind == "run" else given  # a run: its latest checkpoint
    # Other data (one pair to recall, not two) and other segments (a runtime key): a fine-tune, not a resume.
    run = plan(tiny(tmp_path, "ft", 2, f"train.init_from={given}", "data.recall.pairs=1", "model.segment_len=8",
                    "data.segments=4"))
    probe = FirstStep()
    run.trainer.callbacks.append(probe)
    execute(run)
    expected = source_weights(read_from)
    assert probe.weights.keys() == expected.keys()
    assert all(torch.equal(probe.weights[k], expected[k]) for k in expected)
    assert probe.step == 0 and probe.optimizer_state == {} and probe.scheduled_steps == 0
    assert probe.data_position["position"] == 0
    state = read_state(tmp_path / "ft" / "checkpoints" / "step-00000002")
    assert state["step"] == 2 and state["tokens"] == 2 * TOKENS_PER_STEP  # its own count, from zero
    assert state["init_from"]["source"] == str(read_from.absolute())
    assert yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())["train"]["init_from"] == str(given)
    trained = load_model(tmp_path / "ft")[0].state_dict()
    assert not torch.equal(trained["embed.weight"], expected["embed.weight"])  # and then it trains


@pytest.mark.parametrize("kind", ["lm2", "rmt"])
def test_a_model_without_memory_starts_a_memory_model_whose_memory_starts_fresh(tmp_path, kind):
    execute(plan(tiny(tmp_path, "full", 2, "model.memory.kind=none", "model.attention=full")))
    probes = {}
    for name, extra in [("ft", [f"train.init_from={tmp_path / 'full'}"]), ("scratch", [])]:
        run = plan(tiny(tmp_path, name, 1, f"model.memory.kind={kind}", *extra))
        probes[name] = FirstStep()
        run.trainer.callbacks.append(probes[name])
        execute(run)
    source, started, scratch = source_weights(tmp_path / "full"), probes["ft"].weights, probes["scratch"].weights
    assert all(torch.equal(started[k], source[k]) for k in source)  # the backbone...
    fresh = started.keys() - source.keys()
    assert fresh and all(".memory." in k or k == "rmt_initial" for k in fresh)
    assert all(torch.equal(started[k], scratch[k]) for k in fresh)  # ...and the memory as a run from scratch starts it
    with pytest.raises(ConfigError, match=r"another model \(model.n_heads: 4 in the checkpoint, 2 now\)"):
        plan(tiny(tmp_path, "other", 1, f"model.memory.kind={kind}", "model.n_heads=2", f"train.init_from={tmp_path / 'full'}"))
    with pytest.raises(ConfigError, match=f"another model \\(model.memory.kind: {kind} in the checkpoint, none now\\)"):
        plan(tiny(tmp_path, "dropped", 1, "model.memory.kind=none", f"train.init_from={tmp_path / 'ft'}"))


def test_the_fingerprint_is_of_the_weights_whatever_holds_them(source, tmp_path):
    run_dir, exported = source
    fingerprints = {}
    for name, given in [("step-2", run_dir / "checkpoints" / "step-00000002"), ("export-2", exported), ("run", run_dir)]:
        fingerprints[name] = plan(tiny(tmp_path, name, 2, f"train.init_from={given}")).init.fingerprint
    assert fingerprints["step-2"] == fingerprints["export-2"] != fingerprints["run"]  # the run's latest is step 4


def one_line_error(*args, cwd):
    out = subprocess.run([L2M, "train", *args], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    return out.stderr


def test_another_model_is_refused_in_one_line_before_anything_is_written(source, tmp_path):
    run_dir, _ = source
    before = sorted((p, p.stat().st_mtime_ns) for p in run_dir.rglob("*"))
    message = one_line_error(*overrides(tmp_path, "ft", 2, f"train.init_from={run_dir}", "model.memory.slots=4"), cwd=tmp_path)
    assert "holds another model (model.memory.slots: 8 in the checkpoint, 4 now)" in message
    assert list(tmp_path.iterdir()) == [] and sorted((p, p.stat().st_mtime_ns) for p in run_dir.rglob("*")) == before
    for change, difference in [("model.vocab_size=300", "model.vocab_size: 264 in the checkpoint, 300 now"),
                               ("model.n_heads=2", "model.n_heads: 4 in the checkpoint, 2 now"),  # same shapes, other heads
                               ("model.memory.kind=rmt", "model.memory.kind: lm2 in the checkpoint, rmt now")]:
        with pytest.raises(ConfigError, match=f"another model \\({difference}\\)"):
            plan(tiny(tmp_path, "ft", 2, f"train.init_from={run_dir}", change))
    assert list(tmp_path.iterdir()) == []


def test_weights_whose_parameters_differ_are_refused_naming_the_first(tmp_path):
    cfg = tiny_config()
    with torch.device("meta"):
        weights = MemoryDecoder(cfg).state_dict()
    first = next(iter(weights))
    with pytest.raises(ConfigError, match=f"parameter {first} is absent in the checkpoint"):
        check_same_model(cfg, {k: v for k, v in weights.items() if k != first}, cfg, "x")
    with pytest.raises(ConfigError, match=r"parameter extra is 3 in the checkpoint, absent now"):
        check_same_model(cfg, {**weights, "extra": torch.zeros(3)}, cfg, "x")
    # A memory key the kind does not use is no difference (configs saved before unused keys were reset kept them).
    saved = tiny_config("none")
    saved.memory.slots = 32
    check_same_model(saved, MemoryDecoder(tiny_config("none")).state_dict(), tiny_config("none"), "x")
    reshaped = {**weights, "final_norm.weight": torch.zeros(7)}
    with pytest.raises(ConfigError, match=r"parameter final_norm.weight is 7 in the checkpoint, 32 now"):
        check_same_model(cfg, reshaped, cfg, "x")


CHANGED = {"segment_len": 32, "attention": "full", "rope_base": 5e5, "activation_checkpointing": True,
           "memory.bptt_segments": 1, "memory.forget_bias": 4.0, "memory.convex_write": True,
           "memory.slot_competition": True}


@pytest.mark.parametrize("kind", ["lm2", "rmt", "none"])
def test_the_runtime_keys_change_no_parameter_name_or_shape(kind):
    assert set(CHANGED) == set(RUNTIME_KEYS)
    with torch.device("meta"):
        weights = MemoryDecoder(tiny_config(kind)).state_dict()
    for key, value in CHANGED.items():
        if key == "attention" and kind != "none":
            continue  # full attention is the baseline without memory
        memory = {key.removeprefix("memory."): value} if key.startswith("memory.") else {}
        changed = tiny_config(kind, memory=memory, **({} if memory else {key: value}))
        check_same_model(tiny_config(kind), weights, changed, "x")  # the config check skips the key...
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in MemoryDecoder(changed).state_dict().items()}
        assert shapes == {k: v.shape for k, v in weights.items()}, key  # ...because the weights are the same


def test_a_missing_or_corrupt_source_is_one_clean_line(source, tmp_path):
    run_dir, exported = source
    corrupt_export = tmp_path / "bad-export"
    shutil.copytree(exported, corrupt_export)
    (corrupt_export / "model.safetensors").write_bytes(b"not safetensors")
    corrupt_step = tmp_path / "bad-run" / "checkpoints" / "step-00000002"
    shutil.copytree(run_dir / "checkpoints" / "step-00000002", corrupt_step)
    (corrupt_step / "lightning.ckpt").write_bytes((corrupt_step / "lightning.ckpt").read_bytes()[:1000])
    for given, message in [(tmp_path / "nowhere", "train.init_from: checkpoint not found"),
                           (corrupt_export, "is not a readable export"),
                           (tmp_path / "bad-run", "is not a readable checkpoint")]:
        with pytest.raises(CheckpointError, match=message) as err:
            plan(tiny(tmp_path / "runs", "ft", 2, f"train.init_from={given}"))
        assert "\n" not in str(err.value)
    assert one_line_error(*overrides("runs", "ft", 2, "train.init_from=nowhere"), cwd=tmp_path).startswith(
        "l2m train: error: train.init_from: checkpoint not found: nowhere")
    assert not (tmp_path / "runs").exists()


def test_another_tokenizer_is_refused(source, tmp_path):
    _, exported = source
    other = tmp_path / "other-tokenizer"
    shutil.copytree(exported, other)
    bpe = TextTokenizer.train_bpe(["some text"], vocab_size=257)  # as many tokens as the bytes, but another tokenizer
    assert bpe.vocab_size == TextTokenizer.byte().vocab_size
    bpe.save(other)
    with pytest.raises(DataError, match="trained with another tokenizer"):
        plan(tiny(tmp_path, "ft", 2, f"train.init_from={other}"))


def test_a_run_with_a_checkpoint_resumes_and_keeps_where_its_weights_came_from(source, tmp_path, capsys):
    run_dir, exported = source
    execute(plan(tiny(tmp_path, "ft", 2, f"train.init_from={exported}")))
    started = read_state(tmp_path / "ft" / "checkpoints" / "step-00000002")["init_from"]
    assert started["source"] == str(exported.absolute())
    capsys.readouterr()
    run = plan(tiny(tmp_path, "ft", 4, f"train.init_from={run_dir}"))  # another source: the resume wins
    assert run.init is None and run.resume_from is not None and run.cfg.train.init_from == str(exported)
    assert (f"resumes from step-00000002; its weights started from {exported.absolute()}: "
            f"train.init_from={run_dir} applies only to a fresh run") in capsys.readouterr().err
    execute(run)
    assert read_state(tmp_path / "ft" / "checkpoints" / "step-00000004")["init_from"] == started
    assert yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())["train"]["init_from"] == str(exported)


def test_init_from_with_the_memoryless_baseline_is_a_config_error():
    with pytest.raises(ConfigError, match="set train.compare_baseline=false"):
        load_config(None, ["train.init_from=runs/books"])  # the quickstart compares with a baseline


def test_a_run_from_scratch_records_no_source(source):
    run_dir, _ = source
    assert json.loads((run_dir / "checkpoints" / "step-00000004" / "state.json").read_text())["init_from"] is None
