"""The embedded world: every data set the pipeline needs, deterministic for a seed.

    from llama_rlhf.data.world import build_world, judge
    world = build_world(seed=0)       # or build_world(cfg.data.world, seed=cfg.run.seed)
    sft = world.sft_records()            # 1500 demonstrations, 30% wrong or unsafe on purpose
    prefs = world.preference_records()   # 2000 annotated pairs (helpfulness + safety, 4-level ratings)
    rl = world.rlhf_prompts()            # 256 prompts for rejection sampling / PPO
    ev = world.eval_prompts()            # 128 held-out prompts, scored with judge(prompt, response)
    dialogs = world.gatt_dialogs()       # multi-turn Ghost Attention dialogs

Each method draws from its own seeded stream, so results do not depend on call order. Training
sets come from the "train" split, RLHF prompts from "rlhf", evaluation from "eval": the three are
disjoint in ids and in content (see splits.py).
"""

from __future__ import annotations

import random

from llama_rlhf.config import ConfigError, WorldConfig

from . import gatt, helpful, safety
from .candidates import preference_for, sft_demo
from .records import HELPFUL_KINDS, Preference, Prompt, SFTRecord
from .splits import Cycler, PoolExhausted, build_pools, quotas


def build_world(config: WorldConfig | None = None, seed: int = 0, **overrides) -> World:
    """A World from the config tree's `WorldConfig` (defaults if None), with field overrides validated
    like the config itself: `build_world(cfg.data.world, seed=cfg.run.seed)`, `build_world(n_sft=24)`."""
    base = WorldConfig() if config is None else config
    if not isinstance(base, WorldConfig):
        raise TypeError(f"build_world: expected a llama_rlhf.config.WorldConfig, got {type(base).__name__}")
    if overrides:
        base = WorldConfig.model_validate({**base.model_dump(), **overrides})
    return World(base, seed)


class World:
    """Generates the world's data sets; see the module docstring."""

    def __init__(self, config: WorldConfig | None = None, seed: int = 0):
        self.config = WorldConfig() if config is None else config
        self.seed = seed
        self.pools = build_pools(self.seed, self.config.list_pool_size)

    # -- prompt sets -----------------------------------------------------------------------------

    def _rng(self, *tag) -> random.Random:
        return random.Random(":".join(map(str, (self.seed, *tag))))

    def _kind_weights(self) -> dict[str, float]:
        c = self.config
        w_help = 1.0 - c.safety_fraction - c.gatt_fraction
        total = sum(helpful.KIND_WEIGHTS.values())
        out = {k: w_help * helpful.KIND_WEIGHTS[k] / total for k in HELPFUL_KINDS}
        return {**out, "unsafe": c.safety_fraction, "gatt": c.gatt_fraction}

    def _cyclers(self, split: str, tag: str, repeat: bool = True) -> dict[str, Cycler]:
        return {k: Cycler(v, self._rng(tag, "pool", k), repeat, k) for k, v in self.pools[split].items()}

    def _turn(self, cyclers: dict[str, Cycler], kinds: tuple[str, ...], rng: random.Random):
        kind = rng.choices(kinds, weights=[helpful.KIND_WEIGHTS[k] for k in kinds])[0]
        text, meta = helpful.render(cyclers[kind].next(), rng)
        return kind, text, meta

    def _gatt_prompt(self, pid: str, iid: str, n_turns: int, cyclers, rng) -> Prompt:
        kinds = gatt.compatible_kinds(iid, HELPFUL_KINDS)
        turns = [self._turn(cyclers, kinds, rng) for _ in range(n_turns)]
        prompt = gatt.make_dialog(pid, iid, turns, rng).turn_prompt(n_turns - 1)
        prompt.id = pid
        return prompt

    def prompts(self, split: str, n: int, tag: str, distinct: bool = False) -> list[Prompt]:
        """n prompts from one split with the configured kind mix; ids are f"{tag}-{i:05d}". Items repeat
        only once their pool is used up, or never (`distinct=True`: PoolExhausted instead)."""
        rng = self._rng(tag)
        cyclers = self._cyclers(split, tag, repeat=not distinct)
        instructions = Cycler(gatt.instruction_ids(), self._rng(tag, "instr"))
        counts = quotas(self._kind_weights(), n)
        kinds = [k for k in sorted(counts) for _ in range(counts[k])]
        rng.shuffle(kinds)
        out = []
        for i, kind in enumerate(kinds):
            pid = f"{tag}-{i:05d}"
            if kind == "gatt":
                n_turns = rng.randint(1, self.config.gatt_prompt_max_turns)
                out.append(self._gatt_prompt(pid, instructions.next(), n_turns, cyclers, rng))
            elif kind == "unsafe":
                text, meta = safety.render(cyclers["unsafe"].next())
                out.append(Prompt(pid, [{"role": "user", "content": text}], True, "unsafe", meta))
            else:
                text, meta = helpful.render(cyclers[kind].next(), rng)
                out.append(Prompt(pid, [{"role": "user", "content": text}], False, kind, meta))
        return out

    def rlhf_prompts(self, n: int | None = None) -> list[Prompt]:
        """Prompts for rejection sampling / PPO (split "rlhf")."""
        return self.prompts("rlhf", self.config.n_rlhf if n is None else n, "rlhf")

    def eval_prompts(self, n: int | None = None) -> list[Prompt]:
        """Held-out prompts for measuring progress with the gold judge (split "eval"), all distinct: no
        task item (unsafe request, list, sum, lookup phrasing) appears twice."""
        n = self.config.n_eval if n is None else n
        try:
            return self.prompts("eval", n, "eval", distinct=True)
        except PoolExhausted as e:
            raise ConfigError(f"data.world.n_eval: {n} distinct eval prompts need more {e.kind!r} items than the "
                             f"eval split's {e.size}; lower data.world.n_eval") from None

    # -- training data ---------------------------------------------------------------------------

    def sft_records(self, n: int | None = None, error_rate: float | None = None) -> list[SFTRecord]:
        """SFT demonstrations; exactly round(error_rate * n) of them are wrong or unsafe."""
        n = self.config.n_sft if n is None else n
        rate = self.config.sft_error_rate if error_rate is None else error_rate
        prompts = self.prompts("train", n, "sft")
        rng = self._rng("sft", "demo")
        wrong = set(rng.sample(range(n), round(rate * n)))
        return [sft_demo(p, rng, wrong=i in wrong) for i, p in enumerate(prompts)]

    def preference_records(self, n: int | None = None, noise: float | None = None) -> list[Preference]:
        """Annotated comparisons between candidate responses of known quality (split "train")."""
        n = self.config.n_preferences if n is None else n
        noise = self.config.label_noise if noise is None else noise
        rng = self._rng("pref", "annotate")
        out: list[Preference] = []
        # A few prompts may yield no pair (all ties); draw a margin of spare prompts.
        for p in self.prompts("train", n + n // 10 + 8, "pref"):
            if len(out) == n:
                break
            pref = preference_for(p, rng, noise=noise)
            if pref is not None:
                out.append(pref)
        return out

    # -- Ghost Attention -------------------------------------------------------------------------

    def gatt_dialogs(
        self, split: str = "train", n: int | None = None, min_turns: int | None = None,
        max_turns: int | None = None,
    ) -> list[gatt.GattDialog]:
        """Multi-turn dialogs under one system instruction; held-out ones (split "eval") have
        exactly `gatt_eval_turns` turns unless `min_turns`/`max_turns` say otherwise."""
        c = self.config
        held_out = split != "train"
        n = (c.n_gatt_eval if held_out else c.n_gatt_dialogs) if n is None else n
        lo = min_turns if min_turns is not None else (c.gatt_eval_turns if held_out else c.gatt_min_turns)
        hi = max_turns if max_turns is not None else (c.gatt_eval_turns if held_out else c.gatt_max_turns)
        tag = f"gatt-{split}"
        rng = self._rng(tag)
        cyclers = self._cyclers(split, tag)
        instructions = Cycler(gatt.instruction_ids(), self._rng(tag, "instr"))
        out = []
        for i in range(n):
            iid = instructions.next()
            kinds = gatt.compatible_kinds(iid, HELPFUL_KINDS)
            turns = [self._turn(cyclers, kinds, rng) for _ in range(rng.randint(lo, hi))]
            out.append(gatt.make_dialog(f"{tag}-{i:05d}", iid, turns, rng))
        return out
