"""Checkpoints on one device: the train state, retention, preemption and exact resume, a write killed midway,
refused resumes, bad checkpoint paths, and export for inference without DeepSpeed."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from l2m_train.cli.main import main
from l2m_train.config import ConfigError, load_config
from l2m_train.data import DataError, json_fingerprint
from l2m_train.data.tokenizer import TextTokenizer
from l2m_train.data_pipelines.pack import pack
from l2m_train.train.checkpoint_callback import Preempted
from l2m_train.train.checkpoint_layout import CheckpointError, load_model, read_state, resolve
from l2m_train.train.divergence import Diverged
from l2m_train.train.export import export
from l2m_train.train.lock import RunInUse, run_lock
from l2m_train.train.run import execute, plan
from l2m_train.train.state import config_dict

L2M = str(Path(sys.executable).parent / "l2m")
STEPS = 9


def overrides(root, name, *extra):
    # 4 samples of 4 segments of 16 tokens per step (256 tokens); the curriculum lengthens samples at step 2.
    return [f"run.root={root}", f"run.name={name}", "train.micro_batch=4", "model.segment_len=16", "data.segments=4",
            "data.curriculum=[{start_tokens: 0, segments: 2}, {start_tokens: 512, segments: 4}]",
            f"train.max_tokens={STEPS * 256}", "train.val_every_steps=1000", "data.val_samples=4", "train.log_every_steps=1",
            "train.compare_baseline=false", "checkpoint.every_steps=100", "train.threads=1", *extra]


@pytest.fixture(autouse=True)
def _keep_threads():
    """These runs use train.threads=1 (on 2 busy cores, 10× faster than 2 threads), which execute() sets process-wide."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny(root, name, *extra):
    return load_config(None, overrides(root, name, *extra))


def l2m(*args, cwd=None):
    return subprocess.run([L2M, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def losses(metrics: Path) -> list[float]:
    return [float(r["train/loss"]) for r in csv.DictReader(open(metrics)) if r.get("train/loss")]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint / "lightning.ckpt", weights_only=True)["state_dict"]


class Draws(Callback):
    """A draw from the global torch generator before every micro-batch: equal draws, equal generator states."""

    def __init__(self, draws: list):
        self.draws = draws

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.draws.append(torch.randint(1 << 30, ()).item())


class Signal(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 3:  # during the fourth step
            os.kill(os.getpid(), signal.SIGUSR1)  # what SLURM sends before a time limit


def test_every_checkpoint_carries_the_train_state_and_retention_keeps_the_last_and_milestones(tmp_path):
    cfg = tiny(tmp_path, "r", "checkpoint.every_steps=2", "checkpoint.keep_last=2", "checkpoint.keep_every_steps=4")
    execute(plan(cfg))
    checkpoints = tmp_path / "r" / "checkpoints"
    # saved at 2, 4, 6, 8 and at the end (9); kept: the last two, and 4 as a milestone
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000004", "step-00000008", "step-00000009"]
    last = checkpoints / "step-00000009"
    assert sorted(p.name for p in last.iterdir()) == ["complete", "lightning.ckpt", "rng", "state.json", "tokenizer.json"]
    state = read_state(last)
    assert state["step"] == 9 and state["tokens"] == 9 * 256 and state["stage"] == 1 and state["world_size"] == 1
    assert state["data"]["position"] == 2 * 8 + 7 * 4  # 8 two-segment samples per step in stage 0, then 4
    assert state["strategy"] == "single" and state["zero_stage"] is None and state["wandb_run_id"] is None
    assert state["hashes"]["model"] == json_fingerprint(config_dict(cfg)["model"])
    assert state["hashes"]["config"] == json_fingerprint(config_dict(cfg))
    assert state["config"] == json.loads(json.dumps(config_dict(cfg)))
    assert state["hashes"]["data"]["tokenizer"] == TextTokenizer.byte().fingerprint
    assert read_state(checkpoints / "step-00000004")["stage"] == 1 and read_state(checkpoints / "step-00000004")["step"] == 4
    assert set(json.loads((last / "rng" / "rank-0.json").read_text())) == {"torch", "cuda", "numpy", "python"}


def test_a_preempted_run_resumes_exactly_where_an_uninterrupted_one_goes(tmp_path):
    straight_draws, draws = [], []
    run = plan(tiny(tmp_path, "straight"))
    run.trainer.callbacks.append(Draws(straight_draws))
    execute(run)

    run = plan(tiny(tmp_path, "preempted"))
    run.trainer.callbacks += [Draws(draws), Signal()]
    with pytest.raises(Preempted) as stop:
        execute(run)
    assert stop.value.signum == signal.SIGUSR1
    checkpoints = tmp_path / "preempted" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["step-00000004"] and not (tmp_path / "preempted" / "result.json").exists()

    run = plan(tiny(tmp_path, "preempted"))  # the same command again: it resumes
    assert run.resume_from == checkpoints / "step-00000004" / "lightning.ckpt"
    run.trainer.callbacks.append(Draws(draws))
    result = execute(run)
    assert result.steps == STEPS
    before, after = tmp_path / "preempted" / "logs" / "metrics.csv", tmp_path / "preempted" / "logs" / "resume-step-00000004"
    assert losses(before)[:4] + losses(after / "metrics.csv") == losses(tmp_path / "straight" / "logs" / "metrics.csv")
    assert draws == straight_draws  # the random generators continue too
    final, straight = weights(checkpoints / "step-00000009"), weights(tmp_path / "straight" / "checkpoints" / "step-00000009")
    assert final.keys() == straight.keys() and all(torch.equal(final[k], straight[k]) for k in final)


class SignalDuringValidation(Callback):
    def __init__(self):
        self.batches = 0

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.batches += 1
        if trainer.global_step == 4 and batch_idx == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # a preemption in the middle of a long validation


def test_a_signal_during_validation_ends_it_and_the_next_step_saves(tmp_path):
    validation = ["train.val_every_steps=4", "data.val_samples=16"]  # 4 batches of 4 samples, after steps 4 and 8
    straight = execute(plan(tiny(tmp_path, "straight", *validation)))
    run = plan(tiny(tmp_path, "stopped", *validation))
    counter = SignalDuringValidation()
    run.trainer.callbacks.append(counter)
    with pytest.raises(Preempted) as stop:
        execute(run)
    assert stop.value.signum == signal.SIGTERM and counter.batches == 2  # batches 0 and 1 of 4, and no other
    assert [p.name for p in (tmp_path / "stopped" / "checkpoints").iterdir()] == ["step-00000005"]
    result = execute(plan(tiny(tmp_path, "stopped", *validation)))
    assert result.val_loss == straight.val_loss
    final, expected = weights(tmp_path / "stopped" / "checkpoints" / "step-00000009"), \
        weights(tmp_path / "straight" / "checkpoints" / "step-00000009")
    assert all(torch.equal(final[k], expected[k]) for k in expected)


KILLED_WRITE = """
import os, signal, sys
from pathlib import Path
import lightning
save = lightning.Trainer.save_checkpoint
def dies_midway(self, filepath, *args, **kwargs):
    if self.global_step == 4:
        Path(filepath).write_bytes(b"the first bytes of a checkpoint")
        os.kill(os.getpid(), signal.SIGKILL)
    return save(self, filepath, *args, **kwargs)
lightning.Trainer.save_checkpoint = dies_midway
from l2m_train.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


INTERRUPTED = """
import os, signal, sys
from l2m_train.train.module import LM2Module
step = LM2Module.training_step
def interrupted(self, batch, batch_idx):
    if self.global_step == 3:
        for _ in range(int(sys.argv[1])):  # Ctrl-C, once or twice
            os.kill(os.getpid(), signal.SIGINT)
    return step(self, batch, batch_idx)
LM2Module.training_step = interrupted
from l2m_train.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("presses, message", [
    (1, "l2m train: stopped by SIGINT at {run}/checkpoints/step-00000004; the same command resumes from there"),
    (2, "l2m train: interrupted; the same command resumes from {run}/checkpoints/step-00000002"),
])
def test_ctrl_c_says_where_the_run_resumes_from(tmp_path, presses, message):
    args = overrides(tmp_path, "i", "checkpoint.every_steps=2")
    out = subprocess.run([sys.executable, "-c", INTERRUPTED, str(presses), "train", *args], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 128 + signal.SIGINT, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == message.format(run=tmp_path / "i")


def test_a_write_killed_midway_leaves_the_last_checkpoint_and_resume_picks_it(tmp_path):
    args = overrides(tmp_path, "k", "checkpoint.every_steps=2")
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITE, "train", *args], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = tmp_path / "k"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [".step-00000004.partial", "step-00000002"]
    assert resolve(run_dir) == run_dir / "checkpoints" / "step-00000002"
    model, _, _ = load_model(run_dir)  # the previous checkpoint loads
    out = l2m("generate", str(run_dir / "checkpoints" / ".step-00000004.partial"))
    assert out.returncode == 2 and "incomplete checkpoint" in out.stderr and out.stderr.count("\n") == 1

    run = plan(load_config(None, args))
    assert run.resume_from == run_dir / "checkpoints" / "step-00000002" / "lightning.ckpt"
    assert execute(run).steps == STEPS
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-00000008", "step-00000009"]
    assert (run_dir / "logs" / "resume-step-00000002" / "metrics.csv").is_file()


def test_resume_passes_over_a_damaged_newest_checkpoint_names_it_and_keeps_it(tmp_path, capsys):
    cfg = tiny(tmp_path, "d", "checkpoint.every_steps=3")
    execute(plan(cfg))
    checkpoints = tmp_path / "d" / "checkpoints"
    newest = checkpoints / "step-00000009" / "lightning.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])  # e.g. a copy cut short
    run = plan(cfg)
    assert run.resume_from == checkpoints / "step-00000006" / "lightning.ckpt"
    capsys.readouterr()
    assert execute(run).steps == STEPS
    said = capsys.readouterr().err
    assert f"{newest} is truncated or damaged (1,000 bytes: " in said and "resuming from " in said
    kept = [p for p in checkpoints.iterdir() if p.name.startswith("step-00000009.unreadable-")]
    assert len(kept) == 1 and (kept[0] / "lightning.ckpt").stat().st_size == 1000  # left for inspection
    assert sorted(p.name for p in checkpoints.iterdir() if p not in kept) == ["step-00000006", "step-00000009"]

    newest.write_bytes(b"")  # the new step 9, empty
    assert plan(cfg).resume_from == checkpoints / "step-00000006" / "lightning.ckpt"
    with pytest.raises(CheckpointError, match="is not a readable checkpoint: EOFError"):
        load_model(newest.parent)
    (checkpoints / "step-00000006" / "state.json").write_text("{")
    with pytest.raises(CheckpointError, match="no checkpoint in .* can be resumed from: .*step-00000009.*\\(0 bytes"):
        plan(cfg)


def test_a_diverging_run_stops_and_never_saves_non_finite_weights(tmp_path):
    blowup = ["optim.lr=1e30", "train.max_nonfinite_steps=3"]  # finite, but the weights overflow within two steps
    with pytest.raises(Diverged, match="the training loss was not finite for 3 steps in a row .* no checkpoint was saved"):
        execute(plan(tiny(tmp_path, "nan", *blowup)))
    assert not (tmp_path / "nan" / "checkpoints").exists() and not (tmp_path / "nan" / "result.json").exists()

    out = l2m("train", *overrides(tmp_path, "saving", *blowup, "checkpoint.every_steps=1"))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "the weights are not finite, so they were not saved; the newest checkpoint, " in out.stderr
    newest = resolve(tmp_path / "saving")
    assert all(torch.isfinite(w).all() for w in weights(newest).values()) and f"{newest}, holds finite" in out.stderr
    assert read_state(newest)["step"] < STEPS and not (tmp_path / "saving" / "result.json").exists()


def test_a_full_disk_is_one_line_and_leaves_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    save = L.Trainer.save_checkpoint

    def onto_a_full_disk(self, filepath, *args, **kwargs):
        if self.global_step == 4:  # the disk fills up midway through the file
            Path(filepath).write_bytes(b"the first bytes of a checkpoint")
            Path("/dev/full").write_bytes(b"the rest")  # the kernel's ENOSPC, as a full disk gives it
        return save(self, filepath, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "save_checkpoint", onto_a_full_disk)
    assert main(["train", *overrides(tmp_path, "f", "checkpoint.every_steps=2")]) == 2
    checkpoints = tmp_path / "f" / "checkpoints"
    err = capsys.readouterr().err.strip()
    assert err == (f"l2m train: error: No space left on device while saving checkpoint step-00000004 in {checkpoints}; "
                   f"the previous checkpoint {checkpoints / 'step-00000002'} is intact: free some space and run the "
                   "same command to resume from it")
    assert [p.name for p in checkpoints.iterdir()] == ["step-00000002"]  # the unfinished one is gone
    assert load_model(checkpoints / "step-00000002")


def test_a_run_killed_before_its_first_checkpoint_starts_over_but_a_finished_one_without_is_refused(tmp_path):
    cfg = tiny(tmp_path, "s")
    (tmp_path / "s" / "checkpoints" / ".step-00000002.partial").mkdir(parents=True)
    (tmp_path / "s" / "config.yaml").write_text("run:\n  name: s\n")
    assert plan(cfg).resume_from is None
    (tmp_path / "s" / "result.json").write_text("{}")  # e.g. from a version that kept checkpoints/last.ckpt
    with pytest.raises(FileExistsError, match="finished run but no checkpoint"):
        plan(cfg)


def test_a_second_train_in_a_busy_run_directory_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
    args = overrides(tmp_path, "busy", "train.max_tokens=100000000", "checkpoint.every_steps=1000000")  # until killed
    first = subprocess.Popen([L2M, "train", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        started = time.monotonic()
        while not (tmp_path / "busy" / "config.yaml").is_file():  # written once the run holds its directory
            assert first.poll() is None and time.monotonic() - started < 300, first.stderr.read()[-2000:]
            time.sleep(0.2)
        with pytest.raises(RunInUse, match=f"is in use by another `l2m train` \\(pid {first.pid} on "):
            execute(plan(load_config(None, args)))
        assert first.poll() is None  # the first one trains on
    finally:
        first.kill()  # a crash: the lock goes with the process
        first.wait()
    with run_lock(tmp_path / "busy"):  # what the next `l2m train` (e.g. a requeued job) takes first
        pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short run, and its model as it was at the end of training."""
    root = tmp_path_factory.mktemp("trained")
    run = plan(tiny(root, "t", "train.max_tokens=1024"))
    execute(run)
    return root, run.run_dir, run.trainer.lightning_module.model.eval()


def test_resuming_with_another_model_or_strategy_is_refused_naming_the_difference(trained):
    root, run_dir, _ = trained
    with pytest.raises(ConfigError, match=r"another model config \(model.memory.slots: 8 in the checkpoint, 4 now\)"):
        plan(tiny(root, "t", "model.memory.slots=4"))
    with pytest.raises(ConfigError, match="saved with train.strategy=single, this run uses deepspeed"):
        plan(tiny(root, "t", "train.strategy=deepspeed"))
    with pytest.raises(ConfigError, match=r"trained with optim.memory_lr_scale=1.0, this run sets 3.0: resume with the same"):
        plan(tiny(root, "t", "optim.memory_lr_scale=3"))
    before = sorted((p.relative_to(run_dir), p.stat().st_mtime_ns) for p in run_dir.rglob("*"))
    out = l2m("train", *overrides(root, "t", "model.n_layers=3"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "model.n_layers: 2 in the checkpoint, 3 now" in out.stderr
    assert sorted((p.relative_to(run_dir), p.stat().st_mtime_ns) for p in run_dir.rglob("*")) == before


def test_resuming_from_weights_of_another_model_is_refused_before_anything_is_written(trained, tmp_path):
    _, run_dir, _ = trained
    shutil.copytree(run_dir, tmp_path / "t")
    with pytest.raises(CheckpointError, match=r"holds the weights of another model \(parameter retrieval.question.weight "
                                              r"is absent in the checkpoint, 64×64 now\)"):
        plan(tiny(tmp_path, "t", "train.max_tokens=1024", "loss.retrieval.weight=0.1"))  # a training head it never had
    checkpoint = resolve(tmp_path / "t") / "lightning.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    saved["state_dict"]["model.final_norm.weight"] = torch.ones(7)  # e.g. a checkpoint copied in from another run
    torch.save(saved, checkpoint)
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in (tmp_path / "t").rglob("*"))
    out = l2m("train", *overrides(tmp_path, "t", "train.max_tokens=1024"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "parameter model.final_norm.weight is 7 in the checkpoint, 64 now" in out.stderr
    assert sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in (tmp_path / "t").rglob("*")) == before


def test_resuming_on_other_data_is_refused_naming_the_source(tmp_path):
    for name, text in (("a", "some words to train on. "), ("b", "other words entirely. ")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "doc.txt").write_text(text * 400)
        pack([str(tmp_path / name)], TextTokenizer.byte(), tmp_path / f"shards-{name}")
    pretrain = ["data.sources=[pretrain]", "data.curriculum=[]", "train.max_tokens=512"]
    execute(plan(tiny(tmp_path, "p", *pretrain, f"data.pretrain.shards={tmp_path / 'shards-a'}")))
    with pytest.raises(DataError, match="trained with pretrain"):
        plan(tiny(tmp_path, "p", *pretrain, f"data.pretrain.shards={tmp_path / 'shards-b'}"))


def test_bad_checkpoint_paths_are_one_clear_line(trained, tmp_path):
    _, run_dir, _ = trained
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "step-00000007").mkdir()  # a checkpoint directory without its marker
    for args, message in [
        (["ckpt", "export", str(tmp_path / "nowhere"), "--out", "x"], "checkpoint not found"),
        (["ckpt", "export", str(tmp_path / "junk"), "--out", "x"], "is not a checkpoint"),
        (["ckpt", "export", str(tmp_path / "step-00000007"), "--out", "x"], "incomplete checkpoint"),
        (["ckpt", "export", str(run_dir), "--out", str(tmp_path / "junk")], "already exists"),
        (["ckpt", "universal", str(run_dir)], "train.strategy=single, not as ZeRO shards"),
        (["generate", str(tmp_path / "junk")], "is not a checkpoint"),
    ]:
        out = l2m(*args, cwd=tmp_path)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and message in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr and not (tmp_path / "x").exists()
    assert not (resolve(run_dir) / "universal").exists()


NO_DEEPSPEED = "import sys; sys.modules['deepspeed'] = None; from l2m_train.cli.main import main; sys.exit(main(sys.argv[1:]))"


def test_an_export_gives_the_live_model_logits_and_generates_without_deepspeed(trained, tmp_path):
    _, run_dir, live = trained
    out = export(run_dir, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.safetensors", "tokenizer.json"]
    model, cfg, tokenizer = load_model(out)
    idx = torch.randint(0, 256, (3, 40))
    with torch.no_grad():
        assert torch.equal(model(idx).logits, live(idx).logits)
    prompt = "J=1 eemlpvovdhihtpiaeqlkrhziqhggebstekorokvtl?J="
    ids = [t.item() for t, _ in live.generate(torch.tensor([tokenizer.encode(prompt)]), 8, temperature=0)]
    ids = ids[:ids.index(tokenizer.eos_id)] if tokenizer.eos_id in ids else ids
    generated = subprocess.run([sys.executable, "-c", NO_DEEPSPEED, "generate", str(out), "--prompt", prompt,
                                "--max-new-tokens", "8", "--temperature", "0"], capture_output=True, text=True, timeout=300)
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout == prompt + tokenizer.decode(ids) + "\n"
