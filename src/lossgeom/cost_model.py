"""The compute of every model-running stage, in FLOPs and device seconds, from the model's shape and the config:
one model for the time limits the jobs ask for (:mod:`lossgeom.resources`) and for the GPU-hour table
(``lossgeom cost``, the table in docs/CLUSTER.md).

FLOPs count matrix products only (a multiply-add = 2 FLOPs; norms, activations, softmax and rotary are left
out: under 1% at these shapes). With ``P`` the weights of every linear map a token passes through (attention
projections and MLP of each layer, and the LM head), ``L`` layers, ``H`` query heads of ``d`` dims:

- forward of one sequence of ``T`` tokens: ``2 P T + 4 L H d C``, ``C`` the attended (query, key) pairs:
  ``T (T + 1) / 2`` for a causal kernel that skips the masked half (flash attention, vLLM), ``T^2`` for one
  that computes the whole square (eager, sdpa's math path);
- a LoRA training pass (frozen base): that forward; the LoRA factors' own products (``2 T r (n + m)`` per
  adapted ``n -> m`` module, forward; twice that backward); and the input gradients of every product whose
  input depends on an adapted module (``2 n m T`` each; the first layer's projections below its first
  adapted module need none). No weight gradient of the base. With gradient checkpointing (the trainers':
  TRL's default), each layer's forward once more, and every input gradient;
- sampling ``n`` new tokens after a ``p``-token prompt: the prompt's forward, then ``2 P`` per new token and
  attention over ``p + 1 ... p + n`` keys; decoding is bound by memory, so its time is the larger of its
  FLOPs at the compute rate and its bytes (the weights once per decoding step of the batch, and every
  sequence's keys and values) at the memory rate.

Device time is FLOPs / (``gpu_peak_tflops`` x the stage's utilisation) (and bytes / ``gpu_memory_tb_s`` x
``decode_bandwidth_utilisation`` when decoding): stated assumptions in ``resources``, replaced by a measured
``train_tokens_per_second`` where one is set. Every count is checked against torch's own FLOP counter
(``torch.utils.flop_counter``) on Qwen3 models of several shapes (tests/test_cost_model.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .errors import InputError

# the linear maps of a Qwen3/Llama decoder layer in data-flow order, grouped by what feeds them:
# (q, k, v) read the layer's input, o the attention's output, (gate, up) the residual after attention,
# down the MLP's hidden state
MODULE_GROUPS = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))

# Shapes of the models the shipped configs name, from their config.json on the hub, so that `lossgeom cost`
# sizes them without a download; any other model is read from its own config.json (a local directory or
# the hub cache).
KNOWN_SHAPES = {
    "Qwen/Qwen3-4B-Instruct-2507": dict(
        layers=36, hidden=2560, heads=32, kv_heads=8, head_dim=128, intermediate=9728, vocab=151936
    ),
    "Qwen/Qwen3-4B": dict(layers=36, hidden=2560, heads=32, kv_heads=8, head_dim=128, intermediate=9728, vocab=151936),
}


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer's sizes (a Qwen3 or Llama config's fields)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_hf(cls, cfg: Mapping) -> Shape:
        """From a transformers config (``config.json``'s dict)."""
        heads = cfg["num_attention_heads"]
        return cls(
            layers=cfg["num_hidden_layers"],
            hidden=cfg["hidden_size"],
            heads=heads,
            kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            intermediate=cfg["intermediate_size"],
            vocab=cfg["vocab_size"],
        )

    def modules(self) -> dict[str, tuple[int, int]]:
        """``name -> (in, out)`` features of each linear map of one layer."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:
        """``P``: the weights of the linear maps one token passes through (the LM head included)."""
        return self.layers * sum(n * m for n, m in self.modules().values()) + self.hidden * self.vocab

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of one position's keys and values over all layers, at 2 bytes a value (bf16)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 2


def attended_pairs(tokens: float, causal: bool = True) -> float:
    """(query, key) pairs a sequence of ``tokens`` computes: ``T (T + 1) / 2`` causal, ``T^2`` dense."""
    return tokens * (tokens + 1) / 2 if causal else tokens * tokens


def forward_flops(shape: Shape, tokens: float, causal: bool = True) -> float:
    """FLOPs of one sequence's forward: ``2 P T + 4 L H d C(T)``."""
    core = 4 * shape.layers * shape.heads * shape.head_dim * attended_pairs(tokens, causal)
    return 2 * shape.linear_params * tokens + core


def lora_train_flops(
    shape: Shape,
    tokens: float,
    targets,
    rank: int,
    causal: bool = True,
    checkpointing: bool = False,
    head_tokens: float | None = None,
) -> float:
    """FLOPs of one sequence's LoRA training pass (forward and backward; the base frozen), ``targets`` the
    adapted module names (those of :data:`MODULE_GROUPS` count), ``rank`` the LoRA rank, ``head_tokens`` the
    positions the LM head computes (default all; the trainers' loss: the ``tokens - 1`` with a next token).

    ``checkpointing``: transformers' gradient checkpointing as the trainers run it (TRL's configs default it on,
    ``trl/trainer/base_config.py``): the input embeddings require a gradient (TRL's ``enable_input_require_grads``),
    and each decoder layer's forward is recomputed in the backward, up to the last product whose output the
    backward needs (torch's non-reentrant checkpoint stops early): ``down_proj`` itself, or an adapted
    ``down_proj``'s LoRA ``B``, is not recomputed.

    Long because the backward follows the layer's data flow to know which products need an input gradient."""
    dims, targets = shape.modules(), set(targets)
    head = tokens if head_tokens is None else head_tokens
    core = 2 * shape.heads * shape.head_dim * attended_pairs(tokens, causal)  # one of QK^T, PV
    total = forward_flops(shape, tokens, causal) - 2 * shape.hidden * shape.vocab * (tokens - head)
    grad = checkpointing  # whether the layer's input needs a gradient (never at the first layer, unless forced)
    lora_fwd = {m: 2 * tokens * rank * sum(dims[m]) for m in targets if m in dims}
    for _ in range(shape.layers):
        if checkpointing:  # the layer's forward again, less what the backward does not need
            total += sum(2 * n * out * tokens for n, out in dims.values()) + 2 * core + sum(lora_fwd.values())
            total -= (
                2 * tokens * rank * dims["down_proj"][1]
                if "down_proj" in targets
                else 2 * tokens * (dims["down_proj"][0] * dims["down_proj"][1])
            )
        for group in MODULE_GROUPS:
            adapted = [m for m in group if m in targets]
            for m in group:
                n, out = dims[m]
                if grad:  # the base's input gradient
                    total += 2 * n * out * tokens
                if m in targets:
                    # LoRA forward (x A, then B) and its two weight gradients; the input gradient through B
                    # always (B's input depends on A), through A only where the module's input needs one
                    total += 2 * tokens * rank * (n + out) * 2 + 2 * tokens * rank * out
                    total += 2 * tokens * rank * n if grad else 0
            if group[0] == "q_proj":  # the attention core after q, k, v: QK^T then PV
                # autograd computes the gradient of each operand that needs one: dQ, dK of QK^T; dP (when
                # Q or K needs one), dV of PV
                q, k, v = (grad or m in targets for m in group)
                total += core * (q + k + (q or k) + v)
                grad = q or k or v
            grad = grad or bool(adapted)
    if grad:  # the LM head's input gradient
        total += 2 * shape.hidden * shape.vocab * head
    return total


def decode_flops(shape: Shape, prompt: float, new: float, causal: bool = True) -> float:
    """FLOPs of sampling ``new`` tokens after a ``prompt``-token prompt, as vLLM and transformers' ``generate``
    run it: the prompt's forward with logits at its last position only, then one step for each new token but
    the last (that one is sampled, not fed back), step ``i`` attending to the ``p + i`` keys up to itself."""
    steps = max(new - 1, 0)
    keys = steps * prompt + steps * (steps + 1) / 2
    prefill = forward_flops(shape, prompt, causal) - 2 * shape.hidden * shape.vocab * max(prompt - 1, 0)
    return prefill + 2 * shape.linear_params * steps + 4 * shape.layers * shape.heads * shape.head_dim * keys


def decode_bytes(shape: Shape, prompt: float, new: float, batch: int, weight_bytes: int = 2) -> float:
    """Bytes read from device memory to sample ``new`` tokens of one sequence in a batch of ``batch``: the
    weights once per decoding step, shared by the batch, and the sequence's own keys and values at each step."""
    keys = new * prompt + new * (new + 1) / 2
    return weight_bytes * shape.linear_params * new / batch + shape.kv_bytes_per_token * keys


def model_shape(config: Mapping, which: str = "base") -> Shape | None:
    """The shape of ``model.<which>``: a toy model's from its ``toy.models`` entry, a directory's or a hub
    model's from its ``config.json`` (the directory, else the hub cache, else :data:`KNOWN_SHAPES`); None
    when none of them has it."""
    name = config["model"].get(which)
    if which != "base" and name in (None, "base"):  # the teacher defaults to the base
        which, name = "base", config["model"]["base"]
    if name == "toy":
        from .settings.toy import ToyModelSettings

        spec = ToyModelSettings.filled(config["toy"]["models"][which if which in config["toy"]["models"] else "base"])
        hidden, heads = spec["hidden_size"], spec["num_attention_heads"]
        return Shape(
            layers=spec["num_layers"],
            hidden=hidden,
            heads=heads,
            kv_heads=spec["num_key_value_heads"],
            head_dim=spec["head_dim"] or hidden // heads,
            intermediate=int(spec["mlp_ratio"] * hidden),
            vocab=config["toy"]["tokenizer_vocab"],
        )
    path = Path(name) / "config.json"
    if not path.is_file():
        path = _hub_cached_config(name)
    if path is not None and path.is_file():
        try:
            return Shape.from_hf(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError) as e:
            raise InputError(f"{path}: not a model's config.json ({type(e).__name__}: {e})") from None
    return Shape(**KNOWN_SHAPES[name]) if name in KNOWN_SHAPES else None


def _hub_cached_config(repo: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        hit = try_to_load_from_cache(repo, "config.json")
    except Exception:  # not a repository id (a path that does not exist, say): nothing cached
        return None
    return Path(hit) if isinstance(hit, str) else None
