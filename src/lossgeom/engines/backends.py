"""Choosing the engine of a stage from its :class:`~.engine.GenerationSpec` (imports each backend only
when it is used: vLLM is an optional extra)."""

from __future__ import annotations

from .engine import Engine, GenerationError, GenerationSpec


def open_engine(
    spec: GenerationSpec, model: str, *, dtype: str = "float32", trust_remote_code: bool = False, batch_size: int = 32
) -> Engine:
    """The engine of ``spec.backend`` on ``model`` (hub id or local directory, tokenizer included).

    ``batch_size`` is the HF engine's prompts per ``generate`` call (vLLM schedules by itself).
    Raises :class:`GenerationError` for ``openai`` (not a local engine: use :mod:`.openai_api`) and
    when the backend is not installed.
    """
    if spec.backend == "hf":
        from .hf import HFEngine

        return HFEngine(model, dtype=dtype, trust_remote_code=trust_remote_code, batch_size=batch_size)
    if spec.backend == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(model, dtype=dtype, trust_remote_code=trust_remote_code, **spec.vllm)
    raise GenerationError(
        "the openai backend samples rollouts from an API teacher only; evaluation and "
        "connectivity sweeps need a local engine (generation.backend hf or vllm)"
    )
