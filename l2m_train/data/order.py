"""The global data order: which sample sits at each position of the run, whatever the number of ranks.

Position i draws a source by the mixture weights, then one of that source's pools allowed at the current
curriculum stage (uniformly); the pool hands out its samples in a seeded permutation, epoch after epoch.
Every draw is a pure function of (seed, i) and the counts already taken from each pool, so the whole
state is `{"position", "tokens", "taken", "skip"}`: global, tiny, and enough to resume on any number of ranks.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from l2m_train.data.sample import Sample


@dataclass
class Pool:
    """Samples of one kind and length: `get(i)` for i in range(size), or any i ≥ 0 when size is None."""

    key: str  # stable across runs: it seeds the pool's permutation and names its count in the state
    size: int | None
    get: Callable[[int], Sample]
    inputs: Callable[[int], int]  # positions sample i needs (`Sample.inputs`), known without building the sample


@dataclass
class OrderState:
    position: int = 0  # global positions drawn so far
    tokens: int = 0  # real (non-padding) input tokens trained so far, all ranks: the curriculum's clock
    taken: dict[str, int] = field(default_factory=dict)  # samples handed out per pool
    skip: int = 0  # micro-steps already trained of the optimizer step that starts here (0 between steps)

    def as_dict(self) -> dict:
        return {"position": self.position, "tokens": self.tokens, "taken": dict(self.taken), "skip": self.skip}

    @classmethod
    def from_dict(cls, d: dict) -> "OrderState":
        taken = {k: int(v) for k, v in d["taken"].items()}
        return cls(int(d["position"]), int(d["tokens"]), taken, int(d.get("skip", 0)))  # no skip: saved between steps


class GlobalOrder:
    def __init__(self, seed: int, weights: list[float]):
        self.seed = seed
        self.weights = np.asarray(weights, dtype=np.float64) / sum(weights)
        self._permutations: dict[str, tuple[int, np.ndarray]] = {}  # pool → (epoch, its permutation)

    def draw(self, state: OrderState, pools: list[list[Pool]], count: int) -> list[tuple[Pool, int]]:
        """The next `count` (pool, index) pairs; `pools[k]` are source k's pools at this stage. Advances state."""
        picked = []
        for _ in range(count):
            pool, index = self.peek(state, pools)
            self.advance(state, pool)
            picked.append((pool, index))
        return picked

    def peek(self, state: OrderState, pools: list[list[Pool]]) -> tuple[Pool, int]:
        """The (pool, index) at the state's position, without advancing it."""
        rng = np.random.default_rng([self.seed, state.position])
        source = int(rng.choice(len(self.weights), p=self.weights))
        pool = pools[source][int(rng.integers(len(pools[source])))]
        return pool, self._index(pool, state.taken.get(pool.key, 0))

    @staticmethod
    def advance(state: OrderState, pool: Pool) -> None:
        """Past the position just peeked, which drew from `pool`."""
        state.taken[pool.key] = state.taken.get(pool.key, 0) + 1
        state.position += 1

    def _index(self, pool: Pool, t: int) -> int:
        if pool.size is None:
            return t
        epoch, offset = divmod(t, pool.size)
        cached = self._permutations.get(pool.key)
        if cached is None or cached[0] != epoch:  # only the current epoch of each pool is ever needed
            seed = [self.seed, zlib.crc32(pool.key.encode()), epoch]
            cached = self._permutations[pool.key] = (epoch, np.random.default_rng(seed).permutation(pool.size))
        return int(cached[1][offset])
