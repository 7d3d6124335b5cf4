"""The run folder: resolved config, checkpoints written atomically, progress state, metrics.

    runs/<name>/
      config.yaml            the resolved config of the run
      state.json             completed stages, in order (what `resume` reads)
      tokenizer/             tokenizer.model
      data/                  the datasets the run used (JSONL), the RS archive
      ckpt/<stage>/          HF folders (config.json + model.safetensors) per stage and version
      metrics.jsonl          one JSON object per logged step
      tb/                    TensorBoard events
      report.md, plots/      written by `llama-rlhf report` and at the end of a run

Every checkpoint is written into `<target>.tmp` and renamed into place, and state.json is replaced
atomically after it: a run killed at any instant resumes from the last complete stage.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

GATT_FILE = re.compile(r"gatt_N(\d+)\.json")
"""`llama-rlhf eval RUN --gatt-dialogs N` writes its results into the run folder under this name."""


class RunDirError(RuntimeError):
    """A run folder that cannot be used as asked (another config, not a run folder)."""


def _completed(stage: str, done: list[str]) -> bool:
    """A metrics row belongs to a completed stage when its stage path or a prefix of it is done
    (`v2/ppo` under `v2`, `eval/sft` itself)."""
    parts = stage.split("/")
    return any("/".join(parts[:i]) in done for i in range(1, len(parts) + 1))


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("ckpt", "data", "plots"):
            (self.root / sub).mkdir(exist_ok=True)
        self._tb = None

    # ------------------------------------------------------------------ paths

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    def ckpt(self, stage: str) -> Path:
        return self.root / "ckpt" / stage

    def data(self, name: str) -> Path:
        return self.root / "data" / name

    # ------------------------------------------------------------------ atomic writes

    def staging(self, stage: str) -> Path:
        """A fresh temporary folder to write a checkpoint into; `commit` moves it into place."""
        tmp = self.ckpt(stage).with_name(self.ckpt(stage).name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, stage: str) -> Path:
        """Move the staged folder into place. The previous checkpoint of that name is renamed aside first
        and deleted only after the new one is in place: at no instant is there no checkpoint."""
        final, tmp = self.ckpt(stage), self.ckpt(stage).with_name(self.ckpt(stage).name + ".tmp")
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:  # put the committed one back: a failed commit changes nothing
            if old.exists() and not final.exists():
                os.replace(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return final

    def write_json(self, path: Path, obj) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
        os.replace(tmp, path)

    # ------------------------------------------------------------------ progress

    def state(self) -> dict:
        p = self.root / "state.json"
        return json.loads(p.read_text()) if p.exists() else {"done": [], "results": {}}

    def is_done(self, stage: str) -> bool:
        return stage in self.state()["done"]

    def mark_done(self, stage: str, result: dict | None = None) -> None:
        st = self.state()
        if stage not in st["done"]:
            st["done"].append(stage)
        st["results"][stage] = result or {}
        st["updated"] = time.time()
        self.write_json(self.root / "state.json", st)

    def result(self, stage: str) -> dict:
        return self.state()["results"].get(stage, {})

    # ------------------------------------------------------------------ metrics

    def log(self, stage: str, step: int, metrics: dict, tensorboard: bool = True) -> None:
        row = {"stage": stage, "step": step, "time": round(time.time(), 3)}
        row.update({k: (float(v) if isinstance(v, int | float) else v) for k, v in metrics.items()})
        p = self.root / "metrics.jsonl"
        # a torn last line (killed mid-write) gets its own line; readers skip and count it
        torn = p.exists() and p.stat().st_size > 0 and _last_byte(p) != b"\n"
        with p.open("a") as f:
            f.write(("\n" if torn else "") + json.dumps(row) + "\n")
        if tensorboard:
            tb = self._writer()
            if tb is not None:
                for k, v in metrics.items():
                    if isinstance(v, int | float):
                        tb.add_scalar(f"{stage}/{k}", v, step)

    def _writer(self):
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.root / "tb"))
            except ImportError:  # tensorboard is a dependency; stay usable without it
                self._tb = False
        return self._tb or None

    def _metric_rows(self) -> tuple[list[tuple[str, dict]], int]:
        """(line, row) of every readable metrics line, and how many were torn (not JSON objects)."""
        p = self.root / "metrics.jsonl"
        if not p.exists():
            return [], 0
        out, torn = [], 0
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict) and "stage" in row:
                out.append((line, row))
            else:
                torn += 1
        return out, torn

    def metrics(self, stage: str | None = None) -> list[dict]:
        rows, _ = self._metric_rows()
        return [r for _, r in rows if stage is None or r["stage"] == stage]

    def truncate_metrics(self, done: list[str]) -> int:
        """On resume, drop rows logged by a stage that did not complete (it will run again) and torn lines
        (a kill or a full disk mid-write); returns how many torn lines were dropped."""
        p = self.root / "metrics.jsonl"
        if not p.exists():
            return 0
        rows, torn = self._metric_rows()
        keep = [line for line, r in rows if _completed(r["stage"], done)]
        tmp = p.with_suffix(".tmp")
        tmp.write_text("".join(r + "\n" for r in keep))
        os.replace(tmp, p)
        if torn:
            print(f"{p}: dropped {torn} torn line(s) (a write cut short)", file=sys.stderr)
        return torn

    def close(self) -> None:
        if self._tb:
            self._tb.close()
