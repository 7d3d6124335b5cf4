"""Resident memory after each RLHF version of a CPU run: flat, or the engines leak across phases.

Runs the real pipeline (`llama-rlhf run`, default configs/ci.yaml with more PPO versions) in a subprocess
and, each time state.json records a finished stage, sums the resident set of the driver and every process
it started (Ray's raylet and workers: the DeepSpeed ranks, the vLLM engines and their engine cores),
by process name. Every role reloads its engine for every phase, so a leak shows up as growth per version.

    .venv/bin/python benchmarks/memory_versions.py [--versions 4] [overrides ...]

CPU: about 3 minutes per version on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def tree_rss(pid: int) -> dict[str, int]:
    """RSS by process title (Ray workers are titled `ray::ClassName`) of a process and its descendants."""
    out: dict[str, int] = {}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            name = " ".join(p.cmdline()[:1]) or p.name()
            name = name.split("/")[-1] if not name.startswith("ray::") else name
            out[name] = out.get(name, 0) + p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "ci.yaml"))
    ap.add_argument("--versions", type=int, default=4)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out_dir = Path(tempfile.mkdtemp(prefix="memv_"))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1",
               RAY_TMPDIR=tempfile.mkdtemp(prefix="rmv_", dir="/tmp"))
    cmd = [sys.executable, "-m", "llama_rlhf.cli", "run", args.config, f"run.output_dir={out_dir}",
           f"iterations.num_versions={args.versions}", "iterations.rs_only_until=1", *args.overrides]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    seen, rows = set(), []
    try:
        while proc.poll() is None:
            time.sleep(2)
            runs = list(out_dir.glob("*/state.json"))
            if not runs:
                continue
            try:
                state = json.loads(runs[0].read_text())
            except json.JSONDecodeError:
                continue
            for stage in state["done"]:
                if stage not in seen:
                    seen.add(stage)
                    rss = tree_rss(proc.pid)
                    rows.append((stage, rss))
                    print(f"{stage:10s} total {sum(rss.values()) / 2**30:6.2f} GiB  " + "  ".join(
                        f"{k} {v / 2**20:.0f}" for k, v in sorted(rss.items(), key=lambda x: -x[1])[:6]) + " (MiB)",
                        flush=True)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"\nexit {proc.returncode}; resident memory after each stage (GiB, driver + every Ray process):")
    print("| stage | total | DeepSpeed ranks | vLLM (engine + core) | driver + Ray |")
    print("|---|---|---|---|---|")
    for stage, rss in rows:
        ds = sum(v for k, v in rss.items() if k.startswith("ray::") and ("Trainer" in k or "ReferencePolicy" in k))
        vllm = sum(v for k, v in rss.items() if "Rollout" in k or "VLLM" in k or "EngineCore" in k)
        print(f"| {stage} | {sum(rss.values()) / 2**30:.2f} | {ds / 2**30:.2f} | {vllm / 2**30:.2f} | "
              f"{(sum(rss.values()) - ds - vllm) / 2**30:.2f} |")
    return proc.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
