"""The generation backends' options: ``generation.vllm`` and ``generation.openai``."""

from __future__ import annotations

from dataclasses import dataclass

from .base import POSITIVE_INT, Settings, setting


@dataclass(frozen=True)
class VllmSettings(Settings):
    """``generation.vllm``: vLLM's offline engine (evaluation and connectivity sweeps; see docs/ANALYSES.md, "Generation")."""

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
    max_concurrency: int = setting(
        8,
        POSITIVE_INT,
        "requests in flight (DeepSeek's documented concurrency limit for deepseek-flash is 2,500 per account; the "
        "default suits any endpoint, paper.yaml sends 32)",
        runtime=True,
    )
    max_retries: int = setting(
        6,
        {"type": "integer", "minimum": 0},
        "the client's retries per request (backoff; connection errors, timeouts, 408, 409, 429, 5xx)",
        runtime=True,
    )
    timeout_s: float = setting(600.0, {"type": "number", "exclusiveMinimum": 0}, "seconds per request", runtime=True)
    max_failed_fraction: float = setting(
        0.005,
        {"type": "number", "minimum": 0, "maximum": 1},
        "the share of requests that may fail for good (past the retries, twice, or answered malformed) before the "
        "job stops; under it, a prompt with a failed request is left out whole (its group would be partial)",
        runtime=True,
    )
    progress_every_s: float = setting(
        300.0,
        {"type": "number", "exclusiveMinimum": 0},
        "seconds between the job's progress lines (requests done, tokens, rate, time left, cost)",
        runtime=True,
    )
    prices: dict | None = setting(
        None,
        {
            "type": ["object", "null"],
            "additionalProperties": False,
            "required": ["prompt", "completion"],
            "properties": {
                "prompt": {"type": "number", "minimum": 0},
                "cached_prompt": {"type": "number", "minimum": 0},
                "completion": {"type": "number", "minimum": 0},
            },
        },
        "USD per million tokens, for the cost in the progress lines: prompt (a cache miss), cached_prompt (a "
        "cache hit; default the prompt price) and completion (reasoning included); null: no cost shown",
        runtime=True,
    )
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
