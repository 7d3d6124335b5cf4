"""Rejection-sampling fine-tuning (paper section 3.2.3): K samples per prompt, scored by the reward
model, the best one kept; "the new training set in each iteration includes the rejection-sampled data
from the current iteration and top-performing samples from all prior iterations" (the fix for the
forgetting seen between RLHF-V2 and V3).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from llama_rlhf.algorithms.bootstrap import paired_diff_ci

PromptId = str | int


def best_of_k(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """argmax_k R(g_k | p) for each prompt: (N, K) rewards -> (indices (N,), best rewards (N,)).

    Ties go to the lowest sample index; NaN scores never win (treated as -inf).
    """
    r = rewards.float()
    r = torch.where(torch.isnan(r), torch.full_like(r, -math.inf), r)
    best = r.max(dim=1).values
    k = r.size(1)
    positions = torch.arange(k, device=r.device).expand_as(r)
    idx = torch.where(r == best[:, None], positions, k).min(dim=1).values
    return idx, best


def within_prompt_share(scores: torch.Tensor) -> float:
    """The share of the variance of (P, K) scores (K samples of each of P prompts) that lies within prompts:
    the mean over prompts of the (population) variance of its K scores, over the variance of all P * K.
    It is what a per-prompt baseline (RLOO's leave-one-out mean) leaves to learn from; the rest lies
    between prompts, and a critic has to predict it per prompt for its advantages to rise above that noise."""
    scores = scores.double()
    total = scores.var(unbiased=False)
    return float(scores.var(dim=1, unbiased=False).mean() / total) if total > 0 else 0.0


def pick_quality(gold: torch.Tensor, rewards: torch.Tensor, picked: torch.Tensor) -> dict[str, float]:
    """How good a pick of one sample in K is by an outside measure `gold` (N, K) that the reward never saw.

    "picked": mean gold of the picked samples (`picked` (N,) indices); "random": of a uniformly random
    sample (each prompt's mean gold, the expectation of a random pick); "best": of each prompt's best sample
    (the most any pick can get); "gain": picked - random with its 95% bootstrap interval over prompts
    ("gain_ci"). "agreement": over pairs of samples of one prompt whose gold differs, the
    share the reward orders as gold does (a tie in reward counts one half: a coin flip), "pairs" their
    number; 0.5 is a reward that knows nothing gold knows. NaN rewards are never counted as agreeing.
    """
    g, r = gold.double(), rewards.double()
    n, k = g.shape
    if r.shape != (n, k) or picked.shape != (n,):
        raise ValueError(f"gold {tuple(g.shape)}, rewards {tuple(r.shape)} and picked {tuple(picked.shape)} "
                         "must be (N, K), (N, K) and (N,)")
    i, j = torch.triu_indices(k, k, offset=1)
    dg, dr = g[:, i] - g[:, j], r[:, i] - r[:, j]
    differ = dg != 0
    score = torch.where(dr == 0, 0.5, ((dg > 0) == (dr > 0)).double())
    score = torch.where(torch.isnan(dr), 0.0, score)
    pairs = int(differ.sum())
    chosen, mean = g.gather(1, picked.long()[:, None])[:, 0], g.mean(dim=1)
    gain, lo, hi = paired_diff_ci(chosen.tolist(), mean.tolist())
    return {
        "picked": float(chosen.mean()) if n else math.nan,
        "random": float(mean.mean()) if n else math.nan,
        "best": float(g.max(dim=1).values.mean()) if n else math.nan,
        "agreement": float(score[differ].mean()) if pairs else math.nan,
        "pairs": pairs,
        "gain": gain,
        "gain_ci": [lo, hi],
    }


@dataclass(frozen=True)
class ArchivedSample:
    iteration: int
    prompt_id: PromptId
    prompt: Any
    response: Any
    reward: float


class RejectionArchive:
    """Per iteration and prompt, the best sample; across iterations, each prompt's best ever.

    Ties keep the sample that came first (earlier iteration, then earlier `add`). `training_set` rule
    for iteration i (only iterations <= i are read, so past training sets can be rebuilt):

    1. every prompt sampled at i contributes one sample: its best of iteration i, unless its best of
       an earlier iteration has a strictly higher reward, in which case that archived sample is used
       (on a tie the fresh sample of iteration i is kept);
    2. prompts not sampled at i contribute their best of earlier iterations, ranked by reward (ties:
       earlier iteration, then first-seen prompt), the top ceil(prior_top_fraction * n) of them.

    With prior_top_fraction = 1 the set holds every prompt seen so far with its best sample ever.
    Prompts and responses are any JSON values; prompt ids are str or int.
    """

    def __init__(self) -> None:
        self._best: dict[int, dict[PromptId, ArchivedSample]] = {}
        self._seen: dict[PromptId, int] = {}  # prompt -> first-seen rank

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, iteration: int, prompt_id: PromptId, prompt: Any, response: Any, reward: float) -> bool:
        """Offer one scored sample; returns whether it is now the best of its prompt in `iteration`."""
        if not isinstance(prompt_id, (str, int)) or isinstance(prompt_id, bool):
            raise TypeError(f"prompt_id: must be str or int, got {type(prompt_id).__name__}")
        reward = float(reward)
        if not math.isfinite(reward):  # a NaN/inf score is a broken reward model, never a best sample
            raise ValueError(f"reward: {reward} for prompt {prompt_id!r} at iteration {iteration}")
        self._seen.setdefault(prompt_id, len(self._seen))
        per_prompt = self._best.setdefault(int(iteration), {})
        current = per_prompt.get(prompt_id)
        if current is not None and reward <= current.reward:
            return False
        per_prompt[prompt_id] = ArchivedSample(int(iteration), prompt_id, prompt, response, reward)
        return True

    def add_best_of_k(
        self,
        iteration: int,
        prompt_ids: Sequence[PromptId],
        prompts: Sequence[Any],
        responses: Sequence[Sequence[Any]],
        rewards: torch.Tensor,
    ) -> torch.Tensor:
        """Keep the best of K responses per prompt (`best_of_k`); returns the chosen indices (N,)."""
        idx, best = best_of_k(rewards)
        for n, pid in enumerate(prompt_ids):
            self.add(iteration, pid, prompts[n], responses[n][int(idx[n])], float(best[n]))
        return idx

    def samples(self) -> list[ArchivedSample]:
        """Every archived sample (each iteration's best per prompt), in first-seen prompt order."""
        order = sorted(self._seen, key=self._seen.__getitem__)
        return [self._best[it][pid] for pid in order for it in self.iterations() if pid in self._best[it]]

    def rescore(self, rewards: Sequence[tuple[int, PromptId, float]]) -> None:
        """Replace the reward of archived samples, given as (iteration, prompt_id, new reward): rewards
        from different reward-model versions are not comparable, so the orchestrator re-scores the whole
        archive with the current RM before selecting. Unknown samples and NaN rewards raise."""
        for it, pid, r in rewards:
            s = self._best.get(int(it), {}).get(pid)
            if s is None:
                raise KeyError(f"rescore: no archived sample for prompt {pid!r} at iteration {it}")
            if math.isnan(float(r)):
                raise ValueError(f"rescore: NaN reward for prompt {pid!r} at iteration {it}")
            self._best[int(it)][pid] = ArchivedSample(s.iteration, pid, s.prompt, s.response, float(r))

    def up_to(self, iteration: int) -> RejectionArchive:
        """A copy holding only the samples of iterations <= `iteration` (prompts' first-seen order kept)."""
        out = RejectionArchive()
        for s in self.samples():
            if s.iteration <= iteration:
                out.add(s.iteration, s.prompt_id, s.prompt, s.response, s.reward)
        return out

    def iterations(self) -> list[int]:
        return sorted(self._best)

    def best(self, prompt_id: PromptId, up_to: int | None = None) -> ArchivedSample | None:
        """The prompt's best sample over iterations <= up_to (all when None); ties: earliest iteration."""
        found = None
        for it in self.iterations():
            if up_to is not None and it > up_to:
                break
            s = self._best[it].get(prompt_id)
            if s is not None and (found is None or s.reward > found.reward):
                found = s
        return found

    def training_set(self, iteration: int, prior_top_fraction: float = 1.0) -> list[ArchivedSample]:
        """This iteration's best ∪ the top of prior iterations (rule in the class doc)."""
        if not 0.0 <= prior_top_fraction <= 1.0:
            raise ValueError(f"prior_top_fraction: must be in [0, 1], got {prior_top_fraction}")
        current = self._best.get(iteration, {})
        out = []
        for pid in sorted(current, key=self._seen.__getitem__):
            prior = self.best(pid, up_to=iteration - 1)
            out.append(prior if prior is not None and prior.reward > current[pid].reward else current[pid])
        prior_only = [
            s
            for pid in self._seen
            if pid not in current and (s := self.best(pid, up_to=iteration - 1)) is not None
        ]
        prior_only.sort(key=lambda s: (-s.reward, s.iteration, self._seen[s.prompt_id]))
        return out + prior_only[: math.ceil(prior_top_fraction * len(prior_only))]

    def save(self, path: str | Path) -> Path:
        """Write the archive as JSON (atomically: a temporary file renamed over `path`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        records = [asdict(s) for s in self.samples()]
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps({"version": 1, "samples": records}), encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> RejectionArchive:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("version") != 1:
            raise ValueError(f"{path}: unknown rejection archive version {data.get('version')!r}")
        archive = cls()
        for r in data["samples"]:
            archive.add(r["iteration"], r["prompt_id"], r["prompt"], r["response"], r["reward"])
        return archive
