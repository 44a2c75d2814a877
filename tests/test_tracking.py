"""W&B tracking, read back from the offline record files: what a run logs, one W&B run across a preemption and its
resume, the fallback to offline without an API key, MFU against a peak the user sets, and W&B switched off."""
import pytest
from test_checkpointing import STEPS, Signal, tiny
from wandb_records import config, history, run_record

from l2m_train.config import ConfigError, load_config
from l2m_train.model.flops import train_flops_per_token
from l2m_train.train.checkpoint_callback import Preempted
from l2m_train.train.checkpoint_layout import latest_checkpoint, read_state
from l2m_train.train.run import execute, plan
from l2m_train.train.tracking import RUN_ID_FILE

OFFLINE = "wandb.mode=offline"


def offline_files(run_dir):
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def train_rows(files):
    return [row for f in files for row in history(f) if "train/loss" in row]


def test_an_offline_run_logs_config_losses_schedule_throughput_gates_stage_and_results(tmp_path, capsys):
    steps = 12  # throughput needs 10 steps (its window)
    one_length = "data.curriculum=[{start_tokens: 0, segments: 4}]"  # FLOPs per token depend on the sample length
    cfg = tiny(tmp_path, "r", OFFLINE, "train.peak_tflops=0.5", f"train.max_tokens={steps * 256}", one_length)
    execute(plan(cfg))
    run_dir = tmp_path / "r"
    [file] = offline_files(run_dir)
    run_id = (run_dir / RUN_ID_FILE).read_text()
    assert run_record(file).run_id == run_id == read_state(latest_checkpoint(run_dir))["wandb_run_id"]
    assert config(file)["model"]["memory"]["kind"] == "lm2" and config(file)["run"]["name"] == "r"  # the resolved config
    rows = history(file)
    train = [r for r in rows if "train/loss" in r]
    assert [r["trainer/global_step"] for r in train] == list(range(steps))
    keys = set().union(*rows)
    for key in ["train/lr", "train/grad_norm", "train/acc", "gates/layer0/forget", "gates/layer1/in", "data/stage",
                "data/sample_tokens", "train/device/items_per_sec", "train/device/flops_per_sec", "train/device/mfu",
                "val/loss", "val/exact", "results/_type", "val/loss_by_segment_table/_type"]:
        assert key in keys, key
    # MFU = FLOP/s / peak, FLOP/s = tokens/s × FLOPs per token (6N + attention, l2m_train/model/flops.py).
    last = [r for r in rows if "train/device/mfu" in r][-1]
    per_token = train_flops_per_token(cfg.model, context=4 * 16)
    assert last["train/device/flops_per_sec"] == pytest.approx(last["train/device/items_per_sec"] * per_token, rel=1e-6)
    assert last["train/device/mfu"] == pytest.approx(last["train/device/flops_per_sec"] / 0.5e12, rel=1e-6)
    out = capsys.readouterr().out
    assert f"upload it with: wandb sync {run_dir}/wandb/offline-run-*-{run_id}" in out


def test_a_resumed_run_continues_the_same_wandb_run_and_logs_every_step_once(tmp_path):
    straight = tiny(tmp_path, "straight", OFFLINE)
    execute(plan(straight))
    cfg = tiny(tmp_path, "r", OFFLINE)
    stopped = plan(cfg)
    stopped.trainer.callbacks.append(Signal())  # SIGUSR1 during the fourth step
    with pytest.raises(Preempted):
        execute(stopped)
    execute(plan(cfg))
    run_dir = tmp_path / "r"
    files = offline_files(run_dir)
    assert len(files) == 2 and {run_record(f).run_id for f in files} == {(run_dir / RUN_ID_FILE).read_text()}
    rows = train_rows(files)
    assert [r["trainer/global_step"] for r in rows] == list(range(STEPS))
    assert [r["train/loss"] for r in rows] == [r["train/loss"] for r in train_rows(offline_files(tmp_path / "straight"))]


def test_online_without_an_api_key_trains_offline_after_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login`
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    result = execute(plan(tiny(tmp_path / "runs", "r", "wandb.mode=online")))
    assert result.steps == STEPS
    err = [line for line in capsys.readouterr().err.splitlines() if "W&B" in line]
    assert len(err) == 1 and err[0].startswith("l2m: W&B cannot log online (") and err[0].endswith("logging offline instead")
    assert len(train_rows(offline_files(tmp_path / "runs" / "r"))) == STEPS


def test_disabled_writes_nothing_of_wandb(tmp_path):
    execute(plan(tiny(tmp_path, "r", "wandb.mode=disabled")))
    assert not (tmp_path / "r" / "wandb").exists() and not (tmp_path / "r" / RUN_ID_FILE).exists()
    assert read_state(latest_checkpoint(tmp_path / "r"))["wandb_run_id"] is None


@pytest.mark.parametrize("override,message", [("wandb.mode=sometimes", "wandb.mode must be auto, online, offline or disabled"),
                                              ("train.peak_tflops=-1", "train.peak_tflops must be >= 0")])
def test_bad_tracking_settings_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
