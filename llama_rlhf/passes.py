"""The forward passes the roles run, as one small module over an HF Llama (no Ray, no distributed code).

A role's DeepSpeed engine wraps `RolePasses(hf_model)`, so every pass goes through the engine's own
forward (ZeRO-3 counts micro-steps and scales accumulated gradients there) and returns only what the
role needs, never the full (B, T, V) logits:

  causal LM   "response_logprobs"  log pi of the response tokens of [left-padded prompt | response] rows (B, R)
              "packed_logprobs"    log pi of every label of packed SFT rows (B, T - 1), 0 off the labels
  scalar      "values"             V of the state before each response token (B, R)
              "scores"             r(x, y) at each row's last real token (B,)

Rows come padded ([left-padded prompt | right-padded response]) or packed (`algorithms.batching.pack_rows`:
each row's real tokens one segment, attention kept inside it); the roles run them packed.

Log-probs come from the LM head applied `LOGIT_CHUNK_TOKENS` positions at a time
(`algorithms.logprobs.chunked_token_logprobs`).
"""

from __future__ import annotations

import torch

from llama_rlhf.algorithms.logprobs import LOGIT_CHUNK_TOKENS, chunked_token_logprobs, response_position_ids
from llama_rlhf.data.packing import block_causal_mask


def packed_attention(module, batch: dict) -> dict:
    """Model inputs of packed rows: samples never attend across their boundaries. Our Triton kernel reads
    the restarting position ids (varlen); every other attention backend gets the block-diagonal causal
    mask built from the segment ids."""
    kwargs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    if getattr(module.config, "_attn_implementation", "sdpa") != "llama_rlhf_gqa":
        dtype = next(module.parameters()).dtype
        kwargs["attention_mask"] = block_causal_mask(batch["segment_ids"],
                                                     dtype if dtype.is_floating_point else torch.float32)
    return kwargs


def packed_forward(module, batch: dict) -> torch.Tensor:
    """Full logits (B, T, V) of packed rows from a plain HF causal LM: the reference the chunked
    `packed_logprobs` pass is tested against."""
    return module(**packed_attention(module, batch)).logits


class RolePasses(torch.nn.Module):
    """An HF `LlamaForCausalLM` or `LlamaForSequenceClassification` plus the passes above; parameters
    are the HF model's (`self.hf`), so checkpoints keep HF names."""

    def __init__(self, hf: torch.nn.Module, chunk_tokens: int = LOGIT_CHUNK_TOKENS):
        super().__init__()
        self.hf = hf
        self.chunk_tokens = chunk_tokens

    @property
    def config(self):
        return self.hf.config

    def forward(self, input_ids, attention_mask=None, *, out: str, response_len: int = 0, labels=None,
                position_ids=None, segment_ids=None, last_index=None, state_index=None, temperature: float = 1.0,
                with_entropy: bool = False):
        """`out` of padded rows (input_ids, attention_mask) or of packed rows (input_ids, position_ids,
        segment_ids: `algorithms.batching.pack_rows`, or `collate_packed` for "packed_logprobs"). On packed
        rows a row's outputs are read from the flattened states: its score at `last_index` (n,), its
        response states at `state_index` (n, R), whose tokens are `labels` (n, R)."""
        if segment_ids is not None:
            kw = packed_attention(self.hf, {"input_ids": input_ids, "position_ids": position_ids,
                                            "segment_ids": segment_ids})
            hidden = self.hf.model(**kw).last_hidden_state
            if out == "packed_logprobs":
                logp, _ = chunked_token_logprobs(hidden[:, :-1], self.hf.lm_head, labels[:, 1:],
                                                 chunk_tokens=self.chunk_tokens)
                return logp
            flat = hidden.reshape(-1, hidden.shape[-1])
            if out == "scores":
                return self.hf.score(flat[last_index]).squeeze(-1).float()  # (n,)
            states, targets = flat[state_index], labels
        else:
            hidden = self.hf.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                   position_ids=response_position_ids(attention_mask)).last_hidden_state
            if out == "scores":
                t = attention_mask.shape[1]
                positions = torch.arange(t, device=input_ids.device)
                last = torch.where(attention_mask.bool(), positions, -1).max(1).values  # last real token
                pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
                return self.hf.score(pooled).squeeze(-1).float()  # (B,)
            # the state at t predicts token t + 1: response tokens input_ids[:, P:] from states P-1 .. T-2
            states, targets = hidden[:, -response_len - 1 : -1], input_ids[:, -response_len:]
        if out == "response_logprobs":
            return chunked_token_logprobs(states, self.hf.lm_head, targets, temperature, with_entropy,
                                          self.chunk_tokens)
        if out == "values":
            return self.hf.score(states).squeeze(-1).float()  # (B, R)
        raise ValueError(f"out: must be response_logprobs, packed_logprobs, values or scores, got {out!r}")
