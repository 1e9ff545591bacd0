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

import logging

import json
from pathlib import Path

import pandas as pd

from ..fsutil import read_parquet_or, read_utf8_lines
from .grading import parse_gold

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = {".jsonl", ".json", ".parquet", ".csv"}


class ProblemSetError(ValueError):
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
            raise ProblemSetError(f"{path}: not a readable {path.suffix[1:]} file ({' '.join(str(e).split())[:200]})") from None
    import datasets

    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ProblemSetError(f"dataset directory {path} has no split {split!r}; it has {sorted(ds)}")
            ds = ds[split]
        return ds.to_pandas()
    return datasets.load_dataset(source, subset, split=split).to_pandas()


def load_problems(spec: dict, toy_dir: Path | str | None = None) -> pd.DataFrame:
    """The problem set described by a ``problem_source`` config entry, as (id, question, answer[, solution]).

    Raises ``ProblemSetError`` naming the source when it is empty or lacks a configured field.
    Rows whose gold answer cannot be parsed as a number are kept (the math-verify grader may still
    read them); ``count_unparsable_gold`` reports them.
    """
    source = spec["source"]
    split = spec.get("split", "train")
    if source == "toy":
        if toy_dir is None:
            raise ProblemSetError("problem source 'toy' needs the toy world's directory")
        df = read_records(str(Path(toy_dir) / "problems" / f"{split}.jsonl"))
        qf, af, idf = "question", "solution", "id"
    else:
        df = read_records(source, split, spec.get("subset"))
        qf, af = spec.get("question_field", "question"), spec.get("answer_field", "answer")
        idf = spec.get("id_field")
    if df.empty:
        raise ProblemSetError(f"problem source {source!r} (split {split!r}) is empty")
    for field in [qf, af] + ([idf] if idf else []):
        if field not in df.columns:
            raise ProblemSetError(f"problem source {source!r} (split {split!r}) has no field {field!r}; it has {list(df.columns)}")
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
    limit = spec.get("limit")
    if limit:
        out = out.iloc[:limit].reset_index(drop=True)
    if out.empty:
        raise ProblemSetError(f"problem source {source!r} (split {split!r}) is empty")
    return out


def count_unparsable_gold(problems: pd.DataFrame) -> int:
    """How many rows have a gold answer that is not a plain number (reported, never silently dropped)."""
    return int(sum(parse_gold(a) is None for a in problems["answer"]))


def check_gold(problems: pd.DataFrame, grader: str, what: str) -> None:
    """Stop before any generation when ``grader`` is 'exact' and a gold answer is not a number (the
    exact grader would fail on it after the whole set was generated); math-verify reads more."""
    if grader != "exact":
        return
    for pid, answer in zip(problems["id"], problems["answer"]):
        if parse_gold(answer) is None:
            raise ProblemSetError(f"{what}: item {pid!r} has gold answer {answer[:80]!r}, not a number, which grader "
                                  "'exact' needs; fix the answer field or use grader math_verify")


def load_test_set(spec: dict, toy_dir: Path | None, name: str) -> pd.DataFrame:
    """:func:`load_problems`, checked by :func:`check_gold`, logging how many gold answers are not plain numbers."""
    problems = load_problems(spec, toy_dir)
    check_gold(problems, spec.get("grader", "exact"), f"test set {name} ({spec['source']})")
    bad = count_unparsable_gold(problems)
    if bad:
        log.warning("test set %s: %d of %d gold answers are not plain numbers (graded by %s; unparsable ones are reported)",
                    name, bad, len(problems), spec.get("grader", "exact"))
    return problems
