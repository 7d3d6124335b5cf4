"""`report.md` and PNG plots of a run folder, built from state.json and metrics.jsonl only."""

from __future__ import annotations

import math

from llama_rlhf.algorithms.bootstrap import mean_ci, paired_diff_ci
from llama_rlhf.data.records import RATINGS
from llama_rlhf.orchestrator.run_dir import RunDir


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


GATT_TURNS = (1, 2, 3, 5, 10, 15, 20)
"""The turns the GAtt table shows (the paper evaluates consistency up to 20 turns)."""


def _ci(r: dict, key: str) -> str:
    lo, hi = r.get(f"{key}_ci", [None, None])
    return f"{_fmt(r.get(key))} [{_fmt(lo)}, {_fmt(hi)}]"


def versions(run: RunDir) -> list[tuple[str, dict, bool]]:
    """(name, eval result, trained with GAtt data) for SFT and every completed RLHF version."""
    from llama_rlhf.config import load_config

    cfg = load_config(run.config_path)
    st = run.state()
    out = []
    if "eval/sft" in st["done"]:
        out.append(("SFT", st["results"]["eval/sft"], False))
    v = 1
    while f"v{v}" in st["done"]:
        gatt = cfg.gatt.enabled and v >= cfg.gatt.from_version
        kind = " (RS + PPO)" if v > cfg.iterations.rs_only_until else " (RS)"
        out.append((f"RLHF-V{v}{kind}", st["results"][f"v{v}"]["eval"], gatt))
        v += 1
    return out


RANDOM_PICK = "baseline: V1 with a random pick (no RM)"
"""The random-pick control's row name (its checkpoint is `ckpt/baseline_random_pick`)."""


def baselines(run: RunDir) -> list[tuple[str, dict]]:
    """(name, eval result) of the controls: SFT at the RS temperature, V1 with a random pick."""
    b = run.state()["results"].get("baselines", {})
    out = []
    if "sft_at_rs_temperature" in b:
        out.append(("baseline: SFT at the RS temperature", b["sft_at_rs_temperature"]))
    if "random_pick" in b:
        out.append((RANDOM_PICK, b["random_pick"]["eval"]))
    return out


def _paired(r: dict, ref: dict, metric: str = "helpfulness") -> tuple[float, float, float] | None:
    """Paired difference of per-prompt scores (r - ref) over the prompts both evaluated."""
    a, b = r.get("per_prompt", {}).get(metric, {}), ref.get("per_prompt", {}).get(metric, {})
    ids = [i for i in a if i in b]
    return paired_diff_ci([a[i] for i in ids], [b[i] for i in ids]) if ids else None


def _delta(d) -> str:
    return "–" if d is None else f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]"


def summary_table(run: RunDir) -> str:
    """Every version and control: gold scores with 95% intervals over prompts, and the paired change in
    helpfulness against SFT (same prompts, same seeds)."""
    return gold_table(_policies(run))


def _policies(run: RunDir) -> list[tuple[str, dict]]:
    """(name, eval result) of SFT, the controls, then every version: the gold tables' row order."""
    vs = [(n, r) for n, r, _ in versions(run)]
    return vs[:1] + baselines(run) + vs[1:]


def gold_table(rows: list[tuple[str, dict]]) -> str:
    """(name, gold eval result) rows, the first SFT: the paired change of each against it."""
    out = ["| policy | T | gold helpfulness | Δ helpfulness vs SFT | gold safety (unsafe prompts) | "
           "false refusals (benign prompts) | answer tokens |", "|---|---|---|---|---|---|---|"]
    sft = rows[0][1] if rows else {}
    for name, r in rows:
        out.append(f"| {name} | {_fmt(r.get('temperature'), 1)} | {_ci(r, 'gold_helpfulness')} | "
                   f"{_delta(_paired(r, sft)) if r is not sft else '–'} | {_ci(r, 'gold_safety')} | "
                   f"{_ci(r, 'false_refusal')} | {_fmt(r.get('mean_response_tokens'), 1)} |")
    return "\n".join(out)


def greedy_rows(run: RunDir) -> list[tuple[str, dict]]:
    """(name, greedy gold eval) of every policy the run also judged greedily (`eval.greedy`), SFT first."""
    return [(n, r["greedy"]) for n, r in _policies(run) if "greedy" in r]


def _greedy_section(run: RunDir) -> list[str]:
    rows = greedy_rows(run)
    if not rows:
        return []
    return ["### Greedy answers (T = 0, one per prompt; same prompts and intervals)", "", gold_table(rows), "",
            "By prompt kind, greedy:", "", kind_rows(rows), ""]


def rm_judged_table(run: RunDir) -> str | None:
    """A user's eval prompts (no gold judge): mean RM scores and the RM-judged win rate over SFT."""
    vs = [(n, r) for n, r, _ in versions(run) if r.get("judge") == "reward models"]
    if not vs:
        return None
    rows = ["| version | helpfulness RM σ(r) (helpful prompts) | safety RM σ(r) (safety prompts) | "
            "win rate vs SFT (RM-judged) | mean answer tokens |", "|---|---|---|---|---|"]
    for name, r in vs:
        rows.append(f"| {name} | {_fmt(r.get('rm_helpful'))} | {_fmt(r.get('rm_safety'))} | "
                    f"{_fmt(r.get('rm_win_rate_vs_sft'))} | {_fmt(r.get('mean_response_tokens'), 1)} |")
    return "\n".join(rows)


def kind_table(run: RunDir) -> str:
    """Gold score per prompt kind and version: helpfulness for tasks and GAtt, safety for unsafe."""
    return kind_rows([(n, r) for n, r, _ in versions(run)] + baselines(run))


def kind_rows(vs: list[tuple[str, dict]]) -> str:
    kinds = sorted({k.split("/", 1)[1] for _, r in vs for k in r if k.startswith("gold_by_kind/")})
    if not kinds:
        return "(no per-kind scores in this run)"
    rows = ["| policy | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for name, r in vs:
        rows.append(f"| {name} | " + " | ".join(_fmt(r.get(f"gold_by_kind/{k}")) for k in kinds) + " |")
    return "\n".join(rows)


def rm_table(run: RunDir) -> str:
    """Held-out accuracy by rating level of every reward model the run trained (initial, then retrained
    on each version's new preferences)."""
    st = run.state()["results"]
    models = [(k, st[k]) for k in ("rm_helpful", "rm_safety") if k in st]
    v = 2
    while f"v{v}" in st:
        models += [(f"v{v}/{k}", st[f"v{v}"][k]) for k in ("rm_helpful", "rm_safety") if k in st[f"v{v}"]]
        v += 1
    rows = ["| reward model | accuracy | " + " | ".join(RATINGS) + " |", "|" + "---|" * (len(RATINGS) + 2)]
    for name, r in models:
        cells = [f"{_fmt(r.get(f'accuracy/{x}'))} (n={r.get(f'count/{x}', 0)})" for x in RATINGS]
        rows.append(f"| {name} | {_fmt(r.get('accuracy'))} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def gatt_table(run: RunDir) -> str:
    return gatt_rows_table([(n, r, g) for n, r, g in versions(run)]
                           + [(n, r, False) for n, r in baselines(run) if "gatt" in r])


def gatt_rows_table(vs: list[tuple[str, dict, bool]]) -> str:
    """(name, result with its "gatt" consistency, trained with GAtt data) rows: kept rate at GATT_TURNS."""
    n_turns = max((len(r.get("gatt", {}).get("kept", [])) for _, r, _ in vs), default=0)
    if not n_turns:
        return "(no GAtt evaluation dialogs)"
    turns = [t for t in GATT_TURNS if t <= n_turns]
    rows = ["| policy | GAtt data | " + " | ".join(f"turn {t}" for t in turns) + " |",
            "|---|---|" + "---|" * len(turns)]
    for name, r, gatt in vs:
        kept = r.get("gatt", {}).get("kept", [])
        cells = [_fmt(kept[t - 1], 2) if t <= len(kept) else "–" for t in turns]
        last = _kept_at(r, turns[-1])
        if last:
            m, lo, hi = mean_ci(last)
            cells[-1] = f"{_fmt(m, 2)} [{_fmt(lo, 2)}, {_fmt(hi, 2)}]"
        rows.append(f"| {name} | {'yes' if gatt else 'no'} | " + " | ".join(cells) + " |")
    g = next((r["gatt"] for _, r, _ in vs if r.get("gatt", {}).get("kept")), {})
    dropped = g.get("dropped_exchanges", [])
    note = (f"\n\n{g.get('dialogs')} held-out dialogs, greedy; the system instruction is given once. When the "
            f"history outgrows the prompt budget the oldest exchanges are dropped (the system message always "
            f"stays): {_fmt(dropped[-1], 1)} exchanges dropped on average at turn {len(dropped)}." if dropped else "")
    return "\n".join(rows) + note + _gatt_gain(vs, turns[-1])


def gatt_data_table(run: RunDir) -> str:
    """Per version trained with GAtt data: how many of the answers it trained on keep the instruction (the
    world's checker, never used in training), the Rc-picked answers against all K samples, and by turn."""
    rows = [(n, r) for n, r, control in _rs_results(run) if not control and "gatt_kept_picks" in r]
    if not rows:
        return ""
    turns = sorted({int(t) for _, r in rows for t in r.get("gatt_kept_by_turn", {})})
    out = ["| version | T | kept by the picks | kept by all samples | " + " | ".join(f"turn {t}" for t in turns) + " |",
           "|---|---|---|---|" + "---|" * len(turns)]
    for name, r in rows:
        by_turn = {int(t): v for t, v in r.get("gatt_kept_by_turn", {}).items()}
        cells = [f"{_fmt(by_turn[t][0], 2)} / {_fmt(by_turn[t][1], 2)}" if t in by_turn else "–" for t in turns]
        out.append(f"| {name} | {_fmt(r.get('gatt_temperature'), 1)} | {_fmt(r['gatt_kept_picks'])} | "
                   f"{_fmt(r['gatt_kept_samples'])} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n\n" + GATT_DATA_NOTE


GATT_DATA_NOTE = ("The GAtt training data: each turn sampled K times with the instruction on every user message, "
                  "Rc's pick trained on. Kept: the share of the picks (and of all K samples, what a random pick "
                  "gives) that keep the instruction, by the world's checker; by turn: picks / all samples. An "
                  "answer that drops the instruction teaches the policy to drop it.")


def _kept_at(r: dict, turn: int) -> list[int]:
    """Per dialog, 1 where the answer at `turn` keeps the instruction (empty for runs saved before)."""
    by_dialog = r.get("gatt", {}).get("kept_by_dialog", [])
    return by_dialog[turn - 1] if turn <= len(by_dialog) else []


def _gatt_gain(vs: list[tuple[str, dict, bool]], turn: int) -> str:
    """The last version trained with GAtt data against the last one without, at `turn`, paired over dialogs."""
    kept = [(n, _kept_at(r, turn), g) for n, r, g in vs]
    with_g = [(n, k) for n, k, g in kept if g and k]
    without = [(n, k) for n, k, g in kept if not g and k and n != RANDOM_PICK]
    if not with_g or not without:
        return ""
    (a_name, a), (b_name, b) = with_g[-1], without[-1]
    return (f" At turn {turn} (last column: 95% bootstrap interval over dialogs), {a_name} (GAtt data) vs "
            f"{b_name} (none): paired Δ {_delta(paired_diff_ci(a, b))}.")


def _rs_results(run: RunDir) -> list[tuple[str, dict, bool]]:
    """(name, result, is the random-pick control) of every rejection-sampling version, then the control."""
    st = run.state()["results"]
    out, v = [], 1
    while f"v{v}" in st:
        out.append((f"RLHF-V{v}", st[f"v{v}"], False))
        v += 1
    b = st.get("baselines", {}).get("random_pick")
    return out + ([("random pick (V1 control)", b["fit"], True)] if b else [])


def rs_table(run: RunDir) -> str:
    """Per version: the RS temperature, mean Rc of all samples vs the picked ones, the share of LOGIT(Rc)'s
    variance within prompts (`within_prompt_share`), the share of benign prompts' samples whose Rc is their
    safety score (Rs under `ppo.safety_threshold`), the archive."""
    results = _rs_results(run)
    mixed = any(r.get("sft_mixed_in") for _, r, _ in results)  # the column only where `sft_mix` added any
    rows = ["| version | T | Rc of all samples | Rc of the picks | variance within prompts | "
            "benign samples gated to Rs | archive re-scored | fine-tuning samples | "
            + ("of them SFT demonstrations | " if mixed else "") + "GAtt dialogs | context distillation kept |",
            "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if mixed else "")]
    for name, r, control in results:
        picks = r.get("picked_rc_mean" if control else "rs_best_mean")
        n = f"{r.get('train_samples')} | " + (f"{r.get('sft_mixed_in', 0)} | " if mixed else "")
        rest = (f"– | {n}0 | – |" if control else
                f"{r.get('archive_rescored', 0)} | {n}{r.get('gatt_dialogs', 0)} | "
                f"{r.get('context_distill_kept', 0)}/{r.get('context_distill_candidates', 0)} |")
        rows.append(f"| {name} | {_fmt(r.get('rs_temperature'), 1)} | {_fmt(r.get('rs_reward_mean'))} | "
                    f"{_fmt(picks)} | {_fmt(r.get('rs_within_prompt'))} | {_fmt(r.get('rs_benign_gated'))} | {rest}")
    return "\n".join(rows)


def _pick_cells(q: dict | None) -> str:
    if not q:
        return "– | – | – | – | –"
    lo, hi = q.get("gain_ci", [None, None])
    return (f"{_fmt(q.get('picked'))} | {_fmt(q.get('random'))} | {_fmt(q.get('best'))} | "
            f"{_delta((q.get('gain'), lo, hi))} | {_fmt(q.get('agreement'))} ({q.get('pairs')})")


def pick_table(run: RunDir) -> str:
    """Per version: the reward models' pick among the K samples, judged by gold (`pick_gold`)."""
    rows = [(name, r.get("pick_gold")) for name, r, _ in _rs_results(run)]
    if not any(q for _, q in rows):
        return ""
    out = ["| version | prompts | gold of the pick | of a random sample | of the best of K | pick − random | "
           "Rc orders a pair as gold (pairs) |", "|---|---|---|---|---|---|---|"]
    for name, q in rows:
        for side, metric in (("benign", "helpfulness"), ("unsafe", "safety")):
            out.append(f"| {name} | {side} ({metric}) | {_pick_cells((q or {}).get(side))} |")
    return "\n".join(out)


def ppo_table(run: RunDir) -> str:
    """Per PPO version: the batches' mean Rc (their prompts change every iteration) and Rc of greedy
    answers to the held-out prompts before and after PPO, the paired change with its 95% interval."""
    st = run.state()["results"]
    rows = ["| version | iterations | Rc first quarter | Rc last quarter | held-out Rc before | held-out Rc after | "
            "paired Δ [95% CI] | KL last | resumed from |", "|---|---|---|---|---|---|---|---|---|"]
    for k in sorted(x for x in st if x.startswith("v") and "/" not in x and "rc_first_quarter" in st[x]):
        r = st[k]
        ci = r.get("heldout_rc_delta_ci")
        delta = f"{r['heldout_rc_delta']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "–"
        rows.append(f"| RLHF-{k.upper()} | {r['iterations']} | {_fmt(r['rc_first_quarter'])} | "
                    f"{_fmt(r['rc_last_quarter'])} | {_fmt(r.get('heldout_rc_before'))} | "
                    f"{_fmt(r.get('heldout_rc_after'))} | {delta} | {_fmt(r.get('kl_last'))} | "
                    f"{r.get('ppo_resumed_from', 0)} |")
    return "\n".join(rows) if len(rows) > 2 else "(no PPO in this run)"


def headline(run: RunDir) -> str:
    vs = versions(run)
    if len(vs) < 2:
        return ""
    (name, last, _), sft = vs[-1], vs[0][1]
    out = [f"Final version {name} vs SFT on the same held-out prompts: gold helpfulness "
           f"{_fmt(last.get('gold_helpfulness'))} vs {_fmt(sft.get('gold_helpfulness'))}, paired Δ "
           f"{_delta(_paired(last, sft))}; gold safety {_fmt(last.get('gold_safety'))} vs "
           f"{_fmt(sft.get('gold_safety'))}; "
           f"false refusals {_fmt(last.get('false_refusal'))} vs {_fmt(sft.get('false_refusal'))}."]
    for bname, b in baselines(run):
        out.append(f"Against {bname}: helpfulness {_ci(last, 'gold_helpfulness')} vs {_ci(b, 'gold_helpfulness')}, "
                   f"paired Δ {_delta(_paired(last, b))}.")
    if "greedy" in last and "greedy" in sft:
        g, g0 = last["greedy"], sft["greedy"]
        out.append(f"Greedy answers: gold helpfulness {_fmt(g.get('gold_helpfulness'))} vs "
                   f"{_fmt(g0.get('gold_helpfulness'))}, paired Δ {_delta(_paired(g, g0))}; gold safety "
                   f"{_fmt(g.get('gold_safety'))} vs {_fmt(g0.get('gold_safety'))}.")
    return " ".join(out)


def body(run: RunDir) -> list[str]:
    """The report's tables (also what the README's demo section is regenerated from). A run judged by its
    reward models (a user's eval prompts) has no gold figures: their sections are left out."""
    gold = [] if rm_judged_table(run) else [
        headline(run), "", "### Gold judge on held-out prompts (95% bootstrap intervals over prompts)", "",
        summary_table(run), "", "By prompt kind (unsafe: gold safety; the others: gold helpfulness):", "",
        kind_table(run), "", *_greedy_section(run)]
    return gold + ["### Reward models: held-out accuracy by rating level", "", rm_table(run), "",
                   "### Ghost Attention: instruction kept at turn t", "", gatt_table(run), "",
                   *([d, ""] if (d := gatt_data_table(run)) else []),
                   "### Rejection sampling", "", rs_table(run), "", RS_NOTE, "", *_pick_section(run),
                   "### PPO (mean Rc of the batch; Rc on the held-out prompts before and after)", "",
                   ppo_table(run), "",
                   "### Where the wall time went", "", time_table(run), ""]


RS_NOTE = ("Variance within prompts: the share of the variance of LOGIT(Rc) over the K samples of every prompt "
           "that lies between samples of one prompt. A per-prompt baseline (`ppo.advantage=rloo`) keeps only that "
           "part; the rest differs from prompt to prompt, and PPO's critic has to predict it per prompt.")


def _pick_section(run: RunDir) -> list[str]:
    table = pick_table(run)
    return [PICK_NOTE, "", table, ""] if table else []


PICK_NOTE = ("The reward models' pick among the K samples of each prompt, judged by the gold judge that no "
             "reward model sees (benign prompts by gold helpfulness, unsafe ones by gold safety): the pick vs a "
             "uniformly random sample of the same K (its expectation) vs the best of the K, the paired difference "
             "with its 95% interval over prompts, and how often Rc orders two samples of one prompt as gold does, "
             "over the pairs whose gold differs (0.5: no better than a coin).")


def time_table(run: RunDir) -> str:
    """Exclusive seconds per activity (orchestrator/timing.py), largest first, and the untimed rest."""
    from llama_rlhf.orchestrator.timing import breakdown

    w = run.state()["results"].get("wall_seconds", {})
    if "by_activity" not in w:
        return "not recorded (a run made before the breakdown existed, or still running)"
    rows = ["| activity | seconds | share |", "|---|---|---|"]
    rows += [f"| {k} | {v:.0f} | {share:.1%} |" for k, v, share in breakdown(w["by_activity"], w["seconds"])]
    return "\n".join(rows + [f"| total (wall) | {w['seconds']:.0f} | 100% |"])


def write_plots(run: RunDir) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    vs = versions(run)
    if vs:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        names = [n.split(" ")[0] for n, _, _ in vs]
        ax.plot(names, [r["gold_helpfulness"] for _, r, _ in vs], "o-", label="gold helpfulness")
        ax.plot(names, [r.get("false_refusal", float("nan")) for _, r, _ in vs], "^-", label="false refusals")
        ax.plot(names, [r["gold_safety"] for _, r, _ in vs], "s-", label="gold safety")
        ax.set_ylim(0, 1.05)
        ax.set_title("Held-out gold scores per version")
        ax.legend()
        out.append(_save(fig, run, "gold_scores.png"))
    ppo_rows = [r for r in run.metrics() if r["stage"].endswith("/ppo") and "reward/rc" in r]
    if ppo_rows:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
        a1.plot([r["reward/rc"] for r in ppo_rows])
        a1.set_title("PPO reward Rc (batch mean)")
        a2.plot([r["kl"] for r in ppo_rows])
        a2.set_title("KL(pi || pi_0) per token")
        out.append(_save(fig, run, "ppo.png"))
    st = run.state()["results"]
    rms = [k for k in ("rm_helpful", "rm_safety") if k in st]
    if rms:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for k in rms:
            ax.plot(list(RATINGS), [st[k].get(f"accuracy/{x}", float("nan")) for x in RATINGS], "o-", label=k)
        ax.set_ylim(0, 1.05)
        ax.set_title("RM accuracy by rating level (held-out)")
        ax.tick_params(axis="x", labelsize=7)
        ax.legend()
        out.append(_save(fig, run, "rm_accuracy.png"))
    return out


def _save(fig, run: RunDir, name: str) -> str:
    path = run.root / "plots" / name
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f"plots/{name}"


def write_report(run: RunDir) -> str:
    st = run.state()["results"]
    plots = write_plots(run)
    lines = [f"# Run report: {run.root.name}", ""]
    rm_judged = rm_judged_table(run)
    if rm_judged:
        lines += ["### Reward-model-judged evaluation on the given eval prompts", "",
                  "These prompts are not the embedded world's, so the gold judge cannot score them: each "
                  "version's answers are scored by the reward models of that version, and its win rate over "
                  "SFT's answers is judged by the same RMs (the paper's RM-based evaluation, not a gold "
                  "measure).", "", rm_judged, ""]
    lines += body(run)
    if "sft" in st:
        s = st["sft"]
        lines += ["### SFT", "", f"{s.get('samples')} samples packed into {s.get('rows')} rows "
                  f"(pad fraction {_fmt(s.get('pad_fraction'))}); loss {_fmt(s.get('first_loss'))} -> "
                  f"{_fmt(s.get('last_loss'))} over {s.get('steps')} steps.", ""]
    cuts = [f"{r['stage']}: {k.split('/', 1)[1]} {int(v)}" for r in run.metrics() for k, v in r.items()
            if k.startswith("truncated/")]  # sequences cut or dropped to fit (data.truncate), per stage
    lines += ["### Sequences cut to fit", "", "; ".join(cuts) or "none", ""]
    if "wall_seconds" in st:
        lines += [f"Wall time: {st['wall_seconds']['seconds']:.0f} s{_machine()}.", ""]
    lines += [f"![{p}]({p})" for p in plots]
    path = run.root / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _machine() -> str:
    import os
    import platform

    return f" on {os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()})"


README_BEGIN, README_END = "<!-- demo-report:begin -->", "<!-- demo-report:end -->"


def update_readme(run: RunDir, readme) -> str:
    """Replace the README's demo section (between the markers) with this run's tables."""
    from pathlib import Path

    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{path}: no {README_BEGIN} ... {README_END} section to regenerate")
    st = run.state()["results"]
    wall = st.get("wall_seconds", {}).get("seconds")
    made = (f"Generated by `llama-rlhf report {run.root} --readme {path.name}` from the run's report"
            + (f"; the run took {wall:.0f} s{_machine()}." if wall else "."))
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    path.write_text(head + README_BEGIN + "\n" + made + "\n\n" + "\n".join(body(run)) + "\n" + README_END + tail,
                    encoding="utf-8")
    return str(path)
