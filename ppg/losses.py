"""PPG losses over the training layout built by ppg.data: one token sequence per (dialogue,
trained speaker), a per-token turn index (-1 = not a target token, t = a token of the speaker's
turn t) and one weight (offline) or advantage (online) per turn.

offline:  L = -(1/N) sum_t w_t * log pi(a_t | x_t)                  reward-weighted likelihood
online:   L = -(1/N) sum_t A_t * log pi(a_t | x_t) + beta * KL penalty      REINFORCE

A turn's tokens enter through `reduction`: log pi(a_t | x_t) is the SUM of its token log-probs
(the paper's; the likelihood of the whole utterance, so a long turn carries more gradient than a
short one of the same weight) or their MEAN (every turn counts once, whatever its length).
N is the number of turns that count. The offline trainer passes `denominator` so that N is the
turns of the whole optimizer step (every accumulation micro-batch and every rank:
ppg.train.offline.step_denominator); without it, N is the micro-batch's own turns, which is the same
thing for online training (one rank, one micro-batch per step). The online KL penalty is a mean over target
tokens, not turns: beta prices KL per token whatever the turn count.
A NaN weight or advantage (unknown reward) drops its turn from the sum; it is counted, never
zeroed into a number that trains.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F


class PPGLoss(NamedTuple):
    loss: torch.Tensor  # scalar to backpropagate
    turns: int  # turns that entered the policy-gradient sum
    excluded: int  # turns present in the batch but dropped for a NaN weight / advantage
    kl: torch.Tensor | None = None  # detached mean per-token KL estimate (online only)


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """[B, L, V] logits, [B, L] ids -> [B, L]: log pi(ids[:, i] | ids[:, :i]); position 0 gets 0
    (nothing predicts it), so the result lines up with input_ids and the turn index."""
    B, L, V = logits.shape
    lp = -F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), input_ids[:, 1:].reshape(-1),
                          reduction="none").view(B, L - 1)
    return torch.cat([lp.new_zeros(B, 1), lp], dim=1)


def lm_body_and_head(model):
    """(body, head) of a causal LM, plain, PEFT-wrapped or inside a DeepSpeed engine: the body
    gives the final hidden states (final norm applied), the head maps them to logits."""
    m = getattr(model, "module", model)  # a DeepSpeed engine holds the model as .module
    if hasattr(m, "get_base_model"):  # PEFT: the model with its adapters injected
        m = m.get_base_model()
    return m.get_decoder(), m.get_output_embeddings()


def _chunk_logprobs(h, y, head):
    return -F.cross_entropy(head(h).float(), y, reduction="none")


def target_logprobs(model, input_ids, attention_mask, turn_index, chunk: int = 1024) -> torch.Tensor:
    """token_logprobs(model(...).logits, input_ids) at the target tokens (turn_index >= 0), 0
    elsewhere, without the [B, L, V] logits: the head runs only on the hidden states that predict
    a target, `chunk` of them at a time, and each chunk's logits are recomputed in the backward
    pass instead of kept (activation checkpointing of the head), so the vocabulary-sized buffers
    of one chunk are all that exist at once. For heads that are a plain projection (Llama-type
    models such as SmolLM2); a model that rescales or caps its logits needs token_logprobs."""
    from torch.utils.checkpoint import checkpoint

    body, head = lm_body_and_head(model)
    h = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    tgt = turn_index[:, 1:] >= 0  # the state at i predicts token i + 1
    hs, ys = h[:, :-1][tgt], input_ids[:, 1:][tgt]
    grad = torch.is_grad_enabled()
    parts = [checkpoint(_chunk_logprobs, hs[s:s + chunk], ys[s:s + chunk], head, use_reentrant=False) if grad
             else _chunk_logprobs(hs[s:s + chunk], ys[s:s + chunk], head) for s in range(0, len(hs), chunk)]
    vals = torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)
    lp = torch.zeros(tgt.shape, dtype=torch.float32, device=h.device).masked_scatter(tgt, vals)
    return torch.cat([lp.new_zeros(lp.shape[0], 1), lp], dim=1)


def turn_logprobs(token_logp, turn_index, num_turns, reduction="sum"):
    """Per-turn log pi(a_t | x_t) [B, T] and a bool [B, T]: does turn t have target tokens here."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction: expected 'sum' or 'mean', got {reduction!r}")
    if token_logp.shape != turn_index.shape:
        raise ValueError(f"turn_index: shape {tuple(turn_index.shape)} differs from the token "
                         f"log-probs {tuple(token_logp.shape)}")
    if turn_index.numel() and (turn_index.min() < -1 or turn_index.max() >= num_turns):
        raise ValueError(f"turn_index: values must be -1 (not a target) or 0..{num_turns - 1}")
    target = turn_index >= 0
    idx = turn_index.clamp(min=0)
    zeros = token_logp.new_zeros((token_logp.shape[0], num_turns))
    sums = zeros.scatter_add(1, idx, torch.where(target, token_logp, 0))
    counts = zeros.detach().scatter_add(1, idx, target.to(zeros.dtype))
    if reduction == "mean":
        sums = sums / counts.clamp(min=1)
    return sums, counts > 0


def offline_ppg_loss(token_logp, turn_index, weights, reduction="sum", denominator=None):
    """Reward-weighted log-likelihood: -(1/N) sum over (b, t) of weights[b, t] * log pi(a_t | x_t).

    token_logp [B, L] (from token_logprobs), turn_index [B, L] long, weights [B, T] (constants:
    partial returns, shaped or not). Turns with a NaN weight are excluded and counted.
    """
    if weights.dim() != 2 or weights.shape[0] != token_logp.shape[0]:
        raise ValueError(f"weights: expected [B={token_logp.shape[0]}, T], got {tuple(weights.shape)}")
    ell, present = turn_logprobs(token_logp, turn_index, weights.shape[1], reduction)
    unknown = torch.isnan(weights)
    known = present & ~unknown
    # zero the weights BEFORE the product: NaN * ell would give NaN gradients even if masked after
    w = torch.where(known, weights.detach(), 0).to(ell.dtype)
    turns = int(known.sum())
    n = denominator if denominator is not None else max(turns, 1)
    return PPGLoss(-(w * ell).sum() / n, turns, int((present & unknown).sum()))


KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(token_logp, ref_token_logp, estimator="k2"):
    """Per-token (penalty to differentiate, KL value to log), with d = log pi_ref - log pi on the
    sampled tokens (samples from pi; ref_token_logp carries no gradient). What each penalty's
    gradient follows, in expectation over the sampled token at a state, with the visited states
    held fixed (so a per-state KL, not the sequence-level KL whose gradient would also credit
    the states a change leads to):
      k1  sg(-d) * log pi: the score-function form; gradient (log pi - log ref) grad log pi,
          whose expectation is grad KL(pi || ref).
      k2  d^2 / 2 differentiated directly: the same per-sample gradient as k1 (so grad
          KL(pi || ref)); its value is >= 0. The default.
      k3  exp(d) - d - 1 differentiated directly (as GRPO does): a fine estimate of the VALUE
          KL(pi || ref), but its gradient (1 - pi_ref / pi) grad log pi has expectation
          -sum pi_ref grad log pi = grad KL(pi_ref || pi): the reverse KL, a mass-covering pull.
    The logged value is always k3's (unbiased for KL(pi || ref) and never negative)."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator: expected one of {KL_ESTIMATORS}, got {estimator!r}")
    d = ref_token_logp.detach() - token_logp
    value = (torch.exp(d) - d - 1).detach()
    if estimator == "k1":
        return (-d).detach() * token_logp, value
    if estimator == "k2":
        return 0.5 * d ** 2, value
    return torch.exp(d) - d - 1, value


def online_ppg_loss(token_logp, ref_token_logp, turn_index, advantages, kl_coef=0.05,
                    kl_estimator="k2", reduction="sum", denominator=None):
    """REINFORCE on sampled dialogues with per-turn advantages plus beta times a per-token KL
    penalty to the reference (kl_penalty says which KL each estimator's gradient follows).

    ref_token_logp: the reference model's token log-probs on the same tokens (no gradient).
    The KL term covers every target token, including turns whose advantage is NaN: the penalty
    needs no reward. Returns the loss and the detached mean KL estimate for logging.
    """
    if ref_token_logp.shape != token_logp.shape:
        raise ValueError(f"ref_token_logp: shape {tuple(ref_token_logp.shape)} differs from "
                         f"token_logp {tuple(token_logp.shape)}")
    penalty_tok, kl_tok = kl_penalty(token_logp, ref_token_logp, kl_estimator)
    pg = offline_ppg_loss(token_logp, turn_index, advantages, reduction, denominator)
    target = turn_index >= 0
    ntok = target.sum().clamp(min=1)
    kl = torch.where(target, kl_tok, 0).sum() / ntok
    penalty = torch.where(target, penalty_tok, 0).sum() / ntok
    return PPGLoss(pg.loss + kl_coef * penalty, pg.turns, pg.excluded, kl.detach())
