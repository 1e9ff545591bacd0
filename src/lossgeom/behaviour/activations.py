"""Per-layer hidden states of one model on a probe set, pooled to one vector per probe, for CKA.

A probe is a chat-formatted prompt followed by its gold worked solution (EOS included). Pooling:

- ``completion_mean``: mean over the solution's tokens (the default: what the model does while
  reasoning);
- ``last``: the last token of the probe;
- ``mean``: mean over every position except the first, which acts as an attention sink and would
  dominate the mean (Qwen has no BOS token, so position 0 is the first prompt token).

The result is float32 (n_layers, n_probes, hidden) with layer l the output of transformer block l
(``hidden_states[1:]`` of a Hugging Face forward; the embeddings are left out).

Precision: every model, the base included, is run in float32, whatever ``model.dtype`` says
(:func:`activation_model`). The base weights are loaded in the configured dtype (the weights the
adapters were trained on; a bf16 checkpoint is not re-rounded) and upcast on the device, which is
exact; the adapter is merged into those float32 weights and the forward is float32 with TF32 off. In
bf16 a LoRA delta of DPO's relative size (~2e-4 of the weights' Frobenius norm) is mostly rounded
away, and the hidden-state change it causes drowns in bf16's rounding noise. Measured on a random
4-layer Qwen3 (hidden 128 and 256, q/k/v/o LoRA with ||dW|| = rel * ||W|| per module, 16 toy probes,
``completion_mean``; cosine and norm ratio of the per-layer change ``acts(tuned) - acts(base)`` to
the float64 change of the exact ``W + dW``):

=========================================  ====================  ====================
path (base run the same way)               rel 1e-4: cos, norm   rel 1e-3: cos, norm
=========================================  ====================  ====================
bf16 base, PEFT merge in bf16 (the old)    -0.05..0.08, 8.5-12x  0.24..0.46, 1.6-2.3x
bf16 base, unmerged fp32 LoRA (PEFT)       -0.04..0.03, 6.7-8.3x 0.32..0.48, 1.2-1.8x
fp32 merge, cast back to bf16              -0.12..0.06, 11-16x   0.26..0.45, 1.7-2.5x
fp32 base, fp32 merge, fp32 forward (this) >0.99999, 1 +- 1e-4   >0.99999, 1 +- 1e-4
=========================================  ====================  ====================

(norm > 1: the "change" is mostly rounding noise; at rel 1e-2 every bf16 path reaches cos 0.95-0.99.)
The merged bf16 weights keep a cosine of 0.21 to dW and 28% of its norm at 1e-4 (98% of the
entries' change is 0), 0.64 at 1e-3. Keeping the LoRA unmerged in fp32 does not help, because its
output is added to a bf16 activation and rounded to bf16 again in every adapted layer, so only a
float32 forward keeps the delta's effect. It costs twice the bf16 memory on the GPU (16 GB of
weights for a 4B model) for a 100-probe job; the host holds only the configured dtype's copy
(with a GPU the upcast is done there, so the job needs no more host memory than before).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data.problemsets import load_problems
from ..data.prompting import answer_template, answer_text, prompt_completion, right_padded
from ..engines.adapters import merge_adapter
from ..errors import InputError
from ..fsutil import atomic_path
from ..modeling import load_model, load_tokenizer
from .evaluation import gold_answer_text, reference_solution

POOLINGS = ("completion_mean", "last", "mean")


@torch.no_grad()
def hidden_states(
    model,
    tokenizer,
    problems: pd.DataFrame,
    *,
    template: str,
    pooling: str,
    batch_size: int,
    answer_format: str | None = None,
) -> np.ndarray:
    """Pooled per-layer hidden states, see the module docstring. Problems without a worked solution
    are probed with the gold answer alone, written as the prompt asks for it (``answer_format``, see
    :func:`lossgeom.data.prompting.answer_template`)."""
    fmt = answer_template(template, answer_format)
    if pooling not in POOLINGS:
        raise InputError(f"cka.pooling {pooling!r} is not one of {POOLINGS}")
    if problems.empty:
        raise InputError("the CKA probe set is empty: cka.test_set has no items")
    model.eval()
    dev = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    layers = []
    for start in tqdm(range(0, len(problems), batch_size), desc="activations", unit="batch"):
        chunk = problems.iloc[start : start + batch_size]
        seqs, spans = [], []
        for _, row in chunk.iterrows():
            ids_i, mask_i = prompt_completion(
                tokenizer,
                row["question"],
                reference_solution(row) or answer_text(gold_answer_text(row["answer"]), fmt),
                template,
            )
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


@contextmanager
def full_float32_matmul():
    """float32 matmuls in full float32 (no TF32) while inside: TF32 rounds to a 10-bit mantissa
    (~5e-4 relative), which would put back on a GPU the noise the float32 forward is there to avoid.
    (``highest`` is torch's default; this guards against a process that lowered it.)"""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def activation_model(base: str, adapter: Path | None, *, dtype: str = "float32", trust_remote_code: bool = False):
    """The float32 model whose activations are compared: ``base`` loaded in ``dtype`` (the configured
    weights) and moved to the device, upcast there to float32 (exact for bf16/fp16 weights; with a GPU
    the host never holds a float32 copy), with ``adapter`` merged into the float32 weights when given
    (read and checked against the base first, :func:`~lossgeom.engines.adapters.merge_adapter`).
    The base (``adapter=None``) goes through the same path, so a difference between two models'
    activations is the delta's, not a dtype's. Why float32: the module docstring."""
    model = load_model(base, dtype, trust_remote_code).float()
    if adapter is not None:
        with full_float32_matmul():  # B @ A of the merge
            model = merge_adapter(model, adapter, base)
    kept = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()} - {"torch.float32"})
    if kept:  # a module left in half precision would round the delta away again
        raise RuntimeError(f"{base}: parameters in {kept} after the float32 upcast; the activations need float32")
    return model


def release_device_memory() -> None:
    """Return freed GPU memory to the device (after :func:`extract_activations`' model is dropped), so an
    engine that sizes itself from the free memory (vLLM) sees it."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def extract_activations(
    base: str,
    adapter: Path | None,
    test_set: dict,
    toy_dir: Path | None,
    *,
    n_probe: int,
    pooling: str,
    template: str,
    batch_size: int,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    answer_format: str | None = None,
) -> dict[str, np.ndarray]:
    """Pooled per-layer hidden states of one model (the base, or ``adapter`` merged into it) on the
    probe set: ``acts`` float32 (n_layers, n_probe, hidden), ``ids`` (str, n_probe), ``pooling`` (0-d str),
    the arrays :func:`write_activations` writes. ``dtype`` is the dtype the base weights are loaded in; the
    forward is float32 whatever it is (:func:`activation_model`)."""
    problems = load_problems({**test_set, "limit": n_probe}, toy_dir)
    model = activation_model(base, adapter, dtype=dtype, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(base, trust_remote_code)
    with full_float32_matmul():
        acts = hidden_states(
            model,
            tokenizer,
            problems,
            template=template,
            pooling=pooling,
            batch_size=batch_size,
            answer_format=answer_format,
        )
    return {"acts": acts, "ids": problems["id"].to_numpy(dtype=str), "pooling": np.array(pooling)}


def write_activations(arrays: dict[str, np.ndarray], out: Path) -> None:
    """The activations npz (:func:`extract_activations`' arrays), written whole or not at all."""
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
