"""`l2m eval`: BABILong scoring equals greedy decoding, accuracy by task and length as a table, JSON and heatmap,
perplexity by segment index, and bad input as one line with exit code 2."""
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from matplotlib.image import imread
from rich.console import Console
from safetensors.torch import save_model
from test_checkpointing import tiny
from wandb_records import history, run_record

from l2m_train.cli.main import main
from l2m_train.config import Config, to_yaml
from l2m_train.data import DataError
from l2m_train.data.tokenizer import TextTokenizer
from l2m_train.data_pipelines.babi_generate import write_babi_dir
from l2m_train.data_pipelines.babilong import build
from l2m_train.data_pipelines.pack import pack
from l2m_train.eval.babilong import Accuracy, by_distance, exact_answers, rows_from_babi, rows_from_dataset, tally
from l2m_train.eval.ppl import held_out_windows, perplexity
from l2m_train.eval.report import (
    BABILONG_COLUMNS,
    babilong_json,
    babilong_table,
    distance_lines,
    heatmap,
    ppl_json,
    ppl_table,
)
from l2m_train.train.checkpoint_layout import CONFIG, WEIGHTS
from l2m_train.train.run import execute, plan

BYTES = TextTokenizer.byte()
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def hay_file(tmp_path):
    rng = np.random.default_rng(0)
    words = ["the", "old", "house", "stood", "by", "a", "quiet", "river", "and", "nobody", "came", "there"]
    path = tmp_path / "book.txt"
    path.write_text("\n".join(" ".join(rng.choice(words, rng.integers(3, 15))).capitalize() + "." for _ in range(300)))
    return path


@pytest.fixture
def babi_dir(tmp_path):
    write_babi_dir(tmp_path / "babi", ["qa1", "qa2"], stories=20, seed=0, split="test")
    return tmp_path / "babi"


@pytest.fixture
def export(tmp_path):
    """A tiny random LM2 over bytes, exported as `l2m ckpt export` writes it."""
    model, out = tiny_model(vocab_size=BYTES.vocab_size), tmp_path / "export"
    out.mkdir()
    save_model(model, str(out / WEIGHTS))
    (out / CONFIG).write_text(to_yaml(Config(model=model.cfg)))
    BYTES.save(out)
    return out


def test_an_answer_counts_exactly_when_greedy_decoding_gives_it():
    model = tiny_model()  # segments of 8 tokens: the prompts below end in the 1st to the 4th segment
    rng = np.random.default_rng(0)
    rows, expected = [], []
    for length in (3, 9, 17, 30, 12):
        prompt = rng.integers(0, 64, length).tolist()
        greedy = [t.item() for t, _ in model.generate(torch.tensor([prompt]), 3, temperature=0)]
        first_wrong, last_wrong = [(greedy[0] + 1) % 64, *greedy[1:]], [*greedy[:2], (greedy[2] + 1) % 64]
        for answer, right in ((greedy, True), (first_wrong, False), (last_wrong, False)):
            rows.append({"input_ids": prompt + answer, "answer_start": length})
            expected.append(right)
    order = rng.permutation(len(rows))  # lengths mixed: batches are padded
    rows, expected = [rows[i] for i in order], [expected[i] for i in order]
    seen = []
    assert exact_answers(model, rows, batch_tokens=100, on_batch=seen.append) == expected
    assert exact_answers(model, rows, batch_tokens=1) == expected  # one row per batch: no padding
    assert sum(seen) == sum(len(r["input_ids"]) - 1 for r in rows) and len(seen) < len(rows)


def hand_made() -> Accuracy:
    """qa1: 3/4 at 0k, 0/2 at 1k; qa2: 1/2 at 1k; qa10: 1/1 at 0k, nothing at 1k."""
    cells = [("qa1", 0, [True, True, False, True]), ("qa1", 1024, [False, False]), ("qa10", 0, [True]),
             ("qa2", 1024, [True, False])]
    rows = [{"task": task, "target_length": length} for task, length, oks in cells for _ in oks]
    return tally(rows, [ok for *_, oks in cells for ok in oks])


def test_accuracy_by_task_and_length_and_its_table():
    acc = hand_made()
    assert acc.tasks == ["qa1", "qa2", "qa10"] and acc.lengths == [0, 1024]
    np.testing.assert_equal(acc.matrix, [[0.75, 0.0], [np.nan, 0.5], [1.0, np.nan]])
    console = Console(file=io.StringIO(), width=80)
    console.print(babilong_table(acc))
    lines = [" ".join(line.replace("│", " ").replace("┃", " ").split()) for line in console.file.getvalue().splitlines()]
    assert "task 0k 1k" in lines
    assert {"qa1 75% 0%", "qa2 50%", "qa10 100%", "all 80% 25%"} <= set(lines)  # all: every task pooled


def test_json_holds_accuracy_by_length_label_and_flat_rows():
    data = json.loads(json.dumps(babilong_json(hand_made(), {"checkpoint": "runs/x"}), allow_nan=False))
    assert data["kind"] == "babilong" and data["checkpoint"] == "runs/x"
    assert data["accuracy"] == {"qa1": {"0k": 0.75, "1k": 0.0}, "qa2": {"0k": None, "1k": 0.5},
                                "qa10": {"0k": 1.0, "1k": None}}
    assert data["columns"] == BABILONG_COLUMNS
    assert data["rows"] == [["qa1", 0, 3, 4, 0.75], ["qa1", 1024, 0, 2, 0.0], ["qa2", 1024, 1, 2, 0.5], ["qa10", 0, 1, 1, 1.0]]


def test_accuracy_by_facts_after_the_evidence_pools_lengths_and_far_distances():
    # (task, number of facts, supporting indices, answered right)
    cells = [("qa1", 3, [2], True), ("qa1", 3, [2], True), ("qa1", 3, [1], False), ("qa1", 9, [0], False),
             ("qa1", 8, [2], True), ("qa2", 4, [0, 3], True), ("qa2", 4, [3, 0], False), ("qa2", 5, [1, 2], False)]
    rows = [{"task": t, "facts": [[i, i + 1] for i in range(n)], "supporting": s} for t, n, s, _ in cells]
    distance = by_distance(rows, [ok for *_, ok in cells])
    assert distance == {"qa1": {"0": [2, 2], "1": [0, 1], "4+": [1, 2]}, "qa2": {"0": [1, 2], "2": [0, 1]}}
    assert distance_lines(distance)[0] == "qa1 by facts after the last supporting one: 0: 100% of 2 · 1: 0% of 1 · 4+: 50% of 2"


def test_heatmap_draws_tasks_by_lengths(tmp_path):
    acc, path = hand_made(), tmp_path / "babilong.png"
    fig = heatmap(acc, path, "title")
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (3, 2)
    np.testing.assert_equal(np.ma.filled(image.astype(float), np.nan), acc.matrix)
    assert [t.get_text() for t in fig.axes[0].texts] == ["75", "0", "50", "100"]  # no label on empty cells
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["qa1", "qa2", "qa10"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0k", "1k"]
    height, width, _ = imread(path).shape
    assert (width, height) == tuple(round(x * 120) for x in fig.get_size_inches())


def test_samples_from_babi_are_seeded_n_per_task_and_length(babi_dir, hay_file):
    rows = rows_from_babi(str(babi_dir), [str(hay_file)], None, [0, 300], 3, BYTES)
    assert sorted((r["task"], r["target_length"]) for r in rows) == sorted([(t, n) for t in ("qa1", "qa2") for n in (0, 300)] * 3)
    for r in rows:
        assert BYTES.decode(r["input_ids"][r["answer_start"]:-1]) == " " + r["answer"]
        assert r["target_length"] == 0 or r["length"] <= 300
    ids = lambda rows: [r["input_ids"].tolist() for r in rows]  # noqa: E731
    assert ids(rows_from_babi(str(babi_dir), [str(hay_file)], None, [0, 300], 3, BYTES)) == ids(rows)
    assert ids(rows_from_babi(str(babi_dir), [str(hay_file)], None, [0, 300], 3, BYTES, seed=1)) != ids(rows)
    held_out = rows_from_babi(str(babi_dir), [str(hay_file)], None, [0], 30, BYTES, holdout=0.25)
    assert {r["story"] for r in held_out} == {15, 16, 17, 18, 19}  # the stories `l2m data babilong` keeps from training


def test_prebuilt_babilong_validation_split(tmp_path, babi_dir, hay_file):
    build(str(babi_dir), [str(hay_file)], [0, 300], ["qa1", "qa2"], 1, 3, BYTES, tmp_path / "bl", babi_split="test")
    rows = rows_from_dataset(str(tmp_path / "bl"), BYTES, ["qa2"], None, 2)
    assert sorted((r["task"], r["target_length"]) for r in rows) == [("qa2", 0)] * 2 + [("qa2", 300)] * 2
    with pytest.raises(DataError, match="no length 1024"):
        rows_from_dataset(str(tmp_path / "bl"), BYTES, None, [1024])
    other = TextTokenizer.train_bpe(["the old house stood by a quiet river"] * 10, 300)
    with pytest.raises(DataError, match="another tokenizer"):
        rows_from_dataset(str(tmp_path / "bl"), other)


def test_cli_babilong_table_json_and_heatmap(tmp_path, export, babi_dir, hay_file, capsys):
    out = tmp_path / "out"
    assert main(["eval", "babilong", str(export), "--babi-dir", str(babi_dir), "--haystack", str(hay_file),
                 "--lengths", "0k", "300", "--samples", "4", "--out", str(out)]) == 0
    data = json.loads((out / "babilong.json").read_text())
    assert data["tasks"] == ["qa1", "qa2"] and data["lengths"] == [0, 300] and data["samples"] == 4
    assert [row[3] for row in data["rows"]] == [4] * 4
    assert imread(out / "babilong.png").ndim == 3
    printed = capsys.readouterr().out
    assert "16 samples" in printed and "qa2" in printed and "babilong.png" in printed
    assert "qa1 by facts after the last supporting one: 0:" in printed
    assert sum(n for _, n in data["by_distance"]["qa1"].values()) == 8  # both lengths


@pytest.mark.parametrize("change, message", [
    ({"checkpoint": "missing"}, "checkpoint not found: missing"),
    ({"--babi-dir": "nowhere"}, "bAbI directory not found: nowhere"),
    ({"--tasks": "qa7"}, "no test file for qa7"),
    ({"--lengths": "64k"}, "the haystack (.*) is shorter than a"),
    ({"--haystack": None}, "lengths above 0k need background text"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, export, babi_dir, hay_file, capsys, change, message):
    args = {"checkpoint": str(export), "--babi-dir": str(babi_dir), "--haystack": str(hay_file), "--lengths": "1k",
            "--samples": "1", "--out": str(tmp_path / "out"), **change}
    argv = ["eval", "babilong", args.pop("checkpoint")] + [x for k, v in args.items() if v is not None for x in (k, v)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("l2m eval: error:")
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_cli_a_babi_file_without_questions_is_one_line(tmp_path, export, capsys):
    (tmp_path / "babi").mkdir()
    (tmp_path / "babi" / "qa1_x_test.txt").write_text("1 Mary moved.\n2 John left.\n")
    assert main(["eval", "babilong", str(export), "--babi-dir", str(tmp_path / "babi"), "--lengths", "0k",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "qa1_x_test.txt:2: the file ends without a question" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, value, message", [
    ("--device", "potato", "'potato' is not a device: use cpu, cuda or cuda:N"),
    ("--device", f"cuda:{torch.cuda.device_count() + 7}", "CUDA device"),
    ("--threads", "0", "must be a positive integer"),
    ("--seed", str(2**64), "must be in [0, 2^64)"),
])
def test_cli_bad_options_are_refused_before_loading_anything(tmp_path, export, babi_dir, capsys, option, value, message):
    with pytest.raises(SystemExit) as stop:
        main(["eval", "babilong", str(export), "--babi-dir", str(babi_dir), option, value, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err.splitlines()[-1] and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_generate_and_eval_take_threads_and_default_to_half_the_usable_cpus(tmp_path, export, babi_dir, monkeypatch):
    monkeypatch.setattr(torch, "set_num_threads", lambda n: threads.append(n))  # the test process keeps its own
    threads = []
    main(["generate", str(export), "--max-new-tokens", "1", "--threads", "3"])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # 2 cores, maybe shared: 1 thread, not 2
    main(["generate", str(export), "--max-new-tokens", "1"])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    main(["eval", "babilong", str(export), "--babi-dir", str(babi_dir), "--lengths", "0k", "--samples", "1",
          "--out", str(tmp_path / "out")])
    assert threads == [3, 1, 8]


@pytest.fixture
def shards(tmp_path, hay_file):
    pack([str(hay_file)], BYTES, tmp_path / "shards")
    return tmp_path / "shards"


def test_perplexity_by_segment_index_of_held_out_windows(shards):
    model = tiny_model(vocab_size=BYTES.vocab_size)
    windows = held_out_windows(Config(model=model.cfg), str(shards), BYTES, segments=3, val_fraction=0.5, windows=5)
    assert len(windows) == 5 and all(len(w.ids) == 3 * 8 + 1 for w in windows)
    result = perplexity(model, windows, batch_size=2)
    # the same by hand: each window on its own, the loss of its positions 0-7, 8-15, 16-23
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(model(torch.as_tensor(w.ids[None, :-1])).logits[0], torch.as_tensor(w.ids[1:]),
                                              reduction="none") for w in windows])
    np.testing.assert_allclose(result.per_segment, losses.view(5, 3, 8).mean((0, 2)), rtol=1e-5)
    assert result.loss == pytest.approx(losses.mean().item(), rel=1e-5)
    assert result.perplexity == pytest.approx(np.exp(result.loss)) and (result.windows, result.tokens) == (5, 120)
    data = json.loads(json.dumps(ppl_json(result, {"shards": "x"})))
    assert data["loss_per_segment"] == result.per_segment and [row[0] for row in data["rows"]] == ["1", "2", "3", "all"]
    console = Console(file=io.StringIO(), width=80)
    console.print(ppl_table(result))
    assert f"{result.perplexity:,.2f}" in console.file.getvalue()


def test_cli_ppl(tmp_path, export, shards, capsys):
    out = tmp_path / "out"
    assert main(["eval", "ppl", str(export), "--shards", str(shards), "--val-fraction", "0.5", "--windows", "4",
                 "--out", str(out)]) == 0
    data = json.loads((out / "ppl.json").read_text())
    assert data["windows"] == 4 and data["segments"] == 3 and len(data["loss_per_segment"]) == 3  # the config's segments
    assert main(["eval", "ppl", str(export), "--shards", str(shards), "--val-fraction", "0.001"]) == 2
    assert "holds no window of 3 × 8 tokens" in capsys.readouterr().err


def test_results_log_to_the_wandb_run_the_checkpoint_was_trained_in(tmp_path, babi_dir, capsys):
    execute(plan(tiny(tmp_path, "r", "wandb.mode=offline")))
    run_dir = tmp_path / "r"
    assert main(["eval", "babilong", str(run_dir), "--babi-dir", str(babi_dir), "--lengths", "0k", "--samples", "2",
                 "--out", str(tmp_path / "out"), "--wandb"]) == 0
    trained, evaluated = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert run_record(evaluated).run_id == run_record(trained).run_id == (run_dir / "wandb_run_id").read_text()
    logged = set().union(*history(evaluated))
    assert {"eval/babilong/_type", "eval/babilong_heatmap/_type"} <= logged
    assert "upload it with: wandb sync" in capsys.readouterr().out
    execute(plan(tiny(tmp_path, "quiet", "wandb.mode=disabled")))
    assert main(["eval", "babilong", str(tmp_path / "quiet"), "--babi-dir", str(babi_dir), "--lengths", "0k", "--wandb"]) == 2
    assert "trained without W&B" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED / "babi" / "en-10k").is_dir() or not (SHARED / "text" / "austen").is_dir(),
                    reason="../shared/data/babi/en-10k or ../shared/data/text/austen is absent")
def test_samples_from_the_real_babi_and_books():
    rows = rows_from_babi(str(SHARED / "babi" / "en-10k"), [str(SHARED / "text" / "austen" / "persuasion.txt")], ["qa1"],
                          [1024], 2, BYTES, split="train")
    assert len(rows) == 2 and all(900 < r["length"] <= 1024 for r in rows)
