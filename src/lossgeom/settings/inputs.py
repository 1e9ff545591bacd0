"""The study's inputs: models, problem sources, rollouts, LoRA and training."""

from __future__ import annotations

from dataclasses import dataclass

from .base import POSITIVE_INT, REQUIRED, Settings, setting

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
    padding_free: bool = setting(
        True,
        {"type": "boolean"},
        "the losses this project trains on TRL's SFTTrainer (sft, rft, dft, rift, offline_grpo) take each batch's "
        "rows concatenated without padding (position ids restart per row: flash attention's varlen path on a "
        "GPU, the packed-sequence mask transformers builds for sdpa on a CPU), with the per-row weights carried "
        "per token; false: rows right-padded to the batch's longest. TRL's own trainers (dpo, ipo, simpo, kto, "
        "online_grpo) pad either way: TRL 1.16 has no padding-free option for them (DPOTrainer disables its own)",
    )
    group_by_length: bool = setting(
        True,
        {"type": "boolean"},
        "the pairwise losses (dpo, ipo on TRL's DPOTrainer; simpo on its CPOTrainer) batch pairs of similar length: "
        "each epoch the pairs are shuffled by the data-order seed and the epoch, cut into megabatches of up to 50 "
        "batches and sorted by length within each (transformers' LengthGroupedSampler), a pair's length being the "
        "one the collator pads it to (prompt + the longer of chosen and rejected, cut at max_length). Every pair is "
        "still trained once an epoch in a seeded order; only which pairs share a batch changes, and far less of a "
        "batch is padding. false: random batches. kto keeps the sequential order its KL estimate needs; the other "
        "losses are unaffected",
    )
    truncated: str = setting(
        "drop",
        {"enum": ["drop", "no_eos"]},
        'a rollout cut at the token limit (finish_reason "length"): drop it from every view, or train it without '
        "EOS (no_eos; the losses this project tokenises: sft, rft, dft, rift, offline_grpo). Counted in "
        "train_info.json. A method entry may override it",
    )
