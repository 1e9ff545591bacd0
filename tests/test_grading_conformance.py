"""Conformance of the math_verify grader on real data and real answer formats.

The reference for what is correct is math-verify itself, used as its authors intend: the gold and the
answer each inside math delimiters (``verify(parse("$gold$"), parse("$answer$"))``). The grader must
give that verdict whatever the completion around the answer looks like: a boxed answer after some
reasoning, after Markdown ``####`` headings, after a ``<think>`` block holding a decoy, or GSM8K's
final-answer line.

- GSM8K's test split (tests/data/gsm8k, MIT licence beside it): every gold graded against its own
  worked solution, a boxed answer and a final-answer line scores 1; a wrong number 0.
- The answer formats of DeepScaleR's sources (MATH, AMC, AIME, Omni-MATH), written here, correct and
  incorrect: fractions, roots, multiples of pi, sums, intervals, tuples, choices, units, degrees,
  percentages, thousands separators, negatives, matrices, text answers, several boxes.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd
import pytest
from math_verify import parse, verify

from lossgeom.data.grading import Grade, MathVerifyGrader, final_answer_line, get_grader
from lossgeom.data.problemsets import ProblemSetError, load_problems, parse_golds

GSM8K = Path(__file__).parent / "data" / "gsm8k" / "test.jsonl"


@pytest.fixture(scope="module")
def grader() -> MathVerifyGrader:
    return MathVerifyGrader()


# ---------------------------------------------------------------- GSM8K, all 1,319 test items
@pytest.fixture(scope="module")
def gsm8k() -> pd.DataFrame:
    return load_problems({"source": str(GSM8K), "split": "test"})


def _wrong(number: str) -> str:
    """A different number in the gold's own style (thousands separators kept)."""
    value = int(number.replace(",", "")) + 1 if "." not in number else float(number.replace(",", "")) + 1
    return f"{value:,}" if "," in number else str(value)


@pytest.mark.heavy
def test_gsm8k_every_gold_parses_once_and_grades_its_own_solution(gsm8k, grader):
    golds = parse_golds(gsm8k, grader, "gsm8k test", "stop")  # stops on the first unreadable gold
    assert len(golds) == len(gsm8k) == 1319
    failures = []
    for (_, p), gold in zip(gsm8k.iterrows(), golds):
        n = final_answer_line(p["answer"])
        assert n is not None, p["id"]
        cases = {
            "own solution": (p["answer"], 1.0),
            "boxed": (f"Let me work it out.\nSo the answer is $\\boxed{{{n}}}$.", 1.0),
            "boxed after #### headings": (f"#### Step 1: read\nwork\n#### Step 2: conclude\nThus \\boxed{{{n}}}.", 1.0),
            "final-answer line": (f"work it out\n#### {n}", 1.0),
            "wrong boxed": (f"So the answer is \\boxed{{{_wrong(n)}}}.", 0.0),
            "wrong final line": (f"work it out\n#### {_wrong(n)}", 0.0),
        }
        for what, (completion, want) in cases.items():
            g = grader.grade(completion, gold)
            if g.reward != want or g.note != "ok":
                failures.append((p["id"], what, n, g))
    assert not failures, f"{len(failures)} wrong grades, first: {failures[:5]}"


def test_gsm8k_exact_grader_reads_the_same_golds(gsm8k):
    exact = get_grader("exact")
    golds = parse_golds(gsm8k, exact, "gsm8k test", "stop")
    assert all(exact.grade(a, g).reward == 1.0 for a, g in zip(gsm8k["answer"], golds))


# ---------------------------------------------------------------- DeepScaleR's own test sets (real LaTeX golds)
DEEPSCALER = Path(__file__).parent / "data" / "deepscaler"


@pytest.mark.heavy
@pytest.mark.parametrize("name", ["math", "aime", "amc"])
def test_deepscaler_golds_parse_and_grade_as_math_verify_on_delimited_text(grader, name):
    """MATH-500, AIME 2024 and AMC 2023 as DeepScaleR ships them (the grader before this one credited a
    correct boxed MATH-500 answer on 424 of 500 items and could not parse 40 golds). Every gold parses; a
    boxed gold is credited; another item's gold gets math-verify's verdict on the delimited pair."""
    problems = load_problems({"source": str(DEEPSCALER / f"{name}.json"), "question_field": "problem", "split": "test"})
    golds = parse_golds(problems, grader, f"deepscaler {name}", "stop")
    answers = problems["answer"].tolist()
    wrong = []
    for i, (gold, parsed) in enumerate(zip(answers, golds)):
        own = grader.grade(f"Some reasoning.\nSo the answer is $\\boxed{{{gold}}}$.", parsed)
        if (own.reward, own.note) != (1.0, "ok"):
            wrong.append((i, gold, "own"))
        other = answers[(i + 1) % len(answers)]
        reference = verify(parse(f"${gold}$"), parse(f"${other}$"))
        if grader.grade(f"So the answer is \\boxed{{{other}}}.", parsed).reward != float(reference):
            wrong.append((i, gold, other))
    assert not wrong, f"{len(wrong)} of {len(answers)} items graded unlike math-verify: {wrong[:5]}"


# ---------------------------------------------------------------- DeepScaleR's answer formats
# (gold as the dataset writes it, an answer, whether it is correct)
FORMATS = [
    # fractions and \dfrac
    ("\\frac{3}{4}", "\\dfrac{3}{4}", True),
    ("\\frac{3}{4}", "0.75", True),
    ("\\frac{3}{4}", "\\frac{4}{3}", False),
    ("\\dfrac{7}{2}", "3.5", True),
    # roots
    ("4\\sqrt{3}", "4\\sqrt{3}", True),
    ("4\\sqrt{3}", "4", False),
    ("\\sqrt{51}", "\\sqrt{51}", True),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\sqrt{51}", "51", False),
    # multiples of pi
    ("2\\pi", "2\\pi", True),
    ("2\\pi", "2", False),
    ("\\pi", "\\pi", True),
    ("-\\frac{\\pi}{6}", "-\\frac{\\pi}{6}", True),
    ("-\\frac{\\pi}{6}", "\\frac{\\pi}{6}", False),
    ("\\frac{\\pi}{2}", "\\pi", False),
    # sums
    ("1+\\sqrt{2}", "1+\\sqrt{2}", True),
    ("1+\\sqrt{2}", "\\sqrt{2}+1", True),
    ("1+\\sqrt{2}", "1", False),
    ("3-2\\sqrt{2}", "3-2\\sqrt{2}", True),
    ("3-2\\sqrt{2}", "3", False),
    # intervals
    ("(2,3]", "(2,3]", True),
    ("(2,3]", "[2,3]", False),
    ("(-\\infty, 5)", "(-\\infty,5)", True),
    ("[1, \\infty)", "(1,\\infty)", False),
    # tuples
    ("(3, -1, 2)", "(3,-1,2)", True),
    ("(3,-1,2)", "(3,1,2)", False),
    # choices
    ("\\text{(B)}", "\\text{(B)}", True),
    ("\\text{(B)}", "B", True),
    ("\\text{(B)}", "\\text{(C)}", False),
    # units
    ("5 \\text{ cm}", "5", True),
    ("5 \\text{ cm}", "5\\text{ cm}", True),
    ("5 \\text{ cm}", "6", False),
    # degrees
    ("30^\\circ", "30", True),
    ("30^\\circ", "30^\\circ", True),
    ("30^\\circ", "60^\\circ", False),
    # percentages
    ("10\\%", "10\\%", True),
    ("10\\%", "20\\%", False),
    # thousands separators
    ("1,000", "1000", True),
    ("12{,}345", "12345", True),
    ("1,000", "100", False),
    # negatives
    ("-5", "-5", True),
    ("-5", "5", False),
    ("-\\frac{1}{2}", "-0.5", True),
    # matrices
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}", False),
    # text answers and plain integers (AIME)
    ("\\text{Evelyn}", "\\text{Evelyn}", True),
    ("\\text{Evelyn}", "\\text{Bob}", False),
    ("204", "204", True),
    ("204", "240", False),
]
WRAPPERS = {
    "boxed after reasoning": "We compute step by step.\nSo the final answer is $\\boxed{ANSWER}$.",
    "boxed after #### headings": "#### Step 1: set up\nsome work\n#### Step 2: conclude\nTherefore \\boxed{ANSWER}.",
    "think block with a decoy": "<think>\nMaybe it is \\boxed{0}? No.\n</think>\n\nThe answer is \\boxed{ANSWER}.",
}


def _ids(cases):
    return [f"{g}|{a}" for g, a, _ in cases]


@pytest.mark.parametrize("gold, answer, correct", FORMATS, ids=_ids(FORMATS))
def test_expectations_are_math_verify_on_delimited_text(gold, answer, correct):
    """The table's verdicts are math-verify's own on the delimited gold and answer (the reference)."""
    assert verify(parse(f"${gold}$"), parse(f"${answer}$")) == correct


@pytest.mark.parametrize("gold, answer, correct", FORMATS, ids=_ids(FORMATS))
def test_grader_gives_the_reference_verdict_in_every_completion_style(grader, gold, answer, correct):
    parsed = grader.parse_gold(gold)
    for style, text in WRAPPERS.items():
        g = grader.grade(text.replace("ANSWER", answer), parsed)
        assert (g.reward, g.note) == (float(correct), "ok"), (style, g)


def test_several_boxes_are_one_set_answer(grader):
    """math-verify reads several boxes together, as a set: a listed answer is credited, a hedge is not."""
    gold = grader.parse_gold("2, 3")
    assert grader.grade("The roots are \\boxed{2} and \\boxed{3}.", gold).reward == 1.0
    five = grader.parse_gold("5")
    assert grader.grade("It is \\boxed{3}, no wait, \\boxed{5}.", five).reward == 0.0
    assert grader.grade("It is \\boxed{5}.", five).reward == 1.0


def test_a_hash_heading_is_not_a_final_answer(grader):
    gold = grader.parse_gold("12")
    assert final_answer_line("#### Step 2: conclude") is None
    assert grader.grade("#### Step 2: conclude\nSo \\boxed{12}", gold) == Grade("12", 1.0, "ok")
    assert final_answer_line("so\n#### 1,234.") == "1,234"
    assert final_answer_line("#### 12 apples") is None


def test_an_unclosed_think_block_has_no_answer(grader):
    assert grader.grade("<think>\nit is \\boxed{12} I think, but", grader.parse_gold("12")) == Grade(
        None, 0.0, "no answer"
    )


# ---------------------------------------------------------------- golds read before anything is generated
def _problems(golds: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"q{i}" for i in range(len(golds))], "question": ["?"] * len(golds), "answer": golds})


def test_an_unreadable_gold_stops_with_the_item_and_source(grader):
    problems = _problems(["\\frac{1}{2}", "\\sqrt{51}", "\\text{}", ""])
    with pytest.raises(
        ProblemSetError, match=r"prompts \(mydata\): item 'q2': .*2 of 4 gold answers.*unparsable_gold: drop"
    ):
        parse_golds(problems, grader, "prompts (mydata)", "stop")


def test_drop_leaves_unreadable_golds_out(grader, caplog):
    golds = parse_golds(_problems(["\\frac{1}{2}", "", "7"]), grader, "prompts (mydata)", "drop")
    assert golds[1] is None and golds[0] and golds[2]
    assert "1 of 3 gold answers cannot be read" in caplog.text
    with pytest.raises(ProblemSetError, match="none of the 2 gold answers"):
        parse_golds(_problems(["", " "]), grader, "prompts (mydata)", "drop")


def test_rollouts_job_reads_golds_before_sending_a_request(tmp_path, monkeypatch, capsys):
    """The API teacher's job stops on an unreadable gold before its first request (the endpoint here
    is unreachable: reaching it would fail differently)."""
    from lossgeom.cli import main

    src = tmp_path / "p.jsonl"
    src.write_text("\n".join(json.dumps({"question": "q", "answer": a}) for a in ["2", "\\text{}"]))
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", "k")
    gen = {
        "backend": "openai",
        "openai": {
            "base_url": "http://127.0.0.1:9/v1",
            "model": "m",
            "api_key_env": "LOSSGEOM_TEST_KEY",
            "max_retries": 0,
        },
    }
    rc = main(
        [
            "rollouts",
            "--model",
            "none",
            "--problems",
            json.dumps({"source": str(src)}),
            "--spec",
            json.dumps({"k": 1, "temperature": 1.0, "max_new_tokens": 8, "grader": "math_verify"}),
            "--generation",
            json.dumps(gen),
            "--journal",
            str(tmp_path / "j.jsonl"),
            "--out",
            str(tmp_path / "r.parquet"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "item 'p-train-1'" in err and "cannot parse the gold answer" in err, err
    assert not (tmp_path / "r.parquet").exists() and not (tmp_path / "j.jsonl").exists()


# ---------------------------------------------------------------- grading never raises
def test_a_math_verify_timeout_or_error_is_reward_zero_with_a_reason(grader, monkeypatch):
    from math_verify.errors import TimeoutException

    gold = grader.parse_gold("12")

    def timeout(*a, **k):
        raise TimeoutException("Operation timed out!")

    monkeypatch.setattr(grader._mv, "verify", timeout)
    assert grader.grade("\\boxed{12}", gold) == Grade(None, 0.0, "timeout: math-verify")

    def broken(*a, **k):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(grader._mv, "parse", broken)
    g = grader.grade("\\boxed{12}", gold)
    assert g.reward == 0.0 and g.note.startswith("error: RecursionError")


def test_grading_in_a_worker_thread(grader):
    """math-verify's timeouts use signal.alarm (main thread only); elsewhere the grader runs without them."""
    out = []
    t = threading.Thread(target=lambda: out.append(grader("so \\boxed{\\frac{1}{2}}", "0.5")))
    t.start()
    t.join()
    assert out == [Grade("\\frac{1}{2}", 1.0, "ok")]
