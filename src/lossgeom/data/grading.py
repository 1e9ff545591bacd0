"""Final-answer extraction and grading.

Two graders share one interface, ``grade(completion, gold) -> (extracted, reward)``:

- ``exact``: the toy world's grader. The final answer is the number after the last ``####`` in
  the completion (GSM8K's convention); it is correct when it equals the gold number exactly
  (as a rational: "12", "12.0" and "1,2" -> no; "12.0" == "12" yes).
- ``math_verify``: real datasets. Gold and prediction are parsed by HuggingFace's math-verify
  and compared symbolically; the ``####`` answer, a ``\\boxed{}`` or the last number is taken.

A completion with no parsable answer gets reward 0 and ``extracted = None``: it is an incorrect
rollout, never dropped. A *gold* answer that cannot be parsed is an input error; callers count and
report those (``parse_gold``) instead of grading against nothing.
"""

from __future__ import annotations

import re
from fractions import Fraction

_HASH_ANSWER = re.compile(r"####[ \t]*([^\n]*)")  # the answer is on the marker's own line


def _to_number(text: str) -> Fraction | None:
    """Parse '1,234', '-5', '3.50', '$12' into an exact Fraction; None when it is not one number."""
    t = text.strip().rstrip(".").replace("$", "").strip()
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", t):
        t = t.replace(",", "")
    if not re.fullmatch(r"-?\d+(?:\.\d+)?|-?\.\d+", t):
        return None
    return Fraction(t)


def extract_hash_answer(text: str) -> str | None:
    """The text after the last ``####`` marker, stripped; None when there is no marker or it is empty."""
    found = _HASH_ANSWER.findall(text)
    if not found:
        return None
    ans = found[-1].strip()
    return ans or None


def parse_gold(gold: str) -> Fraction | None:
    """A gold answer as a number: a bare number, or a GSM8K solution ending in ``#### n``."""
    ans = extract_hash_answer(gold)
    return _to_number(ans if ans is not None else gold)


def grade_exact(completion: str, gold: str) -> tuple[str | None, float]:
    """Exact numeric match of the ``####`` answer against ``gold``. Returns (extracted, reward in {0,1})."""
    gold_value = parse_gold(gold)
    if gold_value is None:
        raise ValueError(f"gold answer is not a number: {gold!r}")
    extracted = extract_hash_answer(completion)
    if extracted is None:
        return None, 0.0
    value = _to_number(extracted)
    return extracted, float(value is not None and value == gold_value)


def grade_math_verify(completion: str, gold: str) -> tuple[str | None, float]:
    """Symbolic match with math-verify. The ``####`` answer is preferred when present."""
    from math_verify import parse, verify  # imported lazily: it pulls in sympy

    gold_text = extract_hash_answer(gold) or gold
    gold_parsed = parse(gold_text if "$" in gold_text or "\\" in gold_text else f"${gold_text}$")
    if not gold_parsed:
        raise ValueError(f"math-verify cannot parse the gold answer: {gold!r}")
    answer = extract_hash_answer(completion)
    pred = parse(f"${answer}$") if answer is not None else parse(completion)
    if not pred:
        return None, 0.0
    extracted = answer if answer is not None else str(pred[-1])
    return extracted, float(bool(verify(gold_parsed, pred)))


GRADERS = {"exact": grade_exact, "math_verify": grade_math_verify}


def get_grader(name: str):
    """The grading function called ``name`` (one of ``GRADERS``)."""
    try:
        return GRADERS[name]
    except KeyError:
        raise ValueError(f"unknown grader {name!r}; expected one of {sorted(GRADERS)}") from None
