"""Read the standard bAbI format: `ID text` lines, questions `ID question<TAB>answer<TAB>supporting ids`.

IDs count 1, 2, 3… within a story; an ID of 1 begins a new story. Supporting ids name earlier statements
of the same story. Every problem is reported as one line, `file:line: what is wrong`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from l2m_train.data import DataError

_FILE = re.compile(r"^(qa\d+)_(.+)_([^_]+)\.txt$")  # qa1_single-supporting-fact_train.txt
ASK = "Question: {} Answer:"  # how a question is put to the model; its answer follows after a space


@dataclass(frozen=True)
class Question:
    task: str  # "qa1" … from the file name
    story: int  # index of the story within its file, from 0
    line: int  # 1-based line number of the question in the file
    facts: tuple[str, ...]  # the story's statements before this question, in order (and, when kept, its questions)
    supporting: tuple[int, ...]  # indices into `facts`, in the order the file lists them
    question: str
    answer: str


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def read_babi_file(path: str | Path, keep_questions: bool = False) -> list[Question]:
    """All questions of one bAbI file, each with the facts of its story so far.

    keep_questions: the story's earlier questions stay among its facts, answered (`ASK` then the answer), where
    the file has them, so a sample of a late question also holds the earlier ones with their answers.
    """
    path = Path(path)
    match = _FILE.match(path.name)
    task = match.group(1) if match else path.stem
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read bAbI file {path}: {err.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {data[err.start]:#04x})") from None
    if not text.strip():
        raise DataError(f"{path}:1: empty file, expected bAbI lines 'ID text'")

    questions: list[Question] = []
    story, previous_id = -1, 0
    facts: list[str] = []
    fact_of_id: dict[int, int] = {}  # statement ID -> index into facts, for the current story
    for number, raw in enumerate(text.splitlines(), start=1):
        raw = raw.rstrip()  # the real files carry stray trailing spaces and tabs
        if not raw:
            continue
        where = f"{path}:{number}"
        head, _, body = raw.partition(" ")
        if not head.isdigit() or not body.strip():
            raise DataError(f"{where}: expected 'ID text', got '{_clip(raw)}'")
        line_id = int(head)
        if line_id == 1:
            story, facts, fact_of_id = story + 1, [], {}
        elif line_id != previous_id + 1:
            expected = "1 (a story starts at 1)" if story < 0 else f"{previous_id + 1} or 1 (a new story)"
            raise DataError(f"{where}: ID {line_id} does not follow ID {previous_id}; expected {expected}")
        previous_id = line_id

        if "\t" not in body:
            fact_of_id[line_id] = len(facts)
            facts.append(body.strip())
            continue
        fields = [f.strip() for f in body.split("\t")]
        if len(fields) != 3 or not all(fields):
            raise DataError(f"{where}: a question needs 3 tab-separated fields 'question<TAB>answer<TAB>ids', "
                            f"got {len(fields)}: '{_clip(raw)}'")
        question, answer, ids = fields
        supporting = []
        for item in ids.split():
            if not item.isdigit() or int(item) not in fact_of_id:
                raise DataError(f"{where}: supporting id '{item}' is not an earlier statement of this story")
            supporting.append(fact_of_id[int(item)])
        questions.append(Question(task, story, number, tuple(facts), tuple(supporting), question, answer))
        if keep_questions:
            facts.append(f"{ASK.format(question)} {answer}")
    if not questions:
        raise DataError(f"{path}:{number}: the file ends without a question ('ID question<TAB>answer<TAB>ids')")
    return questions


def task_files(babi_dir: str | Path, tasks: list[str] | None = None, split: str = "train") -> dict[str, Path]:
    """Task ("qa1") -> its qa1_*_{split}.txt file in `babi_dir`; all tasks found (by number) when `tasks` is None."""
    babi_dir = Path(babi_dir)
    if not babi_dir.is_dir():
        raise DataError(f"bAbI directory not found: {babi_dir}")
    found: dict[str, Path] = {}
    for path in babi_dir.iterdir():
        match = _FILE.match(path.name)
        if not match or match.group(3) != split:
            continue
        if match.group(1) in found:
            raise DataError(f"two files for {match.group(1)} ({split}) in {babi_dir}: {found[match.group(1)].name}, "
                            f"{path.name}")
        found[match.group(1)] = path
    if tasks is None:
        if not found:
            raise DataError(f"no bAbI files qaN_*_{split}.txt in {babi_dir}")
        return {task: found[task] for task in sorted(found, key=lambda t: int(t[2:]))}
    missing = [t for t in tasks if t not in found]
    if missing:
        raise DataError(f"no {split} file for {', '.join(missing)} in {babi_dir} "
                        f"(found: {', '.join(sorted(found, key=lambda t: int(t[2:]))) or 'none'})")
    return {task: found[task] for task in dict.fromkeys(tasks)}


def read_babi_dir(babi_dir: str | Path, tasks: list[str] | None = None, split: str = "train",
                  keep_questions: bool = False) -> dict[str, list[Question]]:
    """The questions of each task's {split} file, keyed by task (keep_questions: as `read_babi_file`)."""
    return {task: read_babi_file(path, keep_questions) for task, path in task_files(babi_dir, tasks, split).items()}
