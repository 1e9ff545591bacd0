"""Held-out text for the forgetting measure: what a model's cross-entropy is on text the study never
trains on, read from the ``forgetting`` config section (:class:`lossgeom.measures.heldout.ForgettingSettings`).

Items are (id, prompt, text). A plain-text item (prompt None: a paragraph of a .txt file, a row of
WikiText) is scored on its own tokens, the first excepted (nothing predicts it); an item with a
prompt is scored as a completion right after the chat-formatted prompt, exactly as the training rows
and ``solution_ce`` are. The toy's held-out text is its ``heldout`` split (problems no model is trained
or evaluated on) with each problem's solution in ``style``: ``direct`` (the answer line alone) is the
base's other style, the one its distillation onto the teacher's chain of thought does not train.

Cross-entropies are nats per scored token, float64; texts are cut at ``max_length`` tokens (prompt
included).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data.problemsets import LOCAL_SUFFIXES, ProblemSetError, read_records
from ..data.prompting import prompt_completion
from ..engines.engine import Adapter, Engine
from ..errors import InputError
from ..fsutil import read_utf8_lines


class HeldoutTextError(InputError):
    """The held-out text cannot be read as configured; the message names the ``forgetting`` key."""


def _paragraphs(path: Path) -> pd.DataFrame:
    """A .txt file as one row per paragraph (lines up to a blank line, joined with newlines)."""
    if not path.exists():
        raise HeldoutTextError(f"forgetting.source: text file {path} does not exist")
    paras, cur = [], []
    for line in read_utf8_lines(path, HeldoutTextError) + [""]:
        if line.strip():
            cur.append(line)
        elif cur:
            paras.append("\n".join(cur))
            cur = []
    return pd.DataFrame({"text": paras})


def _items(source: str, split: str, subset: str | None, text_field: str, prompt_field: str | None) -> pd.DataFrame:
    """Every row of a text source as (id, prompt, text); a missing text cell is left out (never scored
    as "nan"). Ids: the source's ``id`` field where it has one, else ``{file stem}-{split}-{row}``."""
    path = Path(source)
    txt = path.suffix == ".txt"
    raw = _paragraphs(path) if txt else read_records(source, split, subset)
    for key, field in (("text_field", None if txt else text_field), ("prompt_field", prompt_field)):
        if field is not None and field not in raw.columns:
            raise HeldoutTextError(
                f"forgetting.{key} {field!r} is not a field of {source!r} (split {split!r}); it has {list(raw.columns)}"
            )
    text = raw["text" if txt else text_field]
    prompt = raw[prompt_field] if prompt_field else pd.Series([None] * len(raw))
    no_prompt = (prompt.isna() & text.notna()).to_numpy()
    if prompt_field and no_prompt.any():
        raise HeldoutTextError(
            f"forgetting.prompt_field {prompt_field!r}: row {int(np.flatnonzero(no_prompt)[0])} of {source!r} has no prompt"
        )
    keep = text.notna().to_numpy()
    stem = path.stem if path.suffix in LOCAL_SUFFIXES | {".txt"} else source
    ids = raw["id"].astype(str) if "id" in raw.columns else pd.Series([f"{stem}-{split}-{i}" for i in range(len(raw))])
    return pd.DataFrame(
        {
            "id": ids[keep].to_numpy(),
            "prompt": [q if isinstance(q, str) else None for q in prompt[keep]],
            "text": [str(t) for t in text[keep]],
        }
    )


def load_heldout(spec: dict, toy_dir: Path | None = None) -> pd.DataFrame:
    """The held-out items of a filled ``forgetting`` section (every key given) as a DataFrame (id, prompt, text), in source
    order, texts shorter than ``min_chars`` skipped, the first ``limit`` kept. The toy's source is its
    world's ``problems/{split}.jsonl``, read as any such file (text: the ``style`` field; prompt: the
    question). Raises :class:`HeldoutTextError` naming the source and the key when it is missing, empty
    or lacks a field."""
    source, text_field, prompt_field = spec["source"], spec["text_field"], spec["prompt_field"]
    split = spec["split"] or ("heldout" if source == "toy" else "test")
    if source is None:
        raise HeldoutTextError("forgetting.source is not set: nothing to measure forgetting on")
    if source == "toy":
        if toy_dir is None:
            raise HeldoutTextError("forgetting.source 'toy' needs the toy world's directory")
        source, text_field, prompt_field = str(Path(toy_dir) / "problems" / f"{split}.jsonl"), spec["style"], "question"
    try:
        df = _items(source, split, spec["subset"], text_field, prompt_field)
    except (ProblemSetError, FileNotFoundError) as e:
        raise HeldoutTextError(f"forgetting.source: {e}") from None
    except HeldoutTextError:
        raise
    except ValueError as e:  # the hub's errors for an unknown split or configuration
        raise HeldoutTextError(f"forgetting.source {source!r}: {' '.join(str(e).split())[:300]}") from None
    df = df[[len(t.strip()) >= spec["min_chars"] for t in df["text"]]].iloc[: spec["limit"]].reset_index(drop=True)
    if df.empty:
        raise HeldoutTextError(
            f"forgetting.source {source!r} (split {split!r}) has no text of at least {spec['min_chars']} characters"
        )
    if df["id"].duplicated().any():
        raise HeldoutTextError(
            f"forgetting.source {source!r}: duplicate id {df.loc[df['id'].duplicated(), 'id'].iloc[0]!r}"
        )
    return df


def heldout_sequences(tokenizer, items: pd.DataFrame, *, template: str, max_length: int):
    """(ids, mask) per item, cut at ``max_length``: where the item has a prompt, the text as an
    EOS-terminated completion after the chat-formatted prompt (mask 1 on the completion only: a training
    row's format, :func:`~lossgeom.data.prompting.prompt_completion`); else the text's own tokens
    (without special tokens), all scored."""
    seqs, masks = [], []
    for prompt, text in zip(items["prompt"], items["text"]):
        if isinstance(prompt, str):
            ids, mask = prompt_completion(tokenizer, prompt, text, template, max_length=max_length)
        else:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
            mask = [1] * len(ids)
        seqs.append(ids)
        masks.append(mask)
    return seqs, masks


def heldout_ce(
    engine: Engine, items: pd.DataFrame, *, template: str, max_length: int, adapter: Adapter = None
) -> pd.DataFrame:
    """Per-item cross-entropy (nats/token) and the number of tokens scored: DataFrame id, ce, n_tokens.

    An item with fewer than one scored token after the first position (a one-token plain text, or a
    prompt that fills ``max_length``) stops with its id: its cross-entropy is undefined.
    """
    seqs, masks = heldout_sequences(engine.tokenizer, items, template=template, max_length=max_length)
    scored = np.array([sum(m[1:]) for m in masks])
    if (scored < 1).any():
        bad = items["id"].iloc[int(np.argmin(scored))]
        raise HeldoutTextError(
            f"forgetting: item {bad!r} has no token to score within max_length {max_length} "
            "(a one-token text, or a prompt as long as max_length)"
        )
    ce = engine.score(seqs, masks, adapter=adapter)
    return pd.DataFrame({"id": items["id"].to_numpy(), "ce": ce, "n_tokens": scored})
