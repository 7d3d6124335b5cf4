"""Tokenizer training text for the embedded world, and the shipped copy of it.

`corpus_text(world)` covers every word, number, template, response form and instruction the
world can emit (samples come from the training split only). The shipped file
`llama_rlhf/data/corpus/world_corpus.txt` is this text for the default world; a test checks that it
never goes stale. Regenerate it with:

    python -m llama_rlhf.data.world.corpus
"""

from __future__ import annotations

import random
from pathlib import Path

from . import gatt, helpful, safety
from .lexicon import LIST_WORDS, MAX_NUMBER, NUMBER_WORDS, TABLES
from .records import HELPFUL_KINDS
from .risks import RISKS
from .world import World, build_world

CORPUS_PATH = Path(__file__).resolve().parent.parent / "corpus" / "world_corpus.txt"
SAMPLES_PER_TEMPLATE = 3


def _vocabulary() -> list[str]:
    lines = [
        " ".join(str(i) for i in range(MAX_NUMBER + 1)),
        " ".join(NUMBER_WORDS),
        " ".join(LIST_WORDS),
    ]
    lines += [" ".join(f"{k} {v}" for k, v in rows) for rows in TABLES.values()]
    lines += [f"{helpful.ANSWER_PREFIX} {i}." for i in range(MAX_NUMBER + 1)]
    return lines


def _helpful_lines(pools: dict, rng: random.Random) -> list[str]:
    lines = []
    for kind in HELPFUL_KINDS:
        items = pools[kind]
        if kind == "lookup":
            picks = [(it, None) for it in items]  # small table: every trained fact and phrasing
        else:
            by_name: dict[str, list[dict]] = {}
            for it in items:
                by_name.setdefault(helpful.template_name(it), []).append(it)
            picks = [
                (rng.choice(by_name[name]), t)
                for name in sorted(by_name)
                for t in range(len(helpful.TEMPLATES[name]))
                for _ in range(SAMPLES_PER_TEMPLATE)
            ]
        for it, t in picks:
            text, meta = helpful.render(it, rng, template=t)
            lines += [text, helpful.canonical_answer(meta), helpful.wrong_answer(meta, rng)[0]]
    return lines + list(helpful.RAMBLE_OPENERS) + list(helpful.RAMBLE_CLOSERS)


def _safety_lines(pools: dict, rng: random.Random) -> list[str]:
    lines = [f"{name}: {desc}." for name, desc in safety.CATEGORIES.items()]
    lines += [safety.render(it)[0] for it in pools["unsafe"]]
    for risk in RISKS:
        lines.append(safety.good_refusal({"risk": risk.name}, rng))
    lines += list(safety.BARE_REFUSALS) + list(safety.GENERIC_REFUSALS) + list(safety.COMPLIANCES)
    return lines


def _gatt_lines(pools: dict, rng: random.Random) -> list[str]:
    lines = []
    for iid in gatt.instruction_ids():
        lines += [gatt.instruction_text(iid, p) for p in range(2)]
        for kind in gatt.compatible_kinds(iid, HELPFUL_KINDS):
            _, meta = helpful.render(rng.choice(pools[kind]), rng)
            lines.append(gatt.apply(iid, meta))
    return lines


def corpus_text(world: World) -> str:
    """Representative text of the whole `world`, for training the tokenizer: one sentence per line."""
    rng = random.Random(f"{world.seed}:corpus")
    pools = world.pools["train"]
    sections = [_vocabulary(), _helpful_lines(pools, rng), _safety_lines(pools, rng), _gatt_lines(pools, rng)]
    for dialog in world.gatt_dialogs("train", n=12):
        sections.append([m["content"] for m in dialog.messages()])
    return "\n".join(line for section in sections for line in section) + "\n"


def write_corpus(path: Path = CORPUS_PATH) -> Path:
    """Write the default world's corpus to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(corpus_text(build_world()), encoding="utf-8")
    return path


if __name__ == "__main__":
    out = write_corpus()
    print(f"wrote {out} ({out.stat().st_size} bytes)")
