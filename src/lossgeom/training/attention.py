"""Attention for padding-free training: each row of a packed batch attends only within itself.

TRL's padding-free collator concatenates a batch's rows into one sequence of N tokens, position ids
restarting per row, and passes the row boundaries (``cu_seq_lens_q``, shape (rows + 1,), int32) down to
the attention. Flash attention's varlen kernels read them on a GPU. transformers' ``sdpa`` instead
builds a dense block-diagonal mask over the packed row, whose attention costs N^2 for a batch that
needs sum_i T_i^2 (eight rows of 1.6k tokens: 164M against 28M score entries per head), which on a CPU
loses to padding. :func:`varlen_sdpa` is the varlen path on ``scaled_dot_product_attention``: one causal
call per row, sum_i T_i^2. Registered with transformers' ``AttentionInterface`` as :data:`NAME`, a name
transformers has no mask function for, so it builds no mask at all (masking_utils: "custom attention
without equivalent mask creation").

Only for training batches: packed ones, or right-padded ones (without boundaries each row is attended
causally as a whole; a causal token never reaches a pad on its right). Never for left-padded generation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "lossgeom_varlen_sdpa"


def varlen_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal attention of ``query`` (batch, heads, T, head_dim) on ``key``/``value`` (batch, kv_heads, T,
    head_dim), within each row of ``cu_seq_lens_q`` where given; returns (batch, T, heads, head_dim), as
    transformers' attention functions do."""
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    p = dropout if module.training else 0.0
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        out = F.scaled_dot_product_attention(
            query, key, value, dropout_p=p, is_causal=True, scale=scaling, enable_gqa=gqa
        )
    else:
        bounds = cu.tolist()
        out = torch.cat(
            [
                F.scaled_dot_product_attention(
                    query[:, :, a:b],
                    key[:, :, a:b],
                    value[:, :, a:b],
                    dropout_p=p,
                    is_causal=True,
                    scale=scaling,
                    enable_gqa=gqa,
                )
                for a, b in zip(bounds[:-1], bounds[1:])
            ],
            dim=2,
        )
    return out.transpose(1, 2).contiguous(), None


def padding_free_attention() -> str:
    """The attention implementation for padding-free training here: flash attention 2 (its varlen kernels)
    on a GPU that has it, else :func:`varlen_sdpa` (registered on first use)."""
    from transformers import AttentionInterface
    from transformers.utils import is_flash_attn_2_available

    if torch.cuda.is_available() and is_flash_attn_2_available():
        return "flash_attention_2"
    AttentionInterface.register(NAME, varlen_sdpa)
    return NAME
