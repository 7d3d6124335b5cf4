"""Checks run by `llama-rlhf run` / `resume` before anything starts (no Ray, no training): every data
file the config names exists and parses, held-out prompts can be scored by the evaluation, and `run`
does not silently continue a folder whose config differs. Each failure is one line naming the file:line
or config field, raised as `DataError`, `ConfigError` or `RunDirError` (the CLI prints it, exit 2).
"""

from __future__ import annotations

from pathlib import Path

from llama_rlhf.config import Config, ConfigError, config_to_yaml, flatten, load_config
from llama_rlhf.orchestrator.run_dir import RunDirError

_LOADERS = {"sft_path": "load_sft", "preference_path": "load_preferences", "prompts_path": "load_prompts",
            "eval_prompts_path": "load_prompts"}


def check(cfg: Config, fresh: bool = False) -> list[str]:
    """All start-up checks; returns the loaders' report lines (records loaded / skipped per file)."""
    if fresh:
        check_run_folder(cfg)
    return check_data(cfg)


def resume_config(run_dir: str | Path) -> Path:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a run folder (no config.yaml); start one with `llama-rlhf run`")
    return path


def check_run_folder(cfg: Config) -> None:
    """`run` into an existing folder must mean the same run: `resume` reads the folder's config.yaml, so
    continuing with other values would silently mix two configs."""
    import yaml

    root = Path(cfg.run.output_dir) / cfg.run.name
    saved = root / "config.yaml"
    if not saved.is_file():
        return
    try:  # resolved, so fields added since the folder was written compare at their defaults
        old = flatten(yaml.safe_load(config_to_yaml(load_config(saved))))
    except ConfigError as e:
        raise RunDirError(f"{saved}: holds a config this version cannot read ({str(e).splitlines()[0]}); "
                          f"choose a fresh run.name") from None
    new = flatten(yaml.safe_load(config_to_yaml(cfg)))
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:3])
        more = f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
        raise RunDirError(f"{root}: holds a run with a different config ({shown}{more}); continue it with "
                          f"`llama-rlhf resume {root} [overrides]` or choose a fresh run.name")


def check_data(cfg: Config) -> list[str]:
    """Parse every data file the config names (hub datasets are only checked when loaded)."""
    from llama_rlhf.data import loaders

    d, reports = cfg.data, []
    for key, loader in _LOADERS.items():
        src = getattr(d, key)
        if src is None or str(src).startswith("hf:"):
            continue
        if not Path(src).exists():
            raise ConfigError(f"data.{key}: no such file or folder: {src}")
        recs, rep = getattr(loaders, loader)(src, d.skip_invalid)
        reports.append(f"data.{key}: {rep}")  # a user's eval prompts are RM-judged: any valid prompt will do
    return reports

