"""The global data order: which sample sits at each position of the run, whatever the number of ranks.

Position i draws a source by the mixture weights, then one of that source's pools allowed at the current
curriculum stage (uniformly); the pool hands out its samples in a seeded permutation, epoch after epoch.
Every draw is a pure function of (seed, i) and the counts already taken from each pool, so the whole
state is `{"position", "tokens", "taken"}`: global, tiny, and enough to resume on any number of ranks.
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


@dataclass
class OrderState:
    position: int = 0  # global positions drawn so far
    tokens: int = 0  # positions of model input consumed so far (padding included): the curriculum's clock
    taken: dict[str, int] = field(default_factory=dict)  # samples handed out per pool

    def as_dict(self) -> dict:
        return {"position": self.position, "tokens": self.tokens, "taken": dict(self.taken)}

    @classmethod
    def from_dict(cls, d: dict) -> "OrderState":
        return cls(int(d["position"]), int(d["tokens"]), {k: int(v) for k, v in d["taken"].items()})


class GlobalOrder:
    def __init__(self, seed: int, weights: list[float]):
        self.seed = seed
        self.weights = np.asarray(weights, dtype=np.float64) / sum(weights)
        self._permutations: dict[str, tuple[int, np.ndarray]] = {}  # pool → (epoch, its permutation)

    def draw(self, state: OrderState, pools: list[list[Pool]], count: int) -> list[tuple[Pool, int]]:
        """The next `count` (pool, index) pairs; `pools[k]` are source k's pools at this stage. Advances state."""
        picked = []
        for _ in range(count):
            rng = np.random.default_rng([self.seed, state.position])
            source = int(rng.choice(len(self.weights), p=self.weights))
            pool = pools[source][int(rng.integers(len(pools[source])))]
            t = state.taken.get(pool.key, 0)
            picked.append((pool, self._index(pool, t)))
            state.taken[pool.key] = t + 1
            state.position += 1
        return picked

    def _index(self, pool: Pool, t: int) -> int:
        if pool.size is None:
            return t
        epoch, offset = divmod(t, pool.size)
        cached = self._permutations.get(pool.key)
        if cached is None or cached[0] != epoch:  # only the current epoch of each pool is ever needed
            seed = [self.seed, zlib.crc32(pool.key.encode()), epoch]
            cached = self._permutations[pool.key] = (epoch, np.random.default_rng(seed).permutation(pool.size))
        return int(cached[1][offset])
