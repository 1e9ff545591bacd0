"""A claim's verdict over its replicates: settled only where every replicate agrees by more than they spread.

A claim's check (:mod:`.check`, :mod:`.anchors`) returns, for one replicate of the run (the shared-init
seed's adapters, its data-order replicate's, another init seed's: :meth:`.tables.RunTables.replicates`),
the **margin** of each condition of its rule: a signed number in the condition's own units (a cosine, a
ratio, degrees, log10 of a p-value), positive where the condition is met, whose size is the distance to
the rule's threshold. The rule holds on a replicate when every condition's margin is positive.

Across the replicates, each condition is

* **met** when its smallest margin is positive and larger than the spread of its margins (largest minus
  smallest): another replicate, or another machine whose float rounding moves the numbers by about as much
  as a replicate does, would meet it too;
* **violated** when its largest margin is negative and larger in size than the spread;
* **uncertain** otherwise: the replicates disagree, or agree by less than they differ.

The claim **holds** when every condition is met, **fails** when any condition is violated (an "and" rule
fails on one condition), and is **fragile** otherwise; with a single replicate the spread is unknown and
the verdict is **inconclusive** (the row still says whether that replicate holds), except for a statistic
over all the run's adapters whose rule reads its confidence interval (the interval is its spread). The spread is the range,
not a standard error: with two or three replicates it is the one estimate of the scatter there is, and a
margin larger than the whole range is what a reader can trust to survive a rerun elsewhere.
"""

from __future__ import annotations

import math
import re
from typing import Mapping, NamedTuple

HOLDS, FAILS, FRAGILE, INCONCLUSIVE, NOT_RUN = "holds", "fails", "fragile", "inconclusive", "not run"
VERDICTS = (HOLDS, FAILS, FRAGILE, INCONCLUSIVE, NOT_RUN)


class Judged(NamedTuple):
    """One replicate's check: the texts of the claims table and each condition's signed margin."""

    this_run: str
    floor: str
    random: str
    margins: dict[str, float]  # condition -> margin (> 0: met), in the condition's units
    # The margins are edges of a confidence interval of a statistic over all the run's adapters: the scatter
    # the interval covers is the replicates', so the check reads every replicate at once and one is enough.
    interval: bool = False

    @property
    def holds(self) -> bool:
        return all(m > 0 for m in self.margins.values())


def _condition(margins: list[float]) -> str:
    """met / violated / uncertain, for one condition's margins over the replicates."""
    if any(not math.isfinite(m) for m in margins):
        return "uncertain"
    spread = max(margins) - min(margins)
    if min(margins) > spread:
        return "met"
    if -max(margins) > spread:
        return "violated"
    return "uncertain"


def verdict(judged: Mapping[str, Judged]) -> str:
    """The claim's verdict from its replicates' checks (replicate name -> :class:`Judged`, the conditions
    the same in each): holds / fails / fragile, or inconclusive with one replicate."""
    if not judged:
        return NOT_RUN
    if len(judged) < 2:
        (only,) = judged.values()
        return (HOLDS if only.holds else FAILS) if only.interval else INCONCLUSIVE
    conditions = next(iter(judged.values())).margins
    status = {c: _condition([j.margins[c] for j in judged.values()]) for c in conditions}
    if "violated" in status.values():
        return FAILS
    if all(s == "met" for s in status.values()):
        return HOLDS
    return FRAGILE


def _num(x: float) -> str:
    return f"{x:+.3g}" if math.isfinite(x) else "nan"


def replicates_text(judged: Mapping[str, Judged]) -> tuple[str, str]:
    """(``replicates``, ``margins``) columns: how many replicates hold (``"2 of 3 hold"``), and each
    replicate's margin with, per condition, the spread across replicates. A replicate's margin is its
    smallest condition's (the one that decides it); conditions are named where the rule has several."""
    n, k = len(judged), sum(j.holds for j in judged.values())
    count = f"{k} of {n} hold" if n > 1 else ("1 of 1 holds" if k else "0 of 1 holds")
    conditions = list(next(iter(judged.values())).margins) if judged else []
    parts = []
    for c in conditions:
        ms = [j.margins[c] for j in judged.values()]
        each = ", ".join(f"{r} {_num(j.margins[c])}" for r, j in judged.items())
        spread = f"; spread {max(ms) - min(ms):.3g}" if n > 1 and all(map(math.isfinite, ms)) else ""
        parts.append((f"{c}: " if len(conditions) > 1 else "") + each + spread)
    return count, " | ".join(parts)


# A number in a claim's text: not part of a name ("seed42", "q_proj", "u1"), with its sign and exponent; a
# number after "/" is one ("0.635/0.648/0.702"), as a label's seed after its "/" begins with a letter.
_NUMBER = re.compile(r"(?<![\w.])([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)(?![\w.])")


def ranges_text(texts: Mapping[str, str]) -> str:
    """Several replicates' (or runs') texts of one claim (name -> text) as one: where they say the same thing
    with other numbers, each number becomes its range (``"SFT-RFT 0.86 to 0.894"``); where their words
    differ (another order, other labels), each text is given after its name (``"seed42: ...; seed123: ..."``)."""
    unique = dict(zip(dict.fromkeys(texts.values()), texts))  # text -> the first name that has it
    if len(unique) <= 1:
        return next(iter(unique), "")
    split = [_NUMBER.split(t) for t in unique]
    if len({tuple(parts[::2]) for parts in split}) > 1:
        return "; ".join(f"{name}: {t}" for name, t in texts.items())
    out = list(split[0])
    for k in range(1, len(out), 2):
        numbers = [parts[k] for parts in split]
        if len(set(numbers)) > 1:
            lo, hi = min(numbers, key=float), max(numbers, key=float)
            out[k] = f"{lo} to {hi}"
    return "".join(out)
