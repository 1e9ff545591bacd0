"""Per-layer hidden states of one model on a probe set, pooled to one vector per probe, for CKA.

A probe is a chat-formatted prompt followed by its gold worked solution (EOS included). Pooling:

- ``completion_mean``: mean over the solution's tokens (the default: what the model does while
  reasoning);
- ``last``: the last token of the probe;
- ``mean``: mean over every position except the first, which acts as an attention sink and would
  dominate the mean (Qwen has no BOS token, so position 0 is the first prompt token).

The result is float32 (n_layers, n_probes, hidden) with layer l the output of transformer block l
(``hidden_states[1:]`` of a Hugging Face forward; the embeddings are left out).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data.problemsets import load_problems
from ..fsutil import atomic_path
from ..generation.adapters import merge_adapter
from ..modeling import load_model, load_tokenizer
from .evaluation import reference_solution
from ..data.prompting import prompt_completion, right_padded

POOLINGS = ("completion_mean", "last", "mean")


@torch.no_grad()
def hidden_states(model, tokenizer, problems: pd.DataFrame, *, template: str, pooling: str, batch_size: int) -> np.ndarray:
    """Pooled per-layer hidden states, see the module docstring. Problems without a worked solution
    are probed with the ``#### <answer>`` line only."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    if problems.empty:
        raise ValueError("the CKA probe set is empty")
    model.eval()
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    layers = []
    for start in tqdm(range(0, len(problems), batch_size), desc="activations", unit="batch"):
        chunk = problems.iloc[start : start + batch_size]
        seqs, spans = [], []
        for _, row in chunk.iterrows():
            ids_i, mask_i = prompt_completion(tokenizer, row["question"], reference_solution(row) or f"#### {row['answer']}", template)
            seqs.append(ids_i)
            spans.append((mask_i.index(1), len(ids_i)))
        ids, attn = right_padded(seqs, pad, dev)
        width = ids.shape[1]
        hs = model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states[1:]
        weights = torch.zeros(len(seqs), width, device=dev)
        for i, (lo, hi) in enumerate(spans):
            if pooling == "completion_mean":
                weights[i, lo:hi] = 1.0 / (hi - lo)
            elif pooling == "last":
                weights[i, hi - 1] = 1.0
            else:
                weights[i, 1:hi] = 1.0 / (hi - 1)
        pooled = torch.stack([torch.einsum("bt,btd->bd", weights, h.float()) for h in hs])
        layers.append(pooled.cpu().numpy())
    return np.concatenate(layers, axis=1).astype(np.float32)


def extract_activations(
    base: str, adapter: Path | None, test_set: dict, toy_dir: Path | None, out: Path, *, n_probe: int, pooling: str,
    template: str, batch_size: int, dtype: str = "float32", trust_remote_code: bool = False,
) -> None:
    """Pooled per-layer hidden states of one (merged) model on the probe set; writes the npz."""
    problems = load_problems({**test_set, "limit": n_probe}, toy_dir)
    model = load_model(base, dtype, trust_remote_code)
    if adapter is not None:  # merged, as in evaluation; read and checked against the base first
        model = merge_adapter(model, adapter, base)
    tokenizer = load_tokenizer(base, trust_remote_code)
    acts = hidden_states(model, tokenizer, problems, template=template, pooling=pooling, batch_size=batch_size)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, acts=acts, ids=problems["id"].to_numpy(dtype=str), pooling=np.array(pooling))
