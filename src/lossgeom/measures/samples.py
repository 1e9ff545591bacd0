"""What each delta costs and buys, from sampled completions of every model on one test set: pass@k and the KL
to the base in both directions; across models, with forgetting (:mod:`.heldout`) where it is measured, their
paired comparisons and whether forgetting tracks the KL.

Per model (``results/samples/{model}.parquet``, :data:`lossgeom.behaviour.sampled.SAMPLE_COLUMNS`):
:func:`lossgeom.behaviour.sampled.sample_model`; an adapter's job reads the base's table (KL(base || adapter)),
so the base's job runs first, and samples last (a merging engine then loads the base once). Across models
(``results/behaviour/``): :func:`lossgeom.behaviour.sampled_stats.behaviour_statistics`. Figures:
:mod:`lossgeom.figures.behaviour`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..settings import POSITIVE_INT, Settings, setting
from .base import Measure, ModelJob


@dataclass(frozen=True)
class BehaviourSettings(Settings):
    """``behaviour``: what each delta costs and buys, from sampled completions of every model on one test
    set (measured in each model's evaluation job): pass@k (Chen et al., 2021) and the KL to the base
    in both directions (lossgeom.behaviour.estimators), compared pairwise by item."""

    test_set: str | None = setting(None, {"type": ["string", "null"]}, "a key of test_sets (default: the first)")
    limit: int = setting(200, POSITIVE_INT, "its first items are sampled")
    n: int = setting(16, POSITIVE_INT, "samples per item at `temperature` (pass@k for every k <= n)")
    k: tuple = setting(
        (1, 2, 4, 8, 16),
        {"type": "array", "minItems": 1, "items": POSITIVE_INT},
        "the k of pass@k reported (each at most n)",
        stats=True,
    )
    temperature: float = setting(
        1.0,
        {"type": "number", "exclusiveMinimum": 0},
        "the pass@k samples' temperature. The KL is between the models' own distributions (temperature 1, "
        "no top-p): these samples serve it at temperature 1 and top_p 1, else n more are drawn for it",
    )
    top_p: float = setting(
        1.0, {"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "the pass@k samples' nucleus mass"
    )
    max_new_tokens: int | None = setting(
        None, {"type": ["integer", "null"], "minimum": 1}, "tokens per sample (null: evaluation.max_new_tokens)"
    )
    seed: int = setting(0, {"type": "integer", "minimum": 0}, "the sampling seed (the same for every model)")
    n_boot: int = setting(2000, POSITIVE_INT, "bootstrap resamples of items for every interval", stats=True)
    ci: float = setting(
        0.95, {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, "interval coverage", stats=True
    )


class Samples(Measure):
    name = "samples"
    section = "behaviour"
    Settings = BehaviourSettings
    output = "samples/{model}.parquet"
    order = 40  # last: an adapter's samples end with the base's scores (a merging engine loads it once)
    needs_base = True
    stats_rule = "behaviour_stats"
    stats_dir = "behaviour"
    figure_rule = "behaviour_figures"
    figure_module = "behaviour"

    def config_error(self, settings):
        n, ks = settings["n"], settings["k"]
        if max(ks) > n:
            return (
                f"behaviour.k {list(ks)} asks for pass@{max(ks)} from behaviour.n {n} samples per item; "
                f"raise behaviour.n to at least {max(ks)} or drop the larger k"
            )
        return None

    def sources(self, settings, test_sets):
        return [test_sets[settings["test_set"]]]

    def prepare(self, job: ModelJob):
        from ..behaviour.sampled import SAMPLES_READ, SAMPLES_WHAT
        from ..fsutil import read_parquet_or

        if job.adapter is None:
            return None
        if self.name not in job.base_outputs:
            raise InputError("an adapter's samples need the base's samples table (--base-outputs samples=<path>)")
        path = Path(job.base_outputs[self.name])
        return read_parquet_or(path, InputError, required=SAMPLES_READ, what=SAMPLES_WHAT)

    def measure(self, job: ModelJob, engine, prepared):
        from ..behaviour.sampled import sample_model
        from ..engines.engine import AdapterDir

        s = job.settings[self.name]
        name, limit = s["test_set"], s["limit"]
        problems, golds = job.test_set(name)
        return sample_model(
            engine,
            problems.iloc[:limit],
            golds[:limit],
            test_set=name,
            spec=s,
            grader=job.test_sets[name].get("grader", "exact"),
            template=job.template,
            max_new_tokens=s["max_new_tokens"] or job.max_new_tokens,
            adapter=AdapterDir(Path(job.adapter)) if job.adapter is not None else None,
            base_samples=prepared,
        )

    def stats_reads(self, config):
        return ("samples", "heldout", "adapters") if config["forgetting"]["source"] is not None else ("samples",)

    def stats_outputs(self, config):
        out = {
            "pass_at_k": ("pass_at_k.tsv", "pass_at_k_table.rst", "Accuracy"),
            "kl": ("kl.tsv", "kl_table.rst", "KL and forgetting"),
            "pairwise": ("pairwise.tsv", None, None),
        }
        if config["forgetting"]["source"] is not None:
            out["forgetting"] = ("forgetting.tsv", "forgetting_table.rst", "KL and forgetting")
            out["forgetting_vs_kl"] = ("forgetting_vs_kl.tsv", None, None)
        return out

    def statistics(self, settings, inputs, out_dir):
        from ..behaviour.sampled_stats import behaviour_statistics

        behaviour_statistics(
            dict(inputs[self.name]),
            out_dir,
            ks=list(settings["k"]),
            temperature=settings["temperature"],
            n_boot=settings["n_boot"],
            confidence=settings["ci"],
            heldout=dict(inputs["heldout"]) if "heldout" in inputs else None,
            adapters_table=Path(inputs["adapters"]) if "adapters" in inputs else None,
        )

    def figure_outputs(self, config):
        return [
            (["pass_at_k"], "pass_at_k.rst", "Accuracy"),
            (["kl_forgetting"], "kl_forgetting.rst", "KL and forgetting"),
        ]

    def draw(self, tables, out):
        from ..figures.behaviour import behaviour_figures

        behaviour_figures(tables, out)


MEASURE = Samples()
