"""Generate bAbI-style stories (tasks qa1-qa5) in the standard bAbI format: no download, any amount, seeded.

A small simulation of people, places and objects writes each story and asks only questions whose answer
the story's facts determine; supporting ids name the facts that determine it. The output is a pure
function of (task, stories, seed), and each task draws from its own random stream.

  qa1 single-supporting-fact  Where is Mary?                               (her last move)
  qa2 two-supporting-facts    Where is the football?                       (pick-up or drop, the carrier's move)
  qa3 three-supporting-facts  Where was the football before the kitchen?   (pick-up, the move there, the one before)
  qa4 two-arg-relations       What is north of the bathroom?               (2 statements, 1 question per story)
  qa5 three-arg-relations     Who gave the milk to Fred?                   (the give)

examples:
  l2m data babi-generate --out data/babi-gen
  l2m data babi-generate --tasks qa1 qa2 --stories 2000 --out data/babi-gen
  l2m data babi-generate --tasks qa1 --stories 200 --seed 1 --split test --out data/babi-gen
"""
from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from pathlib import Path

from l2m_train.data import DataError
from l2m_train.io import publish_text

HELP = "generate bAbI-style stories (no download), in the standard bAbI format"
TASKS = {"qa1": "single-supporting-fact", "qa2": "two-supporting-facts", "qa3": "three-supporting-facts",
         "qa4": "two-arg-relations", "qa5": "three-arg-relations"}

PEOPLE = ("Mary", "John", "Sandra", "Daniel")
GIVERS = ("Bill", "Fred", "Jeff", "Mary")  # qa5's cast, as in the original
PLACES = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office")
OBJECTS = ("apple", "football", "milk")
MOVE = ("moved to", "went to", "went back to", "journeyed to", "travelled to")
GET = ("picked up", "got", "grabbed", "took")
PUT = ("dropped", "discarded", "put down", "left")
GIVE = ("gave", "handed", "passed")
DIRECTIONS = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}

QUESTIONS_PER_STORY = 5
MAX_STATEMENTS = 300  # a story that finds no answerable question by then is dropped and drawn again

Ask = tuple[str, str, tuple[int, ...]]  # question, answer, supporting IDs


class World:
    """People moving between places and handling objects, written down as the statements of one story.

    The state holds, for everything a question may ask about, the IDs of the statements that establish it.
    """

    def __init__(self, rng: random.Random, people: tuple[str, ...]):
        self.rng, self.people = rng, people
        self.lines: list[str] = []
        self.where: dict[str, str] = {}  # person -> place, once they have moved
        self.moved: dict[str, int] = {}  # person -> ID of their last move
        self.holder: dict[str, str] = {}  # object -> the person holding it
        self.got: dict[str, int] = {}  # object -> ID of the pick-up or give that put it in the holder's hands
        self.lying: dict[str, tuple[str, int, int]] = {}  # object put down -> (place, drop ID, dropper's move ID)
        # object -> the places it is known to have been, in order, each with the IDs showing how it got there
        self.trail: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
        self.gives: list[tuple[str, str, str, int]] = []  # (giver, object, recipient, ID)

    def say(self, text: str) -> int:
        self.lines.append(f"{len(self.lines) + 1} {text}")
        return len(self.lines)

    def ask(self, question: str, answer: str, support: tuple[int, ...]) -> None:
        self.lines.append(f"{len(self.lines) + 1} {question}\t{answer}\t{' '.join(map(str, support))}")

    def statements(self) -> int:
        return sum("\t" not in line for line in self.lines)

    # Actions: each candidate list holds the argument tuples of the actions possible now.
    def can_move(self) -> list[tuple]:
        return [(p,) for p in self.people]

    def move(self, person: str) -> None:
        place = self.rng.choice([p for p in PLACES if p != self.where.get(person)])
        line = self.say(f"{person} {self.rng.choice(MOVE)} the {place}.")
        for obj, holder in self.holder.items():
            if holder == person:  # carried along: from the place of the carrier's previous move to this one
                self.trail[obj].append((place, (self.got[obj], line, self.moved[person])))
        self.where[person], self.moved[person] = place, line

    def can_get(self) -> list[tuple]:
        # Only someone whose place is known, and only an object lying there (or never seen yet).
        return [(p, o) for p in self.where for o in OBJECTS
                if o not in self.holder and self.lying.get(o, (self.where[p],))[0] == self.where[p]]

    def get(self, person: str, obj: str) -> None:
        there = " there" if self.rng.random() < 0.5 else ""
        self.got[obj] = self.say(f"{person} {self.rng.choice(GET)} the {obj}{there}.")
        self.holder[obj] = person
        self.lying.pop(obj, None)
        self.trail.setdefault(obj, [(self.where[person], ())])

    def can_put(self) -> list[tuple]:
        return [(p, o) for o, p in self.holder.items()]

    def put(self, person: str, obj: str) -> None:
        there = " there" if self.rng.random() < 0.2 else ""
        line = self.say(f"{person} {self.rng.choice(PUT)} the {obj}{there}.")
        del self.holder[obj]
        self.lying[obj] = (self.where[person], line, self.moved[person])

    def can_give(self) -> list[tuple]:
        return [(p, o, q) for o, p in self.holder.items() for q in self.where if q != p and self.where[q] == self.where[p]]

    def give(self, giver: str, obj: str, recipient: str) -> None:
        line = self.say(f"{giver} {self.rng.choice(GIVE)} the {obj} to {recipient}.")
        self.holder[obj], self.got[obj] = recipient, line
        self.gives.append((giver, obj, recipient, line))

    def step(self, weights: dict[str, float]) -> None:
        """One statement: an action kind drawn by weight among those possible, then one of its candidates."""
        options = {kind: c for kind, w in weights.items() if w and (c := getattr(self, f"can_{kind}")())}
        kind = self.rng.choices(list(options), [weights[k] for k in options])[0]
        getattr(self, kind)(*self.rng.choice(options[kind]))


def _where_person(w: World) -> list[Ask]:
    return [(f"Where is {p}?", place, (w.moved[p],)) for p, place in w.where.items()]


def _where_object(w: World) -> list[Ask]:
    asks = [(f"Where is the {o}?", w.where[p], (w.got[o], w.moved[p])) for o, p in w.holder.items()]
    return asks + [(f"Where is the {o}?", place, (drop, move)) for o, (place, drop, move) in w.lying.items()]


def _where_before(w: World) -> list[Ask]:
    asks = []
    for obj, trail in w.trail.items():
        places = [place for place, _ in trail]
        for i in range(1, len(trail)):
            if places.count(places[i]) == 1:  # "before the kitchen" is ambiguous once it was there twice
                asks.append((f"Where was the {obj} before the {places[i]}?", places[i - 1], trail[i][1]))
    return asks


def _who_gave(w: World) -> list[Ask]:
    """Questions about the latest give, each only where every give so far agrees on its answer."""
    if not w.gives:
        return []
    giver, obj, recipient, line = w.gives[-1]

    def unique(answer: int, **match: str) -> bool:
        keys = {"giver": 0, "obj": 1, "recipient": 2}
        return len({g[answer] for g in w.gives if all(g[keys[k]] == v for k, v in match.items())}) == 1

    templates = [
        (f"Who gave the {obj} to {recipient}?", giver, unique(0, obj=obj, recipient=recipient)),
        (f"What did {giver} give to {recipient}?", obj, unique(1, giver=giver, recipient=recipient)),
        (f"Who did {giver} give the {obj} to?", recipient, unique(2, giver=giver, obj=obj)),
        (f"Who gave the {obj}?", giver, unique(0, obj=obj)),
        (f"Who received the {obj}?", recipient, unique(2, obj=obj)),
    ]
    return [(question, answer, (line,)) for question, answer, ok in templates if ok]


# task -> (cast, action weights, the questions answerable now)
SIMULATED: dict[str, tuple[tuple[str, ...], dict[str, float], Callable[[World], list[Ask]]]] = {
    "qa1": (PEOPLE, {"move": 1}, _where_person),
    "qa2": (PEOPLE, {"move": 3, "get": 1, "put": 1}, _where_object),
    "qa3": (PEOPLE, {"move": 3, "get": 1, "put": 0.5}, _where_before),
    "qa5": (GIVERS, {"move": 2, "get": 1, "put": 0.5, "give": 3}, _who_gave),
}


def _simulated_story(task: str, rng: random.Random) -> list[str]:
    people, weights, questions = SIMULATED[task]
    while True:
        world, asked = World(rng, people), set()
        for _ in range(QUESTIONS_PER_STORY):
            for _ in range(rng.randint(1, 3)):  # 1-3 statements, more until a question is answerable
                world.step(weights)
            while not (asks := questions(world)) and world.statements() < MAX_STATEMENTS:
                world.step(weights)
            if not asks:
                break
            ask = rng.choice([a for a in asks if a not in asked] or asks)  # repeat a question only for want of others
            asked.add(ask)
            world.ask(*ask)
        else:
            return world.lines


def _relations_story(rng: random.Random) -> list[str]:
    """qa4: two statements placing three locations on a grid, one question about a direct neighbour."""
    while True:
        a, b, c = rng.sample(PLACES, 3)
        first, second = rng.choice(list(DIRECTIONS)), rng.choice(list(DIRECTIONS))
        pos = {b: (0, 0), a: DIRECTIONS[first]}
        facts = [(a, first, b)]  # (x, d, y): the x is d of the y
        anchor = rng.choice((a, b))
        dx, dy = DIRECTIONS[second]
        if rng.random() < 0.5:
            pos[c] = (pos[anchor][0] + dx, pos[anchor][1] + dy)
            facts.append((c, second, anchor))
        else:
            pos[c] = (pos[anchor][0] - dx, pos[anchor][1] - dy)
            facts.append((anchor, second, c))
        if pos[c] in (pos[a], pos[b]):
            continue  # two places on one spot: draw again
        asks = []
        for x in pos:
            for d, (ux, uy) in DIRECTIONS.items():
                # Everything d of x along the line; a single one is x's neighbour and the answer is unique.
                beyond = [y for y in pos if y != x and _ahead(pos[y][0] - pos[x][0], pos[y][1] - pos[x][1], ux, uy)]
                if len(beyond) == 1:
                    y = beyond[0]
                    support = next(i for i, f in enumerate(facts, start=1) if {f[0], f[2]} == {x, y})
                    asks += [(f"What is {d} of the {x}?", y, support), (f"What is the {x} {OPPOSITE[d]} of?", y, support)]
        question, answer, support = rng.choice(asks)
        lines = [f"{i} The {x} is {d} of the {y}." for i, (x, d, y) in enumerate(facts, start=1)]
        return lines + [f"3 {question}\t{answer}\t{support}"]


def _ahead(dx: int, dy: int, ux: int, uy: int) -> bool:
    """Whether offset (dx, dy) lies strictly in direction (ux, uy)."""
    return dx * uy == dy * ux and dx * ux + dy * uy > 0


def _check_tasks(tasks: list[str]) -> None:
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise DataError(f"unknown bAbI task {', '.join(unknown)}; available: {' '.join(TASKS)}")


def generate_stories(task: str, stories: int, seed: int) -> list[str]:
    """`stories` stories of `task` as bAbI lines (IDs, tabs), one story after another."""
    _check_tasks([task])
    if stories < 1:
        raise DataError(f"the number of stories must be at least 1, got {stories}")
    rng = random.Random(f"babi-generate:{seed}:{task}")  # str seeds hash stably: one stream per (seed, task)
    lines: list[str] = []
    for _ in range(stories):
        lines += _relations_story(rng) if task == "qa4" else _simulated_story(task, rng)
    return lines


def write_babi_dir(out_dir: str | Path, tasks: list[str], stories: int, seed: int,
                   split: str = "train") -> list[Path]:
    """Write qaN_<name>_<split>.txt for each task (atomically) and return the paths."""
    _check_tasks(tasks)
    paths = []
    for task in dict.fromkeys(tasks):
        path = Path(out_dir) / f"{task}_{TASKS[task]}_{split}.txt"
        publish_text(path, "\n".join(generate_stories(task, stories, seed)) + "\n")
        paths.append(path)
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="directory for the qaN_<name>_<split>.txt files")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), metavar="TASK",
                        help=f"tasks to generate (default: all: {' '.join(TASKS)})")
    parser.add_argument("--stories", type=int, default=1000, metavar="N", help="stories per task (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--split", default="train", help="split name in the file names (default: train)")


def run(args: argparse.Namespace) -> int:
    for path in write_babi_dir(args.out, args.tasks, args.stories, args.seed, args.split):
        lines = path.read_text().splitlines()
        stories = sum(line.startswith("1 ") for line in lines)
        questions = sum("\t" in line for line in lines)
        print(f"{path}: {stories:,} stories, {questions:,} questions")
    return 0
