"""The analysis stages' settings: lmc, geometry, the base spectrum, and the jobs' resources. The measures of the
evaluation jobs (evaluation, cka, behaviour, forgetting) declare theirs in their own modules
(:data:`lossgeom.measures.SECTIONS`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import POSITIVE_INT, Settings, setting

LABEL_PATTERN = "^[A-Za-z0-9_-]+/seed[0-9]+(data[0-9]+)?$"  # an adapter, or a data-order replicate


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
        "every pair of adapters. Or a list of [label, label] (a data-order replicate, method/seedNdataM, may be one).",
    )


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


@dataclass(frozen=True)
class BaseSpectrumSettings(Settings):
    """``base_spectrum``: every delta against the base weight's own spectrum (lossgeom.geometry.spectrum):
    intruder dimensions, the rotation of the top singular subspaces, the change of the top singular values."""

    top_k: int = setting(
        10,
        POSITIVE_INT,
        "top singular vectors of W + dW examined (intruders) and subspace size of the rotation; 10 as "
        "Shuttleworth et al. (2024) and PEFT's reduce_intruder_dimension",
    )
    threshold: float = setting(
        0.5,
        {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "a top singular vector of W + dW is an intruder when its largest |cosine| to every singular vector of "
        "W is below this (PEFT's default)",
    )
    seed: int = setting(0, {"type": "integer", "minimum": 0}, "seed of the random deltas of the chance level")


@dataclass(frozen=True)
class ResourcesSettings(Settings):
    """``resources``: what each job asks a scheduler (SLURM) or the local machine for, sized from the config
    by :mod:`lossgeom.resources`; a profile still overrides any rule (``set-resources``, ``set-threads``)."""

    gpu_peak_tflops: float = setting(
        989.0,
        {"type": "number", "exclusiveMinimum": 0},
        "one GPU's peak dense bf16 TFLOP/s (989: an H100 SXM's datasheet; an H200's is the same): the cost "
        "model's compute rate (lossgeom.cost_model), at each stage's utilisation below",
    )
    gpu_memory_tb_s: float = setting(
        3.35,
        {"type": "number", "exclusiveMinimum": 0},
        "one GPU's memory bandwidth, TB/s (3.35: H100 SXM; H200: 4.8): the rate that bounds decoding",
    )
    train_utilisation: float = setting(
        0.35,
        {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "fraction of the peak a training pass runs at (an ASSUMPTION until measured: bench_throughput.py prints "
        "the MFU on a GPU)",
    )
    prefill_utilisation: float = setting(
        0.5,
        {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "fraction of the peak a forward without gradients (scoring, prompts) runs at (an ASSUMPTION)",
    )
    decode_bandwidth_utilisation: float = setting(
        0.6,
        {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "fraction of the memory bandwidth decoding reaches (an ASSUMPTION): its time is the larger of its bytes "
        "at this rate and its FLOPs at prefill_utilisation",
    )
    train_tokens_per_second: float | None = setting(
        None,
        {"type": ["number", "null"], "exclusiveMinimum": 0},
        "a MEASURED training throughput of one GPU, tokens a second of an SFT row, where one exists: it replaces "
        "the FLOP model's training rate (other losses scale by their sequences per example)",
    )
    mean_prompt_tokens: float | None = setting(
        None,
        {"type": ["number", "null"], "exclusiveMinimum": 0},
        "expected tokens of a prompt, for the expected column of `lossgeom cost` (null: its bound, training.max_length "
        "less rollouts.max_new_tokens)",
    )
    mean_completion_tokens: float | None = setting(
        None,
        {"type": ["number", "null"], "exclusiveMinimum": 0},
        "expected tokens of a completion (every stage), for the expected column of `lossgeom cost` (null: its "
        "limit); time limits always take every completion at its limit",
    )
    padding_fraction: float = setting(
        0.47,
        {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "share of a padded trainer's tokens that are padding in random batches (TRL's KTO and GRPO, and the "
        "pairwise losses without training.group_by_length; 0.47 measured by bench_throughput.py at the paper's "
        "lengths in batches of 8 rows), for the expected column",
    )
    grouped_padding_fraction: float = setting(
        0.24,
        {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        "the same for the pairwise losses' length-grouped batches (training.group_by_length; 0.237 measured by "
        "bench_throughput.py --modes dpo-grouped at the paper's lengths, 8 pairs a batch)",
    )
    test_set_rows: int = setting(
        1500,
        POSITIVE_INT,
        "rows assumed for a problem source whose size cannot be read before it is loaded (a hub dataset the "
        "cost model does not know, with no `limit`): an upper bound for sizing jobs",
    )
    runtime_margin: float = setting(
        1.25, {"type": "number", "minimum": 1}, "factor on a model job's estimated time (its time limit's headroom)"
    )
    runtime_overhead: int = setting(
        15, POSITIVE_INT, "minutes added to a model job's limit: starting, loading the model and data, saving"
    )
    max_runtime: int = setting(
        1440,
        POSITIVE_INT,
        "the longest time limit asked for, in minutes (the partition's MaxTime): a longer training job is "
        "stopped at it and resumes from its last checkpoint on the retry (profiles/slurm: retries)",
    )
    train_mem_mb: int = setting(
        16000, POSITIVE_INT, "host memory of a training job, MB (the model's host copy, the rollout table, the rows)"
    )
    gpu_job_mem_mb: int = setting(
        16000,
        POSITIVE_INT,
        "host memory of the other GPU jobs (generation, activations) and of the base spectrum (the base model's "
        "weights on the host), MB",
    )
    gpu_job_runtime: int = setting(
        240,
        POSITIVE_INT,
        "time limit of the model jobs the cost model does not size (the toy's pretraining, the base spectrum, "
        "geometry with base_alignment), minutes",
    )
    cpu_job_mem_mb: int = setting(4000, POSITIVE_INT, "host memory of the CPU jobs (aggregates, figures), MB")
    cpu_job_runtime: int = setting(30, POSITIVE_INT, "time limit of the CPU jobs, minutes")
    vllm_threads: int = setting(
        4,
        POSITIVE_INT,
        "CPUs of a job that runs vLLM (its engine core busy-polls in a process of its own beside the scheduler, "
        "the tokenizer and the job itself)",
    )
    memory_growth: float = setting(
        1.5,
        {"type": "number", "minimum": 1},
        "host memory of a retried job: the first attempt's x this per earlier attempt that SLURM killed for "
        "memory (its log says oom_kill or OUT_OF_MEMORY); a job stopped at its time limit keeps its memory",
    )
    max_mem_mb: int | None = setting(
        None,
        {"type": ["integer", "null"], "minimum": 1},
        "the most host memory a retried job asks for, MB (a node's size); null: no cap",
    )


# config section -> its settings class (the measures' sections: lossgeom.measures.SECTIONS)
SECTIONS: dict[str, type[Settings]] = {
    "lmc": LmcSettings,
    "geometry": GeometrySettings,
    "base_spectrum": BaseSpectrumSettings,
    "resources": ResourcesSettings,
}
