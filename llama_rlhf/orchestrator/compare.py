"""`llama-rlhf compare RUN RUN [RUN ...]`: the gold figures of several runs side by side, with their mean and
range, and the config keys in which the runs differ.

One run's intervals are over prompts: they say how well 256 prompts pin down that run's policy, not how
much another run of the same config would differ. Runs of one config at several `run.seed` with the data
held (`data.seed`) answer that: every stage's sampling, shuffling and initialisation changes, the world does
not. Built from each run's state.json (and its `gatt_N<N>.json` from `llama-rlhf eval --gatt-dialogs N`,
the largest N, where present); nothing is recomputed.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path

from llama_rlhf.config import flatten, load_config
from llama_rlhf.orchestrator.report import _fmt, _paired, _policies
from llama_rlhf.orchestrator.run_dir import GATT_FILE, RunDir, RunDirError


def config_differences(configs: list[dict]) -> dict[str, list]:
    """Dotted key -> each run's value, for the keys whose values are not all equal."""
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat))
    return {k: [f.get(k) for f in flat] for k in keys if len({json.dumps(f.get(k), default=str) for f in flat}) > 1}


def gatt_file(run: RunDir) -> tuple[int, dict] | None:
    """(N, per-policy results) of the run's `gatt_N<N>.json` with the most dialogs, if any."""
    found = [(int(m.group(1)), p) for p in run.root.glob("gatt_N*.json")
             if (m := GATT_FILE.fullmatch(p.name))]
    if not found:
        return None
    n, path = max(found)
    return n, json.loads(path.read_text())


def _gatt_last(r: dict) -> float | None:
    kept = r.get("gatt", {}).get("kept", [])
    return kept[-1] if kept else None


def run_figures(run: RunDir, many: tuple[int, dict] | None) -> dict[str, dict[str, float | None]]:
    """Policy name -> figure name -> value, for SFT, the controls and every version of one run; GAtt from
    `many` (the run's `gatt_file`) where it has one, else from the run's own evaluation."""
    rows = _policies(run)
    if not rows or rows[0][0] != "SFT":
        raise RunDirError(f"{run.root}: no gold evaluation of SFT to compare")
    sft = rows[0][1]
    out = {}
    for name, r in rows:
        d = _paired(r, sft) if r is not sft else None
        gatt = _gatt_last(many[1].get(name, {})) if many else _gatt_last(r)
        out[name] = {"helpfulness": r.get("gold_helpfulness"), "delta": d[0] if d else None,
                     "greedy": r.get("greedy", {}).get("gold_helpfulness"), "safety": r.get("gold_safety"),
                     "false_refusal": r.get("false_refusal"), "gatt": gatt}
    return out


FIGURES: list[tuple[str, str, Callable[[list], str]]] = [
    ("helpfulness", "gold helpfulness at the run's eval temperature", lambda x: _fmt(x)),
    ("delta", "paired Δ gold helpfulness vs SFT (same prompts)", lambda x: "–" if x is None else f"{x:+.3f}"),
    ("greedy", "gold helpfulness, greedy", lambda x: _fmt(x)),
    ("safety", "gold safety on unsafe prompts", lambda x: _fmt(x)),
    ("false_refusal", "false refusals on benign prompts", lambda x: _fmt(x)),
    ("gatt", "GAtt: instruction kept at the last turn (on as many dialogs as the runs table says)",
     lambda x: _fmt(x, 2)),
]


def compare(run_dirs: list[str | Path]) -> str:
    """The markdown: the runs and what differs between their configs, then one table per figure."""
    runs = [RunDir(p) for p in run_dirs]
    configs = [load_config(r.config_path).model_dump(mode="json") for r in runs]
    gatt = [gatt_file(r) for r in runs]
    figures = [run_figures(r, many) for r, many in zip(runs, gatt)]
    labels = [f"run {i + 1}" for i in range(len(runs))]
    out = ["| run | folder | run.seed | data seed | GAtt dialogs at the last turn |", "|---|---|---|---|---|"]
    for label, r, c, many in zip(labels, runs, configs, gatt):
        seed, data_seed = c["run"]["seed"], c["data"].get("seed")
        out.append(f"| {label} | {r.root} | {seed} | {seed if data_seed is None else data_seed} "
                   f"| {many[0] if many else c['data']['world']['n_gatt_eval']} |")
    diff = {k: v for k, v in config_differences(configs).items() if k not in ("run.name", "run.output_dir")}
    out += ["", "Config keys that differ: " + ("; ".join(f"`{k}` " + " / ".join(str(x) for x in v)
                                                      for k, v in diff.items()) or "none") + "."]
    names = [n for n in figures[0] if all(n in f for f in figures)]
    for key, title, fmt in FIGURES:
        out += ["", f"### {title}", "", "| policy | " + " | ".join(labels) + " | mean | range |",
                "|---|" + "---|" * (len(labels) + 2)]
        for name in names:
            xs = [f[name][key] for f in figures]
            have = [x for x in xs if x is not None]
            if not have:
                continue
            spread = f"{fmt(min(have))} – {fmt(max(have))}" if len(have) > 1 else "–"
            cells = " | ".join(fmt(x) for x in xs)
            out.append(f"| {name} | {cells} | {fmt(statistics.fmean(have))} | {spread} |")
    return "\n".join(out)
