"""Tests of rollout import/summary (lossgeom.data.rollouts) and problem-set loading (lossgeom.data.problemsets)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from lossgeom.data.grading import parse_gold
from lossgeom.data.problemsets import ProblemSetError, load_problems
from lossgeom.data.rollouts import ROLLOUT_COLUMNS, RolloutError, import_rollouts, summarize


def _row(**over) -> dict:
    row = {"prompt_id": "p1", "prompt": "What is 3 + 4?", "completion": "3 + 4 = 7\n#### 7", "reward": 1}
    row.update(over)
    return row


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


# ---------------------------------------------------------------- import_rollouts
def test_good_jsonl_imports(tmp_path):
    rows = [
        _row(),
        _row(completion="#### 8", reward=0, answer="8", gold="7"),
        _row(prompt_id=2, prompt="What is 1 + 1?", completion="#### 2", reward=1.0, logprobs=[-0.5, -0.25, 0]),
        _row(prompt_id="p1", completion="no idea", reward=0.0),
    ]
    path = _write_jsonl(tmp_path / "roll.jsonl", rows[:2] + [""] + rows[2:])  # a blank line is skipped
    df = import_rollouts(path)
    assert list(df.columns) == ROLLOUT_COLUMNS
    assert len(df) == 4
    assert df["prompt_id"].tolist() == ["p1", "p1", "2", "p1"]
    assert df["reward"].tolist() == [1.0, 0.0, 1.0, 0.0]
    # sample_index numbered within each prompt when missing
    assert df["sample_index"].tolist() == [0, 1, 0, 2]
    assert df["sample_index"].dtype.kind == "i"
    assert df["source"].tolist() == ["imported:roll.jsonl"] * 4
    assert df["logprobs"].tolist() == [[], [], [-0.5, -0.25, 0.0], []]
    assert df["answer"].isna().tolist() == [True, False, True, True]
    assert df["answer"].iloc[1] == "8"
    assert df["gold"].tolist()[:2] == ["", "7"]


def test_given_sample_index_and_source_kept(tmp_path):
    rows = [_row(sample_index=3, source="teacher-x"), _row(sample_index=1, source="teacher-x")]
    df = import_rollouts(_write_jsonl(tmp_path / "r.jsonl", rows))
    assert df["sample_index"].tolist() == [3, 1]
    assert df["source"].tolist() == ["teacher-x", "teacher-x"]


@pytest.mark.parametrize(
    "bad, match",
    [
        ('{"prompt_id": "p1", "prompt": "q", ', "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({k: v for k, v in _row().items() if k != "reward"}), "missing required field.*reward"),
        (json.dumps(_row(reward=None)), "missing required field.*reward"),
        (json.dumps(_row(reward=0.5)), "reward must be 0 or 1"),
        (json.dumps(_row(reward=2)), "reward must be 0 or 1"),
        (json.dumps(_row(reward="abc")), "'abc' is not a number"),
        (json.dumps(_row(completion=7)), "'completion' must be a string"),
        (json.dumps(_row(completion=["a"])), "'completion' must be a string"),
        (json.dumps(_row(prompt=None)), "missing required field.*prompt"),
        (json.dumps(_row(logprobs=[-0.1, 0.5])), "logprobs"),
        (json.dumps(_row(logprobs=["x"])), "logprobs"),
    ],
)
def test_bad_jsonl_row_names_file_and_line(tmp_path, bad, match):
    path = _write_jsonl(tmp_path / "roll.jsonl", [_row(), "", _row(reward=0), bad, _row()])
    with pytest.raises(RolloutError, match=match) as info:
        import_rollouts(path)
    assert f"{path}:4:" in str(info.value)  # 1-based, blank lines counted


def test_bad_parquet_row_names_the_row(tmp_path):
    df = pd.DataFrame([_row(), _row(reward=0.0), _row(reward=0.5)])
    path = tmp_path / "roll.parquet"
    df.to_parquet(path)
    with pytest.raises(RolloutError, match="reward must be 0 or 1") as info:
        import_rollouts(path)
    assert f"{path} row 2" in str(info.value)


def test_good_parquet_imports(tmp_path):
    df = pd.DataFrame([_row(logprobs=[-0.1, -0.2], sample_index=0), _row(reward=0.0, logprobs=[-1.0], sample_index=1)])
    path = tmp_path / "roll.parquet"
    df.to_parquet(path)
    out = import_rollouts(path)
    assert out["reward"].tolist() == [1.0, 0.0]
    assert out["logprobs"].tolist() == [[-0.1, -0.2], [-1.0]]
    assert out["sample_index"].tolist() == [0, 1]


def test_parquet_float32_logprobs_import(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "prompt_id": ["p1"],
            "prompt": ["q"],
            "completion": ["#### 7"],
            "reward": [1.0],
            "logprobs": pa.array([[-0.5, -0.25]], type=pa.list_(pa.float32())),
        }
    )
    path = tmp_path / "f32.parquet"
    pq.write_table(table, path)
    assert import_rollouts(path)["logprobs"].tolist() == [[-0.5, -0.25]]


def test_parquet_null_answer_stays_missing(tmp_path):
    df = pd.DataFrame(
        [_row(reward=0.0, answer=None, gold=None, source=None), _row(reward=1.0, answer="7", gold="7", source="s")]
    )
    path = tmp_path / "nulls.parquet"
    df.to_parquet(path)
    out = import_rollouts(path)
    assert out["answer"].isna().tolist() == [True, False]
    assert out["gold"].tolist() == ["", "7"]
    assert out["source"].tolist() == ["", "s"]
    assert summarize(out)["no_answer"] == 1


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(RolloutError, match="no rows"):
        import_rollouts(path)


def test_wrong_suffix(tmp_path):
    path = tmp_path / "roll.csv"
    path.write_text("prompt_id,prompt,completion,reward\np,q,c,1\n")
    with pytest.raises(RolloutError, match=r"\.jsonl or \.parquet"):
        import_rollouts(path)


def test_missing_file(tmp_path):
    with pytest.raises(RolloutError, match="does not exist"):
        import_rollouts(tmp_path / "nope.jsonl")


def test_summarize():
    df = pd.DataFrame(
        {
            "prompt_id": ["a", "a", "b", "b", "c", "c", "c"],
            "reward": [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
            "answer": ["1", None, "2", "2", None, "9", None],
            "logprobs": [[-0.1], [], None, [-1.0, -0.5], None, [-2.0], []],
            "finish_reason": ["stop", "length", "stop", None, "stop", "length", "stop"],
        }
    )
    assert summarize(df) == {
        "truncated": 2,
        "grade_failed (left out of training)": 0,
        "rows": 7,
        "prompts": 3,
        "accuracy": pytest.approx(3 / 7),
        "prompts_all_correct": 1,
        "prompts_all_wrong": 1,
        "prompts_mixed": 1,
        "no_answer": 3,
        "rows_with_logprobs": 3,
        "served_models": "not recorded",
    }


def test_summary_table_counts_notes_reasons_and_served_models():
    from lossgeom.data.rollouts import summary_table

    df = pd.DataFrame(
        {
            "prompt_id": ["a", "a", "b"],
            "reward": [1.0, 0.0, 0.0],
            "answer": ["1", None, "2"],
            "logprobs": [None] * 3,
            "finish_reason": ["stop", "length", "stop"],
            "grade_note": ["ok", "no answer", "timeout: math-verify"],
            "served_model": ["ds-1", "ds-1", "ds-2"],
            "system_fingerprint": [None] * 3,
            "completion_tokens": [10, None, 30],
        }
    )
    t = summary_table(df).set_index("quantity")["value"]
    assert t["truncated"] == 1 and t["finish reason: length"] == 1 and t["finish reason: stop"] == 2
    assert t["grade note: timeout: math-verify"] == 1 and t["grade note: no answer"] == 1
    assert t["grade_failed (left out of training)"] == 1
    assert t["served_models"] == "ds-1: 2 rows; ds-2: 1 row"
    assert t["mean completion tokens per request"] == 20.0 and "mean prompt tokens per request" not in t


# ---------------------------------------------------------------- problem sets
def test_local_jsonl_default_fields(tmp_path):
    path = _write_jsonl(
        tmp_path / "gsm.jsonl",
        [
            {"question": "q0", "answer": "a\n#### 72"},
            {"question": "q1", "answer": "5"},
            {"question": "q2", "answer": "x"},
        ],
    )
    df = load_problems({"source": str(path)})
    assert list(df.columns) == ["id", "question", "answer"]
    assert df["id"].tolist() == ["gsm-train-0", "gsm-train-1", "gsm-train-2"]
    assert df["question"].tolist() == ["q0", "q1", "q2"]
    assert df["answer"].tolist() == ["a\n#### 72", "5", "x"]
    # split is only part of the generated id for a local file
    assert load_problems({"source": str(path), "split": "test"})["id"].iloc[0] == "gsm-test-0"


def test_csv_with_custom_fields(tmp_path):
    path = tmp_path / "dsr.csv"
    pd.DataFrame(
        {
            "uid": [10, 11, 12],
            "problem": ["P0", "P1", "P2"],
            "solution": ["S0\n#### 3", "S1\n#### 4", "S2\n#### 5"],
            "x": [1, 2, 3],
        }
    ).to_csv(path, index=False)
    df = load_problems(
        {"source": str(path), "question_field": "problem", "answer_field": "solution", "id_field": "uid"}
    )
    assert df["id"].tolist() == ["10", "11", "12"]
    assert df["question"].tolist() == ["P0", "P1", "P2"]
    assert df["answer"].tolist() == ["S0\n#### 3", "S1\n#### 4", "S2\n#### 5"]
    assert "problem" not in df.columns and "x" not in df.columns
    assert count_unparsable_gold(df) == 0


def test_csv_numeric_answers_are_strings(tmp_path):
    path = tmp_path / "nums.csv"
    path.write_text("problem,final\nwhat,72\nwho,-3\n")
    df = load_problems({"source": str(path), "question_field": "problem", "answer_field": "final"})
    assert df["answer"].tolist() == ["72", "-3"]


@pytest.mark.parametrize(
    "field_key, field", [("question_field", "problem"), ("answer_field", "final"), ("id_field", "uid")]
)
def test_missing_field_names_field_and_columns(tmp_path, field_key, field):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"question": "q", "answer": "1", "extra": 0}])
    with pytest.raises(ProblemSetError) as info:
        load_problems({"source": str(path), field_key: field})
    msg = str(info.value)
    assert repr(field) in msg
    assert "['question', 'answer', 'extra']" in msg
    assert str(path) in msg


def test_duplicate_ids(tmp_path):
    path = _write_jsonl(
        tmp_path / "p.jsonl", [{"id": "a", "question": "q", "answer": "1"}, {"id": "a", "question": "r", "answer": "2"}]
    )
    with pytest.raises(ProblemSetError, match="duplicate id 'a'"):
        load_problems({"source": str(path), "id_field": "id"})


def test_limit(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"question": f"q{i}", "answer": str(i)} for i in range(10)])
    df = load_problems({"source": str(path), "limit": 3})
    assert df["question"].tolist() == ["q0", "q1", "q2"]
    assert df.index.tolist() == [0, 1, 2]
    assert len(load_problems({"source": str(path), "limit": None})) == 10
    assert len(load_problems({"source": str(path), "limit": 50})) == 10


def test_empty_jsonl_raises(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(ProblemSetError, match="empty.jsonl"):
        load_problems({"source": str(path)})


def test_header_only_csv_raises_empty(tmp_path):
    path = tmp_path / "hdr.csv"
    path.write_text("question,answer\n")
    with pytest.raises(ProblemSetError, match="is empty"):
        load_problems({"source": str(path)})


def test_zero_byte_csv_raises_problemset_error(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(ProblemSetError, match="empty.csv"):
        load_problems({"source": str(path)})


def test_missing_local_file(tmp_path):
    with pytest.raises(ProblemSetError, match="does not exist"):
        load_problems({"source": str(tmp_path / "nope.jsonl")})


def test_bad_json_line(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"question": "q", "answer": "1"}, "{oops"])
    with pytest.raises(ProblemSetError, match=r"p\.jsonl:2: not valid JSON"):
        load_problems({"source": str(path)})


def test_saved_dataset_dict_split(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"problem": ["t0", "t1"], "answer": ["1", "2"]}),
            "test": datasets.Dataset.from_dict({"problem": ["s0", "s1", "s2"], "answer": ["3", "4", "five"]}),
        }
    )
    d = tmp_path / "ds"
    dd.save_to_disk(str(d))
    test = load_problems({"source": str(d), "split": "test", "question_field": "problem"})
    assert test["question"].tolist() == ["s0", "s1", "s2"]
    assert test["id"].tolist() == ["ds-test-0", "ds-test-1", "ds-test-2"]
    assert count_unparsable_gold(test) == 1
    train = load_problems({"source": str(d), "split": "train", "question_field": "problem"})
    assert train["question"].tolist() == ["t0", "t1"]
    with pytest.raises(ProblemSetError) as info:
        load_problems({"source": str(d), "split": "validation", "question_field": "problem"})
    assert "'validation'" in str(info.value) and "['test', 'train']" in str(info.value)


def test_toy_source(tmp_path):
    from dataclasses import asdict

    from lossgeom.toy.problems import generate_splits

    train, test = generate_splits(1, 5, 3)
    (tmp_path / "problems").mkdir()
    for name, split in (("train", train), ("test", test)):
        _write_jsonl(tmp_path / "problems" / f"{name}.jsonl", [asdict(p) for p in split])
    df = load_problems({"source": "toy", "split": "test"}, toy_dir=tmp_path)
    assert df["id"].tolist() == ["toy-test-0", "toy-test-1", "toy-test-2"]
    assert df["question"].tolist() == [p.question for p in test]
    assert df["answer"].tolist() == [p.solution for p in test]
    assert count_unparsable_gold(df) == 0
    with pytest.raises(ProblemSetError, match="toy"):
        load_problems({"source": "toy"})


def count_unparsable_gold(problems: pd.DataFrame) -> int:
    """Rows whose gold answer grader 'exact' cannot read (not a plain number)."""
    return int(sum(parse_gold(a) is None for a in problems["answer"]))


def test_count_unparsable_gold():
    df = pd.DataFrame(
        {"answer": ["7", "seven", "1,234", "work\n#### 12", "work\n#### twelve", "", "\\frac{1}{2}", "-3.5"]}
    )
    assert count_unparsable_gold(df) == 4  # seven, #### twelve, "", \frac{1}{2}


def test_only_missing_sample_indices_are_numbered(tmp_path):
    rows = [
        {"prompt_id": "p", "prompt": "q", "completion": c, "reward": 1, **extra}
        for c, extra in (("a", {"sample_index": 0}), ("b", {}), ("c", {"sample_index": 5}), ("d", {}))
    ]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert import_rollouts(path)["sample_index"].tolist() == [0, 6, 5, 7]


def test_hash_answer_must_be_on_the_marker_line():
    from lossgeom.data.grading import grade_exact

    assert grade_exact("####\n42", "42")[:2] == (None, 0.0)
    assert grade_exact("#### 42", "42")[:2] == ("42", 1.0)
