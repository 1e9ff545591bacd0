"""The evaluation job as the tests run it: :func:`evaluate` builds the spec the workflow would
(:func:`lossgeom.measures.evaluation_spec`'s form) for the measures given and runs
:func:`lossgeom.behaviour.job.evaluate_model` on it, so tests exercise the job's own path."""

from __future__ import annotations

from pathlib import Path

from lossgeom.behaviour.job import evaluate_model
from lossgeom.data.prompting import answer_template
from lossgeom.measures import MEASURES


def evaluate(
    base,
    adapter,
    test_sets: dict,
    toy_dir,
    out_dir: Path,
    *,
    template: str = "{question}",
    answer_format: str | None = None,
    dtype: str = "float32",
    base_outputs: dict | None = None,
    **measures: dict,
) -> dict[str, Path]:
    """Run the evaluation job of one model with ``measures`` (name -> its settings, defaults filled by the job)
    and return measure name -> the table written in ``out_dir`` (``<measure><suffix>``)."""
    spec = {
        "model": {
            "prompt_template": template,
            "answer_template": answer_template(template, answer_format),
            "dtype": dtype,
            "trust_remote_code": False,
        },
        "test_sets": test_sets,
        "measures": measures,
    }
    outputs = {name: Path(out_dir) / f"{name}{Path(MEASURES[name].output).suffix}" for name in measures}
    evaluate_model(spec, str(base), adapter, toy_dir, outputs, base_outputs=base_outputs)
    return outputs
