"""The generation interface every stage that turns prompts into text goes through.

One interface, several engines (:func:`lossgeom.engines.backends.open_engine`):

- ``hf``: Hugging Face ``generate`` and forward passes (:mod:`.hf`). The default: the toy and
  CPU-only machines. Adapters are merged into the weights, as the paper evaluates them.
- ``vllm``: vLLM's offline engine (:mod:`.vllm_engine`). The base model is loaded once per job;
  adapters are LoRA requests, never merged; a connectivity point is one rank ``r1 + r2`` adapter.
- ``openai``: an OpenAI-compatible endpoint as the rollout teacher (:mod:`.openai_api`); it has no
  local model, so it serves rollouts only (it cannot put an adapter on an API model).

Conventions. A prompt is a list of token ids, chat-formatted by :func:`lossgeom.data.prompting.prompt_ids`,
so every engine sees exactly the tokens the trainers see. A completion's ``token_ids`` end with EOS
when the model stopped (``finish_reason == "stop"``); ``text`` is decoded without special tokens.
``logprobs`` are the sampled tokens' log-probabilities (nats) under the *sampling* distribution
(after temperature and top-p), one per token id, or ``None`` where the engine cannot give them.
Seeds make a backend deterministic with itself, not across backends.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Union

import numpy as np

from ..data.rollouts import FINISH_REASONS
from ..errors import InputError
from ..settings import OpenAISettings, VllmSettings

BACKENDS = ("hf", "vllm", "openai")
# The options of each backend (generation.vllm, generation.openai) with their defaults and docs: the
# settings classes of lossgeom.settings (one place; the config schema takes them from there too).
VLLM_DEFAULTS = VllmSettings.defaults()
OPENAI_DEFAULTS = OpenAISettings.defaults()


class GenerationError(InputError):
    """A generation backend cannot run as configured (not installed, unreachable, refused, a LoRA rank
    above the engine's maximum, ...); the message says which and what to do, in one line."""


@dataclass(frozen=True)
class Sampling:
    """How to decode: ``temperature == 0`` is greedy (``n`` must then be 1).

    Attributes: n completions per prompt; temperature; top_p; max_new_tokens; seed (``None``: the
    engine's own); logprobs: return the sampled tokens' log-probabilities.
    """

    max_new_tokens: int
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = False

    def __post_init__(self):
        if self.temperature == 0 and self.n != 1:
            raise InputError(f"greedy decoding gives one completion per prompt, not n={self.n}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1 or self.n < 1:
            raise InputError(
                f"invalid sampling settings {self}: temperature must be >= 0, top_p in (0, 1], max_new_tokens and n >= 1"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Completion:
    """One generated continuation (see the module docstring for the conventions).

    ``finish_reason`` is ``"stop"`` (the model ended it: EOS, or the endpoint's own stop) or ``"length"``
    (cut at ``max_new_tokens``: a truncated completion, which training drops or trains without EOS).
    ``meta`` holds what an API endpoint says of the request, as rollout-table columns (``ROLLOUT_META``
    of :mod:`lossgeom.data.rollouts`: the reasoning and the answer a reasoning model returns apart, the
    served model id, its system fingerprint, token usage); local engines leave it empty.
    """

    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str
    meta: Mapping = field(default_factory=dict)

    def __post_init__(self):
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}")


@dataclass(frozen=True)
class AdapterDir:
    """A PEFT LoRA adapter directory, applied on top of the engine's base model."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class PathPoint:
    """The point ``(1 - alpha) dW_first + alpha dW_second`` of the straight path between two adapters'
    deltas (``alpha = 0`` is ``first``), applied on top of the base model."""

    first: Path
    second: Path
    alpha: float

    def __str__(self) -> str:
        return f"{self.first} -> {self.second} @ alpha={self.alpha:.3f}"


Adapter = Union[AdapterDir, PathPoint, None]


class Engine(ABC):
    """A base model that generates and scores, with an optional adapter per call."""

    name: str = "?"

    @abstractmethod
    def generate(
        self, prompts: list[list[int]], sampling: Sampling, adapter: Adapter = None, desc: str = "generate"
    ) -> list[list[Completion]]:
        """``sampling.n`` completions for each prompt, in prompt order."""

    @abstractmethod
    def score(self, sequences: list[list[int]], masks: list[list[int]], adapter: Adapter = None) -> np.ndarray:
        """Mean negative log-likelihood (nats/token) of the tokens where ``mask == 1`` given everything
        before them, teacher-forced; float64 ``(len(sequences),)``. The first token is never scored."""

    def close(self) -> None:
        """Release the model (GPU memory, worker processes)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass(frozen=True)
class GenerationSpec:
    """The generation settings of one stage: the backend and its options (a narrow rule param).

    Built by :func:`lossgeom.config.generation_spec` from the config's ``generation`` section.
    """

    backend: str = "hf"
    vllm: Mapping = field(default_factory=lambda: dict(VLLM_DEFAULTS))
    openai: Mapping = field(default_factory=lambda: dict(OPENAI_DEFAULTS))

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise GenerationError(f"unknown generation backend {self.backend!r}; expected one of {list(BACKENDS)}")

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "GenerationSpec":
        d = dict(d or {})
        unknown = sorted(set(d) - {"backend", "vllm", "openai"})
        if unknown:
            raise GenerationError(f"unknown generation key {unknown[0]!r}")
        for key, defaults in (("vllm", VLLM_DEFAULTS), ("openai", OPENAI_DEFAULTS)):
            bad = sorted(set(d.get(key) or {}) - set(defaults))
            if bad:
                raise GenerationError(f"unknown generation.{key} key {bad[0]!r}; expected one of {sorted(defaults)}")
            d[key] = {**defaults, **(d.get(key) or {})}
        return cls(**d)
