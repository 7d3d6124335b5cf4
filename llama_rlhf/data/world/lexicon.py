"""The world's fixed vocabulary: numbers, list words and lookup tables.

Kept deliberately small (a few hundred distinct words overall) so that a ~3M-parameter model
can learn the tasks in minutes. Every list here is a tuple: iteration order is part of determinism.
"""

from __future__ import annotations

MAX_NUMBER = 20  # every number a prompt or a gold answer contains lies in 0..MAX_NUMBER

# Nouns used in count / reverse / echo / word-sort lists (short, common, distinct first letters
# are not required: sorting compares whole words).
LIST_WORDS = (
    "cat", "dog", "sun", "tree", "book", "fish", "bird", "cup", "hat", "star",
    "moon", "boat", "car", "ball", "door", "key", "milk", "rain", "shoe", "egg",
    "box", "pen", "bed", "leaf",
)

# Lookup tables: name -> ((key, value), ...). Made-up countries make memorisation the only route.
TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "capital": (
        ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"),
        ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Norland", "Velo"), ("Zamir", "Oska"),
        ("Tarnia", "Brell"), ("Quorra", "Madi"),
    ),
    "colour": (
        ("banana", "yellow"), ("apple", "red"), ("lime", "green"), ("grape", "purple"),
        ("orange", "orange"), ("lemon", "yellow"), ("cherry", "red"), ("kiwi", "green"),
        ("blueberry", "blue"), ("plum", "purple"),
    ),
    "sound": (
        ("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("sheep", "baa"),
        ("owl", "hoot"), ("pig", "oink"), ("lion", "roar"), ("horse", "neigh"), ("frog", "croak"),
    ),
    "opposite": (
        ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("day", "night"),
        ("wet", "dry"), ("old", "new"), ("open", "closed"), ("light", "dark"), ("happy", "sad"),
    ),
}


def table_values(table: str) -> tuple[str, ...]:
    """Distinct values of a lookup table, in table order."""
    seen: list[str] = []
    for _, v in TABLES[table]:
        if v not in seen:
            seen.append(v)
    return tuple(seen)


NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)
