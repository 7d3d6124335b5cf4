"""PPO's sharded training state, saved every `ppo.checkpoint_every` iterations so that a crash mid-version
resumes PPO from its last saved iteration instead of repeating the version's PPO.

One folder per version, `ckpt/v<N>_ppo_state/`: the policy's and the critic's DeepSpeed checkpoints (no critic
with `ppo.advantage: rloo`; each rank writes its own weight and optimizer shards: no process gathers the
model) plus `loop.json`, the PPO
loop's own state (next iteration, early-stopping counters, the metrics so far). It is written into
`<folder>.tmp` and renamed into place, so a kill during a save leaves the previous state intact. The
reference, the reward models and the rollout engines are not saved: the first two are frozen checkpoints
PPO reloads anyway, and the engines are re-synced from the restored policy.

Every iteration is seeded by (run.seed, version, iteration) only: an iteration run after a restore is
the iteration an uninterrupted run would have run.
"""

from __future__ import annotations

import json
import shutil


def _name(version: int) -> str:
    return f"v{version}_ppo_state"


def save(ctx, version: int, loop: dict) -> None:
    """Collective on both groups; `loop` = {"next": iteration to run next, ...} (plain JSON)."""
    run = ctx.run
    tmp = run.staging(_name(version))
    ctx.policy.save_state(str(tmp / "policy"))
    if ctx.cfg.ppo.uses_critic:
        ctx.critic.save_state(str(tmp / "critic"))
    (tmp / "loop.json").write_text(json.dumps(loop))
    run.commit(_name(version))


def restore(ctx, version: int) -> dict | None:
    """Load the saved engines' states into the (already loaded) policy and critic groups and return the
    loop state; None when this version saved nothing."""
    folder = ctx.run.ckpt(_name(version))
    if not (folder / "loop.json").exists():
        return None
    loop = json.loads((folder / "loop.json").read_text())
    ctx.policy.load_state(str(folder / "policy"))
    if ctx.cfg.ppo.uses_critic:
        ctx.critic.load_state(str(folder / "critic"))
    return loop


def discard(ctx, version: int) -> None:
    """The version's PPO finished: its resume state is dead weight (and must not leak into a re-run)."""
    shutil.rmtree(ctx.run.ckpt(_name(version)), ignore_errors=True)
