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


REQUIRED = dataclasses.MISSING  # a setting the config must give (listed in the schema's ``required``)


def setting(default, schema: Mapping, doc: str, key: str | None = None):
    """A field of a settings class: its default (or :data:`REQUIRED`), its JSON-schema and its doc (the
    schema's description). ``key``: the config's name for it where that is not a Python name (``import``)."""
    meta = {"schema": dict(schema), "doc": doc, "key": key}
    if default is REQUIRED:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


@dataclass(frozen=True)
class Settings:
    """The base of every settings class (no fields of its own). Keys are the config's names."""

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(_key(f) for f in dataclasses.fields(cls))

    @classmethod
    def required(cls) -> tuple[str, ...]:
        """The keys without a default: the config must give them."""
        return tuple(_key(f) for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every key that has a default, with it (required keys are left out)."""
        return {_key(f): f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    @classmethod
    def schema(cls) -> dict[str, dict]:
        """The JSON-schema properties of these settings, each with its doc as the description."""
        return {_key(f): {**f.metadata["schema"], "description": f.metadata["doc"]} for f in dataclasses.fields(cls)}

    @classmethod
    def object_schema(cls) -> dict:
        """The whole (closed) object schema of a section: description, required keys and properties."""
        out = {"type": "object", "additionalProperties": False, "description": (cls.__doc__ or "").strip()}
        if cls.required():
            out["required"] = list(cls.required())
        out["properties"] = cls.schema()
        return out

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
    seed: int = setting(0, {"type": "integer", "minimum": 0}, "the bootstrap's seed (ci: bootstrap)")


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


# ---- the study's inputs: models, problems, rollouts, LoRA and training --------------------------------

DTYPES = ["float32", "bfloat16", "float16", "auto"]
GRADERS = ["exact", "math_verify"]
LEARNING_RATE = {"type": "number", "exclusiveMinimum": 0}
WARMUP_RATIO = {"type": "number", "minimum": 0, "exclusiveMaximum": 1}
WARMUP_DOC = "fraction of the steps that warm the learning rate up (transformers reads values >= 1 as a step count)"


@dataclass(frozen=True)
class ModelSettings(Settings):
    """``model``: the student (base) and the rollout teacher, and how prompts are written for them."""

    base: str = setting(
        REQUIRED, {"type": "string", "minLength": 1}, '"toy", a Hugging Face model id or a local directory'
    )
    teacher: str = setting(
        "base",
        {"type": "string", "minLength": 1},
        '"toy", "base" (the base model), a Hugging Face model id or a local directory',
    )
    trust_remote_code: bool = setting(False, {"type": "boolean"}, "let transformers run the model repository's code")
    dtype: str = setting("float32", {"enum": DTYPES}, "the weights' dtype wherever a model is loaded")
    prompt_template: str = setting(
        "{question}", {"type": "string", "pattern": "\\{question\\}"}, "how a question is written as the user turn"
    )
    answer_template: str | None = setting(
        None,
        {"type": ["string", "null"], "pattern": "\\{answer\\}"},
        "how a bare gold answer is written after the prompt, for the answer cross-entropy and probes without a "
        'worked solution; {answer} marks the answer. Default: what prompt_template asks for ("\\\\boxed{{answer}}" '
        'when it names \\\\boxed, else GSM8K\'s "#### {answer}")',
    )


@dataclass(frozen=True)
class ProblemSourceSettings(Settings):
    """A problem source (``prompts``, each of ``test_sets``): "toy" (the generated toy world), a local
    .jsonl/.json/.parquet/.csv file, a local dataset directory, or a Hugging Face dataset name."""

    source: str = setting(
        REQUIRED, {"type": "string", "minLength": 1}, '"toy", a local file or directory, or a dataset name'
    )
    subset: str | None = setting(None, {"type": ["string", "null"]}, "the dataset's configuration (e.g. main)")
    split: str = setting("train", {"type": "string"}, "the split read")
    id_field: str | None = setting(
        None, {"type": ["string", "null"]}, "the id column (null: {file stem}-{split}-{row})"
    )
    question_field: str = setting("question", {"type": "string"}, "the question column")
    answer_field: str = setting("answer", {"type": "string"}, "the gold answer (or solution) column")
    limit: int | None = setting(None, {"type": ["integer", "null"], "minimum": 1}, "the first rows only (null: all)")
    grader: str = setting("exact", {"enum": GRADERS}, "how the gold and the answers are read (lossgeom.data.grading)")
    unparsable_gold: str = setting(
        "stop",
        {"enum": ["stop", "drop"]},
        "a gold answer the grader cannot read (every gold is read before anything is generated or sent): stop "
        "with one line naming the item and the source, or drop such items and report how many",
    )


@dataclass(frozen=True)
class RolloutsSettings(Settings):
    """``rollouts``: K sampled completions per prompt from the sampler, graded (the paper's rollout table)."""

    k: int = setting(REQUIRED, {"type": "integer", "minimum": 2}, "samples per prompt (the paper's K)")
    temperature: float = setting(REQUIRED, {"type": "number", "exclusiveMinimum": 0}, "sampling temperature")
    max_new_tokens: int = setting(REQUIRED, POSITIVE_INT, "the token limit of a completion (a longer one is truncated)")
    top_p: float = setting(1.0, {"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "nucleus sampling mass")
    batch_size: int = setting(32, POSITIVE_INT, "prompts per generate() call (hf backend)")
    seed: int = setting(0, {"type": "integer", "minimum": 0}, "the sampling seed")
    sampler: str = setting("teacher", {"enum": ["teacher", "base"]}, "which model samples: model.teacher or model.base")
    grader: str = setting("exact", {"enum": GRADERS}, "how the rollouts' answers are graded against the prompts' golds")
    import_: str | None = setting(
        None,
        {"type": ["string", "null"]},
        "a JSONL or parquet file of rollouts to use instead of sampling",
        key="import",
    )


@dataclass(frozen=True)
class LoraSettings(Settings):
    """``lora``: the LoRA recipe shared by every method, ``dW = s B A`` with ``s = alpha / r``."""

    target_modules: list = setting(
        REQUIRED, {"type": "array", "minItems": 1, "items": {"type": "string"}}, "module names adapted"
    )
    r: int = setting(REQUIRED, POSITIVE_INT, "the rank")
    alpha: float = setting(REQUIRED, {"type": "number", "exclusiveMinimum": 0}, "the scale's numerator")
    dropout: float = setting(0.0, {"type": "number", "minimum": 0, "maximum": 1}, "LoRA dropout")
    use_rslora: bool = setting(False, {"type": "boolean"}, "rsLoRA: s = alpha / sqrt(r)")


@dataclass(frozen=True)
class TrainingSettings(Settings):
    """``training``: shared by every method; a method entry may override the optimisation keys."""

    steps: int = setting(REQUIRED, POSITIVE_INT, "optimiser steps")
    save_steps: list = setting(
        REQUIRED, {"type": "array", "minItems": 1, "items": POSITIVE_INT}, "steps whose adapters are kept"
    )
    analysis_step: int = setting(
        REQUIRED, POSITIVE_INT, "the saved step every later stage reads (the paper: 1,000 of 1,500)"
    )
    batch_size: int = setting(REQUIRED, POSITIVE_INT, "rows per device step")
    learning_rate: float = setting(REQUIRED, LEARNING_RATE, "the peak learning rate")
    checkpoint_every: int | None = setting(
        None,
        {"type": ["integer", "null"], "minimum": 1},
        "steps between resumable checkpoints (null: a quarter of steps)",
    )
    grad_accum: int = setting(1, POSITIVE_INT, "device steps accumulated per optimiser step")
    lr_scheduler: str = setting(
        "cosine", {"enum": ["cosine", "linear", "constant", "constant_with_warmup"]}, "the learning-rate schedule"
    )
    warmup_ratio: float = setting(0.05, WARMUP_RATIO, WARMUP_DOC)
    weight_decay: float = setting(0.01, {"type": "number", "minimum": 0}, "AdamW's weight decay")
    max_grad_norm: float = setting(1.0, {"type": "number", "minimum": 0}, "gradient clipping norm")
    max_length: int = setting(1024, POSITIVE_INT, "tokens of prompt + completion per row (longer rows are cut)")
    precision: str = setting("fp32", {"enum": ["fp32", "bf16"]}, "training precision")
    data_seed: int | None = setting(
        None, {"type": ["integer", "null"], "minimum": 0}, "fixed data-order seed for all seeds (null: the seed itself)"
    )
    threads: int = setting(1, POSITIVE_INT, "CPU threads for torch (the job's Snakemake threads)")
    truncated: str = setting(
        "drop",
        {"enum": ["drop", "no_eos"]},
        'a rollout cut at the token limit (finish_reason "length"): drop it from every view, or train it without '
        "EOS (no_eos; the losses this project tokenises: sft, rft, dft, rift, offline_grpo). Counted in "
        "train_info.json. A method entry may override it",
    )


# ---- the toy world -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyModelSettings(Settings):
    """``toy.models.base`` / ``toy.models.teacher``: a Qwen3ForCausalLM trained from scratch by the workflow."""

    hidden_size: int = setting(REQUIRED, POSITIVE_INT, "the residual width")
    num_layers: int = setting(REQUIRED, POSITIVE_INT, "decoder layers")
    num_attention_heads: int = setting(REQUIRED, POSITIVE_INT, "query heads")
    num_key_value_heads: int = setting(REQUIRED, POSITIVE_INT, "key/value heads")
    steps: int = setting(REQUIRED, POSITIVE_INT, "pretraining steps")
    batch_size: int = setting(REQUIRED, POSITIVE_INT, "rows per step")
    learning_rate: float = setting(REQUIRED, LEARNING_RATE, "the peak learning rate (cosine)")
    head_dim: int | None = setting(
        None,
        {"type": ["integer", "null"], "minimum": 1},
        "per-head width (null: hidden_size / num_attention_heads); vLLM's CPU attention supports 32, 64, 80, 96, "
        "112, 128, 160, 192, 224, 256, 512",
    )
    mlp_ratio: float = setting(3, {"type": "number", "exclusiveMinimum": 0}, "the MLP's width / hidden_size")
    max_position_embeddings: int = setting(256, POSITIVE_INT, "the longest sequence the model is built for")
    warmup_ratio: float = setting(0.05, WARMUP_RATIO, WARMUP_DOC)
    style: Any = setting(
        "terse",
        {
            "oneOf": [
                {"enum": ["terse", "verbose", "direct"]},
                {
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": False,
                    "patternProperties": {"^(terse|verbose|direct)(\\+cue)?$": {"type": "number", "minimum": 0}},
                },
            ]
        },
        "the solution style the model is pretrained on: terse (bare equations), verbose (the teacher's own "
        "chain-of-thought style) or direct (the answer line alone, no working); or a mixture {kind: weight} over "
        'styles and cued styles ("verbose+cue": the verbose solution after a question that ends with the model\'s '
        "cue), each training problem drawing its kind with those weights",
    )
    cue: str | None = setting(
        None, {"type": ["string", "null"], "minLength": 1}, 'the sentence appended to the question of the "+cue" rows'
    )


@dataclass(frozen=True)
class ToySettings(Settings):
    """``toy``: the generated toy world. Used where model.base, model.teacher or a problem source is "toy"."""

    n_train: int = setting(
        REQUIRED, POSITIVE_INT, "problems the toy models are trained on (rollout prompts come from here)"
    )
    n_test: int = setting(REQUIRED, POSITIVE_INT, "held-out problems for evaluation")
    tokenizer_vocab: int = setting(REQUIRED, {"type": "integer", "minimum": 300}, "the BPE vocabulary size")
    models: dict = setting(
        REQUIRED,
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["base", "teacher"],
            "properties": {"base": {"$ref": "#/$defs/toy_model"}, "teacher": {"$ref": "#/$defs/toy_model"}},
        },
        "the toy base (the student) and teacher",
    )
    seed: int = setting(0, {"type": "integer", "minimum": 0}, "the problems' seed")
    min_steps: int = setting(2, POSITIVE_INT, "fewest additions/subtractions per problem")
    max_steps: int = setting(3, POSITIVE_INT, "most additions/subtractions per problem")
    max_start: int = setting(15, {"type": "integer", "minimum": 2}, "the largest starting number")
    max_operand: int = setting(9, POSITIVE_INT, "the largest operand")
    max_double: int = setting(
        20, {"type": "integer", "minimum": 0}, "a value is doubled only while it is at most this (0: no doubling)"
    )


# where each settings class's object schema goes in the config's JSON schema (lossgeom.config.load_schema)
SCHEMA_SECTIONS: dict[str, type[Settings]] = {
    "$defs/toy_model": ToyModelSettings,
    "$defs/problem_source": ProblemSourceSettings,
    "properties/toy": ToySettings,
    "properties/model": ModelSettings,
    "properties/rollouts": RolloutsSettings,
    "properties/lora": LoraSettings,
    "properties/training": TrainingSettings,
    **{f"properties/{key}": cls for key, cls in SECTIONS.items()},
    **{f"properties/generation/properties/{key}": cls for key, cls in GENERATION_BACKENDS.items()},
}
