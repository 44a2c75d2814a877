"""Does a trained model's memory hold where each person is, and for how many facts? A probe, fitted on one set of qa1
stories and scored on another, reads each person's place from the memory that the answer's segment reads, for every
person whose latest fact lies wholly in the segments already written (so the memory is its only way there). The
scores by how long ago that fact was written tell the two ways a memory can fail apart: if the probe reads the places
of facts two and more back as well as the latest, the memory holds them and the model's read is what fails; if it
cannot, the writes lost them. An analysis of trained runs (docs/RESULTS.md, rung 3), not a test.

    python benchmarks/memory_probe.py runs/lm2 --fit-babi-dir data/babi-generated --fit-samples 6000 \
        --babi-dir ../shared/data/babi/en-10k --babi-split train --holdout 0.1 --samples 1000 --lengths 0k

The probe reads the slots as a memory read does: per person, a few queries attend over the slots (RMS-normalised),
and a linear map of what they read gives the place. It is fitted on the --fit-babi-dir stories (e.g. the generated
ones the model trained on) and scored on the others, so it cannot pass by remembering stories.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from memory_writes import add_sample_arguments, memory_banks
from torch import Tensor, nn

from l2m_train.cli.arguments import positive_int
from l2m_train.data import DataError
from l2m_train.data.tokenizer import TextTokenizer
from l2m_train.eval.babilong import Row, exact_answers, rows_from_babi
from l2m_train.model import MemoryDecoder
from l2m_train.train.checkpoint_layout import CheckpointError, load_model

POOLED_FROM = 4  # "4+" pools the facts (or writes) this far back and further


def people_in_memory(row: Row, tokenizer: TextTokenizer, segment_len: int) -> tuple[int, list[tuple[str, str, int, int, bool]]]:
    """The segments written before the answer's segment, and per person whose latest fact (a qa1 fact: "<person> went
    to the <place>.") lies wholly in them: (person, place, facts after that one, writes since it was written: 1 when
    the last write before the answer's segment wrote it, whether the question asks about this person)."""
    written = (row["answer_start"] - 1) // segment_len  # the answer is predicted from the position before it
    latest = {}
    for i, (a, b) in enumerate(row["facts"]):
        words = re.findall(r"[A-Za-z]+", tokenizer.decode(row["input_ids"][a:b]))
        latest[words[0]] = words[-1], i, b
    last, asked = len(row["facts"]) - 1, max(row["supporting"])  # qa1: the asked person's latest fact supports the answer
    return written, [(person, place, last - i, written - (b - 1) // segment_len, i == asked)
                     for person, (place, i, b) in latest.items() if b <= written * segment_len]


@dataclass
class Examples:
    memory: Tensor  # N × S × d: the memory the answer's segment reads (one bank, or the banks' slots side by side)
    person: list[str]
    place: list[str]
    facts_after: Tensor  # N
    writes_since: Tensor  # N
    row: Tensor  # N: the row each example comes from
    asked: Tensor  # N: whether that row's question asks about this person


@torch.no_grad()
def collect(model: MemoryDecoder, rows: list[Row], tokenizer: TextTokenizer, batch: int = 32) -> dict[str, Examples]:
    """Per memory bank (and "all": every bank's slots together), an example per person held in memory per row."""
    groups = defaultdict(list)  # rows with as many segments written run together, cut where their answer's segment starts
    for n, row in enumerate(rows):
        written, people = people_in_memory(row, tokenizer, model.cfg.segment_len)
        if people:
            groups[written].append((n, people))
    banks = memory_banks(model)
    memory: dict[str, list[Tensor]] = {bank: [] for bank in banks}
    columns: dict[str, list] = defaultdict(list)
    for written, items in sorted(groups.items()):
        for at in range(0, len(items), batch):
            chunk = items[at:at + batch]
            idx = torch.as_tensor(np.stack([rows[n]["input_ids"][:written * model.cfg.segment_len] for n, _ in chunk]))
            state = model(idx).state.memory
            for j, (n, people) in enumerate(chunk):
                for example in people:
                    for bank, m in zip(banks, state):
                        memory[bank].append(m[j])
                    for name, value in zip(("person", "place", "facts_after", "writes_since", "asked"), example):
                        columns[name].append(value)
                    columns["row"].append(n)
    stacked = {bank: torch.stack(ms) for bank, ms in memory.items()}
    if len(banks) > 1:
        stacked["all"] = torch.cat([F.rms_norm(m, m.shape[-1:]) for m in stacked.values()], dim=1)
    numbers = {name: torch.tensor(columns[name]) for name in ("facts_after", "writes_since", "row", "asked")}
    return {bank: Examples(m, columns["person"], columns["place"], **numbers) for bank, m in stacked.items()}


class Probe(nn.Module):
    """Where is person p? p's `heads` queries attend over the slots; a linear map of what they read gives the place."""

    def __init__(self, d: int, people: int, places: int, heads: int = 4):
        super().__init__()
        self.query = nn.Parameter(torch.randn(people, heads, d) / d ** 0.5)
        self.out = nn.Linear(heads * d, places)

    def forward(self, memory: Tensor, person: Tensor) -> Tensor:
        memory = F.rms_norm(memory, memory.shape[-1:])
        weights = torch.einsum("nhd,nsd->nhs", self.query[person], memory).softmax(-1)
        return self.out(torch.einsum("nhs,nsd->nhd", weights, memory).flatten(1))


def fit_and_score(fit: Examples, test: Examples, answered: list[bool], epochs: int = 40, batch: int = 512,
                  seed: int = 0) -> dict:
    """Fit a probe on `fit` (AdamW, mini-batches), score it on `test`: accuracy overall and on the fit set, by facts
    after and by writes since the person's latest fact ([probe right, examples]), and on the questions' own people
    beside the model's answers (`answered`: per test row, whether the model answered it), by facts after ([model
    right, probe right, examples]): where the probe reads what the model does not, the read is what fails."""
    people, places = sorted(set(fit.person)), sorted(set(fit.place))
    def encode(ex: Examples) -> tuple[Tensor, Tensor, Tensor]:  # people and places the fit set never saw are left out
        keep = torch.tensor([p in people and q in places for p, q in zip(ex.person, ex.place)])
        codes = torch.tensor([(people.index(p), places.index(q)) if k else (0, 0) for p, q, k in zip(ex.person, ex.place, keep)])
        return keep, codes[:, 0], codes[:, 1]
    torch.manual_seed(seed)
    probe = Probe(fit.memory.shape[-1], len(people), len(places))
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-2, weight_decay=0.01)
    _, who, where = encode(fit)
    for _ in range(epochs):
        for b in torch.randperm(len(who)).split(batch):
            opt.zero_grad()
            F.cross_entropy(probe(fit.memory[b], who[b]), where[b]).backward()
            opt.step()
    with torch.no_grad():
        fit_right = (probe(fit.memory, who).argmax(-1) == where).float().mean().item()
        keep, who, where = encode(test)
        right = (probe(test.memory, who).argmax(-1) == where) & keep
    def pooled(distance: Tensor, among: Tensor) -> dict[str, Tensor]:
        distance = distance.clamp(max=POOLED_FROM)
        return {f"{n}+" if n == POOLED_FROM else str(n): among & (distance == n) for n in sorted(set(distance[among].tolist()))}
    model_right = torch.tensor(answered)[test.row]
    asked = keep & test.asked
    return {"accuracy": right.sum().item() / max(int(keep.sum()), 1), "fit_accuracy": fit_right, "examples": int(keep.sum()),
            "fit_examples": len(fit.person), "places": len(places),
            "by_facts_after": {n: [int(right[m].sum()), int(m.sum())] for n, m in pooled(test.facts_after, keep).items()},
            "by_writes_since": {n: [int(right[m].sum()), int(m.sum())] for n, m in pooled(test.writes_since, keep).items()},
            "asked_by_facts_after": {n: [int(model_right[m].sum()), int(right[m].sum()), int(m.sum())]
                                     for n, m in pooled(test.facts_after, asked).items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories, checkpoints or exports of memory models")
    add_sample_arguments(parser, tasks=False)
    parser.add_argument("--fit-babi-dir", required=True, help="the bAbI files the probe is fitted on (all their "
                        "training stories); --babi-dir's are the ones it is scored on")
    parser.add_argument("--fit-samples", type=positive_int, default=6000, help="samples (questions) to fit on, per "
                        "length (default: 6000)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    cells = lambda by: "  ".join(f"{n}: {c}/{t}" for n, (c, t) in by.items())  # noqa: E731
    for run in args.runs:
        try:
            model, cfg, tokenizer = load_model(run)
            draw = lambda babi_dir, samples, **split: rows_from_babi(babi_dir, args.haystack, ["qa1"], args.lengths,  # noqa: E731
                                                                     samples, tokenizer, **split)
            fit_rows = draw(args.fit_babi_dir, args.fit_samples, split="train")
            test_rows = draw(args.babi_dir, args.samples, split=args.babi_split, holdout=args.holdout)
        except (CheckpointError, DataError, ValueError) as err:
            raise SystemExit(f"memory_probe: {err}") from None
        if cfg.model.memory.kind == "none":
            raise SystemExit(f"{run}: a model without memory (memory.kind=none) has nothing to probe")
        model.eval()
        fit, test = collect(model, fit_rows, tokenizer), collect(model, test_rows, tokenizer)
        answered = exact_answers(model, test_rows)
        results[run] = {bank: fit_and_score(fit[bank], test[bank], answered) for bank in fit}
        print(f"\n{run}: a person's place read from memory, {len(test_rows)} scored samples ({len(fit_rows)} fitted on)")
        for bank, r in results[run].items():
            print(f"  {bank:7} {r['accuracy']:.1%} (fit {r['fit_accuracy']:.1%}; chance {1 / r['places']:.1%})  "
                  f"by facts after: {cells(r['by_facts_after'])}  by writes since: {cells(r['by_writes_since'])}")
            print("          the asked person, by facts after (model · probe of examples): " + "  ".join(
                f"{n}: {m} · {p} of {t}" for n, (m, p, t) in r["asked_by_facts_after"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
