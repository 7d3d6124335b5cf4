"""Helpful requests with checkable answers: arith, count, reverse, sort, lookup, echo.

An *item* is a task's content (numbers, words, lookup key) without its phrasing; it carries a
`content_key` (what held-out splits keep disjoint) and a `stratum` (what splits are balanced over).
`render` turns an item into (user text, judge meta). Difficulty varies on purpose: echo and lookup
are easy, reverse and count middling, sort and arithmetic hard for a tiny model.
"""

from __future__ import annotations

import random

from .lexicon import LIST_WORDS, MAX_NUMBER, TABLES, table_values

ANSWER_PREFIX = "The answer is"

TEMPLATES: dict[str, tuple[str, ...]] = {
    "add": (
        "What is {a} plus {b}?",
        "Add {a} and {b}.",
        "Compute {a} + {b}.",
        "What is the sum of {a} and {b}?",
    ),
    "sub": (
        "What is {a} minus {b}?",
        "Subtract {b} from {a}.",
        "Compute {a} - {b}.",
        "What is left if you take {b} away from {a}?",
    ),
    "count": (
        "How many words are in this list: {items}?",
        "Count the words: {items}.",
        "How many items are there in: {items}?",
        "Tell me how many words you see: {items}.",
    ),
    "reverse": (
        "Reverse this list: {items}.",
        "Say these words in reverse order: {items}.",
        "Write the list backwards: {items}.",
        "Reverse the order of: {items}.",
    ),
    "sort_num": (
        "Sort these numbers from smallest to largest: {items}.",
        "Put these numbers in order, smallest first: {items}.",
        "Sort the numbers: {items}.",
        "Order from low to high: {items}.",
    ),
    "sort_word": (
        "Sort these words in alphabetical order: {items}.",
        "Put these words in A to Z order: {items}.",
        "Sort the words: {items}.",
        "Order these words from A to Z: {items}.",
    ),
    "echo": (
        "Repeat these words: {items}.",
        "Say these words back to me: {items}.",
        "Copy this list: {items}.",
        "Echo the words: {items}.",
    ),
    "capital": (
        "What is the capital of {k}?",
        "Name the capital city of {k}.",
        "Which city is the capital of {k}?",
        "Tell me the capital of {k}.",
    ),
    "colour": (
        "What colour is {art} {k}?",
        "What is the colour of {art} {k}?",
        "Tell me the colour of {art} {k}.",
        "Which colour is a ripe {k}?",
    ),
    "sound": (
        "What sound does {art} {k} make?",
        "What does {art} {k} say?",
        "Which sound does {art} {k} make?",
        "Tell me the sound {art} {k} makes.",
    ),
    "opposite": (
        "What is the opposite of {k}?",
        "Give the opposite of the word {k}.",
        "Which word means the opposite of {k}?",
        "Tell me the opposite of {k}.",
    ),
}

# Relative frequency of each helpful kind in prompt sets.
KIND_WEIGHTS = {"arith": 0.26, "count": 0.14, "reverse": 0.14, "sort": 0.14, "lookup": 0.2, "echo": 0.12}
LIST_LENGTHS = {"count": (2, 7), "reverse": (2, 5), "echo": (2, 5), "sort": (2, 5)}


def _item(kind: str, content_key: str, stratum: str, **fields) -> dict:
    return {"kind": kind, "content_key": content_key, "stratum": stratum, **fields}


def _list_pool(kind: str, rng: random.Random, per_length: int) -> list[dict]:
    lo, hi = LIST_LENGTHS[kind]
    pool: list[dict] = []
    for n in range(lo, hi + 1):
        sort_types = ("num", "word") if kind == "sort" else ("",)
        for st in sort_types:
            seen: set[tuple] = set()
            for _ in range(per_length * 20):  # bounded retries: small spaces saturate
                if len(seen) >= per_length:
                    break
                if st == "num":
                    items = tuple(str(x) for x in rng.sample(range(MAX_NUMBER + 1), n))
                else:
                    items = tuple(rng.sample(LIST_WORDS, n))
                if items in seen:
                    continue
                seen.add(items)
                stratum = f"{kind}:{st}:{n}" if st else f"{kind}:{n}"
                pool.append(_item(kind, f"{kind}:{' '.join(items)}", stratum, items=list(items), sort_type=st))
    return pool


def enumerate_items(kind: str, rng: random.Random, per_length: int = 60) -> list[dict]:
    """All items of one helpful kind (arith and lookup exhaustively, lists sampled without repeats)."""
    if kind == "arith":
        out = [
            _item("arith", f"arith:add:{a}:{b}", "arith:add", op="add", a=a, b=b)
            for a in range(MAX_NUMBER + 1) for b in range(MAX_NUMBER + 1 - a)
        ]
        out += [
            _item("arith", f"arith:sub:{a}:{b}", "arith:sub", op="sub", a=a, b=b)
            for a in range(MAX_NUMBER + 1) for b in range(a + 1)
        ]
        return out
    if kind == "lookup":
        # The phrasing is part of the content: every fact can be seen in training under some
        # phrasings and asked on held-out prompts under another.
        return [
            _item("lookup", f"lookup:{t}:{k}:{i}", f"lookup:{t}:{k}", table=t, key=k, value=v, template=i)
            for t, rows in TABLES.items() for k, v in rows for i in range(len(TEMPLATES[t]))
        ]
    return _list_pool(kind, rng, per_length)


def gold_of(item: dict):
    """The gold answer: an int, a word, or a list of words."""
    kind = item["kind"]
    if kind == "arith":
        return item["a"] + item["b"] if item["op"] == "add" else item["a"] - item["b"]
    if kind == "count":
        return len(item["items"])
    if kind == "reverse":
        return list(reversed(item["items"]))
    if kind == "echo":
        return list(item["items"])
    if kind == "sort":
        return sorted(item["items"], key=int) if item["sort_type"] == "num" else sorted(item["items"])
    if kind == "lookup":
        return item["value"].lower()
    raise ValueError(f"not a helpful kind: {kind}")


def answer_type(kind: str) -> str:
    return {"arith": "number", "count": "number", "lookup": "word"}.get(kind, "list")


def template_name(item: dict) -> str:
    """Which TEMPLATES entry phrases an item."""
    kind = item["kind"]
    if kind == "arith":
        return item["op"]
    if kind == "lookup":
        return item["table"]
    return f"sort_{item['sort_type']}" if kind == "sort" else kind


def render(item: dict, rng: random.Random, template: int | None = None) -> tuple[str, dict]:
    """(user text, judge meta) for an item; the phrasing is drawn from `rng` unless fixed by the
    item (lookup) or by `template`."""
    kind = item["kind"]
    tpls = TEMPLATES[template_name(item)]
    if kind == "lookup":
        tpl = tpls[item["template"]]
    else:
        tpl = tpls[template] if template is not None else rng.choice(tpls)
    if kind == "arith":
        text = tpl.format(a=item["a"], b=item["b"])
    elif kind == "lookup":
        text = tpl.format(k=item["key"], art="an" if item["key"][0] in "aeiou" else "a")
    else:
        text = tpl.format(items=" ".join(item["items"]))
    meta = {
        "answer_type": answer_type(kind),
        "gold": gold_of(item),
        "content_key": item["content_key"],
        "stratum": item["stratum"],
    }
    if kind == "lookup":
        meta["choices"] = [v.lower() for v in table_values(item["table"])]
    if "items" in item:
        meta["items"] = list(item["items"])
    return text, meta


def payload_text(gold) -> str:
    """The bare answer, e.g. '7', 'paris', 'sun dog cat'."""
    if isinstance(gold, list):
        return " ".join(str(x) for x in gold)
    return str(gold)


def canonical_answer(meta: dict) -> str:
    """The correct response in canonical form: 'The answer is 7.'"""
    gold = meta["gold"]
    text = payload_text(gold)
    if meta["answer_type"] == "word":
        text = _display_word(text, meta)
    return f"{ANSWER_PREFIX} {text}."


def _display_word(word: str, meta: dict) -> str:
    # Capitals are proper nouns: show them capitalised as in the table.
    return word.capitalize() if meta.get("stratum", "").startswith("lookup:capital") else word


def wrong_gold(meta: dict, rng: random.Random) -> tuple[object, str]:
    """A plausible wrong gold value (a near-miss number, another table value, a wrong list) and its error type."""
    gold = meta["gold"]
    kind = meta["answer_type"]
    if kind == "number":
        cands = [gold + d for d in (-3, -2, -1, 1, 2, 3) if 0 <= gold + d <= MAX_NUMBER]
        # Near misses are the common mistake: weight distance 1 highest.
        weights = [1.0 / abs(c - gold) for c in cands]
        return rng.choices(cands, weights=weights)[0], "wrong_number"
    if kind == "word":
        return rng.choice([c for c in meta["choices"] if c != gold]), "wrong_word"
    return _wrong_list(meta, rng), "wrong_order"


RAMBLE_OPENERS = (  # 12+ words each, closers 10+: every rambling answer passes the judge's 25-word limit
    "Well, that is a good question and I am happy to help you with it.",
    "Let me think about this carefully, step by step, before I give my answer.",
    "Sure, I would be glad to help with this one as clearly as I can.",
)
RAMBLE_CLOSERS = (
    "I hope this helps, and let me know if you need anything else.",
    "Feel free to ask me again if you want more detail on any part.",
)


def rambling_answer(meta: dict, rng: random.Random, wrong: bool = False) -> str:
    """An answer buried in filler (over the judge's rambling limit): the correct one, or a wrong one."""
    answer = wrong_answer(meta, rng)[0] if wrong else canonical_answer(meta)
    return f"{rng.choice(RAMBLE_OPENERS)} {answer} {rng.choice(RAMBLE_CLOSERS)}"


def wrong_answer(meta: dict, rng: random.Random) -> tuple[str, str]:
    """A plausible but wrong response in canonical form, and its error type."""
    wrong, error = wrong_gold(meta, rng)
    return canonical_answer({**meta, "gold": wrong}), error


def _wrong_list(meta: dict, rng: random.Random) -> list[str]:
    gold, items = list(meta["gold"]), list(meta.get("items", meta["gold"]))
    options: list[list[str]] = []
    if items != gold:
        options.append(items)  # the typical failure: echo the input unchanged
    if len(gold) >= 2:
        i = rng.randrange(len(gold) - 1)
        options.append(gold[:i] + [gold[i + 1], gold[i]] + gold[i + 2:])  # items are distinct
        options.append(gold[:-1])  # dropped the last word
    shuffled = gold[:]
    for _ in range(10):
        rng.shuffle(shuffled)
        if shuffled != gold:
            options.append(shuffled)
            break
    return rng.choice(options) if options else gold[:-1]
