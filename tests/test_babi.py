"""The bAbI reader (on every real file and on malformed ones) and the bAbI-style generator (checked by replay)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from l2m_train.data import DataError
from l2m_train.data_pipelines.babi import Question, read_babi_dir, read_babi_file, task_files
from l2m_train.data_pipelines.babi_generate import TASKS, generate_stories, write_babi_dir

BABI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "babi"
L2M = str(Path(sys.executable).parent / "l2m")


@pytest.fixture(scope="module")
def real() -> dict[str, dict[str, list[Question]]]:
    if not BABI.is_dir():
        pytest.skip(f"../shared/data/babi not found: {BABI} (the bAbI v1.2 tasks, en/ and en-10k/)")
    return {name: read_babi_dir(BABI / name) for name in ("en", "en-10k")}


def test_reader_parses_every_real_file(real):
    en, en10k = real["en"], real["en-10k"]
    assert list(en) == [f"qa{i}" for i in range(1, 21)]
    assert list(en10k) == [f"qa{i}" for i in range(1, 21) if i != 3]  # qa3 is missing from en-10k
    assert all(len(qs) == 1000 for qs in en.values()) and all(len(qs) == 10000 for qs in en10k.values())
    stories = {name: len({q.story for q in qs}) for name, qs in (("qa1", en["qa1"]), ("qa4", en["qa4"]),
                                                                 ("qa17", en["qa17"]), ("10k qa1", en10k["qa1"]))}
    assert stories == {"qa1": 200, "qa4": 1000, "qa17": 125, "10k qa1": 2000}
    for questions in (*en.values(), *en10k.values()):
        for q in questions:
            assert q.supporting and all(0 <= i < len(q.facts) for i in q.supporting), q
            assert q.question.endswith("?") and q.answer == q.answer.strip() and "\t" not in q.question
    for q in en["qa1"] + en10k["qa1"]:  # "Where is Mary?": the support is Mary's move to the answer
        subject = q.question.split()[-1].rstrip("?")
        assert subject in q.facts[q.supporting[0]] and q.answer in q.facts[q.supporting[0]], q
    assert {"apple,football", "n,e"} <= {q.answer for q in en["qa8"] + en["qa19"]}


def test_reader_fields_match_the_file(real):
    first = real["en"]["qa1"][0]
    assert first == Question("qa1", 0, 3, ("Mary moved to the bathroom.", "John went to the hallway."), (0,),
                             "Where is Mary?", "bathroom")
    second_story = next(q for q in real["en"]["qa1"] if q.story == 1)
    assert second_story.line == 18 and second_story.facts == ("Sandra travelled to the office.",
                                                              "Sandra went to the bathroom.")
    qa2 = real["en"]["qa2"][0]  # "7 Where is the football? <TAB>garden<TAB>3 6": ids 3 and 6 are facts 2 and 5
    assert qa2.supporting == (2, 5) and qa2.facts[5] == "Mary went back to the garden." and len(qa2.facts) == 6


def test_task_files_order_and_errors(tmp_path):
    for name in ("qa10_x_train.txt", "qa2_y_train.txt", "qa1_z_train.txt", "qa1_z_test.txt", "notes.txt"):
        (tmp_path / name).write_text("1 A.\n2 Q?\ta\t1\n")
    assert list(task_files(tmp_path)) == ["qa1", "qa2", "qa10"]
    assert task_files(tmp_path, ["qa10", "qa1"], "train")["qa1"].name == "qa1_z_train.txt"
    assert list(task_files(tmp_path, split="test")) == ["qa1"]
    with pytest.raises(DataError, match=rf"qa3 in {re.escape(str(tmp_path))}"):
        task_files(tmp_path, ["qa1", "qa3"])
    with pytest.raises(DataError, match="not found"):
        read_babi_dir(tmp_path / "absent")


def test_reader_tolerates_trailing_whitespace(tmp_path):
    path = tmp_path / "qa1_t_train.txt"
    path.write_text("1 Mary went to the office. \t\n2 Where is Mary? \toffice\t1 \t\n1 John left.\n")
    assert read_babi_file(path) == [Question("qa1", 0, 2, ("Mary went to the office.",), (0,), "Where is Mary?", "office")]


def test_kept_questions_stay_answered_among_the_facts_and_supporting_ids_still_name_statements(tmp_path):
    path = tmp_path / "qa1_t_train.txt"
    path.write_text("1 Mary went to the office.\n2 John moved to the hallway.\n3 Where is Mary?\toffice\t1\n"
                    "4 Mary went back to the garden.\n5 Where is Mary?\tgarden\t4\n6 Where is John?\thallway\t2\n")
    plain, kept = read_babi_file(path), read_babi_file(path, keep_questions=True)
    assert [q.facts for q in plain][1:] == [("Mary went to the office.", "John moved to the hallway.",
                                             "Mary went back to the garden.")] * 2
    asked = "Question: Where is Mary? Answer: office"
    assert kept[0] == plain[0]  # nothing was asked before the first question
    assert kept[1].facts == ("Mary went to the office.", "John moved to the hallway.", asked, "Mary went back to the garden.")
    assert kept[2].facts == kept[1].facts + ("Question: Where is Mary? Answer: garden",)
    for p, k in zip(plain, kept):  # the supporting statements are the same sentences, questions among them or not
        assert [k.facts[i] for i in k.supporting] == [p.facts[i] for i in p.supporting]


@pytest.mark.parametrize("content, line, message", [
    (b"1 Mary moved.\nx Mary went.\n", 2, "expected 'ID text', got 'x Mary went.'"),
    (b"1 A.\n2\n", 2, "expected 'ID text'"),
    (b"2 A.\n", 1, "ID 2 does not follow"),
    (b"1 A.\n2 B.\n4 C.\n", 3, "ID 4 does not follow ID 2"),
    (b"1 A.\n2 Where?\tA\n", 2, "3 tab-separated fields"),
    (b"1 A.\n2 Where?\tx\t1\t1\n", 2, "3 tab-separated fields"),
    (b"1 A.\n2 Where?\tx\t3\n3 B.\n", 2, "supporting id '3' is not an earlier statement"),  # forward
    (b"1 A.\n2 Where?\tx\t1\n3 Why?\ty\t2\n", 3, "supporting id '2'"),  # a question
    (b"1 A.\n2 B.\n3 C.\n1 D.\n2 Q?\tx\t3\n", 5, "supporting id '3'"),  # the previous story
    (b"1 A.\n2 Q?\tx\tone\n", 2, "supporting id 'one'"),
    (b"", 1, "empty file"),
    (b"\n \n", 1, "empty file"),
    (b"1 A.\n2 B.\n\n", 3, "the file ends without a question"),  # statements only: nothing to ask
    (b"1 A.\n2 \xff.\n", 2, "not UTF-8"),
])
def test_malformed_lines_name_file_and_line(tmp_path, content, line, message):
    path = tmp_path / "qa1_bad_train.txt"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_babi_file(path)
    assert str(err.value).startswith(f"{path}:{line}: ") and message in str(err.value) and "\n" not in str(err.value)


# An independent replay of qa1-qa3 stories, parsing the sentences the way a reader of the text would.
MOVE = re.compile(r"(\w+) (?:moved|went|went back|journeyed|travelled) to the (\w+)\.")
GET = re.compile(r"(\w+) (?:picked up|got|grabbed|took) the (\w+)(?: there)?\.")
PUT = re.compile(r"(\w+) (?:dropped|discarded|put down|left) the (\w+)(?: there)?\.")


def replay(q: Question) -> tuple[str, tuple[int, ...]]:
    """The answer and supporting fact indices a question of qa1-qa3 must have, from its facts alone."""
    place, moved = {}, {}  # person -> place, index of their last move
    holder, lying, got = {}, {}, {}  # object -> person; object -> (place, drop, dropper's move); object -> pick-up
    trail = {}  # object -> [(place, supporting indices for having come there)]
    for i, fact in enumerate(q.facts):
        if m := MOVE.fullmatch(fact):
            person, to = m.groups()
            for obj in [o for o, p in holder.items() if p == person]:
                trail[obj].append((to, (got[obj], i, moved[person])))
            place[person], moved[person] = to, i
        elif m := GET.fullmatch(fact):
            person, obj = m.groups()
            assert obj not in holder and lying.get(obj, (place[person],))[0] == place[person], f"impossible: {fact}"
            holder[obj], got[obj] = person, i
            lying.pop(obj, None)
            trail.setdefault(obj, [(place[person], ())])
        elif m := PUT.fullmatch(fact):
            person, obj = m.groups()
            assert holder.pop(obj) == person, f"impossible: {fact}"
            lying[obj] = (place[person], i, moved[person])
        else:
            raise AssertionError(f"unknown sentence: {fact}")
    if m := re.fullmatch(r"Where is (\w+)\?", q.question):
        return place[m[1]], (moved[m[1]],)
    if m := re.fullmatch(r"Where is the (\w+)\?", q.question):
        obj = m[1]
        return (place[holder[obj]], (got[obj], moved[holder[obj]])) if obj in holder else (lying[obj][0], lying[obj][1:])
    obj, before = re.fullmatch(r"Where was the (\w+) before the (\w+)\?", q.question).groups()
    places = [p for p, _ in trail[obj]]
    assert places.count(before) == 1 and places.index(before) > 0, f"ambiguous: {q}"
    return places[places.index(before) - 1], trail[obj][places.index(before)][1]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, list[Question]]:
    out = tmp_path_factory.mktemp("babi-gen")
    paths = write_babi_dir(out, list(TASKS), stories=300, seed=0)
    assert [p.name for p in paths] == [f"{t}_{n}_train.txt" for t, n in TASKS.items()]
    return read_babi_dir(out)


def test_generator_is_seeded():
    for task in TASKS:
        assert generate_stories(task, 30, seed=7) == generate_stories(task, 30, seed=7)
        assert generate_stories(task, 30, seed=7) != generate_stories(task, 30, seed=8)
    with pytest.raises(DataError, match="unknown bAbI task qa9; available: qa1 qa2 qa3 qa4 qa5"):
        generate_stories("qa9", 1, 0)


def test_generated_files_round_trip(generated):
    assert list(generated) == list(TASKS)
    for task, questions in generated.items():
        assert len({q.story for q in questions}) == 300
        assert len(questions) == (300 if task == "qa4" else 1500)
        assert all(len(q.facts) == 2 for q in questions) if task == "qa4" else len({len(q.facts) for q in questions}) > 5


@pytest.mark.parametrize("task", ["qa1", "qa2", "qa3"])
def test_generated_answers_and_supports_replay(generated, task):
    for q in generated[task]:
        assert (q.answer, q.supporting) == replay(q), q
        subject = re.search(r"(?:is|the) (\w+) ?(?:before|\?)", q.question)[1]
        assert subject in q.facts[q.supporting[0]], q  # the first support names the person or object asked about
        assert any(q.answer in q.facts[i] for i in q.supporting), q


def test_generated_relations_are_answered_by_their_support(generated):
    opposite = {"north": "south", "south": "north", "east": "west", "west": "east"}
    for q in generated["qa4"]:
        facts = [re.fullmatch(r"The (\w+) is (\w+) of the (\w+)\.", f).groups() for f in q.facts]
        if m := re.fullmatch(r"What is (\w+) of the (\w+)\?", q.question):  # answer is d of x
            direction, x = m.groups()
        else:  # "What is the x d of?": x is d of the answer, so the answer is opposite(d) of x
            x, d = re.fullmatch(r"What is the (\w+) (\w+) of\?", q.question).groups()
            direction = opposite[d]
        assert facts[q.supporting[0]] in {(q.answer, direction, x), (x, opposite[direction], q.answer)}, q
        assert len({facts[0][0], facts[0][2], facts[1][0], facts[1][2]}) == 3  # three places, one shared


def test_generated_gives_are_answered_by_the_latest_matching_give(generated):
    give = re.compile(r"(\w+) (?:gave|handed|passed) the (\w+) to (\w+)\.")
    patterns = [(r"Who gave the (?P<o>\w+) to (?P<r>\w+)\?", "g"), (r"What did (?P<g>\w+) give to (?P<r>\w+)\?", "o"),
                (r"Who did (?P<g>\w+) give the (?P<o>\w+) to\?", "r"), (r"Who gave the (?P<o>\w+)\?", "g"),
                (r"Who received the (?P<o>\w+)\?", "r")]
    for q in generated["qa5"]:
        gives = [dict(zip("gor", m.groups())) | {"i": i} for i, f in enumerate(q.facts) if (m := give.fullmatch(f))]
        match, key = next((m.groupdict(), key) for p, key in patterns if (m := re.fullmatch(p, q.question)))
        fitting = [g for g in gives if all(g[k] == v for k, v in match.items())]
        assert {g[key] for g in fitting} == {q.answer}, q  # every matching give agrees: no ambiguity
        assert q.supporting == (fitting[-1]["i"],), q


def test_cli_writes_files_and_reports_counts(tmp_path):
    command = [L2M, "data", "babi-generate", "--out", str(tmp_path), "--tasks", "qa1", "qa4", "--stories", "20",
               "--seed", "3", "--split", "test"]
    out = subprocess.run(command, check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and "20 stories, 100 questions" in lines[0] and "20 stories, 20 questions" in lines[1]
    written = (tmp_path / "qa1_single-supporting-fact_test.txt").read_text()
    assert written == "\n".join(generate_stories("qa1", 20, 3)) + "\n"
    assert len(read_babi_dir(tmp_path, split="test")["qa4"]) == 20

    bad = subprocess.run([L2M, "data", "babi-generate", "--out", str(tmp_path / "x"), "--tasks", "qa1", "qa42"],
                         check=False, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "unknown bAbI task qa42; available: qa1 qa2 qa3 qa4 qa5" in bad.stderr and not (tmp_path / "x").exists()
