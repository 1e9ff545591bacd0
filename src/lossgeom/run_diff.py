"""What moved between two runs of a study (two ``results/`` directories): the claims' verdicts side by side,
each table's numbers cell by cell, and the weights byte by byte (``lossgeom compare-runs``).

Made for the question "would another machine reach the same verdicts?": run the same commit and config twice
with something changed that should not matter (torch's CPU kernels forced to another instruction set, another
thread count: ``scripts/compare-kernels.sh``), then read here which verdicts flipped, and how far the numbers
under them moved. A run compared with itself moves nothing.

Tables are compared where both runs have them, row by row in file order (the study writes its rows in a fixed
order): a numeric cell has moved when the two values differ at all (not within a tolerance: the point is to
see how far float rounding travels), and its relative change is ``|a - b| / max(|a|, |b|)``; a text cell has
moved when its text differs. Logs, benchmarks and version records differ by design and are left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .claims.verdicts import ranges_text
from .errors import InputError
from .fsutil import atomic_files, file_sha256, read_tsv_or, write_table, write_text

SKIPPED = ("logs", "benchmarks", "versions", "cache")  # differ by design (times, hosts) or are caches
VERDICT_COLUMNS = [
    "claim_id",
    "verdict_a",
    "verdict_b",
    "moved",
    "replicates_a",
    "replicates_b",
    "this_run_a",
    "this_run_b",
    "this_run_both",  # each number's range over both runs (and so over both runs' replicates)
]
TABLE_COLUMNS = ["table", "rows", "numeric_cells", "numeric_moved", "max_abs_change", "max_rel_change", "text_moved"]


def _files(root: Path, pattern: str) -> dict[str, Path]:
    """The files of ``root`` matching ``pattern`` (by path relative to it), those below :data:`SKIPPED` left out."""
    return {
        str(p.relative_to(root)): p
        for p in sorted(Path(root).rglob(pattern))
        if not set(p.relative_to(root).parts[:-1]) & set(SKIPPED)
    }


def compare_verdicts(a: Path, b: Path) -> pd.DataFrame:
    """The claims of two runs side by side (:data:`VERDICT_COLUMNS`): ``moved`` where the verdicts differ."""
    ca, cb = (
        read_tsv_or(
            Path(r) / "claims.tsv", InputError, ("claim_id", "verdict"), "a claims table", keep_default_na=False
        )
        for r in (a, b)
    )
    cols = ["claim_id", "verdict", "replicates", "this_run"]
    ca, cb = (c.reindex(columns=cols, fill_value="") for c in (ca, cb))
    m = ca.merge(cb, on="claim_id", how="outer", suffixes=("_a", "_b"), sort=False).fillna("")
    m["moved"] = m["verdict_a"] != m["verdict_b"]
    m["this_run_both"] = [ranges_text({"a": x, "b": y}) for x, y in zip(m["this_run_a"], m["this_run_b"])]
    return m[VERDICT_COLUMNS]


def compare_table(pa: Path, pb: Path) -> dict:
    """How far one table's cells moved between two runs (a row of :data:`TABLE_COLUMNS`, less ``table``)."""
    ta, tb = (pd.read_csv(p, sep="\t", keep_default_na=False, na_values=[""]) for p in (pa, pb))
    if list(ta.columns) != list(tb.columns) or len(ta) != len(tb):
        return {
            "rows": f"{len(ta)} / {len(tb)}",
            "numeric_cells": 0,
            "numeric_moved": 0,
            "max_abs_change": np.nan,
            "max_rel_change": np.nan,
            "text_moved": "shape differs",
        }
    num_cells = moved = text_moved = 0
    max_abs = max_rel = 0.0
    for col in ta.columns:
        x, y = pd.to_numeric(ta[col], errors="coerce"), pd.to_numeric(tb[col], errors="coerce")
        numeric = np.isfinite(x) & np.isfinite(y)  # inf and NaN compared as text (their spelling)
        if numeric.any():
            xa, ya = x[numeric].to_numpy(float), y[numeric].to_numpy(float)
            diff = np.abs(xa - ya)
            num_cells += int(numeric.sum())
            moved += int((diff > 0).sum())
            if (diff > 0).any():
                max_abs = max(max_abs, float(diff.max()))
                scale = np.maximum(np.abs(xa), np.abs(ya))  # > 0 wherever diff > 0
                rel = np.divide(diff, scale, out=np.zeros_like(diff), where=diff > 0)
                max_rel = max(max_rel, float(np.nanmax(rel)))
        rest = ~numeric
        text_moved += int((ta[col][rest].astype(str) != tb[col][rest].astype(str)).sum())
    return {
        "rows": len(ta),
        "numeric_cells": num_cells,
        "numeric_moved": moved,
        "max_abs_change": max_abs,
        "max_rel_change": max_rel,
        "text_moved": text_moved,
    }


def compare_tables(a: Path, b: Path) -> pd.DataFrame:
    """Every table of either run (:data:`TABLE_COLUMNS`); one only in one run says so in ``rows``."""
    ta, tb = _files(a, "*.tsv"), _files(b, "*.tsv")
    rows = []
    for name in sorted(set(ta) | set(tb)):
        if name not in ta or name not in tb:
            rows.append({"table": name, "rows": "only in " + ("a" if name in ta else "b")})
            continue
        rows.append({"table": name, **compare_table(ta[name], tb[name])})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def compare_weights(a: Path, b: Path) -> pd.DataFrame:
    """Each weights file (``*.safetensors``: the toy models, every adapter) of both runs: identical or not."""
    wa, wb = _files(a, "*.safetensors"), _files(b, "*.safetensors")
    rows = []
    for n in sorted(set(wa) | set(wb)):
        same = n in wa and n in wb and file_sha256(wa[n]) == file_sha256(wb[n])
        rows.append({"file": n, "identical": same})
    return pd.DataFrame(rows, columns=["file", "identical"])


def summary_markdown(verdicts: pd.DataFrame, tables: pd.DataFrame, weights: pd.DataFrame, a: str, b: str) -> str:
    """The comparison as a reader takes it in: counts first, then the verdicts side by side."""
    numeric = tables[pd.to_numeric(tables["numeric_cells"], errors="coerce").notna()]
    cells, moved = int(numeric["numeric_cells"].sum()), int(numeric["numeric_moved"].sum())
    lines = [
        f"# {a} vs {b}",
        "",
        f"- verdicts moved: {int(verdicts['moved'].sum())} of {len(verdicts)}",
        f"- numbers moved: {moved} of {cells} numeric cells in {len(numeric)} tables"
        f" (largest relative change {numeric['max_rel_change'].max():.3g})",
        f"- weights files identical: {int(weights['identical'].sum())} of {len(weights)}",
        "",
        "Each number of a claim as its range over both runs and their replicates (where the two runs' words",
        "differ, each run's text after a: or b:).",
        "",
        f"| claim_id | this study, both runs | verdict ({a}) | verdict ({b}) | replicates ({a}) | replicates ({b}) |",
        "|---|---|---|---|---|---|",
    ]
    for r in verdicts.itertuples(index=False):
        flag = " **moved**" if r.moved else ""
        both = str(r.this_run_both).replace("|", "/")  # a table cell: "||dW||" would split it
        lines.append(
            f"| {r.claim_id} | {both} | {r.verdict_a} | {r.verdict_b}{flag} | {r.replicates_a} | {r.replicates_b} |"
        )
    return "\n".join(lines) + "\n"


def compare_runs(a: Path, b: Path, out: Path, names: tuple[str, str] = ("a", "b")) -> str:
    """Write ``verdicts.tsv``, ``tables.tsv``, ``weights.tsv`` and ``summary.md`` to ``out`` (all four or none);
    returns the summary."""
    for r in (a, b):
        if not (Path(r) / "claims.tsv").is_file():
            raise InputError(f"{r}: no claims.tsv; give the results directories of two finished runs")
    verdicts, tables, weights = compare_verdicts(a, b), compare_tables(a, b), compare_weights(a, b)
    text = summary_markdown(verdicts, tables, weights, *names)
    with atomic_files() as stage:
        write_table(verdicts, stage(Path(out) / "verdicts.tsv"))
        write_table(tables, stage(Path(out) / "tables.tsv"))
        write_table(weights, stage(Path(out) / "weights.tsv"))
        write_text(stage(Path(out) / "summary.md"), text)
    return text
