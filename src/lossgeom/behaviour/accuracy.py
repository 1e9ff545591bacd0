"""The accuracy statistics over all models (Wilson CIs by default, exact McNemar with Holm, Cochran's Q), from
each model's evaluation table (the accuracy measure's, :mod:`lossgeom.measures.accuracy`: greedy pass@1 and
cross-entropies by :mod:`.evaluation`).

Evaluation parquet (one per model): test_set, id, correct (0/1; NaN where the gold is unreadable and
the item left out, ``unparsable_gold: drop``), extracted, completion, finish_reason ("stop"/"length"),
grade_note (the grader's "ok", "no answer", or why it could not grade), gold_ok, answer_ce,
solution_ce (nats/token).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..errors import InputError
from ..fsutil import atomic_files, read_parquet_or, write_table
from .stats import accuracy_table, cochran_summary, pairwise_tests

EVALUATION_COLUMNS = ("test_set", "id", "correct", "gold_ok")  # what the statistics read of an evaluation


def _read_evaluations(evaluations: dict[str, Path]) -> dict[str, pd.DataFrame]:
    """Each model's evaluation table (``lossgeom evaluate``'s), checked: it has :data:`EVALUATION_COLUMNS`, 0/1
    in ``correct``, each item once per test set, and the first model's items, so that every file's fault is
    one line naming it."""
    what = "an evaluation table of 'lossgeom evaluate'"
    frames = {
        m: read_parquet_or(Path(p), InputError, required=EVALUATION_COLUMNS, what=what) for m, p in evaluations.items()
    }
    first_model, first = next(iter(frames.items()))
    for model, df in frames.items():
        path = evaluations[model]
        if not df.loc[df["gold_ok"].astype(bool), "correct"].isin([0, 1]).all():  # NaN where the gold is not
            raise InputError(f"{path}: 'correct' holds a value other than 0 and 1; rerun its evaluation")
        if df.duplicated(["test_set", "id"]).any():
            raise InputError(f"{path}: an item appears twice in one test set; rerun its evaluation")
        if set(zip(df["test_set"], df["id"])) != set(zip(first["test_set"], first["id"])):
            raise InputError(
                f"{path}: other test items than {evaluations[first_model]} (model {first_model!r}); evaluate "
                "every model on the same test sets"
            )
    return frames


def accuracy_statistics(
    evaluations: dict[str, Path], out_dir: Path, *, n_boot: int, mid_p: bool, seed: int = 0, ci: str = "wilson"
) -> None:
    """Per test set: accuracy with CIs (``ci``: see :func:`.stats.accuracy_table`), exact McNemar for every pair with Holm correction,
    Cochran's Q. Writes ``accuracy.tsv``, ``pairwise.tsv``, ``cochran.json`` into ``out_dir``."""
    frames = _read_evaluations(evaluations)
    test_sets = list(dict.fromkeys(t for df in frames.values() for t in df["test_set"]))
    acc, pairs, cochran = [], [], {}
    for t in test_sets:
        per_model = {m: df[df["test_set"] == t].set_index("id") for m, df in frames.items()}
        first = next(iter(per_model.values()))
        gold_ok = first["gold_ok"].astype(bool)
        unparsable = int((~gold_ok).sum())
        if gold_ok.sum() == 0:
            raise InputError(f"test set {t!r}: no item has a parsable gold answer ({len(gold_ok)} items)")
        correct = pd.DataFrame(
            {m: df.loc[gold_ok.index[gold_ok], "correct"].astype(int) for m, df in per_model.items()}
        )
        a = accuracy_table(correct, n_boot=n_boot, seed=seed, ci=ci).reset_index()
        a.insert(0, "test_set", t)
        a["n_unparsable_gold"] = unparsable
        acc.append(a)
        p = pairwise_tests(correct, mid_p=mid_p)
        p.insert(0, "test_set", t)
        pairs.append(p)
        cochran[t] = {**cochran_summary(correct), "n_unparsable_gold": unparsable}
    with atomic_files() as stage:  # all three or none (out_dir also holds the models' evaluations)
        write_table(pd.concat(acc, ignore_index=True), stage(out_dir / "accuracy.tsv"))
        write_table(pd.concat(pairs, ignore_index=True), stage(out_dir / "pairwise.tsv"))
        stage(out_dir / "cochran.json").write_text(json.dumps(cochran, indent=2, default=float))
