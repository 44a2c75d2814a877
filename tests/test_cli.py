"""`l2m` end to end, as a user runs it: bad input fails in one line, the quickstart learns, generate streams."""
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from l2m_train.cli.summary import print_summary
from l2m_train.config import load_config
from l2m_train.data.recall import RecallTask
from l2m_train.data.sources import RecallSource
from l2m_train.train.run import RunResult

L2M = str(Path(sys.executable).parent / "l2m")  # the installed console script


def l2m(*args, cwd=None, timeout=900):
    return subprocess.run([L2M, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def test_help_lists_the_verbs():
    out = l2m("--help")
    assert out.returncode == 0 and "train" in out.stdout and "generate" in out.stdout
    assert "examples:" in l2m("train", "--help").stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["model.segment_len=0"], "model.segment_len must be > 0"),
        (["model.memory.slots=-1"], "model.memory.slots must be > 0"),
        (["model.n_heads=3"], "must divide model.d_model"),
        (["model.memory.layers=[5]"], "out of range"),
        (["model.sgment_len=4"], "unknown config key 'model.sgment_len'"),
        (["oops"], "malformed override 'oops'"),
        (["--config", "missing.yaml"], "config file not found: missing.yaml"),
        (["data.recall.pairs=9"], "do not fit a segment"),
        (["model.vocab_size=64"], "smaller than the 257 tokens"),
        (["data.sources=[qa]", "data.qa.path=nowhere"], "nowhere is not a `l2m data babilong` output"),
        (["data.curriculum=[{start_tokens: 0, segments: 1}]"], "at least 2 segments"),
        (["train.devices=0"], "train.devices must be > 0"),
        (["optim.lr=inf"], "optim.lr must be a finite number, got inf"),
        (["optim.grad_clip=nan"], "optim.grad_clip must be a finite number, got nan"),
        (["optim.betas=[2,2]"], "optim.betas must be two numbers in [0, 1), got [2.0, 2.0]"),
        (["run.name=../x"], "run.name must be a path inside run.root (not empty, not absolute, no '..'), got '../x'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_run_directory(tmp_path, args, message):
    out = l2m("train", "run.root=runs", *args, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


def test_a_run_root_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "runs").write_text("notes")
    out = l2m("train", "run.root=runs", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "runs is a file, not a directory" in out.stderr and (tmp_path / "runs").read_text() == "notes"


def test_overrides_may_follow_options():
    out = l2m("train", "model=small", "--print-config", "model.d_model=128")
    assert out.returncode == 0 and "d_model: 128" in out.stdout
    out = l2m("train", "--print-config", "--bogus")
    assert out.returncode == 2 and "unrecognized arguments: --bogus" in out.stderr


def test_a_directory_that_is_not_a_run_is_refused_and_left_alone(tmp_path):
    run = tmp_path / "runs" / "quickstart"
    run.mkdir(parents=True)
    (run / "keep.txt").write_text("precious")
    out = l2m("train", "run.root=runs", cwd=tmp_path)
    assert out.returncode == 2 and "is not a run directory" in out.stderr
    assert [p.name for p in run.iterdir()] == ["keep.txt"] and (run / "keep.txt").read_text() == "precious"


def test_generate_refuses_missing_and_foreign_checkpoints(tmp_path):
    out = l2m("generate", str(tmp_path / "none.ckpt"))
    assert out.returncode == 2 and "checkpoint not found" in out.stderr
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    out = l2m("generate", str(junk))
    assert out.returncode == 2 and "not a readable checkpoint" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "empty.ckpt").touch()  # e.g. a copy that never happened
    out = l2m("generate", str(tmp_path / "empty.ckpt"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "empty.ckpt is not a readable checkpoint: EOFError" in out.stderr


@pytest.mark.parametrize("option, value, message", [
    ("--temperature", "nan", "must be a finite number >= 0 (0 = greedy), got nan"),
    ("--temperature", "-1", "must be a finite number >= 0 (0 = greedy), got -1.0"),
    ("--seed", str(2**64), "must be in [0, 2^64)"),
    ("--threads", "0", "must be a positive integer, got 0"),
])
def test_generate_refuses_bad_sampling_options_in_argparse_error_line(tmp_path, option, value, message):
    out = l2m("generate", str(tmp_path), option, value)
    assert out.returncode == 2 and message in out.stderr.splitlines()[-1] and "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The README's main job: `l2m train` with its built-in default."""
    cwd = tmp_path_factory.mktemp("quickstart")
    out = l2m("train", cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return cwd / "runs" / "quickstart", out.stdout


@pytest.mark.slow
def test_quickstart_lm2_recalls_what_segment_local_attention_cannot(quickstart):
    run, stdout = quickstart
    lm2 = json.loads((run / "result.json").read_text())
    baseline = json.loads((run / "baseline-none" / "result.json").read_text())
    assert lm2["kind"] == "lm2" and baseline["kind"] == "none"
    assert lm2["val_acc"] >= 0.99  # docs/design.md §2.4 (3), and rung 0: 100% over seeds and CPUs (docs/RESULTS.md)
    assert baseline["val_acc"] <= RecallTask.chance + 0.05  # segment-local attention cannot beat chance
    assert "Recall on" in stdout and "chance" in stdout and "accuracy" in stdout and "l2m generate" in stdout


@pytest.mark.slow
def test_generate_streams_the_recalled_answer(quickstart):
    run, _ = quickstart
    task = RecallSource(load_config()).held_out()  # the quickstart's own held-out stories
    right = 0
    for i in range(5):
        context, answer = task.text(i)
        out = l2m("generate", str(run), "--prompt", context,
                  "--max-new-tokens", "1", "--temperature", "0")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(context) and len(out.stdout.rstrip("\n")) == len(context) + 1
        right += out.stdout.rstrip("\n")[-1] == answer
    assert right >= 3


def test_the_summary_hint_quotes_a_run_directory_with_spaces(capsys):
    run_dir = "my runs/it's here"
    result = RunResult("lm2", "segment", 1000, 1.0, 1.0, 0.0, 1, 100, 1.0, run_dir)
    print_summary([result], load_config(), ("J=1 ab?J=", "1"))
    hint = capsys.readouterr().out.splitlines()[-1]
    assert shlex.split(hint)[:6] == ["l2m", "generate", run_dir, "--prompt", "J=1 ab?J=", "--max-new-tokens"]
