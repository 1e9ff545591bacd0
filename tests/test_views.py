"""Tests of lossgeom.training.views on hand-built rollout tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import method_spec

from lossgeom.methods import MethodSpec, MethodSpecError
from lossgeom.training.views import ViewError, build_view, dpo_pairs, grpo_advantages


def _rollouts(groups: dict[str, list[int]]) -> pd.DataFrame:
    """One row per (prompt, sample); completion text names prompt, sample and reward."""
    rows = []
    for pid, rewards in groups.items():
        for k, r in enumerate(rewards):
            rows.append(
                {
                    "prompt_id": pid,
                    "prompt": f"question {pid}",
                    "completion": f"{pid}-{k}-{'ok' if r else 'bad'}",
                    "reward": float(r),
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture
def rollouts() -> pd.DataFrame:
    # p1 mixed 1/4, p2 all correct, p3 all wrong, p4 mixed 2/4
    return _rollouts({"p1": [1, 0, 0, 0], "p2": [1, 1, 1, 1], "p3": [0, 0, 0, 0], "p4": [0, 1, 1, 0]})


GRPO = method_spec("offline_grpo", bias=0.1, std_normalize=False)


# ---------------------------------------------------------------- NLL family
@pytest.mark.parametrize("loss", ["sft", "dft", "rift"])
def test_all_rows_unit_weight(rollouts, loss):
    view, counts = build_view(rollouts, method_spec(loss), seed=0)
    assert len(view) == 16
    assert list(view.columns) == ["prompt_id", "prompt", "completion", "reward", "eos", "weight"]
    assert (view["weight"] == 1.0).all() and view["eos"].all()
    assert view["completion"].tolist() == rollouts["completion"].tolist()
    assert view["reward"].tolist() == rollouts["reward"].tolist()
    assert counts == {
        "grade_failed": 0,
        "rollouts": 16,
        "correct": 7,
        "prompts": 4,
        "mixed_groups": 2,
        "rows": 16,
        "truncated": 0,
        "truncated_policy": "drop",
    }


def test_rft_keeps_only_correct(rollouts):
    view, counts = build_view(rollouts, method_spec("rft"), seed=0)
    assert len(view) == 7
    assert (view["reward"] == 1.0).all()
    assert sorted(view["completion"]) == sorted(rollouts.loc[rollouts["reward"] == 1, "completion"])
    assert (view["weight"] == 1.0).all()
    assert view.index.tolist() == list(range(7))
    assert counts["rows"] == 7


def test_extra_columns_dropped_and_input_unchanged(rollouts):
    rollouts["logprobs"] = [[-0.1]] * len(rollouts)
    before = rollouts.copy()
    view, _ = build_view(rollouts, method_spec("sft"), seed=0)
    assert "logprobs" not in view.columns
    pd.testing.assert_frame_equal(rollouts, before)


def test_unknown_loss_never_reaches_a_view():
    with pytest.raises(MethodSpecError, match="unknown loss 'ppo'"):
        MethodSpec.from_dict({**method_spec("sft").to_dict(), "loss": "ppo"})


# ---------------------------------------------------------------- GRPO advantages
def test_grpo_advantages_by_hand():
    r = pd.Series([1.0, 0.0, 0.0, 0.0])
    g = pd.Series(["a"] * 4)
    adv = grpo_advantages(r, g, bias=0.1, std_normalize=False)
    np.testing.assert_allclose(adv, [0.85, -0.15, -0.15, -0.15], atol=1e-12)
    assert adv.dtype == np.float64


def test_grpo_advantages_groups_are_separate():
    # interleaved groups: a = [1, 1, 0] (mean 2/3), b = [0, 1] (mean 1/2)
    r = pd.Series([1.0, 0.0, 1.0, 1.0, 0.0])
    g = pd.Series(["a", "b", "a", "b", "a"])
    adv = grpo_advantages(r, g, bias=0.0, std_normalize=False)
    np.testing.assert_allclose(adv, [1 / 3, -0.5, 1 / 3, 0.5, -2 / 3], atol=1e-12)


def test_grpo_advantages_std_normalize_by_hand():
    r = pd.Series([1.0, 0.0, 0.0, 0.0])
    g = pd.Series(["a"] * 4)
    std = math.sqrt((0.75**2 + 3 * 0.25**2) / 4)  # population std = sqrt(3)/4
    assert std == pytest.approx(math.sqrt(3) / 4)
    expected = [0.75 / (std + 1e-4) + 0.1] + [-0.25 / (std + 1e-4) + 0.1] * 3
    np.testing.assert_allclose(grpo_advantages(r, g, bias=0.1, std_normalize=True), expected, rtol=1e-12)
    # 2 of 4: std = 0.5, advantages +-0.5/0.5001
    r2 = pd.Series([1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(
        grpo_advantages(r2, g, bias=0.0, std_normalize=True), [0.5 / 0.5001] * 2 + [-0.5 / 0.5001] * 2, rtol=1e-12
    )


@pytest.mark.parametrize("std_normalize", [False, True])
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_uniform_group_gets_exactly_b(std_normalize, value):
    r = pd.Series([value] * 4 + [1.0, 0.0])
    g = pd.Series(["u"] * 4 + ["m", "m"])
    adv = grpo_advantages(r, g, bias=0.1, std_normalize=std_normalize)
    assert (adv[:4] == 0.1).all()


def test_build_view_grpo_weights(rollouts):
    view, counts = build_view(rollouts, GRPO, seed=0)
    assert len(view) == 16
    by_pid = {pid: grp["weight"].tolist() for pid, grp in view.groupby("prompt_id", sort=False)}
    np.testing.assert_allclose(by_pid["p1"], [0.85, -0.15, -0.15, -0.15])
    np.testing.assert_allclose(by_pid["p2"], [0.1] * 4)
    np.testing.assert_allclose(by_pid["p3"], [0.0] * 4)  # all wrong: A = 0 by default (KRAFTON)
    np.testing.assert_allclose(by_pid["p4"], [-0.4, 0.6, 0.6, -0.4])
    assert counts["mixed_groups"] == 2 and counts["rows"] == 16
    biased = method_spec("offline_grpo", bias=0.1, std_normalize=False, all_wrong="bias")
    view_b, _ = build_view(rollouts, biased, seed=0)
    np.testing.assert_allclose(view_b.loc[view_b["prompt_id"] == "p3", "weight"], [0.1] * 4)
    assert "weight" not in rollouts.columns


def test_build_view_grpo_std_normalize(rollouts):
    view, _ = build_view(rollouts, method_spec("offline_grpo", bias=0.0, std_normalize=True), seed=0)
    p4 = view.loc[view["prompt_id"] == "p4", "weight"].to_numpy()
    np.testing.assert_allclose(p4, [-0.5 / 0.5001, 0.5 / 0.5001, 0.5 / 0.5001, -0.5 / 0.5001])


# ---------------------------------------------------------------- DPO pairs
def _check_pairs(pairs: pd.DataFrame, rollouts: pd.DataFrame, per_prompt: int):
    by_completion = rollouts.set_index("completion")
    for pid, grp in pairs.groupby("prompt_id"):
        sub = rollouts[rollouts["prompt_id"] == pid]
        n_good, n_bad = int((sub["reward"] == 1).sum()), int((sub["reward"] == 0).sum())
        assert len(grp) == min(per_prompt, n_good, n_bad)
        assert grp["chosen"].is_unique and grp["rejected"].is_unique  # no rollout reused within a prompt
        for _, row in grp.iterrows():
            assert by_completion.loc[row["chosen"], "prompt_id"] == pid
            assert by_completion.loc[row["rejected"], "prompt_id"] == pid
            assert by_completion.loc[row["chosen"], "reward"] == 1.0
            assert by_completion.loc[row["rejected"], "reward"] == 0.0
            assert row["prompt"] == f"question {pid}"


def test_dpo_pairs_only_mixed_prompts(rollouts):
    view, counts = build_view(rollouts, method_spec("dpo", pairs_per_prompt=1), seed=0)
    assert list(view.columns) == ["prompt_id", "prompt", "chosen", "rejected"]
    assert view["prompt_id"].tolist() == ["p1", "p4"]  # in order of first appearance
    _check_pairs(view, rollouts, 1)
    assert counts["pairs"] == 2


@pytest.mark.parametrize("per_prompt", [1, 2, 3, 10])
def test_dpo_pairs_per_prompt_cap(per_prompt):
    ro = _rollouts({"a": [1, 1, 1, 0, 0, 0, 0], "b": [1, 0], "c": [0, 1, 1, 1, 0]})
    pairs = dpo_pairs(ro, pairs_per_prompt=per_prompt, seed=3)
    _check_pairs(pairs, ro, per_prompt)
    assert len(pairs) == min(per_prompt, 3) + 1 + min(per_prompt, 2)


def test_dpo_default_pairs_per_prompt_is_one():
    ro = _rollouts({"a": [1, 1, 0, 0]})
    view, _ = build_view(ro, method_spec("dpo", method="dpo"), seed=0)
    assert len(view) == 1


def test_dpo_pairs_deterministic_by_seed():
    ro = _rollouts({"a": [1, 1, 1, 0, 0, 0], "b": [0, 1, 0, 1, 1, 0]})
    a = dpo_pairs(ro, 2, seed=5)
    b = dpo_pairs(ro, 2, seed=5)
    pd.testing.assert_frame_equal(a, b)


def test_dpo_pairs_depend_on_seed_when_there_is_a_choice():
    ro = _rollouts({"a": [1, 1, 1, 0, 0, 0], "b": [0, 1, 0, 1, 1, 0]})
    pairings = {tuple(map(tuple, dpo_pairs(ro, 1, seed=s)[["chosen", "rejected"]].to_numpy())) for s in range(20)}
    assert len(pairings) > 1
    # and with no choice (one correct, one incorrect) every seed gives the same pair
    single = _rollouts({"a": [0, 1]})
    assert {tuple(dpo_pairs(single, 1, seed=s).iloc[0][["chosen", "rejected"]]) for s in range(5)} == {
        ("a-1-ok", "a-0-bad")
    }


# ---------------------------------------------------------------- empty views
def test_rft_without_correct_raises():
    ro = _rollouts({"a": [0, 0], "b": [0, 0, 0]})
    with pytest.raises(ViewError) as info:
        build_view(ro, method_spec("rft", method="rft_lr1"), seed=0)
    msg = str(info.value)
    assert "'rft_lr1'" in msg and "rft" in msg
    assert "'rollouts': 5" in msg and "'correct': 0" in msg


def test_grpo_without_mixed_group_raises():
    ro = _rollouts({"a": [1, 1], "b": [0, 0]})
    with pytest.raises(ViewError) as info:
        build_view(ro, method_spec("offline_grpo", method="grpo"), seed=0)
    msg = str(info.value)
    assert "'grpo'" in msg and "offline_grpo" in msg
    assert "'mixed_groups': 0" in msg and "'correct': 2" in msg and "'prompts': 2" in msg


def test_dpo_without_pair_raises():
    ro = _rollouts({"a": [1, 1], "b": [0, 0, 0]})
    with pytest.raises(ViewError) as info:
        build_view(ro, method_spec("dpo", method="dpo"), seed=0)
    msg = str(info.value)
    assert "'dpo'" in msg
    assert "'pairs': 0" in msg and "'rollouts': 5" in msg and "'correct': 2" in msg


def test_view_error_is_value_error():
    assert issubclass(ViewError, ValueError)


def test_dpo_prompts_in_order_of_first_appearance():
    ro = _rollouts({"z": [1, 0], "a": [0, 1], "m": [1, 1]})
    assert dpo_pairs(ro, 1, seed=0)["prompt_id"].tolist() == ["z", "a"]


def test_grpo_all_wrong_groups_zero_or_bias():
    """all_wrong='zero' (the default of the method spec, as the KRAFTON code): an all-wrong group gets
    A = 0; 'bias' keeps A = b; mixed and all-correct groups are the same under both."""
    r = pd.Series([0.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    g = pd.Series(["w", "w", "m", "m", "c", "c"])
    np.testing.assert_allclose(
        grpo_advantages(r, g, bias=0.1, std_normalize=False, all_wrong="zero"),
        [0.0, 0.0, 0.6, -0.4, 0.1, 0.1],
        atol=1e-12,
    )
    np.testing.assert_allclose(
        grpo_advantages(r, g, bias=0.1, std_normalize=False, all_wrong="bias"),
        [0.1, 0.1, 0.6, -0.4, 0.1, 0.1],
        atol=1e-12,
    )
    assert GRPO.params.all_wrong == "zero"
    view, counts = build_view(_rollouts({"p1": [1, 0, 0, 0], "p3": [0, 0, 0, 0]}), GRPO, seed=0)
    assert view.loc[view["prompt_id"] == "p3", "weight"].tolist() == [0.0] * 4
    assert counts["all_wrong_groups"] == 1
    with pytest.raises(ValueError, match="all_wrong"):
        grpo_advantages(r, g, bias=0.1, std_normalize=False, all_wrong="drop")


# ---------------------------------------------------------------- truncated rollouts
def _with_truncation(rollouts: pd.DataFrame, cut_rows: list[int]) -> pd.DataFrame:
    out = rollouts.copy()
    out["finish_reason"] = ["length" if i in cut_rows else "stop" for i in range(len(out))]
    return out


@pytest.mark.parametrize("loss", ["sft", "rft", "dft", "rift", "offline_grpo", "dpo", "kto"])
def test_truncated_rollouts_are_dropped_by_default_and_counted(rollouts, loss):
    cut = [0, 5, 13]  # p1-0 (correct), p2-1 (correct), p4-1 (correct)
    view, counts = build_view(_with_truncation(rollouts, cut), method_spec(loss), seed=0)
    assert counts["truncated"] == 3 and counts["truncated_policy"] == "drop"
    # the group statistics see all 16 rows; the 3 cut ones count as wrong (7 correct - 3)
    assert counts["rollouts"] == 16 and counts["correct"] == 4
    texts = set(view["completion"]) if "completion" in view else set(view["chosen"]) | set(view["rejected"])
    assert not texts & {rollouts["completion"][i] for i in cut}


def test_a_truncated_completion_counts_as_wrong_in_its_whole_group():
    """Issue 30: p has 1 correct and 3 cut completions. Dropping the cut ones first made the group read
    "all correct" (the correct row got the bare bias b and the group was not mixed); over the whole
    group it is 1 of 4, so the correct row gets 1 - 1/4 + b."""
    roll = _with_truncation(_rollouts({"p": [1, 0, 1, 1], "q": [1, 0, 0, 0]}), [1, 2, 3])
    roll.loc[[2, 3], "reward"] = 1.0  # graded correct before the cut (a boxed answer inside the reasoning)
    view, counts = build_view(roll, GRPO, seed=0)
    assert counts["mixed_groups"] == 2 and counts["correct"] == 2 and counts["rows"] == 5
    p = view[view["prompt_id"] == "p"]
    assert p["completion"].tolist() == ["p-0-ok"]
    assert p["weight"].tolist() == pytest.approx([1 - 0.25 + 0.1])
    want = grpo_advantages(pd.Series([1.0, 0, 0, 0]), pd.Series(["p"] * 4), 0.1, False, "zero")[0]
    assert p["weight"].iloc[0] == pytest.approx(want)
    # and RFT never trains on a cut completion graded correct, whatever the truncation policy
    rft, _ = build_view(roll, method_spec("rft", truncated="no_eos"), seed=0)
    assert set(rft["completion"]) == {"p-0-ok", "q-0-ok"}


@pytest.mark.parametrize("loss", ["sft", "rft", "offline_grpo", "dpo", "kto"])
def test_rows_whose_grade_failed_are_left_out_and_counted(rollouts, loss):
    roll = rollouts.assign(grade_note="ok")
    roll.loc[[1, 4], "grade_note"] = ["timeout: math-verify took over 5 s", "error: RecursionError"]
    view, counts = build_view(roll, method_spec(loss), seed=0)
    assert counts["grade_failed"] == 2 and counts["rollouts"] == 14
    texts = set(view["completion"]) if "completion" in view else set(view["chosen"]) | set(view["rejected"])
    assert not texts & {rollouts["completion"][i] for i in (1, 4)}
    # p1 is now 1 correct of 3 graded: still mixed; p2 lost one correct row: still all correct
    assert counts["mixed_groups"] == 2


def test_truncated_rollouts_kept_without_eos(rollouts):
    cut = [0, 13]
    spec = method_spec("sft", truncated="no_eos")
    view, counts = build_view(_with_truncation(rollouts, cut), spec, seed=0)
    assert counts["truncated"] == 2 and counts["truncated_policy"] == "no_eos" and len(view) == 16
    assert view.index[~view["eos"]].tolist() == cut


def test_no_eos_is_refused_for_trl_trainers():
    with pytest.raises(ValueError, match="truncated .no_eos. does not apply to loss .dpo."):
        method_spec("dpo", truncated="no_eos")


def test_tokenized_truncated_row_has_no_eos(toy_world):
    from lossgeom.modeling import load_tokenizer
    from lossgeom.training.job import tokenize_view

    tok = load_tokenizer(toy_world / "tokenizer")
    view = pd.DataFrame(
        {
            "prompt": ["1 + 1?", "1 + 1?"],
            "completion": ["1 + 1 = 2\n#### 2", "1 + 1 = 2\n#### 2"],
            "reward": [1.0, 1.0],
            "weight": [1.0, 1.0],
            "eos": [True, False],
        }
    )
    rows = tokenize_view(view, tok, "{question}", 512)
    full, cut = rows["input_ids"]
    assert full[-1] == tok.eos_token_id and cut[-1] != tok.eos_token_id and full[:-1] == cut
    assert rows["completion_mask"][0][:-1] == rows["completion_mask"][1]


def test_rows_longer_than_max_length_are_left_out_and_counted_never_cut(toy_world):
    from lossgeom.data.prompting import prompt_completion
    from lossgeom.modeling import load_tokenizer
    from lossgeom.training.job import tokenize_view

    tok = load_tokenizer(toy_world / "tokenizer")
    long = "3 + 4 = 7, and 7 + 5 = 12, and 12 + 1 = 13\n#### 13"
    view = pd.DataFrame(
        {"prompt": ["1 + 1?", "3 + 4 + 5 + 1?"], "completion": ["1 + 1 = 2\n#### 2", long], "reward": [1.0, 0.5]}
    ).assign(weight=[1.0, 2.0])
    short_len = len(prompt_completion(tok, "1 + 1?", "1 + 1 = 2\n#### 2")[0])
    assert len(prompt_completion(tok, "3 + 4 + 5 + 1?", long)[0]) > short_len
    counts = {}
    rows = tokenize_view(view, tok, "{question}", short_len, counts)
    assert counts == {"over_max_length": 1} and len(rows) == 1
    assert rows[0]["input_ids"][-1] == tok.eos_token_id and rows[0]["row_weight"] == 1.0
    with pytest.raises(ViewError, match="every one of the 2 training rows is longer than max_length 3"):
        tokenize_view(view, tok, "{question}", 3)


@pytest.mark.parametrize("limit", [None, 5])
def test_tokenized_rows_are_arrow_arrays_equal_to_the_per_row_tokenisation(toy_world, monkeypatch, limit):
    """The view as Arrow int32/int8 lists (a large_list past the offset limit) reads back exactly as
    prompt_completion tokenises each row, with the row numbers as float64."""
    import pyarrow as pa

    from lossgeom.data.prompting import prompt_completion
    from lossgeom.modeling import load_tokenizer
    from lossgeom.training import job

    if limit is not None:
        monkeypatch.setattr(job, "LIST_OFFSET_LIMIT", limit)
    tok = load_tokenizer(toy_world / "tokenizer")
    view = pd.DataFrame(
        {
            "prompt": ["1 + 1?", "What is 3 + 4?", "2 + 2?"],
            "completion": ["1 + 1 = 2\n#### 2", "3 + 4 = 7\n#### 7", "#### 5"],
            "reward": [1.0, 1.0, -0.2],
            "weight": [0.5, 1.0, 2.0],
        }
    )
    rows = job.tokenize_view(view, tok, "Q: {question}", 64)
    table = rows.data.table
    kind = pa.large_list if limit else pa.list_
    assert table.schema.field("input_ids").type == kind(pa.int32())
    assert table.schema.field("completion_mask").type == kind(pa.int8())
    for i, r in view.iterrows():
        ids, mask = prompt_completion(tok, r.prompt, r.completion, "Q: {question}")
        assert rows[i]["input_ids"] == ids and rows[i]["completion_mask"] == mask
        assert (rows[i]["row_weight"], rows[i]["row_reward"]) == (r.weight, r.reward)
