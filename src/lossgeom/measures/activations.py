"""Representations: each model's per-layer hidden states on a probe set, pooled to one vector per probe, and
across models linear and debiased CKA per layer for every pair.

Per model (``results/activations/{model}.npz``): :func:`lossgeom.behaviour.activations.extract_activations`, on
a float32 model of its own loaded before the job's engine (freed before the engine loads). Across models
(``results/cka/cka.tsv``): :func:`lossgeom.behaviour.cka.cka_tables`. Figures:
:mod:`lossgeom.figures.representations`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import POSITIVE_INT, Settings, setting
from .base import Measure, ModelJob


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


class Activations(Measure):
    name = "activations"
    section = "cka"
    Settings = CkaSettings
    output = "activations/{model}.npz"
    order = 10
    uses_engine = False
    stats_rule = "cka"
    stats_dir = "cka"
    figure_rule = "representations_figures"
    figure_module = "representations"

    def sources(self, settings, test_sets):
        return [test_sets[settings["test_set"]]]

    def measure(self, job: ModelJob, engine, prepared):
        from ..behaviour.activations import extract_activations, release_device_memory

        s = job.settings[self.name]
        arrays = extract_activations(
            job.base,
            job.adapter,
            job.test_sets[s["test_set"]],
            job.toy_dir,
            n_probe=s["n_probe"],
            pooling=s["pooling"],
            template=job.template,
            batch_size=s["batch_size"],
            dtype=job.dtype,
            trust_remote_code=job.trust_remote_code,
            answer_format=job.answer_format,
        )
        release_device_memory()  # the engine (vLLM: a share of the free GPU memory) loads next
        return arrays

    def write(self, table, path):
        from ..behaviour.activations import write_activations

        write_activations(table, path)

    def stats_outputs(self, config):
        return {"cka": ("cka.tsv", None, None)}

    def statistics(self, settings, inputs, out_dir):
        from ..behaviour.cka import cka_tables

        cka_tables(dict(inputs[self.name]), out_dir / "cka.tsv")

    def figure_outputs(self, config):
        return [
            (["cka_profiles"], "cka.rst", "Representations"),
            (["cka_last_layer"], "cka_last_layer.rst", "Representations"),
        ]

    def draw(self, tables, out):
        from ..figures.representations import representations_figures

        representations_figures(tables / "cka.tsv", out)


MEASURE = Activations()
