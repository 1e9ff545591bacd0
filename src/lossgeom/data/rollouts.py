"""The rollout table: K graded samples per prompt, the one dataset every method trains on.

A rollout table has one row per sample, with columns (``ROLLOUT_COLUMNS``):

    prompt_id     str    id of the problem
    prompt        str    the question text (before the chat template)
    completion    str    the sampled assistant text (no EOS)
    gold          str    the gold answer the completion was graded against
    answer        str?   the extracted final answer, null when none was found
    reward        float  1.0 correct, 0.0 incorrect
    sample_index  int    0..K-1 within the prompt
    logprobs      list[float]? per-token log-probabilities of the completion under the sampler's
                         distribution (after temperature and top-p), EOS included; empty when imported
                         without them; null when an API teacher's endpoint returned none
    completion_ids list[int] the sampled token ids the log-probs belong to (EOS included); empty when
                         imported. Training re-tokenises ``completion`` for sampled and imported rows
                         alike, so both take one path.
    source        str    what produced the row (model path and sampling settings, or the imported file)
    finish_reason str?   "stop" (the sampler ended the completion) or "length" (cut at the token limit:
                         truncated; training drops it or trains it without EOS, ``truncated`` of the
                         method spec); null when imported without it (then taken as complete)
    grade_note    str?   why the grader gave what it gave: "ok", "no answer", or the reason a completion
                         could not be graded ("timeout: ...", "error: ..."; reward 0); null when imported

and the columns an API teacher fills (``ROLLOUT_META``, null for local engines and imports):

    reasoning     str?   the reasoning a thinking model returned apart from its answer (``reasoning_content``)
    content       str?   the answer it returned (``message.content``); ``completion`` is built from the
                         two as ``generation.openai.completion`` says
    served_model  str?   the model id the endpoint says served the request (``response.model``)
    system_fingerprint str? the endpoint's backend configuration id, where it reports one
    prompt_tokens, completion_tokens, reasoning_tokens  int?  the endpoint's token usage of the request

Rollouts are sampled from the teacher (or the base) by :mod:`lossgeom.generation` (through :mod:`lossgeom.engines`), or imported from a JSONL/parquet file with at
least prompt_id, prompt, completion and reward; a bad row stops the import with its line number.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..fsutil import read_parquet_or, read_utf8_lines

log = logging.getLogger(__name__)

ROLLOUT_META = [
    "reasoning",
    "content",
    "served_model",
    "system_fingerprint",
    "prompt_tokens",
    "cached_prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
]
ROLLOUT_COLUMNS = [
    "prompt_id",
    "prompt",
    "completion",
    "gold",
    "answer",
    "reward",
    "sample_index",
    "logprobs",
    "completion_ids",
    "source",
    "finish_reason",
    "grade_note",
    *ROLLOUT_META,
]
FINISH_REASONS = ("stop", "length")
REQUIRED_IMPORT = ("prompt_id", "prompt", "completion", "reward")


class RolloutError(InputError):
    """A rollout file or row does not match the rollout schema; the message names file and line."""


def _is_null(v) -> bool:
    """None, or the NaN that pandas reads for a null parquet value."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def _check_row(row: dict, where: str) -> dict:
    missing = [c for c in REQUIRED_IMPORT if c not in row or _is_null(row[c])]
    if missing:
        nan = [c for c in missing if c in row and row[c] is not None]
        if nan:
            raise RolloutError(
                f"{where}: field {nan[0]!r} is NaN (or a parquet null); a rollout row needs a value for each of {list(REQUIRED_IMPORT)}"
            )
        raise RolloutError(f"{where}: missing required field(s) {missing}; a rollout row needs {list(REQUIRED_IMPORT)}")
    for c in ("prompt", "completion"):
        if not isinstance(row[c], str):
            raise RolloutError(f"{where}: field {c!r} must be a string, got {type(row[c]).__name__}")
    try:
        reward = float(row["reward"])
    except (TypeError, ValueError):
        raise RolloutError(f"{where}: reward {row['reward']!r} is not a number") from None
    if reward not in (0.0, 1.0):
        raise RolloutError(f"{where}: reward must be 0 or 1 (binary verifier reward), got {row['reward']!r}")
    lp = row.get("logprobs")
    lp = [] if _is_null(lp) else list(lp)
    # numbers.Real admits the numpy float32 values of a parquet list<float> column
    if not all(isinstance(x, numbers.Real) and not isinstance(x, bool) and x <= 1e-6 for x in lp):
        raise RolloutError(f"{where}: logprobs must be a list of numbers <= 0")
    finish = None if _is_null(row.get("finish_reason")) else row["finish_reason"]
    if finish is not None and finish not in FINISH_REASONS:
        raise RolloutError(f"{where}: finish_reason must be one of {list(FINISH_REASONS)} (or absent), got {finish!r}")
    return {
        "prompt_id": str(row["prompt_id"]),
        "prompt": row["prompt"],
        "completion": row["completion"],
        "gold": "" if _is_null(row.get("gold")) else str(row["gold"]),
        "answer": None if _is_null(row.get("answer")) else str(row["answer"]),
        "reward": reward,
        "sample_index": None if _is_null(row.get("sample_index")) else int(row["sample_index"]),
        "logprobs": [float(x) for x in lp],
        "completion_ids": [],
        "source": "" if _is_null(row.get("source")) else str(row["source"]),
        "finish_reason": finish,
        "grade_note": None,
        **{c: None for c in ROLLOUT_META},
    }


def import_rollouts(path: Path | str) -> pd.DataFrame:
    """Read and check a JSONL (one JSON object per line) or parquet rollout file.

    Raises ``RolloutError`` naming the file and line (JSONL, 1-based) or row (parquet, 0-based) of
    the first bad row. Missing ``sample_index`` values are numbered within each prompt.
    """
    path = Path(path)
    if not path.exists():
        raise RolloutError(f"rollout file {path} does not exist")
    checked = []
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(read_utf8_lines(path, RolloutError), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RolloutError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise RolloutError(f"{path}:{lineno}: expected a JSON object")
            checked.append(_check_row(row, f"{path}:{lineno}"))
    elif path.suffix == ".parquet":
        for i, row in enumerate(read_parquet_or(path, RolloutError).to_dict("records")):
            checked.append(_check_row(row, f"{path} row {i}"))
    else:
        raise RolloutError(f"rollout file {path} must be .jsonl or .parquet")
    if not checked:
        raise RolloutError(f"rollout file {path} has no rows")
    df = pd.DataFrame(checked, columns=ROLLOUT_COLUMNS)
    prompts = df.groupby("prompt_id")["prompt"].nunique()
    if (prompts > 1).any():
        raise RolloutError(
            f"rollout file {path}: prompt_id {prompts[prompts > 1].index[0]!r} has rows with different prompts"
        )
    missing = df["sample_index"].isna()
    if missing.any():  # number only the missing ones, after the largest index given for the prompt
        start = df.groupby("prompt_id")["sample_index"].transform("max").fillna(-1)
        df.loc[missing, "sample_index"] = start[missing] + 1 + df[missing].groupby("prompt_id").cumcount()
    df["sample_index"] = df["sample_index"].astype(int)
    dup = df.duplicated(["prompt_id", "sample_index"])
    if dup.any():
        pid, k = df.loc[dup, ["prompt_id", "sample_index"]].iloc[0]
        raise RolloutError(
            f"rollout file {path}: duplicate row for prompt_id {pid!r} sample_index {k} "
            f"(each (prompt_id, sample_index) must appear once)"
        )
    if not df["source"].any():
        df["source"] = f"imported:{path.name}"
    return df


def read_rollouts(path: Path | str) -> pd.DataFrame:
    """Read a rollout table written by this package (parquet); an unreadable file or one without the
    columns every method reads stops with one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise RolloutError(f"rollout table {path} does not exist")
    df = read_parquet_or(path, RolloutError)
    missing = [c for c in (*REQUIRED_IMPORT, "sample_index") if c not in df.columns]
    if missing:
        raise RolloutError(f"rollout table {path} lacks column(s) {missing}; it has {list(df.columns)}")
    return df


def truncated_mask(rollouts: pd.DataFrame) -> np.ndarray:
    """Rows cut at the sampler's token limit (``finish_reason == "length"``); a table without the column
    (imported, or written before it existed) has none. Bool of the rows' length."""
    if "finish_reason" not in rollouts:
        return np.zeros(len(rollouts), dtype=bool)
    return (rollouts["finish_reason"] == "length").to_numpy(dtype=bool)


def grade_failed_mask(rollouts: pd.DataFrame) -> np.ndarray:
    """Rows the grader could not grade (``grade_note`` "timeout: ..." or "error: ..."; their reward 0 says
    nothing about the completion); a table without the column has none. Bool of the rows' length.
    Training leaves them out of every view (:func:`lossgeom.training.views.build_view`)."""
    if "grade_note" not in rollouts:
        return np.zeros(len(rollouts), dtype=bool)
    note = rollouts["grade_note"].fillna("").astype(str)
    return (note.str.startswith("timeout") | note.str.startswith("error")).to_numpy(dtype=bool)


def summarize(df: pd.DataFrame) -> dict:
    """Counts a researcher checks first: rows, prompts, accuracy, and how many prompts are mixed
    (some correct and some incorrect samples: the ones GRPO and DPO can use)."""
    per_prompt = df.groupby("prompt_id")["reward"].agg(["mean", "size"])
    return {
        "rows": int(len(df)),
        "prompts": int(len(per_prompt)),
        "accuracy": float(df["reward"].mean()),
        "prompts_all_correct": int((per_prompt["mean"] == 1).sum()),
        "prompts_all_wrong": int((per_prompt["mean"] == 0).sum()),
        "prompts_mixed": int(((per_prompt["mean"] > 0) & (per_prompt["mean"] < 1)).sum()),
        "no_answer": int(df["answer"].isna().sum()),
        "truncated": int(truncated_mask(df).sum()),
        "grade_failed (left out of training)": int(grade_failed_mask(df).sum()),
        "rows_with_logprobs": int(df["logprobs"].map(lambda v: v is not None and len(v) > 0).sum()),
        "served_models": served_models(df),
    }


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """The rollout table in numbers a reader checks before trusting any result (the report's Rollouts
    page): :func:`summarize`, then how many rows got each grade note and each finish reason, and the
    mean token usage where the endpoint reported it. Columns: quantity, value."""
    rows = list(summarize(df).items())
    for col, prefix in (("grade_note", "grade note"), ("finish_reason", "finish reason")):
        if col in df:
            counts = df[col].fillna("not recorded").astype(str).value_counts()
            rows += [(f"{prefix}: {k}", int(v)) for k, v in counts.items()]
    for col in ("prompt_tokens", "completion_tokens", "reasoning_tokens"):
        if col in df and df[col].notna().any():
            rows.append((f"mean {col.replace('_', ' ')} per request", round(float(pd.to_numeric(df[col]).mean()), 1)))
    return pd.DataFrame(rows, columns=["quantity", "value"])


def served_models(df) -> str:
    """One line naming the models that served a rollout table's rows, with counts, most rows first:
    ``"deepseek-v4-flash-2026-11-01 (system_fingerprint fp_1a2b): 5,998 rows; ..."`` (the
    fingerprint part left out where the endpoint gave none); rows without a served model (local
    engines, imports) are counted as ``"not recorded"``."""
    if "served_model" not in df.columns or not len(df):
        return "not recorded"
    fps = df["system_fingerprint"] if "system_fingerprint" in df.columns else [None] * len(df)
    counts: dict[tuple, int] = {}
    for model, fp in zip(df["served_model"], fps):
        key = (model if isinstance(model, str) else None, fp if isinstance(fp, str) else None)
        counts[key] = counts.get(key, 0) + 1
    parts = []

    def order(item):  # most rows first; among equal counts by name, "not recorded" (None) last
        (model, fp), n = item
        return -n, model is None, model or "", fp or ""

    for (model, fp), n in sorted(counts.items(), key=order):
        name = "not recorded" if model is None else model + (f" (system_fingerprint {fp})" if fp else "")
        parts.append(f"{name}: {n:,} row{'s' if n != 1 else ''}")
    return "; ".join(parts)
