"""The toy world's settings: ``toy`` and its two models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import POSITIVE_INT, REQUIRED, Settings, setting
from .inputs import LEARNING_RATE, WARMUP_DOC, WARMUP_RATIO


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
    n_heldout: int = setting(
        200, POSITIVE_INT, "more held-out problems, never evaluated on: the toy's forgetting text (split heldout)"
    )
    seed: int = setting(0, {"type": "integer", "minimum": 0}, "the problems' seed")
    models_from: str = setting(
        "train",
        {"type": "string", "minLength": 1},
        '"train": pretrain the base and teacher from scratch; or a directory that lossgeom toy-ship wrote (a relative '
        "path is the workflow's: beside the Snakefile): the models are copied from it after checking that they were trained for this "
        "config and that every file has its recorded SHA-256, so that every machine starts from the same models "
        "(pretraining from scratch gives other models under other CPU kernels: lossgeom.toy.shipped)",
    )
    min_steps: int = setting(2, POSITIVE_INT, "fewest additions/subtractions per problem")
    max_steps: int = setting(3, POSITIVE_INT, "most additions/subtractions per problem")
    max_start: int = setting(15, {"type": "integer", "minimum": 2}, "the largest starting number")
    max_operand: int = setting(9, POSITIVE_INT, "the largest operand")
    max_double: int = setting(
        20, {"type": "integer", "minimum": 0}, "a value is doubled only while it is at most this (0: no doubling)"
    )


# where each settings class's object schema goes in the config's JSON schema (lossgeom.config.load_schema)
