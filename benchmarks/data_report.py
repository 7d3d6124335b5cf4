"""Load preference sources strictly and print what the run would print at start: each source's load
report (records, HH-RLHF quirks merged or kept) and the two reward models' data mix per source.

    .venv/bin/python benchmarks/data_report.py hh_harmless_test.jsonl:harmless uf.jsonl:open_source ...

Each argument is `path[:kind]` (kind: helpfulness, safety, harmless, open_source; default helpfulness).
The real HH-RLHF file is not in the repository (a sample is: tests/fixtures/hh_rlhf/); e.g. the
harmless-base test split of anthropics/hh-rlhf, gunzipped.
"""

from __future__ import annotations

import argparse
import time

from llama_rlhf.config import build_config
from llama_rlhf.data.loaders import PreferenceOptions, load_preferences
from llama_rlhf.data.mix import mix_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sources", nargs="+", help="path[:kind]")
    args = ap.parse_args()
    specs = []
    for s in args.sources:
        path, _, kind = s.rpartition(":") if s.rsplit(":", 1)[-1] in (
            "helpfulness", "safety", "harmless", "open_source") else (s, "", "helpfulness")
        specs.append({"path": path, "kind": kind})
    cfg = build_config({"data": {"preferences": specs}})
    prefs = []
    for src in cfg.data.preferences:
        t = time.perf_counter()
        safety_side = src.kind in ("safety", "harmless")
        recs, report = load_preferences(src.path, opts=PreferenceOptions(
            is_safety=safety_side, safety_first=safety_side, gap_thresholds=cfg.data.score_gap_thresholds))
        for p in recs:
            p.source, p.mix_role = src.path, src.kind
        prefs += recs
        print(f"{report}  [{time.perf_counter() - t:.1f}s]")
    for line in mix_report(prefs, cfg.reward.helpful_mix_other, cfg.reward.safety_mix_helpful_ratio):
        print(line)


if __name__ == "__main__":
    main()
