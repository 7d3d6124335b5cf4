"""Item pools and the train / rlhf / eval split, disjoint in content, deterministic per seed.

Every item has a `content_key` (arith: the operation and numbers; lists: the words; lookup: the
fact *and* its phrasing; unsafe: topic, attack vector and phrasing). Items are assigned to splits
within each `stratum` (arith op, list length, lookup fact, risk category x attack vector) by a
seeded hash order, so every stratum with 3+ items reaches every split: every category x vector
pair is red-teamed on held-out prompts, every lookup fact seen in training is asked on held-out
prompts only under a phrasing never trained on.
"""

from __future__ import annotations

import hashlib
import random

from . import helpful, safety
from .records import HELPFUL_KINDS

SPLITS = ("train", "rlhf", "eval")
HELD_OUT_FRACTION = {"rlhf": 0.15, "eval": 0.15}


def stable_hash(*parts) -> int:
    """A hash that does not change across processes (unlike hash() on str)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


def split_items(items: list[dict], seed: int) -> dict[str, list[dict]]:
    """Assign items to SPLITS, balanced within each stratum; every item lands in exactly one split."""
    strata: dict[str, list[dict]] = {}
    for it in items:
        strata.setdefault(it["stratum"], []).append(it)
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for name in sorted(strata):
        group = sorted(strata[name], key=lambda it: stable_hash(seed, it["content_key"]))
        n = len(group)
        if n >= 3:
            n_eval = max(1, round(HELD_OUT_FRACTION["eval"] * n))
            n_rlhf = max(1, round(HELD_OUT_FRACTION["rlhf"] * n))
        else:
            n_eval, n_rlhf = n - 1, 0  # tiny strata: keep one item for training
        out["eval"] += group[:n_eval]
        out["rlhf"] += group[n_eval:n_eval + n_rlhf]
        out["train"] += group[n_eval + n_rlhf:]
    return out


def build_pools(seed: int, list_pool_size: int = 60) -> dict[str, dict[str, list[dict]]]:
    """pools[split][kind] -> items, for every helpful kind and "unsafe"."""
    pools: dict[str, dict[str, list[dict]]] = {s: {} for s in SPLITS}
    for kind in HELPFUL_KINDS:
        items = helpful.enumerate_items(kind, random.Random(f"{seed}:pool:{kind}"), list_pool_size)
        for split, its in split_items(items, seed).items():
            pools[split][kind] = its
    for split, its in split_items(safety.enumerate_items(), seed).items():
        pools[split]["unsafe"] = its
    return pools


class PoolExhausted(ValueError):
    """A non-repeating Cycler ran out: its pool holds `size` items of `kind`."""

    def __init__(self, kind: str, size: int):
        super().__init__(f"pool {kind!r} of {size} items exhausted")
        self.kind, self.size = kind, size


class Cycler:
    """Draws items without replacement; when the pool is exhausted it reshuffles (`repeat=True`, max
    distinctness) or raises PoolExhausted (`repeat=False`: every draw distinct)."""

    def __init__(self, items: list, rng: random.Random, repeat: bool = True, kind: str = ""):
        if not items:
            raise ValueError(f"empty pool {kind!r}")
        self._items, self._rng, self._queue = list(items), rng, []
        self._repeat, self._kind, self._started = repeat, kind, False

    def next(self):
        if not self._queue:
            if self._started and not self._repeat:
                raise PoolExhausted(self._kind, len(self._items))
            self._queue = self._items[:]
            self._rng.shuffle(self._queue)
            self._started = True
        return self._queue.pop()


def quotas(weights: dict[str, float], n: int) -> dict[str, int]:
    """Integer counts summing to n, proportional to weights (largest remainder, ties by name)."""
    total = sum(weights.values())
    raw = {k: n * w / total for k, w in weights.items()}
    out = {k: int(v) for k, v in raw.items()}
    rest = n - sum(out.values())
    for k in sorted(raw, key=lambda k: (-(raw[k] - out[k]), k))[:rest]:
        out[k] += 1
    return out
