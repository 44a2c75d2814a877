"""train.stop_at: a run ends at the first validation whose metric passes the threshold, saved there, and stays ended."""
import json

import pytest
import torch
from test_checkpointing import tiny, weights

from l2m_train.config import ConfigError
from l2m_train.train.run import execute, plan

# 9 steps of the tiny run, validated every 3: the first validation after step 3.
EVERY_3 = ("train.val_every_steps=3",)


def steps_saved(run_dir):
    return sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").iterdir())


def result(run_dir):
    return json.loads((run_dir / "result.json").read_text())


@pytest.mark.parametrize("stop_at", ["val/exact>=0.8", "val/nonsense>0.5", "val/exact>high", "exact>0.8", "val/exact>inf"])
def test_a_stop_at_that_is_not_a_rule_on_a_validation_metric_is_refused_naming_the_metrics(tmp_path, stop_at):
    quoted = r"e.g. 'train.stop_at=val/exact>0.83' \(quoted in a shell\)"
    with pytest.raises(ConfigError, match=rf"train.stop_at=.*{quoted}; the metrics: val/loss, val/acc, val/exact$"):
        tiny(tmp_path, "r", f"train.stop_at={stop_at}")


def test_a_run_stops_at_the_first_validation_past_the_threshold_saved_there_and_a_rerun_trains_nothing(tmp_path, capsys):
    # A loss below 1000 passes at the first validation; below 0, never.
    execute(plan(tiny(tmp_path, "stopped", *EVERY_3, "train.stop_at=val/loss<1000")))
    execute(plan(tiny(tmp_path, "full", *EVERY_3, "train.stop_at=val/loss<0")))
    stopped, full = tmp_path / "stopped", tmp_path / "full"
    assert result(stopped)["steps"] == 3 and result(full)["steps"] == 9
    assert "l2m: step 3: Stopping threshold reached: val/loss" in capsys.readouterr().err
    assert steps_saved(stopped) == [3] and steps_saved(full) == [9]  # checkpoint.every_steps is 100: the stop saved step 3

    first = weights(stopped / "checkpoints" / "step-00000003")
    execute(plan(tiny(tmp_path, "stopped", *EVERY_3, "train.stop_at=val/loss<1000")))
    assert result(stopped)["steps"] == 3 and steps_saved(stopped) == [3]
    assert all(torch.equal(first[k], v) for k, v in weights(stopped / "checkpoints" / "step-00000003").items())

    # A threshold the run has not reached resumes it.
    execute(plan(tiny(tmp_path, "stopped", *EVERY_3, "train.stop_at=val/loss<0")))
    assert result(stopped)["steps"] == 9


def test_a_stop_on_a_step_that_was_saved_before_its_validation_also_stays_stopped(tmp_path):
    # checkpoint.every_steps=3: step 3 is saved before the validation that stops the run.
    cfg = tiny(tmp_path, "r", *EVERY_3, "checkpoint.every_steps=3", "train.stop_at=val/loss<1000")
    execute(plan(cfg))
    execute(plan(cfg))
    assert result(tmp_path / "r")["steps"] == 3 and steps_saved(tmp_path / "r") == [3]
