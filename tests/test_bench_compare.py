"""`make bench-cpu` keeps running: benchmarks/compare.py at its smallest shapes, every pair but the
SmolLM2 sync, end to end (real TRL, HF generate, Ray actors, DeepSpeed, vLLM), must end with its ratio line.
It broke once unnoticed (an import renamed under it); the figures themselves belong to the benchmark."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_compare_runs_every_pair_and_prints_the_ratios(tmp_path):
    args = ["--repeats", "1", "--steps", "1", "--rows", "2", "--seq-len", "64", "--pairs", "4", "--prompts", "4",
            "--rollout-prompts", "4,8", "--max-new", "8", "--sync-model", str(tmp_path / "none")]
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    ratios = dict(re.findall(r"(?:^|, )(.+?) ([0-9.]+)x(?=, |$)", last.removeprefix("ratios (ours/theirs): ")))
    assert set(ratios) == {"SFT", "RM", "two RMs together", "rollout", "rollout 8 prompts", "sync (before)",
                           "weight sync", "RL iteration", "RL iteration critic-free (RLOO)"}, last
    assert all(float(v) > 0 for v in ratios.values()), last


def test_scoring_benchmark_runs_every_path_and_they_agree():
    """benchmarks/scoring.py on a few RS candidates of configs/local.yaml: the packed, trimmed and padded
    paths run, their scores agree (the script exits non-zero otherwise) and it ends with the ratio line."""
    args = ["--prompts", "6", "--samples", "2", "--repeats", "1", "--steps", "1", "--ranks", "2"]
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scoring.py"), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert re.search(r"packed/padded [0-9.]+x, packed/trimmed [0-9.]+x; max score difference", last), last
