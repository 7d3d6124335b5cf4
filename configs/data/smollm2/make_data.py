"""Builds the small real-format dataset of configs/smollm2-135m.yaml from Anthropic's HH-RLHF.

    python configs/data/smollm2/make_data.py HARMLESS_BASE_TEST_JSONL_GZ

The input is `harmless-base/test.jsonl.gz` of the anthropics/hh-rlhf repository (commit 354e5c3c, MIT,
`LICENSE` here); it is the one split that repository keeps in git (the helpful-* splits
are LFS pointers). Records whose two transcripts both fit 600 characters are shuffled (seed 0) and cut
into disjoint parts, the preference files kept in HH-RLHF's own transcript format:

  harmless.jsonl         48 pairs, the `harmless` source of the RM mix
  helpful_standin.jsonl  48 other pairs of the same file, tagged `helpfulness`: a stand-in, since no
                         helpfulness split is available; the helpfulness RM and the non-safety eval half
                         are therefore judged on harmlessness preferences too
  sft.jsonl              48 dialogs: the chosen transcript of each (quirks merged by the HH loader)
  prompts.jsonl          16 RLHF prompts (the dialog up to its last user turn), half marked is_safety
  eval_prompts.jsonl     16 held-out prompts, built the same way

The dataset contains offensive content, as the source repository warns.
"""

from __future__ import annotations

import gzip
import json
import random
import sys
from collections import Counter
from pathlib import Path

from llama_rlhf.data.formats import parse_hh_transcript

MAX_CHARS = 600
SIZES = {"harmless": 48, "helpful_standin": 48, "sft": 48, "prompts": 16, "eval_prompts": 16}


def main(src: str) -> None:
    out = Path(__file__).parent
    with gzip.open(src, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    quirks: Counter = Counter()
    usable = []
    for i, r in enumerate(rows):
        if max(len(r["chosen"]), len(r["rejected"])) > MAX_CHARS or r["chosen"] == r["rejected"]:
            continue
        try:
            msgs = parse_hh_transcript(r["chosen"], f"row {i}", "chosen", quirks)
            parse_hh_transcript(r["rejected"], f"row {i}", "rejected", quirks)
        except ValueError:
            continue
        if all(m["content"].strip() for m in msgs):
            usable.append((i, r, msgs))
    random.Random(0).shuffle(usable)
    parts, start = {}, 0
    for name, n in SIZES.items():
        parts[name], start = usable[start:start + n], start + n

    def write(name: str, objs) -> None:
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for o in objs:
                f.write(json.dumps(o, ensure_ascii=False) + "\n")

    write("harmless", [r for _, r, _ in parts["harmless"]])
    write("helpful_standin", [r for _, r, _ in parts["helpful_standin"]])
    write("sft", [{"messages": m} for _, _, m in parts["sft"]])
    for name in ("prompts", "eval_prompts"):
        write(name, [{"id": f"hh-harmless-test-{i}", "messages": m[:-1], "is_safety": k % 2 == 0}
                     for k, (i, _, m) in enumerate(parts[name])])
    print(f"{len(rows)} records, {len(usable)} usable; wrote " + ", ".join(f"{k} {len(v)}" for k, v in parts.items()))


if __name__ == "__main__":
    main(sys.argv[1])
