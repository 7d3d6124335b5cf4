"""The paper's data mix for the two reward models (section 3.2.2), computed from each pair's source role.

    helpful RM: all helpfulness data, plus `helpful_mix_other` times as many pairs, in equal parts, from
                Meta Safety (role `safety`) and from the open-source data (roles `harmless`, `open_source`)
    safety RM:  all safety and harmless data, plus helpfulness and open-source helpfulness data so that
                they make `safety_mix_helpful_ratio` of the mix (the 90/10 proportion)

Within a part, pairs are taken from each source in proportion to its size (largest remainder), so the
counts per source depend only on the sizes and can be reported before training; which pairs are taken
is a seeded draw. One implementation: the world, files and collected pairs all go through here.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence

ROLES = ("helpfulness", "safety", "harmless", "open_source")
TARGETS = ("helpful", "safety")


def role_of(p) -> str:
    """A pair's role: its source's kind, or (world, untagged files) helpfulness/safety by `is_safety`."""
    return p.mix_role or ("safety" if p.is_safety else "helpfulness")


def label_of(p) -> str:
    """The source name reported in the mix counts: `name [role]`."""
    return f"{p.source or 'data'} [{role_of(p)}]"


def mix_metrics(counts: dict[str, int], prefix: str = "mix/") -> dict[str, int]:
    """Counts keyed for metrics and TensorBoard tags (`name [role]` -> `mix/name/role`)."""
    key = lambda label: re.sub(r"[^\w.\-/]+", "_", label.replace(" [", "/").rstrip("]"))
    return {prefix + key(label): n for label, n in counts.items()}


def _proportional(n: int, sizes: dict[str, int]) -> dict[str, int]:
    """n items over sources in proportion to their sizes (largest remainder, ties by name), capped."""
    total = sum(sizes.values())
    n = min(n, total)
    if n <= 0:
        return {s: 0 for s in sizes}
    exact = {s: n * k / total for s, k in sizes.items()}
    out = {s: int(v) for s, v in exact.items()}
    for s in sorted(sizes, key=lambda s: (out[s] - exact[s], s))[: n - sum(out.values())]:
        out[s] += 1
    return out


def _equal_parts(n: int, a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    """n items, half from group a and half from group b; what one group lacks the other supplies."""
    cap_a, cap_b = sum(a.values()), sum(b.values())
    n = min(n, cap_a + cap_b)
    take_a = min(cap_a, max((n + 1) // 2, n - cap_b))
    return {**_proportional(take_a, a), **_proportional(n - take_a, b)}


def _plan(prefs: Sequence, target: str, helpful_mix_other: float, safety_mix_helpful_ratio: float):
    """(sources taken whole, counts from the mixed-in sources, how many were wanted from those)."""
    if target not in TARGETS:
        raise ValueError(f"reward model: must be one of {TARGETS}, got {target!r}")
    sizes: dict[str, dict[str, int]] = {r: {} for r in ROLES}
    for label, n in sorted(Counter(label_of(p) for p in prefs).items()):
        sizes[label[label.rindex("[") + 1:-1]][label] = n
    if target == "helpful":
        whole = sizes["helpfulness"]
        wanted = round(helpful_mix_other * sum(whole.values()))
        part = _equal_parts(wanted, sizes["safety"], {**sizes["harmless"], **sizes["open_source"]})
    else:
        whole = {**sizes["safety"], **sizes["harmless"]}
        r = safety_mix_helpful_ratio
        wanted = round(sum(whole.values()) * r / (1 - r))
        part = _proportional(wanted, {**sizes["helpfulness"], **sizes["open_source"]})
    return whole, part, wanted


def mix_counts(prefs: Sequence, target: str, helpful_mix_other: float = 1.0,
               safety_mix_helpful_ratio: float = 0.1) -> dict[str, int]:
    """Pairs per source (`label_of`) in the mix of RM `target`; sources taken whole are counted whole."""
    whole, part, _ = _plan(prefs, target, helpful_mix_other, safety_mix_helpful_ratio)
    return {**whole, **part}


def reward_model_mix(prefs: Sequence, target: str, seed: int, helpful_mix_other: float = 1.0,
                     safety_mix_helpful_ratio: float = 0.1) -> list:
    """The pairs RM `target` trains on, drawn per source as `mix_counts` says, shuffled by `seed`."""
    counts = mix_counts(prefs, target, helpful_mix_other, safety_mix_helpful_ratio)
    rng = random.Random(f"{seed}:rm-mix:{target}")
    out = []
    for label, n in counts.items():
        pool = [p for p in prefs if label_of(p) == label]
        out += pool if n == len(pool) else rng.sample(pool, n)
    rng.shuffle(out)
    return out


def mix_report(prefs: Sequence, helpful_mix_other: float = 1.0, safety_mix_helpful_ratio: float = 0.1) -> list[str]:
    """One line per RM: its pair count, the count taken from each source, and any shortfall of the
    mixed-in part (there were fewer such pairs than the proportion asks for)."""
    lines = []
    for target in TARGETS:
        whole, part, wanted = _plan(prefs, target, helpful_mix_other, safety_mix_helpful_ratio)
        counts = {**whole, **part}
        line = f"{target} RM mix: {sum(counts.values())} pairs = " + ", ".join(
            f"{label} {n}" for label, n in counts.items() if n)
        if sum(part.values()) < wanted:
            line += f" (mixed-in part short: {sum(part.values())} of {wanted} wanted)"
        lines.append(line)
    return lines
