"""The custom offline losses, as pure functions of per-token log-probabilities.

Shapes: ``logp`` (batch, T) holds log pi(y_t | x, y_<t) of each completion token (0 where masked),
``mask`` (batch, T) is 1 on completion tokens, per-row tensors are (batch,). A padding-free batch is
one row of all the batch's tokens: ``logp`` and ``mask`` (1, N), the per-row numbers carried per token
(1, N), and ``seq_idx`` (1, N) the row of each token where a loss needs a row's sum. Every loss is a sum
over completion tokens divided by ``num_tokens`` (the number of completion tokens in the whole
accumulated batch), exactly the normalisation of TRL's SFT loss, so SFT through these functions
with unit weights equals TRL's NLL and the learning rates of all methods are comparable.

SFT, RFT and DFT use TRL's own losses (DFT: ``SFTConfig(loss_type="dft")``: each token's NLL
scaled by its detached probability); DPO uses TRL's ``DPOTrainer``. The two below are not in TRL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a loss is computed: the registry is read at config time
    import torch


def per_token(values: torch.Tensor) -> torch.Tensor:
    """A per-row tensor (batch,) as (batch, 1), broadcasting over its row's tokens; one already carried
    per token (1, N), as a padding-free batch has it, unchanged."""
    return values[:, None] if values.dim() == 1 else values


def row_sums(values: torch.Tensor, seq_idx: torch.Tensor | None) -> torch.Tensor:
    """Each row's sum of ``values`` (batch, T), on each of its tokens: (batch, 1) for a padded batch;
    for a padding-free one (``seq_idx`` (1, N) given), (1, N)."""
    import torch

    if seq_idx is None:
        return values.sum(dim=1, keepdim=True)
    rows = seq_idx[0].long()
    sums = torch.zeros(int(rows.max()) + 1, dtype=values.dtype, device=values.device).index_add(0, rows, values[0])
    return sums[rows][None]


def weighted_nll(logp: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor, num_tokens) -> torch.Tensor:
    """sum_i w_i * sum_t -log p_it / num_tokens. Unit weights give TRL's SFT loss."""
    return (per_token(weights) * -logp * mask).sum() / num_tokens


def rift_loss(
    logp: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    positive_reward: float,
    negative_reward: float,
    num_tokens,
    negative_prob: str = "token",
    seq_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reward-informed fine-tuning, the source paper's stabilised form (Liu et al. 2026).

    A correct rollout (reward 1) gets weight R+ = ``positive_reward`` on its NLL: R+ * -log p_t.
    An incorrect one (reward 0) gets R- = ``negative_reward`` (< 0). The naive term R- * -log p_t
    = |R-| log p_t is unbounded below (it drives log p_t to -inf), so it is replaced by its
    linearisation around p_t = 1, |R-| * p_t (log p ~ p - 1, constant dropped): bounded in
    [0, |R-|] per token, with gradient |R-| * p_t * grad log p_t that fades as the token becomes
    unlikely.

    ``negative_prob`` chooses the probability in the negative term:

    * ``token`` (default): per token, |R-| * p_t with p_t = exp(log p_t);
    * ``sequence``: the RIFT paper's form, the sequence probability p(y) = exp(sum_t log p_t) of
      the wrong completion, put on each of its tokens (|R-| * p(y) per token), so both forms share
      the per-token normalisation of the positive term. Its gradient on each token is
      |R-| * p(y) * grad log p_t.

    The token form is the default: a sequence probability is a product over every token of a trace
    (hundreds in the paper's chains of thought), underflows towards zero and its gradient vanishes,
    so the negatives would stop counting; the token form keeps every token of a wrong trace in play.
    With ``negative_reward >= 0`` both forms reduce to the weighted NLL ``R- * -log p_t``.
    """
    import torch

    if negative_prob not in ("token", "sequence"):
        raise ValueError(f"rift_loss: negative_prob must be 'token' or 'sequence', got {negative_prob!r}")
    correct = per_token(rewards) > 0.5
    pos = positive_reward * -logp
    if negative_reward >= 0:
        neg = negative_reward * -logp
    elif negative_prob == "token":
        neg = -negative_reward * logp.exp()
    else:
        seq = row_sums(logp * mask, seq_idx).exp()  # p(y) of each row, on its tokens
        neg = (-negative_reward * seq).expand_as(logp)
    terms = torch.where(correct, pos, neg)
    return (terms * mask).sum() / num_tokens


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || ref) on samples from the data: exp(d) - d - 1, d = ref - logp.
    Non-negative, zero where the two agree."""
    d = ref_logp - logp
    return d.exp() - d - 1


def offline_grpo_loss(
    logp: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    num_tokens,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> torch.Tensor:
    """Offline GRPO (KRAFTON AI 2025): advantage-weighted NLL, sum_i A_i sum_t -log p_it / num_tokens,
    with A_i from ``views.grpo_advantages``; no importance ratio. With ``kl_coef`` > 0 and the
    reference (base) log-probs, adds kl_coef * k3 KL to the reference per token."""
    loss = weighted_nll(logp, mask, advantages, num_tokens)
    if kl_coef > 0:
        if ref_logp is None:
            raise ValueError("offline_grpo with kl_coef > 0 needs the reference log-probs")
        loss = loss + kl_coef * (kl_k3(logp, ref_logp) * mask).sum() / num_tokens
    return loss
