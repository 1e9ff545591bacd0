"""Problem sets: prompts to sample rollouts for, and test sets to evaluate on.

A problem set is a table with columns ``id`` (str), ``question`` (str) and ``answer`` (str: the gold
final answer, or a worked solution ending in ``#### <answer>``; ``solution`` holds the worked
solution when the source has one). It is read from:

- ``toy``: the files the toy-world job wrote (``results/toy/problems/{split}.jsonl``);
- a local ``.jsonl``/``.json``/``.parquet``/``.csv`` file, or a directory saved with ``datasets``;
- a Hugging Face dataset name (``datasets.load_dataset(source, subset, split=...)``).

Field names are mapped from the config (``question_field``, ``answer_field``, ``id_field``), so
GSM8K (question/answer), DeepScaleR (problem/answer) and AIME files all load without code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from ..errors import InputError
from ..fsutil import read_parquet_or, read_utf8_lines
from ..settings import ProblemSourceSettings
from .grading import GoldError, Grader, get_grader

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = {".jsonl", ".json", ".parquet", ".csv"}


class ProblemSetError(InputError):
    """A problem source is missing, empty, or lacks the configured fields."""


def read_records(source: str, split: str = "train", subset: str | None = None) -> pd.DataFrame:
    """Raw rows of a local file, a saved dataset directory, or a hub dataset."""
    path = Path(source)
    if path.suffix in LOCAL_SUFFIXES:
        if not path.exists():
            raise ProblemSetError(f"problem file {path} does not exist")
        if path.suffix == ".jsonl":
            rows = []
            for lineno, line in enumerate(read_utf8_lines(path, ProblemSetError), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ProblemSetError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            return pd.DataFrame(rows)
        if path.suffix == ".parquet":
            return read_parquet_or(path, ProblemSetError)
        try:
            return pd.read_json(path) if path.suffix == ".json" else pd.read_csv(path)
        except pd.errors.EmptyDataError:
            raise ProblemSetError(f"problem file {path} is empty") from None
        except (ValueError, pd.errors.ParserError) as e:  # not JSON / CSV, or not UTF-8
            raise ProblemSetError(
                f"{path}: not a readable {path.suffix[1:]} file ({' '.join(str(e).split())[:200]})"
            ) from None
    import datasets

    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ProblemSetError(f"dataset directory {path} has no split {split!r}; it has {sorted(ds)}")
            ds = ds[split]
        return ds.to_pandas()
    try:
        return datasets.load_dataset(source, subset, split=split).to_pandas()
    except ValueError as e:  # the hub's errors for an unknown split or configuration
        raise ProblemSetError(
            f"problem source {source!r} (split {split!r}): {' '.join(str(e).split())[:300]}"
        ) from None


def load_problems(spec: dict, toy_dir: Path | str | None = None) -> pd.DataFrame:
    """The problem set described by a ``problem_source`` config entry, as (id, question, answer[, solution]).

    Raises ``ProblemSetError`` naming the source when it is empty or lacks a configured field.
    Gold answers are not read here: the grader reads them (:func:`parse_golds`).
    """
    spec = ProblemSourceSettings.filled(spec)
    source, split = spec["source"], spec["split"]
    if source == "toy":
        if toy_dir is None:
            raise ProblemSetError("problem source 'toy' needs the toy world's directory")
        df = read_records(str(Path(toy_dir) / "problems" / f"{split}.jsonl"))
        qf, af, idf = "question", "solution", "id"
    else:
        df = read_records(source, split, spec["subset"])
        qf, af, idf = spec["question_field"], spec["answer_field"], spec["id_field"]
    if df.empty:
        raise ProblemSetError(f"problem source {source!r} (split {split!r}) is empty")
    for field in [qf, af] + ([idf] if idf else []):
        if field not in df.columns:
            raise ProblemSetError(
                f"problem source {source!r} (split {split!r}) has no field {field!r}; it has {list(df.columns)}"
            )
    out = pd.DataFrame(
        {
            "id": df[idf].astype(str) if idf else [f"{Path(source).stem}-{split}-{i}" for i in range(len(df))],
            "question": df[qf].astype(str),
            "answer": df[af].astype(str),
        }
    )
    if "solution" in df.columns:  # a worked solution, kept for the full-solution cross-entropy
        out["solution"] = [str(v) if isinstance(v, str) and v.strip() else None for v in df["solution"]]
    if out["id"].duplicated().any():
        dup = out.loc[out["id"].duplicated(), "id"].iloc[0]
        raise ProblemSetError(f"problem source {source!r} has duplicate id {dup!r}")
    limit = spec["limit"]
    if limit:
        out = out.iloc[:limit].reset_index(drop=True)
    if out.empty:
        raise ProblemSetError(f"problem source {source!r} (split {split!r}) is empty")
    return out


UNPARSABLE_GOLD = ("stop", "drop")


def parse_golds(problems: pd.DataFrame, grader: Grader, what: str, on_unparsable: str) -> list:
    """Every gold answer of ``problems`` parsed once by ``grader``, before anything is generated or sent.

    Returns the parsed golds in row order. A gold the grader cannot read is an input error: with
    ``on_unparsable="stop"`` a ``ProblemSetError`` names the first such item, the source (``what``) and
    how many there are; with ``"drop"`` its entry is None (the caller leaves the item out and reports
    it) and the count is logged.
    """
    if on_unparsable not in UNPARSABLE_GOLD:
        raise ProblemSetError(f"unparsable_gold must be one of {UNPARSABLE_GOLD}, got {on_unparsable!r}")
    golds, bad = [], []
    for pid, answer in zip(problems["id"], problems["answer"]):
        try:
            golds.append(grader.parse_gold(answer))
        except GoldError as e:
            golds.append(None)
            bad.append((pid, str(e)))
    if bad and on_unparsable == "stop":
        pid, why = bad[0]
        raise ProblemSetError(
            f"{what}: item {pid!r}: {why} ({len(bad)} of {len(problems)} gold answers cannot be "
            f"read by grader {grader.name!r}); fix the answer field, or set unparsable_gold: drop"
        )
    if bad and len(bad) == len(problems):
        raise ProblemSetError(
            f"{what}: none of the {len(problems)} gold answers can be read by grader {grader.name!r} "
            f"(first: item {bad[0][0]!r}: {bad[0][1]})"
        )
    if bad:
        log.warning(
            "%s: %d of %d gold answers cannot be read by grader %r and are left out (first: item %r: %s)",
            what,
            len(bad),
            len(problems),
            grader.name,
            bad[0][0],
            bad[0][1],
        )
    return golds


def load_test_set(spec: dict, toy_dir: Path | None, name: str) -> tuple[pd.DataFrame, list]:
    """:func:`load_problems` and the parsed golds (:func:`parse_golds`, None where left out) of a test set."""
    spec = ProblemSourceSettings.filled(spec)
    problems = load_problems(spec, toy_dir)
    golds = parse_golds(
        problems, get_grader(spec["grader"]), f"test set {name} ({spec['source']})", spec["unparsable_gold"]
    )
    return problems, golds
