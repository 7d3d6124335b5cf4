"""`llama-rlhf branch RUN NEW --after-version K`: a new run folder holding RUN as it stood when RLHF-V`K` was done
(K = 0: after SFT, the first reward models and the controls), so that `llama-rlhf resume NEW [overrides]` runs
the later versions again, under other settings, from the very same state. RUN is not touched.

What is cut: the completed stages of later versions (state.json), their samples in the rejection-sampling archive
(the archive is re-scored by each version's reward models before use, so the kept samples' scores need no
restoring), their checkpoints and data files (`v<n>`, `v<n>_rs`, `v<n>_ppo_state`, `rm_<name>_v<n>`,
`preferences_v<n>.jsonl`, `rs_samples_v<n>.jsonl`), their metrics rows; and what describes the whole old run
(report.md, plots, `gatt_N<N>.json`, actors.json, the wall time: the branch's counts from its first resume).
TensorBoard events are kept as they are. Checkpoint files
are hard links where the file system allows (they are written once, into new folders, and never changed in
place), copies elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from llama_rlhf.config import config_to_yaml, load_config
from llama_rlhf.orchestrator.run_dir import GATT_FILE, RunDir, RunDirError

_VERSIONED = re.compile(r"^v(\d+)(?:_|/|$)|_v(\d+)(?:\.|$)")
WHOLE_RUN = ("report.md", "actors.json")
WHOLE_RUN_STAGES = ("wall_seconds",)  # the branch's wall time counts from its first resume


def stage_version(name: str) -> int:
    """The RLHF version a stage, checkpoint or data file belongs to (0: before RLHF-V1)."""
    m = _VERSIONED.search(name)
    return int(m.group(1) or m.group(2)) if m else 0


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def branch(src: str | Path, dst: str | Path, after_version: int) -> dict:
    """Write the branch; returns what it kept: {"stages": [...], "archive_samples": n}."""
    src, dst = Path(src), Path(dst)
    if not (src / "state.json").is_file():
        raise RunDirError(f"{src}: not a run folder (no state.json)")
    if dst.exists():
        raise RunDirError(f"{dst}: already exists; a branch is written into a new folder")
    done = json.loads((src / "state.json").read_text())["done"]
    complete = [0] + sorted(stage_version(s) for s in done if re.fullmatch(r"v\d+", s))
    if after_version not in complete:
        raise RunDirError(f"{src}: RLHF-V{after_version} is not a completed version of this run; "
                          f"--after-version must be one of {complete}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)

    def skip(folder: str, names: list[str]) -> set[str]:
        here = Path(folder)
        cut = {n for n in names if n.endswith(".tmp")}
        if here in (src / "ckpt", src / "data"):
            cut |= {n for n in names if stage_version(n) > after_version}
        if here == src:
            cut |= {n for n in names if n in WHOLE_RUN or GATT_FILE.fullmatch(n)}
        if here == src / "plots":
            cut |= set(names)
        return cut

    def copy(a: str, b: str) -> None:  # checkpoints: links, not second copies
        _link_or_copy(a, b) if Path(a).is_relative_to(src / "ckpt") else shutil.copy2(a, b)

    shutil.copytree(src, staging, ignore=skip, copy_function=copy)
    run = RunDir(staging)
    state = run.state()
    state["done"] = [s for s in state["done"] if stage_version(s) <= after_version and s not in WHOLE_RUN_STAGES]
    state["results"] = {s: r for s, r in state["results"].items() if s in state["done"]}
    run.write_json(staging / "state.json", state)
    run.truncate_metrics(state["done"])
    kept = 0
    archive = run.data("rs_archive.json")
    if archive.exists():
        from llama_rlhf.algorithms.rejection import RejectionArchive

        cut = RejectionArchive.load(archive).up_to(after_version)
        cut.save(archive)
        kept = len(cut.samples())
    cfg = load_config(run.config_path, [f"run.name={dst.name}", f"run.output_dir={json.dumps(str(dst.parent))}"])
    run.config_path.write_text(config_to_yaml(cfg))
    os.replace(staging, dst)
    return {"stages": state["done"], "archive_samples": kept}
