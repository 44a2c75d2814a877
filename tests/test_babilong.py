"""BABILong-style samples: facts in order at sentence boundaries, exact spans, lengths, splits, bad input."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from l2m_train.data import DataError
from l2m_train.data.tokenizer import TextTokenizer
from l2m_train.data_pipelines.babi import Question
from l2m_train.data_pipelines.babi_generate import write_babi_dir
from l2m_train.data_pipelines.babilong import QUESTION, build, build_sample, parse_length
from l2m_train.data_pipelines.haystack import Haystack, split_sentences
from l2m_train.io import OutputError

L2M = str(Path(sys.executable).parent / "l2m")
BOOKS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text"
TOKENIZER = TextTokenizer.byte()
STORY = Question(task="qa1", story=0, line=5, facts=("Mary moved to the bathroom.", "John went to the hallway.",
                 "Mary travelled to the office."), supporting=(2,), question="Where is Mary?", answer="office")


@pytest.fixture
def hay_file(tmp_path):
    rng = np.random.default_rng(0)
    words = ["the", "old", "house", "stood", "by", "a", "quiet", "river", "and", "nobody", "came", "there"]
    lines = [" ".join(rng.choice(words, rng.integers(3, 15))).capitalize() + "." for _ in range(400)]
    path = tmp_path / "book.txt"
    path.write_text("\n".join(" ".join(lines[i:i + 4]) + "\n" for i in range(0, 400, 4)))
    return path


def test_sentences_split_at_punctuation_not_at_abbreviations_or_line_wraps():
    text = "Mr. Knightley came in.  He sat\ndown! Was it \"late?\" Yes.\n\nA new paragraph"
    assert split_sentences(text) == ["Mr. Knightley came in.", "He sat down!", 'Was it "late?"', "Yes.",
                                     "A new paragraph"]


def test_lengths_parse_k_as_1024_tokens():
    assert [parse_length(t) for t in ("0k", "1k", "4k", "128k", "3000")] == [0, 1024, 4096, 131072, 3000]


@pytest.mark.parametrize("target", [0, 300, 1024, 4096])
def test_facts_keep_their_order_and_spans_point_at_exactly_their_tokens(hay_file, target):
    hay = Haystack([str(hay_file)], TOKENIZER)
    for seed in range(5):
        b = build_sample(STORY, target, hay, TOKENIZER, np.random.default_rng(seed))
        decode = lambda a, z: TOKENIZER.decode(b.ids[a:z].tolist())  # noqa: E731
        assert [decode(a, z) for a, z in b.facts] == [" " + f for f in STORY.facts]
        assert all(z1 <= a2 for (_, z1), (a2, _) in zip(b.facts, b.facts[1:]))  # in story order, no overlap
        assert decode(*b.question_span) == QUESTION.format(STORY.question)
        assert TOKENIZER.decode(b.ids[b.answer_start:].tolist()) == " office"  # EOS is not text
        assert b.ids[-1] == TOKENIZER.eos_id and b.length == b.answer_start == b.question_span[1]
        if target:
            assert b.length <= target < b.length + b.next_sentence_tokens  # within one sentence of the target
            # facts sit between whole haystack sentences
            text = TOKENIZER.decode(b.ids[:b.length].tolist())
            assert all(text[text.index(f) - 2] in ".!?" or text.index(f) == 1 for f in STORY.facts)
        else:
            assert b.length == sum(z - a for a, z in b.facts) + b.question_span[1] - b.question_span[0]


def test_a_target_shorter_than_the_facts_is_refused(hay_file):
    with pytest.raises(DataError, match="shorter than the facts and question of qa1"):
        build_sample(STORY, 50, Haystack([str(hay_file)], TOKENIZER), TOKENIZER, np.random.default_rng(0))


def test_empty_and_missing_haystacks_are_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n\n ")
    with pytest.raises(DataError, match="the haystack is empty"):
        Haystack([str(tmp_path / "empty.txt")], TOKENIZER)
    with pytest.raises(DataError, match="haystack path not found"):
        Haystack([str(tmp_path / "nowhere")], TOKENIZER)


@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    out = tmp_path_factory.mktemp("babi")
    write_babi_dir(out, ["qa1", "qa2"], stories=60, seed=0)
    return out


def test_build_writes_train_and_held_out_validation_splits(stories, hay_file, tmp_path):
    import datasets

    m = build(str(stories), [str(hay_file)], [0, 300], ["qa1", "qa2"], 6, 3, TOKENIZER, str(tmp_path / "bl"), seed=3)
    splits = datasets.load_from_disk(str(tmp_path / "bl"))
    assert m["counts"] == {"train": 2 * 2 * 6, "validation": 2 * 2 * 3}
    for task in ("qa1", "qa2"):
        train = {r["story"] for r in splits["train"] if r["task"] == task}
        val = {r["story"] for r in splits["validation"] if r["task"] == task}
        assert train and val and max(train) < min(val)  # whole stories held out
    assert m["skipped_questions"]["train"]["qa2/300"] > 0  # long qa2 stories do not fit 300 tokens: left out
    assert max(r["length"] for r in splits["train"] if r["target_length"] == 300) <= 300
    row = splits["train"][0]
    assert len(row["input_ids"]) == row["tokens"] and row["input_ids"][-1] == TOKENIZER.eos_id
    assert all(0 <= s < len(row["facts"]) for s in row["supporting"])
    assert TextTokenizer.load(tmp_path / "bl").fingerprint == TOKENIZER.fingerprint
    again = build(str(stories), [str(hay_file)], [0, 300], ["qa1", "qa2"], 6, 3, TOKENIZER, str(tmp_path / "b2"), seed=3)
    assert again["content_sha256"] == m["content_sha256"]  # deterministic for a fixed seed
    other = build(str(stories), [str(hay_file)], [0, 300], ["qa1", "qa2"], 6, 3, TOKENIZER, str(tmp_path / "b3"), seed=4)
    assert other["content_sha256"] != m["content_sha256"]


def test_kept_questions_put_earlier_answers_in_the_context_and_say_so_in_the_manifest(stories, hay_file, tmp_path):
    import datasets

    m = build(str(stories), [str(hay_file)], [0], ["qa1"], 20, 2, TOKENIZER, str(tmp_path / "kq"), keep_questions=True)
    rows = datasets.load_from_disk(str(tmp_path / "kq"))["train"]
    assert m["keep_questions"] is True
    decoded = [TOKENIZER.decode(r["input_ids"][:r["answer_start"]]) for r in rows]
    # A story's later questions hold the earlier ones, answered, before their own; its first holds none.
    assert any(text.count("Question:") > 1 for text in decoded)
    assert any(text.count("Question:") == 1 for text in decoded)


def test_a_failed_build_leaves_the_existing_output_untouched(stories, hay_file, tmp_path):
    out = tmp_path / "bl"
    build(str(stories), [str(hay_file)], [0], ["qa1"], 2, 1, TOKENIZER, str(out))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(DataError, match="shorter than the facts and question of every qa1 story"):
        build(str(stories), [str(hay_file)], [0, 40], ["qa1"], 2, 1, TOKENIZER, str(out))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left


def test_out_is_never_an_input_nor_a_directory_it_did_not_write(stories, hay_file, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for out, message in [(tmp_path, "holds or lies inside the input"), (stories, "is, holds or lies inside the input"),
                         (tmp_path / "mine", "is not an earlier output")]:
        with pytest.raises(OutputError, match=message):
            build(str(stories), [str(hay_file)], [0], ["qa1"], 2, 1, TOKENIZER, str(out))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me" and hay_file.is_file()
    assert sorted(p.name for p in stories.iterdir()) == ["qa1_single-supporting-fact_train.txt",
                                                         "qa2_two-supporting-facts_train.txt"]


@pytest.mark.skipif(not BOOKS.is_dir(), reason=f"../shared/data/text not found at {BOOKS}: real-book test skipped")
def test_real_books_fill_long_samples_within_one_sentence(stories, tmp_path):
    import datasets

    build(str(stories), [str(BOOKS / "austen")], [1024, 8192], ["qa2"], 5, 1, TOKENIZER, str(tmp_path / "bl"))
    for row in datasets.load_from_disk(str(tmp_path / "bl"))["train"]:
        assert row["length"] <= row["target_length"] < row["length"] + row["next_sentence_tokens"]


def test_cli_builds_and_refuses_bad_input_in_one_line(stories, hay_file, tmp_path):
    out = subprocess.run([L2M, "data", "babilong", "--babi-dir", str(stories), "--haystack", str(hay_file),
                          "--lengths", "0k", "1k", "--samples", "4", "--out", str(tmp_path / "bl")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "train and" in out.stdout and (tmp_path / "bl" / "manifest.json").is_file()
    bad = subprocess.run([L2M, "data", "babilong", "--babi-dir", str(stories), "--haystack", str(tmp_path / "no"),
                          "--lengths", "1k", "--out", str(tmp_path / "b2")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "haystack path not found" in bad.stderr
    assert not (tmp_path / "b2").exists()
    (tmp_path / "no-questions").mkdir()
    (tmp_path / "no-questions" / "qa1_x_train.txt").write_text("1 Mary moved.\n2 John left.\n")
    bad = subprocess.run([L2M, "data", "babilong", "--babi-dir", str(tmp_path / "no-questions"), "--haystack",
                          str(hay_file), "--lengths", "0k", "--out", str(tmp_path / "b3")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "ends without a question" in bad.stderr, bad.stderr
    assert not (tmp_path / "b3").exists()


@pytest.mark.slow
def test_train_runs_through_two_curriculum_stages_on_babilong(stories, tmp_path):
    """`l2m train` on a built BABILong-style set (own generator, real books where present)."""
    hay = str(BOOKS / "austen") if BOOKS.is_dir() else str(stories)
    data = tmp_path / "bl"
    build(str(stories), [hay], [0, 1024], ["qa1"], 200, 8, TOKENIZER, str(data))
    out = subprocess.run([L2M, "train", "--config", "babilong-curriculum", f"data.qa.path={data}",
                          f"run.root={tmp_path / 'runs'}", "train.max_tokens=120000", "train.val_every_steps=8",
                          "train.log_every_steps=1", "data.curriculum=[{start_tokens: 0, segments: 5}, "
                          "{start_tokens: 61440, segments: 10}]", "data.val_samples=16"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [r for r in csv.DictReader(open(tmp_path / "runs" / "babilong-curriculum" / "logs" / "metrics.csv"))
            if r.get("data/stage")]
    stages = [int(float(r["data/stage"])) for r in rows]
    assert stages == sorted(stages) and set(stages) == {0, 1}
    by_stage = {k: [r for r in rows if int(float(r["data/stage"])) == k] for k in (0, 1)}
    assert {float(r["data/segments"]) for r in by_stage[0]} == {5} and {float(r["data/segments"]) for r in by_stage[1]} == {10}
    assert max(float(r["data/sample_tokens_max"]) for r in by_stage[0]) <= 5 * 128  # 0k samples only
    assert max(float(r["data/sample_tokens_max"]) for r in by_stage[1]) > 5 * 128  # 1k samples joined in
    assert json.loads((tmp_path / "runs" / "babilong-curriculum" / "result.json").read_text())["steps"] > 0
