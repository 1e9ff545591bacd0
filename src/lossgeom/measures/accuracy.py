"""Accuracy: greedy pass@1 and the cross-entropies of the gold answer and worked solution, of every model on
every test set; across models, intervals, exact McNemar for every pair (Holm) and Cochran's Q.

Per model (``results/eval/{model}.parquet``): :func:`lossgeom.behaviour.evaluation.greedy_pass_at_1` and
:func:`~lossgeom.behaviour.evaluation.cross_entropies`, columns :data:`COLUMNS`. Across models
(``results/eval/``): :func:`lossgeom.behaviour.accuracy.accuracy_statistics`. Figures:
:mod:`lossgeom.figures.accuracy`, one accuracy and one McNemar figure per test set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..settings import POSITIVE_INT, Settings, setting
from .base import Measure, ModelJob

log = logging.getLogger(__name__)

# the evaluation table's columns, in order: correct is 0/1 (NaN where the gold is unreadable and the item left
# out); answer_ce and solution_ce are nats per token
COLUMNS = [
    "test_set",
    "id",
    "correct",
    "extracted",
    "completion",
    "finish_reason",
    "grade_note",
    "gold_ok",
    "answer_ce",
    "solution_ce",
]


@dataclass(frozen=True)
class EvaluationSettings(Settings):
    """``evaluation``: greedy pass@1 of the base and every adapter on every test set, with paired statistics."""

    max_new_tokens: int = setting(256, POSITIVE_INT, "tokens generated per test item (greedy)")
    batch_size: int = setting(32, POSITIVE_INT, "prompts per generation batch")
    ci: str = setting(
        "wilson",
        {"enum": ["wilson", "clopper_pearson", "bootstrap"]},
        "accuracy interval (default wilson; bootstrap gives [0, 0] for 0/n)",
        stats=True,
    )
    n_boot: int = setting(10_000, POSITIVE_INT, "bootstrap replicates (ci: bootstrap)", stats=True)
    mid_p: bool = setting(False, {"type": "boolean"}, "McNemar mid-p instead of the exact p", stats=True)
    seed: int = setting(0, {"type": "integer", "minimum": 0}, "the bootstrap's seed (ci: bootstrap)", stats=True)


class Accuracy(Measure):
    name = "accuracy"
    section = "evaluation"
    Settings = EvaluationSettings
    output = "eval/{model}.parquet"
    order = 20
    stats_rule = "eval_stats"
    stats_dir = "eval"
    figure_rule = "accuracy_figures"
    figure_module = "accuracy"

    def sources(self, settings, test_sets):
        return list(test_sets.values())

    def measure(self, job: ModelJob, engine, prepared):
        import pandas as pd

        from ..behaviour.evaluation import cross_entropies, greedy_pass_at_1
        from ..engines.engine import AdapterDir

        adapter = AdapterDir(Path(job.adapter)) if job.adapter is not None else None
        frames = []
        for name, ts in job.test_sets.items():
            problems, golds = job.test_set(name)
            graded = greedy_pass_at_1(
                engine,
                problems,
                grader=ts.get("grader", "exact"),
                template=job.template,
                max_new_tokens=job.max_new_tokens,
                adapter=adapter,
                desc=f"evaluate {name}",
                golds=golds,
            )
            ce = cross_entropies(
                engine, problems, template=job.template, adapter=adapter, answer_format=job.answer_format
            )
            frames.append(graded.merge(ce, on="id").assign(test_set=name))
            n_bad = (~graded["gold_ok"]).sum()
            log.info(
                "%s on %s (%s): pass@1 %.3f over %d items (%d unparsable gold)",
                job.name, name, engine.name, graded["correct"].mean(), graded["gold_ok"].sum(), n_bad,
            )  # fmt: skip
        return pd.concat(frames, ignore_index=True)[COLUMNS]

    def stats_outputs(self, config):
        return {
            "accuracy": ("accuracy.tsv", "accuracy_table.rst", "Accuracy"),
            "pairwise": ("pairwise.tsv", "pairwise_table.rst", "Accuracy"),
            "cochran": ("cochran.json", None, None),
        }

    def statistics(self, settings, inputs, out_dir):
        from ..behaviour.accuracy import accuracy_statistics

        accuracy_statistics(
            dict(inputs[self.name]),
            out_dir,
            n_boot=settings["n_boot"],
            mid_p=settings["mid_p"],
            seed=settings["seed"],
            ci=settings["ci"],
        )

    def figure_outputs(self, config):
        test_sets = list(config["test_sets"])
        return [
            ([f"accuracy_{t}" for t in test_sets], "accuracy.rst", "Accuracy"),
            ([f"mcnemar_{t}" for t in test_sets], "mcnemar.rst", "Accuracy"),
        ]

    def draw(self, tables, out):
        from ..figures.accuracy import accuracy_figures

        accuracy_figures(tables / "accuracy.tsv", tables / "pairwise.tsv", out)


MEASURE = Accuracy()
