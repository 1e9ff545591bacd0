"""Generated multi-step arithmetic word problems in GSM8K's format.

A problem is a short story of ``n_steps`` quantity changes ("Ava has 7 pens. She buys 4 more. ...")
followed by a question; its worked solution has one equation per step and ends with the final answer
on its own line in GSM8K's ``#### <number>`` form, so the same grader serves the toy world and GSM8K.

Every solution is written in three styles (:data:`STYLES`), with the same final answer:

* ``terse`` -- one bare equation per step (``7 + 4 = 11``), then ``#### 11`` (the gold solution, as
  GSM8K's own worked solutions: every cross-entropy is measured on it);
* ``verbose`` -- a chain of thought: each equation inside a sentence (``First, we compute 7 + 4 = 11.``,
  then ``Next, we compute ...``) and a closing sentence that names the answer (``So the final answer
  is 11.``) before ``#### 11``: what the teacher writes, and the student when cued;
* ``direct`` -- the answer line alone (``#### 11``): what the student writes when not cued.

Everything is a pure function of a seed: the train/test split is drawn from one seeded stream with
prompts de-duplicated, so the test set never shares a prompt with the training set.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from ..errors import InputError
from ..settings import ToySettings

# the toy section's defaults (lossgeom.settings.ToySettings: their one place)
_LIMITS = ToySettings.defaults()

NAMES = ("Ava", "Ben", "Cleo", "Dan", "Eli", "Fay", "Gus", "Ivy", "Jon", "Kim", "Leo", "Mia")
_SHE = frozenset({"Ava", "Cleo", "Fay", "Ivy", "Kim", "Mia"})
ITEMS = ("apples", "pens", "books", "coins", "cards", "shells", "stamps", "marbles")

# Each operation: how the story states it and how the solution computes it. ``{n}`` is the operand.
_ADD = ("{p} buys {n} more.", "{p} finds {n} more.", "{p} gets {n} more.")
_SUB = ("{p} gives {n} away.", "{p} loses {n}.", "{p} sells {n}.")
_MUL = ("{p} doubles them.",)


STYLES = ("terse", "verbose", "direct")


@dataclass(frozen=True)
class Problem:
    """One toy problem: ``question`` is the prompt text, ``solution`` the worked answer in the terse
    style (ending in ``#### <answer>``; the gold of every cross-entropy), ``answer`` the integer
    final answer, ``verbose_solution`` the same solution as a chain of thought (the verbose style)."""

    id: str
    question: str
    solution: str
    answer: int
    verbose_solution: str = ""

    def solution_in(self, style: str) -> str:
        """The worked solution in ``style`` (one of :data:`STYLES`)."""
        if style not in STYLES:
            raise InputError(f"unknown solution style {style!r}; expected one of {list(STYLES)}")
        if style == "direct":
            return f"#### {self.answer}"
        return self.solution if style == "terse" else self.verbose_solution


def make_problem(
    rng: random.Random,
    n_steps: int,
    max_start: int = _LIMITS["max_start"],
    max_operand: int = _LIMITS["max_operand"],
    max_double: int = _LIMITS["max_double"],
) -> Problem:
    """Draw one problem of ``n_steps`` operations; intermediate values stay positive.

    Operands are in [1, max_operand]; a value is doubled only while it is <= ``max_double``, which
    keeps answers to two digits and the task within reach of a model trained for a few minutes.
    """
    person = rng.choice(NAMES)
    pronoun = "She" if person in _SHE else "He"
    item = rng.choice(ITEMS)
    value = rng.randint(2, max_start)
    story = [f"{person} has {value} {item}."]
    lines = []
    verbose = []
    for _ in range(n_steps):
        kind = rng.choice(("add", "sub", "mul") if value <= max_double else ("add", "sub"))
        if kind == "sub" and value < 2:
            kind = "add"
        if kind == "add":
            n = rng.randint(1, max_operand)
            story.append(rng.choice(_ADD).format(p=pronoun, n=n))
            lines.append(f"{value} + {n} = {value + n}")
            verbose.append(f"{'Next' if verbose else 'First'}, we compute {lines[-1]}.")
            value += n
        elif kind == "sub":
            n = rng.randint(1, min(max_operand, value - 1))
            story.append(rng.choice(_SUB).format(p=pronoun, n=n))
            lines.append(f"{value} - {n} = {value - n}")
            verbose.append(f"{'Next' if verbose else 'First'}, we compute {lines[-1]}.")
            value -= n
        else:
            phrase = rng.choice(_MUL)
            n = 2
            story.append(phrase.format(p=pronoun))
            lines.append(f"{value} * {n} = {value * n}")
            verbose.append(f"{'Next' if verbose else 'First'}, we compute {lines[-1]}.")
            value *= n
    story.append(f"How many {item} does {person} have now?")
    question = " ".join(story)
    solution = "\n".join(lines + [f"#### {value}"])
    verbose_solution = "\n".join(verbose + [f"So the final answer is {value}.", f"#### {value}"])
    return Problem(id="", question=question, solution=solution, answer=value, verbose_solution=verbose_solution)


def generate_splits(
    seed: int,
    n_train: int,
    n_test: int,
    min_steps: int = _LIMITS["min_steps"],
    max_steps: int = _LIMITS["max_steps"],
    **limits,
) -> tuple[list[Problem], list[Problem]]:
    """Deterministic train and test problems with disjoint questions.

    ``limits`` are passed to ``make_problem`` (max_start, max_operand, max_double).
    Ids are ``toy-train-{i}`` / ``toy-test-{i}``. Raises :class:`~lossgeom.errors.InputError` when the
    requested number of distinct problems cannot be drawn (the space is large, so this means absurd sizes).
    """
    if n_train < 1 or n_test < 1:
        raise InputError(f"toy problem counts must be >= 1, got n_train={n_train}, n_test={n_test}")
    if not 1 <= min_steps <= max_steps:
        raise InputError(f"need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
    rng = random.Random(seed)
    seen: set[str] = set()
    drawn: list[Problem] = []
    attempts = 0
    while len(drawn) < n_train + n_test:
        attempts += 1
        if attempts > 50 * (n_train + n_test):
            raise InputError(f"could not draw {n_train + n_test} distinct toy problems")
        p = make_problem(rng, rng.randint(min_steps, max_steps), **limits)
        if p.question in seen:
            continue
        seen.add(p.question)
        drawn.append(p)
    train = [dataclasses.replace(p, id=f"toy-train-{i}") for i, p in enumerate(drawn[:n_train])]
    test = [dataclasses.replace(p, id=f"toy-test-{i}") for i, p in enumerate(drawn[n_train:])]
    return train, test
