"""Tests of the toy problem generator (lossgeom.toy.problems) and the graders (lossgeom.data.grading)."""

from __future__ import annotations

import random
import re
from fractions import Fraction

import pytest

from lossgeom.data.grading import (
    GRADERS,
    ExactGrader,
    GoldError,
    Grade,
    MathVerifyGrader,
    extract_hash_answer,
    get_grader,
    grade_exact,
    grade_math_verify,
    parse_gold,
)
from lossgeom.toy.problems import Problem, generate_splits, make_problem

EQUATION = re.compile(r"^(\d+) ([+\-*]) (\d+) = (\d+)$")
FIRST = re.compile(r"^(\w+) has (\d+) (\w+)\.")
# How the story states each operation, and the equation operator it must produce.
STEP_PATTERNS = [
    (re.compile(r"^(?:She|He) (?:buys|finds|gets) (\d+) more\.$"), "+"),
    (re.compile(r"^(?:She|He) (?:gives (\d+) away|loses (\d+)|sells (\d+))\.$"), "-"),
    (re.compile(r"^(?:She|He) doubles them\.$"), "*"),
]


@pytest.fixture(scope="module")
def splits():
    return generate_splits(seed=7, n_train=300, n_test=60)


def _story_steps(question: str) -> tuple[int, list[tuple[str, int]]]:
    """Parse a question back into (start value, [(op, operand), ...])."""
    sentences = re.split(r"(?<=[.?]) ", question)
    m = FIRST.match(sentences[0])
    assert m, question
    assert sentences[-1].startswith("How many ") and sentences[-1].endswith(" have now?"), question
    steps = []
    for s in sentences[1:-1]:
        for pattern, op in STEP_PATTERNS:
            sm = pattern.match(s)
            if sm:
                operand = 2 if op == "*" else int(next(g for g in sm.groups() if g is not None))
                steps.append((op, operand))
                break
        else:
            pytest.fail(f"unrecognised story sentence {s!r} in {question!r}")
    return int(m.group(2)), steps


# ---------------------------------------------------------------- generator
def test_same_seed_same_problems():
    a = generate_splits(3, 40, 10)
    b = generate_splits(3, 40, 10)
    assert a == b


def test_different_seed_different_problems():
    a_train, _ = generate_splits(3, 40, 10)
    b_train, _ = generate_splits(4, 40, 10)
    assert [p.question for p in a_train] != [p.question for p in b_train]


def test_make_problem_deterministic_given_rng_state():
    p1 = make_problem(random.Random(11), 3)
    p2 = make_problem(random.Random(11), 3)
    assert p1 == p2
    assert p1.id == ""


def test_sizes_and_ids(splits):
    train, test = splits
    assert len(train) == 300 and len(test) == 60
    assert [p.id for p in train] == [f"toy-train-{i}" for i in range(300)]
    assert [p.id for p in test] == [f"toy-test-{i}" for i in range(60)]
    assert all(isinstance(p, Problem) for p in train + test)


def test_train_test_questions_disjoint_and_unique(splits):
    train, test = splits
    tq = [p.question for p in train]
    sq = [p.question for p in test]
    assert len(set(tq)) == len(tq)
    assert len(set(sq)) == len(sq)
    assert not set(tq) & set(sq)


def test_gsm8k_format_and_arithmetic(splits):
    train, test = splits
    for p in train + test:
        lines = p.solution.split("\n")
        last = re.fullmatch(r"#### (-?\d+)", lines[-1])
        assert last, p.solution
        assert int(last.group(1)) == p.answer
        assert isinstance(p.answer, int)
        eqs = lines[:-1]
        assert 2 <= len(eqs) <= 3  # default min_steps=2, max_steps=3
        prev = None
        for line in eqs:
            m = EQUATION.match(line)
            assert m, f"not an equation: {line!r}"
            a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            expected = {"+": a + b, "-": a - b, "*": a * b}[op]
            assert c == expected, f"wrong arithmetic {line!r}"
            assert c > 0, f"intermediate value not positive: {line!r}"
            if prev is not None:
                assert a == prev, f"equation does not continue from the previous result: {p.solution!r}"
            prev = c
        assert prev == p.answer
        # The grader that serves GSM8K reads the toy solution too.
        assert parse_gold(p.solution) == p.answer


def test_story_matches_solution(splits):
    train, _ = splits
    for p in train[:100]:
        start, steps = _story_steps(p.question)
        eqs = [EQUATION.match(line) for line in p.solution.split("\n")[:-1]]
        assert len(steps) == len(eqs)
        assert int(eqs[0].group(1)) == start
        for (op, operand), m in zip(steps, eqs):
            assert m.group(2) == op and int(m.group(3)) == operand, (p.question, p.solution)


def test_limits_respected():
    train, test = generate_splits(5, 200, 20, min_steps=1, max_steps=4, max_start=6, max_operand=3, max_double=10)
    n_steps = set()
    for p in train + test:
        start, steps = _story_steps(p.question)
        assert 2 <= start <= 6
        n_steps.add(len(steps))
        value = start
        for op, operand in steps:
            if op == "*":
                assert value <= 10, p.question
                value *= 2
            elif op == "+":
                assert 1 <= operand <= 3
                value += operand
            else:
                assert 1 <= operand <= 3
                value -= operand
        assert value == p.answer
    assert n_steps == {1, 2, 3, 4}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_train=0, n_test=5),
        dict(n_train=5, n_test=0),
        dict(n_train=-1, n_test=5),
        dict(n_train=5, n_test=5, min_steps=0, max_steps=2),
        dict(n_train=5, n_test=5, min_steps=3, max_steps=2),
    ],
)
def test_bad_sizes_raise(kwargs):
    with pytest.raises(ValueError):
        generate_splits(0, **kwargs)


def test_impossible_number_of_distinct_problems_raises():
    # One step from start 2 with operand 1: 12 names x 8 items x 6 phrasings = 576 questions at most.
    with pytest.raises(ValueError, match="distinct"):
        generate_splits(0, 1000, 1, min_steps=1, max_steps=1, max_start=2, max_operand=1, max_double=0)


# ---------------------------------------------------------------- exact grader
@pytest.mark.parametrize(
    "completion, gold, extracted, reward",
    [
        ("3 + 4 = 7\n#### 7", "7", "7", 1.0),
        ("3 + 4 = 8\n#### 8", "7", "8", 0.0),
        ("#### 12abc", "12", "12abc", 0.0),
        ("#### 1,2", "12", "1,2", 0.0),
        ("#### 1,234", "1234", "1,234", 1.0),
        ("#### 1234", "1,234", "1234", 1.0),
        ("#### 12.0", "12", "12.0", 1.0),
        ("#### 12.5", "12", "12.5", 0.0),
        ("#### -5", "-5", "-5", 1.0),
        ("#### 5", "-5", "5", 0.0),
        ("#### -5", "5", "-5", 0.0),
        ("#### $12", "12", "$12", 1.0),
        ("#### 3\nmore thinking\n#### 4", "4", "4", 1.0),  # the last #### wins
        ("#### 4\nmore thinking\n#### 3", "4", "3", 0.0),
        ("#### 7", "She has 3.\n3 + 4 = 7\n#### 7", "7", 1.0),  # gold is a GSM8K solution
        ("#### 3", "She has 3.\n3 + 4 = 7\n#### 7", "3", 0.0),  # ...and its last line counts, not the 3
    ],
)
def test_grade_exact(completion, gold, extracted, reward):
    assert grade_exact(completion, gold) == Grade(extracted, reward, "ok")


@pytest.mark.parametrize("completion", ["3 + 4 = 7", "The answer is 7", "", "7", "####", "#### ", "3 + 4 = 7\n####   "])
def test_grade_exact_no_answer_is_zero_not_dropped(completion):
    assert grade_exact(completion, "7") == Grade(None, 0.0, "no answer")


@pytest.mark.parametrize("gold", ["seven", "", "#### ", "#### x", "1,2"])
def test_unparsable_gold_raises(gold):
    with pytest.raises(GoldError, match="gold"):
        grade_exact("#### 7", gold)


def test_parse_gold_and_extract():
    assert parse_gold("72") == Fraction(72)
    assert parse_gold("Natalia sold 48/2 = 24 clips.\n#### 72") == Fraction(72)
    assert parse_gold("#### 1,234") == Fraction(1234)
    assert parse_gold("-0.5") == Fraction(-1, 2)
    assert parse_gold("seven") is None
    assert extract_hash_answer("a\n####  42  ") == "42"
    assert extract_hash_answer("no marker") is None


# ---------------------------------------------------------------- math_verify grader
def test_math_verify_fraction_equals_decimal():
    extracted, reward, note = grade_math_verify("so it is half: $\\frac{1}{2}$", "0.5")
    assert (extracted, reward, note) == ("\\frac{1}{2}", 1.0, "ok")
    assert grade_math_verify("so it is $\\frac{1}{3}$", "0.5").reward == 0.0


def test_math_verify_boxed():
    assert grade_math_verify("3 + 4 = 7, so the answer is \\boxed{7}.", "7") == Grade("7", 1.0, "ok")
    assert grade_math_verify("the answer is \\boxed{7}.", "8") == Grade("7", 0.0, "ok")


def test_math_verify_gsm8k_gold():
    assert grade_math_verify("#### 72", "48 + 24 = 72\n#### 72")[1] == 1.0


def test_math_verify_unparsable_completion():
    assert grade_math_verify("I have no idea.", "7") == Grade(None, 0.0, "no answer")


def test_get_grader():
    assert isinstance(get_grader("exact"), ExactGrader) and get_grader("exact").name == "exact"
    assert isinstance(get_grader("math_verify"), MathVerifyGrader) and get_grader("math_verify").name == "math_verify"
    assert set(GRADERS) == {"exact", "math_verify"}
    with pytest.raises(ValueError, match="unknown grader 'regex'"):
        get_grader("regex")
