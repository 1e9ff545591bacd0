"""The measure registry: one module per measure (its settings, what it computes of one model in the evaluation
job, its statistics across models, its figures; see :mod:`.base`), found here by name. Adding a measure is
adding a module that defines ``MEASURE`` (and its test): the config schema (:data:`SECTIONS`), the evaluation
job (:mod:`lossgeom.behaviour.job`), the rules (workflow/rules/behaviour.smk) and the CLI read it from here.

The measures, in the order the evaluation job runs them: activations (the CKA probes' hidden states, on a
model of their own), accuracy (greedy pass@1 and cross-entropies), heldout (forgetting), samples (pass@k, KL to
the base).
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import InputError
from ..registry import discover
from ..settings import Settings
from .base import Measure, ModelJob, check_model_spec, check_spec_keys, model_spec, stats_keys, with_test_set


def _discover(package: str, path) -> dict[str, Measure]:
    """The measures of ``package`` (its ``__path__``: ``path``) by :func:`lossgeom.registry.discover`'s rule
    (a module is a measure exactly when it defines ``MEASURE``), in the job's order, then by name."""
    found = discover(package, path, "MEASURE", Measure)
    return dict(sorted(found.items(), key=lambda kv: (kv[1].order, kv[0])))


MEASURES: dict[str, Measure] = _discover(__name__, __path__)
# config section -> its settings class (the config's schema and defaults take them from here)
SECTIONS: dict[str, type[Settings]] = {m.section: m.Settings for m in MEASURES.values()}


def configured(config: Mapping[str, Any]) -> list[Measure]:
    """The measures the (filled) study runs, in the job's order."""
    return [m for m in MEASURES.values() if m.enabled(config[m.section])]


def job_settings(measure: Measure, config: Mapping[str, Any]) -> dict:
    """What of a measure's filled section its evaluation jobs read: everything but the statistics' keys."""
    skip = set(stats_keys(measure.Settings))
    return {k: v for k, v in config[measure.section].items() if k not in skip}


def evaluation_spec(config: Mapping[str, Any]) -> dict:
    """The evaluation job's spec (``lossgeom evaluate --spec``): the narrow slice of the filled config its
    measures read, so that a job reruns only when what it computes changes. Keys: ``model``
    (prompt_template, answer_template resolved, dtype, trust_remote_code), ``test_sets``, ``measures`` (name ->
    :func:`job_settings`; the accuracy measure's, the evaluation section's max_new_tokens and batch_size, are
    every engine measure's defaults). The generation spec travels apart (``--generation``), as in every
    model-running job."""
    return {
        "model": model_spec(config),
        "test_sets": config["test_sets"],
        "measures": {m.name: job_settings(m, config) for m in configured(config)},
    }


def check_spec(spec: Any) -> dict:
    """An evaluation job's spec (:func:`evaluation_spec`'s form) checked, its measures' settings filled:
    one :class:`~lossgeom.errors.InputError` naming the key otherwise."""
    check_spec_keys(spec, ("model", "test_sets", "measures"))
    unknown = sorted(set(spec["measures"]) - set(MEASURES))
    if unknown:
        raise InputError(f"--spec measures: unknown measure {unknown[0]!r}; expected some of {list(MEASURES)}")
    model = check_model_spec(spec["model"])
    measures = {
        n: with_test_set(MEASURES[n].Settings.checked(s, f"--spec measures.{n}"), spec["test_sets"])
        for n, s in spec["measures"].items()
    }
    for name, settings in measures.items():  # a measure's test_set: a key of test_sets
        if "test_set" in settings and settings["test_set"] not in spec["test_sets"]:
            raise InputError(
                f"{MEASURES[name].section}.test_set {settings['test_set']!r} is not one of the test sets "
                f"{sorted(spec['test_sets'])}"
            )
    return {**spec, "model": model, "measures": measures}


def describe_settings() -> str:
    """Every measure's settings, a line per key with its doc: the ``evaluate --spec`` help."""
    return "\n".join(
        m.Settings.describe(f"measures.{m.name} (config section {m.section!r})", stats_keys(m.Settings))
        for m in MEASURES.values()
    )


__all__ = [
    "MEASURES",
    "SECTIONS",
    "Measure",
    "ModelJob",
    "check_spec_keys",
    "check_spec",
    "configured",
    "describe_settings",
    "evaluation_spec",
    "job_settings",
]
