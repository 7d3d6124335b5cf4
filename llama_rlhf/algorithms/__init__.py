"""Pure torch math of the Llama 2-Chat recipe: SFT, reward-model, reward-shaping and PPO losses,
rejection-sampling selection, context-distillation selection. No Ray, no DeepSpeed: tensors in, tensors out."""

from .context_distill import SAFETY_PREPROMPTS, build_preprompted, distillation_sample, select_distillation
from .logprobs import causal_lm_response_logprobs, entropy_from_logits, response_position_ids, token_logprobs
from .masked import masked_mean, masked_sum, masked_var, masked_whiten
from .ppo import (
    critic_update,
    gae,
    minibatch_indices,
    policy_loss,
    ppo_update,
    run_minibatches,
    torch_backward_and_step,
    value_loss,
    whiten_advantages,
)
from .rejection import ArchivedSample, RejectionArchive, best_of_k
from .reward import (
    MARGINS,
    RATINGS,
    margin_for,
    ranking_loss,
    reward_model_loss,
    rm_accuracy,
    safety_aux_loss,
)
from .sft import IGNORE_INDEX, sft_loss, sft_token_losses
from .shaping import combine_rewards, kl_penalty, last_token_index, logit, ppo_scores, shaped_rewards

__all__ = [
    "IGNORE_INDEX",
    "MARGINS",
    "RATINGS",
    "SAFETY_PREPROMPTS",
    "ArchivedSample",
    "RejectionArchive",
    "best_of_k",
    "build_preprompted",
    "causal_lm_response_logprobs",
    "combine_rewards",
    "critic_update",
    "distillation_sample",
    "entropy_from_logits",
    "gae",
    "kl_penalty",
    "last_token_index",
    "logit",
    "margin_for",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "minibatch_indices",
    "policy_loss",
    "ppo_scores",
    "ppo_update",
    "ranking_loss",
    "response_position_ids",
    "reward_model_loss",
    "rm_accuracy",
    "run_minibatches",
    "safety_aux_loss",
    "select_distillation",
    "sft_loss",
    "sft_token_losses",
    "shaped_rewards",
    "token_logprobs",
    "torch_backward_and_step",
    "value_loss",
    "whiten_advantages",
]
