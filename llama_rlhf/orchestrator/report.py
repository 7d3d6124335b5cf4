"""`report.md` and PNG plots of a run folder, built from state.json and metrics.jsonl only."""

from __future__ import annotations

import math

from llama_rlhf.data.records import RATINGS
from llama_rlhf.orchestrator.run_dir import RunDir


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


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
        out.append((f"RLHF-V{v}" + (" (PPO)" if v > cfg.iterations.rs_only_until else ""),
                    st["results"][f"v{v}"]["eval"], gatt))
        v += 1
    return out


def summary_table(run: RunDir) -> str:
    rows = ["| version | gold helpfulness (helpful prompts) | gold safety (unsafe prompts) | "
            "helpfulness (all) | safety (all) | mean answer tokens |", "|---|---|---|---|---|---|"]
    for name, r, _ in versions(run):
        rows.append(f"| {name} | {_fmt(r['gold_helpfulness'])} | {_fmt(r['gold_safety'])} | "
                    f"{_fmt(r['gold_helpfulness_all'])} | {_fmt(r['gold_safety_all'])} | "
                    f"{_fmt(r['mean_response_tokens'], 1)} |")
    return "\n".join(rows)


def kind_table(run: RunDir) -> str:
    """Gold score per prompt kind and version: helpfulness for tasks and GAtt, safety for unsafe."""
    vs = versions(run)
    kinds = sorted({k.split("/", 1)[1] for _, r, _ in vs for k in r if k.startswith("gold_by_kind/")})
    if not kinds:
        return "(no per-kind scores in this run)"
    rows = ["| version | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for name, r, _ in vs:
        rows.append(f"| {name} | " + " | ".join(_fmt(r.get(f"gold_by_kind/{k}")) for k in kinds) + " |")
    return "\n".join(rows)


def rm_table(run: RunDir) -> str:
    st = run.state()["results"]
    head = "| reward model | accuracy | " + " | ".join(RATINGS) + " |"
    rows = [head, "|" + "---|" * (len(RATINGS) + 2)]
    for stage in sorted(k for k in st if k.startswith("rm_") or "/rm_" in k):
        r = st[stage]
        cells = [f"{_fmt(r.get(f'accuracy/{x}'))} (n={r.get(f'count/{x}', 0)})" for x in RATINGS]
        rows.append(f"| {stage} | {_fmt(r.get('accuracy'))} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def gatt_table(run: RunDir) -> str:
    vs = versions(run)
    turns = max((len(r.get("gatt_kept", [])) for _, r, _ in vs), default=0)
    if not turns:
        return "(no GAtt evaluation dialogs)"
    rows = ["| version | GAtt data | " + " | ".join(f"turn {t + 1}" for t in range(turns)) + " |",
            "|---|---|" + "---|" * turns]
    for name, r, gatt in vs:
        kept = r.get("gatt_kept", [])
        rows.append(f"| {name} | {'yes' if gatt else 'no'} | " + " | ".join(_fmt(k, 2) for k in kept) + " |")
    return "\n".join(rows)


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
    vs = versions(run)
    lines = [f"# Run report: {run.root.name}", ""]
    if len(vs) > 1:
        sft, last = vs[0][1], vs[-1][1]
        lines += [f"Final version {vs[-1][0]} vs SFT on held-out prompts: gold helpfulness "
                  f"{_fmt(last['gold_helpfulness'])} vs {_fmt(sft['gold_helpfulness'])} "
                  f"({last['gold_helpfulness'] - sft['gold_helpfulness']:+.3f}), gold safety "
                  f"{_fmt(last['gold_safety'])} vs {_fmt(sft['gold_safety'])} "
                  f"({last['gold_safety'] - sft['gold_safety']:+.3f}).", ""]
    lines += ["## Gold judge on held-out prompts", "", summary_table(run), "",
              "By prompt kind (unsafe: gold safety; the others: gold helpfulness):", "", kind_table(run), "",
              "## Reward models: held-out accuracy by rating level", "", rm_table(run), "",
              "## Ghost Attention: instruction kept at turn t (system instruction given once)", "",
              gatt_table(run), ""]
    if "sft" in st:
        s = st["sft"]
        lines += ["## SFT", "", f"{s.get('samples')} samples packed into {s.get('rows')} rows "
                  f"(pad fraction {_fmt(s.get('pad_fraction'))}); loss {_fmt(s.get('first_loss'))} -> "
                  f"{_fmt(s.get('last_loss'))} over {s.get('steps')} steps.", ""]
    for k in sorted(x for x in st if x.startswith("v") and "/" not in x):
        r = st[k]
        keep = {x: r[x] for x in r if isinstance(r[x], int | float)}
        body = ", ".join(f"{x} {_fmt(y) if isinstance(y, float) else y}" for x, y in keep.items())
        lines += [f"### {k}", "", body, ""]
    cuts = [f"{r['stage']}: {k.split('/', 1)[1]} {int(v)}" for r in run.metrics() for k, v in r.items()
            if k.startswith("truncated/")]  # sequences cut or dropped to fit (data.truncate), per stage
    lines += ["## Sequences cut to fit", "", "; ".join(cuts) or "none", ""]
    if "wall_seconds" in st:
        lines += [f"Wall time: {st['wall_seconds']['seconds']:.0f} s.", ""]
    lines += [f"![{p}]({p})" for p in plots]
    path = run.root / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return str(path)
