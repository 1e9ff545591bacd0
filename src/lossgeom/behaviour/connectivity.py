"""Linear mode connectivity: one sweep job per adapter pair along the straight line between their
deltas, and the summary of all sweeps (endpoints, worst point, barrier).

Sweep tsv (one per pair): pair_a, pair_b, alpha, metric (answer_ce | solution_ce | accuracy), value;
alpha = 0 is the first adapter.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..data.problemsets import load_test_set
from ..engines.backends import open_engine
from ..engines.engine import GenerationSpec, PathPoint
from ..errors import InputError
from ..fsutil import atomic_files, read_tsv_or, write_table
from .evaluation import cross_entropies, greedy_pass_at_1
from .interpolation import alpha_grid, barrier

LMC_METRICS = {"answer_ce": False, "solution_ce": False, "accuracy": True}  # metric -> higher is better


def connectivity_sweep(
    base: str,
    adapters: tuple[tuple[str, Path], tuple[str, Path]],
    test_set: dict,
    toy_dir: Path | None,
    out: Path,
    *,
    alphas: int,
    limit: int,
    accuracy_subset: int,
    template: str,
    max_new_tokens: int,
    batch_size: int,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    generation: GenerationSpec | None = None,
    answer_format: str | None = None,
) -> pd.DataFrame:
    """The linear path between two adapters' deltas: at each alpha, mean answer-only CE, mean
    full-solution CE (nats/token) on the first ``limit`` test items, and greedy accuracy on the first
    ``accuracy_subset`` of them, through one engine for the whole sweep. Writes the sweep tsv."""
    (label_a, dir_a), (label_b, dir_b) = adapters
    problems, golds = load_test_set({**test_set, "limit": limit}, toy_dir, "of the connectivity sweeps")
    subset, subset_golds = problems.iloc[:accuracy_subset], golds[:accuracy_subset]
    spec = generation or GenerationSpec()
    rows = []
    with open_engine(spec, base, dtype=dtype, trust_remote_code=trust_remote_code, batch_size=batch_size) as engine:
        for a in alpha_grid(alphas):
            point = PathPoint(Path(dir_a), Path(dir_b), float(a))
            ce = cross_entropies(engine, problems, template=template, adapter=point, answer_format=answer_format)
            graded = greedy_pass_at_1(
                engine,
                subset,
                grader=test_set.get("grader", "exact"),
                template=template,
                max_new_tokens=max_new_tokens,
                adapter=point,
                desc=f"alpha={a:.2f}",
                golds=subset_golds,
            )
            values = {
                "answer_ce": ce["answer_ce"].mean(),
                "solution_ce": ce["solution_ce"].mean(),
                "accuracy": graded["correct"].mean(),
            }
            rows += [
                {"pair_a": label_a, "pair_b": label_b, "alpha": float(a), "metric": k, "value": float(v)}
                for k, v in values.items()
            ]
    df = pd.DataFrame(rows)
    write_table(df, out)
    return df


SWEEP_COLUMNS = ("pair_a", "pair_b", "alpha", "metric", "value")


def _read_sweep(path: Path) -> pd.DataFrame:
    """A sweep table of :func:`connectivity_sweep`, checked: its columns, known metrics, and a grid from 0 to 1."""
    what = "a sweep table of 'lossgeom lmc'"
    df = read_tsv_or(path, InputError, SWEEP_COLUMNS, what)
    unknown = sorted(set(df["metric"].astype(str)) - set(LMC_METRICS))
    if unknown:
        raise InputError(f"{path}: not {what} (metric {unknown[0]!r} is not one of {list(LMC_METRICS)})")
    ends = df.groupby(["pair_a", "pair_b", "metric"])["alpha"].agg(["min", "max"])
    if ((ends["min"] != 0.0) | (ends["max"] != 1.0)).any():
        raise InputError(f"{path}: not {what} (a curve's alphas do not run from 0 to 1)")
    return df


def connectivity_summary(sweeps: list[Path], out: Path) -> pd.DataFrame:
    """One row per (pair, metric): endpoint values, extreme along the path, and the barrier."""
    frames = [_read_sweep(p) for p in sweeps]
    curves = pd.concat(frames, ignore_index=True)
    rows = []
    for (a, b, metric), g in curves.groupby(["pair_a", "pair_b", "metric"], sort=False):
        g = g.sort_values("alpha")
        higher = LMC_METRICS[metric]
        rows.append(
            {
                "pair_a": a,
                "pair_b": b,
                "metric": metric,
                "value_a": g["value"].iloc[0],
                "value_b": g["value"].iloc[-1],
                "worst_on_path": g["value"].min() if higher else g["value"].max(),
                "barrier": barrier(g["alpha"], g["value"], higher_is_better=higher),
            }
        )
    summary = pd.DataFrame(rows)
    with atomic_files() as stage:  # both or neither (the directory also holds the sweeps)
        write_table(summary, stage(out))
        write_table(curves, stage(out.with_name("curves.tsv")))
    return summary
