"""Typed settings: every stage's defaults and their documentation in one place.

A settings class is a frozen dataclass whose fields are declared with :func:`setting` (default,
JSON-schema and doc). The config's JSON schema takes those sections' properties from here
(:func:`lossgeom.config.load_schema`), :func:`lossgeom.config.section` fills a section's defaults from
here, and the loss registry declares each loss's parameters the same way
(:class:`lossgeom.losses.base.LossParams`). So a default is one line, and the schema, the rules and
the code cannot disagree about it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

POSITIVE_INT = {"type": "integer", "minimum": 1}


def setting(default, schema: Mapping, doc: str):
    """A field of a settings class: its default, its JSON-schema and its doc (the schema's description)."""
    return dataclasses.field(default=default, metadata={"schema": dict(schema), "doc": doc})


@dataclass(frozen=True)
class Settings:
    """The base of every settings class (no fields of its own)."""

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def schema(cls) -> dict[str, dict]:
        """The JSON-schema properties of these settings, each with its doc as the description."""
        return {f.name: {**f.metadata["schema"], "description": f.metadata["doc"]} for f in dataclasses.fields(cls)}

    @classmethod
    def filled(cls, given: Mapping | None) -> dict[str, Any]:
        """``given`` (a config section, already validated) with every missing key at its default."""
        return {**cls.defaults(), **dict(given or {})}


@dataclass(frozen=True)
class EvaluationSettings(Settings):
    """``evaluation``: greedy pass@1 of the base and every adapter on every test set, with paired statistics."""

    max_new_tokens: int = setting(256, POSITIVE_INT, "tokens generated per test item (greedy)")
    batch_size: int = setting(32, POSITIVE_INT, "prompts per generation batch")
    ci: str = setting(
        "wilson",
        {"enum": ["wilson", "clopper_pearson", "bootstrap"]},
        "accuracy interval (default wilson; bootstrap gives [0, 0] for 0/n)",
    )
    n_boot: int = setting(10_000, POSITIVE_INT, "bootstrap replicates (ci: bootstrap)")
    mid_p: bool = setting(False, {"type": "boolean"}, "McNemar mid-p instead of the exact p")


LABEL_PATTERN = "^[A-Za-z0-9_-]+/seed[0-9]+$"


@dataclass(frozen=True)
class LmcSettings(Settings):
    """``lmc``: linear-mode-connectivity sweeps, one job per pair of adapters."""

    test_set: str | None = setting(None, {"type": ["string", "null"]}, "a key of test_sets (default: the first)")
    alphas: int = setting(11, {"type": "integer", "minimum": 2}, "grid points in [0, 1], endpoints included")
    limit: int = setting(100, POSITIVE_INT, "test items whose cross-entropies are measured at each point")
    accuracy_subset: int = setting(50, POSITIVE_INT, "the first items of those whose greedy accuracy is measured")
    pairs: Any = setting(
        "first_seed",
        {
            "oneOf": [
                {"enum": ["first_seed", "reference", "all"]},
                {
                    "type": "array",
                    "items": {
                        "type": "array",
                        "minItems": 2,
                        "maxItems": 2,
                        "items": {"type": "string", "pattern": LABEL_PATTERN},
                    },
                },
            ]
        },
        '"first_seed": every pair of methods at the first seed; "reference": the first method against each other '
        'method at the first seed; both plus each method\'s first-vs-second seed pair (the noise floor). "all": '
        "every pair of adapters. Or a list of [label, label].",
    )


@dataclass(frozen=True)
class CkaSettings(Settings):
    """``cka``: per-layer hidden states of the base and every adapter on a probe set, compared by CKA."""

    test_set: str | None = setting(None, {"type": ["string", "null"]}, "a key of test_sets (default: the first)")
    n_probe: int = setting(100, POSITIVE_INT, "probes (test items with their worked solutions)")
    pooling: str = setting(
        "completion_mean",
        {"enum": ["completion_mean", "last", "mean"]},
        "one vector per probe: the mean over the solution's tokens, the last token, or every position but the first",
    )
    batch_size: int = setting(32, POSITIVE_INT, "probes per forward pass")


@dataclass(frozen=True)
class GeometrySettings(Settings):
    """``geometry``: the pairwise weight-delta comparisons."""

    top_k: int = setting(
        10,
        POSITIVE_INT,
        "singular directions per module compared (principal angles, orthogonal fractions); at most lora.r",
    )
    base_alignment: bool = setting(
        False,
        {"type": "boolean"},
        "also measure how much of each delta lies in the "
        "base weights' top singular subspaces (needs the base model's weights)",
    )


# config section -> its settings class
SECTIONS: dict[str, type[Settings]] = {
    "evaluation": EvaluationSettings,
    "lmc": LmcSettings,
    "cka": CkaSettings,
    "geometry": GeometrySettings,
}


@dataclass(frozen=True)
class VllmSettings(Settings):
    """``generation.vllm``: vLLM's offline engine (evaluation and connectivity sweeps; see README "Generation")."""

    gpu_memory_utilization: float = setting(
        0.85, {"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "share of the GPU's memory vLLM may take"
    )
    max_model_len: int = setting(4096, POSITIVE_INT, "prompt + completion tokens per sequence (sizes the KV cache)")
    max_lora_rank: int = setting(
        64,
        {"enum": [1, 8, 16, 32, 64, 128, 256, 320, 512]},
        "the largest LoRA rank served; a connectivity point is rank r1 + r2",
    )
    max_loras: int = setting(2, POSITIVE_INT, "adapters held at once")
    max_num_seqs: int = setting(256, POSITIVE_INT, "sequences per engine step")
    enforce_eager: bool = setting(False, {"type": "boolean"}, "no CUDA graphs (slower, less memory, quicker start)")
    cpu_kvcache_gib: float = setting(
        4, {"type": "number", "exclusiveMinimum": 0}, "KV cache on CPU-only hosts (VLLM_CPU_KVCACHE_SPACE)"
    )


@dataclass(frozen=True)
class OpenAISettings(Settings):
    """``generation.openai``: an OpenAI-compatible endpoint as the rollout teacher (see lossgeom.engines.openai_api)."""

    base_url: str | None = setting(
        None,
        {"type": "string", "pattern": "^https?://"},
        "the endpoint, e.g. https://api.deepseek.com/v1 (required by the openai backend)",
    )
    model: str | None = setting(None, {"type": "string", "minLength": 1}, "the model name requested (required)")
    api_key_env: str = setting(
        "OPENAI_API_KEY",
        {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "the NAME of the variable holding the key; never the key",
    )
    max_concurrency: int = setting(8, POSITIVE_INT, "requests in flight")
    max_retries: int = setting(
        6,
        {"type": "integer", "minimum": 0},
        "the client's retries per request (backoff; connection errors, timeouts, 408, 409, 429, 5xx)",
    )
    timeout_s: float = setting(600.0, {"type": "number", "exclusiveMinimum": 0}, "seconds per request")
    logprobs: bool = setting(
        False, {"type": "boolean"}, "request token log-probs (default false; DeepSeek's reasoning models refuse them)"
    )
    thinking: bool | None = setting(
        None,
        {"type": ["boolean", "null"]},
        "null: send nothing (the endpoint's default); true/false: send thinking: {type: enabled|disabled} (DeepSeek)",
    )
    reasoning_effort: str | None = setting(
        None, {"type": ["string", "null"], "minLength": 1}, "null: send nothing; else sent as reasoning_effort"
    )
    completion: str = setting(
        "reasoning+answer",
        {"enum": ["answer", "reasoning+answer"]},
        "a rollout's completion: the answer only, or <think>\\n{reasoning}\\n</think>\\n\\n{answer}",
    )
    max_tokens: int | None = setting(
        None,
        {"type": ["integer", "null"], "minimum": 1},
        "the token budget of a request, reasoning and answer together (a thinking "
        "model's trace counts against it); null: rollouts.max_new_tokens. Larger than "
        "that only with completion: answer (with reasoning+answer the completion must "
        "fit training.max_length)",
    )


# generation.<backend> -> its settings class
GENERATION_BACKENDS: dict[str, type[Settings]] = {"vllm": VllmSettings, "openai": OpenAISettings}
