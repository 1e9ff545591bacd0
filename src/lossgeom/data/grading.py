"""Final-answer extraction and grading.

Two graders share one interface (:class:`Grader`): the gold answer of an item is parsed once,
before anything is generated or sent (:meth:`Grader.parse_gold`, which raises :class:`GoldError`
naming the gold), and each completion is graded against the parsed gold (:meth:`Grader.grade`),
giving a :class:`Grade` ``(answer, reward, note)``. Grading never raises: a completion without an
answer, or one the grader cannot handle (a math-verify timeout, a parser error), gets reward 0 and
says why in ``note``.

- ``exact``: the toy world's grader. The final answer is the number after the last ``####`` in
  the completion (GSM8K's convention); it is correct when it equals the gold number exactly as a
  rational ("12.0" == "12"; "1,234" is read as 1234).
- ``math_verify``: real datasets, graded by HuggingFace's math-verify as its authors intend (and as
  TRL's ``accuracy_reward`` calls it): the gold inside math delimiters (``$<gold>$``; a gold that
  is a worked solution with a ``\\boxed{}`` or already delimited is parsed as it is; a GSM8K
  solution gives the number on its final ``#### n`` line), and the completion's answer taken in
  this order: the ``\\boxed{}`` answer (math-verify with boxed matches first; several boxes read
  together as one set answer, as math-verify does), else GSM8K's final-answer line (``#### n``
  with a number at the very end of the completion; a ``####`` Markdown heading is not one), else
  math-verify's own extraction (an anchored "final answer is ...", else the last expression).
  Only the text after the last ``</think>`` is graded; a ``<think>`` block never closed holds no
  answer.
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from fractions import Fraction
from typing import Any, NamedTuple

from ..errors import InputError

_HASH_ANSWER = re.compile(r"####[ \t]*([^\n]*)")  # the answer is on the marker's own line
# GSM8K's final-answer line at the very end of a completion: "#### 1,234" (a number, nothing after it)
_FINAL_LINE = re.compile(r"(?:^|\n)[ \t]*####[ \t]*(\$?[ \t]*-?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?)[ \t]*\.?[ \t]*\Z")
_BOXED = ("\\boxed", "\\fbox")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# math-verify's own timeouts (s) for one parse and one comparison: math-verify implements them with
# signal.alarm, which works in the main thread only, so elsewhere they are off (as TRL's reward does)
PARSE_TIMEOUT_S, VERIFY_TIMEOUT_S = 5, 5


class GoldError(InputError):
    """A gold answer the grader cannot read: an input error, reported before anything is generated."""


class Grade(NamedTuple):
    """One graded completion: ``answer`` the extracted final answer (text, None when none was found),
    ``reward`` 1.0 correct / 0.0 otherwise, ``note`` "ok", "no answer", or why it could not be graded
    ("timeout: ...", "error: ..."; then reward 0)."""

    answer: str | None
    reward: float
    note: str


NO_ANSWER = Grade(None, 0.0, "no answer")


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


def final_answer_line(text: str) -> str | None:
    """The number of GSM8K's final-answer line when ``text`` ends with one (``#### 72``), else None."""
    m = _FINAL_LINE.search(text.rstrip())
    if m is None or _to_number(m.group(1)) is None:
        return None
    return m.group(1).replace("$", "").strip()


def parse_gold(gold: str) -> Fraction | None:
    """A gold answer as a number: a bare number, or a GSM8K solution ending in ``#### n``."""
    ans = extract_hash_answer(gold)
    return _to_number(ans if ans is not None else gold)


def answer_region(completion: str) -> str | None:
    """The part of a completion that holds its answer: after the last ``</think>``; None when a
    ``<think>`` block is never closed (a reasoning cut off before its answer)."""
    if THINK_CLOSE in completion:
        return completion.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in completion:
        return None
    return completion


class Grader(ABC):
    """Parse gold answers once, then grade completions against them (see the module docstring)."""

    name = "?"

    @abstractmethod
    def parse_gold(self, gold: str) -> Any:
        """The gold answer in the grader's own form; raises :class:`GoldError` when it cannot be read."""

    @abstractmethod
    def grade(self, completion: str, gold: Any) -> Grade:
        """Grade ``completion`` against a gold answer returned by :meth:`parse_gold`; never raises."""

    def __call__(self, completion: str, gold: str) -> Grade:
        """Grade against a gold given as text (parsed here: for one-off calls; jobs parse once)."""
        return self.grade(completion, self.parse_gold(gold))


class ExactGrader(Grader):
    """Exact numeric match of the ``####`` answer (the toy world's and GSM8K's format)."""

    name = "exact"

    def parse_gold(self, gold: str) -> Fraction:
        value = parse_gold(gold)
        if value is None:
            raise GoldError(f"gold answer {gold[:80]!r} is not a number, which grader 'exact' needs")
        return value

    def grade(self, completion: str, gold: Fraction) -> Grade:
        extracted = extract_hash_answer(completion)
        if extracted is None:
            return NO_ANSWER
        value = _to_number(extracted)
        return Grade(extracted, float(value is not None and value == gold), "ok")


def _timeouts() -> tuple[int | None, int | None]:
    main = threading.current_thread() is threading.main_thread()
    return (PARSE_TIMEOUT_S, VERIFY_TIMEOUT_S) if main else (None, None)


class MathVerifyGrader(Grader):
    """Symbolic match with math-verify, used as its authors intend (see the module docstring)."""

    name = "math_verify"

    def __init__(self):
        import logging

        import math_verify  # imported here: it pulls in sympy
        from math_verify.errors import TimeoutException

        self._mv, self._timeout = math_verify, TimeoutException
        # math-verify logs a warning per timeout and when timeouts are off; a Grade's note says it instead
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).setLevel(logging.ERROR)

    @staticmethod
    def gold_text(gold: str) -> str:
        """The text math-verify reads for ``gold``: a worked solution (with a ``\\boxed{}`` or a final
        ``#### n`` line) or an already delimited answer as it is; the answer after a ``####`` marker,
        or a bare answer, inside ``$...$``."""
        g = gold.strip()
        if final_answer_line(g) is not None or any(b in g for b in _BOXED) or g.startswith(("$", "\\(", "\\[")):
            return g
        hashed = extract_hash_answer(g)
        return f"${hashed if hashed is not None else g}$"

    def parse_gold(self, gold: str) -> list:
        parse_s, _ = _timeouts()
        try:
            parsed = self._extract(self.gold_text(gold), parse_s)
        except self._timeout:
            raise GoldError(f"math-verify timed out ({parse_s} s) parsing the gold answer {gold[:80]!r}") from None
        except Exception as e:  # a parser error: the gold is not math-verify's LaTeX
            raise GoldError(f"math-verify cannot parse the gold answer {gold[:80]!r} ({type(e).__name__})") from None
        if not parsed:
            raise GoldError(f"math-verify cannot parse the gold answer {gold[:80]!r}")
        return parsed

    def _extract(self, text: str, parse_s) -> list:
        """math-verify's parse of the answer in ``text``, in the order of the module docstring (gold
        and completion alike)."""
        mv = self._mv
        if any(b in text for b in _BOXED):
            config = [mv.LatexExtractionConfig(boxed_match_priority=0), mv.ExprExtractionConfig()]
            return mv.parse(text, config, extraction_mode="first_match", parsing_timeout=parse_s, raise_on_error=True)
        number = final_answer_line(text)
        if number is not None:
            return mv.parse(f"${number}$", parsing_timeout=parse_s, raise_on_error=True)
        return mv.parse(text, parsing_timeout=parse_s, raise_on_error=True)

    def grade(self, completion: str, gold: list) -> Grade:
        text = answer_region(completion)
        if text is None or not text.strip():
            return NO_ANSWER
        parse_s, verify_s = _timeouts()
        try:
            pred = self._extract(text, parse_s)
            if not pred:
                return NO_ANSWER
            ok = self._mv.verify(gold, pred, timeout_seconds=verify_s, raise_on_error=True)
        except self._timeout:
            return Grade(None, 0.0, "timeout: math-verify")
        except Exception as e:  # a parser or comparison error in math-verify or sympy: recorded, not raised
            return Grade(None, 0.0, f"error: {type(e).__name__}: {' '.join(str(e).split())[:120]}")
        extracted = pred[-1] if isinstance(pred[-1], str) else str(pred[0])
        return Grade(extracted, float(bool(ok)), "ok")


GRADERS = {"exact": ExactGrader, "math_verify": MathVerifyGrader}


def get_grader(name: str) -> Grader:
    """The grader called ``name`` (one of ``GRADERS``)."""
    try:
        return GRADERS[name]()
    except KeyError:
        raise InputError(f"unknown grader {name!r}; expected one of {sorted(GRADERS)}") from None


def grade_exact(completion: str, gold: str) -> Grade:
    """``exact`` on a gold given as text (raises :class:`GoldError` for a gold that is not a number)."""
    return ExactGrader()(completion, gold)


def grade_math_verify(completion: str, gold: str) -> Grade:
    """``math_verify`` on a gold given as text (raises :class:`GoldError` for a gold it cannot parse)."""
    return MathVerifyGrader()(completion, gold)
